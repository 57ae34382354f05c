//! The commit lease as this coordinator holds it: one value that owns the lease's sessions — the
//! one that took it (the attach runs there) and one per part — names them for the commit,
//! records each in the ledger, renews the lease in the background while the commit works, and
//! gives the sessions back to the pool when it is released, or closes them when anything went
//! wrong. The ledger's side (take, renew, fence) is `ingest_core::ledger::commit_lease`.
//!
//! A coordinator that freezes or is cut off stops renewing; after a lease its peer takes the
//! lease over and ends this coordinator's sessions, named `ingest commit <id>`, with their
//! statements and locks. Should this coordinator wake up, its renewal finds the fence moved on
//! ([`CommitLease::is_lost`]) and every write it tries is refused by the fence: it does nothing
//! twice.

use crate::state::AppState;
use deadpool_postgres::{Object, Pool};
use ingest_core::batch::BatchId;
use ingest_core::fault::Fault;
use ingest_core::ledger::{self, commit_session_name, Take};
use ingest_wire::CommitStep;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

/// How soon PostgreSQL checks that a committing coordinator is still there during a long
/// statement (an index build), so that the backends of a killed coordinator end quickly.
const CLIENT_CHECK: &str = "SET client_connection_check_interval = '1s'";

/// How long a take-over waits for each old session to end.
const END_WAIT: Duration = Duration::from_secs(5);

/// What asking for a batch's commit lease gave.
pub enum Taking {
    /// This coordinator holds it now.
    Taken(Box<CommitLease>),
    /// A live coordinator holds it: try later.
    Busy,
    /// The batch is neither committing nor committed.
    NotCommitting,
}

/// A batch's commit lease, held by this coordinator.
pub struct CommitLease {
    batch_id: BatchId,
    fence: i64,
    pool: Pool,
    /// The session that took the lease; `None` once released.
    main: Option<Object>,
    /// The furthest step recorded so far (parts reach steps one after another).
    reached: std::sync::Mutex<Option<CommitStep>>,
    /// Fired when the lease is no longer this coordinator's.
    lost: CancellationToken,
    /// Stops the renewal.
    done: CancellationToken,
    renewal: Option<JoinHandle<()>>,
}

impl CommitLease {
    /// Takes the commit lease of `batch_id` for this coordinator, taking over one that expired
    /// (its holder's sessions ended first).
    pub async fn take(app: &AppState, batch_id: BatchId) -> Result<Taking, Fault> {
        let main = app.pool.get().await?;
        // Named before the take records this session as the lease's first.
        main.batch_execute(&format!(
            "{CLIENT_CHECK}; SET application_name = '{}'",
            commit_session_name(batch_id)
        ))
        .await?;
        let lease = app.presence.lease();
        let taken =
            ledger::take_commit_lease(&main, batch_id, app.presence.id(), lease, END_WAIT).await;
        let fence = match taken {
            Ok(Take::Taken(fence)) => fence,
            Ok(other) => {
                give_back(main).await;
                return Ok(match other {
                    Take::Held(holder) => {
                        tracing::debug!(%batch_id, %holder, "another coordinator holds the commit lease");
                        Taking::Busy
                    }
                    _ => Taking::NotCommitting,
                });
            }
            Err(error) => {
                drop(Object::take(main));
                return Err(error.into());
            }
        };
        let lost = CancellationToken::new();
        let done = CancellationToken::new();
        let renewal = tokio::spawn(renew(
            app.pool.clone(),
            batch_id,
            fence,
            lease,
            lost.clone(),
            done.clone(),
        ));
        Ok(Taking::Taken(Box::new(CommitLease {
            batch_id,
            fence,
            pool: app.pool.clone(),
            main: Some(main),
            reached: std::sync::Mutex::new(None),
            lost,
            done,
            renewal: Some(renewal),
        })))
    }

    /// The fence the lease was taken with: the commit's own writes name it.
    pub fn fence(&self) -> i64 {
        self.fence
    }

    /// True once the lease is no longer this coordinator's (taken over, or not renewed for a
    /// whole lease): stop, and change nothing more.
    pub fn is_lost(&self) -> bool {
        self.lost.is_cancelled()
    }

    /// The session that took the lease.
    pub fn client(&self) -> &Client {
        self.main.as_ref().expect("held until released")
    }

    /// The session that took the lease, to open a transaction on.
    pub fn client_mut(&mut self) -> &mut Client {
        self.main.as_mut().expect("held until released")
    }

    /// An error to return when the lease was lost.
    fn lost_fault(&self) -> Fault {
        Fault::outage(format!(
            "the commit lease of batch {} was taken over by another coordinator",
            self.batch_id
        ))
    }

    /// Records where the commit is (shown in the status).
    pub async fn step(&self, step: CommitStep) -> Result<(), Fault> {
        *self.reached.lock().expect("not poisoned") = Some(step);
        self.record(step).await
    }

    /// Records `step` when it is further than any step recorded so far: the first part of a
    /// batch to reach a step moves the commit there.
    pub async fn reach(&self, step: CommitStep) -> Result<(), Fault> {
        let further = {
            let mut reached = self.reached.lock().expect("not poisoned");
            let order = |step: CommitStep| CommitStep::ALL.iter().position(|s| *s == step);
            let further = reached.is_none_or(|done| order(step) > order(done));
            if further {
                *reached = Some(step);
            }
            further
        };
        if further {
            self.record(step).await?;
        }
        Ok(())
    }

    /// Writes `step` to the ledger under the lease's fence.
    async fn record(&self, step: CommitStep) -> Result<(), Fault> {
        if !ledger::record_commit_step(self.client(), self.batch_id, self.fence, step).await? {
            self.lost.cancel();
            return Err(self.lost_fault());
        }
        Ok(())
    }

    /// One more session of the lease, from the pool: named for the commit and recorded in the
    /// ledger, so that a take-over ends it too.
    pub async fn session(&self) -> Result<LeaseSession, Fault> {
        if self.is_lost() {
            return Err(self.lost_fault());
        }
        let client = self.pool.get().await?;
        let session = LeaseSession {
            client: Some(client),
        };
        session
            .client()
            .batch_execute(&format!(
                "{CLIENT_CHECK}; SET application_name = '{}'",
                commit_session_name(self.batch_id)
            ))
            .await?;
        if !ledger::join_commit_lease(session.client(), self.batch_id, self.fence).await? {
            self.lost.cancel();
            return Err(self.lost_fault());
        }
        Ok(session)
    }

    /// Gives the lease up and its first session back to the pool (closed instead when the lease
    /// was lost or the session is in doubt).
    pub async fn release(mut self) {
        self.done.cancel();
        if let Some(renewal) = self.renewal.take() {
            let _ = renewal.await;
        }
        let Some(main) = self.main.take() else {
            return;
        };
        if self.lost.is_cancelled() {
            drop(Object::take(main));
            return;
        }
        match ledger::release_commit_lease(&main, self.batch_id, self.fence).await {
            Ok(()) => give_back(main).await,
            // The lease runs out by itself; this coordinator's next attempt takes it over.
            Err(_) => drop(Object::take(main)),
        }
    }
}

impl Drop for CommitLease {
    fn drop(&mut self) {
        self.done.cancel();
        // Not released (a panic, a dropped future): the session is in doubt, close it; the lease
        // runs out by itself.
        if let Some(main) = self.main.take() {
            drop(Object::take(main));
        }
    }
}

/// A session of the lease beside its first one (a part's index or keys).
pub struct LeaseSession {
    client: Option<Object>,
}

impl LeaseSession {
    /// The session.
    pub fn client(&self) -> &Client {
        self.client.as_ref().expect("held until finished")
    }

    /// Gives the session back to the pool, its name reset (closed if that fails).
    pub async fn finish(mut self) {
        if let Some(client) = self.client.take() {
            give_back(client).await;
        }
    }
}

impl Drop for LeaseSession {
    /// Not finished: the session may be in the middle of something, or changed in ways the pool
    /// must not see (a lock timeout turned off for an index build). Close it.
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            drop(Object::take(client));
        }
    }
}

/// Resets a session's name and returns it to the pool; closes it when that fails.
async fn give_back(client: Object) {
    if client
        .batch_execute("RESET application_name")
        .await
        .is_err()
    {
        drop(Object::take(client));
    }
}

/// Renews the lease every third of it until `done`; fires `lost` when the ledger says the lease
/// is another's, or when no renewal got through for a whole lease (a peer may have taken it).
async fn renew(
    pool: Pool,
    batch_id: BatchId,
    fence: i64,
    lease: Duration,
    lost: CancellationToken,
    done: CancellationToken,
) {
    let mut tick = tokio::time::interval(lease / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut renewed = Instant::now();
    loop {
        tokio::select! {
            _ = done.cancelled() => return,
            _ = tick.tick() => {}
        }
        let result = match pool.get().await {
            Ok(client) => ledger::renew_commit_lease(&client, batch_id, fence, lease)
                .await
                .map_err(Fault::from),
            Err(error) => Err(Fault::from(error)),
        };
        match result {
            Ok(true) => renewed = Instant::now(),
            Ok(false) => {
                tracing::warn!(%batch_id, "the commit lease was taken over; this coordinator stops its commit");
                lost.cancel();
                return;
            }
            Err(fault) if renewed.elapsed() >= lease => {
                tracing::warn!(%batch_id, %fault, "the commit lease could not be renewed for a whole lease; stopping");
                lost.cancel();
                return;
            }
            Err(fault) => {
                tracing::info!(%batch_id, %fault, "commit lease not renewed yet; will try again")
            }
        }
    }
}
