//! What runs in the background, each until the coordinator stops (which waits for them):
//! - [`presence`]: the heartbeat that tells the other coordinators this one is alive;
//! - [`commit`]: commits batches whose chunks are all loaded, retrying outages;
//! - [`redrive`]: hands chunks out again (refused, damaged, stranded, dead-lettered, held by a
//!   worker that is gone), ends uploads nobody feeds, drops what ended batches left;
//! - [`merge`]: keeps the number of partitions of `prices_by_batch` within its bound.

pub mod commit;
pub mod merge;
pub mod presence;
pub mod redrive;
