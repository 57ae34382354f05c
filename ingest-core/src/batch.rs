//! The states of a batch, shared by the coordinator, the status API and the CLI.
//!
//! ```text
//! receiving ──> loading ──> committing ──> committed
//!     │            │            │
//!     └────────────┴────────────┴──> failed | cancelled
//! ```
//! Transitions happen only in [`crate::ledger`].

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Where a batch is in its life. Stored as text in `batches.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
}

impl BatchState {
    /// Every state, in the order of a batch's life.
    pub const ALL: [BatchState; 6] = [
        BatchState::Receiving,
        BatchState::Loading,
        BatchState::Committing,
        BatchState::Committed,
        BatchState::Failed,
        BatchState::Cancelled,
    ];

    /// The name stored in PostgreSQL and shown in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            BatchState::Receiving => "receiving",
            BatchState::Loading => "loading",
            BatchState::Committing => "committing",
            BatchState::Committed => "committed",
            BatchState::Failed => "failed",
            BatchState::Cancelled => "cancelled",
        }
    }

    /// A batch in a final state never changes again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            BatchState::Committed | BatchState::Failed | BatchState::Cancelled
        )
    }

    /// While a batch is receiving or loading, workers may load its chunks.
    pub fn accepts_chunks(self) -> bool {
        matches!(self, BatchState::Receiving | BatchState::Loading)
    }
}

impl fmt::Display for BatchState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BatchState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        BatchState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| format!("unknown batch state {s:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for state in BatchState::ALL {
            assert_eq!(state.as_str().parse::<BatchState>().unwrap(), state);
        }
        assert!("nope".parse::<BatchState>().is_err());
    }
}
