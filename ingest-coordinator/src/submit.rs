//! Submit: `POST /batches` streams the body through split and publish and answers once the
//! whole file is in: 202 with the batch's status when it is loading, 422 (or 413, 400) with the
//! batch's status when it failed, 200 with the earlier batch for a repeated Idempotency-Key.
//! The body is never held in memory: frames go to the split thread as they arrive.
//!
//! An outage of PostgreSQL, RabbitMQ or the spool during the upload pauses it (no more of the body
//! is read) for up to `INGEST_RIDE_THROUGH_SECONDS`; past that the batch fails, frees its key,
//! and the client gets 503 with a request id (the details are in the log under that id).

use crate::api_error::ApiError;
use crate::app::AppState;
use crate::publish;
use crate::rates::Ports;
use crate::split::{self, BodyReader, Cutoff, SplitReport, SplitSettings};
use crate::status::{self, BatchStatus};
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use ingest_core::batch::BatchState;
use ingest_core::fault::Fault;
use ingest_core::ledger::{self, Ending, NewBatch};
use ingest_core::outage::ride_through;
use std::io;
use tokio::sync::mpsc;

/// The header a client sets to make a retried submit safe.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// `POST /batches`.
pub async fn submit(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let gzip = content_encoding(&headers)?;
    check_content_type(&headers)?;
    let key = idempotency_key(&headers)?;
    let batch_id = match open_batch(&app, key.as_deref()).await? {
        NewBatch::Created(id) => id,
        NewBatch::Existing(id) => {
            // The rest of the body is read and dropped by `unread_body` before this answer.
            return Ok(respond(StatusCode::OK, current_status(&app, id).await?));
        }
    };
    let _feeding = app.receiving.feed(batch_id);
    tracing::info!(batch_id, gzip, "receiving a batch");
    let report = match receive(&app, batch_id, gzip, body).await {
        Ok(report) => report,
        Err(fault) => {
            // An outage outlasted the patience: the batch fails and frees its key, so the
            // client's retry with the same key is a fresh submit. Should PostgreSQL still be
            // away, the sweep ends the batch once it is back.
            tracing::warn!(batch_id, %fault, "upload given up");
            let reason = format!(
                "the upload was given up: PostgreSQL, RabbitMQ or the coordinator's spool was \
                 unavailable for longer than {} s; submit the file again",
                app.config.ride_through_seconds
            );
            if let Err(error) = app.end_batch(batch_id, &Ending::upload_lost(reason)).await {
                tracing::warn!(batch_id, %error, "cannot record the failed upload yet; the sweep will");
            }
            return Err(ApiError::from(fault));
        }
    };
    conclude(&app, batch_id, report).await
}

/// Records a new batch in `receiving`, or finds the batch that holds `key`. A batch that holds
/// the key but is `receiving` with no upload feeding it is what a broken-off upload left behind
/// (its end not recorded yet, because the coordinator restarted or PostgreSQL was away): it is
/// ended now, freeing the key, so the client's retry is the fresh submit it asks for.
async fn open_batch(app: &AppState, key: Option<&str>) -> Result<NewBatch, Fault> {
    let patience = app.config.upload_patience();
    let pool = &app.pool;
    loop {
        let opened = ride_through(patience, "recording a new batch", move || async move {
            let mut client = pool.get().await?;
            let opened = ledger::create_batch(&mut client, key).await?;
            let state = match opened {
                NewBatch::Existing(id) => ledger::batch_state(&client, id).await?,
                NewBatch::Created(_) => None,
            };
            Ok((opened, state))
        })
        .await?;
        match opened {
            (NewBatch::Existing(id), Some(BatchState::Receiving)) if !app.receiving.is_fed(id) => {
                let reason = "the upload stopped before the whole file was in; it was sent again \
                              with the same Idempotency-Key";
                app.end_batch(id, &Ending::upload_lost(reason)).await?;
                tracing::info!(
                    batch_id = id,
                    "ended a broken-off upload whose key came back"
                );
            }
            (opened, _) => return Ok(opened),
        }
    }
}

/// Streams the body through split (blocking threads) and publish (async), concurrently.
async fn receive(
    app: &AppState,
    batch_id: i64,
    gzip: bool,
    body: Body,
) -> Result<SplitReport, Fault> {
    let pool = &app.pool;
    let ports = ride_through(
        app.config.upload_patience(),
        "reading the ports",
        move || async move {
            let client = pool.get().await?;
            let rows = client.query("SELECT code FROM ports", &[]).await?;
            Ok(Ports::new(rows.iter().map(|row| row.get::<_, String>(0))))
        },
    )
    .await?;
    let settings = SplitSettings {
        chunk_rows: app.config.chunk_rows,
        max_line_bytes: app.config.max_line_bytes,
        max_errors: app.config.max_errors,
        max_body_bytes: app.config.max_body_bytes,
        gzip,
    };
    let (frames_tx, frames_rx) = mpsc::channel(16);
    let (chunks_tx, chunks_rx) = mpsc::channel(4);
    let reader = BodyReader::new(frames_rx, settings.max_body_bytes);
    let split =
        tokio::task::spawn_blocking(move || split::split(reader, &settings, &ports, chunks_tx));
    let publish = tokio::spawn(publish::publish_batch(app.clone(), batch_id, chunks_rx));

    // While publish waits out an outage it takes no chunk, split then reads no frame, and this
    // loop reads no more of the body: the client is held back by TCP.
    let mut frames = body.into_data_stream();
    while let Some(frame) = frames.next().await {
        let frame = frame.map_err(|error| io::Error::new(io::ErrorKind::ConnectionAborted, error));
        if frame.is_err() {
            let _ = frames_tx.send(frame).await;
            break;
        }
        // A closed channel means split stopped reading (a fatal error, the error limit, or
        // publish gave up); the rest of the body is read and dropped by `unread_body` before
        // the answer goes out.
        if frames_tx.send(frame).await.is_err() {
            break;
        }
    }
    drop(frames_tx);
    drop(frames);
    let report = split
        .await
        .map_err(|error| Fault::outage(format!("the splitter stopped: {error}")))?;
    let published = publish
        .await
        .map_err(|error| Fault::outage(format!("the publisher stopped: {error}")))??;
    debug_assert!(published == report.chunks || report.error_count > 0);
    Ok(report)
}

/// The batch's status, riding through an outage.
async fn current_status(app: &AppState, batch_id: i64) -> Result<BatchStatus, ApiError> {
    let pool = &app.pool;
    ride_through(
        app.config.upload_patience(),
        "reading a batch's status",
        move || async move {
            let client = pool.get().await?;
            Ok(status::fetch(&client, batch_id).await?)
        },
    )
    .await?
    .ok_or(ApiError::no_batch(batch_id))
}

/// Records how the upload ended and answers the client.
async fn conclude(
    app: &AppState,
    batch_id: i64,
    report: SplitReport,
) -> Result<Response, ApiError> {
    let patience = app.config.upload_patience();
    let failure = match (&report.cutoff, report.error_count) {
        (Some(Cutoff::TooLarge), _) => Some(StatusCode::PAYLOAD_TOO_LARGE),
        (Some(Cutoff::Interrupted(_)), _) => Some(StatusCode::BAD_REQUEST),
        (None, 0) => None,
        (None, _) => Some(StatusCode::UNPROCESSABLE_ENTITY),
    };
    if let Some(code) = failure {
        let ending = ending(&report);
        tracing::info!(batch_id, error = %ending.error, "batch refused");
        let ending = &ending;
        ride_through(patience, "recording a refused batch", move || async move {
            app.end_batch(batch_id, ending).await
        })
        .await?;
        return Ok(respond(code, current_status(app, batch_id).await?));
    }
    let (pool, report) = (&app.pool, &report);
    let loading = ride_through(patience, "recording a received batch", move || async move {
        let client = pool.get().await?;
        Ok(ledger::finish_receiving(
            &client,
            batch_id,
            report.rows as i64,
            report.chunks,
            report.bytes_received as i64,
            &report.sha256,
        )
        .await?)
    })
    .await?;
    app.commit_wakeup.notify_one();
    let status = current_status(app, batch_id).await?;
    if !loading {
        // Cancelled while it was being received.
        return Ok(respond(StatusCode::CONFLICT, status));
    }
    tracing::info!(
        batch_id,
        rows = report.rows,
        chunks = report.chunks,
        "batch received"
    );
    Ok(respond(StatusCode::ACCEPTED, status))
}

/// The failure to record for a refused upload.
fn ending(report: &SplitReport) -> Ending {
    let first = report.errors.first().map(|error| {
        let column = error
            .column
            .as_deref()
            .map(|column| format!(", column {column}"))
            .unwrap_or_default();
        format!("line {}{column}: {}", error.line, error.message)
    });
    let count = if report.errors_truncated {
        format!("at least {}", report.error_count)
    } else {
        report.error_count.to_string()
    };
    let error = match first {
        Some(first) => format!("the file has {count} error(s); the first is on {first}"),
        None => "the upload failed".to_string(),
    };
    Ending {
        state: BatchState::Failed,
        error,
        error_count: report.error_count as i32,
        errors: serde_json::to_value(&report.errors).unwrap_or_default(),
        bytes_received: Some(report.bytes_received as i64),
        content_sha256: (!report.sha256.is_empty()).then(|| report.sha256.clone()),
        release_key: matches!(report.cutoff, Some(Cutoff::Interrupted(_))),
    }
}

/// A status response with a `Location` header.
pub fn respond(code: StatusCode, status: BatchStatus) -> Response {
    let location = status.status_url.clone();
    (code, [(header::LOCATION, location)], Json(status)).into_response()
}

fn content_encoding(headers: &HeaderMap) -> Result<bool, ApiError> {
    match headers.get(header::CONTENT_ENCODING).map(|v| v.to_str()) {
        None => Ok(false),
        Some(Ok(value)) if value.eq_ignore_ascii_case("gzip") => Ok(true),
        Some(Ok(value)) if value.eq_ignore_ascii_case("identity") => Ok(false),
        Some(_) => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_encoding",
            "Content-Encoding must be gzip or identity",
        )),
    }
}

fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let content_type = headers
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
            "unsupported_media_type",
            format!(
                "a batch is sent as Content-Type: text/csv (got {})",
                other.unwrap_or("none")
            ),
        )),
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(key) if !key.is_empty() && key.len() <= 200 => Ok(Some(key.to_string())),
        _ => Err(ApiError::bad_request(
            "Idempotency-Key must be 1 to 200 visible ASCII characters",
        )),
    }
}
