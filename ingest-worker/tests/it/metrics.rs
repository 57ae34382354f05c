//! What an operator scrapes: the coordinator's and two worker processes' `/metrics` after a
//! batch, checked against the ledger; the workers' health and readiness probes.

use ingest_testkit::process::{free_port, start_worker};
use ingest_testkit::{fetch_text, metric, rates_file, Options, TestEnv};
use ingest_wire::BatchState;
use std::time::Duration;

const EXE: &str = env!("CARGO_BIN_EXE_ingest-worker");
const WITHIN: Duration = Duration::from_secs(120);
const ROWS: u64 = 60_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scraped_figures_match_the_ledger() {
    // The coordinator runs in this test's process (its recorder is this process's alone); the
    // workers are real processes, each with its own listener.
    let env = TestEnv::start(Options {
        workers: 0,
        chunk_rows: 10_000,
        ..Options::default()
    })
    .await;
    let listeners: Vec<String> = (0..2)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let _workers: Vec<_> = listeners
        .iter()
        .enumerate()
        .map(|(n, listen)| start_worker(EXE, &env, &format!("metrics-{n}-{}", env.queue), listen))
        .collect();
    env.wait_until("both workers to be ready", WITHIN, || async {
        let mut ready = 0;
        for listen in &listeners {
            if fetch_text(&env.http, listen, "/readyz").await.0 == 200 {
                ready += 1;
            }
        }
        ready == 2
    })
    .await;
    for listen in &listeners {
        let (code, body) = fetch_text(&env.http, listen, "/healthz").await;
        assert_eq!(code, 200, "{body}");
    }

    let codes = rates_file::port_codes(&ingest_testkit::data_dir());
    let body = rates_file::whole(&codes, 71, ROWS);
    let bytes = body.len() as f64;
    let (code, accepted) = env.submit(body).await;
    assert_eq!(code, 202, "{accepted:?}");
    let status = env.wait_final(accepted.id(), WITHIN).await;
    assert_eq!(status.state, BatchState::Committed, "{status:#?}");
    let chunks = status.chunks.total as f64;
    assert_eq!(chunks, 6.0);

    // The ledger commits a moment before the coordinator counts the commit.
    env.wait_until("the coordinator to count the commit", WITHIN, || async {
        let (_, text) = env.get_text("/metrics").await;
        metric(&text, r#"ingest_commits_total{outcome="committed"}"#).is_some()
    })
    .await;
    let (code, coordinator) = env.get_text("/metrics").await;
    assert_eq!(code, 200);
    let series = |name: &str| {
        metric(&coordinator, name).unwrap_or_else(|| panic!("{name} missing:\n{coordinator}"))
    };
    assert_eq!(series("ingest_rows_committed_total"), ROWS as f64);
    assert_eq!(series("ingest_rows_received_total"), ROWS as f64);
    assert_eq!(series("ingest_bytes_received_total"), bytes);
    assert_eq!(series(r#"ingest_batches{state="committed"}"#), 1.0);
    assert_eq!(series(r#"ingest_batches{state="loading"}"#), 0.0);
    assert_eq!(series(r#"ingest_commits_total{outcome="committed"}"#), 1.0);
    assert_eq!(series("ingest_commit_duration_seconds_count"), 1.0);
    assert_eq!(series("ingest_uploads_in_flight"), 0.0);
    assert_eq!(
        series("ingest_coordinators"),
        1.0,
        "this test's one coordinator"
    );
    assert_eq!(series(r#"ingest_queue_consumers{queue="chunks"}"#), 2.0);
    assert_eq!(series(r#"ingest_queue_messages{queue="dead"}"#), 0.0);
    assert!(
        coordinator.contains("# TYPE ingest_commit_duration_seconds histogram"),
        "{coordinator}"
    );

    let (mut loads, mut rows) = (0.0, 0.0);
    for listen in &listeners {
        let (code, worker) = fetch_text(&env.http, listen, "/metrics").await;
        assert_eq!(code, 200);
        loads += metric(&worker, "ingest_chunk_load_duration_seconds_count").unwrap_or(0.0);
        rows += metric(&worker, "ingest_rows_loaded_total").unwrap_or(0.0);
        assert_eq!(
            metric(&worker, "ingest_worker_chunks_in_hand"),
            Some(0.0),
            "{worker}"
        );
    }
    assert_eq!(loads, chunks, "one load per chunk over both workers");
    assert_eq!(rows, ROWS as f64);
}
