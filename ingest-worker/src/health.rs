//! The worker's own small HTTP listener (`INGEST_WORKER_LISTEN`): `/metrics` for Prometheus,
//! `/healthz` for a liveness probe (the process answers and its RabbitMQ connection is not lost for
//! good — a broker outage being recovered from does not count, a restart would not help) and
//! `/readyz` for a readiness probe (consuming, and PostgreSQL answers).

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use deadpool_postgres::Pool;
use ingest_core::broker;
use lapin::{Channel, Connection};
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// What the probes look at.
#[derive(Clone)]
pub struct Health {
    amqp: Arc<Connection>,
    channel: Channel,
    pool: Pool,
    consuming: Arc<AtomicBool>,
}

impl Health {
    /// Probes for a worker on `amqp` (its consumer on `channel`) and `pool`; not consuming yet.
    pub fn new(amqp: Arc<Connection>, channel: Channel, pool: Pool) -> Health {
        Health {
            amqp,
            channel,
            pool,
            consuming: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Says whether the consume loop takes deliveries.
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

/// `GET /healthz`: 200 unless the RabbitMQ connection is lost for good.
async fn healthz(State(health): State<Health>) -> (StatusCode, Json<serde_json::Value>) {
    match broker::lost_for_good(&health.amqp, None) {
        None => (StatusCode::OK, Json(json!({ "status": "ok" }))),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "lost", "reason": reason })),
        ),
    }
}

/// `GET /readyz`: consuming (the loop runs and its channel is open) and PostgreSQL answers.
async fn readyz(State(health): State<Health>) -> (StatusCode, Json<serde_json::Value>) {
    let consuming = health.consuming.load(Ordering::SeqCst) && health.channel.status().connected();
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
