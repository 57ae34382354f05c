//! The worker's own small HTTP listener (`INGEST_WORKER_LISTEN`): `/metrics` for Prometheus,
//! `/healthz` for a liveness probe (the process answers: the worker mends its own RabbitMQ
//! connection, so an outage of a dependency is no reason to restart it) and `/readyz` for a
//! readiness probe (it holds a consumer on the chunk queue, and PostgreSQL answers; it also says
//! which RabbitMQ node the worker is on).

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use deadpool_postgres::Pool;
use ingest_core::broker::Link;
use ingest_wire::WorkerReadiness;
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

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

    /// The listener's routes.
    pub fn router(self) -> Router {
        Router::new()
            .route("/metrics", get(metrics))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .with_state(self)
    }
}

/// `GET /metrics`.
async fn metrics() -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        ingest_core::metrics::render(),
    )
}

/// `GET /healthz`: 200 while the process answers.
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: consuming (the loop holds a consumer) and PostgreSQL answers.
async fn readyz(State(health): State<Health>) -> (StatusCode, Json<WorkerReadiness>) {
    let postgres = match health.pool.get().await {
        Ok(client) => client.simple_query("SELECT 1").await.is_ok(),
        Err(_) => false,
    };
    let readiness = WorkerReadiness {
        consuming: health.consuming.load(Ordering::SeqCst),
        postgres,
        rabbitmq_node: health.link.node(),
    };
    let status = if readiness.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(readiness))
}
