//! The idempotency key makes a retry safe (duplicates are flagged), and an upload that broke
//! off frees its key for the retry.

use super::{batches_count, FINAL_WITHIN, GOOD, HEADER};
use ingest_testkit::{Answer, Options, TestEnv};
use ingest_wire::BatchState;
use sha2::{Digest, Sha256};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_makes_a_retry_safe_and_duplicates_are_flagged() {
    let env = TestEnv::start(Options::default()).await;
    let body = format!("{HEADER}{}", GOOD.repeat(250));
    let key = [("idempotency-key", "upload-2016-01-01")];

    let (code, first) = env.submit_with(body.clone(), &key).await;
    assert_eq!(code, 202, "{first:?}");
    let first_id = first.id();
    let (code, again) = env.submit_with(body.clone(), &key).await;
    assert_eq!(code, 200, "{again:?}");
    assert_eq!(again.id(), first_id);
    let status = env.wait_final(first_id, FINAL_WITHIN).await;
    assert_eq!(status.state, BatchState::Committed, "{status:#?}");
    let (code, after_commit) = env.submit_with(body.clone(), &key).await;
    assert_eq!(code, 200, "{after_commit:?}");
    assert_eq!(after_commit.id(), first_id);
    assert_eq!(after_commit.batch().state, BatchState::Committed);
    assert_eq!(batches_count(&env).await, 1);
    assert_eq!(env.prices_count().await, 250, "the rows are there once");

    // The same bytes without a key: a new batch (a batch adds rows), flagged as a duplicate.
    let (code, second) = env.submit(body.clone()).await;
    assert_eq!(code, 202, "{second:?}");
    let second_id = second.id();
    assert_ne!(second_id, first_id);
    let sha = hex::encode(Sha256::digest(body.as_bytes()));
    assert_eq!(first.batch().content_sha256.as_deref(), Some(sha.as_str()));
    assert_eq!(second.batch().content_sha256.as_deref(), Some(sha.as_str()));
    assert_eq!(second.batch().duplicate_of, [first_id]);
    let status = env.wait_final(second_id, FINAL_WITHIN).await;
    assert_eq!(status.state, BatchState::Committed, "{status:#?}");
    assert_eq!(status.duplicate_of, [first_id]);
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
    let broken_id = Answer::read(page["batches"][0].clone()).id();
    frames
        .send(Err(std::io::Error::other("the client's network went away")))
        .await
        .unwrap();
    assert!(
        upload.await.unwrap().is_err(),
        "the client sees its upload fail"
    );

    let status = env.wait_final(broken_id, FINAL_WITHIN).await;
    assert_eq!(status.state, BatchState::Failed, "{status:#?}");
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
    assert_eq!(code, 202, "{retried:?}");
    let retried_id = retried.id();
    assert_ne!(retried_id, broken_id);
    let status = env.wait_final(retried_id, FINAL_WITHIN).await;
    assert_eq!(status.state, BatchState::Committed, "{status:#?}");
    let (code, again) = env.submit_with(body, &[("idempotency-key", key)]).await;
    assert_eq!(code, 200, "{again:?}");
    assert_eq!(again.id(), retried_id);
    let (_, page) = env.get(&lookup).await;
    assert_eq!(page["batches"][0]["id"], retried_id.get(), "{page:#}");
    assert_eq!(env.prices_count().await, 400);
}
