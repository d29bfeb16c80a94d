//! Process checker: counts the matching processes in `/proc` and compares
//! the count with `atleast`/`atmost` (see [`ProcessChecker`] for what
//! matches).

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use regex_automata::meta::{BuildError, Regex};

use super::Probe;
use crate::verdict::Verdict;
use holdfast_config::checker::{compile_regex, ProcessChecker};

/// Which processes a process checker counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProcessScope {
    /// Every process of the machine (as `/proc` shows them): real servers.
    #[default]
    All,
    /// Only processes in the network namespace of the thread that builds
    /// the probe. In the test lab every host shares the machine's process
    /// table, and only its network namespace tells whose a process is.
    CallerNetns,
}

/// Decides whether one process matches a [`ProcessChecker`].
#[derive(Debug)]
pub struct ProcessMatcher {
    command: String,
    command_regex: Option<Regex>,
    args_regex: Option<Regex>,
}

impl ProcessMatcher {
    /// Fails only on a bad regular expression ([`CheckerConfig::validate`]
    /// reports those first, with the field).
    ///
    /// [`CheckerConfig::validate`]: holdfast_config::checker::CheckerConfig::validate
    pub fn new(checker: &ProcessChecker) -> Result<Self, Box<BuildError>> {
        Ok(Self {
            command: checker.command.clone(),
            command_regex: checker
                .command_regex
                .as_deref()
                .map(compile_regex)
                .transpose()?,
            args_regex: checker
                .args_regex
                .as_deref()
                .map(compile_regex)
                .transpose()?,
        })
    }

    /// Whether the command name matches.
    pub fn command_matches(&self, comm: &[u8]) -> bool {
        match &self.command_regex {
            Some(re) => re.is_match(comm),
            None => comm == self.command.as_bytes(),
        }
    }

    /// Whether the command line (arguments joined by spaces) matches;
    /// always true without `args_regex`.
    pub fn args_match(&self, cmdline: &[u8]) -> bool {
        self.args_regex
            .as_ref()
            .is_none_or(|re| re.is_match(cmdline))
    }

    fn needs_args(&self) -> bool {
        self.args_regex.is_some()
    }
}

/// The verdict for `count` matching processes (`what` names them in the
/// reason: "process nginx").
pub fn count_verdict(what: &str, count: u32, atleast: Option<u32>, atmost: Option<u32>) -> Verdict {
    let plural = |n: u32| if n == 1 { "instance" } else { "instances" };
    match (atleast, atmost) {
        (Some(least), _) if count < least => Verdict::Down(format!(
            "{what}: {count} {} running, at least {least} required",
            plural(count)
        )),
        (_, Some(most)) if count > most => Verdict::Down(format!(
            "{what}: {count} {} running, at most {most} allowed",
            plural(count)
        )),
        _ => Verdict::Up,
    }
}

/// `/proc/<pid>/cmdline` as one line: NUL separators become spaces.
fn command_line(raw: &[u8]) -> Vec<u8> {
    let trimmed = raw.strip_suffix(b"\0").unwrap_or(raw);
    trimmed
        .iter()
        .map(|&b| if b == 0 { b' ' } else { b })
        .collect()
}

/// State letter of `/proc/<pid>/stat` ("123 (name) S ..."); the name may
/// itself hold parentheses, so the last ')' ends it.
fn stat_state(stat: &[u8]) -> Option<u8> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    stat.get(close + 2).copied()
}

/// (device, inode) of a namespace file: equal pairs are the same namespace.
fn namespace_id(path: &Path) -> io::Result<(u64, u64)> {
    let meta = fs::metadata(path)?;
    Ok((meta.dev(), meta.ino()))
}

/// The calling thread's network namespace (threads can differ: `setns`).
pub(crate) fn own_netns() -> io::Result<(u64, u64)> {
    namespace_id(Path::new(OWN_NETNS))
}

pub(crate) const OWN_NETNS: &str = "/proc/thread-self/ns/net";

/// Counts the live processes matching `matcher` (in network namespace
/// `netns` when given). Processes vanishing during the scan are skipped.
pub fn count_processes(matcher: &ProcessMatcher, netns: Option<(u64, u64)>) -> io::Result<u32> {
    let mut count = 0;
    for entry in fs::read_dir("/proc")? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let dir = Path::new("/proc").join(pid);
        // Any read failing from here means the process just exited (or is
        // a kernel-protected one we could not match anyway): skip it.
        let Ok(mut comm) = fs::read(dir.join("comm")) else {
            continue;
        };
        if comm.last() == Some(&b'\n') {
            comm.pop();
        }
        if !matcher.command_matches(&comm) {
            continue;
        }
        match fs::read(dir.join("stat"))
            .ok()
            .as_deref()
            .and_then(stat_state)
        {
            // Zombie or dead: exited, only waiting to be reaped.
            Some(b'Z' | b'X') | None => continue,
            Some(_) => {}
        }
        if matcher.needs_args() {
            let Ok(raw) = fs::read(dir.join("cmdline")) else {
                continue;
            };
            if !matcher.args_match(&command_line(&raw)) {
                continue;
            }
        }
        if let Some(own) = netns {
            if namespace_id(&dir.join("ns/net")).ok() != Some(own) {
                continue;
            }
        }
        count += 1;
    }
    Ok(count)
}

/// Probe of a process checker: one `/proc` scan per probe, on the blocking
/// thread pool.
#[derive(Debug)]
pub struct ProcessProbe {
    what: String,
    matcher: Arc<ProcessMatcher>,
    atleast: Option<u32>,
    atmost: Option<u32>,
    netns: Option<(u64, u64)>,
    timeout: Duration,
}

impl ProcessProbe {
    /// `netns`: the namespace to restrict the count to (see
    /// [`ProcessScope::CallerNetns`]).
    pub fn new(
        checker: &ProcessChecker,
        matcher: ProcessMatcher,
        netns: Option<(u64, u64)>,
        timeout: Duration,
    ) -> Self {
        let mut what = format!("process {}", checker.command);
        if let Some(re) = &checker.command_regex {
            what = format!("process named /{re}/");
        }
        if let Some(re) = &checker.args_regex {
            what.push_str(&format!(" with arguments /{re}/"));
        }
        Self {
            what,
            matcher: Arc::new(matcher),
            atleast: checker.atleast,
            atmost: checker.atmost,
            netns,
            timeout,
        }
    }
}

impl Probe for ProcessProbe {
    async fn probe(&mut self) -> Verdict {
        let matcher = Arc::clone(&self.matcher);
        let netns = self.netns;
        let scan = tokio::task::spawn_blocking(move || count_processes(&matcher, netns));
        match tokio::time::timeout(self.timeout, scan).await {
            Ok(Ok(Ok(count))) => count_verdict(&self.what, count, self.atleast, self.atmost),
            Ok(Ok(Err(e))) => Verdict::Down(format!("{}: reading /proc: {e}", self.what)),
            Ok(Err(join)) => Verdict::Down(format!("{}: /proc scan failed: {join}", self.what)),
            Err(_) => Verdict::Down(format!(
                "{}: /proc scan took more than {:?}",
                self.what, self.timeout
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_against_bounds() {
        assert_eq!(
            count_verdict("process nginx", 0, Some(1), None),
            Verdict::Down("process nginx: 0 instances running, at least 1 required".into())
        );
        assert_eq!(count_verdict("p", 1, Some(1), None), Verdict::Up);
        assert_eq!(count_verdict("p", 2, Some(1), Some(2)), Verdict::Up);
        assert_eq!(
            count_verdict("p", 3, Some(1), Some(2)),
            Verdict::Down("p: 3 instances running, at most 2 allowed".into())
        );
        assert_eq!(
            count_verdict("p", 1, None, Some(0)),
            Verdict::Down("p: 1 instance running, at most 0 allowed".into())
        );
        assert_eq!(count_verdict("p", 0, None, Some(0)), Verdict::Up);
    }

    #[test]
    fn proc_fields_are_parsed() {
        assert_eq!(command_line(b"sleep\x00300\x00"), b"sleep 300");
        assert_eq!(command_line(b""), b"");
        assert_eq!(stat_state(b"42 (a) b) Z 1 2"), Some(b'Z'));
        assert_eq!(stat_state(b"42 (sleep) S 1 2"), Some(b'S'));
        assert_eq!(stat_state(b"garbage"), None);
    }

    #[test]
    fn matcher_uses_name_or_regexes() {
        let mut c = ProcessChecker {
            command: "sleep".into(),
            command_regex: None,
            args_regex: None,
            atleast: Some(1),
            atmost: None,
        };
        let m = ProcessMatcher::new(&c).unwrap();
        assert!(m.command_matches(b"sleep") && !m.command_matches(b"sleepy"));
        c.command_regex = Some("^ora_.*".into());
        c.args_regex = Some("db1".into());
        let m = ProcessMatcher::new(&c).unwrap();
        assert!(m.command_matches(b"ora_pmon") && !m.command_matches(b"sleep"));
        assert!(m.args_match(b"ora_pmon -d db1") && !m.args_match(b"ora_pmon -d db2"));
    }
}
