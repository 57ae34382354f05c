//! The coordinator as a whole: its shared state, its HTTP routes and its background loops
//! (commit, redrive), started by [`start`] — by the binary and by tests alike (tests listen on
//! port 0 against a database of their own).

use crate::api_error::ApiError;
use crate::config::Config;
use crate::receiving::Receiving;
use crate::spool::Spool;
use crate::{auth, cancel, commit, redrive, request_id, status, submit, unread_body};
use anyhow::Context;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{middleware, Router};
use deadpool_postgres::Pool;
use ingest_core::fault::Fault;
use ingest_core::ledger::{self, Ending};
use ingest_core::{broker, db, schema};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What every request handler and loop shares.
#[derive(Clone)]
pub struct AppState {
    /// The configuration.
    pub config: Arc<Config>,
    /// PostgreSQL.
    pub pool: Pool,
    /// RabbitMQ (recovers by itself).
    pub amqp: Arc<lapin::Connection>,
    /// The durable copies of published chunks.
    pub spool: Spool,
    /// Wakes the commit loop when a batch finished receiving.
    pub commit_wakeup: Arc<Notify>,
    /// The uploads being read now.
    pub receiving: Receiving,
}

impl AppState {
    /// Ends a batch as failed or cancelled (its staged rows dropped) and clears its spool.
    /// False when the batch was already final.
    pub async fn end_batch(&self, batch_id: i64, ending: &Ending) -> Result<bool, Fault> {
        let mut client = self.pool.get().await?;
        let ended = ledger::end_batch(&mut client, batch_id, ending).await?;
        if ended {
            self.spool.remove_batch(batch_id).await;
        }
        Ok(ended)
    }
}

/// A running coordinator.
pub struct Running {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its state (tests look inside).
    pub state: AppState,
    shutdown: CancellationToken,
    server: JoinHandle<anyhow::Result<()>>,
    /// Why the coordinator stopped by itself (RabbitMQ lost for good), if it did.
    fatal: Arc<Mutex<Option<String>>>,
}

impl Running {
    /// Stops accepting requests and the loops, then waits for in-flight requests. Err when the
    /// coordinator had stopped by itself because a dependency was lost for good.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.server.await??;
        match self.fatal.lock().expect("not poisoned").take() {
            Some(reason) => Err(anyhow::anyhow!(reason)),
            None => Ok(()),
        }
    }

    /// Waits until `shutdown` fires, then stops.
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
    let mut client = db::connect(&config.database_url).await?;
    schema::migrate(&mut client).await?;
    drop(client);
    let pool = db::pool(&config.database_url, config.db_pool)?;
    let amqp = broker::connect(
        &config.amqp_url,
        "ingest-coordinator",
        config.max_pause(),
        Duration::from_secs(config.ride_through_seconds),
    )
    .await?;
    let channel = amqp.create_channel().await?;
    broker::declare(&channel, &config.queue)
        .await
        .context("declaring the chunk queues")?;
    let _ = channel.close(200, "declared".into()).await;

    let state = AppState {
        spool: Spool::new(&config.spool_dir),
        config: Arc::new(config),
        pool,
        amqp: Arc::new(amqp),
        commit_wakeup: Arc::new(Notify::new()),
        receiving: Receiving::default(),
    };
    recover(&state).await?;

    let listener = tokio::net::TcpListener::bind(state.config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", state.config.listen))?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    tokio::spawn(commit::run(state.clone(), shutdown.clone()));
    tokio::spawn(redrive::run(state.clone(), shutdown.clone()));
    let fatal = Arc::new(Mutex::new(None));
    tokio::spawn(stop_when_broker_lost(
        state.amqp.clone(),
        shutdown.clone(),
        fatal.clone(),
    ));
    let app = router(state.clone());
    let stop = shutdown.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
            .context("HTTP server")
    });
    tracing::info!(%addr, queue = %state.config.queue, "coordinator listening");
    Ok(Running {
        addr,
        state,
        shutdown,
        server,
        fatal,
    })
}

/// Stops the coordinator, with a reason, once its RabbitMQ connection is lost for good (recovery
/// ended instead of reconnecting): the binary then exits non-zero and its supervisor restarts it.
async fn stop_when_broker_lost(
    amqp: Arc<lapin::Connection>,
    shutdown: CancellationToken,
    fatal: Arc<Mutex<Option<String>>>,
) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        reason = broker::until_lost_for_good(&amqp, None, Duration::from_secs(5)) => {
            tracing::error!(reason, "stopping: RabbitMQ cannot come back by itself");
            *fatal.lock().expect("not poisoned") = Some(reason.to_string());
            shutdown.cancel();
        }
    }
}

/// Picks up what a stopped coordinator left: uploads cut off fail and free their keys (the
/// client saw an error and may resubmit), spooled chunks of batches that ended are removed,
/// unconfirmed chunks are published again; interrupted commits are resumed by the commit loop.
async fn recover(state: &AppState) -> anyhow::Result<()> {
    let ended = redrive::sweep_uploads(state, 0.0).await?;
    if ended > 0 {
        tracing::warn!(ended, "failed the batches whose upload a restart cut off");
    }
    let spooled = state.spool.batches().await?;
    let over = {
        let client = state.pool.get().await?;
        ledger::ended_batches(&client, &spooled).await?
    };
    for batch_id in over {
        state.spool.remove_batch(batch_id).await;
    }
    redrive::redrive(state, 0.0).await?;
    Ok(())
}

/// The HTTP API.
pub fn router(state: AppState) -> Router {
    let protected = middleware::from_fn_with_state(state.clone(), auth::require_token);
    Router::new()
        .route(
            "/batches",
            get(status::list_batches).merge(post(submit::submit).layer(protected.clone())),
        )
        .route("/batches/{id}", get(status::get_batch))
        .route(
            "/batches/{id}/cancel",
            post(cancel::cancel).layer(protected),
        )
        .route("/healthz", get(status::healthz))
        .route("/readyz", get(status::readyz))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not take that method",
            )
        })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            unread_body::answer_after_body,
        ))
        .layer(middleware::from_fn(request_id::tag))
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}
