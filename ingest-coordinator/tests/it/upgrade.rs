//! Upgrades: what an older coordinator left in flight is finished by the new one. Here a batch
//! staged before parts by chunk (migration V5), whose staging table PostgreSQL split by a hash of
//! the row and whose chunk messages name no part — and, from before chunk copies lived in
//! PostgreSQL (V6), carry the chunk's COPY stream as their body.

use futures_util::{pin_mut, TryStreamExt};
use ingest_core::batch::BatchId;
use ingest_core::chunk::{ChunkMessage, ChunkSeq, ChunkState};
use ingest_core::ledger::{self, Received};
use ingest_core::schema;
use ingest_testkit::{Options, TestEnv};
use ingest_wire::BatchState;
use std::time::Duration;

/// Rows per chunk, and chunks.
const ROWS: i64 = 2_000;
const CHUNKS: i32 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_staged_before_parts_by_chunk_is_loaded_and_committed_after_the_upgrade() {
    let mut env = TestEnv::start(Options {
        coordinator: false,
        workers: 0,
        schema_version: Some(4),
        ..Options::default()
    })
    .await;

    // What a coordinator of schema V4 left: a batch received, its staging table split by hash,
    // its chunks recorded with no part and published with their stream as the body.
    let id = BatchId(
        env.db
            .query_one(
                "INSERT INTO batches (state) VALUES ('receiving') RETURNING id",
                &[],
            )
            .await
            .unwrap()
            .get(0),
    );
    env.db
        .batch_execute(&format!(
            "CREATE TABLE price_batches.batch_{id} (\
               batch_id bigint NOT NULL DEFAULT {id} CHECK (batch_id = {id}), \
               orig_code text NOT NULL, dest_code text NOT NULL, day date NOT NULL, \
               price integer NOT NULL) PARTITION BY HASH (orig_code, dest_code, day); \
             CREATE TABLE price_batches.batch_{id}_p0 PARTITION OF price_batches.batch_{id} \
               FOR VALUES WITH (MODULUS 2, REMAINDER 0); \
             CREATE TABLE price_batches.batch_{id}_p1 PARTITION OF price_batches.batch_{id} \
               FOR VALUES WITH (MODULUS 2, REMAINDER 1);"
        ))
        .await
        .unwrap();
    let link = ingest_testkit::amqp_link("an older coordinator").await;
    ingest_core::broker::declare(&link, &env.queue, None)
        .await
        .unwrap();
    let channel = link.channel().await.unwrap();
    for seq in 0..CHUNKS {
        // A chunk's binary COPY stream, as PostgreSQL itself writes it.
        let rows = format!(
            "COPY (SELECT o.code, d.code, date '2016-01-01' + n % 30, {seq} * 100000 + n \
                   FROM generate_series(0, {ROWS} - 1) n, \
                        LATERAL (SELECT code FROM ports ORDER BY code OFFSET n % 50 LIMIT 1) o, \
                        LATERAL (SELECT code FROM ports ORDER BY code DESC OFFSET n % 70 LIMIT 1) d) \
             TO STDOUT (FORMAT binary)"
        );
        let stream = env.db.copy_out(rows.as_str()).await.unwrap();
        pin_mut!(stream);
        let mut payload = Vec::new();
        while let Some(bytes) = stream.try_next().await.unwrap() {
            payload.extend_from_slice(&bytes);
        }
        // Recorded as that coordinator did (`chunks` had no column `part` yet), and queued.
        let first = 2 + i64::from(seq) * ROWS;
        env.db
            .execute(
                "INSERT INTO chunks (batch_id, seq, first_line, last_line, rows, state) \
                 VALUES ($1, $2, $3, $4, $5, 'queued')",
                &[&id.get(), &seq, &first, &(first + ROWS - 1), &(ROWS as i32)],
            )
            .await
            .unwrap();
        let message = ChunkMessage {
            batch_id: id,
            seq: ChunkSeq(seq),
            rows: ROWS as u32,
            part: None,
            dead_letters: 0,
        };
        channel
            .basic_publish(
                "".into(),
                env.queue.as_str().into(),
                lapin::options::BasicPublishOptions::default(),
                &payload,
                lapin::BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_headers(message.to_headers()),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    link.close("upgraded").await;
    let total = ROWS * i64::from(CHUNKS);
    assert_eq!(
        ledger::finish_receiving(
            &env.db,
            id,
            &Received {
                rows: total as u64,
                chunks: CHUNKS as u32,
                bytes: 0,
                sha256: "",
            },
        )
        .await
        .unwrap(),
        ingest_core::ledger::Finished::State(Some(BatchState::Loading))
    );

    // The new coordinator migrates, the new workers take the messages and copy the streams they
    // carry into the staging table (PostgreSQL routes the rows), and the batch commits.
    schema::migrate(&mut env.db).await.unwrap();
    env.start_coordinator().await;
    env.start_workers(2);
    let status = env.wait_final(id, Duration::from_secs(120)).await;
    assert_eq!(status.state, BatchState::Committed, "{status:#?}");
    assert_eq!(
        env.chunks_in(id, ChunkState::Loaded).await,
        i64::from(CHUNKS)
    );
    assert_eq!(env.prices_count().await, total);
    let parts = env.rows_by_table(id).await;
    assert_eq!(
        parts
            .iter()
            .map(|(table, part, _)| (table.as_str(), *part))
            .collect::<Vec<_>>(),
        [
            (format!("batch_{id}_p0").as_str(), 0),
            (format!("batch_{id}_p1").as_str(), 0)
        ],
        "PostgreSQL routed the rows to both hash parts"
    );
    assert_eq!(parts.iter().map(|(_, _, n)| n).sum::<i64>(), total);

    // A batch submitted now is staged in parts by chunk.
    let status = env.submit_sample_committed(Duration::from_secs(120)).await;
    let strategy: String = env
        .db
        .query_one(
            "SELECT partstrat::text FROM pg_partitioned_table \
             WHERE partrelid = to_regclass($1)",
            &[&schema::staging_table(status.id)],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(strategy, "l");
}
