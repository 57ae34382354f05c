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
mod nodes;

pub use link::Link;
pub use nodes::{Nodes, NodesError, Start};

use crate::fault::Fault;
use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
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

/// Makes sure the chunk queue and its dead-letter queue exist (idempotent), declared with
/// `replicas` as the quorum queues' initial group size when given (RabbitMQ's default,
/// `quorum_cluster_size`, otherwise). A queue that exists with other arguments — declared by a
/// process with another setting, or by an older release — is used as it is, so that processes
/// never refuse each other's queues.
pub async fn declare(link: &Link, queue: &str, replicas: Option<u16>) -> Result<(), Fault> {
    let dead = dead_letter_queue(queue);
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    for name in [dead.as_str(), queue] {
        let arguments = if name == queue {
            chunk_queue_arguments(&dead, replicas)
        } else {
            quorum_arguments(replicas)
        };
        let channel = link.channel().await?;
        match channel.queue_declare(name.into(), durable, arguments).await {
            Ok(_) => {
                let _ = channel.close(200, "declared".into()).await;
            }
            Err(error) if is_precondition_failed(&error) => {
                // The refusal closed the channel; the queue is there, as someone declared it.
                let channel = link.channel().await?;
                depth(&channel, name).await?;
                let _ = channel.close(200, "declared".into()).await;
                tracing::info!(
                    queue = name,
                    "the queue exists with other arguments; used as it is"
                );
            }
            Err(error) => return Err(error.into()),
        }
    }
    Ok(())
}

/// The arguments of a quorum queue.
fn quorum_arguments(replicas: Option<u16>) -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString("quorum".into()),
    );
    if let Some(replicas) = replicas {
        arguments.insert(
            ShortString::from("x-quorum-initial-group-size"),
            AMQPValue::LongInt(i32::from(replicas)),
        );
    }
    arguments
}

/// The chunk queue's: quorum, dead-lettering into `dead` past the delivery limit.
fn chunk_queue_arguments(dead: &str, replicas: Option<u16>) -> FieldTable {
    let mut arguments = quorum_arguments(replicas);
    arguments.insert(
        ShortString::from("x-dead-letter-exchange"),
        AMQPValue::LongString("".into()),
    );
    arguments.insert(
        ShortString::from("x-dead-letter-routing-key"),
        AMQPValue::LongString(dead.into()),
    );
    arguments.insert(
        ShortString::from("x-delivery-limit"),
        AMQPValue::LongLongInt(DELIVERY_LIMIT),
    );
    arguments
}

/// True when RabbitMQ refused a declaration that does not match the queue's.
fn is_precondition_failed(error: &lapin::Error) -> bool {
    matches!(
        error.kind(),
        lapin::ErrorKind::ProtocolError(amqp)
            if matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED))
    )
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

/// The URL (or each of the comma-separated URLs) without its password, for messages.
pub fn redact(url: &str) -> String {
    url.split(',')
        .map(crate::db::redact)
        .collect::<Vec<_>>()
        .join(",")
}
