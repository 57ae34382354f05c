//! `POST /batches/{id}/retract`: a committed batch's rows leave `prices` in one transaction —
//! DETACH and DROP while it is its own partition, a DELETE once merged into a shared one — and
//! the batch ends `retracted`. A reader polls `count(*)` and `sum(price)` of `prices` all along
//! and may only ever see the totals before and after. Refusals (409 with the status, 404, 401)
//! change nothing; a coordinator killed in the middle of a retract leaves it not done (or done),
//! never half done, and a fresh coordinator then retracts the batch.

use crate::readers::{
    assert_only, committed, detach_waiting, own_table, session_ended, totals, Reader,
};
use ingest_testkit::process::CoordinatorProcess;
use ingest_testkit::{Answer, Options, TestEnv};
use ingest_wire::{BatchState, ErrorCode};
use std::time::Duration;

const EXE: &str = env!("CARGO_BIN_EXE_ingest-coordinator");
const WITHIN: Duration = Duration::from_secs(120);
const TOKEN: &str = "s3cret";

/// `POST /batches/{id}/retract` (`id` as text: a test may send one that is not a number).
async fn retract(env: &TestEnv, id: &str, token: Option<&str>) -> (u16, Answer) {
    let mut request = env.http.post(format!("{}/batches/{id}/retract", env.base));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("retract request");
    let code = response.status().as_u16();
    let body = response.json().await.unwrap_or(serde_json::Value::Null);
    (code, Answer::read(body))
}

/// Partitions of `prices_by_batch`.
async fn partitions(env: &TestEnv) -> i64 {
    env.db
        .query_one(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'prices_by_batch'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_committed_batch_is_retracted_whole_and_its_partition_dropped() {
    let env = TestEnv::start(Options::default()).await;
    let keep = committed(&env, 1, 4_000, None).await;
    let wrong = committed(&env, 2, 12_000, None).await;
    assert!(own_table(&env, wrong).await);
    let kept = env.batch_totals(keep).await;
    let gone = env.batch_totals(wrong).await;
    assert_eq!(gone.0, 12_000);
    let before = totals(&env).await;
    let after = (before.0 - gone.0, before.1 - gone.1);

    let reader = Reader::start(&env).await;
    reader.looked(5).await;
    let (code, answer) = retract(&env, &wrong.to_string(), None).await;
    assert_eq!(code, 200, "{answer:?}");
    let status = answer.batch();
    assert_eq!(status.state, BatchState::Retracted, "{status:#?}");
    assert!(status.retracted_at.is_some(), "{status:#?}");
    assert!(status.finished_at.is_some(), "{status:#?}");
    reader.looked_more(5).await;
    let (seen, looks) = reader.finish().await;
    assert_only(&seen, looks, before, after);

    assert_eq!(totals(&env).await, after);
    assert_eq!(env.batch_totals(wrong).await, (0, 0));
    assert_eq!(env.batch_totals(keep).await, kept);
    assert_eq!(env.batch_state(wrong).await, BatchState::Retracted);
    assert!(!own_table(&env, wrong).await, "the partition is dropped");
    let retracted_at: Option<chrono::DateTime<chrono::Utc>> = env
        .db
        .query_one(
            "SELECT retracted_at FROM batches WHERE id = $1",
            &[&wrong.get()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(retracted_at, status.retracted_at);

    let (code, metrics) = env.get_text("/metrics").await;
    assert_eq!(code, 200);
    assert_eq!(
        ingest_testkit::metric(&metrics, r#"ingest_batches{state="retracted"}"#),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        ingest_testkit::metric(&metrics, r#"ingest_retracts_total{outcome="retracted"}"#)
            .is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    // Still writable and readable as before.
    env.insert_direct("2017-01-01", 7).await;
    assert_eq!(totals(&env).await, (after.0 + 1, after.1 + 7));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_merged_into_a_shared_partition_is_deleted_from_it_alone() {
    let env = TestEnv::start(Options {
        partitions_max: 2,
        ..Options::default()
    })
    .await;
    // The direct partition and four batches: the second batch makes three partitions, over the
    // bound, and is merged with the others at hand into a shared partition (how many join it
    // depends on how fast the batches commit).
    let mut ids = Vec::new();
    for seed in 1..=4 {
        ids.push(committed(&env, seed, 3_000 + seed * 500, None).await);
    }
    env.wait_until("the merges to settle within the bound", WITHIN, || async {
        partitions(&env).await <= 2 && !own_table(&env, ids[1]).await
    })
    .await;
    let shared_partitions = partitions(&env).await;
    let wrong = ids[1];
    let sharing: i64 = env
        .db
        .query_one(
            "SELECT count(DISTINCT batch_id) FROM prices_by_batch WHERE tableoid =
               (SELECT tableoid FROM prices_by_batch WHERE batch_id = $1 LIMIT 1)",
            &[&wrong.get()],
        )
        .await
        .unwrap()
        .get(0);
    assert!(sharing >= 2, "batch {wrong} shares its partition");
    let mut by_batch = Vec::new();
    for id in &ids {
        by_batch.push((*id, env.batch_totals(*id).await));
    }
    let gone = env.batch_totals(wrong).await;
    assert!(gone.0 > 0);
    let before = totals(&env).await;
    let after = (before.0 - gone.0, before.1 - gone.1);

    let reader = Reader::start(&env).await;
    reader.looked(5).await;
    let (code, answer) = retract(&env, &wrong.to_string(), None).await;
    assert_eq!(code, 200, "{answer:?}");
    assert_eq!(answer.batch().state, BatchState::Retracted);
    reader.looked_more(5).await;
    let (seen, looks) = reader.finish().await;
    assert_only(&seen, looks, before, after);

    assert_eq!(totals(&env).await, after);
    for (id, batch) in by_batch {
        let expected = if id == wrong { (0, 0) } else { batch };
        assert_eq!(env.batch_totals(id).await, expected, "batch {id}");
    }
    assert_eq!(
        partitions(&env).await,
        shared_partitions,
        "the shared partition stays"
    );

    // The shared partition still merges with what comes next.
    let more = [
        committed(&env, 5, 2_000, None).await,
        committed(&env, 6, 2_000, None).await,
    ];
    env.wait_until("the new batches merged", WITHIN, || async {
        partitions(&env).await <= 2 && !own_table(&env, more[0]).await
    })
    .await;
    let mut expected = after;
    for id in more {
        let batch = env.batch_totals(id).await;
        expected = (expected.0 + batch.0, expected.1 + batch.1);
    }
    assert_eq!(totals(&env).await, expected);
    assert_eq!(env.batch_totals(wrong).await, (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_change_nothing() {
    let mut env = TestEnv::start(Options {
        workers: 0,
        token: Some(TOKEN.into()),
        ..Options::default()
    })
    .await;
    let codes = ingest_testkit::rates_file::port_codes(&ingest_testkit::data_dir());
    let bearer = format!("Bearer {TOKEN}");
    let auth = [("authorization", bearer.as_str())];
    // No worker: the batch stays loading.
    let (code, loading) = env
        .submit_with(ingest_testkit::rates_file::whole(&codes, 1, 3_000), &auth)
        .await;
    assert_eq!(code, 202, "{loading:?}");
    let loading = loading.id();
    let bad = "orig_code,dest_code,day,price\nCNSGH,XXXXX,2016-01-02,7\n";
    let (code, failed) = env.submit_with(bad, &auth).await;
    assert_eq!(code, 422, "{failed:?}");
    let failed = failed.id();

    for (id, state) in [(loading, BatchState::Loading), (failed, BatchState::Failed)] {
        let (code, answer) = retract(&env, &id.to_string(), Some(TOKEN)).await;
        assert_eq!(code, 409, "{answer:?}");
        assert_eq!(answer.batch().state, state, "{answer:?}");
        assert_eq!(env.batch_state(id).await, state);
    }
    let (code, answer) = retract(&env, "987654", Some(TOKEN)).await;
    assert_eq!(code, 404, "{answer:?}");
    assert_eq!(answer.error().code, ErrorCode::NotFound);
    let (code, answer) = retract(&env, "not-a-number", Some(TOKEN)).await;
    assert_eq!(code, 400, "{answer:?}");
    for token in [None, Some("wrong")] {
        let (code, answer) = retract(&env, &loading.to_string(), token).await;
        assert_eq!(code, 401, "{answer:?}");
        assert_eq!(answer.error().code, ErrorCode::Unauthorized);
    }

    // Committed, retracted once; the second retract is refused and changes nothing.
    env.start_workers(2);
    let status = env.wait_final(loading, WITHIN).await;
    assert_eq!(status.state, BatchState::Committed, "{status:#?}");
    for token in [None, Some("wrong")] {
        let (code, _) = retract(&env, &loading.to_string(), token).await;
        assert_eq!(code, 401);
    }
    assert_eq!(env.batch_state(loading).await, BatchState::Committed);
    assert_eq!(totals(&env).await.0, 3_000);
    let (code, first) = retract(&env, &loading.to_string(), Some(TOKEN)).await;
    assert_eq!(code, 200, "{first:?}");
    let first = first.batch().clone();
    assert_eq!(totals(&env).await, (0, 0));
    let (code, again) = retract(&env, &loading.to_string(), Some(TOKEN)).await;
    assert_eq!(code, 409, "{again:?}");
    let again = again.batch();
    assert_eq!(again.state, BatchState::Retracted);
    assert_eq!(again.retracted_at, first.retracted_at, "nothing changed");
    assert_eq!(totals(&env).await, (0, 0));

    let (_, metrics) = env.get_text("/metrics").await;
    let outcome = |name: &str| {
        ingest_testkit::metric(
            &metrics,
            &format!(r#"ingest_retracts_total{{outcome="{name}"}}"#),
        )
    };
    // The counters are the test process's, shared with the tests that run alongside.
    assert!(outcome("not_committed") >= Some(3.0), "{metrics}");
    assert!(outcome("unknown") >= Some(1.0), "{metrics}");
    assert!(outcome("retracted") >= Some(1.0), "{metrics}");
    env.stop_workers().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_coordinator_killed_in_the_middle_of_a_retract_leaves_it_undone_and_it_can_be_done_again()
{
    let mut env = TestEnv::start(Options {
        coordinator: false,
        ..Options::default()
    })
    .await;
    // The retract may wait for its locks for a minute here, long enough to be killed waiting.
    let mut coordinator =
        CoordinatorProcess::start(EXE, &mut env, &[("INGEST_MERGE_LOCK_MS", "60000")]).await;
    let keep = committed(&env, 1, 3_000, None).await;
    let wrong = committed(&env, 2, 5_000, None).await;
    let gone = env.batch_totals(wrong).await;
    let before = totals(&env).await;
    let after = (before.0 - gone.0, before.1 - gone.1);
    let reader = Reader::start(&env).await;
    reader.looked(5).await;

    // Writers wait behind this (readers do not): the retract's DETACH waits for it.
    let mut locker = ingest_core::db::connect(&env.database_url).await.unwrap();
    let hold = locker.transaction().await.unwrap();
    hold.batch_execute("LOCK TABLE prices_by_batch IN SHARE MODE")
        .await
        .unwrap();
    let request = {
        let url = format!("{}/batches/{wrong}/retract", env.base);
        let http = env.http.clone();
        tokio::spawn(async move { http.post(url).send().await })
    };
    let waiting = detach_waiting(&env, "the retract to wait for its lock").await;
    coordinator.kill();
    let answer = request.await.unwrap();
    assert!(
        answer.is_err(),
        "the killed coordinator answered: {answer:?}"
    );
    hold.commit().await.unwrap();
    session_ended(
        &env,
        waiting,
        "the killed coordinator's retract session to end",
    )
    .await;

    // Done once or not at all: never rows gone with the batch committed, or the other way round.
    let state = env.batch_state(wrong).await;
    let now = env.batch_totals(wrong).await;
    match state {
        BatchState::Committed => {
            assert_eq!(now, gone, "committed, with all its rows");
            assert!(own_table(&env, wrong).await);
        }
        BatchState::Retracted => assert_eq!(now, (0, 0), "retracted, with none"),
        other => panic!("batch {wrong} is {other}"),
    }

    // A fresh coordinator retracts it (or finds it retracted already).
    env.start_coordinator().await;
    let (code, answer) = retract(&env, &wrong.to_string(), None).await;
    let expected = if state == BatchState::Committed {
        200
    } else {
        409
    };
    assert_eq!(code, expected, "{answer:?}");
    assert_eq!(answer.batch().state, BatchState::Retracted);
    reader.looked_more(5).await;
    let (seen, looks) = reader.finish().await;
    assert_only(&seen, looks, before, after);
    assert_eq!(env.batch_totals(wrong).await, (0, 0));
    assert_eq!(env.batch_totals(keep).await.0, 3_000);
    assert!(!own_table(&env, wrong).await);
    drop(locker);
}
