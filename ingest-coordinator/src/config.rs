//! The coordinator's configuration: one typed struct, read from flags with environment
//! variables as fallbacks, defaults that work on a machine with local PostgreSQL and RabbitMQ.

use clap::Parser;
use ingest_core::{broker, db};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Everything the coordinator needs to know.
#[derive(Debug, Clone, Parser)]
pub struct Config {
    /// PostgreSQL primary.
    #[arg(long, env = "DATABASE_URL", default_value = db::DEFAULT_DATABASE_URL)]
    pub database_url: String,

    /// RabbitMQ broker.
    #[arg(long, env = "AMQP_URL", default_value = broker::DEFAULT_AMQP_URL)]
    pub amqp_url: String,

    /// Address the HTTP API listens on (port 0 picks a free port).
    #[arg(long, env = "INGEST_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Bearer token required by submit and cancel. Status reads stay open.
    #[arg(long, env = "INGEST_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Allow listening on a non-loopback address without a token.
    #[arg(long, env = "INGEST_INSECURE", default_value_t = false)]
    pub insecure: bool,

    /// The chunk queue on RabbitMQ.
    #[arg(long, env = "INGEST_QUEUE", default_value = broker::DEFAULT_QUEUE)]
    pub queue: String,

    /// Folder for the durable copy of published chunks (a persistent volume in production).
    #[arg(long, env = "INGEST_SPOOL_DIR", default_value = "ingest-spool")]
    pub spool_dir: PathBuf,

    /// Rows per chunk.
    #[arg(long, env = "INGEST_CHUNK_ROWS", default_value_t = 50_000)]
    pub chunk_rows: usize,

    /// Largest accepted body, in bytes (before and after gunzip); more gets 413.
    #[arg(long, env = "INGEST_MAX_BODY_BYTES", default_value_t = 64 << 30)]
    pub max_body_bytes: u64,

    /// Longest accepted line, in bytes.
    #[arg(long, env = "INGEST_MAX_LINE_BYTES", default_value_t = 4096)]
    pub max_line_bytes: usize,

    /// Input errors collected before a bad file stops being read.
    #[arg(long, env = "INGEST_MAX_ERRORS", default_value_t = 100)]
    pub max_errors: usize,

    /// Attempts per chunk before its batch fails.
    #[arg(long, env = "INGEST_MAX_ATTEMPTS", default_value_t = 5)]
    pub max_attempts: i32,

    /// How often the coordinator looks for batches ready to commit, in milliseconds.
    #[arg(long, env = "INGEST_COMMIT_POLL_MS", default_value_t = 200)]
    pub commit_poll_ms: u64,

    /// How often the coordinator looks for chunks to hand out again, in milliseconds.
    #[arg(long, env = "INGEST_REDRIVE_POLL_MS", default_value_t = 1000)]
    pub redrive_poll_ms: u64,

    /// PostgreSQL connections in the coordinator's pool.
    #[arg(long, env = "INGEST_DB_POOL", default_value_t = 16)]
    pub db_pool: usize,
}

impl Config {
    /// The configuration from flags and environment, for the binary.
    pub fn from_args() -> Config {
        Config::parse()
    }

    /// The defaults, as if started with no flags and no environment (tests start from this).
    pub fn defaults() -> Config {
        Config::parse_from(["ingest-coordinator"])
    }

    /// Refuses settings that would be unsafe or cannot work.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.token.is_none() && !self.listen.ip().is_loopback() && !self.insecure {
            anyhow::bail!(
                "refusing to listen on {} without INGEST_TOKEN; set a token or pass --insecure",
                self.listen
            );
        }
        if self.token.as_deref() == Some("") {
            anyhow::bail!("INGEST_TOKEN is set but empty");
        }
        if self.chunk_rows == 0 {
            anyhow::bail!("--chunk-rows must be at least 1");
        }
        Ok(())
    }

    /// The commit loop's period.
    pub fn commit_poll(&self) -> Duration {
        Duration::from_millis(self.commit_poll_ms)
    }

    /// The redrive loop's period.
    pub fn redrive_poll(&self) -> Duration {
        Duration::from_millis(self.redrive_poll_ms)
    }
}
