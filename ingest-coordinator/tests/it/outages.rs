//! Uploads and loads ride through real outages of the shared services: PostgreSQL stopped (fast
//! shutdown: every session ended) and RabbitMQ's application stopped, then started again, in the
//! middle of an upload and while workers load. Every batch ends committed with exactly its rows,
//! no delivery is dead-lettered and no attempt counts against a chunk.
//!
//! These tests stop services every other test uses: each runs alone (an exclusive turn), and the
//! services are started again whatever happens.

use ingest_testkit::outage::Services;
use ingest_testkit::{rates_file, Answer, Options, TestEnv};
use ingest_wire::{BatchId, BatchState, ErrorCode};
use std::time::{Duration, Instant};

const FINAL_WITHIN: Duration = Duration::from_secs(180);

/// How long each outage lasts (the point of these tests: not a wait for a condition).
const OUTAGE: Duration = Duration::from_secs(4);

/// Polls the test database (a connection of its own) until the batch has at least `chunks`
/// chunks recorded: the upload is under way.
async fn wait_for_chunks(database_url: &str, chunks: i64) {
    let client = &ingest_core::db::connect(database_url).await.unwrap();
    ingest_testkit::poll("the upload to start", FINAL_WITHIN, || async move {
        let recorded: i64 = client
            .query_one("SELECT count(*) FROM chunks", &[])
            .await
            .unwrap()
            .get(0);
        (recorded >= chunks).then_some(())
    })
    .await;
}

/// Submits `rows` generated rows (seed `seed`, optional Idempotency-Key) as a slow client and,
/// once the upload is under way, runs `stop`, lets the outage last `outage`, runs `start`.
/// Returns the answer, and whether it came after the service was back (the outage landed in the
/// middle of the upload).
async fn upload_through_outage(
    env: &TestEnv,
    (seed, rows, key): (u64, u64, Option<&str>),
    outage: Duration,
    stop: impl FnOnce(),
    start: impl FnOnce(),
) -> (u16, Answer, bool) {
    let codes = rates_file::port_codes(&ingest_testkit::data_dir());
    let body = rates_file::paced(codes, seed, rows, Duration::from_millis(100));
    let headers: Vec<(&str, &str)> = key
        .map(|key| ("idempotency-key", key))
        .into_iter()
        .collect();
    let ((code, answer, answered), back) = tokio::join!(
        async {
            let (code, answer) = env.submit_with(body, &headers).await;
            (code, answer, Instant::now())
        },
        async {
            wait_for_chunks(&env.database_url, 2).await;
            stop();
            tokio::time::sleep(outage).await;
            start();
            Instant::now()
        }
    );
    (code, answer, answered > back)
}

/// Checks a committed batch against the generated file and that no delivery or attempt was lost
/// to the outage.
async fn assert_committed_whole(env: &TestEnv, id: BatchId, seed: u64, rows: u64) {
    let status = env.wait_final(id, FINAL_WITHIN).await;
    assert_eq!(status.state, BatchState::Committed, "{status:#?}");
    let codes = rates_file::port_codes(&ingest_testkit::data_dir());
    let row = env
        .db
        .query_one(
            "SELECT count(*), sum(price)::bigint FROM prices WHERE true",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, i64>(0), row.get::<_, i64>(1)),
        rates_file::totals(&codes, seed, rows)
    );
    let failures: i64 = env
        .db
        .query_one("SELECT coalesce(sum(failures), 0)::bigint FROM chunks", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(failures, 0, "an outage is not a failed attempt");
    assert_eq!(
        env.dead_letters().await,
        0,
        "no delivery was spent on the outage"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_stopped_during_an_upload_ends_committed() {
    let mut env = TestEnv::start(Options {
        workers: 2,
        chunk_rows: 20_000,
        exclusive: true,
        ..Options::default()
    })
    .await;
    let services = Services::new();
    const ROWS: u64 = 400_000;
    let (code, accepted, landed) = upload_through_outage(
        &env,
        (51, ROWS, None),
        OUTAGE,
        || services.stop_postgres(),
        || services.start_postgres(),
    )
    .await;
    assert_eq!(code, 202, "{accepted:?}");
    assert!(landed, "the outage ended after the upload did");
    env.reconnect_db().await;
    assert_committed_whole(&env, accepted.id(), 51, ROWS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_stopped_while_workers_load_ends_committed() {
    let mut env = TestEnv::start(Options {
        workers: 0,
        chunk_rows: 20_000,
        exclusive: true,
        ..Options::default()
    })
    .await;
    let services = Services::new();
    const ROWS: u64 = 200_000;
    let codes = rates_file::port_codes(&ingest_testkit::data_dir());
    let (code, accepted) = env.submit(rates_file::whole(&codes, 52, ROWS)).await;
    assert_eq!(code, 202, "{accepted:?}");
    let id = accepted.id();

    // The workers take their deliveries while PostgreSQL is away: they keep them and try again.
    services.stop_postgres();
    env.start_workers(2);
    tokio::time::sleep(OUTAGE).await;
    services.start_postgres();
    env.reconnect_db().await;
    assert_committed_whole(&env, id, 52, ROWS).await;
    let (_, status) = env.get(&format!("/batches/{id}")).await;
    assert_eq!(status["outage"]["step"], "load", "{status:#}");
    assert!(
        status["outage"]["attempt"].as_i64().unwrap() >= 1,
        "{status:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rabbitmq_stopped_during_an_upload_ends_committed_and_workers_come_back() {
    let env = TestEnv::start(Options {
        workers: 2,
        chunk_rows: 20_000,
        exclusive: true,
        ..Options::default()
    })
    .await;
    let services = Services::new();
    const ROWS: u64 = 300_000;
    let (code, accepted, landed) = upload_through_outage(
        &env,
        (53, ROWS, None),
        OUTAGE,
        || services.stop_rabbitmq(),
        || services.start_rabbitmq(),
    )
    .await;
    assert_eq!(code, 202, "{accepted:?}");
    assert!(landed, "the outage ended after the upload did");
    assert_committed_whole(&env, accepted.id(), 53, ROWS).await;
    env.wait_until("both workers to consume again", FINAL_WITHIN, || async {
        env.consumers().await == 2
    })
    .await;
    let (code, ready) = env.get("/readyz").await;
    assert_eq!(code, 200, "{ready:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_outage_longer_than_an_upload_waits_ends_it_cleanly_with_a_503() {
    let mut env = TestEnv::start(Options {
        workers: 2,
        chunk_rows: 20_000,
        redrive_after_seconds: 1.0,
        exclusive: true,
        ..Options::default()
    })
    .await;
    env.stop_coordinator().await;
    let mut config = env.config.clone();
    config.ride_through = Duration::from_secs(2);
    env.start_coordinator_with(config).await;
    let services = Services::new();
    const ROWS: u64 = 400_000;
    let (code, answer, _) = upload_through_outage(
        &env,
        (54, ROWS, Some("k-outage")),
        Duration::from_secs(8),
        || services.stop_postgres(),
        || services.start_postgres(),
    )
    .await;
    assert_eq!(code, 503, "{answer:?}");
    let error = answer.error();
    assert_eq!(error.code, ErrorCode::Unavailable, "{answer:?}");
    let request_id = error.request_id.as_deref().unwrap();
    let message = &error.message;
    assert!(
        message.ends_with(&format!("(request {request_id})")),
        "{message}"
    );
    for internal in ["SQLSTATE", "db error", "FATAL", "127.0.0.1", "connection"] {
        assert!(!message.contains(internal), "{message}");
    }

    // Once PostgreSQL is back, the batch is failed, its key freed, its rows and copies dropped.
    env.reconnect_db().await;
    let id = BatchId(
        env.db
            .query_one("SELECT min(id) FROM batches", &[])
            .await
            .unwrap()
            .get(0),
    );
    let status = env.wait_final(id, FINAL_WITHIN).await;
    assert_eq!(status.state, BatchState::Failed, "{status:#?}");
    let key: Option<String> = env
        .db
        .query_one(
            "SELECT idempotency_key FROM batches WHERE id = $1",
            &[&id.get()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(key, None, "the key is free for the retry");
    assert_eq!(env.unattached_staging_tables().await, 0);
    assert_eq!(env.copies_tables().await, 0);
    assert_eq!(env.prices_count().await, 0);

    // The client's retry with the same key loads the file once.
    let codes = rates_file::port_codes(&ingest_testkit::data_dir());
    let (code, accepted) = env
        .submit_with(
            rates_file::whole(&codes, 54, ROWS),
            &[("idempotency-key", "k-outage")],
        )
        .await;
    assert_eq!(code, 202, "{accepted:?}");
    let retried = accepted.id();
    assert_ne!(retried, id);
    let status = env.wait_final(retried, FINAL_WITHIN).await;
    assert_eq!(status.state, BatchState::Committed, "{status:#?}");
    assert_eq!(env.prices_count().await, ROWS as i64);
}
