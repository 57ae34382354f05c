//! The coordinator's integration tests, one binary with a module per theme, on the real
//! PostgreSQL and RabbitMQ (each test on a database and queues of its own, from
//! `ingest-testkit`).

mod broker_cluster;
mod failover;
mod faults;
mod fleet;
mod merge;
mod outages;
mod page;
mod pipeline;
mod process;
mod readers;
mod replace;
mod retract;
mod streaming;
mod upgrade;
mod validation;
mod visible_first;
