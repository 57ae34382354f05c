//! The uploads this coordinator is feeding right now. A batch stays `receiving` only while an
//! upload feeds it; one whose upload ended without saying so (a handler that could not reach
//! PostgreSQL to record the end, a request dropped mid-way) is found by the sweep — `receiving`
//! in the ledger, not fed here — and ended, so no batch is left `receiving` while its coordinator
//! runs.

use ingest_core::batch::BatchId;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// The ids of the batches whose upload is being read.
#[derive(Debug, Clone, Default)]
pub struct Receiving {
    fed: Arc<Mutex<HashSet<BatchId>>>,
}

impl Receiving {
    /// Notes that an upload feeds `batch_id` until the returned guard is dropped.
    pub fn feed(&self, batch_id: BatchId) -> Feeding {
        self.fed.lock().expect("not poisoned").insert(batch_id);
        Feeding {
            fed: self.fed.clone(),
            batch_id,
        }
    }

    /// True while an upload feeds `batch_id`.
    pub fn is_fed(&self, batch_id: BatchId) -> bool {
        self.fed.lock().expect("not poisoned").contains(&batch_id)
    }

    /// How many uploads are being read.
    pub fn len(&self) -> usize {
        self.fed.lock().expect("not poisoned").len()
    }

    /// True when no upload is being read.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An upload in progress; dropping it (however the handler ends) says the upload ended.
#[derive(Debug)]
pub struct Feeding {
    fed: Arc<Mutex<HashSet<BatchId>>>,
    batch_id: BatchId,
}

impl Drop for Feeding {
    fn drop(&mut self) {
        if let Ok(mut fed) = self.fed.lock() {
            fed.remove(&self.batch_id);
        }
    }
}
