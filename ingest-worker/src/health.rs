//! The worker's own small HTTP listener (`INGEST_WORKER_LISTEN`): `/metrics` for Prometheus,
//! `/healthz` for a liveness probe (the process answers: the worker mends its own RabbitMQ
//! connection, so an outage of a dependency is no reason to restart it) and `/readyz` for a
//! readiness probe (it holds a consumer on the chunk queue, and PostgreSQL answers).

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use deadpool_postgres::Pool;
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// What the probes look at.
#[derive(Clone)]
pub struct Health {
    pool: Pool,
    consuming: Arc<AtomicBool>,
}

impl Health {
    /// Probes for a worker on `pool`; not consuming yet.
    pub fn new(pool: Pool) -> Health {
        Health {
            pool,
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
async fn readyz(State(health): State<Health>) -> (StatusCode, Json<serde_json::Value>) {
    let consuming = health.consuming.load(Ordering::SeqCst);
    let postgres = match health.pool.get().await {
        Ok(client) => client.simple_query("SELECT 1").await.is_ok(),
        Err(_) => false,
    };
    let status = if consuming && postgres {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({ "consuming": consuming, "postgres": postgres })),
    )
}
