//! `INGEST_VISIBLE_BEFORE_INDEX`: a batch is visible once its rows are loaded and its foreign keys
//! validated, and gets its read index right after (CREATE INDEX CONCURRENTLY); a partition whose
//! index build was cut off gets it built again by the commit loop.

use ingest_testkit::{Options, TestEnv};
use ingest_wire::BatchState;
use std::time::Duration;

const WITHIN: Duration = Duration::from_secs(120);

/// Whether the batch's read index exists and is valid.
async fn indexed(env: &TestEnv, batch: i64) -> bool {
    env.db
        .query_one(
            "SELECT coalesce((SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass($1)), false)",
            &[&format!("price_batches.batch_{batch}_route_day")],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_visible_before_its_index_gets_it_and_a_lost_index_is_built_again() {
    let env = TestEnv::start(Options {
        visible_before_index: true,
        ..Options::default()
    })
    .await;
    let file = std::fs::read(ingest_testkit::sample_prices()).unwrap();
    let (code, accepted) = env.submit(file).await;
    assert_eq!(code, 202, "{accepted:?}");
    let id = accepted.id();
    let status = env.wait_final(id, WITHIN).await;
    assert_eq!(status.state, BatchState::Committed, "{status:#?}");
    assert_eq!(env.prices_count().await, 56_689);
    env.wait_until("the visible batch's index", WITHIN, || async {
        indexed(&env, id.0).await
    })
    .await;

    // A build cut off after the batch became visible leaves it without an index: the commit
    // loop builds it again.
    env.db
        .batch_execute(&format!(
            "DROP INDEX price_batches.batch_{}_route_day",
            id.0
        ))
        .await
        .unwrap();
    assert!(!indexed(&env, id.0).await);
    env.wait_until("the lost index to be built again", WITHIN, || async {
        indexed(&env, id.0).await
    })
    .await;
    assert_eq!(env.prices_count().await, 56_689);

    // Reads of a route use it.
    let plan: Vec<String> = env
        .db
        .query(
            "EXPLAIN SELECT * FROM prices WHERE orig_code = 'CNSGH' AND dest_code = 'NLRTM'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let plan = plan.join("\n");
    assert!(
        plan.contains(&format!("batch_{}_route_day", id.0)),
        "{plan}"
    );
}
