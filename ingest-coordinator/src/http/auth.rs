//! Protection of the mutating endpoints (submit, cancel, retract, and any later one): a bearer
//! token from `INGEST_TOKEN`. Reading status is open, so dashboards and the CLI's progress need
//! no secret. The token is never logged (the configuration hides it, requests are logged without
//! headers).

use super::api_error::ApiError;
use crate::state::AppState;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use ingest_wire::ErrorCode;
use subtle::ConstantTimeEq;

/// Lets a request through when no token is configured or when it carries the token.
pub async fn require_token(
    State(app): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let Some(expected) = app.config.token() else {
        return Ok(next.run(request).await);
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    match given {
        Some(given) if same(given.as_bytes(), expected.as_bytes()) => Ok(next.run(request).await),
        Some(_) => Err(unauthorized("the bearer token is not valid")),
        None => Err(unauthorized(
            "this endpoint needs an Authorization: Bearer <INGEST_TOKEN> header",
        )),
    }
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, message)
}

/// Compares in time that does not depend on where the first difference is (`subtle`; slices of
/// different lengths are unequal at once, as before: the length is not the secret).
fn same(a: &[u8], b: &[u8]) -> bool {
    bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    #[test]
    fn compares_tokens() {
        assert!(super::same(b"abc", b"abc"));
        assert!(!super::same(b"abc", b"abd"));
        assert!(!super::same(b"abc", b"abcd"));
    }
}
