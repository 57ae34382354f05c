//! Submit: opens a batch for an upload and streams the body through split and publish, then
//! records how the upload ended. The body is never held in memory: frames go to the split thread
//! as they arrive.
//!
//! An outage of PostgreSQL or RabbitMQ during the upload pauses it (no more of the body is read)
//! for up to `INGEST_RIDE_THROUGH_SECONDS`; past that the batch fails and frees its key, and the
//! caller answers 503.

use super::body::BodyReader;
use super::publish;
use super::rates::Ports;
use super::split::{self, Cutoff, SplitReport, SplitSettings};
use super::status;
use crate::state::AppState;
use axum::body::Body;
use futures_util::StreamExt;
use ingest_core::batch::{BatchId, BatchState};
use ingest_core::fault::Fault;
use ingest_core::ledger::{self, Ending, NewBatch, Received as ReceivedFile, Receiver};
use ingest_core::metrics as m;
use ingest_core::outage::ride_through;
use ingest_wire::{BatchStatus, IdempotencyKey};
use std::io;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tracing::{Instrument, Span};

/// How an upload ended, with the batch's status.
#[derive(Debug)]
pub enum Received {
    /// The whole file is in and every chunk is queued: workers load it.
    Loading(BatchStatus),
    /// The batch failed at once, for the reason given; its status says more.
    Refused(Refusal, BatchStatus),
    /// The batch was cancelled while the file came in.
    Cancelled(BatchStatus),
}

/// Why an upload was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Lines are not valid prices (the file keeps its key: the same file gets the same answer).
    Content,
    /// The body is larger than the limit.
    TooLarge,
    /// The upload broke off before its end (the key is freed for the retry).
    BrokeOff,
}

/// How often a submit whose key a live peer's upload holds looks again.
const PEER_POLL: Duration = Duration::from_millis(250);

/// Records a new batch in `receiving`, fed by this coordinator, or finds the batch that holds
/// `key`. A batch that holds the key but is `receiving` with no upload feeding it is what a
/// broken-off upload left behind (its end not recorded yet, because its coordinator restarted,
/// died or PostgreSQL was away): it is ended now, freeing the key, so the client's retry is the
/// fresh submit it asks for. When a live peer still feeds it — the client came back before that
/// coordinator noticed the break — this waits, up to that coordinator's lease and a little more,
/// for the upload to end or its coordinator to be gone. With `replaces`, the batch is to replace
/// that committed one when it commits (`ledger::replace`).
pub async fn open_batch(
    app: &AppState,
    key: Option<&IdempotencyKey>,
    replaces: Option<BatchId>,
) -> Result<NewBatch, Fault> {
    let patience = app.config.upload_patience();
    let (pool, me) = (&app.pool, app.presence.id());
    let parts = app.config.batch_parts;
    let peer_wait = Instant::now() + app.presence.lease() + Duration::from_secs(5);
    loop {
        let opened = ride_through(patience, "recording a new batch", move || async move {
            let mut client = pool.get().await?;
            let opened = ledger::create_batch(&mut client, key, replaces, parts, me).await?;
            let found = match opened {
                NewBatch::Existing(id) => Some((
                    ledger::batch_state(&client, id).await?,
                    ledger::receiver_of(&client, id, me).await?,
                )),
                NewBatch::Created(_) | NewBatch::NotReplaceable(_) => None,
            };
            Ok((opened, found))
        })
        .await?;
        let (NewBatch::Existing(id), Some((Some(BatchState::Receiving), receiver))) = opened else {
            return Ok(opened.0);
        };
        let abandoned = match receiver {
            Receiver::Me => !app.receiving.is_fed(id),
            Receiver::Gone => true,
            Receiver::Peer(peer) if Instant::now() < peer_wait => {
                tracing::info!(batch_id = %id, %peer, "a peer still feeds the upload of this key; waiting");
                tokio::time::sleep(PEER_POLL).await;
                continue;
            }
            Receiver::Peer(_) => false,
        };
        if !abandoned {
            return Ok(opened.0);
        }
        let reason = "the upload stopped before the whole file was in; it was sent again with \
                      the same Idempotency-Key";
        app.end_batch(id, &Ending::upload_lost(reason)).await?;
        tracing::info!(batch_id = %id, "ended a broken-off upload whose key came back");
    }
}

/// Takes the upload of a batch just opened: streams `body` through split and publish, records
/// how it ended. An outage that outlasted the patience fails the batch (freeing its key) and is
/// returned.
pub async fn take(
    app: &AppState,
    batch_id: BatchId,
    gzip: bool,
    body: Body,
) -> Result<Received, Fault> {
    let _feeding = app.receiving.feed(batch_id);
    let span = tracing::info_span!("batch", %batch_id);
    take_in(app, batch_id, gzip, body).instrument(span).await
}

/// [`take`], inside the batch's span.
async fn take_in(
    app: &AppState,
    batch_id: BatchId,
    gzip: bool,
    body: Body,
) -> Result<Received, Fault> {
    tracing::info!(%batch_id, gzip, "receiving a batch");
    match receive(app, batch_id, gzip, body).await {
        Ok(Some(report)) => conclude(app, batch_id, report).await,
        Ok(None) => ended_meanwhile(app, batch_id).await,
        Err(fault) => {
            // Should PostgreSQL still be away, the sweep ends the batch once it is back.
            tracing::warn!(%batch_id, %fault, "upload given up");
            let reason = format!(
                "the upload was given up: PostgreSQL or RabbitMQ was unavailable for longer \
                 than {} s; submit the file again",
                app.config.ride_through.as_secs_f64()
            );
            if let Err(error) = app.end_batch(batch_id, &Ending::upload_lost(reason)).await {
                tracing::warn!(%batch_id, %error, "cannot record the failed upload yet; the sweep will");
            }
            Err(fault)
        }
    }
}

/// Streams the body through split (blocking threads) and publish (async), concurrently. `None`
/// when the batch ended while the body came in (publish found it over).
async fn receive(
    app: &AppState,
    batch_id: BatchId,
    gzip: bool,
    body: Body,
) -> Result<Option<SplitReport>, Fault> {
    let ports = ports(app).await?;
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
    let publish = tokio::spawn(
        publish::publish_batch(app.clone(), batch_id, chunks_rx).instrument(Span::current()),
    );

    feed(body, frames_tx).await;
    let report = split
        .await
        .map_err(|error| Fault::outage(format!("the splitter stopped: {error}")))?;
    let published = publish
        .await
        .map_err(|error| Fault::outage(format!("the publisher stopped: {error}")))??;
    let Some(published) = published else {
        return Ok(None);
    };
    debug_assert!(published == report.chunks || report.error_count > 0);
    Ok(Some(report))
}

/// The port codes a file's lines are checked against, riding through an outage.
async fn ports(app: &AppState) -> Result<Ports, Fault> {
    let pool = &app.pool;
    ride_through(
        app.config.upload_patience(),
        "reading the ports",
        move || async move {
            let client = pool.get().await?;
            let rows = client.query("SELECT code AS code FROM ports", &[]).await?;
            Ok(Ports::new(
                rows.iter().map(|row| row.get::<_, String>("code")),
            ))
        },
    )
    .await
}

/// Hands the body's frames to split as they arrive, until the body ends, breaks off (the break
/// goes to split as an error) or split stops reading.
async fn feed(body: Body, frames_tx: mpsc::Sender<io::Result<axum::body::Bytes>>) {
    // While publish waits out an outage it takes no chunk, split then reads no frame, and this
    // loop reads no more of the body: the client is held back by TCP.
    let mut frames = body.into_data_stream();
    while let Some(frame) = frames.next().await {
        let frame = frame.map_err(|error| io::Error::new(io::ErrorKind::ConnectionAborted, error));
        if frame.is_err() {
            let _ = frames_tx.send(frame).await;
            break;
        }
        if let Ok(bytes) = &frame {
            metrics::counter!(m::BYTES_RECEIVED).increment(bytes.len() as u64);
        }
        // A closed channel means split stopped reading (a fatal error, the error limit, or
        // publish gave up); the rest of the body is read and dropped before the answer goes out
        // (`http::unread_body`).
        if frames_tx.send(frame).await.is_err() {
            break;
        }
    }
}

/// The batch's status, riding through an outage (`None` for an unknown batch).
pub async fn current_status(
    app: &AppState,
    batch_id: BatchId,
) -> Result<Option<BatchStatus>, Fault> {
    let pool = &app.pool;
    ride_through(
        app.config.upload_patience(),
        "reading a batch's status",
        move || async move {
            let client = pool.get().await?;
            status::fetch(&client, batch_id).await
        },
    )
    .await
}

/// The status of a batch this upload made (it exists: it was made above).
async fn status_of(app: &AppState, batch_id: BatchId) -> Result<BatchStatus, Fault> {
    current_status(app, batch_id)
        .await?
        .ok_or_else(|| Fault::outage(format!("batch {batch_id} vanished from the ledger")))
}

/// Records how the upload ended.
async fn conclude(
    app: &AppState,
    batch_id: BatchId,
    report: SplitReport,
) -> Result<Received, Fault> {
    let patience = app.config.upload_patience();
    let refusal = match (&report.cutoff, report.error_count) {
        (Some(Cutoff::TooLarge), _) => Some(Refusal::TooLarge),
        (Some(Cutoff::Interrupted(_)), _) => Some(Refusal::BrokeOff),
        (None, 0) => None,
        (None, _) => Some(Refusal::Content),
    };
    if let Some(refusal) = refusal {
        let ending = &ending(&report);
        tracing::info!(%batch_id, error = %ending.error, "batch refused");
        ride_through(patience, "recording a refused batch", move || async move {
            app.end_batch(batch_id, ending).await
        })
        .await?;
        return Ok(Received::Refused(refusal, status_of(app, batch_id).await?));
    }
    let (pool, received) = (
        &app.pool,
        &ReceivedFile {
            rows: report.rows,
            chunks: report.chunks,
            bytes: report.bytes_received,
            sha256: &report.sha256,
        },
    );
    // Tried again after an outage: the state it returns is the truth even when the first
    // try's update committed and only its answer was lost.
    let finished = ride_through(patience, "recording a received batch", move || async move {
        let client = pool.get().await?;
        Ok(ledger::finish_receiving(&client, batch_id, received).await?)
    })
    .await?;
    let state = match finished {
        ledger::Finished::State(state) => state,
        ledger::Finished::MissingChunks { recorded, cut } => {
            return lost_chunks(app, batch_id, recorded, cut).await;
        }
    };
    app.commit_wakeup.notify_one();
    let status = status_of(app, batch_id).await?;
    if !matches!(
        state,
        Some(BatchState::Loading | BatchState::Committing | BatchState::Committed)
    ) {
        return ended_meanwhile(app, batch_id).await;
    }
    metrics::counter!(m::ROWS_RECEIVED).increment(report.rows);
    tracing::info!(
        %batch_id,
        rows = report.rows,
        chunks = report.chunks,
        "batch received"
    );
    Ok(Received::Loading(status))
}

/// The answer for a batch that ended while its upload came in: cancelled (409), or ended — its
/// coordinator was taken for gone (it stalled past its lease) and the upload ended, its key
/// released, or one of its chunks failed it already — which is an outage for this request (503:
/// the client asks by key and sends the file again if the key is free).
async fn ended_meanwhile(app: &AppState, batch_id: BatchId) -> Result<Received, Fault> {
    let status = status_of(app, batch_id).await?;
    if status.state == BatchState::Cancelled {
        return Ok(Received::Cancelled(status));
    }
    tracing::warn!(%batch_id, error = ?status.error, "the batch ended while its upload came in");
    Err(Fault::outage(format!(
        "batch {batch_id} ended while its upload came in: {}",
        status.error.as_deref().unwrap_or("no reason recorded")
    )))
}

/// The ledger lost chunks this upload recorded (a failover to a standby that had not received
/// them): the batch cannot be loaded whole. It fails, its key released, and the request gets an
/// outage (503) so that the client sends the file again.
async fn lost_chunks(
    app: &AppState,
    batch_id: BatchId,
    recorded: u32,
    cut: u32,
) -> Result<Received, Fault> {
    let error = format!(
        "the ledger lost {} of the {cut} chunks this upload recorded (a PostgreSQL failover to a \
         standby that had not received them); send the file again",
        cut.saturating_sub(recorded)
    );
    tracing::warn!(%batch_id, %error, "chunks lost while the upload came in");
    let ending = &Ending::upload_lost(error.clone());
    ride_through(
        app.config.upload_patience(),
        "recording an upload whose chunks were lost",
        move || async move { app.end_batch(batch_id, ending).await },
    )
    .await?;
    Err(Fault::outage(format!("batch {batch_id}: {error}")))
}

/// The failure to record for a refused upload.
fn ending(report: &SplitReport) -> Ending {
    let count = if report.errors_truncated {
        format!("at least {}", report.error_count)
    } else {
        report.error_count.to_string()
    };
    let error = match report.errors.first() {
        Some(first) => format!(
            "the file has {count} error(s); the first is on {}",
            first_error(first)
        ),
        None => "the upload failed".to_string(),
    };
    Ending {
        state: BatchState::Failed,
        error,
        error_count: report.error_count as u64,
        errors: report.errors.clone(),
        bytes_received: Some(report.bytes_received),
        content_sha256: (!report.sha256.is_empty()).then(|| report.sha256.clone()),
        release_key: matches!(report.cutoff, Some(Cutoff::Interrupted(_))),
    }
}

/// `line L, column C: message` (the summary leaves the value out).
fn first_error(error: &ingest_wire::RowError) -> String {
    let column = error
        .column
        .as_deref()
        .map(|column| format!(", column {column}"))
        .unwrap_or_default();
    format!("line {}{column}: {}", error.line, error.message)
}
