//! Cloud mode: where no virtual IP can move (public clouds), the cloud's load
//! balancer probes every node and sends traffic to those answering 200. This
//! endpoint answers 200 only on the nodes that should receive traffic: the
//! one running a mirror module's application as primary (ALONE or PRIM), or
//! every UP node of a farm module, not in transition; 503 elsewhere, with
//! the state in the body either way.

use std::net::{Ipv4Addr, SocketAddr};

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use holdfast_membership::{ModuleView, State};
use tokio::sync::watch;

use crate::DaemonError;

/// The running endpoint; dropping it stops it.
#[derive(Debug)]
pub struct HealthServer(tokio::task::JoinHandle<()>);

impl Drop for HealthServer {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub async fn serve(
    module: &str,
    port: u16,
    view: watch::Receiver<ModuleView>,
) -> Result<HealthServer, DaemonError> {
    let address = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|source| DaemonError::HealthPort {
            module: module.to_string(),
            port,
            source,
        })?;
    let router = Router::new().route(
        "/",
        get(move || {
            let view = view.borrow().clone();
            async move {
                let serving = !view.transient
                    && (view.state == State::Up || (view.state.is_primary() && view.app_active));
                let status = if serving {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                (status, format!("{}\n", view.state))
            }
        }),
    );
    Ok(HealthServer(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!("health endpoint on port {port} stopped: {e}");
        }
    })))
}
