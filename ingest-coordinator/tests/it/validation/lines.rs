//! Malformed lines, a bad row deep in a multi-chunk file, and many bad rows.

use super::{assert_refused, line_case, run_cases, Expected, FINAL_WITHIN, GOOD, HEADER};
use ingest_testkit::{rates_file, Options, TestEnv};
use ingest_wire::BatchState;

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
async fn a_bad_row_deep_in_a_multi_chunk_file_is_reported_with_its_file_line() {
    let env = TestEnv::start(Options {
        workers: 2,
        chunk_rows: 1_000,
        ..Options::default()
    })
    .await;
    let codes = rates_file::port_codes(&ingest_testkit::data_dir());
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
    assert_eq!(status.error_count, 1, "{status:#?}");
    assert_eq!(status.errors[0].value.as_deref(), Some("12.5"));
    let id = status.id;

    // Publishing stopped before the chunk holding the bad line.
    let published: Option<i64> = env
        .db
        .query_one(
            "SELECT max(last_line) FROM chunks WHERE batch_id = $1",
            &[&id.get()],
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
    let after = env.status(id).await;
    assert_eq!(after.state, BatchState::Failed, "{after:#?}");
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
    assert!(status.error_count >= 50, "{status:#?}");
    let listed: Vec<u64> = status.errors.iter().map(|error| error.line.get()).collect();
    assert_eq!(listed, bad_lines[..10]);
    assert!(
        status
            .error
            .as_deref()
            .unwrap()
            .starts_with("the file has 50 error(s)"),
        "{status:#?}"
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
    let count = status.error_count;
    assert!((10..100_000).contains(&count), "{status:#?}");
    let listed: Vec<u64> = status.errors.iter().map(|error| error.line.get()).collect();
    assert_eq!(listed, (2..12).collect::<Vec<u64>>());
    assert!(
        status
            .error
            .as_deref()
            .unwrap()
            .starts_with(&format!("the file has at least {count} error(s)")),
        "{status:#?}"
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
    assert!(status.error_count >= 10, "{status:#?}");
    let listed: Vec<u64> = status.errors.iter().map(|error| error.line.get()).collect();
    let mut first_ten = vec![3];
    first_ten.extend((4..=20).step_by(2));
    assert_eq!(listed, first_ten, "{status:#?}");
    assert_eq!(status.errors[1].message, "empty line");
}
