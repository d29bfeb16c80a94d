//! `holdfast`: the daemon and the command line in one executable.
//!
//! Every administration command is a client of the local daemon's API (Unix
//! socket, `--api`). Called as `safekit` (the `$SAFE/safekit` link given to
//! scripts), it accepts the same commands, so SafeKit scripts calling
//! `"$SAFE/safekit" printi "msg"` work unchanged.

mod cluster;
mod doctor;
mod events;
mod operator;
mod package;
mod progress;
mod state;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use holdfast_daemon::api::{CommandRequest, PrintRequest};
use holdfast_daemon::client::ApiClient;
use holdfast_daemon::modlog::LogEntry;
use holdfast_daemon::registry::{ModuleSummary, Uninstalled};
use holdfast_daemon::settings::SettingsChange;
use holdfast_daemon::{DaemonOptions, Paths};
use holdfast_key::ClusterKey;
use holdfast_membership::{Command, LogLevel};

#[derive(Parser, Debug)]
#[command(
    name = "holdfast",
    version,
    about = "Software-only high availability: mirror modules with failover"
)]
struct Cli {
    /// The daemon's API socket.
    #[arg(
        long,
        global = true,
        env = "HOLDFAST_API",
        default_value = "/var/lib/holdfast/api.sock"
    )]
    api: PathBuf,
    /// Run the command on these nodes (SafeKit's -H): names separated by
    /// commas, or '*' for every node of the cluster. This node's daemon
    /// relays to them over mutual TLS.
    #[arg(short = 'H', long = "hosts", global = true)]
    hosts: Option<String>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Args, Debug)]
struct ModuleArg {
    /// Module name (defaults to $SAFEMODULE inside scripts).
    #[arg(short, long, env = "SAFEMODULE")]
    module: String,
    /// Who asks (SafeKit's `-i identity`), written to the module log.
    #[arg(short = 'i', long, hide = true)]
    identity: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the node daemon (usually from systemd).
    Daemon {
        /// This node's name, as in the modules' [[node]] entries.
        #[arg(long, env = "HOLDFAST_NODE")]
        node: Option<String>,
        #[arg(long, default_value = holdfast_daemon::paths::DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        #[arg(long, default_value = holdfast_daemon::paths::DEFAULT_CONF_DIR)]
        conf_dir: PathBuf,
    },
    /// Run the split-brain witness (on a third machine): grants each mirror
    /// module's lease to one node at a time (modules with a [witness]).
    Witness {
        /// Address and UDP port to listen on (the modules' witness.port).
        #[arg(long, default_value = "0.0.0.0:4810")]
        listen: std::net::SocketAddr,
        /// The cluster key, the same file as on the nodes.
        #[arg(long, default_value = "/etc/holdfast/cluster.key")]
        key: PathBuf,
        /// The longest lease granted; after a restart, nothing is granted
        /// for this long (leases granted before may still run).
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        max_lease: std::time::Duration,
        /// Where the witness keeps the copies it was told are outdated
        /// (they must outlive a restart of the witness).
        #[arg(long, default_value = "/var/lib/holdfast/witness.json")]
        state: PathBuf,
    },
    /// Cluster-wide settings.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Check that this host can run Holdfast and its installed modules (FUSE,
    /// nftables, kernel, clock, ports, peers): one line per check, OK, WARN
    /// or FAIL with the fix; exit code 1 on any FAIL.
    Doctor {
        /// This node's name (default: the running daemon's, else the host name).
        #[arg(long, env = "HOLDFAST_NODE")]
        node: Option<String>,
        #[arg(long, default_value = holdfast_daemon::paths::DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        #[arg(long, default_value = holdfast_daemon::paths::DEFAULT_CONF_DIR)]
        conf_dir: PathBuf,
    },
    /// Users of the API and their roles (admin, control, monitor).
    #[command(subcommand)]
    User(cluster::UserCmd),
    /// API tokens: a role and an expiry, for scripts and monitoring.
    #[command(subcommand)]
    Token(cluster::TokenCmd),
    /// This node's audit log: every command, who, from where, the result.
    Audit {
        #[arg(short = 's', long, default_value_t = 300)]
        count: usize,
    },
    /// The cluster's timeline: every node's state changes with their
    /// cause chain (checker, decision, scripts, resources, result).
    Events {
        /// Keep following new events (after the recent ones).
        #[arg(short, long)]
        follow: bool,
        /// Only events since this long ago (e.g. 10m, 2h).
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<std::time::Duration>,
        /// One JSON object per line (the stream's schema, docs/events.md).
        #[arg(long)]
        json: bool,
    },
    /// Install, list, import and remove modules.
    #[command(subcommand)]
    Module(ModuleCmd),
    /// Start the module on this node.
    Start(ModuleArg),
    /// Stop the module on this node (a primary hands over to its peer).
    Stop(ModuleArg),
    /// Restart the application locally (no failover).
    Restart(ModuleArg),
    /// Move the primary role to the other node.
    Swap(ModuleArg),
    /// Force this node primary (first start, or failover off).
    Prim(ModuleArg),
    /// Start this node as secondary.
    Second {
        #[command(flatten)]
        module: ModuleArg,
        /// Replace this node's replicated data by the primary's (after a
        /// refusal: data on both sides with no shared history, or split
        /// brain). Only the blocks that differ are sent.
        #[arg(long)]
        discard_data: bool,
    },
    /// Stop the module at once when a stop has no effect: the script
    /// running now (a start or stop that hangs) is killed first.
    Forcestop(ModuleArg),
    /// Stop the module here (the peer takes over) and start it again.
    Stopstart(ModuleArg),
    /// State of the modules on this node.
    State {
        #[arg(short, long, env = "SAFEMODULE")]
        module: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Local state only (with -q: SafeKit's `state -lq`).
        #[arg(short = 'l')]
        local: bool,
        /// Print only the state and exit with its code: STOP 0, WAIT 1, ALONE 2, PRIM 3, SECOND 4.
        #[arg(short = 'q')]
        quiet: bool,
    },
    /// Follow a resynchronisation of the replicated directories with a
    /// progress bar (on the primary, which sends), until they mirror.
    Progress {
        #[command(flatten)]
        module: ModuleArg,
    },
    /// The module log: transitions with their reasons, script results.
    Log {
        #[command(flatten)]
        module: ModuleArg,
        /// Number of last entries.
        #[arg(short = 's', long, default_value_t = 300)]
        count: usize,
    },
    /// Wait until the module is in one of these stable states (STOP, WAIT,
    /// ALONE, PRIM, SECOND, UP); prints it.
    Waitstate {
        #[command(flatten)]
        module: ModuleArg,
        #[arg(required = true)]
        states: Vec<String>,
        /// Give up after this long (default: wait as long as it takes).
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<std::time::Duration>,
    },
    /// Wait for the end of the module's start (a stable state other than STOP).
    Waitstart {
        #[command(flatten)]
        module: ModuleArg,
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<std::time::Duration>,
    },
    /// Wait for the end of the module's stop (a stable STOP).
    Waitstop {
        #[command(flatten)]
        module: ModuleArg,
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<std::time::Duration>,
    },
    /// Save the whole module log to a file.
    Logsave {
        #[command(flatten)]
        module: ModuleArg,
        file: PathBuf,
    },
    /// The version of Holdfast on this node.
    Level,
    /// Check the installed configuration of a module again and print its
    /// fingerprint (the same on every node means the same configuration).
    Confcheck(ModuleArg),
    /// Start the module at daemon start, or not, whatever its configuration
    /// says; `status`: the settings of the module (or of every module).
    Boot {
        what: operator::BootArg,
        #[arg(short, long, env = "SAFEMODULE")]
        module: Option<String>,
    },
    /// Turn the module's automatic failover on or off (on every node).
    Failover {
        switch: operator::Switch,
        #[command(flatten)]
        module: ModuleArg,
    },
    /// Turn the module's process checkers on or off.
    Errd {
        switch: operator::Switch,
        #[command(flatten)]
        module: ModuleArg,
    },
    /// Turn the module's other checkers (TCP, ping, interface, custom,
    /// module) on or off.
    Checker {
        switch: operator::Switch,
        #[command(flatten)]
        module: ModuleArg,
    },
    /// Write an information message to the module log (from scripts).
    Printi {
        #[arg(short, long, env = "SAFEMODULE")]
        module: String,
        message: Vec<String>,
    },
    /// Write an error message to the module log (from scripts).
    Printe {
        #[arg(short, long, env = "SAFEMODULE")]
        module: String,
        message: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
enum ClusterCmd {
    /// Generate a cluster key (copy the same file to /etc/holdfast/cluster.key on every node).
    Keygen {
        /// Write to this file (mode 0600) instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    #[command(flatten)]
    Membership(cluster::MembershipCmd),
}

#[derive(Subcommand, Debug)]
enum ModuleCmd {
    /// Install (or replace) a module from a package: a .safe or .zip, a
    /// directory laid out as one (module.toml or conf/userconfig.xml, and
    /// bin/), or a TOML file with its scripts directory.
    Install {
        package: PathBuf,
        #[command(flatten)]
        import: package::ImportArgs,
    },
    /// Install a module on every node it names (its [[node]] entries),
    /// through this node's daemon (SafeKit's `safekit config`).
    Deploy {
        package: PathBuf,
        #[command(flatten)]
        import: package::ImportArgs,
    },
    /// Check a package (or TOML file) as install would, installing nothing:
    /// against this node's modules too when the daemon answers.
    Check {
        package: PathBuf,
        #[command(flatten)]
        import: package::ImportArgs,
    },
    /// Convert a SafeKit userconfig.xml to the native format.
    Import {
        userconfig: PathBuf,
        #[command(flatten)]
        import: package::ImportArgs,
        /// Write the TOML here instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Write an installed module as a package (to install on other nodes).
    Export {
        #[command(flatten)]
        module: ModuleArg,
        /// The package to write (default: NAME.zip).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Modules installed on this node, with their ids.
    List,
    /// Remove a stopped module from this node, keeping its package in the
    /// daemon's backups directory.
    #[command(visible_alias = "remove")]
    Uninstall(ModuleArg),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("holdfast: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let client = ApiClient::new(&cli.api);
    let on = Targets::new(&client, cli.hosts.as_deref())?;
    match cli.command {
        Cmd::Daemon {
            node,
            state_dir,
            conf_dir,
        } => {
            init_tracing();
            let node = match node {
                Some(node) => node,
                None => std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .context("no --node given and the host name is unreadable")?
                    .trim()
                    .to_string(),
            };
            let options = DaemonOptions {
                node,
                paths: Paths::new(state_dir, conf_dir),
            };
            runtime()?.block_on(async {
                let daemon = holdfast_daemon::start(options).await?;
                holdfast_api::serve(daemon).await
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Witness {
            listen,
            key,
            max_lease,
            state,
        } => {
            init_tracing();
            let key = ClusterKey::load(&key)
                .with_context(|| "the witness needs the cluster key of the nodes")?;
            runtime()?.block_on(holdfast_daemon::witness::serve(
                listen, key, max_lease, &state,
            ))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Cluster(ClusterCmd::Keygen { out }) => {
            let key = format!("{}\n", ClusterKey::generate().to_hex());
            match out {
                Some(path) => write_private(&path, &key)?,
                None => print!("{key}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Doctor {
            node,
            state_dir,
            conf_dir,
        } => {
            let findings = doctor::run(&doctor::Options {
                node,
                paths: Paths::new(state_dir, conf_dir),
                api: cli.api,
            });
            Ok(match doctor::print(&findings) {
                doctor::Status::Fail => ExitCode::from(1),
                doctor::Status::Ok | doctor::Status::Warn => ExitCode::SUCCESS,
            })
        }
        Cmd::Cluster(ClusterCmd::Membership(cmd)) => cluster::membership(&client, cmd),
        Cmd::User(cmd) => cluster::user(&client, cmd),
        Cmd::Token(cmd) => cluster::token(&client, cmd),
        Cmd::Audit { count } => cluster::audit(&client, count),
        Cmd::Events {
            follow,
            since,
            json,
        } => events::run(&client, follow, since, json),
        Cmd::Module(cmd) => module(&client, &on, cmd),
        Cmd::Start(m) => on.each(|p| command(&client, p, &m, CommandRequest::new(Command::Start))),
        Cmd::Stop(m) => on.each(|p| command(&client, p, &m, CommandRequest::new(Command::Stop))),
        Cmd::Restart(m) => {
            on.each(|p| command(&client, p, &m, CommandRequest::new(Command::Restart)))
        }
        Cmd::Swap(m) => on.each(|p| command(&client, p, &m, CommandRequest::new(Command::Swap))),
        Cmd::Prim(m) => on.each(|p| command(&client, p, &m, CommandRequest::new(Command::Prim))),
        Cmd::Second {
            module,
            discard_data,
        } => on.each(|p| {
            let request = CommandRequest {
                discard_data,
                ..CommandRequest::new(Command::Second)
            };
            command(&client, p, &module, request)
        }),
        Cmd::Forcestop(m) => on.each(|p| {
            let request = CommandRequest {
                force: true,
                ..CommandRequest::new(Command::Stop)
            };
            command(&client, p, &m, request)
        }),
        Cmd::Stopstart(m) => {
            on.each(|p| command(&client, p, &m, CommandRequest::new(Command::StopStart)))
        }
        Cmd::Progress { module } => {
            progress::follow(|| block(client.get(&format!("/v1/modules/{}", module.module))))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::State {
            module,
            json,
            local: _,
            quiet,
        } => {
            if let Some(nodes) = &on.nodes {
                return cluster_state(&client, nodes, module.as_deref(), json);
            }
            let list: Vec<ModuleSummary> = match &module {
                Some(name) => vec![block(client.get(&format!("/v1/modules/{name}")))?],
                None => block(client.get("/v1/modules"))?,
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(ExitCode::SUCCESS);
            }
            if quiet {
                // The exit code is one module's state: which one must be clear.
                let only = match list.as_slice() {
                    [] => bail!("no module installed on this node"),
                    [only] => only,
                    several => bail!(
                        "{} modules on this node ({}): name one with -m",
                        several.len(),
                        several
                            .iter()
                            .map(|m| m.module.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                };
                println!("{}", only.view.state);
                return Ok(ExitCode::from(only.view.state.exit_code() as u8));
            }
            state::print(&list);
            // A member's certificate expiry, so that it is seen before it
            // ends (`holdfast cluster rotate` renews it).
            if let Ok(status) =
                block(client.get::<holdfast_api::routes::cluster::ClusterStatus>("/v1/cluster"))
            {
                if let Some(certificate) = &status.certificate {
                    println!(
                        "certificate of {}: {} days left (holdfast cluster status)",
                        status.node, certificate.days_left
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Log { module, count } => on.each(|prefix| {
            let entries: Vec<LogEntry> = block(client.get(&format!(
                "{prefix}/v1/modules/{}/log?count={count}",
                module.module
            )))?;
            for entry in entries {
                println!("{} | {} | {}", entry.time, entry.level, entry.message);
            }
            Ok(())
        }),
        Cmd::Waitstate {
            module,
            states,
            timeout,
        } => on.each(|p| {
            let awaited = operator::Awaited::States(states.clone());
            operator::wait(&client, p, &module.module, &awaited, timeout)
        }),
        Cmd::Waitstart { module, timeout } => on.each(|p| {
            operator::wait(
                &client,
                p,
                &module.module,
                &operator::Awaited::Started,
                timeout,
            )
        }),
        Cmd::Waitstop { module, timeout } => on.each(|p| {
            operator::wait(
                &client,
                p,
                &module.module,
                &operator::Awaited::Stopped,
                timeout,
            )
        }),
        Cmd::Logsave { module, file } => {
            on.each(|p| operator::logsave(&client, p, &module.module, &file))
        }
        Cmd::Level => on.each(|p| operator::level(&client, p)),
        Cmd::Confcheck(module) => on.each(|p| operator::confcheck(&client, p, &module.module)),
        Cmd::Boot { what, module } => on.each(|p| {
            let on = match what {
                operator::BootArg::Status => {
                    return operator::settings_status(&client, p, module.as_deref())
                }
                operator::BootArg::On => true,
                operator::BootArg::Off => false,
            };
            let Some(module) = &module else {
                bail!("boot on|off: name the module with -m");
            };
            let change = SettingsChange {
                boot: Some(on),
                ..SettingsChange::default()
            };
            operator::set(&client, p, module, &change)
        }),
        Cmd::Failover { switch, module } => on.each(|p| {
            let change = SettingsChange {
                failover: Some(switch.on()),
                ..SettingsChange::default()
            };
            operator::set(&client, p, &module.module, &change)
        }),
        Cmd::Errd { switch, module } => on.each(|p| {
            let change = SettingsChange {
                errd: Some(switch.on()),
                ..SettingsChange::default()
            };
            operator::set(&client, p, &module.module, &change)
        }),
        Cmd::Checker { switch, module } => on.each(|p| {
            let change = SettingsChange {
                checker: Some(switch.on()),
                ..SettingsChange::default()
            };
            operator::set(&client, p, &module.module, &change)
        }),
        Cmd::Printi { module, message } => print(&client, &module, LogLevel::Info, message),
        Cmd::Printe { module, message } => print(&client, &module, LogLevel::Error, message),
    }
}

/// Diagnostics of the long-running commands on stderr (`RUST_LOG`, default info).
fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting tokio")
}

/// Runs one API call on a small runtime.
pub(crate) fn block<T>(
    future: impl std::future::Future<Output = Result<T, holdfast_daemon::client::ClientError>>,
) -> Result<T> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(runtime.block_on(future)?)
}

/// The nodes a command runs on: this one, or those of `-H` through the
/// relay (`/v1/nodes/{node}/…`).
struct Targets {
    nodes: Option<Vec<String>>,
}

impl Targets {
    fn new(client: &ApiClient, hosts: Option<&str>) -> Result<Self> {
        let nodes = match hosts {
            None => None,
            Some("*") => {
                let status: holdfast_api::routes::cluster::ClusterStatus =
                    block(client.get("/v1/cluster"))?;
                if status.nodes.is_empty() {
                    bail!("-H '*': node {} is not a member of a cluster", status.node);
                }
                Some(status.nodes.into_iter().map(|n| n.name).collect())
            }
            Some(list) => Some(
                list.split(',')
                    .map(|n| n.trim().to_string())
                    .filter(|n| !n.is_empty())
                    .collect(),
            ),
        };
        Ok(Self { nodes })
    }

    /// Runs `run` with the path prefix of each node; a node's failure is
    /// printed and the others still run (exit code 1 then).
    fn each(&self, run: impl Fn(&str) -> Result<()>) -> Result<ExitCode> {
        let Some(nodes) = &self.nodes else {
            run("")?;
            return Ok(ExitCode::SUCCESS);
        };
        let mut failed = false;
        for node in nodes {
            println!("== {node}");
            if let Err(e) = run(&format!("/v1/nodes/{node}")) {
                eprintln!("holdfast: {node}: {e:#}");
                failed = true;
            }
        }
        Ok(if failed {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        })
    }
}

/// `state -H`: every node's modules, through the cluster-wide view; a
/// node that does not answer is shown unreachable, with why.
fn cluster_state(
    client: &ApiClient,
    nodes: &[String],
    module: Option<&str>,
    json: bool,
) -> Result<ExitCode> {
    use holdfast_api::routes::nodes::NodeModules;
    let mut views: Vec<NodeModules> =
        block(client.get(&format!("/v1/cluster/state?nodes={}", nodes.join(","))))?;
    if let Some(module) = module {
        for view in &mut views {
            view.modules.retain(|m| m.module == module);
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&views)?);
        return Ok(ExitCode::SUCCESS);
    }
    let live: Vec<ModuleSummary> = views.iter().flat_map(|v| v.modules.clone()).collect();
    state::print(&live);
    for view in views.iter().filter(|v| !v.reachable) {
        println!(
            "{:<12} {:<10} UNREACHABLE: {}",
            "-",
            view.node,
            view.reason.as_deref().unwrap_or("no answer")
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn command(
    client: &ApiClient,
    prefix: &str,
    arg: &ModuleArg,
    request: CommandRequest,
) -> Result<()> {
    if let Some(who) = &arg.identity {
        let note = format!("action {} requested by {who}", request.command.as_str());
        let _: () = block(client.post(
            &format!("{prefix}/v1/modules/{}/log", arg.module),
            &PrintRequest {
                level: LogLevel::Info,
                message: note,
            },
        ))?;
    }
    let summary: ModuleSummary = block(client.post(
        &format!("{prefix}/v1/modules/{}/command", arg.module),
        &request,
    ))?;
    state::print(&[summary]);
    Ok(())
}

fn print(
    client: &ApiClient,
    module: &str,
    level: LogLevel,
    message: Vec<String>,
) -> Result<ExitCode> {
    let message = message.join(" ");
    let _: () = block(client.post(
        &format!("/v1/modules/{module}/log"),
        &PrintRequest { level, message },
    ))?;
    Ok(ExitCode::SUCCESS)
}

fn module(client: &ApiClient, on: &Targets, cmd: ModuleCmd) -> Result<ExitCode> {
    match cmd {
        ModuleCmd::Check {
            package: path,
            import,
        } => {
            let (ids, unreachable) = match installed_ids(client) {
                Ok(ids) => (ids, None),
                Err(e) => (BTreeMap::new(), Some(e)),
            };
            let loaded = package::load(&path, &import, &ids)?;
            warn(&path, &loaded.warnings);
            let name = holdfast_config::parse_module(&loaded.package.config, &path)?.name;
            let zip = loaded.package.to_zip()?;
            match unreachable {
                None => {
                    let () = block(client.post_package(&install_path(&path, true), zip))?;
                    println!(
                        "{}: module {name} is valid and can be installed on this node",
                        path.display()
                    );
                }
                Some(e) => println!(
                    "{}: module {name} is valid (not checked against this node's modules: {e:#})",
                    path.display()
                ),
            }
        }
        ModuleCmd::Install {
            package: path,
            import,
        } => {
            let ids = installed_ids(client)?;
            let loaded = package::load(&path, &import, &ids)?;
            warn(&path, &loaded.warnings);
            let zip = loaded.package.to_zip()?;
            return on.each(|prefix| install(client, prefix, &path, zip.clone()));
        }
        ModuleCmd::Deploy {
            package: path,
            import,
        } => {
            let ids = installed_ids(client)?;
            let loaded = package::load(&path, &import, &ids)?;
            warn(&path, &loaded.warnings);
            let config = holdfast_config::parse_module(&loaded.package.config, &path)?;
            let zip = loaded.package.to_zip()?;
            let nodes = config.nodes.iter().map(|n| n.name.clone()).collect();
            return Targets { nodes: Some(nodes) }
                .each(|prefix| install(client, prefix, &path, zip.clone()));
        }
        ModuleCmd::Import {
            userconfig,
            import,
            out,
        } => {
            let Some(name) = &import.name else {
                bail!("give the module's name with --name");
            };
            let ids = installed_ids(client).unwrap_or_default();
            let text = std::fs::read_to_string(&userconfig)
                .with_context(|| format!("reading {}", userconfig.display()))?;
            let id = import.id.unwrap_or_else(|| package::free_id(&ids, name));
            let (config, warnings) = package::import(&text, &userconfig, name, id, &import)?;
            for warning in warnings {
                eprintln!("warning: {}: {warning}", userconfig.display());
            }
            let toml = holdfast_config::to_toml(&config);
            match out {
                Some(path) => std::fs::write(&path, toml)
                    .with_context(|| format!("writing {}", path.display()))?,
                None => print!("{toml}"),
            }
        }
        ModuleCmd::Export { module, out } => {
            let zip = block(client.get_bytes(&format!("/v1/modules/{}/package", module.module)))?;
            let out = out.unwrap_or_else(|| PathBuf::from(format!("{}.zip", module.module)));
            std::fs::write(&out, zip).with_context(|| format!("writing {}", out.display()))?;
            println!("module {} exported to {}", module.module, out.display());
        }
        ModuleCmd::List => {
            return on.each(|prefix| {
                let list: Vec<ModuleSummary> = block(client.get(&format!("{prefix}/v1/modules")))?;
                for m in list {
                    let id = m.id.map(|id| id.to_string()).unwrap_or_else(|| "-".into());
                    println!("{}\t{id}\t{}", m.module, m.view.state);
                }
                Ok(())
            });
        }
        ModuleCmd::Uninstall(arg) => {
            let done: Uninstalled = block(client.delete(&format!("/v1/modules/{}", arg.module)))?;
            println!(
                "module {} uninstalled; its package is kept in {}",
                arg.module, done.backup
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Installs the package on the node of `prefix` (this one when empty).
fn install(client: &ApiClient, prefix: &str, path: &Path, zip: Vec<u8>) -> Result<()> {
    let summary: ModuleSummary =
        block(client.post_package(&format!("{prefix}{}", install_path(path, false)), zip))?;
    let id = summary
        .id
        .map(|id| format!(" (id {id})"))
        .unwrap_or_default();
    println!(
        "module {}{id} installed on node {}",
        summary.module, summary.node
    );
    Ok(())
}

/// The ids of this node's modules, by name.
fn installed_ids(client: &ApiClient) -> Result<BTreeMap<String, u16>> {
    let list: Vec<ModuleSummary> = block(client.get("/v1/modules"))?;
    Ok(list
        .into_iter()
        .filter_map(|m| Some((m.module, m.id?)))
        .collect())
}

fn warn(source: &Path, warnings: &[String]) {
    for warning in warnings {
        eprintln!("warning: {}: {warning}", source.display());
    }
}

/// `POST /v1/modules` with the package's path as its source (percent-encoded).
fn install_path(package: &Path, check: bool) -> String {
    let source = std::fs::canonicalize(package).unwrap_or_else(|_| package.to_path_buf());
    let mut encoded = String::new();
    for byte in source.as_os_str().as_encoded_bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                encoded.push(*byte as char)
            }
            _ => encoded.push_str(&format!("%{byte:02X}")),
        }
    }
    format!("/v1/modules?source={encoded}&check={check}")
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}
