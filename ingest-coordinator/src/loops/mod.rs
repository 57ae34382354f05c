//! What runs in the background, each until the coordinator stops (which waits for them):
//! - [`commit`]: commits batches whose chunks are all loaded, retrying outages;
//! - [`redrive`]: hands stranded chunks out again and ends uploads nobody feeds.

pub mod commit;
pub mod redrive;
