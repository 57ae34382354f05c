//! Bodies: empty and header-only files, bytes that are not text, overlong lines, corrupt or
//! truncated gzip, a body over the size limit, and the accepted variants of the format.

use super::{
    assert_commits, assert_refused, gzip, line_case, run_cases, Case, Expected, GOOD, HEADER,
};
use ingest_testkit::{rates_file, Options, TestEnv};
use ingest_wire::BatchState;
use std::io::Read;

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
    let codes = rates_file::port_codes(&ingest_testkit::data_dir());
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
    let (code, answer) = env.submit_with(corrupt, &gzip_header).await;
    assert_eq!(code, 422, "{answer:?}");
    assert_eq!(answer.batch().state, BatchState::Failed, "{answer:?}");
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
    let (code, answer) = env.submit(body.clone()).await;
    assert_eq!(code, 413, "{answer:?}");
    let status = answer.batch();
    assert_eq!(status.state, BatchState::Failed, "{answer:?}");
    let first = status
        .errors
        .first()
        .unwrap_or_else(|| panic!("no error listed: {answer:?}"));
    // Where in the file the limit is crossed depends on how the body arrived; it is within it.
    let line = first.line.get();
    assert!((1..=lines).contains(&line), "{answer:?}");
    let expected = Expected {
        code: 413,
        line,
        column: None,
        message: "the body is larger than the limit of 10000 bytes",
    };
    assert_refused(&env, "over the limit", (code, answer), expected, 0).await;

    // A small gzip body that inflates past the limit is refused the same way.
    let compressed = gzip(body.as_bytes());
    assert!(compressed.len() < 10_000);
    let answer = env
        .submit_with(compressed, &[("content-encoding", "gzip")])
        .await;
    let line = answer
        .1
        .batch()
        .errors
        .first()
        .map_or(0, |error| error.line.get());
    assert!((1..=lines).contains(&line), "{:?}", answer.1);
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
    let before = env.prices_count().await;
    let answer = env.submit(small).await;
    assert_commits(&env, "under the limit", answer, 300, 30_000, before).await;
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
        let before = env.prices_count().await;
        let answer = if compressed {
            env.submit_with(gzip(&body), &[("content-encoding", "gzip")])
                .await
        } else {
            env.submit(body).await
        };
        assert_commits(&env, name, answer, rows, sum, before).await;
    }
}
