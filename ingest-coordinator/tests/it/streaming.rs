//! The streaming path: a 2,000,000-row batch, sent as a stream in many chunks, goes through the
//! real `ingest-coordinator` binary, and the coordinator's peak memory stays far below the size
//! of the file — it never holds the batch, only a few chunks at a time.

use ingest_testkit::process::{peak_rss_kib, CoordinatorProcess};
use ingest_testkit::{rates_file, Options, TestEnv};
use ingest_wire::BatchState;
use std::time::{Duration, Instant};

const ROWS: u64 = 2_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_million_rows_stream_through_in_bounded_memory() {
    let mut env = TestEnv::start(Options {
        workers: 2,
        coordinator: false,
        ..Options::default()
    })
    .await;
    let coordinator = CoordinatorProcess::start(
        env!("CARGO_BIN_EXE_ingest-coordinator"),
        &mut env,
        &[("INGEST_CHUNK_ROWS", "20000")],
    )
    .await;
    let idle_kib = peak_rss_kib(coordinator.pid());

    let codes = rates_file::port_codes(&ingest_testkit::data_dir());
    let file_bytes = rates_file::whole(&codes, 3, 1_000).len() as u64 * ROWS / 1_000;
    let started = Instant::now();
    let (code, accepted) = env.submit(rates_file::stream(codes.clone(), 3, ROWS)).await;
    assert_eq!(code, 202, "{accepted:?}");
    assert_eq!(accepted.batch().rows_total, Some(ROWS));
    assert_eq!(accepted.batch().chunks.total, 100);
    let id = accepted.id();
    let status = env.wait_final(id, Duration::from_secs(600)).await;
    assert_eq!(status.state, BatchState::Committed, "{status:#?}");
    let peak_kib = peak_rss_kib(coordinator.pid());
    println!(
        "{ROWS} rows ({} MiB) in {:.1} s; coordinator peak RSS {} MiB (idle {} MiB)",
        file_bytes >> 20,
        started.elapsed().as_secs_f64(),
        peak_kib >> 10,
        idle_kib >> 10
    );

    let (rows, sum) = rates_file::totals(&codes, 3, ROWS);
    let row = env
        .db
        .query_one("SELECT count(*), sum(price)::bigint FROM prices", &[])
        .await
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (rows, sum));
    // Holding the file would need at least its size on top of the idle footprint.
    let growth_kib = peak_kib.saturating_sub(idle_kib);
    assert!(
        growth_kib * 1024 < file_bytes / 2,
        "the coordinator grew by {} MiB while receiving a {} MiB file",
        growth_kib >> 10,
        file_bytes >> 20
    );
}
