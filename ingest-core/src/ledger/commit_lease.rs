//! The commit lease: which coordinator commits a batch (or builds a committed batch's index),
//! until when, with which sessions, and where it is. One row per batch holds it (`batches`'
//! `commit_*` columns). A holder renews it while it works; a holder that stopped renewing —
//! killed, frozen, cut off — loses it to the next coordinator that asks, which first ends the
//! holder's sessions (their statements and locks go with them). Every write of a holder names
//! the fence it took the lease with, bumped at every take, so a holder that wakes up after
//! losing it changes nothing: its renewal, its step and its commit find another fence.
//!
//! The coordinator's `pipeline::commit::lease` owns a lease's sessions; the SQL is here.

use super::{batch_states, seconds};
use crate::batch::{BatchId, BatchState};
use ingest_wire::CommitStep;
use std::time::Duration;
use tokio_postgres::Client;

/// The `application_name` of every session of a batch's commit, so that a lease taken over ends
/// only those (a recorded pid that PostgreSQL gave to another backend since is left alone).
pub fn commit_session_name(batch_id: BatchId) -> String {
    format!("ingest commit {batch_id}")
}

/// What asking for a batch's commit lease gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Take {
    /// The lease is this session's, with this fence.
    Taken(i64),
    /// A live holder has it (`holder`, a coordinator id).
    Held(String),
    /// The batch is neither committing nor committed.
    NotCommitting,
}

/// The batch states a commit lease is taken in: committing (the commit), committed (a visible
/// batch's index build).
const LEASED: [BatchState; 2] = [BatchState::Committing, BatchState::Committed];

/// Takes the batch's commit lease for `holder` (this coordinator), for `lease`, in this session
/// (which becomes the first of the lease's sessions). A lease that expired — or that `holder`
/// itself left behind, an attempt of its own that ended without releasing it — is taken over:
/// the sessions of the old holder still named for this commit are ended first (waiting up to
/// `within` for each to go), so that none of its statements or locks is left.
pub async fn take_commit_lease(
    client: &Client,
    batch_id: BatchId,
    holder: &str,
    lease: Duration,
    within: Duration,
) -> Result<Take, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT state = ANY($2), commit_holder,
                    commit_holder IS NULL OR commit_holder = $3 OR commit_lease_until < now(),
                    commit_fence, coalesce(commit_pids, '{}')
             FROM batches WHERE id = $1",
            &[&batch_id.get(), &batch_states(&LEASED), &holder],
        )
        .await?;
    let Some(row) = row else {
        return Ok(Take::NotCommitting);
    };
    if !row.get::<_, bool>(0) {
        return Ok(Take::NotCommitting);
    }
    let current: Option<String> = row.get(1);
    if !row.get::<_, bool>(2) {
        return Ok(Take::Held(current.unwrap_or_default()));
    }
    let fence: i64 = row.get(3);
    let stale: Vec<i32> = row.get(4);
    if !stale.is_empty() {
        end_sessions(client, batch_id, &stale, within).await?;
    }
    let taken = client
        .query_opt(
            "UPDATE batches SET commit_holder = $2,
                    commit_lease_until = now() + make_interval(secs => $3),
                    commit_fence = commit_fence + 1, commit_pids = ARRAY[pg_backend_pid()],
                    commit_step = NULL
             WHERE id = $1 AND commit_fence = $4 AND state = ANY($5)
             RETURNING commit_fence",
            &[
                &batch_id.get(),
                &holder,
                &seconds(lease),
                &fence,
                &batch_states(&LEASED),
            ],
        )
        .await?;
    Ok(match taken {
        Some(row) => Take::Taken(row.get(0)),
        // Another coordinator took it in between.
        None => Take::Held(String::new()),
    })
}

/// Ends the backends among `pids` that are still sessions of this batch's commit (not this one),
/// waiting up to `within` for each.
async fn end_sessions(
    client: &Client,
    batch_id: BatchId,
    pids: &[i32],
    within: Duration,
) -> Result<(), tokio_postgres::Error> {
    let ended = client
        .query(
            "SELECT pid, pg_terminate_backend(pid, $3) FROM pg_stat_activity
             WHERE pid = ANY($1) AND application_name = $2 AND pid <> pg_backend_pid()",
            &[
                &pids,
                &commit_session_name(batch_id),
                &i64::try_from(within.as_millis()).unwrap_or(i64::MAX),
            ],
        )
        .await?;
    for row in &ended {
        tracing::warn!(%batch_id, pid = row.get::<_, i32>(0), "ended a session of a commit whose lease expired");
    }
    Ok(())
}

/// Extends the lease taken with `fence` by `lease` from now; false when it is no longer this
/// fence's (taken over: the holder must stop).
pub async fn renew_commit_lease(
    client: &Client,
    batch_id: BatchId,
    fence: i64,
    lease: Duration,
) -> Result<bool, tokio_postgres::Error> {
    let updated = client
        .execute(
            "UPDATE batches SET commit_lease_until = now() + make_interval(secs => $3)
             WHERE id = $1 AND commit_fence = $2 AND commit_holder IS NOT NULL",
            &[&batch_id.get(), &fence, &seconds(lease)],
        )
        .await?;
    Ok(updated == 1)
}

/// Adds this session to the lease's sessions (ended, should the lease be taken over); false when
/// the lease is no longer this fence's.
pub async fn join_commit_lease(
    client: &Client,
    batch_id: BatchId,
    fence: i64,
) -> Result<bool, tokio_postgres::Error> {
    let updated = client
        .execute(
            "UPDATE batches SET commit_pids = array_append(commit_pids, pg_backend_pid())
             WHERE id = $1 AND commit_fence = $2 AND commit_holder IS NOT NULL",
            &[&batch_id.get(), &fence],
        )
        .await?;
    Ok(updated == 1)
}

/// Records where the commit is; false when the lease is no longer this fence's.
pub async fn record_commit_step(
    client: &Client,
    batch_id: BatchId,
    fence: i64,
    step: CommitStep,
) -> Result<bool, tokio_postgres::Error> {
    let updated = client
        .execute(
            "UPDATE batches SET commit_step = $3
             WHERE id = $1 AND commit_fence = $2 AND commit_holder IS NOT NULL",
            &[&batch_id.get(), &fence, &step.as_str()],
        )
        .await?;
    Ok(updated == 1)
}

/// Gives the lease taken with `fence` up (nothing happens when it was taken over meanwhile).
pub async fn release_commit_lease(
    client: &Client,
    batch_id: BatchId,
    fence: i64,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "UPDATE batches SET commit_holder = NULL, commit_lease_until = NULL,
                    commit_pids = NULL, commit_step = NULL
             WHERE id = $1 AND commit_fence = $2",
            &[&batch_id.get(), &fence],
        )
        .await?;
    Ok(())
}

/// A batch's commit as the ledger has it, for the status: the step its holder recorded and the
/// holder's sessions, while a live holder has the lease (`None` otherwise).
pub async fn commit_in_progress(
    client: &Client,
    batch_id: BatchId,
) -> Result<Option<(Option<CommitStep>, Vec<i32>)>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT commit_step, coalesce(commit_pids, '{}') FROM batches
             WHERE id = $1 AND commit_holder IS NOT NULL AND commit_lease_until >= now()",
            &[&batch_id.get()],
        )
        .await?;
    Ok(row.map(|row| {
        (
            row.get::<_, Option<&str>>(0).and_then(CommitStep::parse),
            row.get(1),
        )
    }))
}
