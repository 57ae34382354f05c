//! The worker's configuration: one typed struct, from flags with environment fallbacks. The URLs
//! are `ingest_core::setting::Url`, whose `Debug` leaves the password out, so `Debug` is derived.

use clap::Parser;
use ingest_core::setting::{self, Url};
use ingest_core::{broker, db};
use std::net::SocketAddr;
use std::time::Duration;

/// Everything a worker needs to know. Its `Debug` shows no password.
#[derive(Debug, Clone, Parser)]
#[command(
    version,
    about = "Loads chunks from RabbitMQ into PostgreSQL with binary COPY"
)]
pub struct Config {
    /// PostgreSQL primary.
    #[arg(long, env = "DATABASE_URL", default_value = db::DEFAULT_DATABASE_URL)]
    pub database_url: Url,

    /// RabbitMQ: one node's URL, or a cluster's nodes' URLs separated by commas (the process
    /// starts at one picked at random and goes on with the next when its node goes away).
    #[arg(long, env = "AMQP_URL", default_value = broker::DEFAULT_AMQP_URL)]
    pub amqp_url: Url,

    /// The chunk queue on RabbitMQ.
    #[arg(long, env = "INGEST_QUEUE", default_value = broker::DEFAULT_QUEUE)]
    pub queue: String,

    /// Connect to the first of `AMQP_URL`'s nodes that answers, instead of one picked at
    /// random (which spreads a fleet over a cluster's nodes).
    #[arg(long, env = "INGEST_AMQP_IN_ORDER", default_value_t = false)]
    pub amqp_in_order: bool,

    /// Replicas of the chunk queues when this process is the one that declares them (a quorum
    /// queue's `x-quorum-initial-group-size`; default: the cluster's own default). Queues that
    /// exist are used as they are.
    #[arg(long, env = "INGEST_QUEUE_REPLICAS", value_parser = clap::value_parser!(u16).range(1..))]
    pub queue_replicas: Option<u16>,

    /// Chunks loaded at once (each on its own PostgreSQL connection).
    #[arg(long, env = "INGEST_WORKER_CONCURRENCY", default_value_t = 2)]
    pub concurrency: usize,

    /// Unacknowledged messages RabbitMQ may hand this worker (0: the same as concurrency).
    #[arg(long, env = "INGEST_WORKER_PREFETCH", default_value_t = 0)]
    pub prefetch: u16,

    /// How long a claimed chunk stays this worker's before a coordinator ends the backend the
    /// claim recorded and hands the chunk out again, in seconds.
    #[arg(long = "lease-seconds", env = "INGEST_LEASE_SECONDS", default_value = "300",
          value_parser = setting::seconds)]
    pub lease: Duration,

    /// On SIGTERM, how long to finish the chunks in hand before leaving them to RabbitMQ.
    #[arg(long = "drain-seconds", env = "INGEST_DRAIN_SECONDS", default_value = "30",
          value_parser = setting::seconds)]
    pub drain: Duration,

    /// The longest pause between two tries of a chunk while PostgreSQL is away, in milliseconds
    /// (the delivery stays in hand meanwhile).
    #[arg(long = "backoff-max-ms", env = "INGEST_BACKOFF_MAX_MS", default_value = "5000",
          value_parser = setting::millis)]
    pub max_pause: Duration,

    /// How long to wait for RabbitMQ at start, in seconds (afterwards the worker reconnects
    /// after outages of any length by itself).
    #[arg(long = "connect-seconds", env = "INGEST_CONNECT_SECONDS", default_value = "120",
          value_parser = setting::seconds)]
    pub connect: Duration,

    /// Address of the worker's metrics and health listener (port 0 picks a free port).
    #[arg(long, env = "INGEST_WORKER_LISTEN", default_value = "127.0.0.1:9091")]
    pub listen: SocketAddr,

    /// This worker's name in the ledger and logs (default: host and process id).
    #[arg(long, env = "INGEST_WORKER_NAME")]
    pub name: Option<String>,
}

impl Config {
    /// The configuration from flags and environment, for the binary.
    pub fn from_args() -> Config {
        Config::parse()
    }

    /// The defaults, as if started with no flags (tests start from this).
    pub fn defaults() -> Config {
        Config::parse_from(["ingest-worker"])
    }

    /// Refuses settings that cannot work, with one line.
    pub fn check(&self) -> anyhow::Result<()> {
        broker::Nodes::parse(&self.amqp_url)?;
        if self.concurrency == 0 {
            anyhow::bail!("--concurrency (INGEST_WORKER_CONCURRENCY) must be at least 1");
        }
        if self.lease < Duration::from_secs(1) {
            anyhow::bail!("--lease-seconds (INGEST_LEASE_SECONDS) must be at least 1");
        }
        if self.max_pause.is_zero() {
            anyhow::bail!("--backoff-max-ms (INGEST_BACKOFF_MAX_MS) must be at least 1");
        }
        if self.connect < Duration::from_secs(1) {
            anyhow::bail!("--connect-seconds (INGEST_CONNECT_SECONDS) must be at least 1");
        }
        Ok(())
    }

    /// The longest statement and the longest pause inside a transaction of the worker's
    /// sessions, twice the lease: PostgreSQL ends them past it, so a worker that froze in its
    /// COPY transaction holds no chunk for long even when no coordinator is there to end its
    /// backend at the lease.
    pub fn session_limit(&self) -> Duration {
        self.lease * 2
    }

    /// The longest wait of a worker's session for a lock: a delivery of a chunk whose row lock
    /// another session holds (a duplicate, or a frozen worker's) gives up and tries again later,
    /// with the delivery in hand. A quarter of the lease, at most 10 s.
    pub fn lock_timeout(&self) -> Duration {
        (self.lease / 4).clamp(Duration::from_millis(100), Duration::from_secs(10))
    }

    /// The prefetch count actually asked of RabbitMQ.
    pub fn prefetch_count(&self) -> u16 {
        if self.prefetch == 0 {
            self.concurrency.clamp(1, u16::MAX as usize) as u16
        } else {
            self.prefetch
        }
    }

    /// The name recorded on chunks this worker holds.
    pub fn worker_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "worker".to_string());
            format!("{host}-{}", std::process::id())
        })
    }
}
