//! Partition merges as batches pile up: 300 small batches end in at most the configured number of
//! partitions; a reader polling all along sees every visible batch whole (all its rows, and only
//! once the ledger says committed) and never loses one it saw; the end holds exactly the rows
//! submitted; the merged partitions keep the read index and both foreign keys (taken over at
//! attach, not built or validated again).

use futures_util::StreamExt;
use ingest_testkit::{rates_file, Options, TestEnv};
use ingest_wire::BatchState;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const BATCHES: u64 = 300;
const BOUND: usize = 8;
const WITHIN: Duration = Duration::from_secs(120);

/// What a reader sees in one statement: each visible batch with its visible rows, its size and
/// its state by the ledger.
const LOOK: &str = "
    SELECT p.batch_id, count(*), b.rows_total, b.state
    FROM prices_by_batch p LEFT JOIN batches b ON b.id = p.batch_id
    GROUP BY p.batch_id, b.rows_total, b.state";

/// What is wrong with one look, given the batches the looks before it saw.
fn judge(look: &[(i64, i64, Option<i64>, Option<String>)], before: &BTreeSet<i64>) -> Vec<String> {
    let mut wrong = Vec::new();
    for (batch, visible, size, state) in look {
        let whole = if *batch == 0 {
            *visible >= 1
        } else {
            state.as_deref() == Some("committed") && Some(*visible) == *size
        };
        if !whole {
            wrong.push(format!(
                "batch {batch}: {visible} rows visible of {size:?}, {state:?}"
            ));
        }
    }
    let now: BTreeSet<i64> = look.iter().map(|row| row.0).collect();
    for gone in before.difference(&now) {
        wrong.push(format!("batch {gone} was visible and is gone"));
    }
    wrong
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_hundred_batches_end_within_the_bound_and_readers_see_every_batch_whole() {
    let env = TestEnv::start(Options {
        workers: 2,
        partitions_max: BOUND,
        ..Options::default()
    })
    .await;
    let codes = rates_file::port_codes(&ingest_testkit::data_dir());
    // A row written straight into `prices` (batch 0): merged like any batch, still writable.
    env.insert_direct("2017-01-01", 1234).await;

    // A reader polls all along, each look one snapshot.
    let stop = Arc::new(AtomicBool::new(false));
    let looks = Arc::new(AtomicU64::new(0));
    let reader = {
        let (stop, looks) = (stop.clone(), looks.clone());
        let url = env.config.database_url.clone();
        tokio::spawn(async move {
            let client = ingest_core::db::connect(&url).await.unwrap();
            let (mut seen, mut wrong) = (BTreeSet::new(), Vec::new());
            while !stop.load(Ordering::SeqCst) {
                let look: Vec<_> = client
                    .query(LOOK, &[])
                    .await
                    .unwrap()
                    .iter()
                    .map(|row| (row.get(0), row.get(1), row.get(2), row.get(3)))
                    .collect();
                wrong.extend(judge(&look, &seen));
                seen = look.iter().map(|row| row.0).collect();
                looks.fetch_add(1, Ordering::SeqCst);
            }
            wrong
        })
    };

    // 300 batches of 1 to 20 rows, six uploads at a time.
    let mut expected = (1i64, 1234i64);
    for seed in 1..=BATCHES {
        let (rows, sum) = rates_file::totals(&codes, seed, 1 + seed % 20);
        expected = (expected.0 + rows, expected.1 + sum);
    }
    let ids: Vec<_> = futures_util::stream::iter(1..=BATCHES)
        .map(|seed| {
            let file = rates_file::whole(&codes, seed, 1 + seed % 20);
            let env = &env;
            async move {
                let (code, accepted) = env.submit(file).await;
                assert_eq!(code, 202, "{accepted:?}");
                accepted.id()
            }
        })
        .buffer_unordered(6)
        .collect()
        .await;
    for id in ids {
        let status = env.wait_final(id, WITHIN).await;
        assert_eq!(status.state, BatchState::Committed, "{status:#?}");
    }
    env.wait_until(
        "the partitions to be merged within the bound",
        WITHIN,
        || async { partitions(&env).await.len() <= BOUND },
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    let wrong = reader.await.unwrap();
    assert!(wrong.is_empty(), "a reader saw part of a batch: {wrong:?}");
    assert!(
        looks.load(Ordering::SeqCst) > 100,
        "the reader looked too rarely"
    );

    let row = env
        .db
        .query_one("SELECT count(*), sum(price)::bigint FROM prices", &[])
        .await
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), expected);
    let all = partitions(&env).await;
    assert!(all.len() <= BOUND, "{all:?}");
    let merged: Vec<_> = all.iter().filter(|name| name.contains("merged_")).collect();
    assert!(!merged.is_empty(), "{all:?}");
    for table in &merged {
        let (foreign_keys, indexes): (i64, i64) = {
            let row = env
                .db
                .query_one(
                    "SELECT (SELECT count(*) FROM pg_constraint
                             WHERE conrelid = $1::text::regclass AND contype = 'f'),
                            (SELECT count(*) FROM pg_index WHERE indrelid = $1::text::regclass)",
                    &[table],
                )
                .await
                .unwrap();
            (row.get(0), row.get(1))
        };
        assert_eq!((foreign_keys, indexes), (2, 1), "{table}");
    }

    // Still writable straight into `prices`, foreign keys still enforced.
    env.insert_direct("2017-01-02", 1).await;
    env.assert_unknown_port_refused().await;
    assert_eq!(env.prices_count().await, expected.0 + 1);
}

/// The partitions of `prices_by_batch`, by name.
async fn partitions(env: &TestEnv) -> Vec<String> {
    env.db
        .query(
            "SELECT c.oid::regclass::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = 'prices_by_batch'::regclass",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}
