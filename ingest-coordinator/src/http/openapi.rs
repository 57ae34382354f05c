//! `GET /openapi.json`: the API's OpenAPI 3 description, generated from the handlers'
//! annotations and from `ingest-wire`'s types (the ones the handlers serialise), so it cannot
//! drift from what the coordinator answers. Submit, cancel and retract need the bearer token; the
//! rest is open, and the description says so.

use super::{batches, health, metrics, page};
use axum::Json;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// The API's description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "ingest",
        description = "Batch ingest of freight-rate prices into PostgreSQL: submit a rates file, \
            follow it to commit; a batch becomes visible whole or not at all."
    ),
    paths(
        batches::submit,
        batches::list_batches,
        batches::get_batch,
        batches::cancel,
        batches::retract,
        health::healthz,
        health::readyz,
        metrics::metrics,
        page::page,
        openapi_json,
    ),
    modifiers(&BearerToken),
    tags(
        (name = "batches", description = "Submit, follow, cancel and retract batches"),
        (name = "operations", description = "Health, readiness, metrics, the status page and this description"),
    )
)]
pub struct ApiDoc;

/// Declares the bearer token that submit, cancel and retract require.
struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// `GET /openapi.json`.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", summary = "This description",
    responses((status = 200, description = "The OpenAPI 3 description", body = Object)))]
pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
