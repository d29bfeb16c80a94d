//! Network-namespace primitives: listing the named namespaces, finding and
//! killing the processes inside one, adding and deleting them.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::error::{LabError, Result};
use crate::exec::{run, wait_until};

/// Where `ip netns` keeps its named namespaces.
const NETNS_DIR: &str = "/run/netns";
/// How long killed processes may take to disappear.
pub(crate) const KILL_TIMEOUT: Duration = Duration::from_secs(5);
const KILL_POLL: Duration = Duration::from_millis(20);

/// Serialises `ip netns add` within this process: on a fresh machine the
/// first call also creates and bind-mounts `/run/netns`, and two racing first
/// calls would stack two such mounts.
static NETNS_ADD: Mutex<()> = Mutex::new(());

pub(crate) fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Names of every named network namespace on the machine.
pub(crate) fn list() -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(LabError::io(format!("listing {NETNS_DIR}"), e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| LabError::io(format!("listing {NETNS_DIR}"), e))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

pub(crate) fn add(name: &str) -> Result<()> {
    let _guard = NETNS_ADD.lock().unwrap_or_else(|p| p.into_inner());
    run("ip", &["netns", "add", name], None).map(drop)
}

pub(crate) fn delete(name: &str) -> Result<()> {
    run("ip", &["netns", "delete", name], None).map(drop)
}

/// Pids of the processes whose network namespace is `name`.
pub(crate) fn pids(name: &str) -> Result<Vec<i32>> {
    let out = run("ip", &["netns", "pids", name], None)?;
    Ok(out
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect())
}

/// SIGKILLs every process in namespace `name` (again each round, to catch
/// processes forked meanwhile) until none remains, for at most
/// [`KILL_TIMEOUT`]. `lab` only labels the error.
pub(crate) fn kill_all(lab: &str, name: &str) -> Result<()> {
    let me = std::process::id() as i32;
    let mut last: Result<Vec<i32>> = Ok(Vec::new());
    let done = wait_until(KILL_TIMEOUT, KILL_POLL, || {
        last = pids(name);
        match &last {
            Ok(pids) if pids.is_empty() => true,
            Ok(pids) => {
                for &pid in pids.iter().filter(|&&p| p != me) {
                    // ESRCH: it exited between listing and killing — fine.
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
                false
            }
            Err(_) => true,
        }
    });
    let remaining = last?;
    if done && remaining.is_empty() {
        Ok(())
    } else {
        Err(LabError::StillRunning {
            lab: lab.to_string(),
            netns: name.to_string(),
            pids: remaining,
            after: KILL_TIMEOUT,
        })
    }
}
