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

use crate::modlog::LogEntry;
use crate::registry::{ModuleSummary, Registry, RegistryError, Uninstalled};
use crate::DaemonError;

/// The one error format of the API: the message names what is wrong (the
/// field at fault, the module, the refusal's reason).
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: String,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeInfo {
    pub node: String,
    pub version: String,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CommandRequest {
    #[schema(value_type = String, pattern = "^(Start|Stop|Restart|Swap|Prim|Second|StopStart)$")]
    pub command: Command,
    /// With `second`: this node's replicated data is replaced by the
    /// peer's (the administrator's answer to a refusal).
    #[serde(default)]
    pub discard_data: bool,
    /// With `stop`: SafeKit's `forcestop`, the script running now (a start
    /// or stop that hangs) is killed first.
    #[serde(default)]
    pub force: bool,
}

impl CommandRequest {
    /// The command alone (no `discard_data`, no `force`).
    pub fn new(command: Command) -> Self {
        Self {
            command,
            discard_data: false,
            force: false,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PrintRequest {
    #[schema(value_type = String, pattern = "^(Info|Error)$")]
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

#[utoipa::path(get, path = "/v1/node", tag = "modules",
    description = "This node's name and version. Role: monitor.",
    responses((status = 200, body = NodeInfo), (status = "4XX", body = ErrorBody)))]
pub async fn node(State(registry): Shared) -> Json<NodeInfo> {
    Json(NodeInfo {
        node: registry.node().to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    })
}

#[utoipa::path(get, path = "/v1/modules", tag = "modules",
    description = "The modules of this node. Role: monitor.",
    responses((status = 200, body = Vec<ModuleSummary>), (status = "4XX", body = ErrorBody)))]
pub async fn list(State(registry): Shared) -> impl IntoResponse {
    Json(registry.list().await)
}

#[utoipa::path(get, path = "/v1/modules/{name}", tag = "modules",
    description = "One module. Role: monitor.",
    params(("name" = String, Path, description = "the module")),
    responses((status = 200, body = ModuleSummary), (status = "4XX", body = ErrorBody)))]
pub async fn module(
    State(registry): Shared,
    UrlPath(name): UrlPath<String>,
) -> Result<impl IntoResponse, RegistryError> {
    Ok(Json(registry.get(&name).await?))
}

#[utoipa::path(post, path = "/v1/modules", tag = "modules",
    description = "Install (or replace) a module from its package, or only check it. Role: admin.",
    params(
        ("source" = String, Query, description = "where the package came from, for messages"),
        ("check" = Option<bool>, Query, description = "only check it"),
    ),
    request_body(content = String, content_type = "application/octet-stream", description = "the module package (a zip)"),
    responses((status = 201, body = ModuleSummary), (status = 204, description = "checked"), (status = "4XX", body = ErrorBody)))]
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

#[utoipa::path(get, path = "/v1/modules/{name}/package", tag = "modules",
    description = "The installed module as a package (zip). Role: admin.",
    params(("name" = String, Path, description = "the module")),
    responses((status = 200, content_type = "application/zip", body = String), (status = "4XX", body = ErrorBody)))]
pub async fn export(
    State(registry): Shared,
    UrlPath(name): UrlPath<String>,
) -> Result<impl IntoResponse, RegistryError> {
    let zip = registry.export(&name).await?;
    Ok(([(axum::http::header::CONTENT_TYPE, "application/zip")], zip))
}

#[utoipa::path(post, path = "/v1/modules/{name}/settings", tag = "modules",
    description = "Switch the module's boot start, failover, checkers or errd here. Role: control.",
    params(("name" = String, Path, description = "the module")),
    request_body = crate::settings::SettingsChange,
    responses((status = 200, body = ModuleSummary), (status = "4XX", body = ErrorBody)))]
pub async fn settings(
    State(registry): Shared,
    UrlPath(name): UrlPath<String>,
    Json(change): Json<crate::settings::SettingsChange>,
) -> Result<impl IntoResponse, RegistryError> {
    Ok(Json(registry.settings(&name, change).await?))
}

#[utoipa::path(delete, path = "/v1/modules/{name}", tag = "modules",
    description = "Uninstall a stopped module (its package kept as a backup). Role: admin.",
    params(("name" = String, Path, description = "the module")),
    responses((status = 200, body = Uninstalled), (status = "4XX", body = ErrorBody)))]
pub async fn uninstall(
    State(registry): Shared,
    UrlPath(name): UrlPath<String>,
) -> Result<impl IntoResponse, RegistryError> {
    Ok(Json(registry.uninstall(&name).await?))
}

#[utoipa::path(post, path = "/v1/modules/{name}/command", tag = "modules",
    description = "Run a command on the module here: Start, Stop, Restart, Swap, Prim, Second, StopStart. Role: control.",
    params(("name" = String, Path, description = "the module")),
    request_body = CommandRequest,
    responses((status = 200, body = ModuleSummary), (status = "4XX", body = ErrorBody)))]
pub async fn command(
    State(registry): Shared,
    UrlPath(name): UrlPath<String>,
    Json(request): Json<CommandRequest>,
) -> Result<impl IntoResponse, RegistryError> {
    Ok(Json(
        registry
            .command(&name, request.command, request.discard_data, request.force)
            .await?,
    ))
}

#[utoipa::path(get, path = "/v1/modules/{name}/log", tag = "modules",
    description = "The module log's last entries. Role: monitor.",
    params(("name" = String, Path, description = "the module"), ("count" = Option<usize>, Query, description = "how many (default 300)")),
    responses((status = 200, body = Vec<LogEntry>), (status = "4XX", body = ErrorBody)))]
pub async fn log(
    State(registry): Shared,
    UrlPath(name): UrlPath<String>,
    Query(query): Query<LogQuery>,
) -> Result<impl IntoResponse, RegistryError> {
    Ok(Json(registry.log(&name, query.count.unwrap_or(300)).await?))
}

#[utoipa::path(post, path = "/v1/modules/{name}/log", tag = "modules",
    description = "Write to the module log (printi/printe). Role: control.",
    params(("name" = String, Path, description = "the module")),
    request_body = PrintRequest,
    responses((status = 204, description = "written"), (status = "4XX", body = ErrorBody)))]
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
