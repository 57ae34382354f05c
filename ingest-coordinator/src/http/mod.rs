//! The HTTP surface: the handlers that turn requests into pipeline calls and pipeline outcomes
//! into answers, and what every answer shares (errors, request ids, the token, answering after
//! an unread body). The answers' shapes are `ingest-wire`'s.

pub mod api_error;
pub mod auth;
pub mod batches;
pub mod health;
pub mod metrics;
pub mod openapi;
pub mod page;
pub mod request_id;
pub mod unread_body;
