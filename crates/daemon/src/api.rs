//! The daemon's own API handlers: modules and their logs. The router that
//! serves them, on the Unix socket in the state directory and over HTTPS,
//! with the role each needs, is `holdfast-api`'s (`crates/api/src/routes/`).
//!
//! | method | path | body / answer |
//! |---|---|---|
//! | GET | `/v1/node` | `{node, version}` |
//! | GET | `/v1/modules` | `[ModuleSummary]` |
//! | POST | `/v1/modules?source=S[&check=true]` | a module package (zip) → `ModuleSummary` (with `check`: validated against this node's modules, nothing installed) |
//! | GET | `/v1/modules/{name}` | `ModuleSummary` |
//! | GET | `/v1/modules/{name}/package` | the installed module as a package (zip) |
//! | DELETE | `/v1/modules/{name}` | `Uninstalled` (where its package is kept) |
//! | POST | `/v1/modules/{name}/settings` | `SettingsChange` (`boot`, `failover`, `errd`, `checker`) → `ModuleSummary` |
//! | POST | `/v1/modules/{name}/command` | `{command}` → `ModuleSummary` |
//! | GET | `/v1/modules/{name}/log?count=N` | `[LogEntry]` |
//! | POST | `/v1/modules/{name}/log` | `{level: "I"/"E", message}` |
//!
//! Errors answer `{"error": "..."}` ([`ErrorBody`], the one error format of
//! the whole API) with a 4xx status; nothing is changed.

use std::path::Path;
use std::sync::Arc;

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use holdfast_membership::{Command, LogLevel};
use serde::{Deserialize, Serialize};

use crate::registry::{Registry, RegistryError};
use crate::DaemonError;

/// The one error format of the API: the message names what is wrong (the
/// field at fault, the module, the refusal's reason).
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct NodeInfo {
    pub node: String,
    pub version: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct CommandRequest {
    pub command: Command,
    /// With `second`: this node's replicated data is replaced by the
    /// peer's (the administrator's answer to a refusal).
    #[serde(default)]
    pub discard_data: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PrintRequest {
    pub level: LogLevel,
    pub message: String,
}

#[derive(Debug, Deserialize)]
pub struct InstallQuery {
    /// Where the package came from, for messages.
    pub source: String,
    /// Only check it.
    #[serde(default)]
    pub check: bool,
}

#[derive(Debug, Deserialize)]
pub struct LogQuery {
    pub count: Option<usize>,
}

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        let status = match &self {
            RegistryError::UnknownModule { .. } => StatusCode::NOT_FOUND,
            RegistryError::Invalid(_) | RegistryError::Package(_) => StatusCode::BAD_REQUEST,
            RegistryError::Running { .. }
            | RegistryError::PortInUse { .. }
            | RegistryError::IdInUse { .. }
            | RegistryError::Refused(..) => StatusCode::CONFLICT,
            RegistryError::Daemon(DaemonError::NotAMember { .. }) => StatusCode::BAD_REQUEST,
            RegistryError::Daemon(_) | RegistryError::Gone(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (
            status,
            Json(ErrorBody {
                error: self.to_string(),
            }),
        )
            .into_response()
    }
}

pub type Shared = State<Arc<Registry>>;

/// The largest body of `POST /v1/modules` (a package).
pub const MAX_INSTALL_BYTES: usize = holdfast_package::MAX_PACKAGE_BYTES as usize;

/// Binds the socket, replacing a stale one left by a killed daemon.
pub fn bind(path: &Path) -> Result<tokio::net::UnixListener, DaemonError> {
    let err = |source| DaemonError::Api {
        path: path.display().to_string(),
        source,
    };
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "another daemon is already serving this socket",
        )));
    }
    let _ = std::fs::remove_file(path);
    tokio::net::UnixListener::bind(path).map_err(err)
}

pub async fn node(State(registry): Shared) -> Json<NodeInfo> {
    Json(NodeInfo {
        node: registry.node().to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    })
}

pub async fn list(State(registry): Shared) -> impl IntoResponse {
    Json(registry.list().await)
}

pub async fn module(
    State(registry): Shared,
    UrlPath(name): UrlPath<String>,
) -> Result<impl IntoResponse, RegistryError> {
    Ok(Json(registry.get(&name).await?))
}

pub async fn install(
    State(registry): Shared,
    Query(query): Query<InstallQuery>,
    body: axum::body::Bytes,
) -> Result<Response, RegistryError> {
    let package = tokio::task::spawn_blocking(move || holdfast_package::Package::from_zip(&body))
        .await
        .map_err(|e| DaemonError::Io("reading the package".into(), std::io::Error::other(e)))??;
    if query.check {
        registry.check(package, &query.source).await?;
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let summary = registry.install(package, &query.source).await?;
    Ok((StatusCode::CREATED, Json(summary)).into_response())
}

pub async fn export(
    State(registry): Shared,
    UrlPath(name): UrlPath<String>,
) -> Result<impl IntoResponse, RegistryError> {
    let zip = registry.export(&name).await?;
    Ok(([(axum::http::header::CONTENT_TYPE, "application/zip")], zip))
}

pub async fn settings(
    State(registry): Shared,
    UrlPath(name): UrlPath<String>,
    Json(change): Json<crate::settings::SettingsChange>,
) -> Result<impl IntoResponse, RegistryError> {
    Ok(Json(registry.settings(&name, change).await?))
}

pub async fn uninstall(
    State(registry): Shared,
    UrlPath(name): UrlPath<String>,
) -> Result<impl IntoResponse, RegistryError> {
    Ok(Json(registry.uninstall(&name).await?))
}

pub async fn command(
    State(registry): Shared,
    UrlPath(name): UrlPath<String>,
    Json(request): Json<CommandRequest>,
) -> Result<impl IntoResponse, RegistryError> {
    Ok(Json(
        registry
            .command(&name, request.command, request.discard_data)
            .await?,
    ))
}

pub async fn log(
    State(registry): Shared,
    UrlPath(name): UrlPath<String>,
    Query(query): Query<LogQuery>,
) -> Result<impl IntoResponse, RegistryError> {
    Ok(Json(registry.log(&name, query.count.unwrap_or(300)).await?))
}

pub async fn print(
    State(registry): Shared,
    UrlPath(name): UrlPath<String>,
    Json(request): Json<PrintRequest>,
) -> Result<impl IntoResponse, RegistryError> {
    registry
        .print(&name, request.level, request.message)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
