//! The coordinator's HTTP API as the CLI uses it: one client that knows the base URL and the
//! token, the answers read as `ingest-wire`'s types (the coordinator's own), and every way a
//! request can go wrong turned into one readable line.

use anyhow::Context;
use ingest_wire::{headers, BatchId, BatchPage, BatchStatus, ErrorBody, IdempotencyKey};
use reqwest::header::{CONTENT_ENCODING, CONTENT_TYPE};
use reqwest::{Body, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::fmt;
use std::time::Duration;

/// How long a status read may take before it counts as a failure.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a retract may take: a batch merged into a shared partition is a DELETE of its rows
/// (about a minute for 8M rows on two cores).
const RETRACT_TIMEOUT: Duration = Duration::from_secs(600);

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How a submit ended, when the coordinator answered with a batch.
#[derive(Debug)]
pub enum Submitted {
    /// 202: a new batch, loading.
    Accepted(BatchStatus),
    /// 200: the Idempotency-Key was seen before; this is the earlier batch.
    Repeated(BatchStatus),
    /// 400, 409, 413 or 422: the batch ended at once; `error` and `errors` say why.
    Refused(BatchStatus),
}

/// How a cancel ended.
#[derive(Debug)]
pub enum Cancelled {
    /// 200: the batch is cancelled now.
    Now(BatchStatus),
    /// 409: the batch was already final.
    AlreadyFinal(BatchStatus),
}

/// How a retract ended.
#[derive(Debug)]
pub enum Retracted {
    /// 200: the batch's rows are out of `prices` now.
    Now(BatchStatus),
    /// 409: the batch is not committed (or was retracted already); nothing changed.
    NotCommitted(BatchStatus),
}

/// A request that did not get the answer it wanted, told so a retry can be decided.
#[derive(Debug)]
pub enum Failure {
    /// No connection, or no answer in time.
    Unreachable(String),
    /// The connection was made but broke before the answer was read.
    BrokeOff(String),
    /// An HTTP answer that is an error.
    Answered {
        /// The HTTP status.
        status: StatusCode,
        /// The coordinator's message, or what the body looked like.
        message: String,
    },
}

impl Failure {
    /// True when asking again later may work (the coordinator is restarting or overloaded).
    pub fn is_transient(&self) -> bool {
        match self {
            Failure::Unreachable(_) | Failure::BrokeOff(_) => true,
            Failure::Answered { status, .. } => status.is_server_error(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Unreachable(message) | Failure::BrokeOff(message) => f.write_str(message),
            Failure::Answered { status, message } => {
                write!(f, "{message} (HTTP {})", status.as_u16())
            }
        }
    }
}

impl std::error::Error for Failure {}

/// A client of one coordinator.
pub struct Coordinator {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Coordinator {
    /// A client for the coordinator at `url`, sending `token` on mutating requests.
    pub fn new(url: &str, token: Option<String>) -> anyhow::Result<Coordinator> {
        let parsed = reqwest::Url::parse(url)
            .with_context(|| format!("the coordinator URL {url:?} is not a URL"))?;
        // Built without TLS: https would fail on every request, so say it once, here.
        anyhow::ensure!(
            parsed.scheme() == "http",
            "the coordinator URL must start with http:// (got {url:?})"
        );
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("ingest-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot set up the HTTP client")?;
        Ok(Coordinator {
            http,
            base: url.trim_end_matches('/').to_string(),
            token: token.filter(|token| !token.is_empty()),
        })
    }

    /// `POST /batches` with `body` as the CSV file (already gzip-compressed when `gzip`), to
    /// replace the committed batch `replaces` when given.
    pub async fn submit(
        &self,
        body: Body,
        gzip: bool,
        idempotency_key: Option<&IdempotencyKey>,
        replaces: Option<BatchId>,
    ) -> anyhow::Result<Submitted> {
        let mut request = self
            .mutating(self.http.post(self.url("/batches")))
            .header(CONTENT_TYPE, "text/csv")
            .body(body);
        if gzip {
            request = request.header(CONTENT_ENCODING, "gzip");
        }
        if let Some(key) = idempotency_key {
            request = request.header(headers::IDEMPOTENCY_KEY, key.as_str());
        }
        if let Some(old) = replaces {
            request = request.header(headers::REPLACES, old.to_string());
        }
        let (status, body) = self.send(request).await?;
        let batch = parse(body)?;
        Ok(match status {
            StatusCode::ACCEPTED => Submitted::Accepted(batch),
            StatusCode::OK => Submitted::Repeated(batch),
            _ if status.is_client_error() => Submitted::Refused(batch),
            _ => return Err(unexpected(status)),
        })
    }

    /// `GET /batches/{id}`, as the coordinator wrote it.
    pub async fn status_json(&self, id: BatchId) -> anyhow::Result<Value> {
        let request = self
            .http
            .get(self.url(&format!("/batches/{id}")))
            .timeout(READ_TIMEOUT);
        let (status, body) = self.send(request).await?;
        if status != StatusCode::OK {
            return Err(unexpected(status));
        }
        Ok(body)
    }

    /// `GET /batches/{id}`.
    pub async fn status(&self, id: BatchId) -> anyhow::Result<BatchStatus> {
        parse(self.status_json(id).await?)
    }

    /// `GET /batches?limit=N`: the newest batches first.
    pub async fn list(&self, limit: u32) -> anyhow::Result<Vec<BatchStatus>> {
        self.page(&[("limit", limit.to_string())]).await
    }

    /// `GET /batches?idempotency_key=K`: the batch submitted with `key`, if the coordinator
    /// keeps one (it forgets the key of an upload that broke off).
    pub async fn find_by_key(&self, key: &IdempotencyKey) -> anyhow::Result<Option<BatchStatus>> {
        let batches = self.page(&[("idempotency_key", key.to_string())]).await?;
        Ok(batches.into_iter().next())
    }

    /// One page of `GET /batches` with `query`.
    async fn page(&self, query: &[(&str, String)]) -> anyhow::Result<Vec<BatchStatus>> {
        let request = self
            .http
            .get(self.url("/batches"))
            .query(query)
            .timeout(READ_TIMEOUT);
        let (status, body) = self.send(request).await?;
        if status != StatusCode::OK {
            return Err(unexpected(status));
        }
        Ok(parse::<BatchPage>(body)?.batches)
    }

    /// `POST /batches/{id}/cancel`.
    pub async fn cancel(&self, id: BatchId) -> anyhow::Result<Cancelled> {
        let request = self
            .mutating(self.http.post(self.url(&format!("/batches/{id}/cancel"))))
            .timeout(READ_TIMEOUT);
        let (status, body) = self.send(request).await?;
        match status {
            StatusCode::OK => Ok(Cancelled::Now(parse(body)?)),
            StatusCode::CONFLICT => Ok(Cancelled::AlreadyFinal(parse(body)?)),
            _ => Err(unexpected(status)),
        }
    }

    /// `POST /batches/{id}/retract`.
    pub async fn retract(&self, id: BatchId) -> anyhow::Result<Retracted> {
        let request = self
            .mutating(self.http.post(self.url(&format!("/batches/{id}/retract"))))
            .timeout(RETRACT_TIMEOUT);
        let (status, body) = self.send(request).await?;
        match status {
            StatusCode::OK => Ok(Retracted::Now(parse(body)?)),
            StatusCode::CONFLICT => Ok(Retracted::NotCommitted(parse(body)?)),
            _ => Err(unexpected(status)),
        }
    }

    /// The full URL of an API path.
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Adds the bearer token, when there is one (reqwest marks the header sensitive).
    fn mutating(&self, request: RequestBuilder) -> RequestBuilder {
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Sends a request and reads its JSON answer; an error body becomes a [`Failure`].
    async fn send(&self, request: RequestBuilder) -> anyhow::Result<(StatusCode, Value)> {
        let response = request
            .send()
            .await
            .map_err(|error| self.unreachable(error))?;
        self.read(response).await
    }

    /// Reads an answer: JSON with its status, or a [`Failure`] for `{"error": {...}}` and for
    /// anything that is not JSON.
    async fn read(&self, response: Response) -> anyhow::Result<(StatusCode, Value)> {
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|error| self.unreachable(error))?;
        let Ok(body) = serde_json::from_slice::<Value>(&bytes) else {
            let text = String::from_utf8_lossy(&bytes);
            let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
            let shown: String = text.chars().take(200).collect();
            let message = if shown.is_empty() {
                "the coordinator answered with an empty body".to_string()
            } else {
                format!("the coordinator answered with something that is not JSON: {shown}")
            };
            return Err(Failure::Answered { status, message }.into());
        };
        if let Some(error) = body.get("error").filter(|error| error.is_object()) {
            // The coordinator's errors are an `ErrorBody`; a proxy's may only look like one.
            let message = match serde_json::from_value::<ErrorBody>(body.clone()) {
                Ok(ErrorBody { error }) => error.message,
                Err(_) => error
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("the coordinator gave no reason")
                    .to_string(),
            };
            return Err(Failure::Answered { status, message }.into());
        }
        Ok((status, body))
    }

    /// A request that got no HTTP answer, said in terms of the coordinator.
    fn unreachable(&self, error: reqwest::Error) -> anyhow::Error {
        let base = &self.base;
        let cause = root_cause(&error);
        let failure = if error.is_timeout() {
            Failure::Unreachable(format!("the coordinator at {base} did not answer in time"))
        } else if error.is_connect() {
            Failure::Unreachable(format!("cannot reach the coordinator at {base}: {cause}"))
        } else {
            Failure::BrokeOff(format!(
                "the exchange with the coordinator at {base} broke off: {cause}"
            ))
        };
        failure.into()
    }
}

/// Reads a JSON answer as `T`.
fn parse<T: DeserializeOwned>(body: Value) -> anyhow::Result<T> {
    serde_json::from_value(body).context("the coordinator's answer does not have the expected form")
}

/// A success status the command does not expect.
fn unexpected(status: StatusCode) -> anyhow::Error {
    Failure::Answered {
        status,
        message: "unexpected answer from the coordinator".to_string(),
    }
    .into()
}

/// The innermost cause of an error: the part that says what happened ("Connection refused").
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}
