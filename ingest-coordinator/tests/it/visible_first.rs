//! `INGEST_VISIBLE_BEFORE_INDEX`: a batch is visible once its rows are loaded and its foreign keys
//! validated, and gets its read index right after (CREATE INDEX CONCURRENTLY, part by part); a
//! part whose index build was cut off gets it built again by the commit loop.

use ingest_core::ledger::{self, Take};
use ingest_testkit::{Options, TestEnv};
use ingest_wire::BatchState;
use std::time::Duration;

const WITHIN: Duration = Duration::from_secs(120);

/// Whether each part of the batch has its read index, valid.
async fn indexed(env: &TestEnv, batch: i64) -> bool {
    let parts: Vec<(String, bool)> = env
        .db
        .query(
            "SELECT c.relname, coalesce((SELECT indisvalid FROM pg_index \
                 WHERE indexrelid = to_regclass('price_batches.' || c.relname || '_route_day')), false) \
             FROM pg_partition_tree(to_regclass($1)) t JOIN pg_class c ON c.oid = t.relid \
             WHERE t.isleaf",
            &[&format!("price_batches.batch_{batch}")],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let names: Vec<&str> = parts.iter().map(|(name, _)| name.as_str()).collect();
    let expected = [format!("batch_{batch}_p0"), format!("batch_{batch}_p1")];
    assert_eq!(names, expected, "the batch's parts");
    parts.iter().all(|(_, valid)| *valid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_visible_before_its_index_gets_it_and_a_lost_index_is_built_again() {
    let env = TestEnv::start(Options {
        visible_before_index: true,
        ..Options::default()
    })
    .await;
    let id = env.submit_sample_committed(WITHIN).await.id;
    assert_eq!(env.prices_count().await, 56_689);
    env.wait_until("the visible batch's index", WITHIN, || async {
        indexed(&env, id.0).await
    })
    .await;
    assert_eq!(env.status(id).await.indexed, Some(true));

    // A build cut off after the batch became visible leaves it without an index: the commit
    // loop builds it again. Holding the batch's commit lease keeps the loop away until the
    // status is read. (The loop may still hold it for a moment after the index is there: it
    // releases the lease once it recorded the build.)
    let env_ref = &env;
    let fence = ingest_testkit::poll("the commit lease to be free", WITHIN, || async move {
        let taken = ledger::take_commit_lease(
            &env_ref.db,
            id,
            "the-test",
            Duration::from_secs(3600),
            Duration::from_secs(1),
        )
        .await
        .unwrap();
        match taken {
            Take::Taken(fence) => Some(fence),
            Take::Held(_) => None,
            Take::NotCommitting => panic!("the committed batch takes a lease: {taken:?}"),
        }
    })
    .await;
    env.db
        .batch_execute(&format!(
            "DROP INDEX price_batches.batch_{}_p1_route_day",
            id.0
        ))
        .await
        .unwrap();
    assert!(!indexed(&env, id.0).await);
    let status = env.status(id).await;
    assert_eq!(
        (status.state, status.indexed),
        (BatchState::Committed, Some(false)),
        "the status says the index is not there"
    );
    ledger::release_commit_lease(&env.db, id, fence)
        .await
        .unwrap();
    env.wait_until("the lost index to be built again", WITHIN, || async {
        indexed(&env, id.0).await
    })
    .await;
    assert_eq!(env.status(id).await.indexed, Some(true));
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
    for part in 0..2 {
        assert!(
            plan.contains(&format!("batch_{}_p{part}_route_day", id.0)),
            "{plan}"
        );
    }
}
