//! What every request handler, pipeline step and background loop of the coordinator shares: the
//! settings, the connections, the spool, and one rule — a batch that became final needs its
//! spooled chunks no more. A leaf: it knows no handler and no loop, and [`crate::app`] wires it.

use crate::config::Config;
use crate::pipeline::receiving::Receiving;
use crate::pipeline::spool::Spool;
use deadpool_postgres::Pool;
use ingest_core::batch::BatchId;
use ingest_core::fault::Fault;
use ingest_core::ledger::{self, Ending};
use std::sync::Arc;
use tokio::sync::Notify;

/// The coordinator's shared state (cheap to clone: handles only).
#[derive(Clone)]
pub struct AppState {
    /// The settings.
    pub config: Arc<Config>,
    /// PostgreSQL.
    pub pool: Pool,
    /// RabbitMQ (a connection reopened when it broke).
    pub amqp: Arc<ingest_core::broker::Link>,
    /// The durable copies of published chunks.
    pub spool: Spool,
    /// Wakes the commit loop when a batch finished receiving.
    pub commit_wakeup: Arc<Notify>,
    /// The uploads being read now.
    pub receiving: Receiving,
}

impl AppState {
    /// Ends a batch as failed or cancelled (its staged rows dropped) and drops its spool. False
    /// when the batch was already final.
    pub async fn end_batch(&self, batch_id: BatchId, ending: &Ending) -> Result<bool, Fault> {
        let mut client = self.pool.get().await?;
        let ended = ledger::end_batch(&mut client, batch_id, ending).await?;
        if ended {
            self.batch_is_final(batch_id).await;
        }
        Ok(ended)
    }

    /// A batch became final (committed, failed, cancelled): its spooled chunks go.
    pub async fn batch_is_final(&self, batch_id: BatchId) {
        self.spool.remove_batch(batch_id).await;
    }
}
