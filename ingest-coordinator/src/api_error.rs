//! Errors as the HTTP API shows them: a status code and a JSON body
//! `{"error": {"code": "...", "message": "...", "request_id": "..."}}`. Nothing reaches a client as
//! a bare 500 page, and no internal text (a database's message, a host name) reaches a client:
//! an outage is logged in full with the request id, and answered with 503 and that id.

use crate::request_id;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use ingest_core::fault::Fault;
use serde_json::json;

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A stable machine-readable code.
    pub code: &'static str,
    /// What went wrong, for a person.
    pub message: String,
}

impl ApiError {
    /// An error with the given status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// 404 for an unknown batch.
    pub fn no_batch(id: i64) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no batch {id}"))
    }

    /// 400 for a request whose form is wrong.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 503: a dependency is away. `what` (full detail) goes to the log only.
    pub fn unavailable(what: &str) -> ApiError {
        tracing::error!(error = what, "request failed: a dependency is unavailable");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the coordinator cannot reach PostgreSQL, RabbitMQ or its spool right now; \
             nothing was loaded, try again later",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({ "code": self.code, "message": self.message });
        if let Some(id) = request_id::current() {
            error["request_id"] = json!(id);
            if self.status.is_server_error() {
                error["message"] = json!(format!("{} (request {id})", self.message));
            }
        }
        (self.status, Json(json!({ "error": error }))).into_response()
    }
}

impl From<Fault> for ApiError {
    fn from(fault: Fault) -> ApiError {
        match fault {
            Fault::Outage(reason) => ApiError::unavailable(&reason),
            Fault::Refused(reason) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "refused", reason)
            }
        }
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(error: anyhow::Error) -> ApiError {
        match error.downcast::<Fault>() {
            Ok(fault) => ApiError::from(fault),
            Err(error) => ApiError::unavailable(&format!("{error:#}")),
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
