//! Health: `GET /healthz` (the process answers) and `GET /readyz` (every dependency is there,
//! and which one is not).

use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use ingest_wire::Readiness;
use serde_json::json;

/// `GET /healthz`: the process is up.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: PostgreSQL answers, RabbitMQ is connected and the spool takes files; 503 with
/// the missing one(s) false otherwise.
pub async fn readyz(State(app): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let postgres = match app.pool.get().await {
        Ok(client) => client.simple_query("SELECT 1").await.is_ok(),
        Err(_) => false,
    };
    let readiness = Readiness {
        postgres,
        rabbitmq: app.amqp.status().connected(),
        spool: app.spool.is_writable().await,
    };
    let status = if readiness.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(readiness))
}
