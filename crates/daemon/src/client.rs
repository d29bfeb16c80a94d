//! A client of the daemon's API over its Unix socket (used by the CLI, the
//! lab and the tests).

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api::ErrorBody;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    // The cause is in the message, not a `source`: error chains would
    // print it a second time.
    #[error("cannot reach the holdfast daemon at {socket}: {cause} (is `holdfast daemon` running on this node?)")]
    Connect {
        socket: String,
        cause: std::io::Error,
    },
    /// The daemon refused the request; the message says why.
    #[error("{message}")]
    Refused { status: u16, message: String },
    #[error("talking to the daemon: {0}")]
    Protocol(String),
}

impl ClientError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ApiClient {
    socket: PathBuf,
}

impl ApiClient {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        json(self.call(Method::GET, path, None).await?)
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.send_json(Method::POST, path, body).await
    }

    pub async fn put<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.send_json(Method::PUT, path, body).await
    }

    /// `body` as JSON with `method`, the answer read as JSON.
    async fn send_json<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let bytes = serde_json::to_vec(body).map_err(|e| ClientError::Protocol(e.to_string()))?;
        json(
            self.call(method, path, Some(("application/json", bytes)))
                .await?,
        )
    }

    /// Posts a module package (a zip).
    pub async fn post_package<T: DeserializeOwned>(
        &self,
        path: &str,
        zip: Vec<u8>,
    ) -> Result<T, ClientError> {
        json(
            self.call(Method::POST, path, Some(("application/zip", zip)))
                .await?,
        )
    }

    /// The raw body of an answer (a package).
    pub async fn get_bytes(&self, path: &str) -> Result<Vec<u8>, ClientError> {
        Ok(self.call(Method::GET, path, None).await?.to_vec())
    }

    /// A streamed answer (`/v1/events`): `each` gets its bytes as they
    /// come, until it says stop or the daemon ends the stream.
    pub async fn stream(
        &self,
        path: &str,
        mut each: impl FnMut(&[u8]) -> bool,
    ) -> Result<(), ClientError> {
        let protocol = |e: &dyn std::fmt::Display| ClientError::Protocol(e.to_string());
        let (mut sender, driver) = self.connect().await?;
        let request = Request::builder()
            .method(Method::GET)
            .uri(path)
            .header("host", "holdfast")
            .header("accept", "text/event-stream")
            .body(Full::new(Bytes::new()))
            .map_err(|e| protocol(&e))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| protocol(&e))?;
        let status = response.status();
        let mut body = response.into_body();
        if !status.is_success() {
            let body = body.collect().await.map_err(|e| protocol(&e))?.to_bytes();
            driver.abort();
            return Err(refused(status, &body));
        }
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| protocol(&e))?;
            if let Ok(data) = frame.into_data() {
                if !each(&data) {
                    break;
                }
            }
        }
        driver.abort();
        Ok(())
    }

    async fn connect(
        &self,
    ) -> Result<
        (
            hyper::client::conn::http1::SendRequest<Full<Bytes>>,
            tokio::task::JoinHandle<Result<(), hyper::Error>>,
        ),
        ClientError,
    > {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|cause| ClientError::Connect {
                socket: self.socket.display().to_string(),
                cause,
            })?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        Ok((sender, tokio::spawn(connection)))
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        json(self.call(Method::DELETE, path, None).await?)
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<Bytes, ClientError> {
        let protocol = |e: &dyn std::fmt::Display| ClientError::Protocol(e.to_string());
        let (mut sender, driver) = self.connect().await?;
        let (content_type, bytes) = body.unwrap_or(("application/json", Vec::new()));
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "holdfast")
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| protocol(&e))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| protocol(&e))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| protocol(&e))?
            .to_bytes();
        driver.abort();
        if !status.is_success() {
            return Err(refused(status, &body));
        }
        if status == StatusCode::NO_CONTENT || body.is_empty() {
            return Ok(Bytes::from_static(b"null"));
        }
        Ok(body)
    }
}

fn json<T: DeserializeOwned>(body: Bytes) -> Result<T, ClientError> {
    serde_json::from_slice(&body).map_err(|e| ClientError::Protocol(e.to_string()))
}

/// The daemon's refusal, as it said it.
fn refused(status: StatusCode, body: &[u8]) -> ClientError {
    let message = serde_json::from_slice::<ErrorBody>(body)
        .map(|e| e.error)
        .unwrap_or_else(|_| String::from_utf8_lossy(body).into_owned());
    ClientError::Refused {
        status: status.as_u16(),
        message,
    }
}
