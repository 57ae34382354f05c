//! The steps the data walks, in order:
//! `submit → split → publish → (workers load) → commit → status`.
//!
//! - [`submit`]: opens a batch and streams the body through split and publish;
//! - [`body`]: the body as a blocking `Read` (counted, hashed, limited, gunzipped);
//! - [`split`]: cuts lines into chunks, validates them ([`rates`]) and encodes them
//!   ([`copy_binary`]) on blocking threads and rayon;
//! - [`publish`]: records chunks with their copies and publishes them with confirms;
//! - [`receiving`]: the uploads being read now;
//! - [`commit`]: makes a fully loaded batch visible at once, under its commit lease;
//! - [`merge`]: folds committed batches into fewer partitions, each merge in one transaction;
//! - [`retract`]: takes a committed batch back out of `prices` on request, in one transaction;
//! - [`status`]: what a batch looks like from outside, read from the ledger.

pub mod body;
pub mod commit;
pub mod copy_binary;
pub mod merge;
pub mod publish;
pub mod rates;
pub mod receiving;
pub mod retract;
pub mod split;
pub mod status;
pub mod submit;
