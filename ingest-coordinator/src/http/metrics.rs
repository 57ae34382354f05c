//! `GET /metrics`: the Prometheus text of every metric (`ingest_core::metrics` lists them).
//! Counters and histograms are kept as things happen; the gauges that describe the world —
//! batches by state, the queues' depth and consumers, uploads in flight — are read at each
//! scrape, so any coordinator answers the same about the ledger and the broker. The answer is
//! rendered as a worker's is ([`ingest_core::probe`]).

use crate::state::AppState;
use axum::extract::State;
use axum::response::IntoResponse;
use ingest_core::metrics as m;
use ingest_core::{broker, ledger, probe};
use ingest_wire::BatchState;

/// `GET /metrics`.
#[utoipa::path(get, path = "/metrics", tag = "operations", summary = "Prometheus metrics",
    responses((status = 200, description = "Prometheus text format",
        content_type = "text/plain; version=0.0.4; charset=utf-8", body = String)))]
pub async fn metrics(State(app): State<AppState>) -> impl IntoResponse {
    metrics::gauge!(m::UPLOADS_IN_FLIGHT).set(app.receiving.len() as f64);
    read_batches(&app).await;
    read_queues(&app).await;
    probe::metrics()
}

/// Batches by state and the coordinators alive, from the ledger (left as they were when
/// PostgreSQL does not answer).
async fn read_batches(app: &AppState) {
    let Ok(client) = app.pool.get().await else {
        return;
    };
    if let Ok(alive) = ledger::live_coordinators(&client).await {
        metrics::gauge!(m::COORDINATORS).set(alive as f64);
    }
    let Ok(counts) = ledger::batches_by_state(&client).await else {
        return;
    };
    for state in BatchState::ALL {
        let count = counts
            .iter()
            .find(|(counted, _)| *counted == state)
            .map_or(0, |(_, count)| *count);
        metrics::gauge!(m::BATCHES, "state" => state.as_str()).set(count as f64);
    }
}

/// The chunk queue and the dead-letter queue, as RabbitMQ reports them (left as they were when
/// it does not answer).
async fn read_queues(app: &AppState) {
    let Ok(channel) = app.amqp.channel().await else {
        return;
    };
    let queue = &app.config.queue;
    for (label, name) in [
        ("chunks", queue.clone()),
        ("dead", broker::dead_letter_queue(queue)),
    ] {
        if let Ok((messages, consumers)) = broker::depth(&channel, &name).await {
            metrics::gauge!(m::QUEUE_MESSAGES, "queue" => label).set(f64::from(messages));
            metrics::gauge!(m::QUEUE_CONSUMERS, "queue" => label).set(f64::from(consumers));
        }
    }
    let _ = channel.close(200, "counted".into()).await;
}
