//! Every HTTP request gets an id. It is in the `x-request-id` response header, in every log line
//! written while the request is served (a tracing span) and in the body of an error answer, so a
//! client's "503 … (request 5f0c…)" leads to the log line that says what happened — the client
//! gets no internal text, the log gets all of it.
//!
//! tower-http's layers do the generating ([`SetRequestIdLayer`] with [`Sixteen`]) and the
//! copying to the answer ([`PropagateRequestIdLayer`]); [`tag`] serves the request inside the span
//! and the task-local that [`current`] reads (an error answer is built where the request is not
//! at hand). The id is always the coordinator's own: one a client sends is not taken (as before
//! tower-http did this), [`forget_incoming`] drops it before an id is made.

use axum::extract::Request;
use axum::http::HeaderName;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use ingest_wire::headers;
use rand::Rng;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tracing::Instrument;

tokio::task_local! {
    static REQUEST_ID: String;
}

/// Makes ids: 16 lower-case hex digits, random.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sixteen;

impl MakeRequestId for Sixteen {
    fn make_request_id<B>(&mut self, _request: &axum::http::Request<B>) -> Option<RequestId> {
        let id = format!("{:016x}", rand::rng().random::<u64>());
        id.parse().ok().map(RequestId::new)
    }
}

/// Wraps `router` in the request-id layers: an incoming `x-request-id` is dropped, a new id is
/// made, the request is served inside its span and task-local, and the answer carries it.
pub fn layer<S>(router: Router<S>) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let header = HeaderName::from_static(headers::REQUEST_ID);
    // The last layer added is the outermost.
    router
        .layer(middleware::from_fn(tag))
        .layer(PropagateRequestIdLayer::new(header.clone()))
        .layer(SetRequestIdLayer::new(header, Sixteen))
        .layer(middleware::map_request(forget_incoming))
}

/// Middleware: drops an `x-request-id` the client sent (the id is the coordinator's).
pub async fn forget_incoming(mut request: Request) -> Request {
    request.headers_mut().remove(headers::REQUEST_ID);
    request
}

/// Middleware: serves the request inside a span that carries its id (made by
/// [`SetRequestIdLayer`]) and with the id in the task-local [`current`] reads.
pub async fn tag(request: Request, next: Next) -> Response {
    let id = request
        .extensions()
        .get::<RequestId>()
        .and_then(|id| id.header_value().to_str().ok())
        .map(str::to_owned)
        .unwrap_or_default();
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %request.method(),
        path = %request.uri().path()
    );
    REQUEST_ID
        .scope(id, next.run(request).instrument(span))
        .await
}

/// The id of the request being served on this task, if any.
pub fn current() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

#[cfg(test)]
mod tests {
    use crate::http::api_error::ApiError;
    use axum::http::StatusCode;
    use axum::routing::get;
    use axum::Router;
    use ingest_wire::{headers, ErrorBody, ErrorCode};

    async fn serve() -> String {
        let routes = Router::new().route("/ok", get(|| async { "fine" })).route(
            "/fail",
            get(|| async {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::Unavailable,
                    "away",
                )
            }),
        );
        let app = super::layer(routes);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}")
    }

    fn id_of(response: &reqwest::Response) -> String {
        response.headers()[headers::REQUEST_ID]
            .to_str()
            .unwrap()
            .to_string()
    }

    #[tokio::test]
    async fn every_answer_has_its_own_id_and_an_error_repeats_it() {
        let base = serve().await;
        let http = reqwest::Client::new();
        let first = http.get(format!("{base}/ok")).send().await.unwrap();
        let second = http.get(format!("{base}/ok")).send().await.unwrap();
        let (first, second) = (id_of(&first), id_of(&second));
        for id in [&first, &second] {
            assert_eq!(id.len(), 16, "{id}");
            assert!(id
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        }
        assert_ne!(first, second);

        let failed = http
            .get(format!("{base}/fail"))
            .header(headers::REQUEST_ID, "chosen-by-the-client")
            .send()
            .await
            .unwrap();
        assert_eq!(failed.status().as_u16(), 503);
        let id = id_of(&failed);
        assert_ne!(
            id, "chosen-by-the-client",
            "the id is the coordinator's own"
        );
        assert_eq!(id.len(), 16, "{id}");
        let body: ErrorBody = failed.json().await.unwrap();
        assert_eq!(body.error.request_id.as_deref(), Some(id.as_str()));
        assert_eq!(body.error.message, format!("away (request {id})"));
    }
}
