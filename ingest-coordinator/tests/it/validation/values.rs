//! Values that are wrong: unknown ports and empty values, bad days, bad prices.

use super::{line_case, run_cases};
use ingest_testkit::{Options, TestEnv};

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
