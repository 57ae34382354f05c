//! Cancelling: a loading batch can be cancelled, and stays cancelled whatever its workers do.

use super::{FINAL_WITHIN, GOOD, HEADER};
use ingest_testkit::{rates_file, Answer, Options, TestEnv};
use ingest_wire::BatchState;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loading_batch_can_be_cancelled_and_stays_cancelled() {
    // No workers: the batch waits in the queue, loading.
    let mut env = TestEnv::start(Options {
        workers: 0,
        chunk_rows: 100,
        ..Options::default()
    })
    .await;
    let codes = rates_file::port_codes(&ingest_testkit::data_dir());
    let (code, accepted) = env.submit(rates_file::whole(&codes, 9, 1_000)).await;
    assert_eq!(code, 202, "{accepted:?}");
    assert_eq!(accepted.batch().state, BatchState::Loading, "{accepted:?}");
    let id = accepted.id();
    assert_eq!(env.queue_depth().await, 10);

    let cancel_url = format!("{}/batches/{id}/cancel", env.base);
    let response = env.http.post(&cancel_url).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let cancelled = Answer::read(response.json().await.unwrap());
    assert_eq!(cancelled.id(), id, "{cancelled:?}");
    assert_eq!(
        cancelled.batch().state,
        BatchState::Cancelled,
        "{cancelled:?}"
    );
    assert_eq!(env.prices_count().await, 0);
    assert_eq!(env.unattached_staging_tables().await, 0);

    let response = env.http.post(&cancel_url).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 409);
    let again = Answer::read(response.json().await.unwrap());
    assert_eq!(again.batch().state, BatchState::Cancelled, "{again:?}");

    // Workers now get the chunks, find the batch closed and drop them.
    env.start_workers(2);
    env.wait_until("the queue to drain", FINAL_WITHIN, || async {
        env.queue_depth().await == 0
    })
    .await;
    let status = env.status(id).await;
    assert_eq!(status.state, BatchState::Cancelled, "{status:#?}");
    assert_eq!(status.chunks.loaded, 0, "{status:#?}");
    assert_eq!(env.prices_count().await, 0);
    assert_eq!(env.unattached_staging_tables().await, 0);

    // A committed batch cannot be cancelled.
    let (code, accepted) = env.submit(format!("{HEADER}{GOOD}")).await;
    assert_eq!(code, 202, "{accepted:?}");
    let committed = accepted.id();
    let status = env.wait_final(committed, FINAL_WITHIN).await;
    assert_eq!(status.state, BatchState::Committed, "{status:#?}");
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
async fn a_batch_cancelled_while_its_upload_comes_in_answers_409() {
    let env = TestEnv::start(Options::default()).await;
    // 100,000 rows in ten blocks a second apart: the cancel lands while the file comes in.
    let codes = rates_file::port_codes(&ingest_testkit::data_dir());
    let upload = env.submit_in_background(
        &env.base,
        rates_file::paced(codes, 10, 100_000, std::time::Duration::from_secs(1)),
    );
    let id = ingest_testkit::poll("the upload to be under way", FINAL_WITHIN, || async {
        let row = env
            .db
            .query_opt(
                "SELECT b.id FROM batches b JOIN chunks c ON c.batch_id = b.id
                 WHERE b.state = 'receiving' LIMIT 1",
                &[],
            )
            .await
            .unwrap();
        row.map(|row| ingest_wire::BatchId(row.get(0)))
    })
    .await;
    let response = env
        .http
        .post(format!("{}/batches/{id}/cancel", env.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);

    // Publishing stops at the next chunk; the answer comes once the rest of the body is read.
    let answer = upload.await.unwrap().expect("the upload's answer");
    assert_eq!(answer.status().as_u16(), 409);
    let cancelled = Answer::read(answer.json().await.unwrap());
    assert_eq!(
        cancelled.batch().state,
        BatchState::Cancelled,
        "{cancelled:?}"
    );
    assert!(cancelled.batch().chunks.total < 20, "{cancelled:?}");
    assert_eq!(env.prices_count().await, 0);
    assert_eq!(env.unattached_staging_tables().await, 0);
}
