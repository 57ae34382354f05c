//! The ingest coordinator: takes a rates file over HTTP and walks it through
//! `submit → split → publish`, then `commit`, and serves its `status`. Workers (the
//! `ingest-worker` crate) do the `load` in between.
//!
//! - [`submit`]: `POST /batches`, streams the body through split and publish;
//! - [`split`]: cuts lines into chunks, validates them ([`rates`]) and encodes them
//!   ([`copy_binary`]) on blocking threads and rayon;
//! - [`publish`]: spools, records and publishes chunks with confirms ([`spool`]);
//! - [`commit`]: makes a fully loaded batch visible at once;
//! - [`redrive`]: hands failed or lost chunks out again, and ends uploads nobody feeds
//!   ([`receiving`]);
//! - [`status`], [`cancel`]: the rest of the API; [`auth`] protects what mutates;
//!   [`api_error`] and [`request_id`]: errors a client can quote and an operator can find;
//! - [`unread_body`]: a refused request is answered after its unread body, not with a reset;
//! - [`seed`]: loads the reference data; [`app`] wires it all; [`config`] reads the settings.

pub mod api_error;
pub mod app;
pub mod auth;
pub mod cancel;
pub mod commit;
pub mod config;
pub mod copy_binary;
pub mod publish;
pub mod rates;
pub mod receiving;
pub mod redrive;
pub mod request_id;
pub mod seed;
pub mod split;
pub mod spool;
pub mod status;
pub mod submit;
pub mod unread_body;
