//! The core pipeline end to end on real PostgreSQL and RabbitMQ: submit → split → publish →
//! load → commit → status, exact row counts and checksums, all-or-nothing visibility,
//! concurrent batches and duplicate deliveries.

use ingest_coordinator::pipeline::publish::{confirmed, Publisher};
use ingest_core::chunk::{ChunkMessage, ChunkSeq, Part};
use ingest_testkit::{rates_file, Options, TestEnv};
use ingest_wire::{BatchState, Readiness};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::time::Duration;

const SAMPLE_ROWS: i64 = 56_689;

/// Per day: (rows, sum of prices), read from a CSV file with the csv crate (an independent
/// reader, not the project's parser).
fn file_checksum(bytes: &[u8]) -> Vec<(String, i64, i64)> {
    let mut reader = csv::Reader::from_reader(bytes);
    let mut days: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for record in reader.records() {
        let record = record.unwrap();
        let entry = days.entry(record[2].to_string()).or_default();
        entry.0 += 1;
        entry.1 += record[3].parse::<i64>().unwrap();
    }
    days.into_iter()
        .map(|(day, (n, sum))| (day, n, sum))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sample_batch_loads_exactly_through_three_workers() {
    let env = TestEnv::start(Options {
        workers: 3,
        chunk_rows: 5_000,
        ..Options::default()
    })
    .await;
    let file = std::fs::read(ingest_testkit::sample_prices()).unwrap();
    let (code, accepted) = env.submit(file.clone()).await;
    assert_eq!(code, 202, "{accepted:?}");
    let accepted = accepted.batch();
    assert_eq!(accepted.rows_total, Some(SAMPLE_ROWS as u64));
    assert_eq!(accepted.chunks.total, 12);
    let id = accepted.id;
    assert_eq!(accepted.status_url, format!("/batches/{id}"));

    let status = env.wait_final(id, Duration::from_secs(120)).await;
    assert_eq!(status.state, BatchState::Committed, "{status:#?}");
    assert_eq!(status.rows_total, Some(SAMPLE_ROWS as u64));
    assert_eq!(status.rows_loaded, SAMPLE_ROWS as u64);
    assert_eq!(status.chunks.total, 12);
    assert_eq!(status.chunks.loaded, 12);
    assert_eq!(status.chunks.failed, 0);
    assert_eq!(status.error, None);
    assert_eq!(status.eta_seconds, None);
    assert_eq!(
        status.indexed,
        Some(true),
        "visible with its index by default"
    );
    assert!(status.finished_at.is_some());
    assert!(status.rows_per_second.unwrap() > 0.0);
    assert_eq!(status.bytes_received, file.len() as u64);
    assert_eq!(
        status.content_sha256.as_deref(),
        Some(hex::encode(Sha256::digest(&file)).as_str())
    );

    assert_eq!(env.prices_count().await, SAMPLE_ROWS);
    assert_eq!(env.prices_checksum().await, file_checksum(&file));
    assert_eq!(env.unattached_staging_tables().await, 0);

    // The chunks went to the two parts in turn (5,000 rows each, the last 1,689), and each
    // part holds exactly its chunks' rows, with its own number in `part`.
    let parts: i64 = env
        .db
        .query_one(
            "SELECT count(*) FROM chunks WHERE batch_id = $1 AND part = seq % 2",
            &[&id.get()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(parts, 12);
    assert_eq!(
        env.rows_by_table(id).await,
        [
            (format!("batch_{id}_p0"), 0, 30_000),
            (format!("batch_{id}_p1"), 1, SAMPLE_ROWS - 30_000)
        ]
    );

    let (code, list) = env.get("/batches?limit=5").await;
    assert_eq!(code, 200);
    assert_eq!(list["batches"][0]["id"], id.get());
    let (code, health) = env.get("/readyz").await;
    let health: Readiness = serde_json::from_value(health).unwrap();
    assert_eq!((code, health.postgres, health.rabbitmq), (200, true, true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readers_never_see_part_of_a_batch() {
    let env = TestEnv::start(Options {
        workers: 2,
        chunk_rows: 4_000,
        ..Options::default()
    })
    .await;
    let codes = rates_file::port_codes(&ingest_testkit::data_dir());
    let rows = 120_000;

    // A reader on its own connection counts prices as fast as it can during the whole load.
    let reader_db = ingest_core::db::connect(&env.database_url).await.unwrap();
    let done = tokio_util::sync::CancellationToken::new();
    let stop = done.clone();
    let reader = tokio::spawn(async move {
        let mut seen = BTreeSet::new();
        let mut polls = 0u64;
        while !stop.is_cancelled() {
            let count: i64 = reader_db
                .query_one("SELECT count(*) FROM prices", &[])
                .await
                .unwrap()
                .get(0);
            seen.insert(count);
            polls += 1;
        }
        (seen, polls)
    });

    let (code, accepted) = env.submit(rates_file::stream(codes.clone(), 7, rows)).await;
    assert_eq!(code, 202, "{accepted:?}");
    let id = accepted.id();
    let status = env.wait_final(id, Duration::from_secs(180)).await;
    assert_eq!(status.state, BatchState::Committed, "{status:#?}");
    // One more read after the commit, then stop the reader.
    env.wait_until(
        "the reader to see the batch",
        Duration::from_secs(10),
        || async { env.prices_count().await == rows as i64 },
    )
    .await;
    done.cancel();
    let (seen, polls) = reader.await.unwrap();
    assert!(polls > 10, "the reader polled only {polls} times");
    assert!(
        seen.iter()
            .all(|count| *count == 0 || *count == rows as i64),
        "a reader saw part of a batch: {seen:?}"
    );
    let (count, sum) = rates_file::totals(&codes, 7, rows);
    let row = env
        .db
        .query_one("SELECT count(*), sum(price)::bigint FROM prices", &[])
        .await
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (count, sum));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_batches_submitted_at_once_both_commit() {
    let env = TestEnv::start(Options {
        workers: 2,
        chunk_rows: 3_000,
        ..Options::default()
    })
    .await;
    let codes = rates_file::port_codes(&ingest_testkit::data_dir());
    let sample = std::fs::read(ingest_testkit::sample_prices()).unwrap();
    let generated = rates_file::whole(&codes, 11, 40_000);
    let (first, second) = tokio::join!(env.submit(sample.clone()), env.submit(generated.clone()));
    assert_eq!(first.0, 202, "{:?}", first.1);
    assert_eq!(second.0, 202, "{:?}", second.1);
    let first_id = first.1.id();
    let second_id = second.1.id();
    assert_ne!(first_id, second_id);
    for id in [first_id, second_id] {
        let status = env.wait_final(id, Duration::from_secs(180)).await;
        assert_eq!(status.state, BatchState::Committed, "{status:#?}");
    }
    let per_batch: BTreeMap<i64, (i64, i64)> = env
        .db
        .query(
            "SELECT batch_id, count(*), sum(price)::bigint FROM prices_by_batch GROUP BY batch_id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), (row.get(1), row.get(2))))
        .collect();
    let sample_sum: i64 = file_checksum(&sample).iter().map(|day| day.2).sum();
    assert_eq!(per_batch[&first_id.get()], (SAMPLE_ROWS, sample_sum));
    assert_eq!(
        per_batch[&second_id.get()],
        rates_file::totals(&codes, 11, 40_000)
    );
    assert_eq!(env.prices_count().await, SAMPLE_ROWS + 40_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chunk_delivered_twice_loads_its_rows_once() {
    // No workers yet: the chunks wait in the queue while duplicates are added.
    let mut env = TestEnv::start(Options {
        workers: 0,
        chunk_rows: 5_000,
        ..Options::default()
    })
    .await;
    let file = std::fs::read(ingest_testkit::sample_prices()).unwrap();
    let (code, accepted) = env.submit(file.clone()).await;
    assert_eq!(code, 202, "{accepted:?}");
    let id = accepted.id();
    assert_eq!(env.queue_depth().await, 12);

    // Deliver every chunk a second (and chunk 0 a third) time, exactly as RabbitMQ would
    // redeliver it: the same headers.
    let state = &env.coordinator.as_ref().unwrap().state;
    let publisher = Publisher::new(state);
    let chunks = env
        .db
        .query(
            "SELECT seq, rows, part FROM chunks WHERE batch_id = $1 ORDER BY seq",
            &[&id.get()],
        )
        .await
        .unwrap();
    for row in chunks.iter().chain(chunks.iter().take(1)) {
        let message = ChunkMessage {
            batch_id: id,
            seq: ChunkSeq(row.get(0)),
            rows: row.get::<_, i32>(1) as u32,
            part: row.get::<_, Option<i16>>(2).map(|part| Part(part as u16)),
            dead_letters: 0,
        };
        confirmed(publisher.send(message).await.unwrap())
            .await
            .unwrap();
    }
    publisher.close().await;
    assert_eq!(env.queue_depth().await, 25);

    env.start_workers(3);
    let status = env.wait_final(id, Duration::from_secs(120)).await;
    assert_eq!(status.state, BatchState::Committed, "{status:#?}");
    assert_eq!(env.prices_count().await, SAMPLE_ROWS);
    assert_eq!(env.prices_checksum().await, file_checksum(&file));
    // Every delivery, duplicates included, was acknowledged.
    env.wait_until("the queue to drain", Duration::from_secs(30), || async {
        env.queue_depth().await == 0
    })
    .await;
    assert_eq!(env.prices_count().await, SAMPLE_ROWS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_database_enforces_port_codes_at_commit() {
    // The validator accepted the file; a port disappears before the commit. PostgreSQL's
    // foreign keys, validated in bulk on each part of the batch before it is attached, still
    // refuse it.
    let mut env = TestEnv::start(Options {
        workers: 0,
        chunk_rows: 5_000,
        ..Options::default()
    })
    .await;
    let id = env.submit_sample().await;
    let removed = env
        .db
        .execute("DELETE FROM ports WHERE code = 'CNGGZ'", &[])
        .await
        .unwrap();
    assert_eq!(removed, 1);
    env.start_workers(2);
    let status = env.wait_final(id, Duration::from_secs(120)).await;
    assert_eq!(status.state, BatchState::Failed, "{status:#?}");
    let error = status.error.as_deref().unwrap();
    assert!(
        error.starts_with("validating the foreign keys failed: "),
        "{error}"
    );
    assert!(error.contains("23503"), "{error}");
    assert!(error.contains("CNGGZ"), "{error}");
    assert_eq!(env.prices_count().await, 0);
    assert_eq!(env.unattached_staging_tables().await, 0);
    let staged: i64 = env
        .db
        .query_one(
            "SELECT count(*) FROM pg_tables
             WHERE schemaname = 'price_batches' AND tablename <> 'direct'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(staged, 0, "the failed batch's rows are dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_written_straight_into_prices_have_a_home() {
    // The ratestask API's own price upload, or an operator's fix: a plain INSERT on `prices`.
    let env = TestEnv::start(Options::default()).await;
    env.submit_sample_committed(Duration::from_secs(120)).await;

    let inserted = env
        .db
        .execute(
            "INSERT INTO prices (orig_code, dest_code, day, price)
             VALUES ('CNSGH', 'NLRTM', '2017-01-01', 1234), ('CNSGH', 'NLRTM', '2017-01-02', 1235)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(inserted, 2);
    assert_eq!(env.prices_count().await, SAMPLE_ROWS + 2);
    let direct: i64 = env
        .db
        .query_one(
            "SELECT count(*) FROM prices_by_batch WHERE batch_id = 0",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(direct, 2);
    // The foreign keys hold for direct writes too.
    env.assert_unknown_port_refused().await;
    assert_eq!(env.prices_count().await, SAMPLE_ROWS + 2);
}
