//! Consume: the worker's one loop. Takes deliveries from the chunk queue (manual acks, prefetch
//! bounded), loads up to `concurrency` chunks at once, and acknowledges each only after its
//! load committed (or PostgreSQL's refusal was recorded). On shutdown it stops taking chunks,
//! finishes those in hand within the drain deadline, and leaves the rest to RabbitMQ
//! (unacknowledged messages are delivered again).
//!
//! Faults:
//! - PostgreSQL away: the delivery stays in hand and the load is tried again with growing
//!   pauses, for as long as it takes (the delivery limit is not spent on an outage);
//! - RabbitMQ away, or the worker's channel or connection broken: the worker subscribes again
//!   on a new connection ([`crate::subscribe`]) with growing pauses, for as long as it takes;
//!   what it had not acknowledged RabbitMQ delivers again, and the ledger makes that harmless;
//! - the chunk queue deleted under it: the worker stops and `run` returns the reason, so the
//!   binary exits non-zero with one line.

use crate::config::Config;
use crate::health::Health;
use crate::load::{self, Outcome};
use crate::subscribe::{Next, Subscription};
use anyhow::Context;
use deadpool_postgres::Pool;
use ingest_core::broker::{Link, Start};
use ingest_core::chunk::ChunkMessage;
use ingest_core::db;
use ingest_core::fault::Fault;
use ingest_core::ledger;
use ingest_core::metrics as m;
use ingest_core::outage::Patience;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicRejectOptions};
use std::future::IntoFuture;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// How often the loop looks around when no delivery comes (to subscribe again when it lost its
/// consumer).
const TICK: Duration = Duration::from_millis(500);

/// Runs the worker until `shutdown`. Err when it had to stop by itself (its queue deleted).
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    config.check()?;
    ingest_core::metrics::recorder();
    let worker = config.worker_name();
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let pool = db::pool(
        &config.database_url,
        config.concurrency + 1,
        &db::Sessions {
            application_name: format!("ingest-worker {worker}"),
            lock_timeout: Some(config.lock_timeout()),
            statement_timeout: Some(config.session_limit()),
            idle_in_transaction: Some(config.session_limit()),
        },
    )?;
    let link = Arc::new(
        Link::open(
            &config.amqp_url,
            Start::in_order(config.amqp_in_order),
            &format!("ingest-worker {worker}"),
            config.max_pause(),
            Duration::from_secs(config.connect_seconds),
        )
        .await?,
    );
    let subscribe = || {
        Subscription::open(
            &link,
            &config.queue,
            &worker,
            config.prefetch_count(),
            config.queue_replicas,
        )
    };
    let mut subscription = Some(subscribe().await?);
    let health = Health::new(pool.clone(), link.clone());
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
    let mut tick = tokio::time::interval(TICK);
    let mut pauses = Patience::endless(config.max_pause()).pauses();
    let mut next_try = tokio::time::Instant::now();
    let mut fatal = None;
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => None,
            next = async {
                match subscription.as_mut() {
                    Some(subscription) => subscription.next(&link, &config.queue).await,
                    None => std::future::pending().await,
                }
            } => Some(next),
        };
        while in_hand.try_join_next().is_some() {}
        let delivery = match next {
            None => {
                if subscription.is_none() && tokio::time::Instant::now() >= next_try {
                    match subscribe().await {
                        Ok(fresh) => {
                            tracing::info!(%worker, "consuming again");
                            subscription = Some(fresh);
                            pauses = Patience::endless(config.max_pause()).pauses();
                            health.set_consuming(true);
                        }
                        Err(fault) => {
                            let pause = pauses.next().unwrap_or(config.max_pause());
                            tracing::warn!(%worker, %fault, ?pause, "cannot subscribe yet; trying again");
                            next_try = tokio::time::Instant::now() + pause;
                        }
                    }
                }
                continue;
            }
            Some(Next::Delivery(delivery)) => *delivery,
            Some(Next::Broken(reason)) => {
                tracing::warn!(%worker, %reason, "lost the chunk queue's consumer; subscribing again");
                if let Some(broken) = subscription.take() {
                    if broken.is_open() {
                        broken.close().await;
                    }
                }
                health.set_consuming(false);
                next_try = tokio::time::Instant::now();
                continue;
            }
            Some(Next::QueueGone) => {
                fatal = Some(format!(
                    "RabbitMQ cancelled this worker's consumer: the queue {} was deleted",
                    config.queue
                ));
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
    if let Some(subscription) = &subscription {
        subscription.cancel().await;
    }
    let drained = tokio::time::timeout(config.drain(), async {
        while in_hand.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(%worker, "drain deadline passed; RabbitMQ will redeliver what was in hand");
        in_hand.abort_all();
    }
    if let Some(subscription) = &subscription {
        subscription.close().await;
    }
    link.close("worker stopping").await;
    stop_listening.cancel();
    served.await.context("the health listener panicked")??;
    match fatal {
        Some(reason) => {
            tracing::error!(%worker, %reason, "worker stopped");
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
                &delivery.data,
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
            unnoted = (!ledger::note_outage(
                &self.pool,
                batch_id,
                ingest_wire::OutageStep::Load,
                attempt,
                &fault,
            )
            .await)
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
            ledger::note_outage(
                &self.pool,
                batch_id,
                ingest_wire::OutageStep::Load,
                attempt,
                &fault,
            )
            .await;
        }
        let label = match &outcome {
            Outcome::Loaded => "loaded",
            Outcome::AlreadyLoaded => "already_loaded",
            Outcome::Closed => "closed",
            Outcome::Refused(_) => "refused",
            Outcome::Damaged(_) => "damaged",
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
            Outcome::Damaged(reason) => {
                tracing::warn!(%batch_id, %seq, %reason, "the chunk's copy was read damaged; it is handed out again")
            }
        }
        if let Err(error) = delivery.acker.ack(BasicAckOptions::default()).await {
            // The channel is gone: RabbitMQ redelivers the message, and the ledger makes that safe.
            tracing::warn!(%batch_id, %seq, %error, "could not acknowledge the delivery");
        }
    }
}
