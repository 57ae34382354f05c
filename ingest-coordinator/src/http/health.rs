//! Health: `GET /healthz` (the process answers) and `GET /readyz` (every dependency is there,
//! and which one is not). The answers are the ones a worker gives too ([`ingest_core::probe`]).

use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use ingest_core::probe;
use ingest_wire::{Alive, Readiness};

/// `GET /healthz`: the process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations", summary = "Liveness",
    responses((status = 200, description = "The process answers", body = Alive)))]
pub async fn healthz() -> Json<Alive> {
    Json(probe::alive())
}

/// `GET /readyz`: PostgreSQL answers and RabbitMQ is connected; 503 with the missing one(s)
/// false otherwise. (The coordinator keeps nothing on its own disk.)
#[utoipa::path(get, path = "/readyz", tag = "operations", summary = "Readiness",
    responses(
        (status = 200, description = "Every dependency is there", body = Readiness),
        (status = 503, description = "The dependencies marked false are missing", body = Readiness),
    ))]
pub async fn readyz(State(app): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let readiness = Readiness {
        postgres: probe::postgres_answers(&app.pool).await,
        rabbitmq: app.amqp.ensure().await,
        rabbitmq_node: app.amqp.node(),
    };
    (probe::status(&readiness), Json(readiness))
}
