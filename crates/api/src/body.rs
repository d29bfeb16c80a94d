//! Request bodies of up to 1 MiB are read whole before routing. An answer
//! given before its body was read (a refusal, a body that does not parse
//! or has the wrong content type) would otherwise end the connection while
//! the client still sends, and the client would see the connection cut
//! (over TLS: an EOF) instead of the answer. Larger bodies (module
//! packages) stream to their handler as they come.

use axum::extract::Request;
use axum::http::header::CONTENT_LENGTH;
use axum::middleware::Next;
use axum::response::Response;

const READ_FIRST: u64 = 1 << 20;

pub async fn read_first(request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if !declared.is_some_and(|length| length > 0 && length <= READ_FIRST) {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    match axum::body::to_bytes(body, READ_FIRST as usize).await {
        Ok(bytes) => {
            next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
                .await
        }
        Err(e) => {
            use axum::response::IntoResponse;
            crate::ApiError::field("body", e).into_response()
        }
    }
}
