//! The batch endpoints: `POST /batches` (submit), `GET /batches/{id}`, `GET /batches` and
//! `POST /batches/{id}/cancel`. They parse the request at the edge (content type, encoding,
//! Idempotency-Key, ids, paging) into domain values, call the pipeline, and turn its outcomes
//! into answers; the batch status in every answer is `ingest_wire::BatchStatus`.

use super::api_error::ApiError;
use crate::pipeline::status::{self, PageQuery};
use crate::pipeline::submit::{self, Received, Refusal};
use crate::state::AppState;
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ingest_core::batch::BatchId;
use ingest_core::ledger::{Ending, NewBatch};
use ingest_wire::{headers, BatchPage, BatchStatus, ErrorCode, IdempotencyKey};
use serde::Deserialize;

/// `POST /batches`: 202 with the batch's status once the whole file is in and every chunk is
/// queued; 422, 413 or 400 with the failed batch's status; 409 if it was cancelled meanwhile;
/// 200 with the earlier batch for a repeated Idempotency-Key; 503 when a dependency stayed away.
pub async fn submit(
    State(app): State<AppState>,
    request_headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let gzip = content_encoding(&request_headers)?;
    check_content_type(&request_headers)?;
    let key = idempotency_key(&request_headers)?;
    let batch_id = match submit::open_batch(&app, key.as_ref()).await? {
        NewBatch::Created(id) => id,
        NewBatch::Existing(id) => {
            // The rest of the body is read and dropped by `unread_body` before this answer.
            return Ok(respond(StatusCode::OK, known(&app, id).await?));
        }
    };
    Ok(match submit::take(&app, batch_id, gzip, body).await? {
        Received::Loading(status) => respond(StatusCode::ACCEPTED, status),
        Received::Cancelled(status) => respond(StatusCode::CONFLICT, status),
        Received::Refused(refusal, status) => {
            let code = match refusal {
                Refusal::Content => StatusCode::UNPROCESSABLE_ENTITY,
                Refusal::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
                Refusal::BrokeOff => StatusCode::BAD_REQUEST,
            };
            respond(code, status)
        }
    })
}

/// `GET /batches/{id}`.
pub async fn get_batch(
    State(app): State<AppState>,
    id: Result<Path<i64>, PathRejection>,
) -> Result<Json<BatchStatus>, ApiError> {
    let id = batch_id(id)?;
    let client = app.pool.get().await?;
    let status = status::fetch(&client, id)
        .await?
        .ok_or(ApiError::no_batch(id))?;
    Ok(Json(status))
}

/// Query parameters of `GET /batches`.
#[derive(Debug, Deserialize)]
pub struct ListParams {
    /// Page size (1 to 100, default 20).
    limit: Option<i64>,
    /// Only batches with a smaller id (the `next` cursor of the previous page).
    before: Option<i64>,
    /// Only the batch submitted with this `Idempotency-Key` (how a client whose upload broke
    /// off finds out whether the coordinator kept it).
    idempotency_key: Option<String>,
}

/// `GET /batches`: newest first, paginated with `limit` and `before`, optionally only the batch
/// of one `idempotency_key`.
pub async fn list_batches(
    State(app): State<AppState>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<BatchPage>, ApiError> {
    let Query(params) = params.map_err(|rejection| ApiError::bad_request(rejection.body_text()))?;
    let limit = params
        .limit
        .unwrap_or(20)
        .try_into()
        .ok()
        .filter(|limit| (1..=100).contains(limit))
        .ok_or_else(|| ApiError::bad_request("limit must be between 1 and 100"))?;
    let idempotency_key = params
        .idempotency_key
        .as_deref()
        .map(IdempotencyKey::parse)
        .transpose()
        .map_err(|invalid| ApiError::bad_request(invalid.to_string()))?;
    let query = PageQuery {
        limit,
        before: params.before.map(BatchId),
        idempotency_key,
    };
    let client = app.pool.get().await?;
    Ok(Json(status::page(&client, &query).await?))
}

/// `POST /batches/{id}/cancel`: 200 when it is cancelled now (its staged rows dropped in the same
/// transaction; workers holding its chunks find it closed), 409 with its status when it was
/// already final.
pub async fn cancel(
    State(app): State<AppState>,
    id: Result<Path<i64>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = batch_id(id)?;
    let cancelled = app.end_batch(id, &Ending::cancelled()).await?;
    let status = known(&app, id).await?;
    let code = if cancelled {
        StatusCode::OK
    } else {
        StatusCode::CONFLICT
    };
    Ok(respond(code, status))
}

/// A batch's status, or 404.
async fn known(app: &AppState, id: BatchId) -> Result<BatchStatus, ApiError> {
    submit::current_status(app, id)
        .await?
        .ok_or(ApiError::no_batch(id))
}

/// A status response with a `Location` header.
fn respond(code: StatusCode, status: BatchStatus) -> Response {
    let location = status.status_url.clone();
    (code, [(header::LOCATION, location)], Json(status)).into_response()
}

/// The batch id of a path.
fn batch_id(id: Result<Path<i64>, PathRejection>) -> Result<BatchId, ApiError> {
    let Path(id) = id.map_err(|_| ApiError::bad_request("a batch id is a whole number"))?;
    Ok(BatchId(id))
}

fn content_encoding(request_headers: &HeaderMap) -> Result<bool, ApiError> {
    match request_headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str())
    {
        None => Ok(false),
        Some(Ok(value)) if value.eq_ignore_ascii_case("gzip") => Ok(true),
        Some(Ok(value)) if value.eq_ignore_ascii_case("identity") => Ok(false),
        Some(_) => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::UnsupportedEncoding,
            "Content-Encoding must be gzip or identity",
        )),
    }
}

fn check_content_type(request_headers: &HeaderMap) -> Result<(), ApiError> {
    let content_type = request_headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(|value| {
            value
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    match content_type.as_deref() {
        Some("text/csv") | Some("application/csv") => Ok(()),
        other => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::UnsupportedMediaType,
            format!(
                "a batch is sent as Content-Type: text/csv (got {})",
                other.unwrap_or("none")
            ),
        )),
    }
}

fn idempotency_key(request_headers: &HeaderMap) -> Result<Option<IdempotencyKey>, ApiError> {
    let Some(value) = request_headers.get(headers::IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or("");
    IdempotencyKey::parse(text)
        .map(Some)
        .map_err(|invalid| ApiError::bad_request(invalid.to_string()))
}
