//! The `ingest` command's integration tests: the real binary against a real coordinator and
//! workers (from `ingest-testkit`).

mod commands;
