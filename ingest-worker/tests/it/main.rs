//! The worker's integration tests: the real `ingest-worker` binary against a real coordinator
//! (from `ingest-testkit`).

mod metrics;
mod process;
