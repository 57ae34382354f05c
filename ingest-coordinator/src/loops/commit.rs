//! The commit loop: commits every batch whose chunks are all loaded (or whose commit was
//! interrupted, or whose commit lease a stalled peer let run out), every `commit_poll` or when an
//! upload completes. Up to [`COMMITS_AT_ONCE`] commits run at the same time, each in a task of its
//! own, so that a long commit (an index build of minutes) keeps no other batch waiting — least of
//! all one whose coordinator froze while committing it, which this coordinator takes over once
//! the lease is out. A commit that meets an outage is tried again with growing pauses (per
//! batch), and the outage goes into the batch's status — once PostgreSQL takes it, if PostgreSQL
//! was the outage. It also builds the read index of visible batches whose index build was cut off
//! (`INGEST_VISIBLE_BEFORE_INDEX`), one pass at a time beside the commits.

use crate::pipeline::commit::{commit_batch, index_missing, Committed};
use crate::state::AppState;
use ingest_core::batch::BatchId;
use ingest_core::fault::Fault;
use ingest_core::ledger;
use ingest_core::outage::Retries;
use ingest_wire::OutageStep;
use std::collections::{HashMap, HashSet};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

/// Commits one coordinator runs at once. Each holds a session of its own and one per part of its
/// batch (`INGEST_BATCH_PARTS`, 2), well within the pool (`INGEST_DB_POOL`, 16).
pub const COMMITS_AT_ONCE: usize = 3;

/// What one commit task gives back.
type Done = (BatchId, Result<Committed, Fault>);

/// Commits ready batches until `shutdown`, every `commit_poll` or when woken; on shutdown, waits
/// for the commits under way.
pub async fn run(app: AppState, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(app.config.commit_poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut commits = Commits::new(&app);
    let mut rebuild: Option<JoinHandle<()>> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
            _ = app.commit_wakeup.notified() => {}
            Some(done) = commits.tasks.join_next(), if !commits.tasks.is_empty() => {
                if let Ok(done) = done {
                    commits.settle(&app, done).await;
                }
            }
        }
        while let Some(done) = commits.tasks.try_join_next() {
            if let Ok(done) = done {
                commits.settle(&app, done).await;
            }
        }
        if rebuild.as_ref().is_none_or(JoinHandle::is_finished) {
            rebuild = Some(tokio::spawn(rebuild_indexes(app.clone())));
        }
        match ready_batches(&app).await {
            Ok(ready) => commits.start(&app, ready, &shutdown).await,
            Err(fault) => {
                tracing::warn!(%fault, "cannot look for batches to commit; will try again");
            }
        }
    }
    while let Some(done) = commits.tasks.join_next().await {
        if let Ok(done) = done {
            commits.settle(&app, done).await;
        }
    }
    if let Some(rebuild) = rebuild {
        let _ = rebuild.await;
    }
}

/// The commits this coordinator runs, and what it remembers of the ones that met an outage.
struct Commits {
    /// One task a commit under way.
    tasks: JoinSet<Done>,
    /// Their batches.
    running: HashSet<BatchId>,
    /// When each batch whose commit met an outage may be tried again.
    retries: Retries<BatchId>,
    /// Outages not yet in their batch's status (PostgreSQL was the outage): noted once it is
    /// back.
    unnoted: HashMap<BatchId, (u32, Fault)>,
}

impl Commits {
    fn new(app: &AppState) -> Commits {
        Commits {
            tasks: JoinSet::new(),
            running: HashSet::new(),
            retries: Retries::new(app.config.max_pause),
            unnoted: HashMap::new(),
        }
    }

    /// Starts the commit of each `ready` batch that is not under way and is due, up to
    /// [`COMMITS_AT_ONCE`]; forgets what it remembered of batches no longer ready.
    async fn start(&mut self, app: &AppState, ready: Vec<BatchId>, shutdown: &CancellationToken) {
        let running = &self.running;
        self.retries
            .retain(|batch_id| ready.contains(&batch_id) || running.contains(&batch_id));
        self.unnoted
            .retain(|batch_id, _| ready.contains(batch_id) || running.contains(batch_id));
        for batch_id in ready {
            if shutdown.is_cancelled() || self.tasks.len() >= COMMITS_AT_ONCE {
                break;
            }
            if self.running.contains(&batch_id) || !self.retries.is_due(batch_id) {
                continue;
            }
            if let Some((attempt, fault)) = self.unnoted.remove(&batch_id) {
                self.note(app, batch_id, attempt, fault).await;
            }
            self.running.insert(batch_id);
            let app = app.clone();
            self.tasks
                .spawn(async move { (batch_id, commit_batch(&app, batch_id).await) });
        }
    }

    /// Takes the outcome of one commit: a success forgets its retries, an outage schedules the
    /// next try and goes into the batch's status.
    async fn settle(&mut self, app: &AppState, (batch_id, outcome): Done) {
        self.running.remove(&batch_id);
        match outcome {
            Ok(_) => self.retries.forget(batch_id),
            Err(fault) => {
                let attempt = self.retries.failed(batch_id);
                tracing::warn!(%batch_id, attempt, %fault, "commit hit an outage; will try again");
                self.note(app, batch_id, attempt, fault).await;
            }
        }
    }

    /// Notes the outage in the batch's status, or remembers it for later when PostgreSQL does
    /// not take it now.
    async fn note(&mut self, app: &AppState, batch_id: BatchId, attempt: u32, fault: Fault) {
        if !ledger::note_outage(&app.pool, batch_id, OutageStep::Commit, attempt, &fault).await {
            self.unnoted.insert(batch_id, (attempt, fault));
        }
    }
}

/// One pass of [`index_missing`], logged.
async fn rebuild_indexes(app: AppState) {
    match index_missing(&app).await {
        Ok(0) => {}
        Ok(built) => tracing::info!(built, "built the missing indexes of visible batches"),
        Err(fault) => tracing::warn!(%fault, "cannot look for visible batches without an index"),
    }
}

/// Batches ready to commit, or whose commit was interrupted.
async fn ready_batches(app: &AppState) -> Result<Vec<BatchId>, Fault> {
    let client = app.pool.get().await?;
    Ok(ledger::batches_to_commit(&client).await?)
}
