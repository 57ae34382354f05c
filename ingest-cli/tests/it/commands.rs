//! The `ingest` command as a user runs it: the real binary against a real coordinator and
//! workers (fresh database and queues per test). Checks what it prints, its exit code, and what
//! reached `prices`.

use ingest_testkit::{Options, TestEnv};
use ingest_wire::{BatchState, BatchStatus};
use std::process::Output;

/// The sample batch's rows.
const SAMPLE_ROWS: i64 = 56_689;

/// Runs `ingest` with `args` against `env`'s coordinator, with `token` as `INGEST_TOKEN`.
async fn ingest(env: &TestEnv, token: Option<&str>, args: &[&str]) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_ingest"));
    command.args(args).env("INGEST_URL", &env.base);
    match token {
        Some(token) => command.env("INGEST_TOKEN", token),
        None => command.env_remove("INGEST_TOKEN"),
    };
    command.output().await.expect("run ingest")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_follows_the_sample_to_commit_and_status_and_list_show_it() {
    let env = TestEnv::start(Options {
        workers: 2,
        token: Some("s3cret".into()),
        ..Options::default()
    })
    .await;
    let sample = ingest_testkit::sample_prices();
    let output = ingest(&env, Some("s3cret"), &["submit", sample.to_str().unwrap()]).await;
    let printed = stdout(&output);
    assert!(output.status.success(), "{printed}\n{}", stderr(&output));
    assert!(
        printed.contains(&format!("accepted: {SAMPLE_ROWS} rows")),
        "{printed}"
    );
    assert!(
        printed.contains(&format!("committed: {SAMPLE_ROWS} rows visible in prices")),
        "{printed}"
    );
    assert_eq!(env.prices_count().await, SAMPLE_ROWS);

    let id: i64 = env
        .db
        .query_one("SELECT max(id) FROM batches", &[])
        .await
        .unwrap()
        .get(0);
    let output = ingest(&env, None, &["status", &id.to_string()]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let status: BatchStatus =
        serde_json::from_slice(&output.stdout).expect("status is a batch status");
    assert_eq!(status.state, BatchState::Committed);
    assert_eq!(status.rows_loaded, SAMPLE_ROWS as u64);

    let output = ingest(&env, None, &["list"]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let first = stdout(&output)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    let fields: Vec<&str> = first.split_whitespace().collect();
    assert_eq!(
        fields[..2],
        [id.to_string().as_str(), "committed"],
        "{first}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_file_exits_non_zero_naming_its_line() {
    let env = TestEnv::start(Options {
        workers: 1,
        ..Options::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.csv");
    std::fs::write(
        &file,
        "orig_code,dest_code,day,price\nCNSGH,NLRTM,2016-01-01,100\nCNSGH,XXXXX,2016-01-02,7\n",
    )
    .unwrap();
    let output = ingest(&env, None, &["submit", file.to_str().unwrap()]).await;
    assert!(!output.status.success());
    let errors = stderr(&output);
    let last = errors.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("ingest: batch ") && last.contains("was refused"),
        "{errors}"
    );
    assert!(
        last.contains("line 3, column dest_code: unknown port code"),
        "{errors}"
    );
    assert_eq!(env.prices_count().await, 0);
    assert_eq!(env.unattached_staging_tables().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_or_no_coordinator_is_a_one_line_error() {
    let env = TestEnv::start(Options {
        workers: 0,
        token: Some("s3cret".into()),
        ..Options::default()
    })
    .await;
    let sample = ingest_testkit::sample_prices();
    let output = ingest(&env, Some("wrong"), &["submit", sample.to_str().unwrap()]).await;
    assert!(!output.status.success());
    assert_eq!(
        stderr(&output),
        "ingest: the bearer token is not valid (HTTP 401)\n"
    );
    let batches: i64 = env
        .db
        .query_one("SELECT count(*) FROM batches", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(batches, 0, "a refused request creates no batch");

    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_ingest"))
        .args(["status", "1"])
        .env("INGEST_URL", "http://127.0.0.1:1")
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let errors = stderr(&output);
    assert_eq!(errors.lines().count(), 1, "{errors}");
    assert!(errors.starts_with("ingest: "), "{errors}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_over_the_limit_is_refused_while_it_is_still_being_sent() {
    // The coordinator stops reading at the limit and answers 413 while `ingest` is still
    // sending; `ingest` reports the refusal (from the answer, or, should the close cut the answer
    // off, from the batch it finds again by its Idempotency-Key).
    let env = TestEnv::start(Options {
        workers: 0,
        max_body_bytes: 100_000,
        ..Options::default()
    })
    .await;
    let sample = ingest_testkit::sample_prices();
    let output = ingest(&env, None, &["submit", sample.to_str().unwrap()]).await;
    assert!(!output.status.success());
    let errors = stderr(&output);
    let last = errors.lines().last().unwrap_or_default();
    assert!(last.contains("was refused"), "{errors}");
    assert!(
        last.contains("the body is larger than the limit of 100000 bytes"),
        "{errors}"
    );
    assert_eq!(env.prices_count().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retract_takes_a_committed_batch_out_of_prices_in_one_line() {
    let env = TestEnv::start(Options {
        workers: 2,
        token: Some("s3cret".into()),
        ..Options::default()
    })
    .await;
    let sample = std::fs::read(ingest_testkit::sample_prices()).unwrap();
    let (code, accepted) = env
        .submit_with(sample, &[("authorization", "Bearer s3cret")])
        .await;
    assert_eq!(code, 202, "{accepted:?}");
    let id = accepted.id();
    let status = env.wait_final(id, std::time::Duration::from_secs(60)).await;
    assert_eq!(status.state, BatchState::Committed, "{status:#?}");
    assert_eq!(env.prices_count().await, SAMPLE_ROWS);

    let output = ingest(&env, None, &["retract", &id.to_string()]).await;
    assert!(!output.status.success());
    assert_eq!(
        stderr(&output),
        "ingest: this endpoint needs an Authorization: Bearer <INGEST_TOKEN> header (HTTP 401)\n"
    );
    assert_eq!(env.prices_count().await, SAMPLE_ROWS);

    let output = ingest(&env, Some("s3cret"), &["retract", &id.to_string()]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        stdout(&output),
        format!("batch {id} retracted: {SAMPLE_ROWS} rows taken out of prices\n")
    );
    assert_eq!(env.prices_count().await, 0);
    assert_eq!(env.batch_state(id).await, BatchState::Retracted);

    let output = ingest(&env, Some("s3cret"), &["retract", &id.to_string()]).await;
    assert!(!output.status.success());
    assert_eq!(
        stderr(&output),
        format!("ingest: batch {id} is already retracted\n")
    );
    let output = ingest(&env, Some("s3cret"), &["retract", "987654"]).await;
    assert!(!output.status.success());
    assert_eq!(stderr(&output), "ingest: no batch 987654 (HTTP 404)\n");

    // `ingest wait` on a retracted batch ends non-zero, saying so.
    let output = ingest(&env, None, &["wait", &id.to_string()]).await;
    assert!(!output.status.success());
    let errors = stderr(&output);
    assert_eq!(errors.lines().count(), 1, "{errors}");
    assert!(errors.contains("retracted"), "{errors}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_replaces_a_committed_batch_and_says_so() {
    let env = TestEnv::start(Options {
        workers: 2,
        ..Options::default()
    })
    .await;
    let sample = ingest_testkit::sample_prices();
    let sample = sample.to_str().unwrap();
    let output = ingest(&env, None, &["submit", sample]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let old: i64 = env
        .db
        .query_one("SELECT max(id) FROM batches", &[])
        .await
        .unwrap()
        .get(0);
    let dir = tempfile::tempdir().unwrap();
    let corrected = dir.path().join("corrected.csv");
    std::fs::write(
        &corrected,
        "orig_code,dest_code,day,price\nCNSGH,NLRTM,2016-01-01,100\nCNSGH,NLRTM,2016-01-02,101\n",
    )
    .unwrap();
    let corrected = corrected.to_str().unwrap();

    let old_text = old.to_string();
    let output = ingest(&env, None, &["submit", "--replaces", &old_text, corrected]).await;
    let printed = stdout(&output);
    assert!(output.status.success(), "{printed}\n{}", stderr(&output));
    let new = old + 1;
    assert!(
        printed.contains(&format!(
            "batch {new} accepted: 2 rows in 1 chunks; it replaces batch {old} when it commits"
        )),
        "{printed}"
    );
    assert!(
        printed.contains(&format!(
            "batch {new} replaced batch {old}: its rows left prices in the same step"
        )),
        "{printed}"
    );
    assert_eq!(env.prices_count().await, 2);

    // Replaced once: again is refused in one line, and so is a retract.
    let output = ingest(&env, None, &["submit", "--replaces", &old_text, corrected]).await;
    assert!(!output.status.success());
    assert_eq!(
        stderr(&output),
        format!("ingest: batch {old} was replaced by batch {new} already (HTTP 409)\n")
    );
    let output = ingest(&env, None, &["retract", &old_text]).await;
    assert!(!output.status.success());
    assert_eq!(
        stderr(&output),
        format!("ingest: batch {old} is already retracted: batch {new} replaced it\n")
    );
    let output = ingest(&env, None, &["submit", "--replaces", "0", corrected]).await;
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert_eq!(env.prices_count().await, 2);
}
