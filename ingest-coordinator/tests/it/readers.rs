//! What the undo tests share: a reader that polls `count(*)` and `sum(price)` of `prices` all
//! along, on a connection of its own, and may only ever see the totals before and after each
//! step; committed batches to take back.

use ingest_testkit::{poll, TestEnv};
use ingest_wire::{BatchId, BatchState};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

const WITHIN: Duration = Duration::from_secs(120);

/// (rows, sum of prices) in `prices`.
pub type Totals = (i64, i64);

/// What readers see: `count(*)` and `sum(price)` of `prices`, in one statement.
const TOTALS: &str = "SELECT count(*), coalesce(sum(price), 0)::bigint FROM prices";

/// A reader polling [`TOTALS`] on a connection of its own until stopped (then one last look).
pub struct Reader {
    stop: Arc<AtomicBool>,
    looks: Arc<AtomicU64>,
    task: JoinHandle<BTreeSet<Totals>>,
}

impl Reader {
    pub async fn start(env: &TestEnv) -> Reader {
        let client = ingest_core::db::connect(&env.database_url).await.unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let looks = Arc::new(AtomicU64::new(0));
        let task = {
            let (stop, looks) = (stop.clone(), looks.clone());
            tokio::spawn(async move {
                let mut seen = BTreeSet::new();
                loop {
                    let last = stop.load(Ordering::SeqCst);
                    let row = client.query_one(TOTALS, &[]).await.unwrap();
                    seen.insert((row.get(0), row.get(1)));
                    looks.fetch_add(1, Ordering::SeqCst);
                    if last {
                        return seen;
                    }
                }
            })
        };
        Reader { stop, looks, task }
    }

    /// Waits until the reader looked at least `n` times.
    pub async fn looked(&self, n: u64) {
        poll("the reader to look", WITHIN, || async {
            (self.looks.load(Ordering::SeqCst) >= n).then_some(())
        })
        .await;
    }

    /// Waits until the reader looked `n` more times from now: what it sees then is after
    /// whatever happened before this call.
    pub async fn looked_more(&self, n: u64) {
        let now = self.looks.load(Ordering::SeqCst);
        self.looked(now + n).await;
    }

    /// Stops the reader; every total it saw, and how many looks it took.
    pub async fn finish(self) -> (BTreeSet<Totals>, u64) {
        self.stop.store(true, Ordering::SeqCst);
        let seen = self.task.await.unwrap();
        (seen, self.looks.load(Ordering::SeqCst))
    }
}

pub async fn totals(env: &TestEnv) -> Totals {
    let row = env.db.query_one(TOTALS, &[]).await.unwrap();
    (row.get(0), row.get(1))
}

/// Submits `rows` generated rows (seed `seed`, with the bearer token when `env` needs one) and
/// waits until the batch is committed.
pub async fn committed(env: &TestEnv, seed: u64, rows: u64, token: Option<&str>) -> BatchId {
    let codes = ingest_testkit::rates_file::port_codes(&ingest_testkit::data_dir());
    let file = ingest_testkit::rates_file::whole(&codes, seed, rows);
    let bearer = token.map(|token| format!("Bearer {token}"));
    let headers: Vec<(&str, &str)> = bearer
        .as_deref()
        .map(|bearer| ("authorization", bearer))
        .into_iter()
        .collect();
    let (code, accepted) = env.submit_with(file, &headers).await;
    assert_eq!(code, 202, "{accepted:?}");
    let status = env.wait_final(accepted.id(), WITHIN).await;
    assert_eq!(status.state, BatchState::Committed, "{status:#?}");
    accepted.id()
}

/// Whether the batch's staging table still exists (its own partition, until merged or dropped).
pub async fn own_table(env: &TestEnv, id: BatchId) -> bool {
    env.db
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL",
            &[&format!("price_batches.batch_{id}")],
        )
        .await
        .unwrap()
        .get(0)
}

/// The reader saw only `before` and `after`, and looked often enough to mean it.
pub fn assert_only(seen: &BTreeSet<Totals>, looks: u64, before: Totals, after: Totals) {
    let allowed = BTreeSet::from([before, after]);
    assert!(
        seen.is_subset(&allowed),
        "a reader saw totals other than before {before:?} and after {after:?}: {seen:?}"
    );
    assert!(seen.contains(&after), "{seen:?}");
    assert!(looks >= 10, "the reader looked only {looks} times");
}

/// The backend of the session whose DETACH of a partition of `prices_by_batch` waits for a lock
/// (a retract's, or a replacing commit's), once there is one.
pub async fn detach_waiting(env: &TestEnv, what: &str) -> i32 {
    poll(what, WITHIN, || async {
        env.db
            .query_opt(
                "SELECT pid FROM pg_stat_activity
                 WHERE wait_event_type = 'Lock'
                   AND query LIKE 'ALTER TABLE prices_by_batch DETACH PARTITION%'",
                &[],
            )
            .await
            .unwrap()
            .map(|row| row.get(0))
    })
    .await
}

/// Waits until the session of backend `pid` has ended.
pub async fn session_ended(env: &TestEnv, pid: i32, what: &str) {
    env.wait_until(what, WITHIN, || async {
        env.db
            .query_opt("SELECT 1 FROM pg_stat_activity WHERE pid = $1", &[&pid])
            .await
            .unwrap()
            .is_none()
    })
    .await;
}
