//! A batch as the ledger knows it: its id and its states — the same types the API shows
//! (defined once, in `ingest-wire`). Transitions happen only in [`crate::ledger`].

pub use ingest_wire::{BatchId, BatchState, UnknownState};
