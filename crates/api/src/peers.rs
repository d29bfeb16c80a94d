//! Calls to other nodes' APIs over mutual TLS: this node presents its
//! certificate and trusts only the cluster's CA. Used by the relay, the
//! cluster-wide view, and the record's exchange. Every call is bounded in
//! time: a node that does not answer is reported unreachable, with why.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use futures_util::future::join_all;
use holdfast_pki::rustls::pki_types::ServerName;
use holdfast_pki::rustls::ClientConfig;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

use crate::record::Record;
use crate::{ApiError, App};

/// How long a call to another node may take, connection included.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Another node's answer.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// One HTTPS call to `address`, the server's certificate checked against
/// its IP address.
pub async fn call(
    config: Arc<ClientConfig>,
    address: SocketAddr,
    method: Method,
    path: &str,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Answer, String> {
    tokio::time::timeout(
        CALL_TIMEOUT,
        call_unbounded(config, address, method, path, headers, body),
    )
    .await
    .map_err(|_| format!("no answer from {address} within {CALL_TIMEOUT:?}"))?
}

async fn call_unbounded(
    config: Arc<ClientConfig>,
    address: SocketAddr,
    method: Method,
    path: &str,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Answer, String> {
    let Connection {
        request: mut sender,
        driver,
    } = connect(config, address).await?;
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", address.to_string())
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    request.headers_mut().extend(headers);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request to {address}: {e}"))?;
    let status = response.status();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("answer of {address}: {e}"))?
        .to_bytes();
    driver.abort();
    Ok(Answer {
        status,
        headers,
        body,
    })
}

/// An answer whose body is read as it comes (an event stream); the
/// connection lives as long as it.
#[derive(Debug)]
pub struct Streaming {
    pub status: StatusCode,
    pub body: hyper::body::Incoming,
    driver: tokio::task::JoinHandle<Result<(), hyper::Error>>,
}

impl Drop for Streaming {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// A GET to `address` whose answer's headers come within
/// [`CALL_TIMEOUT`]; its body is the caller's to read.
pub async fn open(
    config: Arc<ClientConfig>,
    address: SocketAddr,
    path: &str,
) -> Result<Streaming, String> {
    tokio::time::timeout(CALL_TIMEOUT, async {
        let mut sender = connect(config, address).await?;
        let request = hyper::Request::builder()
            .method(Method::GET)
            .uri(path)
            .header("host", address.to_string())
            .header("accept", "text/event-stream")
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let response = sender
            .request
            .send_request(request)
            .await
            .map_err(|e| format!("request to {address}: {e}"))?;
        Ok(Streaming {
            status: response.status(),
            body: response.into_body(),
            driver: sender.driver,
        })
    })
    .await
    .map_err(|_| format!("no answer from {address} within {CALL_TIMEOUT:?}"))?
}

/// An HTTP connection over mutual TLS, and the task driving it.
#[derive(Debug)]
struct Connection {
    request: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    driver: tokio::task::JoinHandle<Result<(), hyper::Error>>,
}

async fn connect(config: Arc<ClientConfig>, address: SocketAddr) -> Result<Connection, String> {
    let tcp = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|e| format!("connecting to {address}: {e}"))?;
    let name = ServerName::IpAddress(address.ip().into());
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS with {address}: {e}"))?;
    let (request, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| format!("HTTP with {address}: {e}"))?;
    Ok(Connection {
        request,
        driver: tokio::spawn(connection),
    })
}

/// A JSON call from this node, as a node, to the member `node`.
pub async fn node_call<T: serde::de::DeserializeOwned>(
    app: &App,
    node: &str,
    method: Method,
    path: &str,
    body: Option<&impl serde::Serialize>,
) -> Result<T, ApiError> {
    let tls = app.member_tls()?;
    let address = app
        .record()
        .nodes
        .get(node)
        .map(|m| m.address)
        .ok_or_else(|| ApiError::not_found(format!("no node {node} in the cluster")))?;
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    let bytes = match body {
        Some(body) => Bytes::from(serde_json::to_vec(body).map_err(ApiError::internal)?),
        None => Bytes::new(),
    };
    let answer = call(tls.client, address, method, path, headers, bytes)
        .await
        .map_err(|reason| ApiError::unreachable(node, reason))?;
    decode(node, answer)
}

/// The body of a successful answer, or the other node's refusal as it
/// said it.
pub fn decode<T: serde::de::DeserializeOwned>(node: &str, answer: Answer) -> Result<T, ApiError> {
    if !answer.status.is_success() {
        let message = serde_json::from_slice::<holdfast_daemon::api::ErrorBody>(&answer.body)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&answer.body).into_owned());
        return Err(ApiError::new(
            answer.status,
            format!("node {node}: {message}"),
        ));
    }
    let body: &[u8] = if answer.body.is_empty() {
        b"null"
    } else {
        &answer.body
    };
    serde_json::from_slice(body)
        .map_err(|e| ApiError::unreachable(node, format!("its answer does not parse: {e}")))
}

/// Sends `record` to every other member; one that is down is logged and
/// catches up when it starts ([`catch_up`]).
pub async fn push_record(app: &Arc<App>, record: &Record) {
    let calls = record.others(&app.node).map(|(node, _)| {
        let node = node.to_string();
        async move {
            let sent: Result<serde::de::IgnoredAny, _> =
                node_call(app, &node, Method::PUT, "/v1/cluster/record", Some(record)).await;
            if let Err(e) = sent {
                tracing::warn!(
                    "cluster record version {} not sent to {node}: {e}",
                    record.version
                );
            }
        }
    });
    join_all(calls).await;
}

/// At start: takes the newest record among the members' (changes made
/// while this node was down).
pub async fn catch_up(app: &Arc<App>) {
    let record = app.record();
    let calls = record.others(&app.node).map(|(node, _)| {
        let node = node.to_string();
        async move {
            node_call::<Record>(app, &node, Method::GET, "/v1/cluster/record", None::<&()>)
                .await
                .map_err(|e| tracing::info!("cluster record of {node} not read: {e}"))
                .ok()
        }
    });
    let newest = join_all(calls)
        .await
        .into_iter()
        .flatten()
        .max_by_key(|r| r.version);
    if let Some(newest) = newest {
        let version = newest.version;
        match app.adopt(newest).await {
            Ok(true) => tracing::info!("cluster record caught up to version {version}"),
            Ok(false) => {}
            Err(e) => tracing::warn!("cluster record version {version} not stored: {e}"),
        }
    }
}
