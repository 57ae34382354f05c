//! Link: this process's connection to RabbitMQ, kept up by the process itself. When it broke
//! (a broker restart, a node of the cluster gone, a network cut, `rabbitmqctl
//! close_connection`), the next caller that needs a channel opens a new connection — one caller
//! at a time, each try bounded, to the next of the listed [`Nodes`] that answers — and everyone
//! after it gets channels on the new one. Callers that hold a channel (the worker's consumer, the
//! coordinator's publisher) notice theirs broke and ask again.
//!
//! lapin's own recovery is not used: seen here, after `rabbitmqctl stop_app`/`start_app` under
//! load, a recovering connection stayed `Reconnecting` for good, so a coordinator published
//! nothing more and its upload hung, and a replayed consumer could land on a channel the broker
//! then closed. Reconnecting from the outside, with a fresh connection, has no such state to
//! get stuck in.

use super::{Nodes, Start};
use crate::fault::Fault;
use lapin::{Channel, Connection};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long one connection attempt may take.
const ATTEMPT_WITHIN: Duration = Duration::from_secs(10);

/// A connection to RabbitMQ that is opened again when it broke.
pub struct Link {
    nodes: Nodes,
    name: String,
    /// The connection in use, and the node it is on.
    current: Mutex<(Arc<Connection>, usize)>,
    /// Held by the caller that is opening a new connection, so that only one does.
    reconnecting: tokio::sync::Mutex<()>,
}

impl Link {
    /// Connects to one of the RabbitMQ nodes `url` lists as `name` (shown by `rabbitmqctl
    /// list_connections`), starting where `start` says and going through the others in turn, with growing pauses (up to `max_pause`) after each round, for at most
    /// `first_within`, so that a process may start before the broker does. Each later
    /// reconnection is one round, each try bounded.
    pub async fn open(
        url: &str,
        start: Start,
        name: &str,
        max_pause: Duration,
        first_within: Duration,
    ) -> anyhow::Result<Link> {
        let nodes = Nodes::parse(url)?;
        let deadline = tokio::time::Instant::now() + first_within;
        let mut pauses = crate::outage::Patience::endless(max_pause).pauses();
        let mut node = nodes.first(start);
        let mut tried = 0;
        let connection = loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let fault = match super::connect(nodes.url(node), name, left.min(ATTEMPT_WITHIN)).await
            {
                Ok(connection) => break connection,
                Err(fault) => fault,
            };
            node = (node + 1) % nodes.len();
            tried += 1;
            if tried % nodes.len() != 0 {
                continue;
            }
            let pause = pauses.next().unwrap_or(max_pause);
            if tokio::time::Instant::now() + pause >= deadline {
                anyhow::bail!("{fault} (tried for {} s)", first_within.as_secs());
            }
            tokio::time::sleep(pause).await;
        };
        tracing::info!(%name, node = nodes.label(node), "connected to RabbitMQ");
        mark(&nodes, node);
        Ok(Link {
            nodes,
            name: name.to_string(),
            current: Mutex::new((Arc::new(connection), node)),
            reconnecting: tokio::sync::Mutex::new(()),
        })
    }

    /// The node the connection in use is on, as `host:port`.
    pub fn node(&self) -> String {
        let node = self.current.lock().expect("not poisoned").1;
        self.nodes.label(node).to_string()
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
        let broken = self.current.lock().expect("not poisoned").1;
        let mut last = None;
        for node in self.nodes.after(broken) {
            match super::connect(self.nodes.url(node), &self.name, ATTEMPT_WITHIN).await {
                Ok(connection) => {
                    let fresh = Arc::new(connection);
                    tracing::info!(name = %self.name, node = self.nodes.label(node), "connected to RabbitMQ again");
                    mark(&self.nodes, node);
                    *self.current.lock().expect("not poisoned") = (fresh.clone(), node);
                    return Ok(fresh);
                }
                Err(fault) => last = Some(fault),
            }
        }
        Err(last.expect("at least one node"))
    }

    /// Closes the connection in use (on shutdown).
    pub async fn close(&self, reason: &str) {
        let connection = self.connection();
        if connection.status().connected() {
            let _ = connection.close(200, reason.into()).await;
        }
    }

    fn connection(&self) -> Arc<Connection> {
        self.current.lock().expect("not poisoned").0.clone()
    }
}

/// Says in the metrics which of the listed nodes this process is connected to.
fn mark(nodes: &Nodes, connected: usize) {
    for (index, label) in nodes.labels().iter().enumerate() {
        let value = if index == connected { 1.0 } else { 0.0 };
        metrics::gauge!(crate::metrics::RABBITMQ_NODE, "node" => label.clone()).set(value);
    }
}
