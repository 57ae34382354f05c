//! Wiring, and nothing else: [`start`] migrates, connects, records this coordinator in the
//! ledger, spawns the background loops and serves the routes; [`Running::stop`] stops it all and
//! waits for every task it started (as mini-redis's server does). What a previous run — of this
//! coordinator or another — left open is picked up by the loops, as they would pick it up at any
//! time. Used by the binary and by the tests (which listen on port 0 against a database of their
//! own).

use crate::config::Config;
use crate::http::api_error::ApiError;
use crate::http::{auth, batches, health, metrics, openapi, page, request_id, unread_body};
use crate::loops;
use crate::pipeline::receiving::Receiving;
use crate::presence::{self, Presence};
use crate::state::AppState;
use anyhow::Context;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{middleware, Router};
use ingest_core::{broker, db, schema};
use ingest_wire::ErrorCode;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The longest any coordinator session waits for a lock before the step fails as an outage and
/// is tried again (the merge and a visible batch's index build set their own).
const LOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// A running coordinator.
pub struct Running {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its state (tests look inside).
    pub state: AppState,
    shutdown: CancellationToken,
    /// Stops the heartbeat: only once the last request (an upload, perhaps) has been answered,
    /// so that no peer takes this coordinator for gone while it still feeds an upload.
    leave: CancellationToken,
    server: JoinHandle<anyhow::Result<()>>,
    /// The background loops, joined on stop.
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops accepting requests and the loops, then waits for in-flight requests and for every
    /// loop to finish its pass; the heartbeat goes on until the last request is answered, then
    /// leaves the ledger.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        let served = self.server.await;
        self.leave.cancel();
        for task in self.tasks {
            task.await.context("a background loop panicked")?;
        }
        served.context("the HTTP server panicked")??;
        self.state.amqp.close("coordinator stopping").await;
        Ok(())
    }

    /// Waits until `shutdown` fires (or the coordinator stops by itself), then stops.
    pub async fn run_until(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        tokio::select! {
            _ = shutdown => {}
            _ = self.shutdown.cancelled() => {}
        }
        self.stop().await
    }
}

/// Migrates, connects, recovers what a previous run left open, and starts serving.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    config.check()?;
    ingest_core::metrics::recorder();
    let state = connect(config).await?;
    // Seen by its peers before it takes its first upload.
    loops::presence::beat(&state)
        .await
        .context("recording this coordinator in the ledger")?;
    state.presence.beat_landed();

    let listener = tokio::net::TcpListener::bind(state.config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", state.config.listen))?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let leave = CancellationToken::new();
    let tasks = vec![
        tokio::spawn(loops::presence::run(state.clone(), leave.clone())),
        tokio::spawn(loops::commit::run(state.clone(), shutdown.clone())),
        tokio::spawn(loops::redrive::run(state.clone(), shutdown.clone())),
        tokio::spawn(loops::merge::run(state.clone(), shutdown.clone())),
    ];
    let app = router(state.clone());
    let stop = shutdown.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
            .context("HTTP server")
    });
    tracing::info!(%addr, queue = %state.config.queue, id = state.presence.id(), "coordinator listening");
    Ok(Running {
        addr,
        state,
        shutdown,
        leave,
        server,
        tasks,
    })
}

/// The schema migrated, the pool, the broker link and the chunk queues: what every handler,
/// step and loop shares.
async fn connect(config: Config) -> anyhow::Result<AppState> {
    let mut client = db::connect(&config.database_url).await?;
    schema::migrate(&mut client).await?;
    drop(client);
    let lease = config.coordinator_lease;
    let pool = db::pool(
        &config.database_url,
        config.db_pool,
        &db::Sessions {
            application_name: "ingest-coordinator".into(),
            lock_timeout: Some(LOCK_TIMEOUT),
            statement_timeout: None,
            idle_in_transaction: Some(lease),
        },
    )?;
    let amqp = broker::Link::open(
        &config.amqp_url,
        broker::Start::in_order(config.amqp_in_order),
        "ingest-coordinator",
        config.max_pause,
        config.ride_through,
    )
    .await?;
    broker::declare(&amqp, &config.queue, config.queue_replicas)
        .await
        .context("declaring the chunk queues")?;
    Ok(AppState {
        presence: Presence::new(&presence::host_name(), std::process::id(), lease),
        config: Arc::new(config),
        pool,
        amqp: Arc::new(amqp),
        commit_wakeup: Arc::new(Notify::new()),
        receiving: Receiving::default(),
    })
}

/// The HTTP API.
pub fn router(state: AppState) -> Router {
    let protected = middleware::from_fn_with_state(state.clone(), auth::require_token);
    let routes = Router::new()
        .route("/", get(page::page))
        .route(
            "/batches",
            get(batches::list_batches).merge(post(batches::submit).layer(protected.clone())),
        )
        .route("/batches/{id}", get(batches::get_batch))
        .route(
            "/batches/{id}/cancel",
            post(batches::cancel).layer(protected.clone()),
        )
        .route(
            "/batches/{id}/retract",
            post(batches::retract).layer(protected),
        )
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::metrics))
        .route("/openapi.json", get(openapi::openapi_json))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                ErrorCode::NotFound,
                "no such endpoint",
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorCode::MethodNotAllowed,
                "this endpoint does not take that method",
            )
        })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            unread_body::answer_after_body,
        ));
    request_id::layer(routes)
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}
