//! The node's API server: the one router (`routes.rs`) served on the
//! root-only Unix socket (root is admin there) and, once the node is a
//! member of a cluster, over HTTPS on TCP (`https.rs`) — **where a caller is
//! identified and its role checked** (`access/`: roles, sessions, API
//! tokens, the guard every route passes, the audit log). Also the cluster
//! itself: its record kept identical on every node (`record.rs`: members,
//! users, API tokens), enrolment and certificate rotation
//! (`routes/cluster.rs`), the calls between nodes over mutual TLS
//! (`peers.rs`), the relay to another node and the cluster-wide view
//! (`routes/nodes.rs`), the cluster's timeline (`routes/events.rs`, every
//! node's events relayed by `event_relay.rs`), and the OpenAPI document
//! generated from them all (`routes/openapi.rs`).
//!
//! Depends on the daemon (whose module handlers it serves) and on
//! `holdfast-pki` (certificates and TLS settings).

pub mod access;
pub mod app;
mod body;
pub mod counters;
pub mod error;
pub mod event_relay;
pub mod https;
pub mod peers;
pub mod record;
pub mod routes;
pub mod settings;

pub use app::App;
pub use error::ApiError;
pub use settings::Settings;

use std::sync::Arc;

use holdfast_daemon::{Daemon, DaemonError};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    #[error("{0}")]
    Settings(String),
    #[error("this node's certificates: {0}")]
    Pki(#[from] holdfast_pki::PkiError),
}

/// Serves the API of a started daemon until SIGTERM or SIGINT, then stops
/// the daemon's modules.
pub async fn serve(daemon: Daemon) -> Result<(), ServeError> {
    let settings = Settings::load(&settings::path(&daemon.paths))?;
    let socket = daemon.paths.api_socket();
    let listener = holdfast_daemon::api::bind(&socket)?;
    let app = App::new(&daemon, settings)?;
    let router = routes::router(app.clone());
    let under_base = routes::under_base_path(router.clone(), &app.settings.base_path);
    let https = tokio::spawn(https::run(app.clone(), under_base));
    let relay = tokio::spawn(event_relay::run(app.clone()));
    let counters = tokio::spawn(app.counters.clone().follow(app.events.clone()));
    tracing::info!(
        "node {} serving the API on {}",
        daemon.node,
        socket.display()
    );
    let local = router.layer(axum::Extension(access::Connection::Local));
    let served = axum::serve(listener, local)
        .with_graceful_shutdown(holdfast_daemon::shutdown_signal())
        .await;
    https.abort();
    relay.abort();
    counters.abort();
    daemon.stop().await;
    let _ = std::fs::remove_file(&socket);
    served.map_err(|source| {
        ServeError::Daemon(DaemonError::Api {
            path: socket.display().to_string(),
            source,
        })
    })
}

/// The shared state every route reads.
pub type Shared = axum::extract::State<Arc<App>>;
