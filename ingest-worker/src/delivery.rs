//! One delivery of a chunk message, from RabbitMQ's hand to its acknowledgement: the
//! [`ChunkLoader`] loads the chunk it names ([`crate::load`]), riding through PostgreSQL outages
//! with the delivery in hand, and settles it — acknowledged after every outcome, rejected (to the
//! dead-letter queue) when it is no chunk message, left unacknowledged when the worker stops
//! during an outage (RabbitMQ delivers it again).

use crate::load::{self, Outcome};
use deadpool_postgres::Pool;
use ingest_core::chunk::ChunkMessage;
use ingest_core::fault::Fault;
use ingest_core::ledger;
use ingest_core::metrics as m;
use ingest_core::outage::Patience;
use ingest_wire::OutageStep;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicRejectOptions};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Loads one delivered chunk and settles its delivery: what that needs.
pub struct ChunkLoader {
    /// The worker's sessions.
    pub pool: Pool,
    /// The worker's name in the ledger.
    pub worker: String,
    /// How long the claim on the chunk lasts.
    pub lease: Duration,
    /// The pauses between tries while PostgreSQL is away.
    pub patience: Patience,
    /// The worker's shutdown: ends the pauses between tries (the delivery stays unacknowledged).
    pub shutdown: CancellationToken,
}

impl ChunkLoader {
    /// Loads `delivery`'s chunk, riding through PostgreSQL outages with the delivery in hand,
    /// and settles it with RabbitMQ.
    pub async fn run(self, delivery: Delivery) {
        let headers = delivery.properties.headers().clone().unwrap_or_default();
        let Some(message) = ChunkMessage::from_headers(&headers) else {
            tracing::error!(
                tag = delivery.delivery_tag,
                "not a chunk message; dead-lettering it"
            );
            let _ = delivery
                .acker
                .reject(BasicRejectOptions { requeue: false })
                .await;
            return;
        };
        let (batch_id, seq) = (message.batch_id, message.seq);
        let span = tracing::info_span!("chunk", %batch_id, %seq);
        self.load_and_settle(message, delivery)
            .instrument(span)
            .await;
    }

    /// [`ChunkLoader::run`] for a chunk message, inside the chunk's span.
    async fn load_and_settle(self, message: ChunkMessage, delivery: Delivery) {
        let (batch_id, seq) = (message.batch_id, message.seq);
        let _in_hand = InHand::count();
        let Some(outcome) = self.load_through_outages(message, &delivery.data).await else {
            // Unacknowledged: RabbitMQ delivers it again once this channel closes.
            tracing::info!(%batch_id, %seq, "stopping with a chunk in hand; RabbitMQ delivers it again");
            return;
        };
        report(&outcome, message);
        if let Err(error) = delivery.acker.ack(BasicAckOptions::default()).await {
            // The channel is gone: RabbitMQ redelivers the message, and the ledger makes that safe.
            tracing::warn!(%batch_id, %seq, %error, "could not acknowledge the delivery");
        }
    }

    /// Loads the chunk, trying again after each outage with growing pauses, for as long as it
    /// takes; each outage is noted in the batch's status when PostgreSQL lets it. None when the
    /// worker stopped during a pause.
    async fn load_through_outages(&self, message: ChunkMessage, body: &[u8]) -> Option<Outcome> {
        let (batch_id, seq) = (message.batch_id, message.seq);
        let mut pauses = self.patience.pauses();
        let mut attempt = 1u32;
        // The last outage, until it is in the batch's status (not while PostgreSQL is the outage).
        let mut unnoted: Option<(u32, Fault)> = None;
        let outcome = loop {
            let started = Instant::now();
            let fault = match load::load(&self.pool, message, body, &self.worker, self.lease).await
            {
                Ok(outcome) => {
                    metrics::histogram!(m::CHUNK_LOAD_SECONDS)
                        .record(started.elapsed().as_secs_f64());
                    break outcome;
                }
                Err(fault) => fault,
            };
            metrics::counter!(m::CHUNK_RETRIES, "reason" => "outage").increment(1);
            let pause = pauses.next().unwrap_or(self.patience.max_pause);
            tracing::warn!(%batch_id, %seq, attempt, %fault, ?pause, "outage; keeping the chunk and trying again");
            unnoted =
                (!ledger::note_outage(&self.pool, batch_id, OutageStep::Load, attempt, &fault)
                    .await)
                    .then_some((attempt, fault));
            tokio::select! {
                _ = self.shutdown.cancelled() => return None,
                _ = tokio::time::sleep(pause) => {}
            }
            attempt += 1;
        };
        if let Some((attempt, fault)) = unnoted {
            ledger::note_outage(&self.pool, batch_id, OutageStep::Load, attempt, &fault).await;
        }
        Some(outcome)
    }
}

/// Counts a loaded delivery's outcome and logs it.
fn report(outcome: &Outcome, message: ChunkMessage) {
    let (batch_id, seq) = (message.batch_id, message.seq);
    let label = match outcome {
        Outcome::Loaded => "loaded",
        Outcome::AlreadyLoaded => "already_loaded",
        Outcome::Closed => "closed",
        Outcome::Refused(_) => "refused",
        Outcome::Damaged(_) => "damaged",
    };
    metrics::counter!(m::CHUNK_DELIVERIES, "outcome" => label).increment(1);
    if *outcome == Outcome::Loaded {
        metrics::counter!(m::ROWS_LOADED).increment(u64::from(message.rows));
    }
    match outcome {
        Outcome::Loaded => tracing::debug!(%batch_id, %seq, "chunk loaded"),
        Outcome::AlreadyLoaded => {
            tracing::info!(%batch_id, %seq, "duplicate delivery; already loaded")
        }
        Outcome::Closed => tracing::info!(%batch_id, %seq, "batch closed; chunk dropped"),
        Outcome::Refused(reason) => {
            tracing::warn!(%batch_id, %seq, %reason, "PostgreSQL refused the chunk's rows")
        }
        Outcome::Damaged(reason) => {
            tracing::warn!(%batch_id, %seq, %reason, "the chunk's copy was read damaged; it is handed out again")
        }
    }
}

/// A chunk in this worker's hands, counted in the gauge for as long as it lives.
struct InHand;

impl InHand {
    fn count() -> InHand {
        metrics::gauge!(m::CHUNKS_IN_HAND).increment(1.0);
        InHand
    }
}

impl Drop for InHand {
    fn drop(&mut self) {
        metrics::gauge!(m::CHUNKS_IN_HAND).decrement(1.0);
    }
}
