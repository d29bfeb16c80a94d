//! Which browser pages may call this node from another origin: the
//! console loaded from another member of the cluster, which goes on
//! through this node when its own dies. Their calls carry the signed
//! session header (`signed.rs`), never cookies (no
//! `Access-Control-Allow-Credentials`), so a page of another origin gets
//! nothing without a token. Any other origin is refused, and logged.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::App;

pub async fn cors(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let Some(origin) = request.headers().get(header::ORIGIN).cloned() else {
        return next.run(request).await;
    };
    let member = origin.to_str().is_ok_and(|origin| {
        app.record()
            .nodes
            .values()
            .any(|m| origin == format!("https://{}", m.address))
    });
    let preflight = request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if !member {
        if preflight {
            tracing::warn!(
                "refused a call from the page of {origin:?} to {}: not a member's console",
                request.uri().path()
            );
        }
        return next.run(request).await;
    }
    let mut response = if preflight {
        let mut answer = StatusCode::NO_CONTENT.into_response();
        let headers = answer.headers_mut();
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, PUT, DELETE"),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("content-type, x-holdfast-session"),
        );
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        answer
    } else {
        next.run(request).await
    };
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.append(header::VARY, HeaderValue::from_static("origin"));
    response
}
