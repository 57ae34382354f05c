//! Subscribe: the worker's hold on the chunk queue — a channel with its prefetch and a consumer
//! on it — and what ended it. A subscription ends when its channel or connection broke (a broker
//! restart, a network cut): the worker then opens a new one on the [`Link`], with growing pauses,
//! for as long as it takes. It ends for good only when the broker cancelled the consumer because
//! the queue is gone (deleted by an operator): a worker re-creating it would feed on a queue the
//! coordinator may no longer use, so it stops and says why.

use futures_util::StreamExt;
use ingest_core::broker::{self, Link};
use ingest_core::fault::Fault;
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Consumer};

/// A consumer on the chunk queue.
pub struct Subscription {
    channel: Channel,
    consumer: Consumer,
    tag: String,
}

/// What the consumer yielded.
pub enum Next {
    /// A chunk message to load.
    Delivery(Box<Delivery>),
    /// The channel or connection broke: subscribe again.
    Broken(String),
    /// The broker cancelled the consumer and the queue is gone.
    QueueGone,
}

impl Subscription {
    /// Declares the queues (so that a worker may start before the coordinator), sets the prefetch
    /// and starts consuming as `tag`.
    pub async fn open(
        link: &Link,
        queue: &str,
        tag: &str,
        prefetch: u16,
        replicas: Option<u16>,
    ) -> Result<Subscription, Fault> {
        broker::declare(link, queue, replicas).await?;
        let channel = link.channel().await?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        let consumer = channel
            .basic_consume(
                queue.into(),
                tag.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(Subscription {
            channel,
            consumer,
            tag: tag.to_string(),
        })
    }

    /// The next delivery, or why there is none.
    pub async fn next(&mut self, link: &Link, queue: &str) -> Next {
        match self.consumer.next().await {
            Some(Ok(delivery)) => Next::Delivery(Box::new(delivery)),
            Some(Err(error)) => Next::Broken(error.to_string()),
            None => {
                if queue_exists(link, queue).await == Some(false) {
                    Next::QueueGone
                } else {
                    Next::Broken("the consumer ended".into())
                }
            }
        }
    }

    /// True while the channel is open.
    pub fn is_open(&self) -> bool {
        self.channel.status().connected()
    }

    /// Stops the consumer (deliveries in hand may still be acknowledged) — on shutdown.
    pub async fn cancel(&self) {
        let _ = self
            .channel
            .basic_cancel(self.tag.as_str().into(), BasicCancelOptions::default())
            .await;
    }

    /// Closes the channel: RabbitMQ delivers what was not acknowledged again.
    pub async fn close(&self) {
        let _ = self.channel.close(200, "worker stopping".into()).await;
    }
}

/// Whether `queue` exists (a passive declare on a channel of its own); None when RabbitMQ does
/// not answer.
async fn queue_exists(link: &Link, queue: &str) -> Option<bool> {
    let channel = link.channel().await.ok()?;
    let declared = broker::depth(&channel, queue).await;
    let _ = channel.close(200, "looked".into()).await;
    match declared {
        Ok(_) => Some(true),
        Err(error) => match error.kind() {
            lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 404 => Some(false),
            _ => None,
        },
    }
}
