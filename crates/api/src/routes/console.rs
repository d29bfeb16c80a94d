//! The web console: plain HTML, CSS and ES modules (`crates/api/console/`)
//! compiled into the binary, so every node serves the same console at the
//! API's base path and `cargo build` alone builds it. Served with a strict
//! Content-Security-Policy: only these files run, nothing inline, no other
//! origin but the cluster's nodes (the console carries on through another
//! node when the one it talks to dies).

use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::Shared;

/// What the console may load and call: its own files, and the API of this
/// node (`'self'`) or any other HTTPS origin it is pointed at (another node
/// or another cluster: the API's CORS answers decide which may answer).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
style-src 'self'; img-src 'self' data:; connect-src 'self' https:; \
form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

/// Each file: its name under `console/`, type and text.
const FILES: &[(&str, &str, &str)] = &[
    (
        "console.css",
        "text/css",
        include_str!("../../console/console.css"),
    ),
    (
        "app.js",
        "text/javascript",
        include_str!("../../console/app.js"),
    ),
    (
        "client.js",
        "text/javascript",
        include_str!("../../console/client.js"),
    ),
    (
        "grid.js",
        "text/javascript",
        include_str!("../../console/grid.js"),
    ),
    (
        "actions.js",
        "text/javascript",
        include_str!("../../console/actions.js"),
    ),
    (
        "dom.js",
        "text/javascript",
        include_str!("../../console/dom.js"),
    ),
];

const INDEX: &str = include_str!("../../console/index.html");

/// The page, its asset paths under the base path (`%BASE%` in the file).
#[utoipa::path(get, path = "/", tag = "console",
    description = "The web console's page. Public.",
    responses((status = 200, description = "the console", content_type = "text/html")))]
pub async fn page(State(app): Shared) -> Response {
    let page = INDEX.replace("%BASE%", &app.settings.base_path);
    served("text/html; charset=utf-8", page)
}

#[utoipa::path(get, path = "/console/{file}", tag = "console",
    description = "One of the console's scripts or its style sheet. Public.",
    params(("file" = String, Path, description = "e.g. app.js")),
    responses((status = 200, description = "the file", content_type = "text/javascript"),
        (status = 404, body = holdfast_daemon::api::ErrorBody)))]
pub async fn file(axum::extract::Path(name): axum::extract::Path<String>) -> Response {
    match FILES.iter().find(|(file, _, _)| *file == name) {
        Some((_, kind, text)) => served(kind, (*text).to_string()),
        None => (
            StatusCode::NOT_FOUND,
            axum::Json(holdfast_daemon::api::ErrorBody {
                error: format!("console/{name}: no such file of the console"),
            }),
        )
            .into_response(),
    }
}

fn served(kind: &'static str, body: String) -> Response {
    let headers = [
        (CONTENT_TYPE, HeaderValue::from_static(kind)),
        (
            HeaderName::from_static("content-security-policy"),
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ),
        (
            HeaderName::from_static("x-content-type-options"),
            HeaderValue::from_static("nosniff"),
        ),
        (
            HeaderName::from_static("referrer-policy"),
            HeaderValue::from_static("no-referrer"),
        ),
        // A new binary brings a new console: never a stale one from cache.
        (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
    ];
    (headers, body).into_response()
}
