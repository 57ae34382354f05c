//! The coordinators that run, as their peers see them: each one records itself at start, beats
//! every few seconds (`seen_at`) and leaves when it stops. A coordinator not seen for its own
//! lease is gone — killed, frozen, or cut off from PostgreSQL — and only then do its peers end
//! the uploads it fed. So starting, restarting or stopping one coordinator never ends another's
//! upload, and an upload whose coordinator vanished is ended within that coordinator's lease.

use super::seconds;
use crate::batch::{BatchId, BatchState};
use std::time::Duration;
use tokio_postgres::Client;

/// Who a coordinator is, as it records itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coordinator<'a> {
    /// Its id, unique to this run of the process.
    pub id: &'a str,
    /// Its host name.
    pub host: &'a str,
    /// Its process id.
    pub pid: u32,
    /// The address its API listens on.
    pub listen: &'a str,
    /// How long it may go unseen before its peers take over what it held.
    pub lease: Duration,
}

/// Records the coordinator, or notes that it was seen now (its heartbeat).
pub async fn beat(client: &Client, me: &Coordinator<'_>) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO coordinators (id, host, pid, listen, lease_seconds)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (id) DO UPDATE SET seen_at = now(), lease_seconds = $5",
            &[
                &me.id,
                &me.host,
                &i32::try_from(me.pid).unwrap_or(i32::MAX),
                &me.listen,
                &seconds(me.lease),
            ],
        )
        .await?;
    Ok(())
}

/// The coordinator stops, its last request answered: its peers may take over at once.
pub async fn leave(client: &Client, id: &str) -> Result<(), tokio_postgres::Error> {
    client
        .execute("DELETE FROM coordinators WHERE id = $1", &[&id])
        .await?;
    Ok(())
}

/// How many coordinators are alive: seen within their lease.
pub async fn live_coordinators(client: &Client) -> Result<u64, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT count(*) FROM coordinators
             WHERE seen_at + make_interval(secs => lease_seconds) >= now()",
            &[],
        )
        .await?;
    Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
}

/// Forgets coordinators not seen for `after` (a day, say): long gone, and nothing refers to them
/// but the history of the batches they received.
pub async fn forget_gone(client: &Client, after: Duration) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            "DELETE FROM coordinators WHERE seen_at < now() - make_interval(secs => $1)",
            &[&seconds(after)],
        )
        .await
}

/// The condition "the coordinator `receiver` names is gone" (not recorded, or not seen for its
/// lease), on a `batches` row `b`.
const RECEIVER_GONE: &str = "NOT EXISTS (SELECT 1 FROM coordinators c WHERE c.id = b.receiver
                   AND c.seen_at + make_interval(secs => c.lease_seconds) >= now())";

/// Batches `receiving` whose upload no coordinator can be feeding: their receiver is gone (or
/// none is recorded: a batch opened before receivers were), created more than `older_than` ago.
/// `me` is left out: this coordinator knows its own uploads ([`own_receiving_batches`]).
pub async fn orphaned_uploads(
    client: &Client,
    me: &str,
    older_than: Duration,
) -> Result<Vec<BatchId>, tokio_postgres::Error> {
    let rows = client
        .query(
            &format!(
                "SELECT b.id FROM batches b
                 WHERE b.state = $1 AND b.receiver IS DISTINCT FROM $2
                   AND b.created_at < now() - make_interval(secs => $3)
                   AND {RECEIVER_GONE}
                 ORDER BY b.id"
            ),
            &[&BatchState::Receiving.as_str(), &me, &seconds(older_than)],
        )
        .await?;
    Ok(rows.iter().map(|row| BatchId(row.get(0))).collect())
}

/// Batches `receiving` with this coordinator as their receiver, created more than `older_than`
/// ago: the sweep ends those that no upload of this process feeds any more.
pub async fn own_receiving_batches(
    client: &Client,
    me: &str,
    older_than: Duration,
) -> Result<Vec<BatchId>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT id FROM batches
             WHERE state = $1 AND receiver = $2
               AND created_at < now() - make_interval(secs => $3)
             ORDER BY id",
            &[&BatchState::Receiving.as_str(), &me, &seconds(older_than)],
        )
        .await?;
    Ok(rows.iter().map(|row| BatchId(row.get(0))).collect())
}

/// Who feeds a batch's upload, as far as the ledger knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Receiver {
    /// This coordinator (`me`).
    Me,
    /// Another coordinator that is alive.
    Peer(String),
    /// Nobody alive: the recorded receiver is gone, or none is recorded.
    Gone,
}

/// Who feeds the upload of `batch_id` (meaningful while it is `receiving`).
pub async fn receiver_of(
    client: &Client,
    batch_id: BatchId,
    me: &str,
) -> Result<Receiver, tokio_postgres::Error> {
    let row = client
        .query_opt(
            &format!("SELECT b.receiver, {RECEIVER_GONE} FROM batches b WHERE b.id = $1"),
            &[&batch_id.get()],
        )
        .await?;
    Ok(match row {
        Some(row) => match row.get::<_, Option<String>>(0) {
            Some(receiver) if receiver == me => Receiver::Me,
            Some(receiver) if !row.get::<_, bool>(1) => Receiver::Peer(receiver),
            _ => Receiver::Gone,
        },
        None => Receiver::Gone,
    })
}
