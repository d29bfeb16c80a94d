//! The HTTPS listener: each connection's TLS handshake (a client
//! certificate not issued by the cluster's CA fails it, and the refusal is
//! logged with the client's address), then the one router, told the
//! connection it serves (address, node certificate).

use std::sync::Arc;

use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tower::ServiceExt;

use crate::access::Connection;
use crate::app::Serving;
use crate::App;

/// Waits until this node is a member (certificates at start, or `init` or
/// `join` later), then listens and serves `router` until aborted.
pub async fn run(app: Arc<App>, router: axum::Router) {
    let mut tls = app.watch_tls();
    if tls.wait_for(Option::is_some).await.is_err() {
        return;
    }
    let address = app.settings.listen;
    let listener = match tokio::net::TcpListener::bind(address).await {
        Ok(listener) => listener,
        Err(e) => {
            let reason = format!("cannot serve the HTTPS API on {address}: {e}");
            tracing::error!("{reason}");
            return app.set_serving(Serving::Failed(reason));
        }
    };
    tracing::info!(
        "node {} serving the HTTPS API on {address}{}",
        app.node,
        app.settings.base_path
    );
    app.set_serving(Serving::Listening);
    let catching_up = app.clone();
    tokio::spawn(async move { crate::peers::catch_up(&catching_up).await });
    accept(app, listener, router).await
}

async fn accept(app: Arc<App>, listener: tokio::net::TcpListener, router: axum::Router) {
    loop {
        let (stream, address) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors, say: try again shortly.
                tracing::warn!("HTTPS API accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(tls) = app.tls() else { continue };
        let router = router.clone();
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                tls.acceptor.accept(stream),
            )
            .await;
            let stream = match handshake {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    return tracing::warn!("refused TLS connection from {address}: {e}");
                }
                Err(_) => {
                    return tracing::warn!(
                        "refused TLS connection from {address}: no handshake within 10 s"
                    );
                }
            };
            let node = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(holdfast_pki::node_name);
            let connection = Connection::Remote { address, node };
            let service =
                router.map_request(move |mut request: hyper::Request<hyper::body::Incoming>| {
                    request.extensions_mut().insert(connection.clone());
                    request
                });
            let served = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
                .await;
            if let Err(e) = served {
                tracing::debug!("HTTPS connection from {address}: {e}");
            }
        });
    }
}
