//! Every metric the coordinator and the workers export, by name, with its help text — one list
//! an operator can read — and the Prometheus recorder both render `/metrics` with.
//!
//! Prometheus conventions: counters end in `_total`, times are `_seconds`, and labels take a
//! small, fixed set of values (a state, a reason, an outcome; never a batch id), so the number of
//! series stays bounded however many batches pass.

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

/// Batches by `state` (gauge, read from the ledger at each scrape).
pub const BATCHES: &str = "ingest_batches";
/// Coordinators alive (seen within their lease), from the ledger (gauge).
pub const COORDINATORS: &str = "ingest_coordinators";
/// Uploads being read now (gauge).
pub const UPLOADS_IN_FLIGHT: &str = "ingest_uploads_in_flight";
/// Bytes of upload bodies received (counter).
pub const BYTES_RECEIVED: &str = "ingest_bytes_received_total";
/// Rows of uploads received whole and handed to the workers (counter).
pub const ROWS_RECEIVED: &str = "ingest_rows_received_total";
/// Rows staged by a worker (counter, worker).
pub const ROWS_LOADED: &str = "ingest_rows_loaded_total";
/// Rows made visible in `prices` by a commit (counter).
pub const ROWS_COMMITTED: &str = "ingest_rows_committed_total";
/// Commits by `outcome`: `committed`, `refused` (the batch failed), `outage` (tried again).
pub const COMMITS: &str = "ingest_commits_total";
/// How long a commit took, index and attach (histogram).
pub const COMMIT_SECONDS: &str = "ingest_commit_duration_seconds";
/// How long a worker took to load one chunk, claim to commit (histogram, worker).
pub const CHUNK_LOAD_SECONDS: &str = "ingest_chunk_load_duration_seconds";
/// Deliveries handled by a worker, by `outcome`: `loaded`, `already_loaded`, `closed`,
/// `refused`, `damaged` (the copy read did not match its checksum) (counter, worker).
pub const CHUNK_DELIVERIES: &str = "ingest_chunk_deliveries_total";
/// Chunks handed out again, by `reason`: `refused` (PostgreSQL refused an attempt), `damaged`
/// (a read of its copy did not match its checksum), `lease_expired` (the worker vanished or
/// froze), `unconfirmed` (RabbitMQ never confirmed it), `stranded` (its message was lost),
/// `dead_lettered` (taken back from the dead-letter queue), `outage` (a worker retried with the
/// delivery in hand).
pub const CHUNK_RETRIES: &str = "ingest_chunk_retries_total";
/// Chunks that will not load, by `reason`: `refused` (PostgreSQL refused them `max_attempts`
/// times: buried, their batch failed), `no_good_copy` (every read of their copy was damaged:
/// their batch failed, its key released) or `undeliverable` (dead-lettered round after round:
/// their batch failed, its key released). Messages the broker dead-letters are taken back and
/// handed out again (`CHUNK_RETRIES`, `dead_lettered`) (counter).
pub const CHUNKS_DEAD: &str = "ingest_chunks_dead_total";
/// Messages ready in a `queue` (`chunks` or `dead`), as the coordinator sees them (gauge).
pub const QUEUE_MESSAGES: &str = "ingest_queue_messages";
/// Consumers of a `queue`, as the coordinator sees them (gauge).
pub const QUEUE_CONSUMERS: &str = "ingest_queue_consumers";
/// The RabbitMQ `node` (`host:port`, one of those `AMQP_URL` lists) this process is connected
/// to: 1 for the node in use, 0 for the others (gauge, coordinator and worker).
pub const RABBITMQ_NODE: &str = "ingest_rabbitmq_node";
/// Chunks a worker holds now (gauge, worker).
pub const CHUNKS_IN_HAND: &str = "ingest_worker_chunks_in_hand";
/// Gauge: partitions of `prices_by_batch`, as the merge loop last counted them.
pub const PARTITIONS: &str = "ingest_partitions";
/// Counter: partition merges, by outcome (`merged`, `outage`).
pub const MERGES: &str = "ingest_partition_merges_total";
/// Counter: retract requests, by `outcome`: `retracted`, `not_committed` (refused: the batch is
/// open, failed, cancelled or retracted already), `unknown` (no such batch), `lock_timeout` (a
/// lock did not come in time: nothing changed, the client tries again), `outage`; and
/// `replaced`: a batch retracted by the commit of the batch that replaced it (`Replaces:`).
pub const RETRACTS: &str = "ingest_retracts_total";

/// Histogram buckets for times, in seconds: 5 ms to 5 minutes.
const SECONDS_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// The process's recorder, installed on first use (one per process: a test running the
/// coordinator and workers in one process shares it).
pub fn recorder() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
            .expect("the buckets are not empty")
            .install_recorder()
            .expect("the only metrics recorder of the process");
        describe();
        handle
    })
}

/// The Prometheus text of every metric.
pub fn render() -> String {
    let handle = recorder();
    handle.run_upkeep();
    handle.render()
}

fn describe() {
    describe_gauge!(BATCHES, "Batches by state, from the ledger.");
    describe_gauge!(
        COORDINATORS,
        "Coordinators seen within their lease, from the ledger."
    );
    describe_gauge!(UPLOADS_IN_FLIGHT, "Uploads being read by this coordinator.");
    describe_counter!(
        BYTES_RECEIVED,
        Unit::Bytes,
        "Bytes of upload bodies received."
    );
    describe_counter!(
        ROWS_RECEIVED,
        "Rows of complete uploads handed to the workers."
    );
    describe_counter!(ROWS_LOADED, "Rows staged by this worker.");
    describe_counter!(ROWS_COMMITTED, "Rows made visible in prices by commits.");
    describe_counter!(COMMITS, "Commit attempts by outcome.");
    describe_histogram!(COMMIT_SECONDS, Unit::Seconds, "Time a commit took.");
    describe_histogram!(
        CHUNK_LOAD_SECONDS,
        Unit::Seconds,
        "Time this worker took to load a chunk."
    );
    describe_counter!(
        CHUNK_DELIVERIES,
        "Deliveries handled by this worker, by outcome."
    );
    describe_counter!(
        CHUNK_RETRIES,
        "Chunks handed out or tried again, by reason."
    );
    describe_counter!(CHUNKS_DEAD, "Chunks that will not load, by reason.");
    describe_gauge!(
        QUEUE_MESSAGES,
        "Messages ready in a queue, as the coordinator sees it."
    );
    describe_gauge!(
        QUEUE_CONSUMERS,
        "Consumers of a queue, as the coordinator sees it."
    );
    describe_gauge!(
        RABBITMQ_NODE,
        "1 for the RabbitMQ node this process is connected to, 0 for the other listed nodes."
    );
    describe_gauge!(CHUNKS_IN_HAND, "Chunks this worker holds.");
    describe_gauge!(
        PARTITIONS,
        "Partitions of prices_by_batch (merged down to a bound)."
    );
    describe_counter!(MERGES, "Partition merges by outcome.");
    describe_counter!(
        RETRACTS,
        "Retracts of committed batches (rows taken out of prices) by outcome."
    );
}
