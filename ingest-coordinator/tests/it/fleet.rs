//! A fleet, not a host: several coordinator processes on one database and one queue, and peers
//! that freeze (SIGSTOP), vanish (SIGKILL, their working folder deleted) or restart, with the
//! real `ingest-coordinator` and `ingest-worker` binaries. Each test ends with its batches
//! committed exactly (rows and sum of prices against the file) — or failed for the reason it
//! must, its key released.

use ingest_core::chunk::ChunkState;
use ingest_core::schema;
use ingest_testkit::process::{
    sibling_binary, start_worker_with, CoordinatorProcess, Frozen, Spawned,
};
use ingest_testkit::proxy::{Fault, Proxy};
use ingest_testkit::{poll, rates_file, Options, TestEnv};
use ingest_wire::{BatchId, BatchState};
use lapin::options::{BasicGetOptions, BasicRejectOptions};
use std::time::{Duration, Instant};

const EXE: &str = env!("CARGO_BIN_EXE_ingest-coordinator");

const WITHIN: Duration = Duration::from_secs(120);

/// The coordinator lease of these tests, in seconds.
const LEASE: u64 = 3;

/// Settings of every coordinator here: a short lease, quick passes, 5,000-row chunks.
const FLEET: &[(&str, &str)] = &[
    ("INGEST_COORDINATOR_LEASE_SECONDS", "3"),
    ("INGEST_REDRIVE_POLL_MS", "200"),
    ("INGEST_REDRIVE_AFTER_SECONDS", "2"),
    ("INGEST_BACKOFF_MAX_MS", "200"),
    ("INGEST_CHUNK_ROWS", "5000"),
    ("RUST_LOG", "info,lapin=warn"),
];

/// A test environment with no in-process coordinator or worker.
async fn fleet() -> TestEnv {
    TestEnv::start(Options {
        coordinator: false,
        workers: 0,
        ..Options::default()
    })
    .await
}

/// Waits until batch `id` is final and checks it committed with the rows of generated file
/// (`seed`, `rows`).
async fn assert_committed_exactly(env: &TestEnv, id: BatchId, seed: u64, rows: u64) {
    let status = env.wait_final(id, WITHIN).await;
    assert_eq!(status.state, BatchState::Committed, "{status:#?}");
    assert_eq!(env.batch_totals(id).await, rates_file::expected(seed, rows));
}

/// `n` `ingest-worker` processes on `env`'s database and queue (stopped when dropped).
fn worker_processes(env: &TestEnv, n: usize) -> Vec<Spawned> {
    let exe = sibling_binary("ingest-worker");
    (0..n)
        .map(|i| start_worker_with(&exe, env, &format!("worker-{i}"), "127.0.0.1:0", &[]))
        .collect()
}

/// The id of the coordinator process `pid` in the ledger.
async fn coordinator_id(env: &TestEnv, pid: u32) -> String {
    env.db
        .query_one(
            "SELECT id FROM coordinators WHERE pid = $1",
            &[&(pid as i32)],
        )
        .await
        .expect("the coordinator is recorded")
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_coordinator_restarted_during_another_ones_upload_fails_nothing() {
    let mut env = fleet().await;
    let first = CoordinatorProcess::start(EXE, &mut env, FLEET).await;
    let mut second = CoordinatorProcess::start_beside(EXE, &env, FLEET).await;
    let _workers = worker_processes(&env, 2);

    // A slow upload on the first: 200,000 rows in 20 blocks, 500 ms apart (10 s in all, longer
    // than the restarts below).
    const ROWS: u64 = 200_000;
    let codes = rates_file::port_codes(&ingest_testkit::data_dir());
    let upload = env.submit_in_background(
        &first.base,
        rates_file::paced(codes, 91, ROWS, Duration::from_millis(500)),
    );
    env.wait_until("the upload to be under way", WITHIN, || async {
        env.db
            .query_one(
                "SELECT count(*) FROM chunks c JOIN batches b ON b.id = c.batch_id
                 WHERE b.state = 'receiving'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
            >= 2
    })
    .await;

    // The second coordinator stops and starts again, twice (once gracefully, once killed),
    // while the first one's upload is still coming in.
    assert!(second.terminate(Duration::from_secs(60)).success());
    second = CoordinatorProcess::start_beside(EXE, &env, FLEET).await;
    second.kill();
    let second = CoordinatorProcess::start_beside(EXE, &env, FLEET).await;
    let receiving: i64 = env
        .db
        .query_one(
            "SELECT count(*) FROM batches WHERE state = 'receiving'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(receiving, 1, "the upload is still coming in");

    let response = upload.await.unwrap().expect("the upload's answer");
    assert_eq!(
        response.status().as_u16(),
        202,
        "{:?}",
        response.text().await
    );
    let accepted: ingest_wire::BatchStatus = response.json().await.unwrap();
    assert_committed_exactly(&env, accepted.id, 91, ROWS).await;
    let failed: i64 = env
        .db
        .query_one(
            "SELECT count(*) FROM batches WHERE state <> 'committed'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(failed, 0, "{}\n{}", first.logs(), second.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_coordinator_killed_while_workers_load_is_not_needed_to_finish_its_batch() {
    let mut env = fleet().await;
    // The first coordinator runs in a folder of its own, deleted with it: its host is gone.
    let host = tempfile::tempdir().unwrap();
    let port = ingest_testkit::process::free_port();
    let mut command = CoordinatorProcess::command(EXE, &env, port, FLEET);
    command.current_dir(host.path());
    let mut first = Spawned::start(command);
    env.base = format!("http://127.0.0.1:{port}");
    let addr = format!("127.0.0.1:{port}");
    env.wait_until("the first coordinator to be ready", WITHIN, || async {
        ingest_testkit::fetch_text(&env.http, &addr, "/readyz")
            .await
            .0
            == 200
    })
    .await;
    let second = CoordinatorProcess::start_beside(EXE, &env, FLEET).await;

    const ROWS: u64 = 60_000;
    let id = env.submit_generated(92, ROWS).await;
    assert_eq!(env.queue_depth().await, 12);
    first.kill();
    drop(host);
    // Every message is lost as well: each chunk must be handed out again by the survivor, from
    // the copies in PostgreSQL.
    env.purge_queue().await;

    env.base = second.base.clone();
    let _workers = worker_processes(&env, 2);
    assert_committed_exactly(&env, id, 92, ROWS).await;
    let handed_out_again: i64 = env
        .db
        .query_one(
            "SELECT count(*) FROM chunks WHERE batch_id = $1 AND attempts >= 1",
            &[&id.get()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(handed_out_again, 12, "{}", second.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_frozen_in_its_copy_holds_its_chunk_no_longer_than_its_lease() {
    let mut env = fleet().await;
    let coordinator = CoordinatorProcess::start(EXE, &mut env, FLEET).await;
    const ROWS: u64 = 40_000;
    let id = env.submit_generated(93, ROWS).await;

    // The first worker takes chunk 0 and its COPY waits for a lock the test holds on part 0:
    // the worker holds the chunk's row lock, in its COPY. Frozen there.
    let holder = ingest_core::db::connect(&env.database_url).await.unwrap();
    holder
        .batch_execute(&format!(
            "BEGIN; LOCK TABLE price_batches.{} IN SHARE MODE",
            schema::part_name(id, ingest_core::chunk::Part(0))
        ))
        .await
        .unwrap();
    let worker = sibling_binary("ingest-worker");
    const WORKER_LEASE: &str = "6";
    let frozen_worker = start_worker_with(
        &worker,
        &env,
        "frozen",
        "127.0.0.1:0",
        &[
            ("INGEST_LEASE_SECONDS", WORKER_LEASE),
            ("INGEST_WORKER_CONCURRENCY", "1"),
        ],
    );
    // Watched from outside the holder's transaction, which would see one snapshot of the
    // activity all along.
    let watcher = &env.db;
    poll(
        "the worker's COPY to wait on the lock",
        WITHIN,
        || async move {
            let waiting: i64 = watcher
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
                   AND application_name = 'ingest-worker frozen'
                   AND query LIKE 'COPY%' AND wait_event_type = 'Lock'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            (waiting == 1).then_some(())
        },
    )
    .await;
    let frozen = Frozen::freeze(frozen_worker.pid());
    let frozen_at = Instant::now();
    holder.batch_execute("COMMIT").await.unwrap();
    assert_eq!(env.chunks_in(id, ChunkState::Loading).await, 1);

    // Another worker loads the rest; once the frozen one's lease is out, its backend is ended
    // and chunk 0 is handed out again.
    let other = start_worker_with(&worker, &env, "other", "127.0.0.1:0", &[]);
    assert_committed_exactly(&env, id, 93, ROWS).await;
    let took = frozen_at.elapsed();
    assert!(
        took < Duration::from_secs(6 + 30),
        "committed {took:?} after the freeze\n{}\n{}",
        coordinator.logs(),
        other.logs()
    );
    let frozen_backends: i64 = env
        .db
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
               AND application_name = 'ingest-worker frozen' AND query LIKE 'COPY%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(frozen_backends, 0, "the frozen worker's COPY was ended");
    assert!(
        coordinator
            .logs()
            .contains("ended the backend of a worker whose lease expired"),
        "the coordinator ended it at the lease\n{}",
        coordinator.logs()
    );

    // Thawed, the first worker finds its session gone and the chunk loaded: nothing twice.
    frozen.thaw();
    poll("the thawed worker to drop its chunk", WITHIN, || async {
        let logs = frozen_worker.logs();
        (logs.contains("batch closed; chunk dropped") || logs.contains("already loaded"))
            .then_some(())
    })
    .await;
    assert_eq!(env.batch_totals(id).await, rates_file::expected(93, ROWS));
    // And both go on loading.
    let next = env.submit_generated(94, 20_000).await;
    assert_committed_exactly(&env, next, 94, 20_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_committing_coordinator_that_freezes_is_taken_over() {
    let mut env = fleet().await;
    let first = CoordinatorProcess::start(EXE, &mut env, FLEET).await;
    const ROWS: u64 = 30_000;
    let id = env.submit_generated(95, ROWS).await;

    // The first coordinator's commit waits at its index build (part 0 held by the test, which
    // lets workers copy but no index be built), and freezes there, holding the commit lease.
    let holder = ingest_core::db::connect(&env.database_url).await.unwrap();
    holder
        .batch_execute(&format!(
            "BEGIN; LOCK TABLE price_batches.{} IN ROW EXCLUSIVE MODE",
            schema::part_name(id, ingest_core::chunk::Part(0))
        ))
        .await
        .unwrap();
    let _workers = worker_processes(&env, 2);
    let first_id = coordinator_id(&env, first.pid()).await;
    let (db, first_id) = (&env.db, &first_id);
    poll(
        "the first coordinator's commit at its index",
        WITHIN,
        || async move {
            let row = db
                .query_one(
                    "SELECT commit_holder, commit_step FROM batches WHERE id = $1",
                    &[&id.get()],
                )
                .await
                .unwrap();
            (row.get::<_, Option<String>>(0).as_deref() == Some(first_id)
                && row.get::<_, Option<String>>(1).as_deref() == Some("index"))
            .then_some(())
        },
    )
    .await;
    let frozen = Frozen::freeze(first.pid());
    let frozen_at = Instant::now();
    holder.batch_execute("COMMIT").await.unwrap();

    // The second coordinator takes the commit over once the lease is out.
    let second = CoordinatorProcess::start_beside(EXE, &env, FLEET).await;
    env.base = second.base.clone();
    assert_committed_exactly(&env, id, 95, ROWS).await;
    let took = frozen_at.elapsed();
    assert!(
        took < Duration::from_secs(LEASE + 30),
        "committed {took:?} after the freeze\n{}",
        second.logs()
    );
    let fence: i64 = env
        .db
        .query_one(
            "SELECT commit_fence FROM batches WHERE id = $1",
            &[&id.get()],
        )
        .await
        .unwrap()
        .get(0);
    assert!(fence >= 2, "the lease was taken over (fence {fence})");

    // Thawed, the first coordinator finds it lost the lease and does nothing twice.
    frozen.thaw();
    env.base = first.base.clone();
    let addr = first.base.trim_start_matches("http://").to_string();
    env.wait_until("the thawed coordinator to answer", WITHIN, || async {
        ingest_testkit::fetch_text(&env.http, &addr, "/readyz")
            .await
            .0
            == 200
    })
    .await;
    let next = env.submit_generated(96, 10_000).await;
    assert_committed_exactly(&env, next, 96, 10_000).await;
    assert_eq!(env.batch_totals(id).await, rates_file::expected(95, ROWS));
    let partitions: i64 = env
        .db
        .query_one(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'prices_by_batch'::regclass
             AND inhrelid::regclass::text = $1",
            &[&schema::staging_table(id)],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(partitions, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_copy_read_damaged_is_handed_out_again_from_the_good_copy() {
    let mut env = fleet().await;
    let coordinator = CoordinatorProcess::start(EXE, &mut env, FLEET).await;
    const ROWS: u64 = 20_000;
    let id = env.submit_generated(97, ROWS).await;

    // The only worker reads through a proxy that flips a byte of the first large row it passes:
    // the first chunk copy this worker reads arrives damaged.
    let proxy = Proxy::start(
        ingest_testkit::postgres_addr(),
        Fault::DamageRowOver(10_000),
    )
    .await;
    let worker = start_worker_with(
        &sibling_binary("ingest-worker"),
        &env,
        "damaging-host",
        "127.0.0.1:0",
        &[("DATABASE_URL", &proxy.url(&env.database_url))],
    );
    assert_committed_exactly(&env, id, 97, ROWS).await;
    assert_eq!(proxy.fired(), 1);
    let damaged: i64 = env
        .db
        .query_one(
            "SELECT count(*) FROM chunks WHERE batch_id = $1 AND damaged = 1",
            &[&id.get()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(damaged, 1, "{}\n{}", worker.logs(), coordinator.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_damaged_stored_copy_fails_its_batch_as_no_good_copy_and_frees_its_key() {
    let mut env = fleet().await;
    let mut settings = FLEET.to_vec();
    settings.push(("INGEST_MAX_ATTEMPTS", "3"));
    let _coordinator = CoordinatorProcess::start(EXE, &mut env, &settings).await;
    let codes = rates_file::port_codes(&ingest_testkit::data_dir());
    let file = rates_file::whole(&codes, 98, 20_000);
    let (code, accepted) = env
        .submit_with(file.clone(), &[("idempotency-key", "k-damaged")])
        .await;
    assert_eq!(code, 202, "{accepted:?}");
    let id = accepted.id();
    // Chunk 1's stored copy is damaged (its checksum no longer matches): every read of it is.
    let damaged = env
        .db
        .execute(
            &format!(
                "UPDATE {} SET bytes = overlay(bytes PLACING '\\x000000'::bytea FROM 30) WHERE seq = 1",
                schema::copies_table(id)
            ),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(damaged, 1);
    let _workers = worker_processes(&env, 2);

    let status = env.wait_final(id, WITHIN).await;
    assert_eq!(status.state, BatchState::Failed, "{status:#?}");
    let error = status.error.as_deref().unwrap();
    assert!(
        error.starts_with(
            "no good copy of chunk 1 (lines 5002–10001) is left: its stored copy \
                           was read damaged "
        ) && error.contains("not the file's fault"),
        "{error}"
    );
    assert_eq!(status.error_count, 0, "no line is blamed");
    assert_eq!(env.prices_count().await, 0);
    // The key is free: the same file with the same key is a new batch that commits.
    let (code, again) = env
        .submit_with(file, &[("idempotency-key", "k-damaged")])
        .await;
    assert_eq!(code, 202, "{again:?}");
    assert_ne!(again.id(), id);
    assert_committed_exactly(&env, again.id(), 98, 20_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_submit_whose_last_reply_was_lost_answers_the_batch_s_real_state() {
    let mut env = fleet().await;
    // The coordinator reaches PostgreSQL through a proxy that loses the reply to the statement
    // recording the end of the upload: the update is made, the coordinator never hears so.
    let proxy = Proxy::start(
        ingest_testkit::postgres_addr(),
        Fault::CutReplyTo("received_at = now()".into()),
    )
    .await;
    let url = proxy.url(&env.database_url);
    let mut settings = FLEET.to_vec();
    settings.push(("DATABASE_URL", &url));
    let coordinator = CoordinatorProcess::start(EXE, &mut env, &settings).await;
    let _workers = worker_processes(&env, 2);
    let codes = rates_file::port_codes(&ingest_testkit::data_dir());
    let (code, accepted) = env
        .submit_with(
            rates_file::whole(&codes, 99, 20_000),
            &[("idempotency-key", "k-lost-reply")],
        )
        .await;
    assert_eq!(proxy.fired(), 1, "{}", coordinator.logs());
    assert_eq!(code, 202, "{accepted:?}");
    // Loading, or already further (the workers may have been quicker than the answer).
    assert!(
        matches!(
            accepted.batch().state,
            BatchState::Loading | BatchState::Committing | BatchState::Committed
        ),
        "{accepted:?}"
    );
    assert_committed_exactly(&env, accepted.id(), 99, 20_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_lettered_chunks_are_handed_out_again_while_other_batches_keep_the_queue_busy() {
    let mut env = fleet().await;
    let _first = CoordinatorProcess::start(EXE, &mut env, FLEET).await;
    let _second = CoordinatorProcess::start_beside(EXE, &env, FLEET).await;
    let stranded = env.submit_generated(101, 30_000).await;
    let busy = env.submit_generated(102, 20_000).await;
    assert_eq!(env.queue_depth().await, 10);

    // The six messages of the first batch are dead-lettered; the second batch's four stay ready
    // in the chunk queue and no worker takes them: the queue is never idle and no chunk
    // published later is claimed, so only the dead-letter queue tells which chunks are stranded.
    let connection = ingest_testkit::amqp_connection("dead-letterer").await;
    let channel = connection.create_channel().await.unwrap();
    for _ in 0..6 {
        let message = channel
            .basic_get(env.queue.as_str().into(), BasicGetOptions::default())
            .await
            .unwrap()
            .expect("a message to dead-letter");
        message
            .delivery
            .acker
            .reject(BasicRejectOptions { requeue: false })
            .await
            .unwrap();
    }
    let _ = connection.close(200, "done".into()).await;
    env.wait_until(
        "a coordinator to take the dead letters back",
        WITHIN,
        || async { env.dead_letters().await == 0 && env.queue_depth().await == 10 },
    )
    .await;
    assert_eq!(env.chunks_in(stranded, ChunkState::Queued).await, 6);

    let _workers = worker_processes(&env, 2);
    assert_committed_exactly(&env, stranded, 101, 30_000).await;
    assert_committed_exactly(&env, busy, 102, 20_000).await;
    assert_eq!(env.dead_letters().await, 0);
}
