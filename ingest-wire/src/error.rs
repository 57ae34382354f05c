//! Every error answer of the API: `{"error": {"code": "...", "message": "...", "request_id": "..."}}`.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The body of an error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    /// A stable machine-readable code.
    pub code: ErrorCode,
    /// What went wrong, for a person.
    pub message: String,
    /// The request's id, also in the `x-request-id` header and in the coordinator's log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// The kinds of error answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400: the request's form is wrong.
    BadRequest,
    /// 401: no token, or not the right one.
    Unauthorized,
    /// 404: no such batch or endpoint.
    NotFound,
    /// 405: the endpoint does not take that method.
    MethodNotAllowed,
    /// 415: not `text/csv`.
    UnsupportedMediaType,
    /// 415: a `Content-Encoding` other than gzip.
    UnsupportedEncoding,
    /// 409: the batch a submit's `Replaces:` names cannot be replaced (unknown, not committed,
    /// or replaced already).
    NotReplaceable,
    /// 422: PostgreSQL refused the rows.
    Refused,
    /// 503: PostgreSQL or RabbitMQ is away; try again.
    Unavailable,
}

impl ErrorCode {
    /// The code as it appears in the body.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::UnsupportedEncoding => "unsupported_encoding",
            ErrorCode::NotReplaceable => "not_replaceable",
            ErrorCode::Refused => "refused",
            ErrorCode::Unavailable => "unavailable",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_written_as_their_names() {
        for code in [
            ErrorCode::BadRequest,
            ErrorCode::Unauthorized,
            ErrorCode::NotFound,
            ErrorCode::MethodNotAllowed,
            ErrorCode::UnsupportedMediaType,
            ErrorCode::UnsupportedEncoding,
            ErrorCode::NotReplaceable,
            ErrorCode::Refused,
            ErrorCode::Unavailable,
        ] {
            assert_eq!(
                serde_json::to_value(code).unwrap(),
                serde_json::json!(code.as_str())
            );
        }
    }
}
