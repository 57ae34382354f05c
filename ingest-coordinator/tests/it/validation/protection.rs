//! The API is protected: submit and cancel need the token, a refusal reaches a client still
//! sending, malformed requests get JSON errors, the configuration refuses a public address
//! without a token.

use super::{assert_api_error, batches_count, FINAL_WITHIN, GOOD, HEADER};
use ingest_coordinator::config::Config;
use ingest_testkit::{Answer, Options, TestEnv};
use ingest_wire::{BatchState, ErrorCode};

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
        ErrorCode::Unauthorized,
        "Authorization: Bearer",
    )
    .await;
    let response = submit(Some("Bearer wrong")).await.unwrap();
    assert_api_error(
        "submit with a wrong token",
        response,
        401,
        ErrorCode::Unauthorized,
        "not valid",
    )
    .await;
    let response = submit(Some("Basic czNjcmV0")).await.unwrap();
    assert_api_error(
        "submit with another scheme",
        response,
        401,
        ErrorCode::Unauthorized,
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
    let accepted = Answer::read(response.json().await.unwrap());
    let id = accepted.id();

    // Reading is open.
    let status = env.status(id).await;
    assert_eq!(status.id, id, "{status:#?}");
    let (code, list) = env.get("/batches").await;
    assert_eq!(code, 200, "{list:#}");
    assert_eq!(list["batches"][0]["id"], id.get(), "{list:#}");

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
        ErrorCode::Unauthorized,
        "Bearer",
    )
    .await;
    let response = cancel(Some("Bearer s3cre")).await.unwrap();
    assert_api_error(
        "cancel with a wrong token",
        response,
        401,
        ErrorCode::Unauthorized,
        "not valid",
    )
    .await;

    let status = env.wait_final(id, FINAL_WITHIN).await;
    assert_eq!(status.state, BatchState::Committed, "{status:#?}");
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
            ErrorCode::Unauthorized,
        ),
        (
            "another content type",
            "application/json",
            "Bearer s3cret",
            415,
            ErrorCode::UnsupportedMediaType,
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
        ErrorCode::UnsupportedMediaType,
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
        ErrorCode::UnsupportedMediaType,
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
        ErrorCode::UnsupportedEncoding,
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
        ErrorCode::BadRequest,
        "Idempotency-Key",
    )
    .await;

    let cases: [(&str, &str, u16, ErrorCode, &str); 11] = [
        (
            "GET",
            "/batches/424242",
            404,
            ErrorCode::NotFound,
            "no batch 424242",
        ),
        (
            "POST",
            "/batches/424242/cancel",
            404,
            ErrorCode::NotFound,
            "no batch 424242",
        ),
        (
            "GET",
            "/batches/abc",
            400,
            ErrorCode::BadRequest,
            "whole number",
        ),
        (
            "GET",
            "/batches/1.5",
            400,
            ErrorCode::BadRequest,
            "whole number",
        ),
        (
            "POST",
            "/batches/abc/cancel",
            400,
            ErrorCode::BadRequest,
            "whole number",
        ),
        (
            "GET",
            "/batches?limit=0",
            400,
            ErrorCode::BadRequest,
            "limit",
        ),
        (
            "GET",
            "/batches?limit=101",
            400,
            ErrorCode::BadRequest,
            "limit",
        ),
        (
            "GET",
            "/batches?limit=abc",
            400,
            ErrorCode::BadRequest,
            "limit",
        ),
        (
            "GET",
            "/batches?before=yesterday",
            400,
            ErrorCode::BadRequest,
            "before",
        ),
        (
            "GET",
            "/nothing/here",
            404,
            ErrorCode::NotFound,
            "no such endpoint",
        ),
        (
            "GET",
            "/batches/1/rows",
            404,
            ErrorCode::NotFound,
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
