//! What a batch looks like from outside: `GET /batches/{id}`, the pages of `GET /batches`, and
//! liveness and readiness.

use crate::{BatchId, BatchState, LineNumber};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;

/// A batch's progress, as `GET /batches/{id}` returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BatchStatus {
    /// The batch id.
    pub id: BatchId,
    /// Where the batch is.
    pub state: BatchState,
    /// Where to poll this status.
    pub status_url: String,
    /// Rows in the file, once the upload is complete.
    pub rows_total: Option<u64>,
    /// Rows staged by workers so far (all rows once committed).
    pub rows_loaded: u64,
    /// Chunks by state.
    pub chunks: ChunkCounts,
    /// Deliveries of a chunk to a worker beyond the first, over all chunks.
    pub retries: u64,
    /// Why the batch failed or was cancelled.
    pub error: Option<String>,
    /// Input errors found.
    pub error_count: u64,
    /// The first input errors, by line.
    pub errors: Vec<RowError>,
    /// Bytes received.
    pub bytes_received: u64,
    /// SHA-256 of the body as received, hex.
    pub content_sha256: Option<String>,
    /// Earlier batches with byte-identical content.
    pub duplicate_of: Vec<BatchId>,
    /// When the submit began.
    pub created_at: DateTime<Utc>,
    /// When the first chunk was published.
    pub started_at: Option<DateTime<Utc>>,
    /// When the upload was complete.
    pub received_at: Option<DateTime<Utc>>,
    /// When the batch became final (committed, failed or cancelled).
    pub finished_at: Option<DateTime<Utc>>,
    /// When a committed batch was retracted (its rows taken out of `prices`).
    #[serde(default)]
    pub retracted_at: Option<DateTime<Utc>>,
    /// The batch this one was submitted to replace (`Replaces:`): its commit retracts that one.
    #[serde(default)]
    pub replaces: Option<BatchId>,
    /// The batch that replaced this one (it is `retracted` since that batch's commit).
    #[serde(default)]
    pub replaced_by: Option<BatchId>,
    /// Seconds the commit took (index and attach).
    pub commit_seconds: Option<f64>,
    /// Rows loaded per second since the start.
    pub rows_per_second: Option<f64>,
    /// Seconds left at the current rate, while the batch is open.
    pub eta_seconds: Option<f64>,
    /// The last outage a step of the batch rode through (a worker loading it, or the commit,
    /// tries again meanwhile).
    pub outage: Option<Outage>,
    /// Where the commit is, while the batch is `committing` and a coordinator works on it.
    #[serde(default)]
    pub commit: Option<CommitProgress>,
    /// Once the batch is committed: whether its read index is built. Always true by default;
    /// with `INGEST_VISIBLE_BEFORE_INDEX` a batch is readable before its index is (reads of it
    /// scan its rows until then).
    #[serde(default)]
    pub indexed: Option<bool>,
}

/// The steps of a commit, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum CommitStep {
    /// Building the read index of the batch's parts (PostgreSQL reports its phase and progress).
    Index,
    /// Validating both foreign keys of the batch's parts, in bulk, all parts at once.
    ForeignKeys,
    /// Attaching the batch to `prices` (its keys are validated already): the batch becomes
    /// visible.
    Attach,
}

impl CommitStep {
    /// Every step, in order.
    pub const ALL: [CommitStep; 3] = [
        CommitStep::Index,
        CommitStep::ForeignKeys,
        CommitStep::Attach,
    ];

    /// The name shown in the API and stored in the ledger.
    pub fn as_str(self) -> &'static str {
        match self {
            CommitStep::Index => "index",
            CommitStep::ForeignKeys => "foreign_keys",
            CommitStep::Attach => "attach",
        }
    }

    /// The step of a name (`None` for a name that is not a step).
    pub fn parse(name: &str) -> Option<CommitStep> {
        CommitStep::ALL
            .into_iter()
            .find(|step| step.as_str() == name)
    }
}

/// A commit in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CommitProgress {
    /// The step.
    pub step: CommitStep,
    /// PostgreSQL's own words for where the step is (e.g. `building index: scanning table`).
    pub phase: String,
    /// Work done in this phase (blocks or tuples), when PostgreSQL reports it.
    pub done: Option<u64>,
    /// Work in this phase in all, when PostgreSQL reports it.
    pub total: Option<u64>,
}

impl BatchStatus {
    /// A batch in a final state never changes again.
    pub fn is_final(&self) -> bool {
        self.state.is_final()
    }
}

/// Chunk counts by state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChunkCounts {
    /// Chunks cut so far (all of them once the batch is `loading`).
    pub total: u64,
    /// Recorded, waiting for RabbitMQ's confirm.
    pub pending: u64,
    /// Durably queued on RabbitMQ.
    pub queued: u64,
    /// Held by a worker.
    pub loading: u64,
    /// Rows staged.
    pub loaded: u64,
    /// Last attempt refused (or attempts spent: `dead`).
    pub failed: u64,
}

/// The steps of a batch that ride through an outage (and note it in the batch's status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum OutageStep {
    /// A worker loading one of the batch's chunks.
    Load,
    /// The coordinator committing the batch.
    Commit,
}

impl OutageStep {
    /// Every step.
    pub const ALL: [OutageStep; 2] = [OutageStep::Load, OutageStep::Commit];

    /// The name shown in the API and stored in the ledger.
    pub fn as_str(self) -> &'static str {
        match self {
            OutageStep::Load => "load",
            OutageStep::Commit => "commit",
        }
    }
}

impl fmt::Display for OutageStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A step equals its name (`outage.step == "commit"`).
impl PartialEq<&str> for OutageStep {
    fn eq(&self, name: &&str) -> bool {
        self.as_str() == *name
    }
}

/// A name that is not an [`OutageStep`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownStep(pub String);

impl fmt::Display for UnknownStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown outage step {:?}", self.0)
    }
}

impl std::error::Error for UnknownStep {}

impl std::str::FromStr for OutageStep {
    type Err = UnknownStep;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        OutageStep::ALL
            .into_iter()
            .find(|step| step.as_str() == s)
            .ok_or_else(|| UnknownStep(s.to_string()))
    }
}

/// An outage a batch's step met: it is tried again, and the batch does not fail for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Outage {
    /// The step that met it.
    pub step: OutageStep,
    /// Which attempt of the step met it (from 1).
    pub attempt: u32,
    /// What went wrong.
    pub reason: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// One problem with a submitted file, as shown to the person who sent it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RowError {
    /// The line in the file, as an editor shows it (the header is line 1).
    pub line: LineNumber,
    /// The column's name (or `column N` when the header did not name it); `None` for the line.
    pub column: Option<String>,
    /// The offending value, shortened.
    pub value: Option<String>,
    /// What is wrong, in words a person can act on.
    pub message: String,
}

impl RowError {
    /// An error about a whole line.
    pub fn line(line: u64, message: impl Into<String>) -> RowError {
        RowError {
            line: LineNumber(line),
            column: None,
            value: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for RowError {
    /// `line L, column C: message (value "V")`, leaving out what is not known.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}", self.line)?;
        if let Some(column) = &self.column {
            write!(f, ", column {column}")?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(value) = &self.value {
            // Debug quotes the value and escapes control characters a terminal would act on.
            write!(f, " (value {value:?})")?;
        }
        Ok(())
    }
}

/// A page of `GET /batches`, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BatchPage {
    /// The batches.
    pub batches: Vec<BatchStatus>,
    /// The URL of the next page, if there is one.
    pub next: Option<String>,
}

/// What `GET /healthz` says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Alive {
    /// Always `ok`: the process answers.
    pub status: String,
}

impl Alive {
    /// The only answer: `ok`.
    pub fn ok() -> Alive {
        Alive {
            status: "ok".into(),
        }
    }
}

/// What the coordinator's `GET /readyz` says: each dependency, ready or not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Readiness {
    /// PostgreSQL answers.
    pub postgres: bool,
    /// The RabbitMQ connection is open.
    pub rabbitmq: bool,
    /// The RabbitMQ node (`host:port`, one of those `AMQP_URL` lists) the connection is on, or
    /// was on last.
    pub rabbitmq_node: String,
}

impl Readiness {
    /// Every dependency is there.
    pub fn is_ready(&self) -> bool {
        self.postgres && self.rabbitmq
    }
}

/// What a worker's `GET /readyz` says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerReadiness {
    /// The worker holds a consumer on the chunk queue.
    pub consuming: bool,
    /// PostgreSQL answers.
    pub postgres: bool,
    /// The RabbitMQ node (`host:port`, one of those `AMQP_URL` lists) the worker's connection
    /// is on, or was on last.
    pub rabbitmq_node: String,
}

impl WorkerReadiness {
    /// Ready to load chunks.
    pub fn is_ready(&self) -> bool {
        self.consuming && self.postgres
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_error_reads_as_a_sentence() {
        let error = RowError {
            line: LineNumber(3),
            column: Some("dest_code".into()),
            value: Some("XX\u{1b}".into()),
            message: "unknown port code".into(),
        };
        assert_eq!(
            error.to_string(),
            "line 3, column dest_code: unknown port code (value \"XX\\u{1b}\")"
        );
        assert_eq!(
            RowError::line(1, "empty file").to_string(),
            "line 1: empty file"
        );
    }
}
