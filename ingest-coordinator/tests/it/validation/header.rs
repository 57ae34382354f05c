//! Header problems, reported on line 1, and columns in another order, which load correctly.

use super::{assert_commits, run_cases, Case, GOOD};
use ingest_testkit::{Options, TestEnv};

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
    let before = env.prices_count().await;
    let answer = env.submit(body).await;
    assert_commits(&env, "reordered columns", answer, 3, 1251, before).await;
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
