//! Consume: the worker's one loop. Takes deliveries from the chunk queue (manual acks, prefetch
//! bounded), loads up to `concurrency` chunks at once, and acknowledges each only after its
//! load committed. On shutdown it stops taking chunks, finishes those in hand within the drain
//! deadline, and leaves the rest to RabbitMQ (unacknowledged messages are delivered again).

use crate::config::Config;
use crate::load::{self, Outcome};
use bytes::Bytes;
use deadpool_postgres::Pool;
use futures_util::StreamExt;
use ingest_core::chunk::ChunkMessage;
use ingest_core::{broker, db};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    BasicRejectOptions,
};
use lapin::types::FieldTable;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Pause before a delivery that could not be recorded goes back to the queue.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// Runs the worker until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let worker = config.worker_name();
    let pool = db::pool(&config.database_url, config.concurrency + 1)?;
    let amqp = broker::connect(&config.amqp_url, &format!("ingest-worker {worker}")).await?;
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
    tracing::info!(%worker, queue = %config.queue, concurrency = config.concurrency, "worker consuming");

    let slots = Arc::new(Semaphore::new(config.concurrency.max(1)));
    let mut in_hand = JoinSet::new();
    loop {
        let delivery = tokio::select! {
            _ = shutdown.cancelled() => break,
            delivery = consumer.next() => delivery,
        };
        while in_hand.try_join_next().is_some() {}
        let delivery = match delivery {
            Some(Ok(delivery)) => delivery,
            Some(Err(error)) => {
                // lapin recovers the connection and the consumer by itself.
                tracing::warn!(%error, "consumer error");
                continue;
            }
            None => break,
        };
        let slot = slots.clone().acquire_owned().await?;
        let pool = pool.clone();
        let worker = worker.clone();
        let lease = config.lease_seconds;
        in_hand.spawn(async move {
            handle(&pool, delivery, &worker, lease).await;
            drop(slot);
        });
    }

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
    tracing::info!(%worker, "worker stopped");
    Ok(())
}

/// Loads one delivery and settles it with RabbitMQ.
async fn handle(pool: &Pool, delivery: Delivery, worker: &str, lease_seconds: f64) {
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
    let payload = Bytes::from(delivery.data);
    let outcome = load::load(pool, message, payload, worker, lease_seconds).await;
    let (batch_id, seq) = (message.batch_id, message.seq);
    match &outcome {
        Outcome::Loaded => tracing::debug!(batch_id, seq, "chunk loaded"),
        Outcome::AlreadyLoaded => {
            tracing::info!(batch_id, seq, "duplicate delivery; already loaded")
        }
        Outcome::Closed => tracing::info!(batch_id, seq, "batch closed; chunk dropped"),
        Outcome::Failed(reason) => tracing::warn!(batch_id, seq, %reason, "chunk failed"),
        Outcome::Retry(reason) => tracing::warn!(batch_id, seq, %reason, "chunk requeued"),
    }
    let settled = match outcome {
        Outcome::Retry(_) => {
            tokio::time::sleep(RETRY_PAUSE).await;
            delivery
                .acker
                .nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await
        }
        _ => delivery.acker.ack(BasicAckOptions::default()).await,
    };
    if let Err(error) = settled {
        // The channel is gone: RabbitMQ redelivers the message, and the ledger makes that safe.
        tracing::warn!(batch_id, seq, %error, "could not settle the delivery");
    }
}
