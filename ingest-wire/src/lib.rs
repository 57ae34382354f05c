//! The wire contract of the ingest API: what `GET /batches/{id}`, `GET /batches`, the
//! coordinator's and the worker's `/readyz` and every error answer look like, and the header
//! names — one definition that the coordinator (and the worker, for its `/readyz`) serialises,
//! the CLI and the tests deserialise, and the OpenAPI description that `GET /openapi.json` serves
//! is generated from (`ingest-coordinator/src/http/openapi.rs`, through this crate's `openapi`
//! feature, which derives utoipa's schemas). Like meilisearch keeps `meilisearch-types` apart
//! from its scheduler, this crate holds no logic and depends on serde and chrono only (utoipa
//! only with `openapi`, which the coordinator turns on), so a client needs nothing else.

mod error;
mod ids;
mod state;
mod status;

pub use error::{ErrorBody, ErrorCode, ErrorDetail};
pub use ids::{BatchId, IdempotencyKey, InvalidKey, LineNumber};
pub use state::{BatchState, UnknownState};
pub use status::{
    Alive, BatchPage, BatchStatus, ChunkCounts, CommitProgress, CommitStep, Outage, OutageStep,
    Readiness, RowError, UnknownStep, WorkerReadiness,
};

/// Header names of the API.
pub mod headers {
    /// Makes a retried submit safe: a key a batch holds returns that batch.
    pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
    /// On a submit: the id of a committed batch that this one replaces when it commits.
    pub const REPLACES: &str = "replaces";
    /// The id of a request, on every answer (and in an error body's `request_id`).
    pub const REQUEST_ID: &str = "x-request-id";
}
