//! PostgreSQL as production runs it: a primary with a standby that takes over when the primary
//! dies, reached through `DATABASE_URL` with both hosts and `target_session_attrs=read-write`.
//! Each test has a pair of its own ([`PostgresPair`], on its own ports, apart from the machine's
//! server), kills the primary (immediate stop) at a chosen moment and promotes the standby as a
//! failover manager would. Sessions that land on the standby before the promotion are told
//! "database does not allow writes" (or "read-only transaction"): outages, tried again.
//!
//! Each test ends with its batch committed exactly — per day, rows and sum of prices against the
//! file — and the workers loading again (a second batch commits).

use ingest_core::chunk::ChunkState;
use ingest_testkit::cluster::PostgresPair;
use ingest_testkit::process::{sibling_binary, start_worker_with, Frozen};
use ingest_testkit::{poll, rates_file, Options, TestEnv};
use ingest_wire::{BatchId, BatchState, CommitStep};
use std::time::Duration;

const WITHIN: Duration = Duration::from_secs(180);

/// An environment on `pair`, with no worker yet.
async fn on_pair(pair: &PostgresPair, options: Options) -> TestEnv {
    TestEnv::start(Options {
        workers: 0,
        postgres_server: Some(pair.base_url().to_string()),
        ..options
    })
    .await
}

/// Waits until batch `id` is final and checks it committed with exactly the rows of generated
/// file (`seed`, `rows`), day by day.
async fn assert_committed_exactly(env: &TestEnv, id: BatchId, seed: u64, rows: u64) {
    let status = env.wait_final(id, WITHIN).await;
    assert_eq!(status.state, BatchState::Committed, "{status:#?}");
    assert_eq!(
        env.batch_by_day(id).await,
        rates_file::expected_by_day(seed, rows)
    );
}

/// Checks that the workers load again: a fresh batch commits whole.
async fn assert_loading_again(env: &TestEnv) {
    let id = env.submit_generated(99, 20_000).await;
    assert_committed_exactly(env, id, 99, 20_000).await;
}

/// Waits until at least `at_least` chunks of `id` are loaded (on a connection of its own, on
/// whichever server takes writes).
async fn wait_loaded_chunks(env: &TestEnv, id: BatchId, at_least: i64) -> i64 {
    let env = &env;
    poll("chunks to be loaded", WITHIN, || async move {
        let loaded = env.chunks_in(id, ChunkState::Loaded).await;
        (loaded >= at_least).then_some(loaded)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failover_while_workers_load_loses_and_doubles_nothing() {
    let pair = PostgresPair::start(true);
    let mut env = on_pair(&pair, Options::default()).await;
    const ROWS: u64 = 400_000;
    let id = env.submit_generated(91, ROWS).await;
    let chunks = (ROWS / 5_000) as i64;
    env.start_worker_loading(1);
    let loaded = wait_loaded_chunks(&env, id, 3).await;
    assert!(
        loaded + 10 < chunks,
        "the primary dies while chunks are left to load ({loaded} of {chunks} loaded)"
    );

    tokio::task::block_in_place(|| pair.failover());
    env.reconnect_db().await;
    assert_committed_exactly(&env, id, 91, ROWS).await;
    assert_loading_again(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failover_during_the_commit_commits_once() {
    let pair = PostgresPair::start(true);
    let mut env = on_pair(&pair, Options::default()).await;
    const ROWS: u64 = 60_000;
    let id = env.submit_generated(93, ROWS).await;
    // The commit is held at its index build (the staging table locked by a session of the
    // test), and the primary dies under it; the lock dies with it.
    let holder = env.hold_commit_at_index(id, WITHIN).await;
    env.start_coordinator().await;
    let env_ref = &env;
    poll("the commit to reach its index", WITHIN, || async move {
        let status = env_ref.status(id).await;
        (status.state == BatchState::Committing
            && status
                .commit
                .is_some_and(|commit| commit.step == CommitStep::Index))
        .then_some(())
    })
    .await;

    tokio::task::block_in_place(|| pair.failover());
    drop(holder);
    env.reconnect_db().await;
    assert_committed_exactly(&env, id, 93, ROWS).await;
    assert_loading_again(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_asynchronous_standby_promoted_without_some_loaded_chunks_loads_them_once_more() {
    let pair = PostgresPair::start(false);
    let mut env = on_pair(
        &pair,
        Options {
            redrive_after_seconds: 2.0,
            worker_lease_seconds: 5,
            ..Options::default()
        },
    )
    .await;
    const ROWS: u64 = 300_000;
    let id = env.submit_generated(95, ROWS).await;
    let chunks = (ROWS / 5_000) as i64;
    // The whole upload (every chunk and its copy) is on the standby before it falls behind.
    let standby = ingest_core::db::connect(&pair.standby_url(&env.db_name))
        .await
        .unwrap();
    let standby = &standby;
    poll("the upload to reach the standby", WITHIN, || async move {
        let row = standby
            .query_one(
                "SELECT (SELECT state FROM batches WHERE id = $1),
                        (SELECT count(*) FROM chunks WHERE batch_id = $1)",
                &[&id.get()],
            )
            .await
            .ok()?;
        let state: Option<String> = row.get(0);
        (state.is_some_and(|state| state != "receiving") && row.get::<_, i64>(1) == chunks)
            .then_some(())
    })
    .await;
    // One worker process, one chunk at a time, with a short lease.
    let worker = start_worker_with(
        &sibling_binary("ingest-worker"),
        &env,
        "async-worker",
        "127.0.0.1:0",
        &[
            ("INGEST_WORKER_CONCURRENCY", "1"),
            ("INGEST_LEASE_SECONDS", "5"),
        ],
    );
    wait_loaded_chunks(&env, id, 2).await;
    tokio::task::block_in_place(|| pair.pause_replication());
    // Chunks the primary marks loaded from here on never reach the standby (those marked while
    // the pause waited for the standby to catch up did).
    let at_pause = env.chunks_in(id, ChunkState::Loaded).await;
    wait_loaded_chunks(&env, id, at_pause + 3).await;
    // The worker is frozen in the middle of its work while the primary dies and the standby is
    // promoted, so that what the new primary lacks can be counted before anything moves on.
    let frozen = Frozen::freeze(worker.pid());
    let on_primary = env.chunks_in(id, ChunkState::Loaded).await;
    tokio::task::block_in_place(|| pair.failover());
    env.reconnect_db().await;
    let on_standby = env.chunks_in(id, ChunkState::Loaded).await;
    frozen.thaw();
    assert!(
        on_standby < on_primary,
        "the promoted standby lacks some loaded marks ({on_standby} there, {on_primary} were)"
    );
    // Whatever it lacks is loaded once more, once: the batch ends whole (or failed, naming the
    // failover, its key released — never with rows missing or doubled).
    let status = env.wait_final(id, WITHIN).await;
    match status.state {
        BatchState::Committed => assert_eq!(
            env.batch_by_day(id).await,
            rates_file::expected_by_day(95, ROWS)
        ),
        _ => panic!("{status:#?}"),
    }
    assert_loading_again(&env).await;
    drop(worker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_asynchronous_standby_promoted_without_chunks_of_an_upload_fails_it_and_frees_its_key() {
    let pair = PostgresPair::start(false);
    let mut env = on_pair(&pair, Options::default()).await;
    const ROWS: u64 = 300_000;
    const KEY: &str = "async-failover-upload";
    let codes = rates_file::port_codes(&ingest_testkit::data_dir());
    // A slow client (3 s at least): the failover lands while the file comes in.
    let body = rates_file::paced(codes, 97, ROWS, Duration::from_millis(100));
    let recorded_at_least = |at_least: i64| {
        let url = env.database_url.clone();
        async move {
            let client = &ingest_core::db::connect(&url).await.unwrap();
            poll("chunks to be recorded", WITHIN, || async move {
                let recorded: i64 = client
                    .query_one("SELECT count(*) FROM chunks", &[])
                    .await
                    .ok()?
                    .get(0);
                (recorded >= at_least).then_some(recorded)
            })
            .await
        }
    };
    let ((code, answer), ()) =
        tokio::join!(env.submit_with(body, &[("idempotency-key", KEY)]), async {
            recorded_at_least(5).await;
            tokio::task::block_in_place(|| pair.pause_replication());
            // Chunks recorded from here on never reach the standby (those recorded while the
            // pause waited for the standby to catch up did); the upload goes on.
            let at_pause = recorded_at_least(0).await;
            recorded_at_least(at_pause + 4).await;
            tokio::task::block_in_place(|| pair.failover());
        });
    assert_eq!(code, 503, "{answer:?}");
    env.reconnect_db().await;
    let row = env
        .db
        .query_one(
            "SELECT id, state, error, idempotency_key FROM batches ORDER BY id LIMIT 1",
            &[],
        )
        .await
        .unwrap();
    let (state, error, key): (String, String, Option<String>) =
        (row.get(1), row.get(2), row.get(3));
    assert_eq!(state, "failed");
    assert!(
        error.starts_with("the ledger lost ") && error.contains("PostgreSQL failover"),
        "{error}"
    );
    assert_eq!(key, None, "the key is released");

    // The client sends the file again with its key: a new batch, loaded whole.
    let file = rates_file::whole(
        &rates_file::port_codes(&ingest_testkit::data_dir()),
        97,
        ROWS,
    );
    let (code, answer) = env.submit_with(file, &[("idempotency-key", KEY)]).await;
    assert_eq!(code, 202, "{answer:?}");
    assert_ne!(answer.id().get(), row.get::<_, i64>(0));
    env.start_workers(2);
    assert_committed_exactly(&env, answer.id(), 97, ROWS).await;
}
