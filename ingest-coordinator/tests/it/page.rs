//! The status page in a real browser (headless Chromium over WebDriver): after a good and a bad
//! file, it shows the committed batch's row count and the failed batch's first error line,
//! with nothing fetched from outside the coordinator. A screenshot is saved under the test's
//! output folder.

use ingest_testkit::browser::Browser;
use ingest_testkit::{Options, TestEnv};
use ingest_wire::BatchState;
use std::path::PathBuf;
use std::time::Duration;

const WITHIN: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_a_committed_and_a_failed_batch() {
    let env = TestEnv::start(Options::default()).await;
    let good = std::fs::read(ingest_testkit::sample_prices()).unwrap();
    let (code, committed) = env.submit(good).await;
    assert_eq!(code, 202, "{committed:?}");
    let bad =
        "orig_code,dest_code,day,price\nCNSGH,NLRTM,2016-01-01,100\nCNSGH,XXXXX,2016-01-02,7\n";
    let (code, failed) = env.submit(bad).await;
    assert_eq!(code, 422, "{failed:?}");
    let status = env.wait_final(committed.id(), WITHIN).await;
    assert_eq!(status.state, BatchState::Committed, "{status:#?}");

    let (code, html) = env.get_text("/").await;
    assert_eq!(code, 200);
    for external in ["http://", "https://", "//cdn"] {
        assert!(!html.contains(external), "the page loads {external}…");
    }

    let browser = Browser::start().await;
    browser.goto(&format!("{}/", env.base)).await;
    let text = browser
        .wait_for_text("both batches", WITHIN, |text| {
            text.contains("56,689") && text.contains("line 3, column dest_code")
        })
        .await;
    assert!(text.contains(&format!("#{}", committed.id())), "{text}");
    assert!(text.contains("committed"), "{text}");
    assert!(text.contains(&format!("#{}", failed.id())), "{text}");
    assert!(text.contains("failed"), "{text}");
    assert!(text.contains("unknown port code"), "{text}");
    assert!(text.contains("2 recent batches, 0 open"), "{text}");

    let screenshot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("status-page/status-page.png");
    browser.screenshot(&screenshot).await;
    let png = std::fs::read(&screenshot).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    println!("screenshot: {}", screenshot.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_a_replaced_batch_and_what_replaced_it() {
    let env = TestEnv::start(Options::default()).await;
    let first = "orig_code,dest_code,day,price\nCNSGH,NLRTM,2016-01-01,100\n";
    let (code, old) = env.submit(first).await;
    assert_eq!(code, 202, "{old:?}");
    let old = old.id();
    assert_eq!(
        env.wait_final(old, WITHIN).await.state,
        BatchState::Committed
    );
    let corrected = "orig_code,dest_code,day,price\nCNSGH,NLRTM,2016-01-01,10\n";
    let (code, new) = env
        .submit_with(corrected, &[("replaces", &old.to_string())])
        .await;
    assert_eq!(code, 202, "{new:?}");
    let new = new.id();
    assert_eq!(
        env.wait_final(new, WITHIN).await.state,
        BatchState::Committed
    );

    let browser = Browser::start().await;
    browser.goto(&format!("{}/", env.base)).await;
    let text = browser
        .wait_for_text("the replacement", WITHIN, |text| {
            text.contains(&format!("replaced by #{new}"))
        })
        .await;
    assert!(text.contains("retracted"), "{text}");
    assert!(
        text.contains(&format!("replaced #{old} in the same step")),
        "{text}"
    );
}
