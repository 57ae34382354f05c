//! Answers a request only after the part of its body that nobody read was read and dropped.
//!
//! A request refused before its body is read (a wrong token, a content type we do not take, a
//! repeated Idempotency-Key, a file refused half-way) still has bytes on the way. If the server
//! answered and closed the connection with those bytes unread, the kernel would reset the
//! connection, and a client still sending would see "broken pipe" instead of the answer (the
//! `ingest` CLI did, one run in three). So every request's body is wrapped: what a handler leaves
//! unread comes back here when the handler drops it, and is read to its end — at most
//! `max_body_bytes` and [`DRAIN_FOR`] — before the answer goes out, the way nginx's lingering
//! close does. Past the bound the connection closes anyway; the CLI then finds its batch again by
//! its Idempotency-Key.

use crate::state::AppState;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use futures_util::StreamExt;
use http_body::{Frame, SizeHint};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

/// The longest time spent reading a body nobody needs.
pub const DRAIN_FOR: Duration = Duration::from_secs(30);

/// Middleware: hands the request on with a body that returns what is left of it when dropped,
/// and reads that rest before answering.
pub async fn answer_after_body(
    State(app): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let rest = Arc::new(Mutex::new(None));
    let request = request.map(|body| {
        Body::new(Returning {
            body: Some(body),
            rest: rest.clone(),
        })
    });
    let response = next.run(request).await;
    let unread = rest.lock().expect("not poisoned").take();
    if let Some(unread) = unread {
        drain(unread, app.config.max_body_bytes, DRAIN_FOR).await;
    }
    response
}

/// Reads and drops a body, at most `limit` bytes and `within`; stops at its end or first error.
pub async fn drain(body: Body, limit: u64, within: Duration) {
    let mut frames = body.into_data_stream();
    let mut read = 0u64;
    let _ = tokio::time::timeout(within, async {
        while let Some(Ok(frame)) = frames.next().await {
            read += frame.len() as u64;
            if read > limit {
                break;
            }
        }
    })
    .await;
}

/// A request body that puts itself into `rest` when dropped before its end.
struct Returning {
    body: Option<Body>,
    rest: Arc<Mutex<Option<Body>>>,
}

impl HttpBody for Returning {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        match self.body.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), HttpBody::size_hint)
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        if let Some(body) = self.body.take().filter(|body| !body.is_end_stream()) {
            if let Ok(mut rest) = self.rest.lock() {
                *rest = Some(body);
            }
        }
    }
}
