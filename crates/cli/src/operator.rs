//! SafeKit's operator commands under SafeKit's names (so `$SAFE/safekit
//! waitstate -m AM PRIM` works in scripts): waiting for a state, saving the
//! log, the version, checking the installed configuration — made of the
//! API calls the other commands use too — and the administrator's settings
//! `boot|failover|errd|checker on|off` (the daemon's `settings.rs`).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use holdfast_daemon::api::NodeInfo;
use holdfast_daemon::client::ApiClient;
use holdfast_daemon::modlog::LogEntry;
use holdfast_daemon::registry::ModuleSummary;
use holdfast_daemon::settings::SettingsChange;

use crate::block;

/// What a wait waits for.
#[derive(Debug, Clone)]
pub enum Awaited {
    /// One of these stable states (`waitstate`).
    States(Vec<String>),
    /// The end of a start: any stable state but STOP (`waitstart`).
    Started,
    /// A stable STOP (`waitstop`).
    Stopped,
}

impl Awaited {
    fn reached(&self, summary: &ModuleSummary) -> bool {
        if summary.view.transient {
            return false;
        }
        let state = summary.view.state.to_string();
        match self {
            Awaited::States(states) => states.iter().any(|s| s.eq_ignore_ascii_case(&state)),
            Awaited::Started => state != "STOP",
            Awaited::Stopped => state == "STOP",
        }
    }

    fn describe(&self) -> String {
        match self {
            Awaited::States(states) => states.join(" or "),
            Awaited::Started => "the end of its start".into(),
            Awaited::Stopped => "STOP".into(),
        }
    }
}

/// Polls the module until `awaited` (or `timeout`); prints the state reached.
pub fn wait(
    client: &ApiClient,
    prefix: &str,
    module: &str,
    awaited: &Awaited,
    timeout: Option<Duration>,
) -> Result<()> {
    if let Awaited::States(states) = awaited {
        const KNOWN: [&str; 6] = ["STOP", "WAIT", "ALONE", "PRIM", "SECOND", "UP"];
        if let Some(bad) = states
            .iter()
            .find(|s| !KNOWN.iter().any(|k| k.eq_ignore_ascii_case(s)))
        {
            bail!(
                "unknown state {bad:?}; expected one of {}",
                KNOWN.join(", ")
            );
        }
        if states.is_empty() {
            bail!("name the state to wait for: {}", KNOWN.join(", "));
        }
    }
    let deadline = timeout.map(|t| Instant::now() + t);
    let path = format!("{prefix}/v1/modules/{module}");
    loop {
        let summary: ModuleSummary = block(client.get(&path))?;
        if awaited.reached(&summary) {
            println!("{}", summary.view.state);
            return Ok(());
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            bail!(
                "module {module} did not reach {} within {}: it is {}{}",
                awaited.describe(),
                humantime::format_duration(timeout.unwrap_or_default()),
                summary.view.state,
                if summary.view.transient {
                    " (in transition)"
                } else {
                    ""
                }
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The whole module log into `file`, one entry a line as `log` shows it.
pub fn logsave(client: &ApiClient, prefix: &str, module: &str, file: &Path) -> Result<()> {
    let entries: Vec<LogEntry> = block(client.get(&format!(
        "{prefix}/v1/modules/{module}/log?count={}",
        usize::MAX
    )))?;
    let text: String = entries
        .iter()
        .map(|e| format!("{} | {} | {}\n", e.time, e.level, e.message))
        .collect();
    std::fs::write(file, text).with_context(|| format!("writing {}", file.display()))?;
    println!(
        "{} entries of module {module}'s log saved in {}",
        entries.len(),
        file.display()
    );
    Ok(())
}

/// The daemon's version (SafeKit's `level`).
pub fn level(client: &ApiClient, prefix: &str) -> Result<()> {
    let info: NodeInfo = block(client.get(&format!("{prefix}/v1/node")))?;
    println!("holdfast {} on node {}", info.version, info.node);
    Ok(())
}

/// The installed configuration checked again and its fingerprint, to
/// compare between nodes (SafeKit's `confcheck`).
pub fn confcheck(client: &ApiClient, prefix: &str, module: &str) -> Result<()> {
    let zip = block(client.get_bytes(&format!("{prefix}/v1/modules/{module}/package")))?;
    let package = holdfast_package::Package::from_zip(&zip)?;
    let source = format!("module {module}'s installed module.toml");
    let config = holdfast_config::parse_module(&package.config, Path::new(&source))?;
    println!(
        "module {module}: installed configuration valid, fingerprint {}",
        config.fingerprint_hex()
    );
    Ok(())
}

/// `on` or `off` (SafeKit's `boot|failover|errd|checker on|off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    On,
    Off,
}

impl Switch {
    pub fn on(self) -> bool {
        self == Switch::On
    }
}

/// `boot on|off|status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BootArg {
    On,
    Off,
    Status,
}

/// Changes the administrator's settings of a module; prints them.
pub fn set(client: &ApiClient, prefix: &str, module: &str, change: &SettingsChange) -> Result<()> {
    let summary: ModuleSummary =
        block(client.post(&format!("{prefix}/v1/modules/{module}/settings"), change))?;
    println!("{}", describe(&summary));
    Ok(())
}

/// The settings of `module`, or of every module.
pub fn settings_status(client: &ApiClient, prefix: &str, module: Option<&str>) -> Result<()> {
    let list: Vec<ModuleSummary> = match module {
        Some(name) => vec![block(client.get(&format!("{prefix}/v1/modules/{name}")))?],
        None => block(client.get(&format!("{prefix}/v1/modules")))?,
    };
    for summary in &list {
        println!("{}", describe(summary));
    }
    Ok(())
}

fn describe(summary: &ModuleSummary) -> String {
    let s = &summary.settings;
    let set = |value: Option<bool>| match value {
        Some(true) => "on",
        Some(false) => "off",
        None => "as configured",
    };
    let word = |on: bool| if on { "on" } else { "off" };
    format!(
        "module {}: boot {}, failover {}, errd {}, checker {}",
        summary.module,
        set(s.boot),
        set(s.failover),
        word(s.errd),
        word(s.checker)
    )
}
