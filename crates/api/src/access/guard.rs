//! The guard every route passes: identifies the caller from the connection
//! (Unix socket, client certificate) and the request (session cookie with
//! its CSRF token, bearer token, a relaying node's headers), checks the
//! route's [`Access`], logs every refusal with who and from where, and
//! records every command in the audit log.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::audit::AuditEntry;
use super::{secrets, sessions, Access, Caller, Role};
use crate::{ApiError, App};

/// The connection a request came on, set by the server that accepted it.
#[derive(Debug, Clone)]
pub enum Connection {
    /// The Unix socket: root only (its mode).
    Local,
    /// HTTPS: the client's address and, when it presented a certificate
    /// of the cluster's CA, the node it names.
    Remote {
        address: SocketAddr,
        node: Option<String>,
    },
}

impl Connection {
    pub fn source(&self) -> String {
        match self {
            Connection::Local => "local".into(),
            Connection::Remote { address, .. } => address.to_string(),
        }
    }
}

/// Headers a relaying node sets for the caller it identified (trusted only
/// on a connection with a node certificate).
pub const RELAYED_WHO: &str = "x-holdfast-who";
pub const RELAYED_ROLE: &str = "x-holdfast-role";
pub const RELAYED_SOURCE: &str = "x-holdfast-source";

pub async fn guard(
    State((app, access)): State<(Arc<App>, Access)>,
    mut request: Request,
    next: Next,
) -> Response {
    let connection = request
        .extensions()
        .get::<Connection>()
        .cloned()
        .unwrap_or(Connection::Local);
    let mut source = connection.source();
    if let Some(relayed) = header_text(request.headers(), RELAYED_SOURCE) {
        if matches!(&connection, Connection::Remote { node: Some(_), .. }) {
            source = format!("{relayed} via {source}");
        }
    }
    let action = format!("{} {}", request.method(), request.uri().path());
    let identified = identify(&app, &connection, request.method(), request.headers());
    let caller = match (identified, access) {
        (Ok(caller), _) => caller,
        (Err(_), Access::Public) => Caller::Anonymous,
        (Err(refusal), _) => {
            tracing::warn!("refused {action} from {source}: {}", refusal.message);
            return refusal.into_response();
        }
    };
    if !caller.allowed(access) {
        let needed = match access {
            Access::Role(role) => format!("the {} role", role.as_str()),
            Access::Node => "a node certificate of the cluster".into(),
            Access::Public => unreachable!("public routes allow everyone"),
        };
        let refusal = ApiError::forbidden(format!(
            "{action} needs {needed}; {} has {}",
            caller.who(),
            caller.role().map_or("no role", Role::as_str)
        ));
        tracing::warn!(
            "refused {action} to {} from {source}: {}",
            caller.who(),
            refusal.message
        );
        return refusal.into_response();
    }
    let is_command = !matches!(*request.method(), Method::GET | Method::HEAD);
    request.extensions_mut().insert(caller.clone());
    let response = next.run(request).await;
    if is_command {
        let entry = AuditEntry {
            time_ms: now_ms(),
            who: caller.who(),
            source,
            action,
            status: response.status().as_u16(),
        };
        let audit = app.audit.clone();
        let _ = tokio::task::spawn_blocking(move || audit.record(&entry)).await;
    }
    response
}

/// Who the request comes from, or why it is refused (401).
fn identify(
    app: &App,
    connection: &Connection,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Caller, ApiError> {
    let node = match connection {
        Connection::Local => return Ok(Caller::Root),
        Connection::Remote { node, .. } => node.clone(),
    };
    if let Some(node) = node {
        let Some(who) = header_text(headers, RELAYED_WHO) else {
            return Ok(Caller::Node(node));
        };
        let role = header_text(headers, RELAYED_ROLE)
            .unwrap_or_default()
            .parse()
            .map_err(|e| ApiError::unauthorized(format!("{RELAYED_ROLE}: {e}")))?;
        return Ok(Caller::Relayed {
            who: who.to_string(),
            role,
            via: node,
        });
    }
    if let Some(value) = header_text(headers, header::AUTHORIZATION.as_str()) {
        let token = value.strip_prefix("Bearer ").ok_or_else(|| {
            ApiError::unauthorized("Authorization: expected `Bearer <API token>`")
        })?;
        return token_caller(app, token.trim());
    }
    if let Some(token) = header_text(headers, super::signed::HEADER) {
        let record = app.record();
        let keys = super::signed::Keys {
            session_key: &record.session_key,
            password_hash: |user: &str| record.users.get(user).map(|u| u.password_hash.as_str()),
        };
        let user = super::signed::verify(keys, token, now_ms() / 1000)
            .map_err(|why| ApiError::unauthorized(format!("{}: {why}", super::signed::HEADER)))?;
        let role = record.users[&user].role;
        return Ok(Caller::Session {
            user,
            role,
            id: String::new(),
        });
    }
    if let Some(id) =
        header_text(headers, header::COOKIE.as_str()).and_then(sessions::from_cookie_header)
    {
        let session = app.sessions.touch(id).ok_or_else(|| {
            ApiError::unauthorized(
                "the session has ended (logged out, or idle too long): log in again",
            )
        })?;
        let role = app
            .record()
            .users
            .get(&session.user)
            .map(|u| u.role)
            .ok_or_else(|| {
                ApiError::unauthorized(format!("user {} no longer exists", session.user))
            })?;
        if !matches!(*method, Method::GET | Method::HEAD) {
            let sent = header_text(headers, sessions::CSRF_HEADER).unwrap_or_default();
            if !secrets::same(sent, &session.csrf) {
                return Err(ApiError::forbidden(format!(
                    "{}: missing or wrong CSRF token (the csrf_token answered at login)",
                    sessions::CSRF_HEADER
                )));
            }
        }
        return Ok(Caller::Session {
            user: session.user,
            role,
            id: id.to_string(),
        });
    }
    Err(ApiError::unauthorized(
        "no credentials: log in (POST /v1/session) or send an API token (Authorization: Bearer)",
    ))
}

fn token_caller(app: &App, token: &str) -> Result<Caller, ApiError> {
    let (id, secret) = secrets::parse_token(token)
        .ok_or_else(|| ApiError::unauthorized("API token: not of the form hft_<id>_<secret>"))?;
    let record = app.record();
    let known = record
        .tokens
        .get(id)
        .filter(|t| secrets::same(&secrets::secret_hash(secret), &t.secret_hash))
        .ok_or_else(|| ApiError::unauthorized(format!("API token {id}: unknown or revoked")))?;
    if known.expires_at <= now_ms() / 1000 {
        return Err(ApiError::unauthorized(format!("API token {id}: expired")));
    }
    Ok(Caller::Token {
        id: id.to_string(),
        name: known.name.clone(),
        role: known.role,
    })
}

fn header_text<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
