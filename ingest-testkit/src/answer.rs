//! What the coordinator answered to a request that returns a batch: its status, an error body,
//! or something else (kept as JSON, so a test can say what it got).

use ingest_wire::{BatchId, BatchStatus, ErrorBody, ErrorDetail};
use serde_json::Value;
use std::fmt;

/// An answer, read as the wire types.
#[derive(Clone)]
pub enum Answer {
    /// A batch status.
    Batch(Box<BatchStatus>),
    /// `{"error": {...}}`.
    Error(ErrorDetail),
    /// Neither (the JSON as it came, `null` for no JSON).
    Other(Value),
}

impl Answer {
    /// Reads a JSON body.
    pub fn read(body: Value) -> Answer {
        if let Ok(ErrorBody { error }) = serde_json::from_value::<ErrorBody>(body.clone()) {
            return Answer::Error(error);
        }
        match serde_json::from_value::<BatchStatus>(body.clone()) {
            Ok(status) => Answer::Batch(Box::new(status)),
            Err(_) => Answer::Other(body),
        }
    }

    /// The batch status (panics, showing the answer, when it is not one).
    pub fn batch(&self) -> &BatchStatus {
        match self {
            Answer::Batch(status) => status,
            other => panic!("expected a batch status, got {other:?}"),
        }
    }

    /// The batch's id.
    pub fn id(&self) -> BatchId {
        self.batch().id
    }

    /// The error (panics, showing the answer, when it is not one).
    pub fn error(&self) -> &ErrorDetail {
        match self {
            Answer::Error(error) => error,
            other => panic!("expected an error body, got {other:?}"),
        }
    }
}

impl fmt::Debug for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Answer::Batch(status) => write!(f, "{status:#?}"),
            Answer::Error(error) => write!(f, "{error:#?}"),
            Answer::Other(value) => write!(f, "{value:#}"),
        }
    }
}
