//! Health: `GET /healthz` (the process answers) and `GET /readyz` (every dependency is there,
//! and which one is not).

use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use ingest_wire::Readiness;
use serde::Serialize;
use utoipa::ToSchema;

/// What `GET /healthz` says.
#[derive(Serialize, ToSchema)]
pub struct Alive {
    /// Always `ok`: the process answers.
    pub status: String,
}

/// `GET /healthz`: the process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations", summary = "Liveness",
    responses((status = 200, description = "The process answers", body = Alive)))]
pub async fn healthz() -> Json<Alive> {
    Json(Alive {
        status: "ok".into(),
    })
}

/// `GET /readyz`: PostgreSQL answers and RabbitMQ is connected; 503 with the missing one(s)
/// false otherwise. (The coordinator keeps nothing on its own disk.)
#[utoipa::path(get, path = "/readyz", tag = "operations", summary = "Readiness",
    responses(
        (status = 200, description = "Every dependency is there", body = Readiness),
        (status = 503, description = "The dependencies marked false are missing", body = Readiness),
    ))]
pub async fn readyz(State(app): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let postgres = match app.pool.get().await {
        Ok(client) => client.simple_query("SELECT 1").await.is_ok(),
        Err(_) => false,
    };
    let readiness = Readiness {
        postgres,
        rabbitmq: app.amqp.ensure().await,
        rabbitmq_node: app.amqp.node(),
    };
    let status = if readiness.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(readiness))
}
