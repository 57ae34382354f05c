//! Publish: every chunk is written to the spool, recorded `pending`, published as a persistent
//! message and marked `queued` once RabbitMQ confirmed it. Confirms are pipelined: up to
//! `IN_FLIGHT` chunks wait for theirs while the next ones are published.

use crate::app::AppState;
use crate::split::Chunk;
use anyhow::Context;
use ingest_core::chunk::ChunkMessage;
use ingest_core::ledger::{self, ChunkRecord};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel};
use lapin::{Confirmation, PublisherConfirm};
use std::collections::VecDeque;
use tokio::sync::mpsc;

/// Chunks published and not yet confirmed, at most.
const IN_FLIGHT: usize = 16;

/// A channel in confirm mode that publishes chunks to the chunk queue.
pub struct Publisher {
    channel: Channel,
    queue: String,
}

impl Publisher {
    /// Opens a channel in confirm mode.
    pub async fn open(app: &AppState) -> anyhow::Result<Publisher> {
        let channel = app
            .amqp
            .create_channel()
            .await
            .context("cannot open a RabbitMQ channel")?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .context("cannot enable publisher confirms")?;
        Ok(Publisher {
            channel,
            queue: app.config.queue.clone(),
        })
    }

    /// Publishes one chunk as a persistent message; the returned future resolves when RabbitMQ
    /// confirmed it.
    pub async fn send(
        &self,
        message: ChunkMessage,
        payload: &[u8],
    ) -> anyhow::Result<PublisherConfirm> {
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(format!("{}-{}", message.batch_id, message.seq).into())
            .with_headers(message.to_headers());
        self.channel
            .basic_publish(
                "".into(),
                self.queue.as_str().into(),
                BasicPublishOptions::default(),
                payload,
                properties,
            )
            .await
            .context("publishing a chunk to RabbitMQ")
    }

    /// Closes the channel.
    pub async fn close(self) {
        let _ = self.channel.close(200, "done".into()).await;
    }
}

/// Waits for RabbitMQ's confirm of one message.
pub async fn confirmed(confirm: PublisherConfirm) -> anyhow::Result<()> {
    match confirm.await.context("waiting for RabbitMQ's confirm")? {
        Confirmation::Ack(_) => Ok(()),
        Confirmation::Nack(_) => anyhow::bail!("RabbitMQ refused a chunk (nack)"),
        Confirmation::NotRequested => anyhow::bail!("publisher confirms are off"),
    }
}

/// Publishes every chunk `split` sends, until it hangs up. Returns how many were confirmed.
/// Each confirm is awaited on a task of its own, so a waiting confirm never holds a pooled
/// connection while this loop waits for one.
pub async fn publish_batch(
    app: AppState,
    batch_id: i64,
    mut chunks: mpsc::Receiver<Chunk>,
) -> anyhow::Result<i32> {
    let publisher = Publisher::open(&app).await?;
    let mut waiting = VecDeque::new();
    let mut confirmed_count = 0;
    while let Some(chunk) = chunks.recv().await {
        let record = ChunkRecord {
            batch_id,
            seq: chunk.seq,
            first_line: chunk.first_line as i64,
            last_line: chunk.last_line as i64,
            rows: chunk.rows,
        };
        app.spool
            .write(batch_id, chunk.seq, chunk.payload.clone())
            .await
            .context("writing a chunk to the spool")?;
        {
            let client = app.pool.get().await?;
            ledger::record_chunk(&client, &record).await?;
        }
        let message = ChunkMessage {
            batch_id,
            seq: chunk.seq,
            rows: chunk.rows,
        };
        let confirm = publisher.send(message, &chunk.payload).await?;
        let app = app.clone();
        waiting.push_back(tokio::spawn(async move {
            confirmed(confirm).await?;
            let client = app.pool.get().await?;
            ledger::mark_queued(&client, batch_id, message.seq).await?;
            anyhow::Ok(())
        }));
        while waiting.len() >= IN_FLIGHT {
            waiting.pop_front().expect("not empty").await??;
            confirmed_count += 1;
        }
    }
    while let Some(task) = waiting.pop_front() {
        task.await??;
        confirmed_count += 1;
    }
    publisher.close().await;
    Ok(confirmed_count)
}
