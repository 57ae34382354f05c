//! Bad input gets a clear, line-numbered error and changes nothing; the API is protected.
//!
//! Every refused upload is checked end to end on real PostgreSQL and RabbitMQ: the POST's status
//! code and the batch status it returns (state, summary, the first error's line, column and
//! message), the same status from `GET /batches/{id}`, `prices` unchanged and no staging table
//! left behind. Accepted variants of the format are loaded and committed with exact row counts.
//! Malformed requests get a JSON error, never a 500; submit and cancel need the token.

mod support;

use flate2::write::GzEncoder;
use flate2::Compression;
use ingest_coordinator::config::Config;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::time::Duration;
use support::{rates_file, Options, TestEnv};

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

fn batch_id(status: &Value) -> i64 {
    status["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("no batch id in {status:#}"))
}

/// Checks a refused upload end to end; returns its status.
async fn assert_refused(
    env: &TestEnv,
    case: &str,
    answer: (u16, Value),
    expected: Expected<'_>,
    prices_before: i64,
) -> Value {
    let (code, status) = answer;
    assert_eq!(code, expected.code, "{case}: {status:#}");
    assert_eq!(status["state"], "failed", "{case}: {status:#}");
    let errors = status["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("{case}: errors is not an array: {status:#}"));
    assert!(!errors.is_empty(), "{case}: {status:#}");
    assert!(
        status["error_count"].as_i64().unwrap() >= errors.len() as i64,
        "{case}: {status:#}"
    );
    for error in errors {
        for key in ["line", "column", "value", "message"] {
            assert!(error.get(key).is_some(), "{case}: {key} missing in {error}");
        }
    }
    let lines: Vec<u64> = errors.iter().map(|e| e["line"].as_u64().unwrap()).collect();
    assert!(
        lines.is_sorted(),
        "{case}: errors not sorted by line: {lines:?}"
    );
    let first = &errors[0];
    assert_eq!(first["line"], expected.line, "{case}: {status:#}");
    assert_eq!(
        first["column"].as_str(),
        expected.column,
        "{case}: {status:#}"
    );
    let message = first["message"].as_str().unwrap();
    assert!(
        message.contains(expected.message),
        "{case}: {message:?} does not say {:?}",
        expected.message
    );
    let summary = status["error"].as_str().unwrap();
    let column = expected
        .column
        .map(|column| format!(", column {column}"))
        .unwrap_or_default();
    assert!(
        summary.contains(&format!("the first is on line {}{column}:", expected.line)),
        "{case}: the summary does not name the line: {summary:?}"
    );
    assert!(summary.contains(expected.message), "{case}: {summary:?}");

    let (code, fetched) = env.get(&format!("/batches/{}", batch_id(&status))).await;
    assert_eq!(code, 200, "{case}: {fetched:#}");
    for field in [
        "id",
        "state",
        "error",
        "error_count",
        "errors",
        "bytes_received",
        "content_sha256",
    ] {
        assert_eq!(fetched[field], status[field], "{case}: {field} differs");
    }
    assert_eq!(env.prices_count().await, prices_before, "{case}");
    assert_eq!(env.unattached_staging_tables().await, 0, "{case}");
    status
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
            assert_eq!(status["errors"][0]["value"], value, "{}", case.name);
        }
    }
}

/// Submits a body that must be accepted, waits for its commit and checks the exact row count
/// and price sum of its batch, and that `prices` grew by exactly that much.
async fn assert_commits(env: &TestEnv, case: &str, answer: (u16, Value), rows: i64, sum: i64) {
    let before = env.prices_count().await;
    let (code, accepted) = answer;
    assert_eq!(code, 202, "{case}: {accepted:#}");
    assert_eq!(accepted["rows_total"], rows, "{case}: {accepted:#}");
    let id = batch_id(&accepted);
    let status = env.wait_final(id, FINAL_WITHIN).await;
    assert_eq!(status["state"], "committed", "{case}: {status:#}");
    assert_eq!(status["rows_loaded"], rows, "{case}");
    assert_eq!(status["error_count"], 0, "{case}");
    let row = env
        .db
        .query_one(
            "SELECT count(*), coalesce(sum(price), 0)::bigint FROM prices_by_batch WHERE batch_id = $1",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, i64>(0), row.get::<_, i64>(1)),
        (rows, sum),
        "{case}"
    );
    assert_eq!(env.prices_count().await, before + rows, "{case}");
    assert_eq!(env.unattached_staging_tables().await, 0, "{case}");
}

/// An API error: the status code and a JSON body `{"error": {"code", "message"}}`.
async fn assert_api_error(
    what: &str,
    response: reqwest::Response,
    status: u16,
    code: &str,
    message: &str,
) {
    assert_eq!(response.status().as_u16(), status, "{what}");
    let body: Value = response
        .json()
        .await
        .unwrap_or_else(|error| panic!("{what}: the body is not JSON: {error}"));
    assert_eq!(body["error"]["code"], code, "{what}: {body:#}");
    let text = body["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no message: {body:#}"));
    assert!(text.contains(message), "{what}: {text:?} lacks {message:?}");
}

async fn batches_count(env: &TestEnv) -> i64 {
    env.db
        .query_one("SELECT count(*) FROM batches", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_problems_are_reported_on_line_1() {
    let env = TestEnv::start(Options::default()).await;
    let header_case = |name, header: &str, line: &str, column, message, value| Case {
        name,
        body: format!("{header}\n{line}\n{GOOD}").into_bytes(),
        line: 1,
        column,
        message,
        value,
    };
    run_cases(
        &env,
        vec![
            header_case(
                "missing header (the file starts with data)",
                "CNSGH,NLRTM,2016-01-01,100",
                "CNSGH,NLRTM,2016-01-02,200",
                None,
                "missing header: the first line must be orig_code,dest_code,day,price",
                Some("CNSGH,NLRTM,2016-01-01,100"),
            ),
            header_case(
                "blank first line",
                "",
                "orig_code,dest_code,day,price",
                None,
                "missing header",
                None,
            ),
            header_case(
                "extra column",
                "orig_code,dest_code,day,price,currency",
                "CNSGH,NLRTM,2016-01-01,100,USD",
                Some("column 5"),
                "unexpected column in the header",
                Some("currency"),
            ),
            header_case(
                "missing column",
                "orig_code,dest_code,day",
                "CNSGH,NLRTM,2016-01-01",
                None,
                "header lacks column(s) price",
                None,
            ),
            header_case(
                "misspelled column",
                "orig_code,destination,day,price",
                "CNSGH,NLRTM,2016-01-01,100",
                Some("column 2"),
                "unexpected column in the header",
                Some("destination"),
            ),
            header_case(
                "doubled column",
                "orig_code,orig_code,day,price",
                "CNSGH,NLRTM,2016-01-01,100",
                Some("column 2"),
                "column orig_code appears twice",
                Some("orig_code"),
            ),
        ],
    )
    .await;
    assert_eq!(env.prices_count().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn columns_in_another_order_load_and_commit_correctly() {
    let env = TestEnv::start(Options::default()).await;
    let body = "price,day,dest_code,orig_code\n\
                7,2016-01-02,NLRTM,CNSGH\n\
                1244,2016-03-31,CNGGZ,DEHAM\n\
                0,2016-12-31,GBFXT,NLRTM\n";
    assert_commits(&env, "reordered columns", env.submit(body).await, 3, 1251).await;
    let rows: Vec<(String, String, String, i32)> = env
        .db
        .query(
            "SELECT orig_code, dest_code, day::text, price FROM prices ORDER BY day",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2), row.get(3)))
        .collect();
    let expected = [
        ("CNSGH", "NLRTM", "2016-01-02", 7),
        ("DEHAM", "CNGGZ", "2016-03-31", 1244),
        ("NLRTM", "GBFXT", "2016-12-31", 0),
    ]
    .map(|(o, d, day, p)| (o.to_string(), d.to_string(), day.to_string(), p));
    assert_eq!(rows, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_lines_are_reported_with_their_line() {
    let env = TestEnv::start(Options::default()).await;
    run_cases(
        &env,
        vec![
            line_case(
                "too few fields",
                b"CNSGH,NLRTM,2016-01-01",
                1,
                None,
                "expected 4 fields (orig_code,dest_code,day,price), found 3",
                Some("CNSGH,NLRTM,2016-01-01"),
            ),
            line_case(
                "too many fields",
                b"CNSGH,NLRTM,2016-01-01,100,7",
                2,
                None,
                "found 5",
                Some("CNSGH,NLRTM,2016-01-01,100,7"),
            ),
            line_case(
                "unterminated quote",
                b"CNSGH,\"NLRTM,2016-01-01,100",
                3,
                Some("dest_code"),
                "unterminated quoted field",
                None,
            ),
            line_case(
                "text after a closing quote",
                b"\"CNSGH\"X,NLRTM,2016-01-01,100",
                0,
                Some("orig_code"),
                "unexpected text after a closing quote",
                None,
            ),
            line_case(
                "quote inside an unquoted field",
                b"CNSGH,NLRTM,2016-01-01,1\"00",
                4,
                Some("price"),
                "quote inside an unquoted field",
                None,
            ),
            line_case(
                "blank line before the end",
                b"",
                2,
                None,
                "empty line",
                None,
            ),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ports_and_empty_values_name_their_column() {
    let env = TestEnv::start(Options::default()).await;
    run_cases(
        &env,
        vec![
            line_case(
                "unknown orig_code",
                b"XXXXX,NLRTM,2016-01-01,100",
                1,
                Some("orig_code"),
                "unknown port code",
                Some("XXXXX"),
            ),
            line_case(
                "unknown dest_code (codes are case-sensitive)",
                b"CNSGH,nlrtm,2016-01-01,100",
                3,
                Some("dest_code"),
                "unknown port code",
                Some("nlrtm"),
            ),
            line_case(
                "empty orig_code",
                b",NLRTM,2016-01-01,100",
                0,
                Some("orig_code"),
                "empty value",
                Some(""),
            ),
            line_case(
                "empty dest_code",
                b"CNSGH,,2016-01-01,100",
                2,
                Some("dest_code"),
                "empty value",
                Some(""),
            ),
            line_case(
                "empty day",
                b"CNSGH,NLRTM,,100",
                5,
                Some("day"),
                "empty value",
                Some(""),
            ),
            line_case(
                "quoted empty price",
                b"CNSGH,NLRTM,2016-01-01,\"\"",
                1,
                Some("price"),
                "empty value",
                Some(""),
            ),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_days_are_reported_with_their_line() {
    let env = TestEnv::start(Options::default()).await;
    run_cases(
        &env,
        vec![
            line_case(
                "February 30th",
                b"CNSGH,NLRTM,2016-02-30,100",
                1,
                Some("day"),
                "no such calendar date",
                Some("2016-02-30"),
            ),
            line_case(
                "month 13",
                b"CNSGH,NLRTM,2016-13-01,100",
                4,
                Some("day"),
                "no such calendar date",
                Some("2016-13-01"),
            ),
            line_case(
                "free text",
                b"CNSGH,NLRTM,next tuesday,100",
                2,
                Some("day"),
                "not a date in the form YYYY-MM-DD",
                Some("next tuesday"),
            ),
            line_case(
                "another date format",
                b"CNSGH,NLRTM,01/02/2016,100",
                0,
                Some("day"),
                "not a date in the form YYYY-MM-DD",
                Some("01/02/2016"),
            ),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_prices_are_reported_with_their_line() {
    let env = TestEnv::start(Options::default()).await;
    run_cases(
        &env,
        vec![
            line_case(
                "negative",
                b"CNSGH,NLRTM,2016-01-01,-5",
                1,
                Some("price"),
                "price must not be negative",
                Some("-5"),
            ),
            line_case(
                "decimal",
                b"CNSGH,NLRTM,2016-01-01,12.50",
                2,
                Some("price"),
                "whole number of USD",
                Some("12.50"),
            ),
            line_case(
                "exponent",
                b"CNSGH,NLRTM,2016-01-01,1e3",
                3,
                Some("price"),
                "whole number of USD",
                Some("1e3"),
            ),
            line_case(
                "over the largest integer",
                b"CNSGH,NLRTM,2016-01-01,2147483648",
                0,
                Some("price"),
                "larger than 2147483647",
                Some("2147483648"),
            ),
            line_case(
                "empty",
                b"CNSGH,NLRTM,2016-01-01,",
                6,
                Some("price"),
                "empty value",
                Some(""),
            ),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_and_header_only_files_are_refused() {
    let env = TestEnv::start(Options::default()).await;
    run_cases(
        &env,
        vec![
            Case {
                name: "empty body",
                body: Vec::new(),
                line: 1,
                column: None,
                message: "empty file",
                value: None,
            },
            Case {
                name: "header only",
                body: HEADER.as_bytes().to_vec(),
                line: 2,
                column: None,
                message: "no data lines",
                value: None,
            },
            Case {
                name: "header and blank lines only",
                body: format!("{HEADER}\n\r\n").into_bytes(),
                line: 2,
                column: None,
                message: "no data lines",
                value: None,
            },
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_that_are_not_text_and_overlong_lines_are_refused() {
    let env = TestEnv::start(Options::default()).await;
    let mut long_line = b"CNSGH,NLRTM,2016-01-01,".to_vec();
    long_line.extend(std::iter::repeat_n(b'1', 5_000));
    run_cases(
        &env,
        vec![
            line_case(
                "Latin-1 byte in a port code",
                b"CN\xE9GH,NLRTM,2016-01-01,100",
                2,
                Some("orig_code"),
                "not valid UTF-8",
                Some("CN\u{FFFD}GH"),
            ),
            line_case(
                "invalid UTF-8 in a quoted field",
                b"CNSGH,\"NL\xFF\xFERTM\",2016-01-01,100",
                1,
                Some("dest_code"),
                "not valid UTF-8",
                Some("NL\u{FFFD}\u{FFFD}RTM"),
            ),
            line_case(
                "NUL byte in a data line",
                b"CNSGH,NLRTM,2016-01-01,1\x0000",
                3,
                None,
                "line contains a NUL byte",
                None,
            ),
            Case {
                name: "NUL byte in the header",
                body: format!("orig_code,dest_code,day,price\0\n{GOOD}").into_bytes(),
                line: 1,
                column: None,
                message: "line contains a NUL byte",
                value: None,
            },
            line_case(
                "a 5,023-byte line (limit 4,096)",
                &long_line,
                4,
                None,
                "line is longer than the limit of 4096 bytes",
                None,
            ),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_and_truncated_gzip_are_refused() {
    let env = TestEnv::start(Options::default()).await;
    let gzip_header = [("content-encoding", "gzip")];

    // Not gzip at all: refused on line 1, before any line is read.
    let answer = env
        .submit_with(format!("{HEADER}{GOOD}"), &gzip_header)
        .await;
    let expected = Expected {
        code: 422,
        line: 1,
        column: None,
        message: "the gzip stream is corrupt or truncated",
    };
    assert_refused(&env, "not gzip", answer, expected, 0).await;

    // Every line decompresses, but the gzip trailer (CRC and length) is cut off: the error comes
    // when the line after the last one is read.
    let plain = format!("{HEADER}{GOOD}{GOOD}");
    let compressed = gzip(plain.as_bytes());
    let answer = env
        .submit_with(compressed[..compressed.len() - 6].to_vec(), &gzip_header)
        .await;
    let expected = Expected {
        code: 422,
        line: 4,
        column: None,
        message: "the gzip stream is corrupt or truncated",
    };
    assert_refused(&env, "gzip trailer cut off", answer, expected, 0).await;

    // A bigger file cut in the middle of its deflate stream: the error names the line that was
    // being read when the data ran out (the one after the last complete line).
    let codes = rates_file::port_codes(&support::data_dir());
    let plain = rates_file::whole(&codes, 3, 3_000);
    let compressed = gzip(&plain);
    let cut = &compressed[..compressed.len() / 2];
    let mut decoded = Vec::new();
    let partial = flate2::read::GzDecoder::new(cut).read_to_end(&mut decoded);
    assert!(partial.is_err(), "half a gzip stream must not decode");
    let complete_lines = decoded.iter().filter(|b| **b == b'\n').count() as u64;
    assert!(
        complete_lines > 10 && complete_lines < 3_001,
        "{complete_lines}"
    );
    let answer = env.submit_with(cut.to_vec(), &gzip_header).await;
    let expected = Expected {
        code: 422,
        line: complete_lines + 1,
        column: None,
        message: "the gzip stream is corrupt or truncated",
    };
    assert_refused(&env, "gzip cut in half", answer, expected, 0).await;

    // Flipped bytes inside the deflate stream.
    let mut corrupt = compressed.clone();
    for byte in &mut corrupt[20..60] {
        *byte ^= 0xA5;
    }
    let (code, status) = env.submit_with(corrupt, &gzip_header).await;
    assert_eq!(code, 422, "{status:#}");
    assert_eq!(status["state"], "failed");
    assert_eq!(env.prices_count().await, 0);
    assert_eq!(env.unattached_staging_tables().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_size_limit_gets_413() {
    let env = TestEnv::start(Options {
        max_body_bytes: 10_000,
        ..Options::default()
    })
    .await;
    let body = format!("{HEADER}{}", GOOD.repeat(1_000));
    let lines = 1_001u64;
    let (code, status) = env.submit(body.clone()).await;
    assert_eq!(code, 413, "{status:#}");
    assert_eq!(status["state"], "failed", "{status:#}");
    let first = &status["errors"][0];
    // Where in the file the limit is crossed depends on how the body arrived; it is within it.
    let line = first["line"].as_u64().unwrap();
    assert!((1..=lines).contains(&line), "{status:#}");
    let expected = Expected {
        code: 413,
        line,
        column: None,
        message: "the body is larger than the limit of 10000 bytes",
    };
    assert_refused(&env, "over the limit", (code, status), expected, 0).await;

    // A small gzip body that inflates past the limit is refused the same way.
    let compressed = gzip(body.as_bytes());
    assert!(compressed.len() < 10_000);
    let answer = env
        .submit_with(compressed, &[("content-encoding", "gzip")])
        .await;
    let line = answer.1["errors"][0]["line"].as_u64().unwrap_or(0);
    assert!((1..=lines).contains(&line), "{:#}", answer.1);
    let expected = Expected {
        code: 413,
        line,
        column: None,
        message: "the body is larger than the limit of 10000 bytes",
    };
    assert_refused(&env, "gzip over the limit", answer, expected, 0).await;

    // Just under the limit is fine.
    let small = format!("{HEADER}{}", GOOD.repeat(300));
    assert!(small.len() < 10_000);
    assert_commits(
        &env,
        "under the limit",
        env.submit(small).await,
        300,
        30_000,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_variants_load_and_commit_exactly() {
    let env = TestEnv::start(Options::default()).await;
    let cases: Vec<(&str, Vec<u8>, bool, i64, i64)> = vec![
        (
            "quoted fields",
            b"\"orig_code\",dest_code,\"day\",price\n\
              \"CNSGH\",\"NLRTM\",\"2016-01-02\",\"150\"\n\
              CNSGH,\"NLRTM\",2016-01-03,7\n"
                .to_vec(),
            false,
            2,
            157,
        ),
        (
            "CRLF line endings",
            b"orig_code,dest_code,day,price\r\nCNSGH,NLRTM,2016-01-01,1\r\nNLRTM,CNSGH,2016-01-02,2\r\nDEHAM,GBFXT,2016-01-03,3\r\n"
                .to_vec(),
            false,
            3,
            6,
        ),
        (
            "UTF-8 byte-order mark",
            [b"\xEF\xBB\xBF".as_slice(), HEADER.as_bytes(), GOOD.as_bytes()].concat(),
            false,
            1,
            100,
        ),
        (
            "no trailing newline",
            format!("{HEADER}{GOOD}CNSGH,NLRTM,2016-02-29,2147483647").into_bytes(),
            false,
            2,
            100 + 2_147_483_647,
        ),
        (
            "blank trailing lines",
            format!("{HEADER}{GOOD}{GOOD}\n\n\r\n\n").into_bytes(),
            false,
            2,
            200,
        ),
        (
            "gzip body",
            format!("{HEADER}{}", GOOD.repeat(1_234)).into_bytes(),
            true,
            1_234,
            123_400,
        ),
    ];
    for (name, body, compressed, rows, sum) in cases {
        let answer = if compressed {
            env.submit_with(gzip(&body), &[("content-encoding", "gzip")])
                .await
        } else {
            env.submit(body).await
        };
        assert_commits(&env, name, answer, rows, sum).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_row_deep_in_a_multi_chunk_file_is_reported_with_its_file_line() {
    let env = TestEnv::start(Options {
        workers: 2,
        chunk_rows: 1_000,
        ..Options::default()
    })
    .await;
    let codes = rates_file::port_codes(&support::data_dir());
    // 20,000 lines: the header and 19,999 rows; line 12,345 gets a decimal price.
    let text = String::from_utf8(rates_file::whole(&codes, 5, 19_999)).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 20_000);
    let bad = &mut lines[12_344];
    let comma = bad.rfind(',').unwrap();
    bad.truncate(comma + 1);
    bad.push_str("12.5");
    let body = lines.join("\n") + "\n";

    let answer = env.submit(body).await;
    let expected = Expected {
        code: 422,
        line: 12_345,
        column: Some("price"),
        message: "whole number of USD",
    };
    let status = assert_refused(&env, "line 12,345", answer, expected, 0).await;
    assert_eq!(status["error_count"], 1, "{status:#}");
    assert_eq!(status["errors"][0]["value"], "12.5");
    let id = batch_id(&status);

    // Publishing stopped before the chunk holding the bad line.
    let published: Option<i64> = env
        .db
        .query_one(
            "SELECT max(last_line) FROM chunks WHERE batch_id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert!(published.unwrap_or(0) < 12_345, "{published:?}");
    // Workers drop whatever was published of the failed batch; nothing becomes visible.
    env.wait_until("the queue to drain", FINAL_WITHIN, || async {
        env.queue_depth().await == 0
    })
    .await;
    let (_, after) = env.get(&format!("/batches/{id}")).await;
    assert_eq!(after["state"], "failed");
    assert_eq!(env.prices_count().await, 0);
    assert_eq!(env.unattached_staging_tables().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_bad_rows_are_counted_and_the_first_ones_listed() {
    let env = TestEnv::start(Options {
        max_errors: 10,
        ..Options::default()
    })
    .await;

    // 200 rows, every fourth bad (50 bad rows), all in one chunk: every error is counted, the
    // first ten are listed, in line order.
    let mut body = HEADER.to_string();
    let mut bad_lines = Vec::new();
    for i in 0..200u64 {
        let line = i + 2;
        if i % 4 == 3 {
            bad_lines.push(line);
            body.push_str(&format!("CNSGH,XXXXX,2016-01-01,{i}\n"));
        } else {
            body.push_str(&format!("CNSGH,NLRTM,2016-01-01,{i}\n"));
        }
    }
    let answer = env.submit(body).await;
    let expected = Expected {
        code: 422,
        line: bad_lines[0],
        column: Some("dest_code"),
        message: "unknown port code",
    };
    let status = assert_refused(&env, "50 bad rows", answer, expected, 0).await;
    assert!(status["error_count"].as_u64().unwrap() >= 50, "{status:#}");
    let listed: Vec<u64> = status["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|error| error["line"].as_u64().unwrap())
        .collect();
    assert_eq!(listed, bad_lines[..10]);
    assert!(
        status["error"]
            .as_str()
            .unwrap()
            .starts_with("the file has 50 error(s)"),
        "{status:#}"
    );

    // 100,000 bad rows: reading stops once the limit is reached; the count says "at least".
    let mut body = HEADER.to_string();
    for i in 0..100_000u64 {
        body.push_str(&format!("CNSGH,NLRTM,2016-01-01,-{i}\n"));
    }
    let answer = env.submit(body).await;
    let expected = Expected {
        code: 422,
        line: 2,
        column: Some("price"),
        message: "must not be negative",
    };
    let status = assert_refused(&env, "100,000 bad rows", answer, expected, 0).await;
    let count = status["error_count"].as_u64().unwrap();
    assert!((10..100_000).contains(&count), "{status:#}");
    let listed: Vec<u64> = status["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|error| error["line"].as_u64().unwrap())
        .collect();
    assert_eq!(listed, (2..12).collect::<Vec<u64>>());
    assert!(
        status["error"]
            .as_str()
            .unwrap()
            .starts_with(&format!("the file has at least {count} error(s)")),
        "{status:#}"
    );

    // A double-spaced file (a blank line after every row) with a bad price on line 3: the blank
    // lines reach the limit before the chunk holding line 3 is checked, and line 3 still comes
    // first.
    let mut body = format!("{HEADER}{GOOD}CNSGH,NLRTM,2016-01-01,-1\n");
    for _ in 0..30 {
        body.push('\n');
        body.push_str(GOOD);
    }
    let answer = env.submit(body).await;
    let expected = Expected {
        code: 422,
        line: 3,
        column: Some("price"),
        message: "must not be negative",
    };
    let status = assert_refused(&env, "double-spaced", answer, expected, 0).await;
    assert!(status["error_count"].as_u64().unwrap() >= 10, "{status:#}");
    let listed: Vec<u64> = status["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|error| error["line"].as_u64().unwrap())
        .collect();
    let mut first_ten = vec![3];
    first_ten.extend((4..=20).step_by(2));
    assert_eq!(listed, first_ten, "{status:#}");
    assert_eq!(status["errors"][1]["message"], "empty line");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_makes_a_retry_safe_and_duplicates_are_flagged() {
    let env = TestEnv::start(Options::default()).await;
    let body = format!("{HEADER}{}", GOOD.repeat(250));
    let key = [("idempotency-key", "upload-2016-01-01")];

    let (code, first) = env.submit_with(body.clone(), &key).await;
    assert_eq!(code, 202, "{first:#}");
    let first_id = batch_id(&first);
    let (code, again) = env.submit_with(body.clone(), &key).await;
    assert_eq!(code, 200, "{again:#}");
    assert_eq!(batch_id(&again), first_id);
    let status = env.wait_final(first_id, FINAL_WITHIN).await;
    assert_eq!(status["state"], "committed", "{status:#}");
    let (code, after_commit) = env.submit_with(body.clone(), &key).await;
    assert_eq!(code, 200, "{after_commit:#}");
    assert_eq!(batch_id(&after_commit), first_id);
    assert_eq!(after_commit["state"], "committed");
    assert_eq!(batches_count(&env).await, 1);
    assert_eq!(env.prices_count().await, 250, "the rows are there once");

    // The same bytes without a key: a new batch (a batch adds rows), flagged as a duplicate.
    let (code, second) = env.submit(body.clone()).await;
    assert_eq!(code, 202, "{second:#}");
    let second_id = batch_id(&second);
    assert_ne!(second_id, first_id);
    let sha = hex::encode(Sha256::digest(body.as_bytes()));
    assert_eq!(first["content_sha256"], sha);
    assert_eq!(second["content_sha256"], sha);
    assert_eq!(second["duplicate_of"], serde_json::json!([first_id]));
    let status = env.wait_final(second_id, FINAL_WITHIN).await;
    assert_eq!(status["state"], "committed", "{status:#}");
    assert_eq!(status["duplicate_of"], serde_json::json!([first_id]));
    assert_eq!(env.prices_count().await, 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_that_broke_off_fails_and_frees_its_key_for_the_retry() {
    let env = TestEnv::start(Options::default()).await;
    let key = "upload-broken-then-retried";
    let lookup = format!("/batches?idempotency_key={key}");
    let body = format!("{HEADER}{}", GOOD.repeat(400));

    // Send half of the file, wait until the coordinator holds the batch, then break the upload.
    let (frames, received) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(4);
    let stream = futures_util::stream::unfold(received, |mut received| async move {
        received.recv().await.map(|frame| (frame, received))
    });
    let upload = env
        .http
        .post(format!("{}/batches", env.base))
        .header("content-type", "text/csv")
        .header("idempotency-key", key)
        .body(reqwest::Body::wrap_stream(stream))
        .send();
    let upload = tokio::spawn(upload);
    let half = body.len() / 2;
    frames
        .send(Ok(bytes::Bytes::copy_from_slice(&body.as_bytes()[..half])))
        .await
        .unwrap();
    env.wait_until("the batch to be receiving", FINAL_WITHIN, || async {
        let (_, page) = env.get(&lookup).await;
        page["batches"][0]["state"] == "receiving"
    })
    .await;
    let (_, page) = env.get(&lookup).await;
    let broken_id = batch_id(&page["batches"][0]);
    frames
        .send(Err(std::io::Error::other("the client's network went away")))
        .await
        .unwrap();
    assert!(
        upload.await.unwrap().is_err(),
        "the client sees its upload fail"
    );

    let status = env.wait_final(broken_id, FINAL_WITHIN).await;
    assert_eq!(status["state"], "failed", "{status:#}");
    let (_, page) = env.get(&lookup).await;
    assert_eq!(
        page["batches"],
        serde_json::json!([]),
        "the key of a broken upload is released"
    );
    assert_eq!(env.prices_count().await, 0);
    assert_eq!(env.unattached_staging_tables().await, 0);

    // The client retries with the same key: a new batch, loaded once.
    let (code, retried) = env
        .submit_with(body.clone(), &[("idempotency-key", key)])
        .await;
    assert_eq!(code, 202, "{retried:#}");
    let retried_id = batch_id(&retried);
    assert_ne!(retried_id, broken_id);
    let status = env.wait_final(retried_id, FINAL_WITHIN).await;
    assert_eq!(status["state"], "committed", "{status:#}");
    let (code, again) = env.submit_with(body, &[("idempotency-key", key)]).await;
    assert_eq!(code, 200, "{again:#}");
    assert_eq!(batch_id(&again), retried_id);
    let (_, page) = env.get(&lookup).await;
    assert_eq!(page["batches"][0]["id"], retried_id);
    assert_eq!(env.prices_count().await, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_and_cancel_need_the_token_and_status_does_not() {
    let env = TestEnv::start(Options {
        token: Some("s3cret".into()),
        ..Options::default()
    })
    .await;
    let body = format!("{HEADER}{GOOD}");
    let submit = |authorization: Option<&str>| {
        let mut request = env
            .http
            .post(format!("{}/batches", env.base))
            .header("content-type", "text/csv")
            .body(body.clone());
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        request.send()
    };

    let response = submit(None).await.unwrap();
    assert_api_error(
        "submit without a token",
        response,
        401,
        "unauthorized",
        "Authorization: Bearer",
    )
    .await;
    let response = submit(Some("Bearer wrong")).await.unwrap();
    assert_api_error(
        "submit with a wrong token",
        response,
        401,
        "unauthorized",
        "not valid",
    )
    .await;
    let response = submit(Some("Basic czNjcmV0")).await.unwrap();
    assert_api_error(
        "submit with another scheme",
        response,
        401,
        "unauthorized",
        "Bearer",
    )
    .await;
    assert_eq!(
        batches_count(&env).await,
        0,
        "a refused request creates no batch"
    );
    assert_eq!(env.prices_count().await, 0);

    let response = submit(Some("Bearer s3cret")).await.unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let accepted: Value = response.json().await.unwrap();
    let id = batch_id(&accepted);

    // Reading is open.
    let (code, status) = env.get(&format!("/batches/{id}")).await;
    assert_eq!(code, 200, "{status:#}");
    assert_eq!(status["id"], id);
    let (code, list) = env.get("/batches").await;
    assert_eq!(code, 200, "{list:#}");
    assert_eq!(list["batches"][0]["id"], id);

    // Cancelling is not.
    let cancel = |authorization: Option<&str>| {
        let mut request = env.http.post(format!("{}/batches/{id}/cancel", env.base));
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        request.send()
    };
    let response = cancel(None).await.unwrap();
    assert_api_error(
        "cancel without a token",
        response,
        401,
        "unauthorized",
        "Bearer",
    )
    .await;
    let response = cancel(Some("Bearer s3cre")).await.unwrap();
    assert_api_error(
        "cancel with a wrong token",
        response,
        401,
        "unauthorized",
        "not valid",
    )
    .await;

    let status = env.wait_final(id, FINAL_WITHIN).await;
    assert_eq!(status["state"], "committed", "{status:#}");
    assert_eq!(env.prices_count().await, 1);
}

/// A client still sending a big body gets the answer to a request refused before its body was
/// read (the coordinator reads the rest first), never a reset or a broken pipe. Each refusal is
/// sent several times: before the fix about one in three broke off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_reaches_a_client_that_is_still_sending() {
    let env = TestEnv::start(Options {
        workers: 0,
        token: Some("s3cret".into()),
        ..Options::default()
    })
    .await;
    let body = format!("{HEADER}{}", GOOD.repeat(300_000)).into_bytes();
    let refusals = [
        (
            "a wrong token",
            "text/csv",
            "Bearer wrong",
            401,
            "unauthorized",
        ),
        (
            "another content type",
            "application/json",
            "Bearer s3cret",
            415,
            "unsupported_media_type",
        ),
    ];
    for (case, content_type, authorization, code, error) in refusals {
        for attempt in 0..5 {
            let response = env
                .http
                .post(format!("{}/batches", env.base))
                .header("content-type", content_type)
                .header("authorization", authorization)
                .body(body.clone())
                .send()
                .await
                .unwrap_or_else(|broken| panic!("{case}, attempt {attempt}: {broken:?}"));
            assert_api_error(case, response, code, error, "").await;
        }
    }
    assert_eq!(
        batches_count(&env).await,
        0,
        "a refused request creates no batch"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loading_batch_can_be_cancelled_and_stays_cancelled() {
    // No workers: the batch waits in the queue, loading.
    let mut env = TestEnv::start(Options {
        workers: 0,
        chunk_rows: 100,
        ..Options::default()
    })
    .await;
    let codes = rates_file::port_codes(&support::data_dir());
    let (code, accepted) = env.submit(rates_file::whole(&codes, 9, 1_000)).await;
    assert_eq!(code, 202, "{accepted:#}");
    assert_eq!(accepted["state"], "loading");
    let id = batch_id(&accepted);
    assert_eq!(env.queue_depth().await, 10);

    let cancel_url = format!("{}/batches/{id}/cancel", env.base);
    let response = env.http.post(&cancel_url).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let cancelled: Value = response.json().await.unwrap();
    assert_eq!(cancelled["id"], id);
    assert_eq!(cancelled["state"], "cancelled", "{cancelled:#}");
    assert_eq!(env.prices_count().await, 0);
    assert_eq!(env.unattached_staging_tables().await, 0);

    let response = env.http.post(&cancel_url).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 409);
    let again: Value = response.json().await.unwrap();
    assert_eq!(again["state"], "cancelled", "{again:#}");

    // Workers now get the chunks, find the batch closed and drop them.
    env.start_workers(2);
    env.wait_until("the queue to drain", FINAL_WITHIN, || async {
        env.queue_depth().await == 0
    })
    .await;
    let (code, status) = env.get(&format!("/batches/{id}")).await;
    assert_eq!(code, 200);
    assert_eq!(status["state"], "cancelled", "{status:#}");
    assert_eq!(status["chunks"]["loaded"], 0, "{status:#}");
    assert_eq!(env.prices_count().await, 0);
    assert_eq!(env.unattached_staging_tables().await, 0);

    // A committed batch cannot be cancelled.
    let (code, accepted) = env.submit(format!("{HEADER}{GOOD}")).await;
    assert_eq!(code, 202, "{accepted:#}");
    let committed = batch_id(&accepted);
    let status = env.wait_final(committed, FINAL_WITHIN).await;
    assert_eq!(status["state"], "committed", "{status:#}");
    let response = env
        .http
        .post(format!("{}/batches/{committed}/cancel", env.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 409);
    assert_eq!(env.prices_count().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_json_errors() {
    let env = TestEnv::start(Options {
        workers: 0,
        ..Options::default()
    })
    .await;
    let url = |path: &str| format!("{}{path}", env.base);
    let body = format!("{HEADER}{GOOD}");

    let response = env
        .http
        .post(url("/batches"))
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_api_error(
        "JSON content type",
        response,
        415,
        "unsupported_media_type",
        "text/csv (got application/json)",
    )
    .await;
    let response = env
        .http
        .post(url("/batches"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_api_error(
        "no content type",
        response,
        415,
        "unsupported_media_type",
        "(got none)",
    )
    .await;
    let response = env
        .http
        .post(url("/batches"))
        .header("content-type", "text/csv")
        .header("content-encoding", "br")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_api_error(
        "brotli",
        response,
        415,
        "unsupported_encoding",
        "gzip or identity",
    )
    .await;
    let long_key = "k".repeat(201);
    let response = env
        .http
        .post(url("/batches"))
        .header("content-type", "text/csv")
        .header("idempotency-key", long_key)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_api_error(
        "overlong Idempotency-Key",
        response,
        400,
        "bad_request",
        "Idempotency-Key",
    )
    .await;

    let cases: [(&str, &str, u16, &str, &str); 11] = [
        (
            "GET",
            "/batches/424242",
            404,
            "not_found",
            "no batch 424242",
        ),
        (
            "POST",
            "/batches/424242/cancel",
            404,
            "not_found",
            "no batch 424242",
        ),
        ("GET", "/batches/abc", 400, "bad_request", "whole number"),
        ("GET", "/batches/1.5", 400, "bad_request", "whole number"),
        (
            "POST",
            "/batches/abc/cancel",
            400,
            "bad_request",
            "whole number",
        ),
        ("GET", "/batches?limit=0", 400, "bad_request", "limit"),
        ("GET", "/batches?limit=101", 400, "bad_request", "limit"),
        ("GET", "/batches?limit=abc", 400, "bad_request", "limit"),
        (
            "GET",
            "/batches?before=yesterday",
            400,
            "bad_request",
            "before",
        ),
        ("GET", "/nothing/here", 404, "not_found", "no such endpoint"),
        (
            "GET",
            "/batches/1/rows",
            404,
            "not_found",
            "no such endpoint",
        ),
    ];
    for (method, path, status, code, message) in cases {
        let request = match method {
            "GET" => env.http.get(url(path)),
            _ => env.http.post(url(path)),
        };
        let response = request.send().await.unwrap();
        assert_api_error(&format!("{method} {path}"), response, status, code, message).await;
    }
    assert_eq!(batches_count(&env).await, 0, "no request created a batch");
    assert_eq!(env.prices_count().await, 0);
}

#[test]
fn the_configuration_refuses_a_public_address_without_a_token() {
    let mut config = Config::defaults();
    config.listen = "0.0.0.0:8080".parse().unwrap();
    config.token = None;
    config.insecure = false;
    let error = config.check().expect_err("a public address needs a token");
    assert!(format!("{error:#}").contains("INGEST_TOKEN"), "{error:#}");

    config.insecure = true;
    config.check().expect("--insecure allows it");

    config.insecure = false;
    config.token = Some("s3cret".into());
    config.check().expect("a token allows it");

    config.listen = "127.0.0.1:8080".parse().unwrap();
    config.token = None;
    config.check().expect("loopback needs no token");
}
