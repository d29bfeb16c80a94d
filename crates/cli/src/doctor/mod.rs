//! `holdfast doctor`: whether this host can run Holdfast and the modules
//! installed on it, one line per check — OK, WARN or FAIL — with what to
//! fix. The host's facilities are in [`host`], each installed module's
//! ports and peers in [`modules`], who holds a port in [`holders`].

mod holders;
mod host;
mod modules;

use std::fmt;
use std::path::PathBuf;

use holdfast_config::{Mode, ModuleConfig};
use holdfast_daemon::client::ApiClient;
use holdfast_daemon::registry::ModuleSummary;
use holdfast_daemon::Paths;
use owo_colors::{OwoColorize, Stream};

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    Ok,
    /// Works, but something will be missed or is risky.
    Warn,
    /// Holdfast (or an installed module) cannot work this way.
    Fail,
}

/// One check's line.
#[derive(Debug, Clone)]
pub struct Finding {
    pub status: Status,
    /// What was checked: `fuse`, `port 4800/udp`, ...
    pub check: String,
    /// What was found.
    pub found: String,
    /// What to do about it (not for OK).
    pub fix: Option<String>,
}

impl Finding {
    fn ok(check: impl Into<String>, found: impl Into<String>) -> Self {
        Finding {
            status: Status::Ok,
            check: check.into(),
            found: found.into(),
            fix: None,
        }
    }

    fn warn(check: impl Into<String>, found: impl Into<String>, fix: impl Into<String>) -> Self {
        Finding {
            status: Status::Warn,
            fix: Some(fix.into()),
            ..Finding::ok(check, found)
        }
    }

    fn fail(check: impl Into<String>, found: impl Into<String>, fix: impl Into<String>) -> Self {
        Finding {
            status: Status::Fail,
            fix: Some(fix.into()),
            ..Finding::ok(check, found)
        }
    }

    /// A warning where the modules need it, a failure where they do.
    fn needed(
        needed: bool,
        check: impl Into<String>,
        found: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        if needed {
            Finding::fail(check, found, fix)
        } else {
            Finding::warn(check, found, fix)
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = match self.status {
            Status::Ok => format!(
                "{}",
                "OK  ".if_supports_color(Stream::Stdout, |t| t.green())
            ),
            Status::Warn => format!(
                "{}",
                "WARN".if_supports_color(Stream::Stdout, |t| t.yellow())
            ),
            Status::Fail => format!("{}", "FAIL".if_supports_color(Stream::Stdout, |t| t.red())),
        };
        write!(f, "{status} {}: {}", self.check, self.found)?;
        if let Some(fix) = &self.fix {
            write!(f, " — fix: {fix}")?;
        }
        Ok(())
    }
}

/// What `holdfast doctor` looks at.
#[derive(Debug)]
pub struct Options {
    /// This node's name; by default the running daemon's, else the host
    /// name.
    pub node: Option<String>,
    pub paths: Paths,
    pub api: PathBuf,
}

/// What the checks share: the installed modules and what the running
/// daemon says of them.
#[derive(Debug)]
struct Host {
    node: String,
    modules: Vec<ModuleConfig>,
    /// The running daemon's view, if it answered.
    running: Option<Vec<ModuleSummary>>,
}

impl Host {
    fn any(&self, mode: Mode) -> bool {
        self.modules.iter().any(|m| m.mode == mode)
    }

    /// The running daemon's view of `module`.
    fn summary(&self, module: &str) -> Option<&ModuleSummary> {
        self.running.as_ref()?.iter().find(|s| s.module == module)
    }
}

/// Every check, in the order printed.
pub fn run(options: &Options) -> Vec<Finding> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime builds");
    let client = ApiClient::new(&options.api);
    let running: Option<Vec<ModuleSummary>> = runtime.block_on(client.get("/v1/modules")).ok();
    let mut findings = Vec::new();
    findings.push(match &running {
        Some(list) => Finding::ok(
            "daemon",
            format!(
                "answers on {} ({} modules)",
                options.api.display(),
                list.len()
            ),
        ),
        None => Finding::warn(
            "daemon",
            format!("no daemon answers on {}", options.api.display()),
            "systemctl enable --now holdfast (ports and heartbeats are then checked against it)",
        ),
    });
    let node = options
        .node
        .clone()
        .or_else(|| running.as_ref()?.first().map(|s| s.node.clone()))
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_default();
    let (modules, unreadable) = modules::installed(&options.paths);
    findings.extend(unreadable);
    let host = Host {
        node,
        modules,
        running,
    };
    findings.push(host::privileges());
    findings.push(host::cluster_key(&options.paths));
    findings.extend(host::fuse(&host));
    findings.push(host::nftables(&host));
    findings.extend(host::kernel(&host));
    findings.push(host::clock());
    findings.extend(modules::ports(&host));
    findings.extend(runtime.block_on(modules::peers(&host)));
    findings
}

/// Prints the findings; the worst status.
pub fn print(findings: &[Finding]) -> Status {
    for finding in findings {
        println!("{finding}");
    }
    findings
        .iter()
        .map(|f| f.status)
        .max()
        .unwrap_or(Status::Ok)
}
