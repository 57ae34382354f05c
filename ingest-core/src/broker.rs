//! The RabbitMQ side: one connection per process and the queue topology both the coordinator and
//! the workers declare, so either may start first.
//!
//! The connection is a [`Link`]: after a broker outage of any length the process opens a new one
//! itself, and its users open new channels (and the worker a new consumer) on it.
//!
//! Topology, all named after the chunk queue (default `ingest.chunks`):
//! - `{queue}`: durable quorum queue, fed through the default exchange with routing key
//!   `{queue}`; messages are persistent; a message redelivered more than `DELIVERY_LIMIT` times
//!   (a worker that keeps dying on it) is dead-lettered;
//! - `{queue}.dead`: durable queue that receives what `{queue}` dead-letters (rejected without
//!   requeue, or over the delivery limit), for an operator to look at and re-drive.

mod link;

pub use link::Link;

use crate::fault::Fault;
use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ConnectionProperties};
use std::time::Duration;

/// The default `AMQP_URL`: the local broker with the guest account.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The default name of the chunk queue.
pub const DEFAULT_QUEUE: &str = "ingest.chunks";

/// Deliveries of one message before RabbitMQ dead-letters it.
pub const DELIVERY_LIMIT: i64 = 20;

/// The AMQP heartbeat asked for when `AMQP_URL` names none (`?heartbeat=N`), in seconds. Both
/// ends send a frame at least every half of it and close a connection silent for two of them:
/// RabbitMQ closes the connection of a worker that froze or whose host vanished (and delivers
/// what it held again) within about 40 s, and this process notices a broker that vanished as
/// soon. RabbitMQ's own default is 60 s; the lower of the two is used.
pub const HEARTBEAT_SECONDS: u16 = 20;

/// One connection attempt as `name`, bounded by `within`, without lapin's automatic recovery
/// ([`Link`] reconnects instead).
pub async fn connect(url: &str, name: &str, within: Duration) -> Result<Connection, Fault> {
    let mut uri: AMQPUri = url.parse().map_err(|error| {
        Fault::outage(format!("AMQP_URL {} does not read: {error}", redact(url)))
    })?;
    uri.query.heartbeat.get_or_insert(HEARTBEAT_SECONDS);
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    match tokio::time::timeout(within, Connection::connect_uri(uri, properties)).await {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(error)) => Err(Fault::outage(format!(
            "cannot connect to RabbitMQ at {}: {error}",
            redact(url)
        ))),
        Err(_) => Err(Fault::outage(format!(
            "cannot connect to RabbitMQ at {}: no answer within {} s",
            redact(url),
            within.as_secs()
        ))),
    }
}

/// Messages ready for a consumer in `queue`, and its consumers (a passive declare).
pub async fn depth(channel: &Channel, queue: &str) -> Result<(u32, u32), lapin::Error> {
    let queue = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok((queue.message_count(), queue.consumer_count()))
}

/// The name of the queue that holds dead-lettered chunks.
pub fn dead_letter_queue(queue: &str) -> String {
    format!("{queue}.dead")
}

/// Declares the chunk queue and its dead-letter queue (idempotent).
pub async fn declare(channel: &Channel, queue: &str) -> anyhow::Result<()> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let dead = dead_letter_queue(queue);
    let mut quorum = FieldTable::default();
    quorum.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString("quorum".into()),
    );
    channel
        .queue_declare(dead.as_str().into(), durable, quorum.clone())
        .await?;
    let mut arguments = quorum;
    arguments.insert(
        ShortString::from("x-dead-letter-exchange"),
        AMQPValue::LongString("".into()),
    );
    arguments.insert(
        ShortString::from("x-dead-letter-routing-key"),
        AMQPValue::LongString(dead.as_str().into()),
    );
    arguments.insert(
        ShortString::from("x-delivery-limit"),
        AMQPValue::LongLongInt(DELIVERY_LIMIT),
    );
    channel
        .queue_declare(queue.into(), durable, arguments)
        .await?;
    Ok(())
}

/// Deletes the chunk queue and its dead-letter queue (tests clean up with this).
pub async fn delete(channel: &Channel, queue: &str) -> anyhow::Result<()> {
    for name in [queue.to_string(), dead_letter_queue(queue)] {
        channel
            .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
            .await?;
    }
    Ok(())
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    crate::db::redact(url)
}
