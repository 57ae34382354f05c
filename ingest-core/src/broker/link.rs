//! Link: this process's connection to RabbitMQ, kept up by the process itself. When it broke
//! (a broker restart, a network cut, `rabbitmqctl close_connection`), the next caller that needs a
//! channel opens a new connection — one caller at a time, each try bounded — and everyone after
//! it gets channels on the new one. Callers that hold a channel (the worker's consumer, the
//! coordinator's publisher) notice theirs broke and ask again.
//!
//! lapin's own recovery is not used: seen here, after `rabbitmqctl stop_app`/`start_app` under
//! load, a recovering connection stayed `Reconnecting` for good, so a coordinator published
//! nothing more and its upload hung, and a replayed consumer could land on a channel the broker
//! then closed. Reconnecting from the outside, with a fresh connection, has no such state to
//! get stuck in.

use crate::fault::Fault;
use lapin::{Channel, Connection};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long one connection attempt may take.
const ATTEMPT_WITHIN: Duration = Duration::from_secs(10);

/// A connection to RabbitMQ that is opened again when it broke.
pub struct Link {
    url: String,
    name: String,
    /// The connection in use.
    current: Mutex<Arc<Connection>>,
    /// Held by the caller that is opening a new connection, so that only one does.
    reconnecting: tokio::sync::Mutex<()>,
}

impl Link {
    /// Connects to RabbitMQ at `url` as `name` (shown by `rabbitmqctl list_connections`),
    /// trying again with growing pauses (up to `max_pause`) for at most `first_within`, so that
    /// a process may start before the broker does. Each later reconnection is one try, bounded.
    pub async fn open(
        url: &str,
        name: &str,
        max_pause: Duration,
        first_within: Duration,
    ) -> anyhow::Result<Link> {
        let deadline = tokio::time::Instant::now() + first_within;
        let mut pauses = crate::outage::Patience::endless(max_pause).pauses();
        let connection = loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let fault = match super::connect(url, name, left.min(ATTEMPT_WITHIN)).await {
                Ok(connection) => break connection,
                Err(fault) => fault,
            };
            let pause = pauses.next().unwrap_or(max_pause);
            if tokio::time::Instant::now() + pause >= deadline {
                anyhow::bail!("{fault} (tried for {} s)", first_within.as_secs());
            }
            tokio::time::sleep(pause).await;
        };
        Ok(Link {
            url: url.to_string(),
            name: name.to_string(),
            current: Mutex::new(Arc::new(connection)),
            reconnecting: tokio::sync::Mutex::new(()),
        })
    }

    /// True when the connection in use is open or a new one could be opened now.
    pub async fn ensure(&self) -> bool {
        self.connected().await.is_ok()
    }

    /// Opens a channel, on a new connection if the one in use broke. An outage when RabbitMQ
    /// does not answer within the bound.
    pub async fn channel(&self) -> Result<Channel, Fault> {
        let connection = self.connected().await?;
        Ok(connection.create_channel().await?)
    }

    /// The connection in use if it is open, else a new one (opened by this caller, or by the one
    /// that was already at it).
    async fn connected(&self) -> Result<Arc<Connection>, Fault> {
        let connection = self.connection();
        if connection.status().connected() {
            return Ok(connection);
        }
        let _turn = self.reconnecting.lock().await;
        let connection = self.connection();
        if connection.status().connected() {
            return Ok(connection);
        }
        let fresh = Arc::new(super::connect(&self.url, &self.name, ATTEMPT_WITHIN).await?);
        tracing::info!(name = %self.name, "connected to RabbitMQ again");
        *self.current.lock().expect("not poisoned") = fresh.clone();
        Ok(fresh)
    }

    /// Closes the connection in use (on shutdown).
    pub async fn close(&self, reason: &str) {
        let connection = self.connection();
        if connection.status().connected() {
            let _ = connection.close(200, reason.into()).await;
        }
    }

    fn connection(&self) -> Arc<Connection> {
        self.current.lock().expect("not poisoned").clone()
    }
}
