//! The database schema: migrations (applied when the coordinator starts) and the per-batch
//! staging tables that become partitions of `prices_by_batch` at commit, each with its own read
//! index (there is none on the parent: see migration V4).
//!
//! Staging table names are built from the batch id, a number this system generated; no value
//! from a file or a request is ever put into SQL text.

use crate::batch::BatchId;
use anyhow::Context;

mod embedded {
    refinery::embed_migrations!("../migrations");
}

/// Applies every migration not yet applied. Idempotent; safe on every start.
pub async fn migrate(client: &mut tokio_postgres::Client) -> anyhow::Result<()> {
    // Two coordinators starting together must not both run the same migration.
    client
        .execute("SELECT pg_advisory_lock(7461900001)", &[])
        .await?;
    let result = embedded::migrations::runner()
        .run_async(client)
        .await
        .context("applying migrations");
    client
        .execute("SELECT pg_advisory_unlock(7461900001)", &[])
        .await?;
    result.map(|_| ())
}

/// The qualified name of a batch's staging table (later its partition).
pub fn staging_table(batch_id: BatchId) -> String {
    format!("price_batches.batch_{batch_id}")
}

/// DDL that creates a batch's staging table: the columns of `prices_by_batch`, with
/// `batch_id` defaulted and checked so that COPY sends four columns and ATTACH skips its scan.
pub fn create_staging_sql(batch_id: BatchId) -> String {
    let table = staging_table(batch_id);
    format!(
        "CREATE TABLE IF NOT EXISTS {table} (\
           batch_id bigint NOT NULL DEFAULT {batch_id} CHECK (batch_id = {batch_id}), \
           orig_code text NOT NULL, \
           dest_code text NOT NULL, \
           day date NOT NULL, \
           price integer NOT NULL)"
    )
}

/// The COPY statement a worker streams a chunk's binary payload into.
pub fn copy_sql(batch_id: BatchId) -> String {
    format!(
        "COPY {} (orig_code, dest_code, day, price) FROM STDIN (FORMAT binary)",
        staging_table(batch_id)
    )
}

/// DDL that builds the read index on a staging table before it is attached (the default: the
/// batch becomes visible with its index).
pub fn index_staging_sql(batch_id: BatchId) -> String {
    format!(
        "CREATE INDEX IF NOT EXISTS batch_{batch_id}_route_day ON {} (orig_code, dest_code, day)",
        staging_table(batch_id)
    )
}

/// The name of a batch's read index (in the staging table's schema).
pub fn index_name(batch_id: BatchId) -> String {
    format!("price_batches.batch_{batch_id}_route_day")
}

/// DDL that builds the read index of a batch already visible, without blocking its readers or
/// writers (not in a transaction block). A build that was cut off leaves an INVALID index of
/// that name, which must be dropped first.
pub fn index_concurrently_sql(batch_id: BatchId) -> String {
    format!(
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS batch_{batch_id}_route_day ON {} \
         (orig_code, dest_code, day)",
        staging_table(batch_id)
    )
}

/// The batch id of a partition named like a staging table (`batch_42`), if it is one.
pub fn staging_batch(table_name: &str) -> Option<BatchId> {
    table_name
        .strip_prefix("batch_")?
        .parse::<i64>()
        .ok()
        .map(BatchId)
}

/// DDL that makes a batch visible: its staging table becomes a partition of `prices_by_batch`.
/// PostgreSQL validates both foreign keys to `ports` in bulk here.
pub fn attach_sql(batch_id: BatchId) -> String {
    format!(
        "ALTER TABLE prices_by_batch ATTACH PARTITION {} FOR VALUES IN ({batch_id})",
        staging_table(batch_id)
    )
}

/// DDL that removes everything a failed or cancelled batch staged.
pub fn drop_staging_sql(batch_id: BatchId) -> String {
    format!("DROP TABLE IF EXISTS {}", staging_table(batch_id))
}
