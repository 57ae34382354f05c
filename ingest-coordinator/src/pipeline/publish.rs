//! Publish: every chunk is recorded `pending` together with its copy (one statement), then its
//! message — which chunk to load, no body — is published as a persistent message, and the chunk
//! is marked `queued` once RabbitMQ confirmed it. Confirms are pipelined: up to `IN_FLIGHT`
//! chunks wait for theirs while the next ones are published.
//!
//! Each of those steps rides through an outage of PostgreSQL or RabbitMQ for the upload's
//! patience: meanwhile no further chunk is taken from split, so the body is not read
//! (backpressure). A channel that broke is opened again; a chunk whose confirm was lost with it
//! is published again (a duplicate message is harmless: the ledger loads a chunk once, and the
//! copy is in PostgreSQL for whichever delivery comes first).

use super::split::Chunk;
use crate::state::AppState;
use ingest_core::batch::BatchId;
use ingest_core::broker::Link;
use ingest_core::chunk::{ChunkMessage, Part};
use ingest_core::fault::Fault;
use ingest_core::ledger::{self, ChunkRecord};
use ingest_core::outage::{ride_through, Patience};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel};
use lapin::{Confirmation, PublisherConfirm};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tokio_postgres::error::SqlState;

/// Chunks published and not yet confirmed, at most.
const IN_FLIGHT: usize = 16;

/// Publishes chunk messages to the chunk queue on a channel in confirm mode, opened when first
/// needed and opened again after it broke.
pub struct Publisher {
    amqp: Arc<Link>,
    /// The channel in use (a lapin channel is a cheap handle: it is cloned out to publish).
    channel: Mutex<Option<Channel>>,
    queue: String,
}

impl Publisher {
    /// A publisher on the coordinator's connection (no channel is opened yet).
    pub fn new(app: &AppState) -> Publisher {
        Publisher {
            amqp: app.amqp.clone(),
            channel: Mutex::new(None),
            queue: app.config.queue.clone(),
        }
    }

    /// The open channel, opening one in confirm mode when there is none or it broke.
    async fn channel(&self) -> Result<Channel, Fault> {
        let open = self.channel.lock().expect("not poisoned").clone();
        if let Some(channel) = open.filter(|channel| channel.status().connected()) {
            return Ok(channel);
        }
        let channel = self.amqp.channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        *self.channel.lock().expect("not poisoned") = Some(channel.clone());
        Ok(channel)
    }

    /// Publishes one chunk's message, persistent; the returned future resolves when RabbitMQ
    /// confirmed it. An outage drops the channel, so the next call opens a new one.
    pub async fn send(&self, message: ChunkMessage) -> Result<PublisherConfirm, Fault> {
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(format!("{}-{}", message.batch_id, message.seq).into())
            .with_headers(message.to_headers());
        let sent = self
            .channel()
            .await?
            .basic_publish(
                "".into(),
                self.queue.as_str().into(),
                BasicPublishOptions::default(),
                &[],
                properties,
            )
            .await;
        sent.map_err(|error| {
            *self.channel.lock().expect("not poisoned") = None;
            Fault::from(error)
        })
    }

    /// Publishes one chunk's message and waits for its confirm, riding through outages with
    /// `patience`.
    pub async fn send_confirmed(
        &self,
        patience: Patience,
        message: ChunkMessage,
    ) -> Result<(), Fault> {
        ride_through(patience, "publishing a chunk", move || async move {
            confirmed(self.send(message).await?).await
        })
        .await
    }

    /// Closes the channel.
    pub async fn close(self) {
        let channel = self.channel.lock().expect("not poisoned").take();
        if let Some(channel) = channel {
            let _ = channel.close(200, "done".into()).await;
        }
    }
}

/// Waits for RabbitMQ's confirm of one message. A nack, or a channel that broke before the
/// confirm came, is an outage: the message must be published again.
pub async fn confirmed(confirm: PublisherConfirm) -> Result<(), Fault> {
    match confirm.await? {
        Confirmation::Ack(_) => Ok(()),
        Confirmation::Nack(_) => Err(Fault::outage("RabbitMQ refused a chunk (nack)")),
        Confirmation::NotRequested => Err(Fault::outage("publisher confirms are off")),
    }
}

/// Publishes every chunk `split` sends, until it hangs up. Returns how many were confirmed, or
/// `None` when the batch ended meanwhile (cancelled, or ended by a peer while this coordinator
/// stalled): then it stops at once and hangs up on split. An outage that outlasted the upload's
/// patience ends it as well.
pub async fn publish_batch(
    app: AppState,
    batch_id: BatchId,
    mut chunks: mpsc::Receiver<Chunk>,
) -> Result<Option<u32>, Fault> {
    let patience = app.config.upload_patience();
    // The batch's staging table was made with this many parts (`submit::open_batch`).
    let parts = app.config.batch_parts;
    let publisher = Publisher::new(&app);
    let app = &app;
    let publisher_ref = &publisher;
    let mut waiting: VecDeque<(ChunkMessage, PublisherConfirm)> = VecDeque::new();
    let mut confirmed_count = 0;
    while let Some(chunk) = chunks.recv().await {
        let record = ChunkRecord {
            batch_id,
            seq: chunk.seq,
            first_line: chunk.first_line,
            last_line: chunk.last_line,
            rows: chunk.rows,
            part: Some(Part::of(chunk.seq, parts)),
        };
        let (record, copy) = (&record, &chunk.copy);
        let recorded = ride_through(patience, "recording a chunk", move || async move {
            let client = app.pool.get().await?;
            match ledger::record_chunk(&client, record, copy).await {
                Ok(()) => Ok(true),
                // The batch's copies were dropped: it ended meanwhile (a peer took this
                // coordinator for gone while it stalled, or it was cancelled).
                Err(error) if error.code() == Some(&SqlState::UNDEFINED_TABLE) => Ok(false),
                Err(error) => Err(error.into()),
            }
        })
        .await?;
        if !recorded {
            tracing::info!(%batch_id, "the batch ended while its upload came in; stopped reading");
            return Ok(None);
        }
        let message = record.message();
        let confirm = ride_through(patience, "publishing a chunk", move || async move {
            publisher_ref.send(message).await
        })
        .await?;
        waiting.push_back((message, confirm));
        while waiting.len() >= IN_FLIGHT {
            let (message, confirm) = waiting.pop_front().expect("not empty");
            settle(app, publisher_ref, patience, message, confirm).await?;
            confirmed_count += 1;
        }
    }
    while let Some((message, confirm)) = waiting.pop_front() {
        settle(app, publisher_ref, patience, message, confirm).await?;
        confirmed_count += 1;
    }
    publisher.close().await;
    Ok(Some(confirmed_count))
}

/// Waits for one chunk's confirm (publishing it again when the confirm was lost), then marks it
/// `queued`.
async fn settle(
    app: &AppState,
    publisher: &Publisher,
    patience: Patience,
    message: ChunkMessage,
    confirm: PublisherConfirm,
) -> Result<(), Fault> {
    let (batch_id, seq) = (message.batch_id, message.seq);
    if let Err(fault) = confirmed(confirm).await {
        tracing::warn!(%batch_id, %seq, %fault, "a chunk's confirm was lost; publishing it again");
        publisher.send_confirmed(patience, message).await?;
    }
    ride_through(patience, "marking a chunk queued", move || async move {
        let client = app.pool.get().await?;
        Ok(ledger::mark_queued(&client, batch_id, seq).await?)
    })
    .await
}
