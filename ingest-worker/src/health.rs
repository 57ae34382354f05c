//! The worker's own small HTTP listener (`INGEST_WORKER_LISTEN`): `/metrics` for Prometheus,
//! `/healthz` for a liveness probe (the process answers: the worker mends its own RabbitMQ
//! connection, so an outage of a dependency is no reason to restart it) and `/readyz` for a
//! readiness probe (it holds a consumer on the chunk queue, and PostgreSQL answers; it also says
//! which RabbitMQ node the worker is on). The answers are the coordinator's
//! ([`ingest_core::probe`]); what is the worker's own is what it is ready by.

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use deadpool_postgres::Pool;
use ingest_core::broker::Link;
use ingest_core::probe;
use ingest_wire::{Alive, WorkerReadiness};
use std::future::IntoFuture;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What the probes look at.
#[derive(Clone)]
pub struct Health {
    pool: Pool,
    link: Arc<Link>,
    consuming: Arc<AtomicBool>,
}

impl Health {
    /// Probes for a worker on `pool` and `link`; not consuming yet.
    pub fn new(pool: Pool, link: Arc<Link>) -> Health {
        Health {
            pool,
            link,
            consuming: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Says whether the consume loop holds a consumer on the chunk queue.
    pub fn set_consuming(&self, consuming: bool) {
        self.consuming.store(consuming, Ordering::SeqCst);
    }

    /// The worker's readiness now: consuming, and PostgreSQL answers.
    pub async fn readiness(&self) -> WorkerReadiness {
        let postgres = probe::postgres_answers(&self.pool).await;
        WorkerReadiness {
            consuming: self.consuming.load(Ordering::SeqCst),
            postgres,
            rabbitmq_node: self.link.node(),
        }
    }

    /// The listener's routes.
    pub fn router(self) -> Router {
        Router::new()
            .route("/metrics", get(metrics))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .with_state(self)
    }

    /// Serves the routes on `listener` until [`Serving::stop`].
    pub fn serve(self, listener: TcpListener) -> Serving {
        let stop = CancellationToken::new();
        let served = tokio::spawn(
            axum::serve(listener, self.router())
                .with_graceful_shutdown(stop.clone().cancelled_owned())
                .into_future(),
        );
        Serving { stop, served }
    }
}

/// The listener, serving.
pub struct Serving {
    stop: CancellationToken,
    served: JoinHandle<std::io::Result<()>>,
}

impl Serving {
    /// Stops serving (answers under way finish) and waits until the listener is closed.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.served
            .await
            .context("the health listener panicked")??;
        Ok(())
    }
}

/// `GET /metrics`.
async fn metrics() -> impl IntoResponse {
    probe::metrics()
}

/// `GET /healthz`: 200 while the process answers.
async fn healthz() -> Json<Alive> {
    Json(probe::alive())
}

/// `GET /readyz`: 200 when consuming (the loop holds a consumer) and PostgreSQL answers, 503
/// otherwise.
async fn readyz(State(health): State<Health>) -> (StatusCode, Json<WorkerReadiness>) {
    let readiness = health.readiness().await;
    (probe::status(&readiness), Json(readiness))
}
