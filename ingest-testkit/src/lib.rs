//! What every integration test needs, packaged like the code (a dev-dependency crate, as
//! quickwit keeps its test support apart): a fresh database and fresh queues of its own (random
//! suffix) on the real PostgreSQL and RabbitMQ, the coordinator on port 0, in-process workers, and
//! ways to read outcomes — answers read as `ingest-wire`'s types, the coordinator's own.
//! Everything is removed again when the environment is dropped.
//!
//! - [`rates_file`]: generated rates files and their checksums;
//! - [`process`]: the real binaries as child processes;
//! - [`outage`]: real outages of the shared services, and the lock that lets them run alone;
//! - [`cluster`]: a 3-node RabbitMQ cluster and a PostgreSQL primary with a standby, to fail;
//! - [`proxy`]: a proxy to PostgreSQL that loses one reply or damages one row, on cue;
//! - [`browser`]: a headless Chromium driven over WebDriver.

mod answer;
pub mod browser;
pub mod cluster;
pub mod outage;
pub mod process;
pub mod proxy;
pub mod rates_file;

pub use answer::Answer;

use ingest_coordinator::app::{self, Running};
use ingest_coordinator::config::Config;
use ingest_coordinator::state::AppState;
use ingest_core::chunk::ChunkState;
use ingest_core::{broker, db};
use ingest_wire::{BatchId, BatchState, BatchStatus};
use rand::Rng;
use serde_json::Value;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The repository's copy of the ratestask reference data.
pub fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/ratestask")
}

/// The sample batch: 56,689 real prices.
pub fn sample_prices() -> PathBuf {
    data_dir().join("prices.csv")
}

/// The server the tests use (the local one unless `DATABASE_URL` says otherwise), as
/// `postgres://user@host:port` with no database.
fn default_server() -> String {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| db::DEFAULT_DATABASE_URL.into());
    let authority = url.find("://").map(|at| at + 3).unwrap_or(0);
    let end = url[authority..]
        .find('/')
        .map(|at| authority + at)
        .unwrap_or(url.len());
    url[..end].to_string()
}

/// The URL of database `db` on `server` (`postgres://user@host:port`, or several hosts
/// separated by commas: then sessions go to the one that takes writes).
pub fn url_on(server: &str, db: &str) -> String {
    if server.contains(',') {
        format!("{server}/{db}?target_session_attrs=read-write")
    } else {
        format!("{server}/{db}")
    }
}

/// The tests' server, with `db`.
fn server_url(db: &str) -> String {
    url_on(&default_server(), db)
}

/// The address of the tests' PostgreSQL server (for a [`proxy`] in front of it).
pub fn postgres_addr() -> std::net::SocketAddr {
    let config: tokio_postgres::Config = server_url("postgres").parse().expect("DATABASE_URL");
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        _ => "127.0.0.1".to_string(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let host = if host == "localhost" {
        "127.0.0.1".to_string()
    } else {
        host
    };
    format!("{host}:{port}")
        .parse()
        .expect("PostgreSQL at an IP address")
}

/// The broker the tests use.
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| broker::DEFAULT_AMQP_URL.into())
}

/// A connection to the tests' broker, for looking at queues (tried for up to 30 s: the broker
/// may be coming back from an outage a test made).
pub async fn amqp_connection(name: &str) -> lapin::Connection {
    connect_any(&amqp_url(), name).await
}

/// A connection to the first of the nodes `urls` lists that answers, tried for up to 30 s.
async fn connect_any(urls: &str, name: &str) -> lapin::Connection {
    let nodes = broker::Nodes::parse(urls).expect("AMQP URLs");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    for node in (0..nodes.len()).cycle() {
        match broker::connect(nodes.url(node), name, Duration::from_secs(5)).await {
            Ok(connection) => return connection,
            Err(fault) if std::time::Instant::now() > deadline => panic!("amqp: {fault}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    unreachable!("cycle never ends")
}

/// A [`broker::Link`] to the tests' broker (tried for up to 30 s, as [`amqp_connection`]).
pub async fn amqp_link(name: &str) -> broker::Link {
    broker::Link::open(
        &amqp_url(),
        broker::Start::Listed,
        name,
        Duration::from_millis(200),
        Duration::from_secs(30),
    )
    .await
    .expect("amqp")
}

/// How a test wants its environment.
#[derive(Debug, Clone)]
pub struct Options {
    /// Workers started at once.
    pub workers: usize,
    /// Rows per chunk.
    pub chunk_rows: usize,
    /// The API token, if any.
    pub token: Option<String>,
    /// Input errors reported at most.
    pub max_errors: usize,
    /// Body limit.
    pub max_body_bytes: u64,
    /// Start the coordinator in this process (tests that run the binary say false).
    pub coordinator: bool,
    /// Chunks pending or queued with no claim this long are handed out again (seconds).
    pub redrive_after_seconds: f64,
    /// Refused attempts before a chunk is buried.
    pub max_attempts: u32,
    /// The commit loop's period.
    pub commit_poll_ms: u64,
    /// Partitions before the smallest are merged.
    pub partitions_max: usize,
    /// Batches become visible before their index is built.
    pub visible_before_index: bool,
    /// This test stops PostgreSQL or RabbitMQ: it runs alone (an exclusive lock that every other
    /// test environment takes shared).
    pub exclusive: bool,
    /// Migrate the test database only up to this version (an upgrade test), not to the latest.
    pub schema_version: Option<u32>,
    /// How long a coordinator may go unseen before its peers take over (seconds).
    pub coordinator_lease_seconds: f64,
    /// The in-process workers' chunk lease (seconds).
    pub worker_lease_seconds: u64,
    /// The PostgreSQL server (`postgres://user@host:port`, or several hosts separated by
    /// commas), when not the machine's own (a [`cluster::PostgresPair`]'s, say).
    pub postgres_server: Option<String>,
    /// `AMQP_URL`, when not the machine's broker (a [`cluster::RabbitCluster`]'s, say). Every
    /// process of the environment then connects to the first listed node that answers
    /// (`INGEST_AMQP_IN_ORDER`), so that a test knows which node they are on.
    pub amqp_url: Option<String>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            workers: 2,
            chunk_rows: 5_000,
            token: None,
            max_errors: 100,
            max_body_bytes: 1 << 30,
            coordinator: true,
            redrive_after_seconds: 30.0,
            max_attempts: 5,
            commit_poll_ms: 50,
            partitions_max: 64,
            visible_before_index: false,
            exclusive: false,
            schema_version: None,
            coordinator_lease_seconds: 30.0,
            worker_lease_seconds: 300,
            postgres_server: None,
            amqp_url: None,
        }
    }
}

/// One test's world.
pub struct TestEnv {
    /// The test database's name.
    pub db_name: String,
    /// Its URL.
    pub database_url: String,
    /// The chunk queue.
    pub queue: String,
    /// The coordinator, while it runs.
    pub coordinator: Option<Running>,
    /// `http://host:port` of the coordinator.
    pub base: String,
    /// An HTTP client.
    pub http: reqwest::Client,
    /// A connection to the test database.
    pub db: tokio_postgres::Client,
    /// The configuration the coordinator was started with.
    pub config: Config,
    /// The PostgreSQL server the database is on (no database in the URL).
    pub server: String,
    /// The `AMQP_URL` of the broker the queues are on.
    pub amqp_url: String,
    /// The in-process workers' chunk lease.
    worker_lease_seconds: u64,
    workers: Vec<(CancellationToken, JoinHandle<anyhow::Result<()>>)>,
    /// Held while the environment lives: shared, or exclusive for a test that stops services.
    _turn: outage::Turn,
}

impl TestEnv {
    /// A fresh database (migrated, seeded), fresh queues, the coordinator and the workers.
    pub async fn start(options: Options) -> TestEnv {
        // The in-process coordinator's and workers' logs, shown by nextest when a test fails.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn,ingest_coordinator=info,ingest_worker=info".into()),
            )
            .with_test_writer()
            .try_init();
        let turn = outage::Turn::take(options.exclusive);
        let suffix: u64 = rand::rng().random();
        let db_name = format!("ingest_test_{suffix:x}");
        let server = options
            .postgres_server
            .clone()
            .unwrap_or_else(default_server);
        let amqp_url = options.amqp_url.clone().unwrap_or_else(amqp_url);
        let admin = db::connect(&url_on(&server, "postgres"))
            .await
            .expect("admin connection");
        admin
            .batch_execute(&format!("CREATE DATABASE {db_name}"))
            .await
            .expect("create the test database");
        let database_url = url_on(&server, &db_name);
        let queue = format!("ingest.test.{suffix:x}");

        let mut config = Config::defaults();
        config.database_url = database_url.clone().into();
        config.amqp_url = amqp_url.clone().into();
        config.amqp_in_order = options.amqp_url.is_some();
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.queue = queue.clone();
        config.chunk_rows = options.chunk_rows;
        config.token = options.token.as_deref().map(Into::into);
        config.max_errors = options.max_errors;
        config.max_body_bytes = options.max_body_bytes;
        config.commit_poll = Duration::from_millis(options.commit_poll_ms);
        config.redrive_poll = Duration::from_millis(200);
        config.partitions_max = options.partitions_max;
        config.visible_before_index = options.visible_before_index;
        config.merge_poll = Duration::from_millis(500);
        config.redrive_after = Duration::from_secs_f64(options.redrive_after_seconds);
        config.max_attempts = options.max_attempts;
        config.max_pause = Duration::from_millis(200);
        config.ride_through = Duration::from_secs(60);
        config.coordinator_lease = Duration::from_secs_f64(options.coordinator_lease_seconds);
        config.db_pool = 8;

        let mut seed_client = db::connect(&database_url).await.expect("test database");
        ingest_core::schema::migrate_to(&mut seed_client, options.schema_version)
            .await
            .expect("migrate");
        ingest_coordinator::seed::seed(&mut seed_client, &data_dir())
            .await
            .expect("seed");

        let coordinator = if options.coordinator {
            Some(
                app::start(config.clone())
                    .await
                    .expect("coordinator starts"),
            )
        } else {
            None
        };
        let base = coordinator
            .as_ref()
            .map(|running| format!("http://{}", running.addr))
            .unwrap_or_default();
        let mut env = TestEnv {
            db_name,
            database_url,
            queue,
            coordinator,
            base,
            http: reqwest::Client::new(),
            db: seed_client,
            config,
            server,
            amqp_url,
            worker_lease_seconds: options.worker_lease_seconds,
            workers: Vec::new(),
            _turn: turn,
        };
        env.start_workers(options.workers);
        env
    }

    /// Starts `n` more in-process workers on this environment's queue.
    pub fn start_workers(&mut self, n: usize) {
        for _ in 0..n {
            self.start_worker_loading(2);
        }
    }

    /// Starts one more in-process worker that loads `concurrency` chunks at once.
    pub fn start_worker_loading(&mut self, concurrency: usize) {
        {
            let mut config = ingest_worker::Config::defaults();
            config.database_url = self.database_url.clone().into();
            config.amqp_url = self.amqp_url.clone().into();
            config.amqp_in_order = self.config.amqp_in_order;
            config.lease = Duration::from_secs(self.worker_lease_seconds);
            config.queue = self.queue.clone();
            config.concurrency = concurrency;
            config.max_pause = Duration::from_millis(200);
            config.listen = "127.0.0.1:0".parse().unwrap();
            config.name = Some(format!("test-worker-{}", self.workers.len()));
            let token = CancellationToken::new();
            let handle = tokio::spawn(ingest_worker::run(config, token.clone()));
            self.workers.push((token, handle));
        }
    }

    /// Stops every worker (they drain) and waits for them.
    pub async fn stop_workers(&mut self) {
        for (token, handle) in self.workers.drain(..) {
            token.cancel();
            handle.await.expect("worker task").expect("worker run");
        }
    }

    /// Stops the in-process coordinator (as a stopped process would leave things).
    pub async fn stop_coordinator(&mut self) {
        if let Some(running) = self.coordinator.take() {
            running.stop().await.expect("the coordinator stops");
        }
    }

    /// Starts a coordinator (a fresh one, as after a restart) with the environment's settings.
    pub async fn start_coordinator(&mut self) {
        self.start_coordinator_with(self.config.clone()).await;
    }

    /// Starts a coordinator with `config`.
    pub async fn start_coordinator_with(&mut self, config: Config) {
        let running = app::start(config).await.expect("coordinator starts");
        self.base = format!("http://{}", running.addr);
        self.coordinator = Some(running);
    }

    /// The running coordinator's state.
    pub fn state(&self) -> &AppState {
        &self.coordinator.as_ref().expect("a coordinator runs").state
    }

    /// Opens a new connection to the test database (the old one died with a restart).
    pub async fn reconnect_db(&mut self) {
        self.db = db::connect(&self.database_url)
            .await
            .expect("test database after the outage");
    }

    /// The batch's state as the ledger has it.
    pub async fn batch_state(&self, id: BatchId) -> BatchState {
        self.db
            .query_one("SELECT state FROM batches WHERE id = $1", &[&id.get()])
            .await
            .expect("batch state")
            .get::<_, String>(0)
            .parse()
            .expect("a batch state")
    }

    /// Chunks of the batch in `state`.
    pub async fn chunks_in(&self, id: BatchId, state: ChunkState) -> i64 {
        self.db
            .query_one(
                "SELECT count(*) FROM chunks WHERE batch_id = $1 AND state = $2",
                &[&id.get(), &state.as_str()],
            )
            .await
            .expect("chunk count")
            .get(0)
    }

    /// Waits until every chunk of the batch is loaded (its upload complete), or panics.
    pub async fn wait_loaded(&self, id: BatchId, within: Duration) {
        self.wait_until("every chunk loaded", within, || async {
            let row = self
                .db
                .query_one(
                    "SELECT b.chunks_total, count(c.seq) FILTER (WHERE c.state = 'loaded')
                     FROM batches b LEFT JOIN chunks c ON c.batch_id = b.id
                     WHERE b.id = $1 GROUP BY b.id",
                    &[&id.get()],
                )
                .await
                .expect("chunk counts");
            row.get::<_, Option<i32>>(0).map(i64::from) == Some(row.get::<_, i64>(1))
        })
        .await;
    }

    /// `POST /batches` with a CSV body; returns the status code and the answer.
    pub async fn submit(&self, body: impl Into<reqwest::Body>) -> (u16, Answer) {
        self.submit_with(body, &[]).await
    }

    /// Submits the sample file (56,689 prices) and returns its batch id, once accepted (202).
    pub async fn submit_sample(&self) -> BatchId {
        let file = std::fs::read(sample_prices()).expect("the sample file");
        let (code, accepted) = self.submit(file).await;
        assert_eq!(code, 202, "{accepted:?}");
        accepted.id()
    }

    /// Submits the sample file and waits until its batch is committed (failing the test if it
    /// ends otherwise); returns its final status.
    pub async fn submit_sample_committed(&self, within: Duration) -> BatchStatus {
        let id = self.submit_sample().await;
        let status = self.wait_final(id, within).await;
        assert_eq!(status.state, BatchState::Committed, "{status:#?}");
        status
    }

    /// Submits `rows` generated rows (seed `seed`) and returns the batch id once accepted (202).
    pub async fn submit_generated(&self, seed: u64, rows: u64) -> BatchId {
        let codes = rates_file::port_codes(&data_dir());
        let (code, accepted) = self.submit(rates_file::whole(&codes, seed, rows)).await;
        assert_eq!(code, 202, "{accepted:?}");
        accepted.id()
    }

    /// (rows, sum of prices) of one batch as readers see it.
    pub async fn batch_totals(&self, id: BatchId) -> (i64, i64) {
        let row = self
            .db
            .query_one(
                "SELECT count(*), coalesce(sum(price), 0)::bigint FROM prices_by_batch
                 WHERE batch_id = $1",
                &[&id.get()],
            )
            .await
            .expect("batch totals");
        (row.get(0), row.get(1))
    }

    /// A loaded batch whose commit will wait at its index build: the batch's coordinator is
    /// stopped before its chunks are all loaded (the workers are started here), and a session of
    /// its own holds the batch's staging table locked (in an open transaction, until it commits
    /// or is dropped). Start the coordinator again to see the commit wait.
    pub async fn hold_commit_at_index(
        &mut self,
        id: BatchId,
        within: Duration,
    ) -> tokio_postgres::Client {
        self.stop_coordinator().await;
        self.start_workers(2);
        self.wait_loaded(id, within).await;
        let holder = db::connect(&self.database_url).await.expect("holder");
        holder
            .batch_execute(&format!(
                "BEGIN; LOCK TABLE {} IN ACCESS EXCLUSIVE MODE",
                ingest_core::schema::staging_table(id)
            ))
            .await
            .expect("the staging table locked");
        holder
    }

    /// Per day: (rows, sum of prices) of one batch as readers see it (compare with
    /// [`rates_file::expected_by_day`]).
    pub async fn batch_by_day(
        &self,
        id: BatchId,
    ) -> std::collections::BTreeMap<String, (i64, i64)> {
        self.db
            .query(
                "SELECT day::text, count(*), sum(price)::bigint FROM prices_by_batch
                 WHERE batch_id = $1 GROUP BY day",
                &[&id.get()],
            )
            .await
            .expect("batch totals by day")
            .iter()
            .map(|row| (row.get(0), (row.get(1), row.get(2))))
            .collect()
    }

    /// Writes one price straight into `prices` from `CNSGH` to `NLRTM` on `day` (as the ratestask
    /// API's own upload or an operator's fix would), outside any batch.
    pub async fn insert_direct(&self, day: &str, price: i32) {
        let inserted = self
            .db
            .execute(
                "INSERT INTO prices (orig_code, dest_code, day, price) \
                 VALUES ('CNSGH', 'NLRTM', $1::text::date, $2)",
                &[&day, &price],
            )
            .await
            .expect("a price written straight into prices");
        assert_eq!(inserted, 1);
    }

    /// Asserts that PostgreSQL refuses a row written straight into `prices` with an unknown
    /// port code (the foreign keys hold), and that nothing changed.
    pub async fn assert_unknown_port_refused(&self) {
        let before = self.prices_count().await;
        let refused = self
            .db
            .execute(
                "INSERT INTO prices (orig_code, dest_code, day, price) \
                 VALUES ('XXXXX', 'NLRTM', '2017-01-01', 1)",
                &[],
            )
            .await
            .expect_err("an unknown port code is refused");
        assert_eq!(
            refused.code(),
            Some(&tokio_postgres::error::SqlState::FOREIGN_KEY_VIOLATION),
            "{refused}"
        );
        assert_eq!(self.prices_count().await, before);
    }

    /// `POST /batches` with extra headers.
    pub async fn submit_with(
        &self,
        body: impl Into<reqwest::Body>,
        headers: &[(&str, &str)],
    ) -> (u16, Answer) {
        let mut request = self
            .http
            .post(format!("{}/batches", self.base))
            .header("content-type", "text/csv")
            .body(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("submit request");
        let code = response.status().as_u16();
        let body = response.json::<Value>().await.unwrap_or(Value::Null);
        (code, Answer::read(body))
    }

    /// `GET` a path of the API; returns the status code and the JSON body.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("GET request");
        let code = response.status().as_u16();
        (code, response.json::<Value>().await.unwrap_or(Value::Null))
    }

    /// `GET` a path of the API as text (`/metrics`).
    pub async fn get_text(&self, path: &str) -> (u16, String) {
        let addr = self.base.trim_start_matches("http://").to_string();
        fetch_text(&self.http, &addr, path).await
    }

    /// `GET /batches/{id}`, which must answer 200 with a batch status.
    pub async fn status(&self, id: BatchId) -> BatchStatus {
        let (code, body) = self.get(&format!("/batches/{id}")).await;
        assert_eq!(code, 200, "GET /batches/{id}: {body:#}");
        Answer::read(body).batch().clone()
    }

    /// Polls the batch until it is final or `within` passes (then panics with its last status).
    pub async fn wait_final(&self, id: BatchId, within: Duration) -> BatchStatus {
        let deadline = Instant::now() + within;
        loop {
            let status = self.status(id).await;
            if status.is_final() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "batch {id} not final in time: {status:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `check` holds, polling, or panics after `within`.
    pub async fn wait_until<F, Fut>(&self, what: &str, within: Duration, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        poll(what, within, || {
            let checked = check();
            async move { checked.await.then_some(()) }
        })
        .await
    }

    /// `SELECT count(*) FROM prices`.
    pub async fn prices_count(&self) -> i64 {
        self.db
            .query_one("SELECT count(*) FROM prices", &[])
            .await
            .expect("count prices")
            .get(0)
    }

    /// Per day: (day, rows, sum of prices), from `prices`, ordered by day.
    pub async fn prices_checksum(&self) -> Vec<(String, i64, i64)> {
        self.db
            .query(
                "SELECT day::text, count(*), sum(price)::bigint FROM prices GROUP BY day ORDER BY day",
                &[],
            )
            .await
            .expect("checksum")
            .iter()
            .map(|row| (row.get(0), row.get(1), row.get(2)))
            .collect()
    }

    /// A batch's rows by the table that holds them and their column `part`: (table, part,
    /// rows), in order.
    pub async fn rows_by_table(&self, id: BatchId) -> Vec<(String, i16, i64)> {
        self.db
            .query(
                "SELECT c.relname::text, p.part, count(*) FROM prices_by_batch p \
                 JOIN pg_class c ON c.oid = p.tableoid WHERE p.batch_id = $1 \
                 GROUP BY 1, 2 ORDER BY 1, 2",
                &[&id.get()],
            )
            .await
            .expect("rows by table")
            .iter()
            .map(|row| (row.get(0), row.get(1), row.get(2)))
            .collect()
    }

    /// Tables left in the staging schema (not attached as partitions).
    pub async fn unattached_staging_tables(&self) -> i64 {
        self.db
            .query_one(
                "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = 'price_batches' AND c.relkind IN ('r', 'p')
                   AND NOT c.relispartition",
                &[],
            )
            .await
            .expect("staging tables")
            .get(0)
    }

    /// Tables of chunk copies left (each batch has one until it is final).
    pub async fn copies_tables(&self) -> i64 {
        self.db
            .query_one(
                "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = 'chunk_copies' AND c.relkind = 'r'",
                &[],
            )
            .await
            .expect("copies tables")
            .get(0)
    }

    /// Waits until no table of chunk copies is left (a committed batch's go right after its
    /// commit), or panics.
    pub async fn wait_copies_dropped(&self, within: Duration) {
        self.wait_until("the chunk copies to be dropped", within, || async {
            self.copies_tables().await == 0
        })
        .await;
    }

    /// Empties the chunk queue, as an operator's purge or a lost broker would: the chunks stay
    /// `queued` in the ledger with no message on its way.
    pub async fn purge_queue(&self) {
        let connection = self.amqp_connection("purger").await;
        let channel = connection.create_channel().await.expect("channel");
        channel
            .queue_purge(
                self.queue.as_str().into(),
                lapin::options::QueuePurgeOptions::default(),
            )
            .await
            .expect("purge the chunk queue");
        let _ = connection.close(200, "purged".into()).await;
    }

    /// Starts `POST /batches` on the coordinator at `base` with `body` (a slow body, say) and
    /// returns at once: the task yields the response once the upload is answered.
    pub fn submit_in_background(
        &self,
        base: &str,
        body: reqwest::Body,
    ) -> JoinHandle<reqwest::Result<reqwest::Response>> {
        let request = self
            .http
            .post(format!("{base}/batches"))
            .header("content-type", "text/csv")
            .body(body);
        tokio::spawn(async move { request.send().await })
    }

    /// A connection to the environment's broker (any of its nodes that answers), tried for up
    /// to 30 s.
    pub async fn amqp_connection(&self, name: &str) -> lapin::Connection {
        connect_any(&self.amqp_url, name).await
    }

    /// Messages waiting in the chunk queue.
    pub async fn queue_depth(&self) -> u32 {
        self.depth_of(&self.queue).await.0
    }

    /// Messages waiting in the dead-letter queue.
    pub async fn dead_letters(&self) -> u32 {
        self.depth_of(&broker::dead_letter_queue(&self.queue))
            .await
            .0
    }

    /// Consumers of the chunk queue.
    pub async fn consumers(&self) -> u32 {
        self.depth_of(&self.queue).await.1
    }

    /// (messages ready, consumers) of a queue.
    async fn depth_of(&self, queue: &str) -> (u32, u32) {
        let connection = self.amqp_connection("test").await;
        let channel = connection.create_channel().await.expect("channel");
        let depth = broker::depth(&channel, queue).await.expect("queue");
        let _ = connection.close(200, "bye".into()).await;
        depth
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        for (token, handle) in &self.workers {
            token.cancel();
            handle.abort();
        }
        let db_name = self.db_name.clone();
        let queue = self.queue.clone();
        let server = self.server.clone();
        let amqp_url = self.amqp_url.clone();
        // Cleanup runs on a runtime of its own: Drop cannot await, and the test's runtime may
        // be shutting down.
        let cleaned = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime")
                .block_on(async move {
                    let admin = tokio::time::timeout(
                        Duration::from_secs(30),
                        db::connect(&url_on(&server, "postgres")),
                    )
                    .await;
                    if let Ok(Ok(admin)) = admin {
                        let _ = admin
                            .batch_execute(&format!(
                                "DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"
                            ))
                            .await;
                    }
                    let connection = tokio::time::timeout(
                        Duration::from_secs(30),
                        connect_any(&amqp_url, "test cleanup"),
                    )
                    .await;
                    if let Ok(connection) = connection {
                        if let Ok(channel) = connection.create_channel().await {
                            let _ = broker::delete(&channel, &queue).await;
                        }
                        let _ = connection.close(200, "bye".into()).await;
                    }
                })
        })
        .join();
        if cleaned.is_err() {
            eprintln!("cleanup of {} failed", self.db_name);
        }
    }
}

/// Polls `probe` every 20 ms until it yields a value, or panics naming `what` after `within`:
/// the one way tests wait for a condition (never a bare sleep).
pub async fn poll<T, F, Fut>(what: &str, within: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of one series in Prometheus text (`name` or `name{label="value",…}` exactly as
/// the exporter writes it), if the text has it.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok()).flatten()
        })
}

/// `GET http://{addr}{path}` on any listener; the status code and the body as text (code 0 and
/// the error when nothing answered, as while a process starts).
pub async fn fetch_text(http: &reqwest::Client, addr: &str, path: &str) -> (u16, String) {
    match http.get(format!("http://{addr}{path}")).send().await {
        Ok(response) => {
            let code = response.status().as_u16();
            (code, response.text().await.unwrap_or_default())
        }
        Err(error) => (0, format!("GET {addr}{path}: {error}")),
    }
}
