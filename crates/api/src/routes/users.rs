//! Users, API tokens and the audit log. Users and tokens live in the
//! cluster's record, so every node knows them.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use crate::access::audit::AuditEntry;
use crate::access::{secrets, Caller, Role};
use crate::record::{ApiToken, User};
use crate::{ApiError, Shared};

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UserView {
    pub name: String,
    pub role: Role,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NewUser {
    pub name: String,
    pub role: Role,
    pub password: String,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UserChange {
    #[serde(default)]
    pub role: Option<Role>,
    #[serde(default)]
    pub password: Option<String>,
}

#[utoipa::path(get, path = "/v1/users", tag = "users",
    description = "Users and their roles. Role: admin.",
    responses((status = 200, body = Vec<UserView>), (status = "4XX", body = holdfast_daemon::api::ErrorBody)))]
pub async fn list(State(app): Shared) -> Json<Vec<UserView>> {
    Json(
        app.record()
            .users
            .into_iter()
            .map(|(name, u)| UserView { name, role: u.role })
            .collect(),
    )
}

fn check_name(name: &str) -> Result<(), ApiError> {
    check_name_of("name", name)
}

/// A user or node name: what `field` holds.
pub fn check_name_of(field: &str, name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b));
    if !ok {
        return Err(ApiError::field(
            field,
            format!("{name:?}: 1 to 64 letters, digits, '.', '_', '-' or '@'"),
        ));
    }
    Ok(())
}

fn check_password(password: &str) -> Result<(), ApiError> {
    if password.chars().count() < 12 {
        return Err(ApiError::field("password", "at least 12 characters"));
    }
    Ok(())
}

async fn hash(password: String) -> Result<String, ApiError> {
    tokio::task::spawn_blocking(move || secrets::hash_password(&password))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)
}

#[utoipa::path(post, path = "/v1/users", tag = "users",
    description = "Add a user (on every node). Role: admin.",
    request_body = NewUser,
    responses((status = 201, body = UserView), (status = "4XX", body = holdfast_daemon::api::ErrorBody)))]
pub async fn add(
    State(app): Shared,
    Json(new): Json<NewUser>,
) -> Result<(StatusCode, Json<UserView>), ApiError> {
    check_name(&new.name)?;
    check_password(&new.password)?;
    let password_hash = hash(new.password).await?;
    app.change(|record| {
        if record.users.contains_key(&new.name) {
            return Err(ApiError::conflict(format!(
                "name: user {} already exists",
                new.name
            )));
        }
        record.users.insert(
            new.name.clone(),
            User {
                role: new.role,
                password_hash,
            },
        );
        Ok(())
    })
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(UserView {
            name: new.name,
            role: new.role,
        }),
    ))
}

#[utoipa::path(put, path = "/v1/users/{name}", tag = "users",
    description = "Change a user's role or password (their sessions end). Role: admin.",
    params(("name" = String, Path)), request_body = UserChange,
    responses((status = 200, body = UserView), (status = "4XX", body = holdfast_daemon::api::ErrorBody)))]
pub async fn change(
    State(app): Shared,
    Path(name): Path<String>,
    Json(change): Json<UserChange>,
) -> Result<Json<UserView>, ApiError> {
    if let Some(password) = &change.password {
        check_password(password)?;
    }
    let password_hash = match change.password {
        Some(password) => Some(hash(password).await?),
        None => None,
    };
    let role = app
        .change(|record| {
            let user = record
                .users
                .get_mut(&name)
                .ok_or_else(|| ApiError::not_found(format!("name: no user {name}")))?;
            if let Some(role) = change.role {
                user.role = role;
            }
            if let Some(hash) = password_hash {
                user.password_hash = hash;
            }
            Ok(user.role)
        })
        .await?;
    app.sessions.close_user(&name);
    Ok(Json(UserView { name, role }))
}

#[utoipa::path(delete, path = "/v1/users/{name}", tag = "users",
    description = "Remove a user. Role: admin.",
    params(("name" = String, Path)),
    responses((status = 204, description = "removed"), (status = "4XX", body = holdfast_daemon::api::ErrorBody)))]
pub async fn remove(State(app): Shared, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    app.change(|record| {
        record
            .users
            .remove(&name)
            .map(|_| ())
            .ok_or_else(|| ApiError::not_found(format!("name: no user {name}")))
    })
    .await?;
    app.sessions.close_user(&name);
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NewToken {
    /// What it is for (a monitoring system, a script).
    pub name: String,
    pub role: Role,
    /// How long it is valid, e.g. "30d", "12h".
    pub expires_in: String,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenView {
    pub id: String,
    pub name: String,
    pub role: Role,
    /// Unix seconds.
    pub expires_at: u64,
    pub created_by: String,
    /// Only in the answer to its creation: never shown again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

fn view(id: String, t: ApiToken, token: Option<String>) -> TokenView {
    TokenView {
        id,
        name: t.name,
        role: t.role,
        expires_at: t.expires_at,
        created_by: t.created_by,
        token,
    }
}

#[utoipa::path(get, path = "/v1/tokens", tag = "tokens",
    description = "API tokens (never their secrets). Role: admin.",
    responses((status = 200, body = Vec<TokenView>), (status = "4XX", body = holdfast_daemon::api::ErrorBody)))]
pub async fn tokens(State(app): Shared) -> Json<Vec<TokenView>> {
    Json(
        app.record()
            .tokens
            .into_iter()
            .map(|(id, t)| view(id, t, None))
            .collect(),
    )
}

#[utoipa::path(post, path = "/v1/tokens", tag = "tokens",
    description = "Create an API token: the answer holds it, shown once. Role: admin.",
    request_body = NewToken,
    responses((status = 201, body = TokenView), (status = "4XX", body = holdfast_daemon::api::ErrorBody)))]
pub async fn create_token(
    State(app): Shared,
    Extension(caller): Extension<Caller>,
    Json(new): Json<NewToken>,
) -> Result<(StatusCode, Json<TokenView>), ApiError> {
    let lifetime = humantime::parse_duration(&new.expires_in)
        .map_err(|e| ApiError::field("expires_in", format!("{:?}: {e}", new.expires_in)))?;
    if lifetime.is_zero() || lifetime > std::time::Duration::from_secs(5 * 365 * 86400) {
        return Err(ApiError::field("expires_in", "between 1 s and 5 years"));
    }
    if new.name.trim().is_empty() {
        return Err(ApiError::field("name", "say what the token is for"));
    }
    let (id, token, secret_hash) = secrets::new_token();
    let entry = ApiToken {
        name: new.name,
        role: new.role,
        secret_hash,
        expires_at: crate::access::now_ms() / 1000 + lifetime.as_secs(),
        created_by: caller.who(),
    };
    let stored = entry.clone();
    let key = id.clone();
    app.change(move |record| {
        record.tokens.insert(key, stored);
        Ok(())
    })
    .await?;
    Ok((StatusCode::CREATED, Json(view(id, entry, Some(token)))))
}

#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "tokens",
    description = "Revoke an API token. Role: admin.",
    params(("id" = String, Path)),
    responses((status = 204, description = "revoked"), (status = "4XX", body = holdfast_daemon::api::ErrorBody)))]
pub async fn revoke_token(
    State(app): Shared,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    app.change(|record| {
        record
            .tokens
            .remove(&id)
            .map(|_| ())
            .ok_or_else(|| ApiError::not_found(format!("id: no API token {id}")))
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
pub struct AuditQuery {
    pub count: Option<usize>,
}

#[utoipa::path(get, path = "/v1/audit", tag = "audit",
    description = "This node's audit log: every command, who, from where, the result. Role: admin.",
    params(("count" = Option<usize>, Query)),
    responses((status = 200, body = Vec<AuditEntry>), (status = "4XX", body = holdfast_daemon::api::ErrorBody)))]
pub async fn audit(
    State(app): Shared,
    Query(query): Query<AuditQuery>,
) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    let audit = app.audit.clone();
    let count = query.count.unwrap_or(300);
    tokio::task::spawn_blocking(move || audit.last(count))
        .await
        .map_err(ApiError::internal)?
        .map(Json)
        .map_err(ApiError::internal)
}
