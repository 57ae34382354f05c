//! Merge: after commit, committed batches are folded into fewer, larger partitions, so that reads
//! which do not filter on the batch stay fast as batches pile up (PostgreSQL plans over every
//! partition: measured ~1 ms with one table, ~16 ms with 100 partitions, ~150 ms with 1,000).
//!
//! When `prices_by_batch` has more than `partitions_max` partitions, the smallest are merged
//! into one, down to half the bound (so merges come in bursts, not after every commit). One
//! merge is one transaction, so a reader sees each batch whole in the old partitions or whole in
//! the new one, never both and never part. Its locks, in order:
//! 1. `SHARE` on `prices_by_batch` (and so on every partition): writers — a commit's ATTACH, a
//!    row written straight into `prices` — wait; **readers go on**. Meanwhile the new table is
//!    filled from the old partitions, gets the read index and both foreign keys (validated here,
//!    holding `SHARE ROW EXCLUSIVE` on `ports`: port edits wait) and a CHECK that matches its
//!    partition bound;
//! 2. `ACCESS EXCLUSIVE` on `prices_by_batch`: **readers wait**, for catalog changes only —
//!    DETACH the old partitions, ATTACH the new one (its CHECK, index and foreign keys are taken
//!    over as they are: no scan, no validation), DROP the old ones — then COMMIT.
//!
//! Every lock is asked for with `lock_timeout` (`INGEST_MERGE_LOCK_MS`): a long reader or a
//! commit in progress makes the merge give up and try later, rather than queue readers behind
//! it. A merge that fails leaves nothing (the transaction rolls back).
//!
//! One merge at a time across every coordinator: each merge first takes a transaction-level
//! advisory lock ([`schema::MERGE_LOCK`]), without waiting; a coordinator that does not get it
//! merges nothing this time. A retract ([`crate::pipeline::retract`]) waits for the same lock,
//! so a merge never copies a batch that a retract is taking out, nor the other way round.
//! A merging coordinator that freezes holds its transaction open only until PostgreSQL ends its
//! idle session (`idle_in_transaction_session_timeout`, the coordinator lease).

use ingest_core::batch::BatchId;
use ingest_core::fault::Fault;
use ingest_core::schema;
use std::time::Duration;
use tokio_postgres::{Client, GenericClient, Transaction};

/// One partition of `prices_by_batch`: a batch's table (partitioned into parts), a merged one,
/// or batch 0's (rows written straight into `prices`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// Its qualified, quoted name, from the catalog.
    pub table: String,
    /// The batch ids its bound lists.
    pub batches: Vec<BatchId>,
    /// Its size on disk with its indexes (all its parts'), in bytes.
    pub bytes: i64,
    /// The tables that hold its rows: its parts, or itself when it has none.
    pub tables: usize,
}

/// What one merge did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merged {
    /// The new partition's name.
    pub table: String,
    /// How many partitions it replaced.
    pub partitions: usize,
    /// The batches it holds.
    pub batches: usize,
    /// The rows it holds.
    pub rows: u64,
}

/// The partitions of `prices_by_batch`, smallest first.
pub async fn partitions(client: &impl GenericClient) -> Result<Vec<Partition>, Fault> {
    let rows = client
        .query(
            "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) AS name, \
                    pg_get_expr(c.relpartbound, c.oid) AS bound, \
                    pg_total_relation_size(c.oid) \
                    + coalesce((SELECT sum(pg_total_relation_size(p.inhrelid)) \
                                FROM pg_inherits p WHERE p.inhparent = c.oid), 0)::bigint AS bytes, \
                    greatest(1, (SELECT count(*) FROM pg_inherits p WHERE p.inhparent = c.oid)) \
                      AS tables \
             FROM pg_inherits i \
             JOIN pg_class c ON c.oid = i.inhrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE i.inhparent = 'prices_by_batch'::regclass \
             ORDER BY 3, 1",
            &[],
        )
        .await?;
    rows.iter()
        .map(|row| {
            let bound: String = row.get("bound");
            Ok(Partition {
                table: row.get("name"),
                batches: bound_batches(&bound)
                    .ok_or_else(|| Fault::outage(format!("unexpected partition bound {bound}")))?,
                bytes: row.get("bytes"),
                tables: usize::try_from(row.get::<_, i64>("tables")).unwrap_or(1),
            })
        })
        .collect()
}

/// The batch ids of a list bound as PostgreSQL prints it: `FOR VALUES IN ('1', '2')`.
fn bound_batches(bound: &str) -> Option<Vec<BatchId>> {
    let inside = bound.strip_prefix("FOR VALUES IN (")?.strip_suffix(')')?;
    inside
        .split(',')
        .map(|value| value.trim().trim_matches('\'').parse().ok().map(BatchId))
        .collect()
}

/// Tables (parts or plain partitions) one merge reads, detaches and drops at most. Each brings
/// about four entries into PostgreSQL's lock table in the merge's one transaction (the table, its
/// index, its TOAST table and TOAST index), and that table holds `max_locks_per_transaction`
/// (64) × `max_connections` (100) entries by default, for all sessions together: a merge of 300
/// two-part batches at once ran out of it (`out of shared memory`, SQLSTATE 53200). Past this
/// many, the rest waits for the next merge, which comes right after.
pub const MERGE_TABLES_MAX: usize = 128;

/// The partitions to merge now, given the bound: none while there are at most `max`; else the
/// smallest, as many as bring the count down to half the bound (at least two), or as many as
/// hold [`MERGE_TABLES_MAX`] tables. Partitions of `max_bytes` or more are never merged again:
/// copying big batches to save a few plan entries costs more than it gains, so past that size
/// a partition counts but stays as it is.
pub fn to_merge(all: Vec<Partition>, max: usize, max_bytes: i64) -> Vec<Partition> {
    let count = all.len();
    if count <= max {
        return Vec::new();
    }
    let mut small: Vec<Partition> = all.into_iter().filter(|p| p.bytes < max_bytes).collect();
    small.sort_by(|a, b| a.bytes.cmp(&b.bytes).then_with(|| a.table.cmp(&b.table)));
    let take = (count - max / 2 + 1).max(2);
    let mut tables = 0;
    let fits = small
        .iter()
        .take(take)
        .take_while(|part| {
            tables += part.tables;
            tables <= MERGE_TABLES_MAX
        })
        .count();
    // Two partitions at least, even when they hold more tables than the cap.
    small.truncate(fits.max(2));
    if small.len() < 2 {
        return Vec::new();
    }
    small
}

/// What one merge pass did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pass {
    /// Nothing to merge: within the bound, or only partitions too big to merge.
    Nothing,
    /// Merged these.
    Merged(Merged),
    /// Another coordinator is merging now.
    Busy,
}

/// One merge, if the partitions are over the bound `max` and no other coordinator is merging:
/// the smallest (under `max_bytes`) merged into one. Also returns how many partitions there were
/// before.
pub async fn pass(
    client: &mut Client,
    max: usize,
    max_bytes: i64,
    lock_timeout: Duration,
) -> Result<(usize, Pass), Fault> {
    let all = partitions(&*client).await?;
    let count = all.len();
    let parts = to_merge(all, max, max_bytes);
    if parts.is_empty() {
        return Ok((count, Pass::Nothing));
    }
    Ok((
        count,
        match merge(client, &parts, lock_timeout).await? {
            Some(merged) => Pass::Merged(merged),
            None => Pass::Busy,
        },
    ))
}

/// Merges `parts` into one new partition in one transaction (see the module's doc for its locks);
/// `None` when another coordinator is merging. An outage when a lock was not granted within
/// `lock_timeout` or PostgreSQL is away: nothing changed, try again later.
pub async fn merge(
    client: &mut Client,
    parts: &[Partition],
    lock_timeout: Duration,
) -> Result<Option<Merged>, Fault> {
    let mut batches: Vec<BatchId> = parts.iter().flat_map(|p| p.batches.clone()).collect();
    batches.sort();
    let name = schema::merged_name(&batches).ok_or_else(|| Fault::outage("nothing to merge"))?;
    let sources: Vec<String> = parts.iter().map(|part| part.table.clone()).collect();
    let tx = client.transaction().await?;
    if !lock_for_merge(&tx, parts, lock_timeout).await? {
        return Ok(None);
    }
    let rows = fill(&tx, &name, &batches, &sources).await?;
    // 2. Readers wait, for catalog changes only.
    tx.batch_execute("LOCK TABLE prices_by_batch IN ACCESS EXCLUSIVE MODE")
        .await?;
    tx.batch_execute(&schema::swap_merged_sql(&name, &batches, &sources))
        .await?;
    tx.commit().await?;
    Ok(Some(Merged {
        table: schema::staged(&name),
        partitions: parts.len(),
        batches: batches.len(),
        rows,
    }))
}

/// The merge's first locks: the layout's advisory lock, without waiting (false: another
/// coordinator is merging), then — 1. — `SHARE` on `prices_by_batch`: writers wait, readers go
/// on. Under it, `parts` must still be what they were (another coordinator may have merged them
/// meanwhile: an outage, tried again later).
async fn lock_for_merge(
    tx: &Transaction<'_>,
    parts: &[Partition],
    lock_timeout: Duration,
) -> Result<bool, Fault> {
    let alone: bool = tx
        .query_one(
            "SELECT pg_try_advisory_xact_lock($1)",
            &[&schema::MERGE_LOCK],
        )
        .await?
        .get(0);
    if !alone {
        return Ok(false);
    }
    tx.batch_execute(&format!(
        "SET LOCAL lock_timeout = '{}ms'",
        lock_timeout.as_millis()
    ))
    .await?;
    tx.batch_execute("LOCK TABLE prices_by_batch IN SHARE MODE")
        .await?;
    let now = partitions(tx).await?;
    let unchanged = parts.iter().all(|part| {
        now.iter()
            .any(|p| p.table == part.table && p.batches == part.batches)
    });
    if !unchanged {
        return Err(Fault::outage("the partitions changed meanwhile"));
    }
    Ok(true)
}

/// The merged partition `name`, filled from `sources`, indexed, with both foreign keys
/// (validated here); its rows.
async fn fill(
    tx: &Transaction<'_>,
    name: &str,
    batches: &[BatchId],
    sources: &[String],
) -> Result<u64, Fault> {
    tx.batch_execute(&schema::create_merged_sql(name, batches, sources))
        .await?;
    for definition in schema::foreign_keys(tx).await? {
        tx.batch_execute(&schema::merged_foreign_key_sql(name, &definition))
            .await?;
    }
    let rows: i64 = tx
        .query_one(
            &format!("SELECT count(*) FROM {}", schema::staged(name)),
            &[],
        )
        .await?
        .get(0);
    Ok(u64::try_from(rows).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(table: &str, batches: &[i64], bytes: i64) -> Partition {
        Partition {
            table: table.into(),
            batches: batches.iter().copied().map(BatchId).collect(),
            bytes,
            tables: 2,
        }
    }

    #[test]
    fn bounds_as_postgresql_prints_them() {
        assert_eq!(
            bound_batches("FOR VALUES IN ('1', '22')"),
            Some(vec![BatchId(1), BatchId(22)])
        );
        assert_eq!(bound_batches("FOR VALUES IN ('0')"), Some(vec![BatchId(0)]));
        assert_eq!(bound_batches("DEFAULT"), None);
        assert_eq!(bound_batches("FOR VALUES IN ('x')"), None);
    }

    #[test]
    fn nothing_is_merged_within_the_bound_and_the_smallest_down_to_half_of_it() {
        let all: Vec<Partition> = (1..=5)
            .map(|i| part(&format!("t{i}"), &[i], 100 - i))
            .collect();
        assert!(to_merge(all.clone(), 5, 1000).is_empty());
        let merged = to_merge(all.clone(), 4, 1000);
        // 5 partitions, bound 4: down to 2 → merge the 4 smallest into one.
        assert_eq!(
            merged.iter().map(|p| p.table.as_str()).collect::<Vec<_>>(),
            ["t5", "t4", "t3", "t2"]
        );
        assert_eq!(to_merge(all.clone(), 1, 1000).len(), 5);
        assert!(to_merge(all[..1].to_vec(), 0, 1000).is_empty());
    }

    #[test]
    fn one_merge_takes_at_most_its_share_of_the_lock_table() {
        let all: Vec<Partition> = (1..=301)
            .map(|i| part(&format!("t{i:03}"), &[i], i))
            .collect();
        // Bound 8: down to 4 asks for 298 partitions; 64 of two tables each fit in one merge,
        // the smallest.
        let merged = to_merge(all.clone(), 8, 1 << 40);
        assert_eq!(merged.len(), MERGE_TABLES_MAX / 2);
        assert_eq!(merged[0].table, "t001");
        assert_eq!(merged.last().unwrap().table, "t064");
        // Partitions bigger than the cap are still merged two at a time.
        let wide: Vec<Partition> = all
            .into_iter()
            .map(|p| Partition {
                tables: MERGE_TABLES_MAX,
                ..p
            })
            .collect();
        assert_eq!(to_merge(wide, 8, 1 << 40).len(), 2);
    }

    #[test]
    fn big_partitions_stay_as_they_are() {
        let all: Vec<Partition> = (1..=5)
            .map(|i| part(&format!("t{i}"), &[i], i * 10))
            .collect();
        // Only t1 and t2 are under 25 bytes: they are merged, the rest stay.
        let merged = to_merge(all.clone(), 2, 25);
        assert_eq!(
            merged.iter().map(|p| p.table.as_str()).collect::<Vec<_>>(),
            ["t1", "t2"]
        );
        // Under the size only one: nothing to merge.
        assert!(to_merge(all, 2, 15).is_empty());
    }
}
