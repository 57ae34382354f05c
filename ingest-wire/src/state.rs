//! The states of a batch.
//!
//! ```text
//! receiving ──> loading ──> committing ──> committed ──> retracted
//!     │            │            │
//!     └────────────┴────────────┴──> failed | cancelled
//! ```
//! `committed` is final for the pipeline (nothing moves it on by itself); only a retract on
//! request takes a committed batch's rows out of `prices` again, into `retracted`, for good.
//! Transitions happen only in `ingest-core::ledger`.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Where a batch is in its life. Stored as text in `batches.state`, shown as text in the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum BatchState {
    /// The upload is streaming in; chunks are published as they are cut.
    Receiving,
    /// The whole file is in and every chunk is known; workers are loading.
    Loading,
    /// Every chunk is loaded; the batch is being indexed and attached to `prices`.
    Committing,
    /// Every row is visible in `prices`.
    Committed,
    /// Nothing of the batch is visible; `error` says why.
    Failed,
    /// Stopped on request; nothing of the batch is visible.
    Cancelled,
    /// Committed, then taken out of `prices` on request (`POST /batches/{id}/retract`): none of
    /// its rows is visible any more.
    Retracted,
}

impl BatchState {
    /// Every state, in the order of a batch's life.
    pub const ALL: [BatchState; 7] = [
        BatchState::Receiving,
        BatchState::Loading,
        BatchState::Committing,
        BatchState::Committed,
        BatchState::Failed,
        BatchState::Cancelled,
        BatchState::Retracted,
    ];

    /// The states a batch can still leave.
    pub const OPEN: [BatchState; 3] = [
        BatchState::Receiving,
        BatchState::Loading,
        BatchState::Committing,
    ];

    /// The states in which workers may load a batch's chunks.
    pub const TAKING_CHUNKS: [BatchState; 2] = [BatchState::Receiving, BatchState::Loading];

    /// The name stored in PostgreSQL and shown in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            BatchState::Receiving => "receiving",
            BatchState::Loading => "loading",
            BatchState::Committing => "committing",
            BatchState::Committed => "committed",
            BatchState::Failed => "failed",
            BatchState::Cancelled => "cancelled",
            BatchState::Retracted => "retracted",
        }
    }

    /// A batch in a final state never changes again by itself (a committed batch only by a
    /// retract on request).
    pub fn is_final(self) -> bool {
        !BatchState::OPEN.contains(&self)
    }

    /// While a batch is receiving or loading, workers may load its chunks.
    pub fn accepts_chunks(self) -> bool {
        BatchState::TAKING_CHUNKS.contains(&self)
    }
}

impl fmt::Display for BatchState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state name that is not one of [`BatchState::ALL`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownState(pub String);

impl fmt::Display for UnknownState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown batch state {:?}", self.0)
    }
}

impl std::error::Error for UnknownState {}

impl FromStr for BatchState {
    type Err = UnknownState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        BatchState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for state in BatchState::ALL {
            assert_eq!(state.as_str().parse::<BatchState>().unwrap(), state);
            assert_eq!(
                serde_json::to_value(state).unwrap(),
                serde_json::json!(state.as_str())
            );
        }
        assert!("nope".parse::<BatchState>().is_err());
    }

    #[test]
    fn open_and_final_split_the_states() {
        for state in BatchState::ALL {
            assert_eq!(BatchState::OPEN.contains(&state), !state.is_final());
        }
        assert!(BatchState::Retracted.is_final());
        assert!(!BatchState::Retracted.accepts_chunks());
        assert_eq!(
            serde_json::to_value(BatchState::Retracted).unwrap(),
            serde_json::json!("retracted")
        );
    }
}
