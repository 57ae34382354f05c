//! The `ingest-coordinator` process as an operator meets it: the token never reaches its logs,
//! even at trace level; unsafe or impossible settings stop it at start with one line on stderr
//! and a non-zero exit; SIGTERM stops it with exit 0.

use ingest_testkit::process::{free_port, wait_exit, CoordinatorProcess};
use ingest_testkit::{Options, TestEnv};
use ingest_wire::BatchState;
use rand::Rng;
use std::process::Stdio;
use std::time::Duration;

const EXE: &str = env!("CARGO_BIN_EXE_ingest-coordinator");
const HEADER: &str = "orig_code,dest_code,day,price\n";
const GOOD: &str = "CNSGH,NLRTM,2016-01-01,100\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_never_reaches_the_logs_and_sigterm_exits_0() {
    let mut env = TestEnv::start(Options {
        workers: 1,
        coordinator: false,
        ..Options::default()
    })
    .await;
    let suffix: u64 = rand::rng().random();
    let token = format!("tok-{suffix:x}");
    let wrong = format!("wrong-{suffix:x}");
    let mut coordinator = CoordinatorProcess::start(
        EXE,
        &mut env,
        &[("INGEST_TOKEN", &token), ("RUST_LOG", "trace")],
    )
    .await;

    let body = format!("{HEADER}{}", GOOD.repeat(10));
    let submit = |bearer: String| {
        env.http
            .post(format!("{}/batches", env.base))
            .header("content-type", "text/csv")
            .bearer_auth(bearer)
            .body(body.clone())
            .send()
    };
    let refused = submit(wrong.clone()).await.unwrap();
    assert_eq!(refused.status().as_u16(), 401);
    let accepted = submit(token.clone()).await.unwrap();
    assert_eq!(accepted.status().as_u16(), 202);
    let accepted: ingest_wire::BatchStatus = accepted.json().await.unwrap();
    let id = accepted.id;
    let cancel = env
        .http
        .post(format!("{}/batches/999/cancel", env.base))
        .bearer_auth(&wrong)
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status().as_u16(), 401);
    let status = env.wait_final(id, Duration::from_secs(60)).await;
    assert_eq!(status.state, BatchState::Committed, "{status:#?}");

    let exit = coordinator.terminate(Duration::from_secs(30));
    assert!(
        exit.success(),
        "SIGTERM ends the coordinator with 0: {exit}"
    );
    let logs = coordinator.logs();
    assert!(
        logs.contains("batch received"),
        "trace logging was on: {} bytes of logs",
        logs.len()
    );
    assert!(!logs.contains(&token), "the token is in the logs");
    assert!(!logs.contains(&wrong), "a presented token is in the logs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_or_impossible_settings_stop_it_with_one_line() {
    let env = TestEnv::start(Options {
        workers: 0,
        coordinator: false,
        ..Options::default()
    })
    .await;
    let port = free_port().to_string();
    let public = format!("0.0.0.0:{port}");
    /// What is wrong, the settings that say it, and the reason the coordinator must give.
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 8] = [
        (
            "a public address without a token",
            &[("INGEST_LISTEN", &public)],
            "without INGEST_TOKEN; set a token or pass --insecure",
        ),
        (
            "an empty token",
            &[("INGEST_TOKEN", "")],
            "INGEST_TOKEN is set but empty",
        ),
        (
            "no PostgreSQL",
            &[("DATABASE_URL", "postgres://postgres@127.0.0.1:1/nowhere")],
            "cannot connect to PostgreSQL",
        ),
        (
            "a chunk size of 0",
            &[("INGEST_CHUNK_ROWS", "0")],
            "--chunk-rows (INGEST_CHUNK_ROWS) must be at least 1",
        ),
        // Would answer 202 and commit only the file's first chunk.
        (
            "no input errors allowed",
            &[("INGEST_MAX_ERRORS", "0")],
            "--max-errors (INGEST_MAX_ERRORS) must be at least 1",
        ),
        // Would make the background loops panic.
        (
            "a commit poll of 0",
            &[("INGEST_COMMIT_POLL_MS", "0")],
            "--commit-poll-ms (INGEST_COMMIT_POLL_MS) must be at least 1",
        ),
        (
            "a redrive poll of 0",
            &[("INGEST_REDRIVE_POLL_MS", "0")],
            "--redrive-poll-ms (INGEST_REDRIVE_POLL_MS) must be at least 1",
        ),
        (
            "a coordinator lease under a second",
            &[("INGEST_COORDINATOR_LEASE_SECONDS", "0.5")],
            "--coordinator-lease-seconds (INGEST_COORDINATOR_LEASE_SECONDS) must be at least 1",
        ),
    ];
    for (case, settings, reason) in cases {
        let mut command = CoordinatorProcess::command(EXE, &env, 0, settings);
        let mut child = command.stderr(Stdio::piped()).spawn().unwrap();
        let exit = wait_exit(&mut child, Duration::from_secs(30));
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert!(!exit.success(), "{case}: {exit}");
        assert_eq!(stderr.lines().count(), 1, "{case}: {stderr}");
        assert!(
            stderr.starts_with("ingest-coordinator: ") && stderr.contains(reason),
            "{case}: {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_a_line_with_the_batch_and_the_request() {
    let mut env = TestEnv::start(Options {
        workers: 1,
        coordinator: false,
        ..Options::default()
    })
    .await;
    let mut coordinator = CoordinatorProcess::start(
        EXE,
        &mut env,
        &[("INGEST_LOG_FORMAT", "json"), ("RUST_LOG", "info")],
    )
    .await;
    let response = env
        .http
        .post(format!("{}/batches", env.base))
        .header("content-type", "text/csv")
        .body(format!("{HEADER}{}", GOOD.repeat(10)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let accepted: ingest_wire::BatchStatus = response.json().await.unwrap();
    let status = env.wait_final(accepted.id, Duration::from_secs(60)).await;
    assert_eq!(status.state, BatchState::Committed, "{status:#?}");
    assert!(coordinator.terminate(Duration::from_secs(30)).success());

    let logs = coordinator.logs();
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|_| panic!("not one JSON object: {line}"))
        })
        .collect();
    let received = lines
        .iter()
        .find(|line| line["message"] == "batch received")
        .unwrap_or_else(|| panic!("no 'batch received' line in {logs}"));
    let batch_id = accepted.id.to_string();
    assert_eq!(received["batch_id"], batch_id, "{received:#}");
    let spans = received["spans"].as_array().expect("the line's spans");
    assert!(
        spans.iter().any(|span| span["request_id"] == request_id),
        "the request id is on the line: {received:#}"
    );
    assert!(
        spans.iter().any(|span| span["batch_id"] == batch_id),
        "the batch's span is on the line: {received:#}"
    );
    let committed = lines
        .iter()
        .find(|line| line["message"] == "batch committed")
        .unwrap_or_else(|| panic!("no 'batch committed' line in {logs}"));
    assert_eq!(committed["span"]["batch_id"], batch_id, "{committed:#}");
}
