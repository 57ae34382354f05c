//! What runs in the background, each until the coordinator stops (which waits for them):
//! - [`commit`]: commits batches whose chunks are all loaded, retrying outages;
//! - [`redrive`]: hands stranded chunks out again and ends uploads nobody feeds;
//! - [`merge`]: keeps the number of partitions of `prices_by_batch` within its bound.

pub mod commit;
pub mod merge;
pub mod redrive;
