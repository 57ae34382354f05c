//! The RabbitMQ side: one connection per process and the queue topology both the coordinator and
//! the workers declare, so either may start first.
//!
//! The connection recovers by itself (lapin's recovery) after a broker outage of any length: it
//! reconnects with capped, jittered pauses and no limit on the tries, then reopens channels and
//! consumers. What recovery cannot mend (a channel or consumer the broker closed, recovery that
//! stopped) the processes notice and exit on, non-zero, so their supervisor starts them afresh.
//!
//! Topology, all named after the chunk queue (default `ingest.chunks`):
//! - `{queue}`: durable quorum queue, fed through the default exchange with routing key
//!   `{queue}`; messages are persistent; a message redelivered more than `DELIVERY_LIMIT` times
//!   (a worker that keeps dying on it) is dead-lettered;
//! - `{queue}.dead`: durable queue that receives what `{queue}` dead-letters (rejected without
//!   requeue, or over the delivery limit), for an operator to look at and re-drive.

use backon::ExponentialBuilder;
use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection, ConnectionProperties};
use std::time::Duration;

/// The default `AMQP_URL`: the local broker with the guest account.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The default name of the chunk queue.
pub const DEFAULT_QUEUE: &str = "ingest.chunks";

/// Deliveries of one message before RabbitMQ dead-letters it.
pub const DELIVERY_LIMIT: i64 = 20;

/// Connects to RabbitMQ, waiting at most `first_within` for the broker to answer, with automatic
/// recovery afterwards: reconnects after any outage, pausing between tries from 100 ms up to
/// `max_pause` (jittered), with no limit on the number of tries.
pub async fn connect(
    url: &str,
    name: &str,
    max_pause: Duration,
    first_within: Duration,
) -> anyhow::Result<Connection> {
    let reconnect = ExponentialBuilder::default()
        .with_min_delay(max_pause.min(Duration::from_millis(100)))
        .with_max_delay(max_pause)
        .with_jitter()
        .without_max_times();
    let properties = ConnectionProperties::default()
        .with_connection_name(name.into())
        .with_backoff(reconnect)
        .enable_auto_recover();
    match tokio::time::timeout(first_within, Connection::connect(url, properties)).await {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(error)) => anyhow::bail!("cannot connect to RabbitMQ at {}: {error}", redact(url)),
        Err(_) => anyhow::bail!(
            "cannot connect to RabbitMQ at {}: no answer within {} s",
            redact(url),
            first_within.as_secs()
        ),
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

/// Why the connection, or `channel` on it, cannot come back by itself, if it cannot: the
/// connection closed or errored instead of recovering, or the broker closed the channel (for
/// example after `consumer_timeout`) while the connection is up.
pub fn lost_for_good(connection: &Connection, channel: Option<&Channel>) -> Option<&'static str> {
    let status = connection.status();
    if status.closed() || status.errored() {
        return Some("the RabbitMQ connection closed and is not recovering");
    }
    let channel_gone = channel.is_some_and(|channel| {
        let status = channel.status();
        !(status.connected() || status.reconnecting() || status.initializing())
    });
    if status.connected() && channel_gone {
        return Some("RabbitMQ closed this process's channel");
    }
    None
}

/// Resolves once [`lost_for_good`] has held for `grace` without a break, with its reason; checks
/// every half second. A process selects on this and exits non-zero, so its supervisor starts it
/// afresh instead of leaving a process that no longer works.
pub async fn until_lost_for_good(
    connection: &Connection,
    channel: Option<&Channel>,
    grace: Duration,
) -> &'static str {
    let mut since: Option<tokio::time::Instant> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        match lost_for_good(connection, channel) {
            None => since = None,
            Some(reason) => {
                let first = *since.get_or_insert_with(tokio::time::Instant::now);
                if first.elapsed() >= grace {
                    return reason;
                }
            }
        }
    }
}
