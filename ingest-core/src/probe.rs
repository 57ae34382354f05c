//! Probes: what the coordinator's and the workers' operations endpoints share, so that both
//! answer alike — `/metrics` with the Prometheus text, `/healthz` with `ok`, `/readyz` with 200
//! or 503 by readiness — and check PostgreSQL the same way. Free of any web framework: each
//! process's router wraps these answers in its own handlers.

use deadpool_postgres::Pool;
use http::header::{HeaderName, CONTENT_TYPE};
use http::StatusCode;
use ingest_wire::{Alive, Readiness, WorkerReadiness};

/// The Prometheus text format's content type.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `GET /metrics`: the content type and the Prometheus text of every metric.
pub fn metrics() -> ([(HeaderName, &'static str); 1], String) {
    (
        [(CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        crate::metrics::render(),
    )
}

/// `GET /healthz`: the process answers.
pub fn alive() -> Alive {
    Alive::ok()
}

/// Whether PostgreSQL answers a query on a session of `pool`.
pub async fn postgres_answers(pool: &Pool) -> bool {
    match pool.get().await {
        Ok(client) => client.simple_query("SELECT 1").await.is_ok(),
        Err(_) => false,
    }
}

/// A `/readyz` answer: ready, or which dependency is missing.
pub trait Ready {
    /// Every dependency is there.
    fn is_ready(&self) -> bool;
}

impl Ready for Readiness {
    fn is_ready(&self) -> bool {
        Readiness::is_ready(self)
    }
}

impl Ready for WorkerReadiness {
    fn is_ready(&self) -> bool {
        WorkerReadiness::is_ready(self)
    }
}

/// `GET /readyz`'s status: 200 when ready, 503 (with what is missing in the body) otherwise.
pub fn status(readiness: &impl Ready) -> StatusCode {
    if readiness.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_answers_200_or_503() {
        let mut ready = WorkerReadiness {
            consuming: true,
            postgres: true,
            rabbitmq_node: "127.0.0.1:5672".into(),
        };
        assert_eq!(status(&ready), StatusCode::OK);
        ready.consuming = false;
        assert_eq!(status(&ready), StatusCode::SERVICE_UNAVAILABLE);
        let coordinator = Readiness {
            postgres: true,
            rabbitmq: false,
            rabbitmq_node: "127.0.0.1:5672".into(),
        };
        assert_eq!(status(&coordinator), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn the_answers_read_as_before() {
        assert_eq!(
            serde_json::to_string(&alive()).unwrap(),
            r#"{"status":"ok"}"#
        );
        let ([(name, value)], _) = metrics();
        assert_eq!(name, CONTENT_TYPE);
        assert_eq!(value, "text/plain; version=0.0.4; charset=utf-8");
    }
}
