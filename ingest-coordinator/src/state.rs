//! What every request handler, pipeline step and background loop of the coordinator shares: the
//! settings, the connections, this coordinator's presence in the fleet, and one rule — a batch
//! that became final needs its tables no more (what a lock or a crash leaves is dropped by the
//! redrive's sweep). A leaf: it knows no handler and no loop, and [`crate::app`] wires it.

use crate::config::Config;
use crate::pipeline::receiving::Receiving;
use crate::presence::Presence;
use deadpool_postgres::Pool;
use ingest_core::batch::BatchId;
use ingest_core::fault::Fault;
use ingest_core::ledger::{self, Ending};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// How long dropping an ended batch's tables waits for a lock before leaving them to the sweep.
const DROP_LOCK_WAIT: Duration = Duration::from_secs(2);

/// The coordinator's shared state (cheap to clone: handles only).
#[derive(Clone)]
pub struct AppState {
    /// The settings.
    pub config: Arc<Config>,
    /// PostgreSQL.
    pub pool: Pool,
    /// RabbitMQ (a connection reopened when it broke).
    pub amqp: Arc<ingest_core::broker::Link>,
    /// Who this coordinator is to its peers.
    pub presence: Presence,
    /// Wakes the commit loop when a batch finished receiving.
    pub commit_wakeup: Arc<Notify>,
    /// The uploads being read now.
    pub receiving: Receiving,
}

impl AppState {
    /// Ends a batch as failed or cancelled, its staged rows and chunk copies dropped with it. False
    /// when the batch was already final.
    pub async fn end_batch(&self, batch_id: BatchId, ending: &Ending) -> Result<bool, Fault> {
        let mut client = self.pool.get().await?;
        Ok(ledger::end_batch(&mut client, batch_id, ending).await?)
    }

    /// A batch became final outside [`AppState::end_batch`]: its tables go — the copies of its
    /// chunks, and, unless it was committed, its staging table. A failure is logged; the sweep
    /// drops them later.
    pub async fn drop_tables(&self, batch_id: BatchId, committed: bool) {
        let dropped = match self.pool.get().await {
            Ok(mut client) => {
                ledger::drop_batch_tables(&mut client, batch_id, committed, DROP_LOCK_WAIT)
                    .await
                    .map_err(Fault::from)
            }
            Err(error) => Err(Fault::from(error)),
        };
        if let Err(fault) = dropped {
            tracing::info!(%batch_id, %fault, "the batch's tables are left for the sweep");
        }
    }
}
