//! The ledger: every batch and chunk state lives in PostgreSQL, and every change of state goes
//! through a function in this folder. Each transition is one guarded `UPDATE … WHERE state = ANY
//! (…)`, the states named by the enums (never spelled again in SQL), so a transition that no
//! longer applies (a duplicate delivery, a second coordinator, a batch cancelled meanwhile)
//! changes nothing and says so. A state name PostgreSQL holds that is not a state is an error,
//! never a guess.
//!
//! - [`batches`]: a batch's life, from `receiving` to final, and its outages;
//! - [`chunks`]: a chunk's life, its durable copy, and the chunks that must be handed out again;
//! - [`commit_lease`]: which coordinator commits a batch, for how long, and where it is;
//! - [`coordinators`]: the coordinators that run, seen through their heartbeats;
//! - [`retract`]: a committed batch taken back out of `prices`, in one transaction;
//! - [`replace`]: a committed batch replaced by a corrected one, in the new one's commit.
//!
//! The guarantee that matters most sits in [`finish_chunk`]: a worker marks its chunk loaded in
//! the same transaction as its COPY, and the guarded update takes the chunk's row lock first,
//! so a chunk delivered twice is loaded once (the second delivery finds it `loaded`).

mod batches;
mod chunks;
mod commit_lease;
mod coordinators;
mod replace;
mod retract;

pub use batches::*;
pub use chunks::*;
pub use commit_lease::*;
pub use coordinators::*;
pub use replace::*;
pub use retract::*;

use crate::batch::BatchState;
use crate::chunk::ChunkState;
use std::error::Error as StdError;
use std::str::FromStr;
use tokio_postgres::types::{FromSql, Type};

/// The names of batch states, as a `text[]` parameter (`state = ANY($n)`).
fn batch_states(states: &[BatchState]) -> Vec<&'static str> {
    states.iter().map(|state| state.as_str()).collect()
}

/// The names of chunk states, as a `text[]` parameter (`state = ANY($n)`).
fn chunk_states(states: &[ChunkState]) -> Vec<&'static str> {
    states.iter().map(|state| state.as_str()).collect()
}

/// A state column read from PostgreSQL: its text must name a state.
struct Stored<T>(T);

impl<'a, T> FromSql<'a> for Stored<T>
where
    T: FromStr,
    T::Err: StdError + Send + Sync + 'static,
{
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn StdError + Sync + Send>> {
        let text = <&str as FromSql>::from_sql(ty, raw)?;
        Ok(Stored(text.parse()?))
    }

    fn accepts(ty: &Type) -> bool {
        <&str as FromSql>::accepts(ty)
    }
}

/// The batch state in `column` (an index or a name) of a row read from `batches` (for queries
/// outside this folder, such as the status): a name that is not a state is an error.
pub fn batch_state_at<I>(
    row: &tokio_postgres::Row,
    column: I,
) -> Result<BatchState, tokio_postgres::Error>
where
    I: tokio_postgres::row::RowIndex + std::fmt::Display,
{
    Ok(row.try_get::<_, Stored<BatchState>>(column)?.0)
}

/// The outage step in `column` of a row read from `batches` (`None` when no outage is noted): a
/// name that is not a step is an error.
pub fn outage_step_at<I>(
    row: &tokio_postgres::Row,
    column: I,
) -> Result<Option<ingest_wire::OutageStep>, tokio_postgres::Error>
where
    I: tokio_postgres::row::RowIndex + std::fmt::Display,
{
    Ok(row
        .try_get::<_, Option<Stored<ingest_wire::OutageStep>>>(column)?
        .map(|stored| stored.0))
}

/// A count or size for an `integer` column (saturating: no ledger number comes near 2³¹).
fn to_i32(value: impl TryInto<i32>) -> i32 {
    value.try_into().unwrap_or(i32::MAX)
}

/// A count or size for a `bigint` column.
fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// An `integer` column that holds a count (never negative).
fn from_i32(value: i32) -> u32 {
    u32::try_from(value).unwrap_or(0)
}

/// A `bigint` column that holds a count or a line (never negative).
fn from_i64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// Seconds, for `make_interval(secs => $n)`.
fn seconds(duration: std::time::Duration) -> f64 {
    duration.as_secs_f64()
}
