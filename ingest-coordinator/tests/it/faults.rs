//! No chunk is stranded and only the data fails a batch, on real PostgreSQL and RabbitMQ: a chunk
//! no worker can load (dead-lettered round after round) fails its batch and frees its key; a
//! poison chunk fails its batch naming its lines; a commit interrupted after any of its steps (or
//! racing a killed coordinator's index build, its lease not yet out) is resumed and commits once;
//! two coordinators committing one batch at once commit it once; an upload nobody feeds any more
//! is ended and frees its key. (Stopping PostgreSQL or RabbitMQ themselves is `outages.rs`; peers
//! that freeze, vanish or restart are `fleet.rs`.)

use ingest_coordinator::pipeline::commit::{self, Committed};
use ingest_core::chunk::{ChunkMessage, ChunkSeq, ChunkState, Part};
use ingest_core::chunk_copy::ChunkCopy;
use ingest_core::{ledger, schema};
use ingest_testkit::{poll, rates_file, Options, TestEnv};
use ingest_wire::{BatchId, BatchState, BatchStatus, CommitStep, IdempotencyKey};
use std::time::Duration;

const FINAL_WITHIN: Duration = Duration::from_secs(120);

/// Partitions of `prices_by_batch` that hold a batch (the partition of direct writes, batch 0,
/// left out).
async fn partitions(env: &TestEnv) -> i64 {
    env.db
        .query_one(
            "SELECT count(*) FROM pg_inherits
             WHERE inhparent = 'prices_by_batch'::regclass
               AND inhrelid <> 'price_batches.direct'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// The DDL that builds the read index of both parts of a batch (the default `INGEST_BATCH_PARTS`).
fn index_parts_sql(id: BatchId) -> String {
    (0..2)
        .map(|part| schema::index_part_sql(&schema::part_name(id, Part(part)), false) + ";")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chunk_no_worker_can_load_fails_its_batch_and_frees_its_key() {
    let mut env = TestEnv::start(Options {
        workers: 0,
        ..Options::default()
    })
    .await;
    let codes = rates_file::port_codes(&ingest_testkit::data_dir());
    let (code, accepted) = env
        .submit_with(
            rates_file::whole(&codes, 23, 10_000),
            &[("idempotency-key", "k-undeliverable")],
        )
        .await;
    assert_eq!(code, 202, "{accepted:?}");
    let id = accepted.id();

    // Chunk 1's message comes back from the dead-letter queue after its last round: workers kept
    // dying on it (or were cut off holding it) every time.
    let connection = ingest_testkit::amqp_connection("dead-letterer").await;
    let channel = connection.create_channel().await.unwrap();
    let message = ChunkMessage {
        batch_id: id,
        seq: ChunkSeq(1),
        rows: 5_000,
        part: Some(Part(1)),
        dead_letters: ingest_coordinator::loops::redrive::DEAD_LETTER_ROUNDS,
    };
    channel
        .basic_publish(
            "".into(),
            ingest_core::broker::dead_letter_queue(&env.queue)
                .as_str()
                .into(),
            lapin::options::BasicPublishOptions::default(),
            &[],
            lapin::BasicProperties::default().with_headers(message.to_headers()),
        )
        .await
        .unwrap();
    let _ = connection.close(200, "done".into()).await;

    let status = env.wait_final(id, FINAL_WITHIN).await;
    assert_eq!(status.state, BatchState::Failed, "{status:#?}");
    let error = status.error.as_deref().unwrap();
    assert!(
        error.starts_with(
            "chunk 1 (lines 5002–10001) was handed out 5 times by RabbitMQ's \
                           dead-letter queue and no worker finished loading it"
        ) && error.contains("not the file's fault"),
        "{error}"
    );
    assert_eq!(env.unattached_staging_tables().await, 0);
    // Not the data's fault: the key is free, and the file sent again loads.
    env.start_workers(1);
    resubmit_commits(&env, "k-undeliverable", id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poison_chunk_fails_its_batch_naming_the_chunk_and_its_lines() {
    let mut env = TestEnv::start(Options {
        workers: 0,
        redrive_after_seconds: 1.0,
        max_attempts: 2,
        ..Options::default()
    })
    .await;
    let id = env.submit_generated(22, 20_000).await;
    assert_eq!(env.queue_depth().await, 4);

    // Chunk 2 (lines 10002–15001) becomes a COPY stream PostgreSQL refuses (rows of three
    // fields) — its stored copy replaced by one whose checksum matches, so every read of it is
    // good and every attempt refused; the messages already queued go.
    let mut bytes = b"PGCOPY\n\xff\r\n\0".to_vec();
    bytes.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
    bytes.extend_from_slice(&3i16.to_be_bytes());
    let poison = ChunkCopy::of(&bytes);
    let replaced = env
        .db
        .execute(
            &format!(
                "UPDATE {} SET crc32 = $1, bytes = $2 WHERE seq = 2",
                schema::copies_table(id)
            ),
            &[&i64::from(poison.crc32), &poison.compressed],
        )
        .await
        .unwrap();
    assert_eq!(replaced, 1);
    env.purge_queue().await;

    env.start_workers(2);
    let status = env.wait_final(id, FINAL_WITHIN).await;
    assert_eq!(status.state, BatchState::Failed, "{status:#?}");
    let error = status.error.as_deref().unwrap();
    assert!(
        error.starts_with("chunk 2 (lines 10002–15001) was refused 2 times; last error: "),
        "{error}"
    );
    assert!(error.contains("SQLSTATE 22P04"), "{error}");
    assert_eq!(env.chunks_in(id, ChunkState::Dead).await, 1);
    assert_eq!(env.prices_count().await, 0);
    assert_eq!(env.unattached_staging_tables().await, 0);
    assert_eq!(env.copies_tables().await, 0);
}

/// Five batches, loaded but not committed, each left as a coordinator killed at another point
/// of the commit would leave it; a new coordinator finishes each exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_commit_interrupted_after_any_step_is_resumed_and_commits_once() {
    let mut env = TestEnv::start(Options {
        workers: 0,
        chunk_rows: 10_000,
        ..Options::default()
    })
    .await;
    const ROWS: u64 = 30_000;
    let seeds = [31, 32, 33, 34, 35];
    let mut ids = Vec::new();
    for seed in seeds {
        ids.push(env.submit_generated(seed, ROWS).await);
    }
    env.stop_coordinator().await;
    env.start_workers(2);
    for id in &ids {
        env.wait_loaded(*id, FINAL_WITHIN).await;
    }
    let [after_claim, after_index, mid_index, after_attach, keys_not_valid] = ids[..] else {
        unreachable!()
    };

    // Killed right after `loading → committing`.
    assert!(ledger::start_commit(&env.db, after_claim).await.unwrap());
    // Killed after the index was built.
    assert!(ledger::start_commit(&env.db, after_index).await.unwrap());
    env.db
        .batch_execute(&index_parts_sql(after_index))
        .await
        .unwrap();
    // Killed (or frozen) while building the index: its backend is still there, named for the
    // commit, in the middle of its own CREATE INDEX, and its lease has not run out yet.
    assert!(ledger::start_commit(&env.db, mid_index).await.unwrap());
    let lingering = ingest_core::db::connect(&env.database_url).await.unwrap();
    lingering
        .batch_execute(&format!(
            "SET application_name = '{}'",
            ledger::commit_session_name(mid_index)
        ))
        .await
        .unwrap();
    let taken = ledger::take_commit_lease(
        &lingering,
        mid_index,
        "a-coordinator-that-died",
        Duration::from_secs(3600),
        Duration::from_secs(1),
    )
    .await
    .unwrap();
    assert!(matches!(taken, ledger::Take::Taken(_)), "{taken:?}");
    lingering
        .batch_execute(&format!("BEGIN; {}", index_parts_sql(mid_index)))
        .await
        .unwrap();
    // Killed after the attach committed, before its chunks' copies were dropped.
    assert!(ledger::start_commit(&env.db, after_attach).await.unwrap());
    let ledger::Take::Taken(fence) = ledger::take_commit_lease(
        &env.db,
        after_attach,
        "a-coordinator-that-died",
        Duration::from_secs(1),
        Duration::from_secs(1),
    )
    .await
    .unwrap() else {
        panic!("the test takes the lease")
    };
    {
        let tx = env.db.transaction().await.unwrap();
        tx.batch_execute(&index_parts_sql(after_attach))
            .await
            .unwrap();
        tx.batch_execute(&schema::attach_sql(after_attach))
            .await
            .unwrap();
        let rows = ledger::finish_commit(&tx, after_attach, fence, Duration::from_millis(100))
            .await
            .unwrap();
        assert_eq!(rows, Some(ROWS));
        tx.commit().await.unwrap();
    }
    let copies_left: bool = env
        .db
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL",
            &[&schema::copies_table(after_attach)],
        )
        .await
        .unwrap()
        .get(0);
    assert!(copies_left);
    // Killed after the foreign keys of one part were added NOT VALID, before their validation.
    assert!(ledger::start_commit(&env.db, keys_not_valid).await.unwrap());
    let keys = schema::foreign_keys(&env.db).await.unwrap();
    assert_eq!(keys.len(), 2);
    env.db
        .batch_execute(&schema::foreign_keys_part_sql(
            &schema::part_name(keys_not_valid, Part(0)),
            &keys,
        ))
        .await
        .unwrap();

    env.start_coordinator().await;
    for id in [after_claim, after_index, after_attach, keys_not_valid] {
        let status = env.wait_final(id, FINAL_WITHIN).await;
        assert_eq!(status.state, BatchState::Committed, "{status:#?}");
    }
    // The live lease keeps the batch from being committed twice at once.
    assert_eq!(env.batch_state(mid_index).await, BatchState::Committing);
    assert_eq!(
        commit::commit_batch(env.state(), mid_index).await.unwrap(),
        Committed::Busy
    );
    // Its holder stops renewing: once the lease ran out, the coordinator takes it over and ends
    // the lingering backend first (its index build is rolled back), then commits.
    env.db
        .execute(
            "UPDATE batches SET commit_lease_until = now() - interval '1 second' WHERE id = $1",
            &[&mid_index.get()],
        )
        .await
        .unwrap();
    let status = env.wait_final(mid_index, FINAL_WITHIN).await;
    assert_eq!(status.state, BatchState::Committed, "{status:#?}");
    assert!(
        lingering.simple_query("SELECT 1").await.is_err(),
        "the stale holder's session was ended"
    );

    for (id, seed) in ids.iter().zip(seeds) {
        assert_eq!(
            env.batch_totals(*id).await,
            rates_file::expected(seed, ROWS),
            "batch {id}"
        );
    }
    assert_eq!(partitions(&env).await, 5);
    // Every part holds both keys, validated, and taken over by prices_by_batch's.
    let keys: Vec<(String, bool, bool)> = env
        .db
        .query(
            "SELECT c.conrelid::regclass::text, c.convalidated, c.conparentid <> 0
             FROM pg_constraint c JOIN pg_class r ON r.oid = c.conrelid
             JOIN pg_namespace n ON n.oid = r.relnamespace
             WHERE n.nspname = 'price_batches' AND r.relname LIKE 'batch%'
               AND r.relkind = 'r' AND c.contype = 'f'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect();
    assert_eq!(keys.len(), 5 * 2 * 2, "{keys:?}");
    assert!(
        keys.iter()
            .all(|(_, valid, inherited)| *valid && *inherited),
        "{keys:?}"
    );
    assert_eq!(env.unattached_staging_tables().await, 0);
    env.wait_copies_dropped(FINAL_WITHIN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_coordinators_committing_one_batch_at_once_commit_it_once() {
    let mut env = TestEnv::start(Options {
        workers: 0,
        chunk_rows: 50_000,
        // Only the calls below commit: the loops look once at start, when nothing is ready.
        commit_poll_ms: 3_600_000,
        ..Options::default()
    })
    .await;
    const ROWS: u64 = 300_000;
    let id = env.submit_generated(41, ROWS).await;
    let first = env.coordinator.take().unwrap();
    let second = ingest_coordinator::app::start(env.config.clone())
        .await
        .unwrap();
    env.start_workers(2);
    env.wait_loaded(id, FINAL_WITHIN).await;

    let (a, b) = tokio::join!(
        commit::commit_batch(&first.state, id),
        commit::commit_batch(&second.state, id)
    );
    let mut outcomes = [a.unwrap(), b.unwrap()];
    outcomes.sort_by_key(|outcome| format!("{outcome:?}"));
    assert!(
        matches!(
            outcomes,
            [Committed::Busy, Committed::Visible] | [Committed::Skipped, Committed::Visible]
        ),
        "{outcomes:?}"
    );
    env.coordinator = Some(first);
    let status = env.wait_final(id, FINAL_WITHIN).await;
    assert_eq!(status.state, BatchState::Committed, "{status:#?}");
    assert_eq!(status.outage, None);
    assert_eq!(env.batch_totals(id).await, rates_file::expected(41, ROWS));
    assert_eq!(partitions(&env).await, 1);
    second.stop().await.unwrap();
}

/// What a handler that died before it could record the end of its upload leaves behind: a batch
/// `receiving` under `key` that nothing feeds.
async fn orphan_upload(env: &TestEnv, key: &str) -> BatchId {
    let mut client = ingest_core::db::connect(&env.database_url).await.unwrap();
    let key = IdempotencyKey::parse(key).unwrap();
    match ledger::create_batch(&mut client, Some(&key), None, 2, "a-coordinator-that-died")
        .await
        .unwrap()
    {
        ledger::NewBatch::Created(id) => id,
        other => panic!("the key {key} did not open a batch: {other:?}"),
    }
}

/// Sends a one-row file with `key`: it must be a new batch (not `orphan`) that commits.
async fn resubmit_commits(env: &TestEnv, key: &str, orphan: BatchId) {
    let body = "orig_code,dest_code,day,price\nCNSGH,NLRTM,2016-01-01,100\n";
    let (code, accepted) = env.submit_with(body, &[("idempotency-key", key)]).await;
    assert_eq!(code, 202, "{accepted:?}");
    assert_ne!(accepted.id(), orphan);
    let status = env.wait_final(accepted.id(), FINAL_WITHIN).await;
    assert_eq!(status.state, BatchState::Committed, "{status:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upload_nobody_feeds_is_ended_and_its_key_freed() {
    // The sweep ends a peer's upload once it has itself been seen steadily for a lease.
    let env = TestEnv::start(Options {
        redrive_after_seconds: 1.0,
        coordinator_lease_seconds: 2.0,
        ..Options::default()
    })
    .await;
    let orphan = orphan_upload(&env, "k-orphan").await;
    let status = env.wait_final(orphan, FINAL_WITHIN).await;
    assert_eq!(status.state, BatchState::Failed, "{status:#?}");
    assert!(
        status
            .error
            .as_deref()
            .unwrap()
            .contains("the upload stopped before the whole file was in"),
        "{status:#?}"
    );
    assert_eq!(env.unattached_staging_tables().await, 0);
    // The key is free: the retry with it is a fresh batch that commits.
    resubmit_commits(&env, "k-orphan", orphan).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_with_the_key_of_a_broken_off_upload_is_a_fresh_submit() {
    // The sweep waits 30 s: the key must be freed by the retry itself.
    let env = TestEnv::start(Options::default()).await;
    let orphan = orphan_upload(&env, "k-broken").await;
    resubmit_commits(&env, "k-broken", orphan).await;
    assert_eq!(env.batch_state(orphan).await, BatchState::Failed);
    assert_eq!(env.prices_count().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_commit_whose_session_is_killed_is_retried_and_the_outage_shown() {
    let mut env = TestEnv::start(Options {
        workers: 0,
        ..Options::default()
    })
    .await;
    let id = env.submit_generated(61, 20_000).await;
    env.stop_coordinator().await;
    env.start_workers(2);
    env.wait_loaded(id, FINAL_WITHIN).await;

    // Hold the batch's staging table so the commit's index build waits on it, then end the
    // commit's session as a database restart would (57P01).
    let blocker = env.db.transaction().await.unwrap();
    blocker
        .batch_execute(&format!(
            "LOCK TABLE {} IN ACCESS EXCLUSIVE MODE",
            schema::staging_table(id)
        ))
        .await
        .unwrap();
    let watcher = ingest_core::db::connect(&env.database_url).await.unwrap();
    let running = ingest_coordinator::app::start(env.config.clone())
        .await
        .unwrap();
    let index_build = format!("%CREATE INDEX IF NOT EXISTS batch_{id}_p%_route_day%");
    let (watcher, index_build) = (&watcher, &index_build);
    poll(
        "the commit to wait on the lock",
        FINAL_WITHIN,
        || async move {
            let killed: i64 = watcher
                .query_one(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                 WHERE query LIKE $1 AND wait_event_type = 'Lock'",
                    &[index_build],
                )
                .await
                .unwrap()
                .get(0);
            (killed > 0).then_some(())
        },
    )
    .await;
    blocker.rollback().await.unwrap();
    env.base = format!("http://{}", running.addr);
    env.coordinator = Some(running);
    let status = env.wait_final(id, FINAL_WITHIN).await;
    assert_eq!(status.state, BatchState::Committed, "{status:#?}");
    let outage = status.outage.as_ref().expect("the outage is in the status");
    assert_eq!(outage.step, "commit", "{status:#?}");
    assert_eq!(outage.attempt, 1, "{status:#?}");
    let reason = &outage.reason;
    assert!(
        reason.starts_with("building the batch's index: ") && reason.contains("SQLSTATE 57P01"),
        "{reason}"
    );
    assert_eq!(env.batch_totals(id).await, rates_file::expected(61, 20_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_status_says_where_a_commit_is() {
    let mut env = TestEnv::start(Options {
        workers: 0,
        ..Options::default()
    })
    .await;
    let id = env.submit_generated(81, 20_000).await;
    // Hold the commit at its index build (the staging table and so its parts locked), then at
    // its foreign keys (`ports` locked against adding a key), then at its attach
    // (`prices_by_batch` locked against ATTACH; readers are not blocked by these locks).
    let holder = env.hold_commit_at_index(id, FINAL_WITHIN).await;
    env.start_coordinator().await;
    let at_index = wait_for_commit_step(&env, id, CommitStep::Index).await;
    assert_eq!(at_index.state, BatchState::Committing);
    // Each lock is taken before the one ahead of it is released.
    let ports = ingest_core::db::connect(&env.database_url).await.unwrap();
    ports
        .batch_execute("BEGIN; LOCK TABLE ports IN ROW EXCLUSIVE MODE")
        .await
        .unwrap();
    holder.batch_execute("COMMIT").await.unwrap();
    let at_keys = wait_for_commit_step(&env, id, CommitStep::ForeignKeys).await;
    let progress = at_keys.commit.unwrap();
    assert!(progress.phase.contains("foreign keys"), "{progress:?}");
    let blocker = ingest_core::db::connect(&env.database_url).await.unwrap();
    blocker
        .batch_execute("BEGIN; LOCK TABLE prices_by_batch IN SHARE MODE")
        .await
        .unwrap();
    ports.batch_execute("COMMIT").await.unwrap();
    let at_attach = wait_for_commit_step(&env, id, CommitStep::Attach).await;
    let progress = at_attach.commit.unwrap();
    assert!(progress.phase.contains("attaching"), "{progress:?}");
    assert_eq!(
        env.prices_count().await,
        0,
        "readers are not blocked and see nothing yet"
    );
    blocker.batch_execute("COMMIT").await.unwrap();
    let status = env.wait_final(id, FINAL_WITHIN).await;
    assert_eq!(status.state, BatchState::Committed, "{status:#?}");
    assert_eq!(status.commit, None);
    assert_eq!(env.batch_totals(id).await, rates_file::expected(81, 20_000));
}

/// Polls the batch's status until its commit is at `step`.
async fn wait_for_commit_step(env: &TestEnv, id: BatchId, step: CommitStep) -> BatchStatus {
    poll(
        &format!("the commit to reach {step:?}"),
        FINAL_WITHIN,
        || async move {
            let status = env.status(id).await;
            let reached = status
                .commit
                .as_ref()
                .is_some_and(|commit| commit.step == step);
            reached.then_some(status)
        },
    )
    .await
}

/// When chunk 0 of `id` was last published.
async fn published_at(env: &TestEnv, id: BatchId) -> String {
    env.db
        .query_one(
            "SELECT published_at::text FROM chunks WHERE batch_id = $1 AND seq = 0",
            &[&id.get()],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_message_is_found_by_the_chunks_claimed_after_it_however_busy_the_queue() {
    let mut env = TestEnv::start(Options {
        workers: 0,
        redrive_after_seconds: 2.0,
        ..Options::default()
    })
    .await;
    let lost = env.submit_generated(71, 30_000).await;
    // Chunk 0's message is taken and acknowledged by someone else: gone, not dead-lettered.
    let connection = ingest_testkit::amqp_connection("thief").await;
    let channel = connection.create_channel().await.unwrap();
    let message = channel
        .basic_get(
            env.queue.as_str().into(),
            lapin::options::BasicGetOptions::default(),
        )
        .await
        .unwrap()
        .expect("chunk 0's message");
    message
        .delivery
        .acker
        .ack(lapin::options::BasicAckOptions::default())
        .await
        .unwrap();
    let _ = connection.close(200, "done".into()).await;
    // A big batch behind it keeps the queue busy for longer than the redrive waits.
    let busy = env.submit_generated(72, 1_000_000).await;
    let first_published = published_at(&env, lost).await;

    // One worker, one chunk at a time: chunks 1–5 are claimed, then the big batch's. The worker
    // stops once it has loaded one of the big batch's, so the queue stays busy however fast the
    // machine is. Chunk 0 must be found stranded because chunks published after it were claimed
    // 2 s ago — the queue holds the big batch's messages all along.
    env.start_worker_loading(1);
    let env_ref = &env;
    poll(
        "a chunk of the big batch to be loaded",
        FINAL_WITHIN,
        || async move { (env_ref.chunks_in(busy, ChunkState::Loaded).await > 0).then_some(()) },
    )
    .await;
    env.stop_workers().await;
    let (env_ref, first) = (&env, &first_published);
    poll(
        "chunk 0 to be handed out again",
        FINAL_WITHIN,
        || async move { (published_at(env_ref, lost).await != *first).then_some(()) },
    )
    .await;
    let waiting = env.chunks_in(busy, ChunkState::Queued).await;
    assert!(
        waiting > 0,
        "the queue was still busy when the lost chunk was handed out again"
    );
    env.start_worker_loading(1);
    let status = env.wait_final(lost, FINAL_WITHIN).await;
    assert_eq!(status.state, BatchState::Committed, "{status:#?}");
    assert_eq!(
        env.batch_totals(lost).await,
        rates_file::expected(71, 30_000)
    );
    env.start_workers(2);
    let status = env.wait_final(busy, FINAL_WITHIN).await;
    assert_eq!(status.state, BatchState::Committed, "{status:#?}");
    assert_eq!(
        env.batch_totals(busy).await,
        rates_file::expected(72, 1_000_000)
    );
}
