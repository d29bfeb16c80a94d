//! Logging in and out: a session cookie and its CSRF token.

use axum::http::header::SET_COOKIE;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use crate::access::sessions::cookie;
use crate::access::{secrets, Caller, Connection, Role};
use crate::{ApiError, Shared};

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Login {
    pub user: String,
    pub password: String,
}

/// Who the caller is; at login, with the CSRF token to send back in
/// `X-CSRF-Token` with every change.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Whoami {
    pub who: String,
    pub role: Option<Role>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csrf_token: Option<String>,
    /// A session token every member of the cluster accepts in
    /// `X-Holdfast-Session` (no CSRF token needed), valid for the idle
    /// time; answered at login and renewed by every `GET /v1/session` of a
    /// session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_token: Option<String>,
}

#[utoipa::path(post, path = "/v1/session", tag = "session",
    description = "Log in: sets the session cookie and answers the CSRF token to send back in X-CSRF-Token with every change. Public.",
    request_body = Login,
    responses((status = 200, body = Whoami), (status = "4XX", body = holdfast_daemon::api::ErrorBody)))]
pub async fn login(
    axum::extract::State(app): Shared,
    Extension(connection): Extension<Connection>,
    Json(login): Json<Login>,
) -> Result<impl IntoResponse, ApiError> {
    let user = app.record().users.get(&login.user).cloned();
    let hash = user.as_ref().map(|u| u.password_hash.clone());
    let password = login.password.clone();
    // Verify against some hash even for an unknown user, so the time taken
    // does not tell which users exist.
    let matches = tokio::task::spawn_blocking(move || {
        let hash = hash.unwrap_or_else(|| secrets::hash_password("-").unwrap_or_default());
        secrets::password_matches(&password, &hash)
    })
    .await
    .map_err(ApiError::internal)?;
    let Some(user) = user.filter(|_| matches) else {
        tracing::warn!(
            "refused login of {:?} from {}: wrong user or password",
            login.user,
            connection.source()
        );
        return Err(ApiError::unauthorized("user or password: wrong"));
    };
    let (id, csrf) = app.sessions.open(&login.user);
    tracing::info!("{} logged in from {}", login.user, connection.source());
    Ok((
        StatusCode::OK,
        [(
            SET_COOKIE,
            cookie(&id, &app.settings.base_path, app.settings.session_idle),
        )],
        Json(Whoami {
            session_token: signed_token(&app, &login.user),
            who: login.user,
            role: Some(user.role),
            csrf_token: Some(csrf),
        }),
    ))
}

#[utoipa::path(get, path = "/v1/session", tag = "session",
    description = "Who the caller is. Role: monitor.",
    responses((status = 200, body = Whoami), (status = "4XX", body = holdfast_daemon::api::ErrorBody)))]
pub async fn whoami(
    axum::extract::State(app): Shared,
    Extension(caller): Extension<Caller>,
) -> Json<Whoami> {
    let session_token = match &caller {
        Caller::Session { user, .. } => signed_token(&app, user),
        _ => None,
    };
    Json(Whoami {
        who: caller.who(),
        role: caller.role(),
        csrf_token: None,
        session_token,
    })
}

/// A token for `user` valid on every member for the idle time.
fn signed_token(app: &crate::App, user: &str) -> Option<String> {
    let expires = crate::access::now_ms() / 1000 + app.settings.session_idle.as_secs();
    let record = app.record();
    let keys = crate::access::signed::Keys {
        session_key: &record.session_key,
        password_hash: |user: &str| record.users.get(user).map(|u| u.password_hash.as_str()),
    };
    crate::access::signed::issue(keys, user, expires)
}

#[utoipa::path(delete, path = "/v1/session", tag = "session",
    description = "Log out (ends the session). Role: monitor.",
    responses((status = 204, description = "logged out"), (status = "4XX", body = holdfast_daemon::api::ErrorBody)))]
pub async fn logout(
    axum::extract::State(app): Shared,
    Extension(caller): Extension<Caller>,
) -> impl IntoResponse {
    if let Caller::Session { id, .. } = &caller {
        app.sessions.close(id);
    }
    (
        StatusCode::NO_CONTENT,
        [(
            SET_COOKIE,
            cookie("", &app.settings.base_path, app.settings.session_idle),
        )],
    )
}
