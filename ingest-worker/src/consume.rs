//! Consume: the worker's one loop. Takes deliveries from the chunk queue (manual acks, prefetch
//! bounded), loads up to `concurrency` chunks at once, and acknowledges each only after its
//! load committed (or PostgreSQL's refusal was recorded). On shutdown it stops taking chunks,
//! finishes those in hand within the drain deadline, and leaves the rest to RabbitMQ
//! (unacknowledged messages are delivered again).
//!
//! Faults:
//! - PostgreSQL away: the delivery stays in hand and the load is tried again with growing
//!   pauses, for as long as it takes (the delivery limit is not spent on an outage);
//! - RabbitMQ away: the connection recovers by itself (see [`ingest_core::broker`]) and the
//!   consumer resumes; unacknowledged deliveries come back from the broker;
//! - the broker cancelled the consumer or closed the channel, or recovery stopped: the worker
//!   stops and `run` returns the reason, so the binary exits non-zero and its supervisor starts
//!   a fresh one.

use crate::config::Config;
use crate::health::Health;
use crate::load::{self, Outcome};
use anyhow::Context;
use bytes::Bytes;
use deadpool_postgres::Pool;
use futures_util::StreamExt;
use ingest_core::chunk::ChunkMessage;
use ingest_core::fault::Fault;
use ingest_core::ledger;
use ingest_core::metrics as m;
use ingest_core::outage::Patience;
use ingest_core::{broker, db};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions,
};
use lapin::types::FieldTable;
use std::future::IntoFuture;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// How long the connection or channel must stay lost for good before the worker gives up.
const LOST_GRACE: Duration = Duration::from_secs(5);

/// Runs the worker until `shutdown`. Err when it had to stop by itself (RabbitMQ lost for good).
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    config.check()?;
    ingest_core::metrics::recorder();
    let worker = config.worker_name();
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let pool = db::pool(&config.database_url, config.concurrency + 1)?;
    let amqp = Arc::new(
        broker::connect(
            &config.amqp_url,
            &format!("ingest-worker {worker}"),
            config.max_pause(),
            Duration::from_secs(config.connect_seconds),
        )
        .await?,
    );
    let channel = amqp.create_channel().await?;
    broker::declare(&channel, &config.queue).await?;
    channel
        .basic_qos(config.prefetch_count(), BasicQosOptions::default())
        .await?;
    let mut consumer = channel
        .basic_consume(
            config.queue.as_str().into(),
            worker.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let health = Health::new(amqp.clone(), channel.clone(), pool.clone());
    health.set_consuming(true);
    let listening = listener.local_addr()?;
    let stop_listening = CancellationToken::new();
    let served = tokio::spawn(
        axum::serve(listener, health.clone().router())
            .with_graceful_shutdown(stop_listening.clone().cancelled_owned())
            .into_future(),
    );
    tracing::info!(%worker, queue = %config.queue, concurrency = config.concurrency, %listening, "worker consuming");

    let slots = Arc::new(Semaphore::new(config.concurrency));
    let mut in_hand = JoinSet::new();
    let lost = broker::until_lost_for_good(&amqp, Some(&channel), LOST_GRACE);
    tokio::pin!(lost);
    let mut fatal = None;
    loop {
        let delivery = tokio::select! {
            _ = shutdown.cancelled() => break,
            reason = &mut lost => {
                fatal = Some(reason.to_string());
                break;
            }
            delivery = consumer.next() => delivery,
        };
        while in_hand.try_join_next().is_some() {}
        let delivery = match delivery {
            Some(Ok(delivery)) => delivery,
            Some(Err(error)) => {
                // A connection outage: lapin recovers the connection and the consumer.
                tracing::warn!(%error, "consumer error; waiting for RabbitMQ to come back");
                continue;
            }
            None => {
                fatal = Some(
                    "RabbitMQ cancelled this worker's consumer (was the queue deleted?)".into(),
                );
                break;
            }
        };
        let slot = slots.clone().acquire_owned().await?;
        let chunk = Chunk {
            pool: pool.clone(),
            worker: worker.clone(),
            lease: config.lease(),
            patience: Patience::endless(config.max_pause()),
            shutdown: shutdown.clone(),
        };
        in_hand.spawn(async move {
            chunk.handle(delivery).await;
            drop(slot);
        });
    }

    health.set_consuming(false);
    tracing::info!(%worker, in_hand = in_hand.len(), "worker draining");
    let _ = channel
        .basic_cancel(worker.as_str().into(), BasicCancelOptions::default())
        .await;
    let drained = tokio::time::timeout(config.drain(), async {
        while in_hand.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(%worker, "drain deadline passed; RabbitMQ will redeliver what was in hand");
        in_hand.abort_all();
    }
    let _ = channel.close(200, "worker stopping".into()).await;
    let _ = amqp.close(200, "worker stopping".into()).await;
    stop_listening.cancel();
    served.await.context("the health listener panicked")??;
    match fatal {
        Some(reason) => {
            tracing::error!(%worker, %reason, "worker stopped: RabbitMQ cannot come back by itself");
            Err(anyhow::anyhow!(reason))
        }
        None => {
            tracing::info!(%worker, "worker stopped");
            Ok(())
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

/// What handling one delivery needs.
struct Chunk {
    pool: Pool,
    worker: String,
    lease: Duration,
    patience: Patience,
    shutdown: CancellationToken,
}

impl Chunk {
    /// Loads one delivery, riding through PostgreSQL outages with the delivery in hand, and
    /// settles it with RabbitMQ.
    async fn handle(self, delivery: Delivery) {
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

    /// [`Chunk::handle`] for a chunk message, inside the chunk's span.
    async fn load_and_settle(self, message: ChunkMessage, delivery: Delivery) {
        let (batch_id, seq) = (message.batch_id, message.seq);
        let payload = Bytes::from(delivery.data);
        let _in_hand = InHand::count();
        let mut pauses = self.patience.pauses();
        let mut attempt = 1u32;
        // The last outage, until it is in the batch's status (not while PostgreSQL is the outage).
        let mut unnoted: Option<(u32, Fault)> = None;
        let outcome = loop {
            let started = Instant::now();
            let loaded = load::load(
                &self.pool,
                message,
                payload.clone(),
                &self.worker,
                self.lease,
            )
            .await;
            let fault = match loaded {
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
            unnoted = (!ledger::note_outage(&self.pool, batch_id, "load", attempt, &fault).await)
                .then_some((attempt, fault));
            tokio::select! {
                _ = self.shutdown.cancelled() => {
                    // Unacknowledged: RabbitMQ delivers it again once this channel closes.
                    tracing::info!(%batch_id, %seq, "stopping with a chunk in hand; RabbitMQ delivers it again");
                    return;
                }
                _ = tokio::time::sleep(pause) => {}
            }
            attempt += 1;
        };
        if let Some((attempt, fault)) = unnoted {
            ledger::note_outage(&self.pool, batch_id, "load", attempt, &fault).await;
        }
        let label = match &outcome {
            Outcome::Loaded => "loaded",
            Outcome::AlreadyLoaded => "already_loaded",
            Outcome::Closed => "closed",
            Outcome::Refused(_) => "refused",
        };
        metrics::counter!(m::CHUNK_DELIVERIES, "outcome" => label).increment(1);
        if outcome == Outcome::Loaded {
            metrics::counter!(m::ROWS_LOADED).increment(u64::from(message.rows));
        }
        match &outcome {
            Outcome::Loaded => tracing::debug!(%batch_id, %seq, "chunk loaded"),
            Outcome::AlreadyLoaded => {
                tracing::info!(%batch_id, %seq, "duplicate delivery; already loaded")
            }
            Outcome::Closed => tracing::info!(%batch_id, %seq, "batch closed; chunk dropped"),
            Outcome::Refused(reason) => {
                tracing::warn!(%batch_id, %seq, %reason, "PostgreSQL refused the chunk's rows")
            }
        }
        if let Err(error) = delivery.acker.ack(BasicAckOptions::default()).await {
            // The channel is gone: RabbitMQ redelivers the message, and the ledger makes that safe.
            tracing::warn!(%batch_id, %seq, %error, "could not acknowledge the delivery");
        }
    }
}
