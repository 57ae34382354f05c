//! Every HTTP request gets an id. It is in the `x-request-id` response header, in every log line
//! written while the request is served (a tracing span) and in the body of an error answer, so a
//! client's "503 … (request 5f0c…)" leads to the log line that says what happened — the client
//! gets no internal text, the log gets all of it.

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use ingest_wire::headers;
use rand::Rng;
use tracing::Instrument;

tokio::task_local! {
    static REQUEST_ID: String;
}

/// Middleware: gives the request an id, serves it inside a span that carries the id, and sets
/// the response header.
pub async fn tag(request: Request, next: Next) -> Response {
    let id = format!("{:016x}", rand::rng().random::<u64>());
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %request.method(),
        path = %request.uri().path()
    );
    let mut response = REQUEST_ID
        .scope(id.clone(), next.run(request).instrument(span))
        .await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(headers::REQUEST_ID, value);
    }
    response
}

/// The id of the request being served on this task, if any.
pub fn current() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}
