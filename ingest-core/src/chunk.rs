//! A chunk: a run of consecutive source lines of one batch, encoded as one PostgreSQL binary
//! COPY stream. This file defines its states and the message that carries it on RabbitMQ.

use crate::batch::BatchId;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A chunk's number within its batch, from 0 (`chunks.seq`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ChunkSeq(pub i32);

impl ChunkSeq {
    /// The number.
    pub fn get(self) -> i32 {
        self.0
    }
}

impl fmt::Display for ChunkSeq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The part of its batch's staging table a chunk is copied into (`chunks.part`). Chunks go to the
/// parts in turn, so the parts hold about the same number of rows, and a worker copies a chunk
/// straight into its part (see `schema::create_staging_sql`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Part(pub u16);

impl Part {
    /// The part of chunk `seq` of a batch staged in `parts` parts.
    pub fn of(seq: ChunkSeq, parts: u16) -> Part {
        let parts = i32::from(parts.max(1));
        Part(u16::try_from(seq.get().rem_euclid(parts)).expect("below a u16"))
    }

    /// The number.
    pub fn get(self) -> u16 {
        self.0
    }
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Where a chunk is. Stored as text in `chunks.state`; transitions happen only in
/// [`crate::ledger`].
///
/// ```text
/// pending ──> queued ──> loading ──> loaded
///    ^          ^           │
///    └──────────┴── failed <┤ (handed out again by a coordinator) ──> dead (attempts spent,
///    └───────────── damaged <┘                                          or no good copy left)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChunkState {
    /// Recorded with its copy; RabbitMQ has not confirmed its message yet.
    Pending,
    /// RabbitMQ confirmed the message: it is durably queued.
    Queued,
    /// A worker holds it, until `lease_until`.
    Loading,
    /// Its rows are in the batch's staging table (same transaction as this state).
    Loaded,
    /// PostgreSQL refused the last attempt's rows; the coordinator hands it out again.
    Failed,
    /// The last read of its copy did not match the copy's checksum; the coordinator hands it out
    /// again (to be read again), or fails the batch when no good copy is left.
    Damaged,
    /// It will not load (every attempt refused, or no good copy left); the batch fails with it.
    Dead,
}

impl ChunkState {
    /// Every state.
    pub const ALL: [ChunkState; 7] = [
        ChunkState::Pending,
        ChunkState::Queued,
        ChunkState::Loading,
        ChunkState::Loaded,
        ChunkState::Failed,
        ChunkState::Damaged,
        ChunkState::Dead,
    ];

    /// The states of a chunk whose rows are not in yet and that a worker may still load.
    pub const UNLOADED: [ChunkState; 5] = [
        ChunkState::Pending,
        ChunkState::Queued,
        ChunkState::Loading,
        ChunkState::Failed,
        ChunkState::Damaged,
    ];

    /// The name stored in PostgreSQL and shown in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            ChunkState::Pending => "pending",
            ChunkState::Queued => "queued",
            ChunkState::Loading => "loading",
            ChunkState::Loaded => "loaded",
            ChunkState::Failed => "failed",
            ChunkState::Damaged => "damaged",
            ChunkState::Dead => "dead",
        }
    }
}

impl fmt::Display for ChunkState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state name that is not one of [`ChunkState::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown chunk state {0:?}")]
pub struct UnknownChunkState(pub String);

impl FromStr for ChunkState {
    type Err = UnknownChunkState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ChunkState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| UnknownChunkState(s.to_string()))
    }
}

/// Identifies a chunk on the wire, in the message headers. The message body is empty: the
/// chunk's COPY stream is its copy in PostgreSQL ([`crate::chunk_copy`]). (A coordinator before
/// copies lived there sent the stream as the body; a worker still loads such a message.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkMessage {
    /// The batch the chunk belongs to.
    pub batch_id: BatchId,
    /// The chunk's number within its batch.
    pub seq: ChunkSeq,
    /// How many rows the COPY stream holds; the worker checks COPY's count against it.
    pub rows: u32,
    /// The part of the staging table to copy into; `None` for a chunk of a batch staged before
    /// parts by chunk (the worker copies into the staging table and PostgreSQL routes the rows).
    pub part: Option<Part>,
    /// How many times a message of this chunk was dead-lettered and published again (a chunk on
    /// which workers keep dying is given up after a few rounds).
    pub dead_letters: u32,
}

const BATCH_ID: &str = "batch_id";
const SEQ: &str = "seq";
const ROWS: &str = "rows";
const PART: &str = "part";
const DEAD_LETTERS: &str = "dead_letters";

impl ChunkMessage {
    /// The AMQP headers that carry this message.
    pub fn to_headers(self) -> FieldTable {
        let mut table = FieldTable::default();
        table.insert(
            ShortString::from(BATCH_ID),
            AMQPValue::LongLongInt(self.batch_id.get()),
        );
        table.insert(ShortString::from(SEQ), AMQPValue::LongInt(self.seq.get()));
        table.insert(ShortString::from(ROWS), AMQPValue::LongUInt(self.rows));
        if let Some(part) = self.part {
            table.insert(ShortString::from(PART), AMQPValue::ShortUInt(part.get()));
        }
        if self.dead_letters > 0 {
            table.insert(
                ShortString::from(DEAD_LETTERS),
                AMQPValue::LongUInt(self.dead_letters),
            );
        }
        table
    }

    /// Reads the message back from AMQP headers; `None` when a header is missing or mistyped
    /// (such a message is not ours and goes to the dead-letter queue).
    pub fn from_headers(headers: &FieldTable) -> Option<ChunkMessage> {
        let map = headers.inner();
        let int = |name: &str| -> Option<i64> {
            match map.get(name)? {
                AMQPValue::LongLongInt(v) => Some(*v),
                AMQPValue::LongInt(v) => Some(i64::from(*v)),
                AMQPValue::ShortInt(v) => Some(i64::from(*v)),
                AMQPValue::LongUInt(v) => Some(i64::from(*v)),
                AMQPValue::ShortUInt(v) => Some(i64::from(*v)),
                _ => None,
            }
        };
        Some(ChunkMessage {
            batch_id: BatchId(int(BATCH_ID)?),
            seq: ChunkSeq(i32::try_from(int(SEQ)?).ok()?),
            rows: u32::try_from(int(ROWS)?).ok()?,
            part: match map.get(PART) {
                None => None,
                Some(_) => Some(Part(u16::try_from(int(PART)?).ok()?)),
            },
            dead_letters: match map.get(DEAD_LETTERS) {
                None => 0,
                Some(_) => u32::try_from(int(DEAD_LETTERS)?).ok()?,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip() {
        for (part, dead_letters) in [(Some(Part(1)), 0), (None, 3)] {
            let msg = ChunkMessage {
                batch_id: BatchId(42),
                seq: ChunkSeq(7),
                rows: 5000,
                part,
                dead_letters,
            };
            assert_eq!(ChunkMessage::from_headers(&msg.to_headers()), Some(msg));
        }
        assert_eq!(ChunkMessage::from_headers(&FieldTable::default()), None);
        let mut mistyped = ChunkMessage {
            batch_id: BatchId(42),
            seq: ChunkSeq(7),
            rows: 5000,
            part: None,
            dead_letters: 0,
        }
        .to_headers();
        mistyped.insert(ShortString::from(PART), AMQPValue::LongInt(-1));
        assert_eq!(ChunkMessage::from_headers(&mistyped), None);
    }

    #[test]
    fn chunks_go_to_the_parts_in_turn() {
        let parts: Vec<u16> = (0..7).map(|seq| Part::of(ChunkSeq(seq), 3).get()).collect();
        assert_eq!(parts, [0, 1, 2, 0, 1, 2, 0]);
        assert_eq!(Part::of(ChunkSeq(5), 1), Part(0));
        assert_eq!(Part::of(ChunkSeq(5), 0), Part(0));
    }

    #[test]
    fn names_round_trip() {
        for state in ChunkState::ALL {
            assert_eq!(state.as_str().parse::<ChunkState>().unwrap(), state);
        }
    }
}
