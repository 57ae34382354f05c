//! The batch endpoints: `POST /batches` (submit), `GET /batches/{id}`, `GET /batches`,
//! `POST /batches/{id}/cancel` and `POST /batches/{id}/retract`. They parse the request at the
//! edge (content type, encoding, Idempotency-Key, ids, paging) into domain values, call the
//! pipeline, and turn its outcomes into answers; the batch status in every answer is
//! `ingest_wire::BatchStatus`.

use super::api_error::ApiError;
use crate::pipeline::retract;
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
use ingest_core::ledger::{Ending, NewBatch, RetractError};
use ingest_wire::{headers, BatchPage, BatchStatus, ErrorBody, ErrorCode, IdempotencyKey};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// `POST /batches`: 202 with the batch's status once the whole file is in and every chunk is
/// queued; 422, 413 or 400 with the failed batch's status; 409 if it was cancelled meanwhile (or,
/// before anything is read, when the batch `Replaces:` names cannot be replaced);
/// 200 with the earlier batch for a repeated Idempotency-Key; 503 when a dependency stayed away.
#[utoipa::path(
    post,
    path = "/batches",
    tag = "batches",
    summary = "Submit a rates file",
    description = "Streams a CSV file (`orig_code,dest_code,day,price`, header on line 1), checks \
        every line, and answers once the whole file is in and every chunk is queued.",
    request_body(content = String, content_type = "text/csv",
        description = "The rates file; `Content-Encoding: gzip` for a compressed one."),
    params(
        ("Idempotency-Key" = Option<String>, Header,
            description = "1 to 200 visible ASCII characters: a key a batch holds returns that batch"),
        ("Content-Encoding" = Option<String>, Header, description = "`gzip` or `identity`"),
        ("Replaces" = Option<i64>, Header,
            description = "The id of a committed batch that this one replaces: its commit retracts that batch in the same transaction, so readers see one or the other, never both, never neither"),
    ),
    responses(
        (status = 202, description = "Received whole; workers load it", body = BatchStatus),
        (status = 200, description = "The batch that holds this Idempotency-Key", body = BatchStatus),
        (status = 400, description = "The upload broke off (the batch failed), or a bad header", body = BatchOrError),
        (status = 401, description = "No token, or not the right one", body = ErrorBody),
        (status = 409, description = "Cancelled while it came in, or the batch `Replaces:` names is unknown, not committed or replaced already (nothing recorded)", body = BatchOrError),
        (status = 413, description = "Larger than the body limit (the batch failed)", body = BatchStatus),
        (status = 415, description = "Not text/csv, or an encoding other than gzip", body = ErrorBody),
        (status = 422, description = "Lines that are not valid prices (the batch failed)", body = BatchStatus),
        (status = 503, description = "PostgreSQL or RabbitMQ stayed away, or the batch ended while its upload came in: ask for the batch by its Idempotency-Key before sending the file again", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn submit(
    State(app): State<AppState>,
    request_headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let gzip = content_encoding(&request_headers)?;
    check_content_type(&request_headers)?;
    let key = idempotency_key(&request_headers)?;
    let replaces = replaces(&request_headers)?;
    let batch_id = match submit::open_batch(&app, key.as_ref(), replaces).await? {
        NewBatch::Created(id) => id,
        NewBatch::NotReplaceable(refusal) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                ErrorCode::NotReplaceable,
                refusal.to_string(),
            ));
        }
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
#[utoipa::path(
    get,
    path = "/batches/{id}",
    tag = "batches",
    summary = "A batch's status",
    params(("id" = i64, Path, description = "The batch id")),
    responses(
        (status = 200, description = "The batch's status", body = BatchStatus),
        (status = 400, description = "The id is not a whole number", body = ErrorBody),
        (status = 404, description = "No such batch", body = ErrorBody),
        (status = 503, description = "PostgreSQL is away", body = ErrorBody),
    ),
)]
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
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Page size (1 to 100, default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    /// Only batches with a smaller id (the `next` cursor of the previous page).
    before: Option<i64>,
    /// Only the batch submitted with this `Idempotency-Key` (how a client whose upload broke
    /// off finds out whether the coordinator kept it).
    idempotency_key: Option<String>,
}

/// `GET /batches`: newest first, paginated with `limit` and `before`, optionally only the batch
/// of one `idempotency_key`.
#[utoipa::path(
    get,
    path = "/batches",
    tag = "batches",
    summary = "The newest batches",
    params(ListParams),
    responses(
        (status = 200, description = "A page of batches, newest first", body = BatchPage),
        (status = 400, description = "A parameter is out of range", body = ErrorBody),
        (status = 503, description = "PostgreSQL is away", body = ErrorBody),
    ),
)]
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
#[utoipa::path(
    post,
    path = "/batches/{id}/cancel",
    tag = "batches",
    summary = "Cancel a batch that is not committed yet",
    params(("id" = i64, Path, description = "The batch id")),
    responses(
        (status = 200, description = "Cancelled now; nothing of it becomes visible", body = BatchStatus),
        (status = 400, description = "The id is not a whole number", body = ErrorBody),
        (status = 401, description = "No token, or not the right one", body = ErrorBody),
        (status = 404, description = "No such batch", body = ErrorBody),
        (status = 409, description = "Already final", body = BatchStatus),
        (status = 503, description = "PostgreSQL is away", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
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

/// `POST /batches/{id}/retract`: 200 when the committed batch's rows left `prices` now (in one
/// transaction with its state, `retracted`), 409 with its status when it is not committed (or
/// was retracted already: nothing changes), 503 when a lock did not come in time (a merge, a
/// commit's attach or a long reader held it) or PostgreSQL is away — nothing changed, try again.
#[utoipa::path(
    post,
    path = "/batches/{id}/retract",
    tag = "batches",
    summary = "Retract a committed batch: take its rows out of prices",
    description = "In one transaction: DETACH and DROP while the batch is still its own \
        partition, a DELETE by batch once it was merged into a shared one. Readers see the batch \
        whole or not at all. The batch ends `retracted`.",
    params(("id" = i64, Path, description = "The batch id")),
    responses(
        (status = 200, description = "Retracted now; none of its rows is visible", body = BatchStatus),
        (status = 400, description = "The id is not a whole number", body = ErrorBody),
        (status = 401, description = "No token, or not the right one", body = ErrorBody),
        (status = 404, description = "No such batch", body = ErrorBody),
        (status = 409, description = "Not committed (cancel an open batch instead), or retracted already", body = BatchStatus),
        (status = 503, description = "A lock did not come in time, or PostgreSQL is away: nothing changed, try again", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn retract(
    State(app): State<AppState>,
    id: Result<Path<i64>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = batch_id(id)?;
    match retract::retract(&app, id).await {
        Ok(_) => Ok(respond(StatusCode::OK, known(&app, id).await?)),
        Err(RetractError::NotCommitted { .. }) => {
            Ok(respond(StatusCode::CONFLICT, known(&app, id).await?))
        }
        Err(RetractError::Unknown(_)) => Err(ApiError::no_batch(id)),
        Err(RetractError::LockTimeout(reason)) => Err(ApiError::busy(&reason)),
        Err(RetractError::Outage(fault)) => Err(fault.into()),
    }
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

/// The batch a submit replaces (`Replaces: <id>`), if any.
fn replaces(request_headers: &HeaderMap) -> Result<Option<BatchId>, ApiError> {
    let Some(value) = request_headers.get(headers::REPLACES) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|text| text.trim().parse::<i64>().ok())
        .filter(|id| *id > 0)
        .map(|id| Some(BatchId(id)))
        .ok_or_else(|| ApiError::bad_request("Replaces: names a batch by its id, a whole number"))
}

/// A 400 or 409 to a submit: the batch (failed: the upload broke off; or cancelled) or an error
/// (a bad header; a `Replaces:` that names a batch which cannot be replaced).
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum BatchOrError {
    /// The batch, failed.
    Batch(Box<BatchStatus>),
    /// What was wrong with the request.
    Error(ErrorBody),
}
