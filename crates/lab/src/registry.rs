//! The on-disk registry: `/run/holdfast-lab/<id>/lab.json` describes a running
//! lab so that another process (the CLI, `clean_stale`) can find, drive or
//! remove it.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{LabError, Result};

/// Parent of every lab's run directory.
pub const LAB_ROOT: &str = "/run/holdfast-lab";
const INFO_FILE: &str = "lab.json";
/// Length of a lab id, in lowercase hex digits.
pub(crate) const ID_LEN: usize = 6;

/// One host of a lab, as recorded in the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInfo {
    /// `node1`..`nodeN` or `client`.
    pub name: String,
    /// Prefix of its switch-side port names (`n1` gives `n1e0`, `n1e1`).
    pub port_stem: String,
    /// Its address on each network, indexed by network.
    pub addresses: Vec<Ipv4Addr>,
}

/// Everything another process needs to drive a lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabInfo {
    /// Run id: 6 lowercase hex digits; every name of the lab carries `hf<id>`.
    pub id: String,
    /// Process that owns the clean-up.
    pub owner_pid: u32,
    /// Start time of the owner (clock ticks since boot, `/proc/<pid>/stat`
    /// field 22), so a recycled pid is not mistaken for the owner.
    pub owner_start: Option<u64>,
    /// Number of heartbeat networks.
    pub networks: usize,
    /// The hosts, nodes first, then the client if any.
    pub hosts: Vec<HostInfo>,
    /// Creation time, seconds since the Unix epoch.
    pub created_unix: u64,
}

impl LabInfo {
    /// Whether the owning process is still running.
    pub fn owner_alive(&self) -> bool {
        match (process_start(self.owner_pid), self.owner_start) {
            (Some(now), Some(recorded)) => now == recorded,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }
}

/// Start time of process `pid`, or None if it does not exist.
pub(crate) fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after it are plain.
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

pub(crate) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Whether `id` has the shape of a lab id (guards paths built from it).
pub(crate) fn valid_id(id: &str) -> bool {
    id.len() == ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

pub(crate) fn run_dir(id: &str) -> PathBuf {
    Path::new(LAB_ROOT).join(id)
}

/// Writes the registry entry atomically (temporary file, then rename).
pub(crate) fn write(info: &LabInfo) -> Result<()> {
    let dir = run_dir(&info.id);
    let path = dir.join(INFO_FILE);
    let tmp = dir.join(format!("{INFO_FILE}.tmp"));
    let text = serde_json::to_string_pretty(info).map_err(|source| LabError::Registry {
        path: path.clone(),
        source,
    })?;
    std::fs::write(&tmp, text)
        .map_err(|e| LabError::io(format!("writing {}", tmp.display()), e))?;
    std::fs::rename(&tmp, &path)
        .map_err(|e| LabError::io(format!("renaming to {}", path.display()), e))
}

/// Reads the registry entry of lab `id`.
pub(crate) fn read(id: &str) -> Result<LabInfo> {
    if !valid_id(id) {
        return Err(LabError::NotFound(id.to_string()));
    }
    let path = run_dir(id).join(INFO_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(LabError::NotFound(id.to_string()))
        }
        Err(e) => return Err(LabError::io(format!("reading {}", path.display()), e)),
    };
    serde_json::from_str(&text).map_err(|source| LabError::Registry { path, source })
}

/// Ids of the run directories under [`LAB_ROOT`].
pub(crate) fn run_dir_ids() -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(LAB_ROOT) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(LabError::io(format!("listing {LAB_ROOT}"), e)),
    };
    let mut ids = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| LabError::io(format!("listing {LAB_ROOT}"), e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if valid_id(&name) {
            ids.push(name);
        }
    }
    ids.sort();
    Ok(ids)
}

/// Age of a run directory (by modification time), if it exists.
pub(crate) fn run_dir_age(id: &str) -> Option<Duration> {
    let modified = std::fs::metadata(run_dir(id)).ok()?.modified().ok()?;
    Some(
        SystemTime::now()
            .duration_since(modified)
            .unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_six_lowercase_hex_digits() {
        assert!(valid_id("0a9fbc"));
        assert!(!valid_id("0A9FBC"));
        assert!(!valid_id("0a9fb"));
        assert!(!valid_id("../etc"));
        assert!(!valid_id("0a9fbg"));
    }

    #[test]
    fn own_process_is_alive_and_recycled_pid_is_not() {
        let me = std::process::id();
        let start = process_start(me);
        assert!(start.is_some());
        let mut info = LabInfo {
            id: "000000".into(),
            owner_pid: me,
            owner_start: start,
            networks: 1,
            hosts: Vec::new(),
            created_unix: 0,
        };
        assert!(info.owner_alive());
        info.owner_start = start.map(|s| s + 1);
        assert!(!info.owner_alive());
    }
}
