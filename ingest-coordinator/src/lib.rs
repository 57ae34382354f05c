//! The ingest coordinator: takes a rates file over HTTP and walks it through
//! `submit → split → publish`, then `commit`, and serves its `status`. Workers (the
//! `ingest-worker` crate) do the `load` in between.
//!
//! The folders show the roles:
//! - [`pipeline`]: the steps the data walks, in order — submit, split (with the body readers,
//!   the rates format and the COPY encoding), publish, commit (with its lease), status — and
//!   what acts on committed batches: merge (folding partitions) and retract;
//! - [`http`]: the API around them — handlers, errors a client can quote, request ids, the
//!   token, answering after an unread body;
//! - [`loops`]: what runs in the background — the heartbeat, the commit loop, the redrive that
//!   hands chunks out again and sweeps uploads nobody feeds, the merge loop that keeps the
//!   partitions of `prices_by_batch` within their bound.
//!
//! Any number of coordinators run side by side on one database and one queue: none keeps
//! anything a batch needs on its own host ([`presence`] is how they see each other).
//!
//! [`state`] is what they all share; [`app`] wires them (and nothing imports it but the binary
//! and the tests); [`config`] reads the settings; [`seed`] loads the reference data.

pub mod app;
pub mod config;
pub mod http;
pub mod loops;
pub mod pipeline;
pub mod presence;
pub mod seed;
pub mod state;
