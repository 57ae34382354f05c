//! `POST /batches` with `Replaces: <id>`: the new batch loads as any other, and its commit
//! retracts the old one in the transaction of its own attach. A reader polls `count(*)` and
//! `sum(price)` of `prices` all along and may only ever see the totals with the old batch or
//! with the new one: never both, never neither. A replacement that fails (a bad line) or is
//! cancelled leaves the old batch as it was; of two replacements racing for one batch one wins
//! and the other fails naming it; a coordinator killed in the middle of the replacing commit
//! leaves it undone, and a fresh coordinator finishes it.

use crate::readers::{
    assert_only, committed, detach_waiting, own_table, session_ended, totals, Reader, Totals,
};
use ingest_testkit::process::CoordinatorProcess;
use ingest_testkit::{Answer, Options, TestEnv};
use ingest_wire::{BatchId, BatchState, ErrorCode};
use std::time::Duration;

const EXE: &str = env!("CARGO_BIN_EXE_ingest-coordinator");
const WITHIN: Duration = Duration::from_secs(120);
const TOKEN: &str = "s3cret";

/// Generated rows, as a rates file.
fn rates(seed: u64, rows: u64) -> Vec<u8> {
    let codes = ingest_testkit::rates_file::port_codes(&ingest_testkit::data_dir());
    ingest_testkit::rates_file::whole(&codes, seed, rows)
}

/// The same file with every price one higher: the corrected delivery of the same lanes.
fn corrected(file: &[u8]) -> Vec<u8> {
    let text = std::str::from_utf8(file).unwrap();
    let mut lines = text.lines();
    let mut out = format!("{}\n", lines.next().unwrap());
    for line in lines {
        let (lane, price) = line.rsplit_once(',').unwrap();
        let price: i64 = price.parse().unwrap();
        out.push_str(&format!("{lane},{}\n", price + 1));
    }
    out.into_bytes()
}

/// Submits `file` to replace `old`, with the extra `headers`.
async fn replacing(
    env: &TestEnv,
    file: impl Into<reqwest::Body>,
    old: &str,
    headers: &[(&str, &str)],
) -> (u16, Answer) {
    let mut all = vec![("replaces", old)];
    all.extend_from_slice(headers);
    env.submit_with(file, &all).await
}

/// `old` retracted and replaced by `new`, `new` committed and naming `old`, as the API and the
/// ledger have them.
async fn assert_replaced(env: &TestEnv, old: BatchId, new: BatchId) {
    let old_status = env.status(old).await;
    assert_eq!(old_status.state, BatchState::Retracted, "{old_status:#?}");
    assert_eq!(old_status.replaced_by, Some(new), "{old_status:#?}");
    assert!(old_status.retracted_at.is_some(), "{old_status:#?}");
    let new_status = env.status(new).await;
    assert_eq!(new_status.state, BatchState::Committed, "{new_status:#?}");
    assert_eq!(new_status.replaces, Some(old), "{new_status:#?}");
    assert_eq!(new_status.replaced_by, None);
    assert_eq!(env.batch_totals(old).await, (0, 0));
}

/// Replaces `old` by `file` while `reader` reads: accepted naming `old`, committed, the reader
/// saw only `totals` (before, after), `prices` holds the after, `old` replaced by the new batch.
async fn replaced_while_read(
    env: &TestEnv,
    reader: Reader,
    file: Vec<u8>,
    old: BatchId,
    (before, after): (Totals, Totals),
) -> BatchId {
    let (code, accepted) = replacing(env, file, &old.to_string(), &[]).await;
    assert_eq!(code, 202, "{accepted:?}");
    let new = accepted.id();
    assert_eq!(accepted.batch().replaces, Some(old));
    let status = env.wait_final(new, WITHIN).await;
    assert_eq!(status.state, BatchState::Committed, "{status:#?}");
    reader.looked_more(5).await;
    let (seen, looks) = reader.finish().await;
    assert_only(&seen, looks, before, after);
    assert_eq!(totals(env).await, after);
    assert_replaced(env, old, new).await;
    new
}

/// The totals with `gone` taken out and `came` put in.
fn swapped(before: Totals, gone: Totals, came: Totals) -> Totals {
    (before.0 - gone.0 + came.0, before.1 - gone.1 + came.1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corrected_file_replaces_a_committed_batch_in_one_step_for_readers() {
    let env = TestEnv::start(Options::default()).await;
    let keep = committed(&env, 1, 4_000, None).await;
    let wrong_file = rates(2, 12_000);
    let (code, wrong) = env.submit(wrong_file.clone()).await;
    assert_eq!(code, 202, "{wrong:?}");
    let wrong = env.wait_final(wrong.id(), WITHIN).await.id;
    let kept = env.batch_totals(keep).await;
    let gone = env.batch_totals(wrong).await;
    assert_eq!(gone.0, 12_000);
    let before = totals(&env).await;
    // Every price one higher, the same lanes: the rows stay, the sum grows by one a row.
    let after = (before.0, before.1 + 12_000);

    let reader = Reader::start(&env).await;
    reader.looked(5).await;
    let new =
        replaced_while_read(&env, reader, corrected(&wrong_file), wrong, (before, after)).await;
    assert_eq!(env.batch_totals(new).await, (gone.0, gone.1 + 12_000));
    assert_eq!(env.batch_totals(keep).await, kept);
    assert!(
        !own_table(&env, wrong).await,
        "the old partition is dropped"
    );
    let (_, metrics) = env.get_text("/metrics").await;
    // The test process's counter, shared with the tests that run alongside.
    assert!(
        ingest_testkit::metric(&metrics, r#"ingest_retracts_total{outcome="replaced"}"#)
            >= Some(1.0),
        "{metrics}"
    );

    // The page of batches says which replaced which.
    let (code, page) = env.get("/batches").await;
    assert_eq!(code, 200);
    let batches = page["batches"].as_array().unwrap();
    let of = |id: BatchId| {
        batches
            .iter()
            .find(|batch| batch["id"] == id.get())
            .unwrap()
            .clone()
    };
    assert_eq!(of(wrong)["replaced_by"], new.get(), "{page}");
    assert_eq!(of(new)["replaces"], wrong.get(), "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_merged_into_a_shared_partition_is_replaced_by_a_delete_in_the_commit() {
    let env = TestEnv::start(Options {
        partitions_max: 2,
        ..Options::default()
    })
    .await;
    let mut ids = Vec::new();
    for seed in 1..=4 {
        ids.push(committed(&env, seed, 3_000 + seed * 500, None).await);
    }
    let wrong = ids[1];
    env.wait_until(
        "the batch merged into a shared partition",
        WITHIN,
        || async { !own_table(&env, wrong).await },
    )
    .await;
    let gone = env.batch_totals(wrong).await;
    let before = totals(&env).await;
    let file = rates(40, 2_500);
    let came = ingest_testkit::rates_file::expected(40, 2_500);
    let after = swapped(before, gone, came);

    let reader = Reader::start(&env).await;
    reader.looked(5).await;
    replaced_while_read(&env, reader, file, wrong, (before, after)).await;
    for id in ids.iter().filter(|id| **id != wrong) {
        assert!(env.batch_totals(*id).await.0 > 0, "batch {id} is whole");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replacement_that_fails_or_is_cancelled_leaves_the_old_batch_as_it_was() {
    let mut env = TestEnv::start(Options::default()).await;
    let old = committed(&env, 3, 6_000, None).await;
    let old_status = env.status(old).await;
    let before = totals(&env).await;
    let reader = Reader::start(&env).await;
    reader.looked(5).await;

    // A bad line: the replacement fails, naming it; nothing of either batch moves.
    let mut bad = rates(4, 3_000);
    bad.extend_from_slice(b"CNSGH,NLRTM,2016-13-01,100\n");
    let (code, refused) = replacing(&env, bad, &old.to_string(), &[]).await;
    assert_eq!(code, 422, "{refused:?}");
    let refused = refused.batch();
    assert_eq!(refused.state, BatchState::Failed);
    assert_eq!(refused.replaces, Some(old));
    let error = refused.error.as_deref().unwrap();
    assert!(error.contains("line 3002"), "{error}");

    // Cancelled while it loads (no worker takes it): the same.
    env.stop_workers().await;
    let (code, open) = replacing(&env, rates(5, 3_000), &old.to_string(), &[]).await;
    assert_eq!(code, 202, "{open:?}");
    let cancel = env
        .http
        .post(format!("{}/batches/{}/cancel", env.base, open.id()))
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status().as_u16(), 200);
    env.start_workers(2);

    reader.looked_more(5).await;
    let (seen, looks) = reader.finish().await;
    assert_only(&seen, looks, before, before);
    let now = env.status(old).await;
    assert_eq!(now.state, BatchState::Committed, "{now:#?}");
    assert_eq!(now.replaced_by, None);
    assert_eq!(
        now.finished_at, old_status.finished_at,
        "the old batch did not move"
    );
    assert!(own_table(&env, old).await);

    // It can still be replaced.
    let (code, accepted) = replacing(&env, rates(6, 2_000), &old.to_string(), &[]).await;
    assert_eq!(code, 202, "{accepted:?}");
    let status = env.wait_final(accepted.id(), WITHIN).await;
    assert_eq!(status.state, BatchState::Committed, "{status:#?}");
    assert_replaced(&env, old, accepted.id()).await;
    env.stop_workers().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_two_replacements_racing_for_one_batch_one_wins_and_the_other_fails_naming_it() {
    let mut env = TestEnv::start(Options::default()).await;
    let old = committed(&env, 7, 5_000, None).await;
    let gone = env.batch_totals(old).await;
    let before = totals(&env).await;
    // Both accepted while the old batch is still committed and replaced by neither.
    env.stop_workers().await;
    let (code, a) = replacing(&env, rates(8, 4_000), &old.to_string(), &[]).await;
    assert_eq!(code, 202, "{a:?}");
    let (code, b) = replacing(&env, rates(9, 3_000), &old.to_string(), &[]).await;
    assert_eq!(code, 202, "{b:?}");
    let (a, b) = (a.id(), b.id());
    let reader = Reader::start(&env).await;
    reader.looked(5).await;
    env.start_workers(2);
    let (a_status, b_status) = (
        env.wait_final(a, WITHIN).await,
        env.wait_final(b, WITHIN).await,
    );
    let (winner, loser) = match (a_status.state, b_status.state) {
        (BatchState::Committed, BatchState::Failed) => (a_status, b_status),
        (BatchState::Failed, BatchState::Committed) => (b_status, a_status),
        other => panic!("one replacement must win: {other:?}\n{a_status:#?}\n{b_status:#?}"),
    };
    let error = loser.error.as_deref().unwrap();
    assert!(
        error.contains(&format!("was replaced by batch {} already", winner.id)),
        "{error}"
    );
    assert_eq!(env.batch_totals(loser.id).await, (0, 0));
    let came = env.batch_totals(winner.id).await;
    let after = swapped(before, gone, came);
    reader.looked_more(5).await;
    let (seen, looks) = reader.finish().await;
    assert_only(&seen, looks, before, after);
    assert_eq!(totals(&env).await, after);
    assert_replaced(&env, old, winner.id).await;

    // Too late now: the submit itself is refused, naming the winner.
    let (code, answer) = replacing(&env, rates(10, 100), &old.to_string(), &[]).await;
    assert_eq!(code, 409, "{answer:?}");
    assert_eq!(answer.error().code, ErrorCode::NotReplaceable);
    assert_eq!(
        answer.error().message,
        format!("batch {old} was replaced by batch {} already", winner.id)
    );
    env.stop_workers().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacements_of_what_cannot_be_replaced_are_refused_and_record_nothing() {
    let mut env = TestEnv::start(Options {
        token: Some(TOKEN.into()),
        ..Options::default()
    })
    .await;
    let bearer = format!("Bearer {TOKEN}");
    let auth = ("authorization", bearer.as_str());
    let old = committed(&env, 11, 2_000, Some(TOKEN)).await;
    let bad = "orig_code,dest_code,day,price\nCNSGH,XXXXX,2016-01-02,7\n";
    let (code, failed) = env.submit_with(bad, &[auth]).await;
    assert_eq!(code, 422, "{failed:?}");
    let failed = failed.id();
    env.stop_workers().await;
    let (code, loading) = env.submit_with(rates(12, 1_000), &[auth]).await;
    assert_eq!(code, 202, "{loading:?}");
    let loading = loading.id();
    let batches = || async {
        let row = env
            .db
            .query_one("SELECT count(*) FROM batches", &[])
            .await
            .unwrap();
        row.get::<_, i64>(0)
    };
    let recorded = batches().await;
    let before = totals(&env).await;

    for (replaces, message) in [
        (
            "987654".to_string(),
            "there is no batch 987654 to replace".to_string(),
        ),
        (
            failed.to_string(),
            format!(
                "batch {failed} is failed, not committed: only a committed batch can be replaced"
            ),
        ),
        (
            loading.to_string(),
            format!(
                "batch {loading} is loading, not committed: only a committed batch can be replaced"
            ),
        ),
    ] {
        let (code, answer) = replacing(&env, rates(13, 100), &replaces, &[auth]).await;
        assert_eq!(code, 409, "{answer:?}");
        assert_eq!(answer.error().code, ErrorCode::NotReplaceable);
        assert_eq!(answer.error().message, message);
    }
    for replaces in ["abc", "-3", "0", ""] {
        let (code, answer) = replacing(&env, rates(13, 100), replaces, &[auth]).await;
        assert_eq!(code, 400, "{replaces:?}: {answer:?}");
        assert_eq!(answer.error().code, ErrorCode::BadRequest);
    }
    let (code, answer) = replacing(&env, rates(13, 100), &old.to_string(), &[]).await;
    assert_eq!(code, 401, "{answer:?}");
    assert_eq!(batches().await, recorded, "no refusal recorded a batch");
    assert_eq!(totals(&env).await, before);
    assert_eq!(env.batch_state(old).await, BatchState::Committed);

    // A retried replacement (same Idempotency-Key) finds its batch, even once it replaced the
    // old one and the old one cannot be replaced any more.
    env.start_workers(2);
    let key = ("idempotency-key", "replace-11-once");
    let (code, first) = replacing(&env, rates(14, 500), &old.to_string(), &[auth, key]).await;
    assert_eq!(code, 202, "{first:?}");
    let status = env.wait_final(first.id(), WITHIN).await;
    assert_eq!(status.state, BatchState::Committed, "{status:#?}");
    let (code, again) = replacing(&env, rates(14, 500), &old.to_string(), &[auth, key]).await;
    assert_eq!(code, 200, "{again:?}");
    assert_eq!(again.id(), first.id());
    assert_replaced(&env, old, first.id()).await;
    env.stop_workers().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_coordinator_killed_in_the_middle_of_a_replacing_commit_leaves_it_undone_and_a_fresh_one_finishes_it(
) {
    let mut env = TestEnv::start(Options {
        coordinator: false,
        ..Options::default()
    })
    .await;
    // The replacing commit may wait for its locks for a minute here: long enough to be killed
    // waiting, after its attach, for the old batch's DETACH.
    let mut coordinator =
        CoordinatorProcess::start(EXE, &mut env, &[("INGEST_MERGE_LOCK_MS", "60000")]).await;
    let old = committed(&env, 15, 5_000, None).await;
    let gone = env.batch_totals(old).await;
    let before = totals(&env).await;
    let came = ingest_testkit::rates_file::expected(16, 4_000);
    let after = swapped(before, gone, came);
    let reader = Reader::start(&env).await;
    reader.looked(5).await;

    // An open reader transaction: the attach does not wait for it, the DETACH does.
    let mut holder = ingest_core::db::connect(&env.database_url).await.unwrap();
    let hold = holder.transaction().await.unwrap();
    hold.query_one("SELECT count(*) FROM prices", &[])
        .await
        .unwrap();
    let (code, accepted) = replacing(&env, rates(16, 4_000), &old.to_string(), &[]).await;
    assert_eq!(code, 202, "{accepted:?}");
    let new = accepted.id();
    let waiting = detach_waiting(&env, "the replacing commit to wait for the DETACH").await;
    coordinator.kill();
    hold.commit().await.unwrap();
    session_ended(
        &env,
        waiting,
        "the killed coordinator's commit session to end",
    )
    .await;
    // Not done at all: the old batch whole, the new one not visible.
    assert_eq!(totals(&env).await, before);
    assert_eq!(env.batch_state(old).await, BatchState::Committed);
    assert_eq!(env.batch_state(new).await, BatchState::Committing);

    // A fresh coordinator takes the commit over and replaces the batch.
    env.start_coordinator().await;
    let status = env.wait_final(new, WITHIN).await;
    assert_eq!(status.state, BatchState::Committed, "{status:#?}");
    reader.looked_more(5).await;
    let (seen, looks) = reader.finish().await;
    assert_only(&seen, looks, before, after);
    assert_eq!(totals(&env).await, after);
    assert_replaced(&env, old, new).await;
    drop(holder);
}
