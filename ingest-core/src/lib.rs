//! What the coordinator and the workers share.
//!
//! The data walks one way: `submit → split → publish → load → commit → status`. The coordinator
//! owns submit, split, publish and commit; workers own load. Both sides meet in three places,
//! and each of them lives here so there is exactly one definition:
//! - [`chunk::ChunkMessage`]: what travels on RabbitMQ — which chunk to load — and
//!   [`chunk_copy`]: the chunk itself, stored in PostgreSQL;
//! - [`ledger`]: every batch and chunk state, durably in PostgreSQL, with every transition;
//! - [`schema`] and [`broker`]: the tables and the queue topology both sides rely on.
//!
//! And both ride through the same faults alike: [`fault`] says whose fault a failed step is (only
//! PostgreSQL refusing the rows fails a batch), [`outage`] how to try again; and both answer
//! their probes alike ([`probe`]).

pub mod batch;
pub mod broker;
pub mod chunk;
pub mod chunk_copy;
pub mod db;
pub mod fault;
pub mod ledger;
pub mod metrics;
pub mod outage;
pub mod probe;
pub mod process;
pub mod schema;
pub mod setting;
