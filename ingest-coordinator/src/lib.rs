//! The ingest coordinator: takes a rates file over HTTP and walks it through
//! `submit → split → publish`, then `commit`, and serves its `status`. Workers (the
//! `ingest-worker` crate) do the `load` in between.
//!
//! The folders show the roles:
//! - [`pipeline`]: the steps the data walks, in order — submit, split (with the body readers,
//!   the rates format and the COPY encoding), publish (with the spool), commit, status;
//! - [`http`]: the API around them — handlers, errors a client can quote, request ids, the
//!   token, answering after an unread body;
//! - [`loops`]: what runs in the background — the commit loop, and the redrive that hands chunks
//!   out again and sweeps uploads nobody feeds.
//!
//! [`state`] is what they all share; [`app`] wires them (and nothing imports it but the binary
//! and the tests); [`config`] reads the settings; [`seed`] loads the reference data.

pub mod app;
pub mod config;
pub mod http;
pub mod loops;
pub mod pipeline;
pub mod seed;
pub mod state;
