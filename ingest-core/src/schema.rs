//! The database schema: migrations (applied when the coordinator starts) and the per-batch
//! staging tables that become partitions of `prices_by_batch` at commit, each with its own read
//! index (there is none on the parent: see migration V4).
//!
//! Staging table names are built from the batch id, a number this system generated; no value
//! from a file or a request is ever put into SQL text.

use crate::batch::BatchId;
use crate::chunk::Part;
use anyhow::Context;

mod embedded {
    refinery::embed_migrations!("../migrations");
}

/// Applies every migration not yet applied. Idempotent; safe on every start.
pub async fn migrate(client: &mut tokio_postgres::Client) -> anyhow::Result<()> {
    migrate_to(client, None).await
}

/// Applies the migrations not yet applied up to version `until` (all of them with `None`): an
/// upgrade test builds what an older coordinator left behind on a schema of that version.
pub async fn migrate_to(
    client: &mut tokio_postgres::Client,
    until: Option<u32>,
) -> anyhow::Result<()> {
    let target = match until {
        Some(version) => refinery::Target::Version(version.try_into().context("version")?),
        None => refinery::Target::Latest,
    };
    // Two coordinators starting together must not both run the same migration.
    client
        .execute("SELECT pg_advisory_lock(7461900001)", &[])
        .await?;
    let result = embedded::migrations::runner()
        .set_target(target)
        .run_async(client)
        .await
        .context("applying migrations");
    client
        .execute("SELECT pg_advisory_unlock(7461900001)", &[])
        .await?;
    result.map(|_| ())
}

/// The schema that holds the staging tables (each batch's, their parts, merged partitions).
pub const STAGING_SCHEMA: &str = "price_batches";

/// The qualified name of a table of the staging schema.
pub fn staged(name: &str) -> String {
    format!("{STAGING_SCHEMA}.{name}")
}

/// SQL for the qualified name of the staging table of the batch whose id is the SQL expression
/// `batch_id` (as [`staging_table`] names it), for queries over many batches.
pub fn staging_table_sql(batch_id: &str) -> String {
    format!("'{STAGING_SCHEMA}.batch_' || {batch_id}")
}

/// The qualified name of a batch's staging table (later its partition). It is partitioned into
/// parts ([`part_name`]), the tables that hold the rows.
pub fn staging_table(batch_id: BatchId) -> String {
    format!("price_batches.batch_{batch_id}")
}

/// The qualified name of the table that holds the copies of a batch's chunks (one row per chunk:
/// `seq`, `crc32`, `bytes`), until the batch is final.
pub fn copies_table(batch_id: BatchId) -> String {
    format!("chunk_copies.batch_{batch_id}")
}

/// DDL that creates the table of a batch's chunk copies. The copies are compressed already, so
/// PostgreSQL is told not to try again (`STORAGE EXTERNAL`). The table is written once, never
/// updated, and dropped with its batch: autovacuum is kept off it (and its TOAST table, where
/// the copies are), or it would scan the copies of a batch in the middle of its commit.
pub fn create_copies_sql(batch_id: BatchId) -> String {
    let table = copies_table(batch_id);
    format!(
        "CREATE TABLE IF NOT EXISTS {table} (\
           seq integer PRIMARY KEY, \
           crc32 bigint NOT NULL, \
           bytes bytea NOT NULL) \
         WITH (autovacuum_enabled = false, toast.autovacuum_enabled = false);\
         ALTER TABLE {table} ALTER COLUMN bytes SET STORAGE EXTERNAL"
    )
}

/// The name of part `part` of a batch's staging table, in the staging schema `price_batches`.
pub fn part_name(batch_id: BatchId, part: Part) -> String {
    format!("batch_{batch_id}_p{part}")
}

/// DDL that creates a batch's staging table: the columns of `prices_by_batch`, with `batch_id`
/// defaulted and checked so that COPY sends four columns and ATTACH skips its scan, split into
/// `parts` tables by the column `part`, which each part defaults to its own number. A worker
/// copies a chunk straight into the chunk's part ([`copy_sql`]), so PostgreSQL routes no row;
/// at commit each part's foreign keys are validated (and its index built) in its own session, so
/// the commit uses as many cores as there are parts.
pub fn create_staging_sql(batch_id: BatchId, parts: u16) -> String {
    let table = staging_table(batch_id);
    let mut sql = format!(
        "CREATE TABLE IF NOT EXISTS {table} (\
           batch_id bigint NOT NULL DEFAULT {batch_id} CHECK (batch_id = {batch_id}), \
           orig_code text NOT NULL, \
           dest_code text NOT NULL, \
           day date NOT NULL, \
           price integer NOT NULL, \
           part smallint NOT NULL DEFAULT 0) \
         PARTITION BY LIST (part);"
    );
    for part in (0..parts.max(1)).map(Part) {
        sql.push_str(&format!(
            "CREATE TABLE IF NOT EXISTS price_batches.{} PARTITION OF {table} \
             (part DEFAULT {part}) FOR VALUES IN ({part});",
            part_name(batch_id, part)
        ));
    }
    sql
}

/// The COPY statement a worker streams a chunk's binary payload into: straight into the chunk's
/// part, or, for a chunk of a batch staged before parts by chunk (`None`), into the staging
/// table, whose hash parts PostgreSQL routes each row to.
pub fn copy_sql(batch_id: BatchId, part: Option<Part>) -> String {
    let table = match part {
        Some(part) => format!("price_batches.{}", part_name(batch_id, part)),
        None => staging_table(batch_id),
    };
    format!("COPY {table} (orig_code, dest_code, day, price) FROM STDIN (FORMAT binary)")
}

/// The unqualified name of the read index of a table in the staging schema (a part, or a
/// merged partition): `<table>_route_day`.
pub fn index_name(table_name: &str) -> String {
    format!("{table_name}_route_day")
}

/// DDL that builds the read index of one part (`price_batches.<name>`) before its batch is
/// attached (the default: the batch becomes visible with its index), or, `concurrently`, of a
/// batch already visible without blocking its readers or writers (not in a transaction block;
/// a build that was cut off leaves an INVALID index of that name, which must be dropped first).
pub fn index_part_sql(table_name: &str, concurrently: bool) -> String {
    let how = if concurrently { "CONCURRENTLY " } else { "" };
    format!(
        "CREATE INDEX {how}IF NOT EXISTS {} ON price_batches.{table_name} \
         (orig_code, dest_code, day)",
        index_name(table_name)
    )
}

/// The batch id of a table in the staging schema named like a staging table or one of its
/// parts (`batch_42`, `batch_42_p1`), if it is one.
pub fn staging_batch(table_name: &str) -> Option<BatchId> {
    let rest = table_name.strip_prefix("batch_")?;
    let id = match rest.split_once("_p") {
        Some((id, part)) => {
            part.parse::<u16>().ok()?;
            id
        }
        None => rest,
    };
    id.parse::<i64>().ok().map(BatchId)
}

/// Which tables hold a batch's staged rows, as a condition on the `pg_class` row `t`, given an
/// SQL expression for the staging table's qualified name: its parts, or the staging table itself
/// when it has none (a batch staged before parts existed). None when the batch has no staging
/// table (or it was merged away). It reads the catalog alone, so it takes no lock and does not
/// wait behind one.
pub fn holds_rows_of(staging_table: &str) -> String {
    format!(
        "((t.oid = to_regclass({staging_table}) AND t.relkind = 'r') \
          OR t.oid IN (SELECT inhrelid FROM pg_inherits \
                       WHERE inhparent = to_regclass({staging_table})))"
    )
}

/// The names of the tables that hold the staged rows of the batch whose staging table is `$1`
/// ([`holds_rows_of`]), in order.
pub fn leaves_sql() -> String {
    format!(
        "SELECT t.relname::text AS name FROM pg_class t WHERE {} ORDER BY 1",
        holds_rows_of("$1")
    )
}

/// DDL that makes a batch visible: its staging table becomes a partition of `prices_by_batch`.
/// Each part's foreign keys are validated beforehand ([`foreign_keys_part_sql`]), so PostgreSQL
/// takes them over here without a scan.
pub fn attach_sql(batch_id: BatchId) -> String {
    format!(
        "ALTER TABLE prices_by_batch ATTACH PARTITION {} FOR VALUES IN ({batch_id})",
        staging_table(batch_id)
    )
}

/// DDL that takes a batch that is still its own partition out of `prices`: DETACH (readers wait
/// for it, catalog work only) and DROP of its staging table and its parts. In a transaction, so
/// that the rows go with the batch's state.
pub fn detach_and_drop_sql(batch_id: BatchId) -> String {
    let table = staging_table(batch_id);
    format!("ALTER TABLE prices_by_batch DETACH PARTITION {table}; DROP TABLE {table}")
}

/// Whether the batch whose staging table is `$1` is a partition of `prices_by_batch` of its own
/// (not merged into a shared one yet). Reads the catalog alone.
pub const OWN_PARTITION_SQL: &str = "SELECT EXISTS (SELECT 1 FROM pg_inherits \
     WHERE inhrelid = to_regclass($1) AND inhparent = 'prices_by_batch'::regclass)";

/// The name of the partition that merges `batches` (sorted): unique, since batch sets of
/// partitions are disjoint and no partition holds as many batches as their union. `None` for no
/// batch.
pub fn merged_name(batches: &[BatchId]) -> Option<String> {
    let (first, last) = (batches.first()?, batches.last()?);
    Some(format!("merged_{first}_{last}_{}", batches.len()))
}

/// The list bound of a partition holding `batches`: `1, 2, 3`.
fn list_bound(batches: &[BatchId]) -> String {
    batches
        .iter()
        .map(|id| id.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// DDL that makes the merged partition `name` of `batches` from the rows of the partitions
/// `sources` (qualified names): the table with a CHECK that matches its partition bound (so the
/// ATTACH takes it over without a scan), its rows, its read index.
pub fn create_merged_sql(name: &str, batches: &[BatchId], sources: &[String]) -> String {
    let (table, values) = (staged(name), list_bound(batches));
    let rows = sources
        .iter()
        .map(|source| {
            format!("SELECT batch_id, orig_code, dest_code, day, price, part FROM {source}")
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ");
    format!(
        "CREATE TABLE {table} (LIKE prices_by_batch, CHECK (batch_id IN ({values})));\
         INSERT INTO {table} (batch_id, orig_code, dest_code, day, price, part) {rows};\
         CREATE INDEX {} ON {table} (orig_code, dest_code, day);",
        index_name(name)
    )
}

/// DDL that adds a foreign key (its definition, as [`foreign_keys`] reads it) to the merged
/// partition `name`, validated as it is added.
pub fn merged_foreign_key_sql(name: &str, definition: &str) -> String {
    format!("ALTER TABLE {} ADD {definition}", staged(name))
}

/// DDL that puts the merged partition `name` of `batches` in the place of the partitions
/// `sources`: DETACH them, ATTACH it, DROP them (catalog work only).
pub fn swap_merged_sql(name: &str, batches: &[BatchId], sources: &[String]) -> String {
    let mut swap = String::new();
    for source in sources {
        swap += &format!("ALTER TABLE prices_by_batch DETACH PARTITION {source};");
    }
    swap += &format!(
        "ALTER TABLE prices_by_batch ATTACH PARTITION {} FOR VALUES IN ({});",
        staged(name),
        list_bound(batches)
    );
    for source in sources {
        swap += &format!("DROP TABLE {source};");
    }
    swap
}

/// The transaction-level advisory lock that makes one change of the partitions' layout at a
/// time across every coordinator: a merge takes it without waiting (a coordinator that does not
/// get it merges nothing that pass), a retract waits for it within its `lock_timeout`. So a
/// retract and a merge never act on the same partition at once. (Its single-key space holds the
/// migration lock too, at another key.)
pub const MERGE_LOCK: i64 = 7_461_900_002;

/// DDL that adds `prices_by_batch`'s foreign keys (as `pg_get_constraintdef` prints them) to a
/// table of the staging schema, NOT VALID: no scan, only a brief lock on `ports`. A key of that
/// name that exists already is left as it is (so the step can be repeated).
pub fn foreign_keys_part_sql(table_name: &str, definitions: &[String]) -> String {
    definitions
        .iter()
        .enumerate()
        .map(|(n, definition)| {
            format!(
                "DO $$BEGIN ALTER TABLE price_batches.{table_name} \
                 ADD CONSTRAINT {table_name}_fk{n} {definition} NOT VALID; \
                 EXCEPTION WHEN duplicate_object THEN NULL; END$$;"
            )
        })
        .collect()
}

/// DDL that validates the foreign keys of a table of the staging schema added by
/// [`foreign_keys_part_sql`]: one scan each. It holds only `SHARE UPDATE EXCLUSIVE` on the table
/// and `ROW SHARE` on `ports`, so the parts of a batch are validated at the same time, each in
/// its own session. Validating a valid key does nothing.
pub fn validate_part_sql(table_name: &str, keys: usize) -> String {
    (0..keys)
        .map(|n| {
            format!(
                "ALTER TABLE price_batches.{table_name} VALIDATE CONSTRAINT {table_name}_fk{n};"
            )
        })
        .collect()
}

/// The definitions of `prices_by_batch`'s foreign keys (as `pg_get_constraintdef` prints them),
/// in a fixed order.
pub async fn foreign_keys(
    client: &impl tokio_postgres::GenericClient,
) -> Result<Vec<String>, tokio_postgres::Error> {
    Ok(client
        .query(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint \
             WHERE conrelid = 'prices_by_batch'::regclass AND contype = 'f' ORDER BY conname",
            &[],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect())
}
