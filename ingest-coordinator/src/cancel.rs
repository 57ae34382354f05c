//! Cancel: `POST /batches/{id}/cancel` stops a batch that is not committed yet. Its staged rows
//! are dropped in the same transaction that marks it cancelled; workers holding its chunks find
//! it closed and drop them. A batch already final answers 409 with its status.

use crate::api_error::ApiError;
use crate::app::AppState;
use crate::status;
use crate::submit::respond;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use ingest_core::batch::BatchState;
use ingest_core::ledger::Ending;

/// `POST /batches/{id}/cancel`.
pub async fn cancel(
    State(app): State<AppState>,
    id: Result<Path<i64>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(id) = id.map_err(|_| ApiError::bad_request("a batch id is a whole number"))?;
    let ending = Ending {
        state: BatchState::Cancelled,
        ..Ending::failed("cancelled on request")
    };
    let cancelled = app.end_batch(id, &ending).await?;
    let client = app.pool.get().await?;
    let status = status::fetch(&client, id)
        .await?
        .ok_or(ApiError::no_batch(id))?;
    let code = if cancelled {
        StatusCode::OK
    } else {
        StatusCode::CONFLICT
    };
    Ok(respond(code, status))
}
