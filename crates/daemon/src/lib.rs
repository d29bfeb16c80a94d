//! The node daemon: one process per server, running every module installed
//! on it.
//!
//! - [`shell`]: the loop of one module's task around its sans-IO state
//!   machine (timers, heartbeats, messages, scripts, persisting), shared by
//!   both kinds of module:
//!   - [`mirror`]: a mirror module (checkers, witness, replicated
//!     directories and virtual IP on its worker thread, `resources`);
//!   - [`farm`]: a farm module (the VIP's kernel side with its buckets);
//! - [`node`]: what every module of this node shares;
//! - [`replication`]: a mirror module's file replication;
//! - [`heartbeats`]: a module's authenticated heartbeat socket;
//! - [`scripts`]: running user scripts with SafeKit's arguments/environment;
//! - [`api`]: the API's module handlers (served by `holdfast-api`, on the
//!   Unix socket and over HTTPS), and [`client`] to call it;
//! - [`registry`]: installed modules, persisted under the state directory;
//! - [`modlog`]: the module log;
//! - [`events`]: the cluster's timeline (state changes with their cause
//!   chain), for the API's event stream;
//! - [`refusals`]: refusals of nodes logged without echoing a flood;
//! - [`health`]: the cloud-mode health endpoint of a module;
//! - [`supervision`]: a module's checkers and recovery policy;
//! - [`witness`]: `holdfast witness`, the split-brain witness's server;
//! - [`board`]: this node's modules' states, for module checkers.

pub mod api;
pub mod board;
pub mod client;
pub mod events;
pub mod farm;
pub mod health;
pub mod heartbeats;
pub mod mirror;
pub mod modlog;
pub mod node;
pub mod paths;
pub mod refusals;
pub mod registry;
pub mod replication;
mod resources;
pub mod scripts;
pub mod settings;
pub mod shell;
pub mod supervision;
pub mod witness;
mod worker;

use std::path::PathBuf;
use std::sync::Arc;

use holdfast_key::ClusterKey;

pub use paths::Paths;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("no usable cluster key at {path}: {reason}. Create one with `holdfast cluster keygen --out {path}` on one node and copy it to every node")]
    ClusterKey { path: String, reason: String },
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    #[error("{0} is corrupt: {1}")]
    Corrupt(String, String),
    #[error("this node ({node}) is not one of the nodes of module {module} ({nodes}); check the node names, or start the daemon with --node")]
    NotAMember {
        module: String,
        node: String,
        nodes: String,
    },
    #[error("module {module}: cannot use heartbeat port {port}: {source}")]
    HeartbeatPort {
        module: String,
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("module {module}: cannot serve the health endpoint on port {port}: {source}")]
    HealthPort {
        module: String,
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot serve the API on {path}: {source}")]
    Api {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl DaemonError {
    pub fn not_a_member(config: &holdfast_config::ModuleConfig, node: &str) -> Self {
        DaemonError::NotAMember {
            module: config.name.clone(),
            node: node.to_string(),
            nodes: config
                .nodes
                .iter()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
}

/// How the daemon was started.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// This node's name, as in the modules' `[[node]]` entries.
    pub node: String,
    pub paths: Paths,
}

/// A started node daemon: its modules run; its API is served by the
/// caller (`holdfast-api`), which calls [`Daemon::stop`] at the end.
#[derive(Debug)]
pub struct Daemon {
    pub registry: Arc<registry::Registry>,
    /// The cluster's timeline as this node sees it.
    pub events: Arc<events::EventBus>,
    pub paths: Paths,
    pub node: String,
}

/// Starts the daemon: state directories, the modules installed on this node.
pub async fn start(options: DaemonOptions) -> Result<Daemon, DaemonError> {
    let paths = options.paths;
    let key_path = paths.cluster_key();
    let key = ClusterKey::load(&key_path).map_err(|e| DaemonError::ClusterKey {
        path: key_path.display().to_string(),
        reason: e.to_string(),
    })?;
    for dir in [
        paths.modules(),
        paths.safe_dir().join("private/bin"),
        paths.state_dir.join("var"),
    ] {
        std::fs::create_dir_all(&dir).map_err(|e| DaemonError::Io(dir.display().to_string(), e))?;
    }
    let exe =
        std::env::current_exe().map_err(|e| DaemonError::Io("current executable".into(), e))?;
    install_safekit_command(&paths, &exe)?;
    let incarnation = next_incarnation(&paths)?;
    let ctx = Arc::new(node::NodeContext {
        node: options.node.clone(),
        key,
        incarnation,
        paths: paths.clone(),
        exe,
        modules: Default::default(),
        events: Arc::new(events::EventBus::new(&options.node, incarnation)),
    });
    let events = ctx.events.clone();
    let registry = Arc::new(registry::Registry::new(ctx));
    registry.load_installed().await;
    Ok(Daemon {
        registry,
        events,
        paths,
        node: options.node,
    })
}

impl Daemon {
    /// Stops the modules: their applications hand over to the peers.
    pub async fn stop(self) {
        tracing::info!("shutting down: stopping modules");
        self.registry.shutdown().await;
    }
}

/// Resolves at SIGTERM or SIGINT: the daemon's end.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the daemon can still be killed; run on.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// `$SAFE/safekit` for SafeKit scripts: a link to this executable, which
/// answers to that name with SafeKit's command syntax.
fn install_safekit_command(paths: &Paths, exe: &std::path::Path) -> Result<(), DaemonError> {
    let link = paths.safe_dir().join("safekit");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(exe, &link)
        .map_err(|e| DaemonError::Io(link.display().to_string(), e))
}

/// Grows at every start: a restarted daemon's heartbeats are never taken for
/// replays of its previous life's, and old ones never for new ones.
fn next_incarnation(paths: &Paths) -> Result<u64, DaemonError> {
    let path: PathBuf = paths.incarnation();
    let previous = std::fs::read_to_string(&path)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let incarnation = (previous + 1).max(clock);
    holdfast_replication::durable::replace(&path, incarnation.to_string().as_bytes())
        .map_err(|e| DaemonError::Io(path.display().to_string(), e))?;
    Ok(incarnation)
}
