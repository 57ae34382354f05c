//! Subscribe: the worker's hold on the chunk queue — a channel with its prefetch and a consumer
//! on it — and what ended it. A subscription ends when its channel or connection broke (a broker
//! restart, a network cut): the worker then opens a new one on the [`Link`], with growing pauses,
//! for as long as it takes ([`Subscriber`] keeps those pauses). It ends for good only when the
//! broker cancelled the consumer because the queue is gone (deleted by an operator): a worker
//! re-creating it would feed on a queue the coordinator may no longer use, so it stops and says
//! why.

use futures_util::StreamExt;
use ingest_core::broker::{self, Link};
use ingest_core::fault::Fault;
use ingest_core::outage::Patience;
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Consumer};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// What the worker subscribes to the chunk queue with.
pub struct Target {
    /// The chunk queue.
    pub queue: String,
    /// The consumer's tag: the worker's name.
    pub tag: String,
    /// Unacknowledged messages RabbitMQ may hand the consumer.
    pub prefetch: u16,
    /// Replicas of the queues, when this worker is the one that declares them.
    pub replicas: Option<u16>,
}

/// The worker's hold on the chunk queue across breaks: its subscription while it has one, and
/// once that broke, when to try to subscribe again (pauses doubling up to the longest pause,
/// jittered, endless; back to the shortest once subscribed).
pub struct Subscriber {
    link: Arc<Link>,
    target: Target,
    subscription: Option<Subscription>,
    max_pause: Duration,
    pauses: Box<dyn Iterator<Item = Duration> + Send + Sync>,
    next_try: Instant,
}

impl Subscriber {
    /// Subscribes for the first time (Err when it cannot: the worker does not start).
    pub async fn open(
        link: Arc<Link>,
        target: Target,
        max_pause: Duration,
    ) -> Result<Subscriber, Fault> {
        let subscription = Subscription::open(&link, &target).await?;
        Ok(Subscriber {
            link,
            target,
            subscription: Some(subscription),
            max_pause,
            pauses: pauses(max_pause),
            next_try: Instant::now(),
        })
    }

    /// The next delivery, or why there is none. Without a subscription, it waits for ever (the
    /// caller looks at [`Subscriber::resubscribe_when_due`] meanwhile).
    pub async fn next(&mut self) -> Next {
        match self.subscription.as_mut() {
            Some(subscription) => subscription.next(&self.link, &self.target.queue).await,
            None => std::future::pending().await,
        }
    }

    /// Without a subscription and past the pause: subscribes again. True when it did (the
    /// worker is consuming again).
    pub async fn resubscribe_when_due(&mut self) -> bool {
        if self.subscription.is_some() || Instant::now() < self.next_try {
            return false;
        }
        let worker = &self.target.tag;
        match Subscription::open(&self.link, &self.target).await {
            Ok(fresh) => {
                tracing::info!(%worker, "consuming again");
                self.subscription = Some(fresh);
                self.pauses = pauses(self.max_pause);
                true
            }
            Err(fault) => {
                let pause = self.pauses.next().unwrap_or(self.max_pause);
                tracing::warn!(%worker, %fault, ?pause, "cannot subscribe yet; trying again");
                self.next_try = Instant::now() + pause;
                false
            }
        }
    }

    /// The subscription broke (`reason`): closes what is left of it; the next try is due at once.
    pub async fn broke(&mut self, reason: &str) {
        let worker = &self.target.tag;
        tracing::warn!(%worker, %reason, "lost the chunk queue's consumer; subscribing again");
        if let Some(broken) = self.subscription.take() {
            if broken.is_open() {
                broken.close().await;
            }
        }
        self.next_try = Instant::now();
    }

    /// Stops the consumer, if there is one (deliveries in hand may still be acknowledged).
    pub async fn cancel(&self) {
        if let Some(subscription) = &self.subscription {
            subscription.cancel().await;
        }
    }

    /// Closes the channel, if there is one: RabbitMQ delivers what was not acknowledged again.
    pub async fn close(&self) {
        if let Some(subscription) = &self.subscription {
            subscription.close().await;
        }
    }
}

/// The pauses between tries to subscribe again, from the shortest.
fn pauses(max_pause: Duration) -> Box<dyn Iterator<Item = Duration> + Send + Sync> {
    Box::new(Patience::endless(max_pause).pauses())
}

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
    pub async fn open(link: &Link, target: &Target) -> Result<Subscription, Fault> {
        let queue = target.queue.as_str();
        broker::declare(link, queue, target.replicas).await?;
        let channel = link.channel().await?;
        channel
            .basic_qos(target.prefetch, BasicQosOptions::default())
            .await?;
        let consumer = channel
            .basic_consume(
                queue.into(),
                target.tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(Subscription {
            channel,
            consumer,
            tag: target.tag.clone(),
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
