//! `GET /`: a status page a person can glance at — the recent batches with their state, a
//! progress bar, rows, rows per second, ETA, and for a failed batch its first errors with their
//! line numbers. It is one self-contained HTML file (`page.html`, compiled in: no CDN, nothing
//! fetched at run time but the API's own `GET /batches`) that refreshes itself every second while
//! a batch is open. Retracted batches show as such, their rows struck through.

use axum::http::header;
use axum::response::IntoResponse;

/// The page.
const PAGE: &str = include_str!("page.html");

/// `GET /`.
#[utoipa::path(get, path = "/", tag = "operations", summary = "Status page",
    responses((status = 200, description = "An HTML page of the recent batches",
        content_type = "text/html; charset=utf-8", body = String)))]
pub async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
}

#[cfg(test)]
mod tests {
    use ingest_wire::BatchState;

    #[test]
    fn the_page_knows_every_final_state() {
        let line = super::PAGE
            .lines()
            .find(|line| line.starts_with("const FINAL = "))
            .expect("the page lists the final states");
        for state in ingest_wire::BatchState::ALL {
            let named = line.contains(&format!("\"{}\"", state.as_str()));
            assert_eq!(named, state.is_final(), "{state} in {line}");
        }
        assert!(super::PAGE.contains(&format!(".state.{}", BatchState::Retracted)));
    }
}
