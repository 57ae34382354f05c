//! Errors as the HTTP API shows them: a status code and an `ingest_wire::ErrorBody`,
//! `{"error": {"code": "...", "message": "...", "request_id": "..."}}`. Nothing reaches a client
//! as a bare 500 page, and no internal text (a database's message, a host name) reaches a client:
//! an outage is logged in full with the request id, and answered with 503 and that id.

use super::request_id;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use ingest_core::batch::BatchId;
use ingest_core::fault::Fault;
use ingest_wire::{ErrorBody, ErrorCode, ErrorDetail};

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A stable machine-readable code.
    pub code: ErrorCode,
    /// What went wrong, for a person.
    pub message: String,
}

impl ApiError {
    /// An error with the given status, code and message.
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// 404 for an unknown batch.
    pub fn no_batch(id: BatchId) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            format!("no batch {id}"),
        )
    }

    /// 400 for a request whose form is wrong.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, message)
    }

    /// 503: a dependency is away. `what` (full detail) goes to the log only.
    pub fn unavailable(what: &str) -> ApiError {
        tracing::error!(error = what, "request failed: a dependency is unavailable");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            "the coordinator cannot reach PostgreSQL or RabbitMQ right now; \
             nothing was loaded, try again later",
        )
    }
}

impl ApiError {
    /// 503: a lock the request needs did not come in time (a merge, a commit or a long reader
    /// holds it); nothing changed. `what` (full detail) goes to the log only.
    pub fn busy(what: &str) -> ApiError {
        tracing::warn!(
            error = what,
            "request not done: a lock did not come in time"
        );
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            "the batch's partition is busy (a merge, a commit or a long read holds it); \
             nothing changed, try again",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let request_id = request_id::current();
        let message = match &request_id {
            Some(id) if self.status.is_server_error() => format!("{} (request {id})", self.message),
            _ => self.message,
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message,
                request_id,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<Fault> for ApiError {
    fn from(fault: Fault) -> ApiError {
        match fault {
            Fault::Outage(reason) => ApiError::unavailable(&reason),
            Fault::Refused(reason) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::Refused, reason)
            }
        }
    }
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(error: tokio_postgres::Error) -> ApiError {
        ApiError::from(Fault::from(error))
    }
}

impl From<deadpool_postgres::PoolError> for ApiError {
    fn from(error: deadpool_postgres::PoolError) -> ApiError {
        ApiError::from(Fault::from(error))
    }
}
