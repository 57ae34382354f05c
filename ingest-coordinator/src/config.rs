//! The coordinator's configuration: one typed struct, read from flags with environment
//! variables as fallbacks, defaults that work on a machine with local PostgreSQL and RabbitMQ.
//! Values are parsed at the edge (`ingest_core::setting`): durations as `Duration` (a bare
//! number in the unit the variable's name says, or with a unit: `1500ms`, `2m`), the URLs and
//! the token as types whose `Debug` hides what is secret — so `Debug` is derived.

use clap::Parser;
use ingest_core::outage::Patience;
use ingest_core::setting::{self, Url};
use ingest_core::{broker, db};
use secrecy::{ExposeSecret, SecretString};
use std::net::SocketAddr;
use std::time::Duration;

/// Everything the coordinator needs to know. Its `Debug` shows no password and no token.
#[derive(Debug, Clone, Parser)]
pub struct Config {
    /// PostgreSQL primary.
    #[arg(long, env = "DATABASE_URL", default_value = db::DEFAULT_DATABASE_URL)]
    pub database_url: Url,

    /// RabbitMQ: one node's URL, or a cluster's nodes' URLs separated by commas (the process
    /// starts at one picked at random and goes on with the next when its node goes away).
    #[arg(long, env = "AMQP_URL", default_value = broker::DEFAULT_AMQP_URL)]
    pub amqp_url: Url,

    /// Address the HTTP API listens on (port 0 picks a free port).
    #[arg(long, env = "INGEST_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Bearer token required by submit and cancel. Status reads stay open.
    #[arg(long, env = "INGEST_TOKEN", hide_env_values = true, value_parser = setting::secret)]
    pub token: Option<SecretString>,

    /// Allow listening on a non-loopback address without a token.
    #[arg(long, env = "INGEST_INSECURE", default_value_t = false)]
    pub insecure: bool,

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

    /// Attempts per chunk whose rows PostgreSQL refused before its batch fails (attempts lost to
    /// an outage or a killed worker do not count).
    #[arg(long, env = "INGEST_MAX_ATTEMPTS", default_value_t = 5)]
    pub max_attempts: u32,

    /// How long an upload waits for PostgreSQL or RabbitMQ to come back (reading no
    /// more of the body meanwhile) before the batch fails with 503, in seconds.
    #[arg(long = "ride-through-seconds", env = "INGEST_RIDE_THROUGH_SECONDS", default_value = "120",
          value_parser = setting::seconds)]
    pub ride_through: Duration,

    /// The longest pause between two tries of a step that hit an outage, in milliseconds.
    #[arg(long = "backoff-max-ms", env = "INGEST_BACKOFF_MAX_MS", default_value = "5000",
          value_parser = setting::millis)]
    pub max_pause: Duration,

    /// A chunk recorded but not confirmed by RabbitMQ, or queued with no worker's claim this long
    /// after a chunk published later was claimed (or while the queue holds nothing ready), is
    /// handed out again after this many seconds.
    #[arg(long = "redrive-after-seconds", env = "INGEST_REDRIVE_AFTER_SECONDS", default_value = "30",
          value_parser = setting::seconds)]
    pub redrive_after: Duration,

    /// How often the coordinator looks for batches ready to commit, in milliseconds.
    #[arg(long = "commit-poll-ms", env = "INGEST_COMMIT_POLL_MS", default_value = "200",
          value_parser = setting::millis)]
    pub commit_poll: Duration,

    /// How often the coordinator looks for chunks to hand out again, in milliseconds.
    #[arg(long = "redrive-poll-ms", env = "INGEST_REDRIVE_POLL_MS", default_value = "1000",
          value_parser = setting::millis)]
    pub redrive_poll: Duration,

    /// Make a batch visible as soon as its rows are loaded and its foreign keys validated, and
    /// build its read index afterwards (CREATE INDEX CONCURRENTLY): sooner visible, but reads of
    /// that batch scan its partition until the index is there. Default: index first.
    #[arg(long, env = "INGEST_VISIBLE_BEFORE_INDEX", default_value_t = false)]
    pub visible_before_index: bool,

    /// Partitions `prices_by_batch` may have before the smallest are merged (down to half this):
    /// reads that do not filter on the batch plan over every partition.
    #[arg(long, env = "INGEST_PARTITIONS_MAX", default_value_t = 64)]
    pub partitions_max: usize,

    /// Partitions this big or bigger (bytes, with their index) are never merged again.
    #[arg(long, env = "INGEST_MERGE_MAX_BYTES", default_value_t = 1 << 30,
          value_parser = clap::value_parser!(i64).range(1..))]
    pub merge_max_bytes: i64,

    /// How long a merge, a retract or a replacing commit waits for a lock on `prices_by_batch`
    /// before it gives up and tries later (a reader waits at most about this long behind it),
    /// in milliseconds.
    #[arg(long = "merge-lock-ms", env = "INGEST_MERGE_LOCK_MS", default_value = "1000",
          value_parser = setting::millis)]
    pub merge_lock: Duration,

    /// How often the coordinator counts partitions to merge, in milliseconds.
    #[arg(long = "merge-poll-ms", env = "INGEST_MERGE_POLL_MS", default_value = "5000",
          value_parser = setting::millis)]
    pub merge_poll: Duration,

    /// Parts each batch's staging table is split into (chunks go to the parts in turn). At
    /// commit the parts' foreign keys are validated, and their indexes built, at the same time,
    /// one session each: set it to the cores PostgreSQL can give one commit. Readers plan over
    /// every part until a merge folds them.
    #[arg(long, env = "INGEST_BATCH_PARTS", default_value_t = 2,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub batch_parts: u16,

    /// How long this coordinator may go unseen by its peers (no heartbeat in the ledger, no
    /// renewal of a commit lease) before they take over what it held: the uploads it was feeding
    /// are ended, and a commit it was running is taken over, its sessions ended. Also the longest
    /// any of its sessions may idle inside a transaction. In seconds.
    #[arg(long = "coordinator-lease-seconds", env = "INGEST_COORDINATOR_LEASE_SECONDS",
          default_value = "30", value_parser = setting::seconds)]
    pub coordinator_lease: Duration,

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

    /// Refuses settings that would be unsafe, lose data or cannot work, with one line naming
    /// the flag and its variable.
    pub fn check(&self) -> anyhow::Result<()> {
        broker::Nodes::parse(&self.amqp_url)?;
        self.check_token()?;
        self.check_bounds()
    }

    /// A token that is set is not empty, and a public address needs one (or `--insecure`).
    fn check_token(&self) -> anyhow::Result<()> {
        if self.token.is_none() && !self.listen.ip().is_loopback() && !self.insecure {
            anyhow::bail!(
                "refusing to listen on {} without INGEST_TOKEN; set a token or pass --insecure",
                self.listen
            );
        }
        if self
            .token
            .as_ref()
            .is_some_and(|token| token.expose_secret().is_empty())
        {
            anyhow::bail!("INGEST_TOKEN is set but empty");
        }
        Ok(())
    }

    /// Counts and durations within what can work.
    fn check_bounds(&self) -> anyhow::Result<()> {
        let at_least_one = [
            ("--chunk-rows (INGEST_CHUNK_ROWS)", self.chunk_rows as u64),
            ("--max-errors (INGEST_MAX_ERRORS)", self.max_errors as u64),
            (
                "--max-body-bytes (INGEST_MAX_BODY_BYTES)",
                self.max_body_bytes,
            ),
            (
                "--max-line-bytes (INGEST_MAX_LINE_BYTES)",
                self.max_line_bytes as u64,
            ),
            (
                "--max-attempts (INGEST_MAX_ATTEMPTS)",
                u64::from(self.max_attempts),
            ),
            ("--db-pool (INGEST_DB_POOL)", self.db_pool as u64),
            (
                "--partitions-max (INGEST_PARTITIONS_MAX)",
                self.partitions_max as u64,
            ),
        ];
        if let Some((name, _)) = at_least_one.iter().find(|(_, value)| *value == 0) {
            anyhow::bail!("{name} must be at least 1");
        }
        let positive = [
            ("--commit-poll-ms (INGEST_COMMIT_POLL_MS)", self.commit_poll),
            (
                "--redrive-poll-ms (INGEST_REDRIVE_POLL_MS)",
                self.redrive_poll,
            ),
            (
                "--ride-through-seconds (INGEST_RIDE_THROUGH_SECONDS)",
                self.ride_through,
            ),
            ("--backoff-max-ms (INGEST_BACKOFF_MAX_MS)", self.max_pause),
            ("--merge-lock-ms (INGEST_MERGE_LOCK_MS)", self.merge_lock),
            ("--merge-poll-ms (INGEST_MERGE_POLL_MS)", self.merge_poll),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, value)| value.is_zero()) {
            anyhow::bail!("{name} must be at least 1");
        }
        if self.redrive_after.is_zero() {
            anyhow::bail!("--redrive-after-seconds (INGEST_REDRIVE_AFTER_SECONDS) must be above 0");
        }
        if self.coordinator_lease < Duration::from_secs(1) {
            anyhow::bail!(
                "--coordinator-lease-seconds (INGEST_COORDINATOR_LEASE_SECONDS) must be at least 1"
            );
        }
        Ok(())
    }

    /// How an upload rides through an outage: for `ride_through`, pausing at most
    /// `max_pause`.
    pub fn upload_patience(&self) -> Patience {
        Patience::new(self.ride_through, self.max_pause)
    }

    /// The token requests that change something must bear, if one is set.
    pub fn token(&self) -> Option<&str> {
        self.token.as_ref().map(ExposeSecret::expose_secret)
    }
}
