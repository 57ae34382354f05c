//! Consume: the worker's life, in the shape of its job — [`run`] starts it, consumes until the
//! shutdown signal its caller passed in, and drains. It takes deliveries from the chunk queue
//! (manual acks, prefetch bounded), loads up to `concurrency` chunks at once (each delivery by a
//! [`ChunkLoader`], which gets the shutdown signal too), and each is acknowledged only after its
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
use crate::delivery::ChunkLoader;
use crate::health::{Health, Serving};
use crate::subscribe::{Next, Subscriber, Target};
use anyhow::Context;
use deadpool_postgres::Pool;
use ingest_core::broker::{Link, Start};
use ingest_core::db;
use ingest_core::outage::Patience;
use lapin::message::Delivery;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How often the loop looks around when no delivery comes (to subscribe again when it lost its
/// consumer).
const TICK: Duration = Duration::from_millis(500);

/// Runs the worker until `shutdown` (the caller's signal: SIGTERM or SIGINT for the binary), then
/// drains. Err when it had to stop by itself (its queue deleted).
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut worker = Worker::start(config, shutdown).await?;
    let ended = worker.consume().await?;
    worker.drain(ended).await
}

/// Why the worker stopped consuming.
enum Ended {
    /// The shutdown signal came.
    Shutdown,
    /// RabbitMQ cancelled the consumer: the chunk queue was deleted.
    QueueGone,
}

/// A running worker: its connections, its hold on the chunk queue, its listener and the chunks
/// in its hands.
struct Worker {
    config: Config,
    /// The worker's name, in the ledger and logs.
    name: String,
    pool: Pool,
    link: Arc<Link>,
    subscriber: Subscriber,
    health: Health,
    serving: Serving,
    /// One permit per chunk loaded at once.
    slots: Arc<Semaphore>,
    in_hand: JoinSet<()>,
    shutdown: CancellationToken,
}

impl Worker {
    /// Checks the configuration, listens, connects to PostgreSQL and RabbitMQ and subscribes to
    /// the chunk queue: the worker is consuming.
    async fn start(config: Config, shutdown: CancellationToken) -> anyhow::Result<Worker> {
        config.check()?;
        ingest_core::metrics::recorder();
        let worker = config.worker_name();
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let pool = sessions(&config, &worker)?;
        let link = Arc::new(
            Link::open(
                &config.amqp_url,
                Start::in_order(config.amqp_in_order),
                &format!("ingest-worker {worker}"),
                config.max_pause,
                config.connect,
            )
            .await?,
        );
        let target = Target {
            queue: config.queue.clone(),
            tag: worker.clone(),
            prefetch: config.prefetch_count(),
            replicas: config.queue_replicas,
        };
        let subscriber = Subscriber::open(link.clone(), target, config.max_pause).await?;
        let health = Health::new(pool.clone(), link.clone());
        health.set_consuming(true);
        let listening = listener.local_addr()?;
        let serving = health.clone().serve(listener);
        tracing::info!(%worker, queue = %config.queue, concurrency = config.concurrency, %listening, "worker consuming");
        Ok(Worker {
            slots: Arc::new(Semaphore::new(config.concurrency)),
            in_hand: JoinSet::new(),
            config,
            name: worker,
            pool,
            link,
            subscriber,
            health,
            serving,
            shutdown,
        })
    }

    /// Takes deliveries and hands each to a [`ChunkLoader`] once a slot is free, subscribing
    /// again whenever the subscription broke, until the shutdown signal or the queue's end.
    async fn consume(&mut self) -> anyhow::Result<Ended> {
        let mut tick = tokio::time::interval(TICK);
        loop {
            let next = tokio::select! {
                _ = self.shutdown.cancelled() => return Ok(Ended::Shutdown),
                _ = tick.tick() => None,
                next = self.subscriber.next() => Some(next),
            };
            while self.in_hand.try_join_next().is_some() {}
            match next {
                None => {
                    if self.subscriber.resubscribe_when_due().await {
                        self.health.set_consuming(true);
                    }
                }
                Some(Next::Delivery(delivery)) => self.hand_out(*delivery).await?,
                Some(Next::Broken(reason)) => {
                    self.subscriber.broke(&reason).await;
                    self.health.set_consuming(false);
                }
                Some(Next::QueueGone) => return Ok(Ended::QueueGone),
            }
        }
    }

    /// Waits for a free slot, then loads `delivery` in a task of its own.
    async fn hand_out(&mut self, delivery: Delivery) -> anyhow::Result<()> {
        let slot = self.slots.clone().acquire_owned().await?;
        let loader = ChunkLoader {
            pool: self.pool.clone(),
            worker: self.name.clone(),
            lease: self.config.lease,
            patience: Patience::endless(self.config.max_pause),
            shutdown: self.shutdown.clone(),
        };
        self.in_hand.spawn(async move {
            loader.run(delivery).await;
            drop(slot);
        });
        Ok(())
    }

    /// Stops taking chunks, finishes those in hand within the drain deadline (RabbitMQ delivers
    /// the others again), closes the connections and the listener.
    async fn drain(mut self, ended: Ended) -> anyhow::Result<()> {
        let worker = &self.name;
        self.health.set_consuming(false);
        tracing::info!(%worker, in_hand = self.in_hand.len(), "worker draining");
        self.subscriber.cancel().await;
        let in_hand = &mut self.in_hand;
        let drained = tokio::time::timeout(self.config.drain, async {
            while in_hand.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(%worker, "drain deadline passed; RabbitMQ will redeliver what was in hand");
            self.in_hand.abort_all();
        }
        self.subscriber.close().await;
        self.link.close("worker stopping").await;
        self.serving.stop().await?;
        match ended {
            Ended::QueueGone => {
                let reason = format!(
                    "RabbitMQ cancelled this worker's consumer: the queue {} was deleted",
                    self.config.queue
                );
                tracing::error!(%worker, %reason, "worker stopped");
                Err(anyhow::anyhow!(reason))
            }
            Ended::Shutdown => {
                tracing::info!(%worker, "worker stopped");
                Ok(())
            }
        }
    }
}

/// The worker's PostgreSQL sessions: one per chunk loaded at once and one for the probes, each
/// bounded so that a frozen worker holds no chunk for long.
fn sessions(config: &Config, worker: &str) -> anyhow::Result<Pool> {
    db::pool(
        &config.database_url,
        config.concurrency + 1,
        &db::Sessions {
            application_name: format!("ingest-worker {worker}"),
            lock_timeout: Some(config.lock_timeout()),
            statement_timeout: Some(config.session_limit()),
            idle_in_transaction: Some(config.session_limit()),
        },
    )
}
