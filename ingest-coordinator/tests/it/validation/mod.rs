//! Bad input gets a clear, line-numbered error and changes nothing; the API is protected.
//!
//! Every refused upload is checked end to end on real PostgreSQL and RabbitMQ: the POST's status
//! code and the batch status it returns (state, summary, the first error's line, column and
//! message), the same status from `GET /batches/{id}` (whose raw JSON must name every error's
//! line, column, value and message), `prices` unchanged and no staging table left behind.
//! Accepted variants of the format are loaded and committed with exact row counts. Malformed
//! requests get a JSON error, never a 500; submit and cancel need the token.

mod bodies;
mod cancel;
mod header;
mod idempotency;
mod lines;
mod protection;
mod values;

use flate2::write::GzEncoder;
use flate2::Compression;
use ingest_testkit::{Answer, TestEnv};
use ingest_wire::{BatchState, BatchStatus, ErrorCode};
use std::io::Write;
use std::time::Duration;

const HEADER: &str = "orig_code,dest_code,day,price\n";
/// A valid line (real port codes: Shanghai to Rotterdam).
const GOOD: &str = "CNSGH,NLRTM,2016-01-01,100\n";
const FINAL_WITHIN: Duration = Duration::from_secs(60);

/// What a refused upload must report as its first error.
struct Expected<'a> {
    code: u16,
    line: u64,
    column: Option<&'a str>,
    message: &'a str,
}

/// A table case: a whole body and its first error.
struct Case {
    name: &'static str,
    body: Vec<u8>,
    line: u64,
    column: Option<&'static str>,
    message: &'static str,
    /// The offending value as reported, when the case checks it.
    value: Option<&'static str>,
}

/// The header, `good_before` good lines, the line `bad` (so on line `good_before + 2`), one more
/// good line.
fn with_bad_line(bad: &[u8], good_before: usize) -> Vec<u8> {
    let mut body = HEADER.as_bytes().to_vec();
    for _ in 0..good_before {
        body.extend_from_slice(GOOD.as_bytes());
    }
    body.extend_from_slice(bad);
    body.push(b'\n');
    body.extend_from_slice(GOOD.as_bytes());
    body
}

/// A case whose bad line sits after `good_before` good lines.
fn line_case(
    name: &'static str,
    bad: &[u8],
    good_before: usize,
    column: Option<&'static str>,
    message: &'static str,
    value: Option<&'static str>,
) -> Case {
    Case {
        name,
        body: with_bad_line(bad, good_before),
        line: good_before as u64 + 2,
        column,
        message,
        value,
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// Checks a refused upload end to end; returns its status.
async fn assert_refused(
    env: &TestEnv,
    case: &str,
    answer: (u16, Answer),
    expected: Expected<'_>,
    prices_before: i64,
) -> BatchStatus {
    let (code, answer) = answer;
    assert_eq!(code, expected.code, "{case}: {answer:?}");
    let status = answer.batch();
    assert_eq!(status.state, BatchState::Failed, "{case}: {answer:?}");
    let errors = &status.errors;
    assert!(!errors.is_empty(), "{case}: {answer:?}");
    assert!(
        status.error_count >= errors.len() as u64,
        "{case}: {answer:?}"
    );
    let lines: Vec<u64> = errors.iter().map(|error| error.line.get()).collect();
    assert!(
        lines.is_sorted(),
        "{case}: errors not sorted by line: {lines:?}"
    );
    let first = &errors[0];
    assert_eq!(first.line.get(), expected.line, "{case}: {answer:?}");
    assert_eq!(
        first.column.as_deref(),
        expected.column,
        "{case}: {answer:?}"
    );
    assert!(
        first.message.contains(expected.message),
        "{case}: {:?} does not say {:?}",
        first.message,
        expected.message
    );
    let summary = status
        .error
        .as_deref()
        .unwrap_or_else(|| panic!("{case}: no summary: {answer:?}"));
    let column = expected
        .column
        .map(|column| format!(", column {column}"))
        .unwrap_or_default();
    assert!(
        summary.contains(&format!("the first is on line {}{column}:", expected.line)),
        "{case}: the summary does not name the line: {summary:?}"
    );
    assert!(summary.contains(expected.message), "{case}: {summary:?}");

    // The same status from GET; its raw JSON names every error's line, column, value and
    // message (null when not known), so the wire shape stays tested.
    let (code, fetched) = env.get(&format!("/batches/{}", status.id)).await;
    assert_eq!(code, 200, "{case}: {fetched:#}");
    let listed = fetched["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("{case}: errors is not an array: {fetched:#}"));
    assert!(!listed.is_empty(), "{case}: {fetched:#}");
    for error in listed {
        for key in ["line", "column", "value", "message"] {
            assert!(error.get(key).is_some(), "{case}: {key} missing in {error}");
        }
    }
    let fetched = Answer::read(fetched);
    let fetched = fetched.batch();
    assert_eq!(fetched.id, status.id, "{case}: id differs");
    assert_eq!(fetched.state, status.state, "{case}: state differs");
    assert_eq!(fetched.error, status.error, "{case}: error differs");
    assert_eq!(
        fetched.error_count, status.error_count,
        "{case}: error_count differs"
    );
    assert_eq!(fetched.errors, status.errors, "{case}: errors differs");
    assert_eq!(
        fetched.bytes_received, status.bytes_received,
        "{case}: bytes_received differs"
    );
    assert_eq!(
        fetched.content_sha256, status.content_sha256,
        "{case}: content_sha256 differs"
    );
    assert_eq!(env.prices_count().await, prices_before, "{case}");
    assert_eq!(env.unattached_staging_tables().await, 0, "{case}");
    status.clone()
}

/// Submits every case on `env` and checks each one's first error (422).
async fn run_cases(env: &TestEnv, cases: Vec<Case>) {
    let before = env.prices_count().await;
    for case in cases {
        let answer = env.submit(case.body).await;
        let status = assert_refused(
            env,
            case.name,
            answer,
            Expected {
                code: 422,
                line: case.line,
                column: case.column,
                message: case.message,
            },
            before,
        )
        .await;
        if let Some(value) = case.value {
            assert_eq!(
                status.errors[0].value.as_deref(),
                Some(value),
                "{}",
                case.name
            );
        }
    }
}

/// Checks the answer to a body that must be accepted, waits for its commit and checks the exact
/// row count and price sum of its batch, and that `prices` grew by exactly that much from
/// `prices_before` (counted before the submit: the batch may commit before its answer is read).
async fn assert_commits(
    env: &TestEnv,
    case: &str,
    answer: (u16, Answer),
    rows: i64,
    sum: i64,
    prices_before: i64,
) {
    let (code, accepted) = answer;
    assert_eq!(code, 202, "{case}: {accepted:?}");
    let expected_rows = u64::try_from(rows).expect("a row count");
    assert_eq!(
        accepted.batch().rows_total,
        Some(expected_rows),
        "{case}: {accepted:?}"
    );
    let id = accepted.id();
    let status = env.wait_final(id, FINAL_WITHIN).await;
    assert_eq!(status.state, BatchState::Committed, "{case}: {status:#?}");
    assert_eq!(status.rows_loaded, expected_rows, "{case}");
    assert_eq!(status.error_count, 0, "{case}");
    let row = env
        .db
        .query_one(
            "SELECT count(*), coalesce(sum(price), 0)::bigint FROM prices_by_batch WHERE batch_id = $1",
            &[&id.get()],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, i64>(0), row.get::<_, i64>(1)),
        (rows, sum),
        "{case}"
    );
    assert_eq!(env.prices_count().await, prices_before + rows, "{case}");
    assert_eq!(env.unattached_staging_tables().await, 0, "{case}");
}

/// An API error: the status code and a JSON body `{"error": {"code", "message"}}`.
async fn assert_api_error(
    what: &str,
    response: reqwest::Response,
    status: u16,
    code: ErrorCode,
    message: &str,
) {
    assert_eq!(response.status().as_u16(), status, "{what}");
    let body: serde_json::Value = response
        .json()
        .await
        .unwrap_or_else(|error| panic!("{what}: the body is not JSON: {error}"));
    let answer = Answer::read(body);
    let error = answer.error();
    assert_eq!(error.code, code, "{what}: {answer:?}");
    assert!(
        error.message.contains(message),
        "{what}: {:?} lacks {message:?}",
        error.message
    );
}

async fn batches_count(env: &TestEnv) -> i64 {
    env.db
        .query_one("SELECT count(*) FROM batches", &[])
        .await
        .unwrap()
        .get(0)
}
