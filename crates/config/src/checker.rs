//! Checker configurations as plain data, with SafeKit's defaults and their
//! validation; `holdfast-checkers` runs them.
//!
//! One [`CheckerConfig`] per checker: what is shared by every kind (name,
//! when it is active, what to do when it fails, timing, smoothing counts),
//! plus a [`CheckerKind`] holding what only that kind needs. The
//! constructors ([`CheckerConfig::process`], [`CheckerConfig::tcp`], ...)
//! apply the defaults of the matching SafeKit checker (User's Guide §13.10 to
//! §13.17), so an imported `userconfig.xml` behaves as it did before.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use regex_automata::meta::{BuildError, Regex};

use crate::error::InvalidChecker;

/// When a checker runs, in SafeKit's terms (`when=` of the checkers,
/// `class=` of `<proc>`). The daemon starts and stops checkers at the
/// matching script boundaries; this crate only carries the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// From after `prestart` to before `poststop`: tests a resource the
    /// module needs before the application can start (a gateway, a link, a
    /// database on another server).
    Pre,
    /// After `start_prim` until before `stop_prim` (mirror primary).
    Prim,
    /// After `start_second` until before `stop_second` (mirror secondary).
    Second,
    /// After `start_both` until before `stop_both` (every farm node).
    Both,
}

/// What the module does when a checker's verdict turns Down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Stop the application and hold the module in `WAIT` while the
    /// resource is Down; start again by itself once it is Up.
    Wait,
    /// Restart the application locally (`stop_prim` then `start_prim`),
    /// keeping the module's role.
    Restart,
    /// Stop the module, which may fail over, then start it again.
    StopStart,
    /// Stop the module, which may fail over, and leave it stopped.
    Stop,
    /// Only log the verdict.
    NoAction,
}

/// One configured checker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckerConfig {
    /// Checker name, SafeKit's `ident` (`name` for `<proc>`); with the kind's
    /// prefix it names the resource, see [`CheckerConfig::resource`].
    pub name: String,
    pub when: When,
    pub action: Action,
    /// Time between the starts of two probes.
    pub interval: Duration,
    /// Longest a single probe may take; a probe still unanswered then counts
    /// as a failure.
    pub timeout: Duration,
    /// Consecutive failed probes before the verdict turns Down (at least 1).
    pub down_after: u32,
    /// Consecutive successful probes before a Down verdict turns Up again
    /// (at least 1). The first verdict after start is Up at the first success.
    pub up_after: u32,
    pub kind: CheckerKind,
}

/// What is probed, by kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckerKind {
    Process(ProcessChecker),
    Tcp(TcpChecker),
    Ping(PingChecker),
    Interface(InterfaceChecker),
    Custom(CustomChecker),
    Module(ModuleChecker),
}

/// Process monitoring (SafeKit `<errd><proc>`): counts the running processes
/// that match and compares the count with `atleast`/`atmost`.
///
/// A process matches when its command name — the kernel's
/// `/proc/<pid>/comm`, the executable's file name cut to 15 bytes — equals
/// `command` (or matches `command_regex` when given), and, when `args_regex`
/// is given, its command line (`/proc/<pid>/cmdline`, arguments joined by
/// single spaces, the program as invoked first) contains a match of it.
/// Regular expressions search (they are not anchored: add `^`/`$`), with the
/// syntax of the `regex` crate, close to POSIX ERE for usual patterns.
/// Zombies (exited, not yet reaped) do not count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessChecker {
    /// Command name to count, at most 15 bytes (the kernel truncates longer
    /// names). Ignored for matching when `command_regex` is set.
    pub command: String,
    /// SafeKit `nameregex`: a regular expression on the command name.
    pub command_regex: Option<String>,
    /// SafeKit `argregex`: a regular expression on the command line.
    pub args_regex: Option<String>,
    /// Down when fewer processes match (SafeKit `atleast`, default 1;
    /// `None` is SafeKit's `-1`).
    pub atleast: Option<u32>,
    /// Down when more processes match (SafeKit `atmax`, default none):
    /// `Some(0)` means the process must not run at all.
    pub atmost: Option<u32>,
}

/// An optional request/answer exchange after connecting: catches a hung
/// application whose listening socket still completes handshakes (the kernel
/// does that from the backlog even when the application never accepts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpExchange {
    /// Bytes sent once connected (may be empty: only wait for a greeting).
    pub send: Vec<u8>,
    /// Bytes that must appear in what the server answers within the timeout;
    /// empty means any answer of at least one byte.
    pub expect: Vec<u8>,
}

/// TCP checker (SafeKit `<tcp>`): connects to `address:port` within the
/// timeout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpChecker {
    pub address: IpAddr,
    pub port: u16,
    pub exchange: Option<TcpExchange>,
}

/// Ping checker (SafeKit `<ping>`): one ICMP echo request per probe, Up when
/// the reply comes back within the timeout. IPv4 only for now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PingChecker {
    pub address: Ipv4Addr,
}

/// Which interface an interface checker watches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InterfaceTarget {
    /// By name (`eth0`).
    Name(String),
    /// The interface holding this local address (SafeKit `local_addr`).
    Address(IpAddr),
}

/// Interface checker (SafeKit `<intf>`): Up while the interface is
/// administratively up and operationally running (carrier present).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceChecker {
    pub target: InterfaceTarget,
}

/// Custom checker (SafeKit `<custom>`), run once per probe: exit status 0 is
/// Up, anything else is Down; a script still running at the timeout is
/// killed with everything it started (its process group) and counts as Down.
/// The last line it printed (stderr first, else stdout) goes into the reason.
///
/// SafeKit runs a custom checker as one long-lived loop that sets its
/// resource with `safekit set`; Holdfast runs it periodically instead, so
/// such a loop must be turned into a single test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomChecker {
    /// The executable; relative paths are relative to the module's `bin`
    /// directory (SafeKit's SAFEUSERBIN).
    pub exec: PathBuf,
    pub args: Vec<String>,
}

/// Module checker (SafeKit `<module>`): another module on this node must be
/// in one of the `expected` states. A restart of that module (its
/// generation changed while it stayed in an expected state) also counts as
/// Down for one probe, so that the action (by default wait) restarts this
/// module after the one it depends on, as SafeKit does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleChecker {
    pub module: String,
    /// State names (`PRIM`, `ALONE`, `UP`, ...) counting as available.
    pub expected: Vec<String>,
}

/// SafeKit's default interval between two probes (§13.12 to §13.17).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// SafeKit's default probe timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Failed probes before a network checker (TCP, ping) is Down: one lost
/// packet must not fail a module over.
pub const DEFAULT_NETWORK_DOWN_AFTER: u32 = 3;
/// Successful probes before a network checker is Up again: a flapping link
/// must not restart the module at every lucky packet.
pub const DEFAULT_NETWORK_UP_AFTER: u32 = 2;
/// Interval of the interface checker: reading link flags costs nothing, and
/// the kernel already debounces carrier changes.
pub const DEFAULT_INTERFACE_INTERVAL: Duration = Duration::from_secs(2);
/// Module states in which a module counts as available by default: running
/// its application.
pub const DEFAULT_MODULE_EXPECTED: [&str; 3] = ["ALONE", "PRIM", "UP"];
/// Longest command name the kernel keeps (`TASK_COMM_LEN` - 1).
pub const COMM_MAX: usize = 15;

impl CheckerConfig {
    fn with_defaults(name: &str, when: When, action: Action, kind: CheckerKind) -> Self {
        Self {
            name: name.to_string(),
            when,
            action,
            interval: DEFAULT_INTERVAL,
            timeout: DEFAULT_TIMEOUT,
            down_after: 1,
            up_after: 1,
            kind,
        }
    }

    /// Process checker with `<proc>` defaults: class prim, action
    /// stopstart, at least 1 instance. SafeKit polls processes every 30 s;
    /// Holdfast uses its usual 10 s.
    pub fn process(name: &str, command: &str) -> Self {
        Self::with_defaults(
            name,
            When::Prim,
            Action::StopStart,
            CheckerKind::Process(ProcessChecker {
                command: command.to_string(),
                command_regex: None,
                args_regex: None,
                atleast: Some(1),
                atmost: None,
            }),
        )
    }

    /// TCP checker with `<tcp>` defaults: when prim, action restart, 10 s
    /// interval, 5 s timeout; Down after 3 failures, Up after 2 successes.
    pub fn tcp(name: &str, address: IpAddr, port: u16) -> Self {
        Self {
            down_after: DEFAULT_NETWORK_DOWN_AFTER,
            up_after: DEFAULT_NETWORK_UP_AFTER,
            ..Self::with_defaults(
                name,
                When::Prim,
                Action::Restart,
                CheckerKind::Tcp(TcpChecker {
                    address,
                    port,
                    exchange: None,
                }),
            )
        }
    }

    /// Ping checker with `<ping>` defaults: when pre, action wait, 10 s
    /// interval, 5 s timeout; Down after 3 failures, Up after 2 successes.
    pub fn ping(name: &str, address: Ipv4Addr) -> Self {
        Self {
            down_after: DEFAULT_NETWORK_DOWN_AFTER,
            up_after: DEFAULT_NETWORK_UP_AFTER,
            ..Self::with_defaults(
                name,
                When::Pre,
                Action::Wait,
                CheckerKind::Ping(PingChecker { address }),
            )
        }
    }

    /// Interface checker with `<intf>` defaults: when pre, action wait; a 2 s
    /// interval (SafeKit does not document one).
    pub fn interface(name: &str, target: InterfaceTarget) -> Self {
        Self {
            interval: DEFAULT_INTERFACE_INTERVAL,
            ..Self::with_defaults(
                name,
                When::Pre,
                Action::Wait,
                CheckerKind::Interface(InterfaceChecker { target }),
            )
        }
    }

    /// Custom checker: when prim, action stopstart (SafeKit's default is
    /// noaction with a hand-written failover rule, which Holdfast does not
    /// have), 10 s interval, 5 s timeout.
    pub fn custom(name: &str, exec: impl Into<PathBuf>) -> Self {
        Self::with_defaults(
            name,
            When::Prim,
            Action::StopStart,
            CheckerKind::Custom(CustomChecker {
                exec: exec.into(),
                args: Vec::new(),
            }),
        )
    }

    /// Module checker with `<module>` defaults: when pre, action wait,
    /// expecting the other module to run its application (ALONE, PRIM, UP).
    pub fn module(name: &str, module: &str) -> Self {
        Self::with_defaults(
            name,
            When::Pre,
            Action::Wait,
            CheckerKind::Module(ModuleChecker {
                module: module.to_string(),
                expected: DEFAULT_MODULE_EXPECTED
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
            }),
        )
    }

    /// SafeKit's resource class of this kind: `proc`, `tcp`, `ping`, `intf`,
    /// `custom`, `module`.
    pub fn class(&self) -> &'static str {
        match self.kind {
            CheckerKind::Process(_) => "proc",
            CheckerKind::Tcp(_) => "tcp",
            CheckerKind::Ping(_) => "ping",
            CheckerKind::Interface(_) => "intf",
            CheckerKind::Custom(_) => "custom",
            CheckerKind::Module(_) => "module",
        }
    }

    /// The resource this checker sets, `<class>.<name>` (`ping.gateway`):
    /// unique per module, used in events and logs.
    pub fn resource(&self) -> String {
        format!("{}.{}", self.class(), self.name)
    }

    /// Checks the values make sense; the error names the checker and field.
    pub fn validate(&self) -> Result<(), InvalidChecker> {
        let invalid = |field: &str, message: String| InvalidChecker {
            checker: self.resource(),
            field: field.to_string(),
            message,
        };
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        {
            return Err(invalid(
                "name",
                format!("{:?}: expected letters, digits, '_', '-' or '.'", self.name),
            ));
        }
        if self.interval.is_zero() {
            return Err(invalid("interval", "must be more than 0".into()));
        }
        if self.timeout.is_zero() {
            return Err(invalid("timeout", "must be more than 0".into()));
        }
        if self.down_after == 0 {
            return Err(invalid("down_after", "must be at least 1".into()));
        }
        if self.up_after == 0 {
            return Err(invalid("up_after", "must be at least 1".into()));
        }
        // SafeKit's rule: before the application runs (pre), the only
        // sensible reaction is to wait; once it runs, waiting would leave a
        // started application behind a module in WAIT.
        match (self.when, self.action) {
            (When::Pre, Action::Wait | Action::NoAction) => {}
            (When::Pre, action) => {
                return Err(invalid(
                    "action",
                    format!("{action:?} with when = pre: expected wait or noaction"),
                ))
            }
            (_, Action::Wait) => {
                return Err(invalid(
                    "action",
                    format!("wait with when = {:?}: only for when = pre", self.when),
                ))
            }
            _ => {}
        }
        match &self.kind {
            CheckerKind::Process(p) => {
                if p.command_regex.is_none() && (p.command.is_empty() || p.command.len() > COMM_MAX)
                {
                    return Err(invalid(
                        "command",
                        format!(
                            "{:?}: expected 1 to {COMM_MAX} bytes (the kernel keeps no more of a command name); use command_regex or args_regex for longer names",
                            p.command
                        ),
                    ));
                }
                if p.atleast.is_none() && p.atmost.is_none() {
                    return Err(invalid(
                        "atleast",
                        "neither atleast nor atmost is set: nothing to check".into(),
                    ));
                }
                if let (Some(least), Some(most)) = (p.atleast, p.atmost) {
                    if least > most {
                        return Err(invalid(
                            "atmost",
                            format!("{most} is below atleast = {least}: never satisfied"),
                        ));
                    }
                }
                for (field, pattern) in [
                    ("command_regex", &p.command_regex),
                    ("args_regex", &p.args_regex),
                ] {
                    if let Some(pattern) = pattern {
                        compile_regex(pattern)
                            .map_err(|e| invalid(field, format!("{pattern:?}: {e}")))?;
                    }
                }
            }
            CheckerKind::Tcp(t) => {
                if t.port == 0 {
                    return Err(invalid("port", "must be 1 to 65535".into()));
                }
            }
            CheckerKind::Ping(p) => {
                if p.address.is_unspecified() || p.address.is_broadcast() {
                    return Err(invalid(
                        "address",
                        format!("{}: not a single host", p.address),
                    ));
                }
            }
            CheckerKind::Interface(i) => {
                if let InterfaceTarget::Name(name) = &i.target {
                    // IFNAMSIZ is 16 with the terminating NUL.
                    if name.is_empty() || name.len() > 15 || name.contains('/') {
                        return Err(invalid(
                            "interface",
                            format!("{name:?}: not an interface name"),
                        ));
                    }
                }
            }
            CheckerKind::Custom(c) => {
                if c.exec.as_os_str().is_empty() {
                    return Err(invalid("exec", "empty path".into()));
                }
            }
            CheckerKind::Module(m) => {
                if m.module.is_empty() {
                    return Err(invalid("module", "empty module name".into()));
                }
                if m.expected.is_empty() {
                    return Err(invalid(
                        "expected",
                        "no expected state: the checker could never be Up".into(),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Compiles a checker's regular expression: validation here, and the
/// process probe that matches with it.
pub fn compile_regex(pattern: &str) -> Result<Regex, Box<BuildError>> {
    Regex::new(pattern).map_err(Box::new)
}

/// Validates every checker of a module and that their resources are unique.
pub fn validate_all(checkers: &[CheckerConfig]) -> Result<(), InvalidChecker> {
    for (i, checker) in checkers.iter().enumerate() {
        checker.validate()?;
        let resource = checker.resource();
        if checkers[..i].iter().any(|c| c.resource() == resource) {
            return Err(InvalidChecker {
                checker: resource,
                field: "name".to_string(),
                message: "two checkers of the same kind have this name".to_string(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_safekit() {
        let t = CheckerConfig::tcp("web", IpAddr::from([198, 18, 0, 11]), 80);
        assert_eq!((t.when, t.action), (When::Prim, Action::Restart));
        assert_eq!((t.interval, t.timeout), (DEFAULT_INTERVAL, DEFAULT_TIMEOUT));
        assert_eq!(t.resource(), "tcp.web");
        let p = CheckerConfig::ping("gw", Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!((p.when, p.action), (When::Pre, Action::Wait));
        let proc = CheckerConfig::process("nginx", "nginx");
        assert_eq!(proc.action, Action::StopStart);
        assert_eq!(proc.resource(), "proc.nginx");
        let m = CheckerConfig::module("db", "mysql");
        assert_eq!((m.when, m.action), (When::Pre, Action::Wait));
        for c in [t, p, proc, m] {
            c.validate().unwrap();
        }
    }

    #[test]
    fn invalid_values_name_checker_and_field() {
        let mut c = CheckerConfig::process("app", "a-command-name-too-long");
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("proc.app") && e.contains("command"), "{e}");
        c.kind = CheckerKind::Process(ProcessChecker {
            command: "x".into(),
            command_regex: None,
            args_regex: Some("(unclosed".into()),
            atleast: Some(1),
            atmost: None,
        });
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("args_regex"), "{e}");

        let mut t = CheckerConfig::tcp("db", IpAddr::from([198, 18, 0, 11]), 5432);
        t.action = Action::Wait;
        let e = t.validate().unwrap_err().to_string();
        assert!(e.contains("tcp.db") && e.contains("action"), "{e}");
        t.when = When::Pre;
        t.validate().unwrap();
        t.down_after = 0;
        assert!(t.validate().unwrap_err().to_string().contains("down_after"));
    }

    #[test]
    fn duplicate_resources_are_refused() {
        let a = CheckerConfig::ping("gw", Ipv4Addr::new(198, 18, 0, 1));
        let b = CheckerConfig::ping("gw", Ipv4Addr::new(198, 18, 0, 2));
        let c = CheckerConfig::module("gw", "other");
        validate_all(&[a.clone(), c]).unwrap();
        let e = validate_all(&[a, b]).unwrap_err().to_string();
        assert!(e.contains("ping.gw"), "{e}");
    }
}
