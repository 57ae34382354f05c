//! PostgreSQL connections: one pool per process, built from `DATABASE_URL`, every session told at
//! its start how long it may wait and how soon to notice a peer that vanished.
//!
//! A host that vanishes without a reset (a VM gone, a cable cut) leaves its sessions open, with
//! their transactions and locks, for the kernel's default keepalive of about two hours. So every
//! session, on both ends, keeps TCP alive: probes after 30 s of silence, every 10 s, three
//! missed and the connection is dead (about a minute); the client also gives up on data left
//! unacknowledged for a minute (`tcp_user_timeout`). A frozen process is another matter — the
//! kernel still answers its keepalives — and only leases and timeouts help there: each process
//! says which ([`Sessions`]).

use anyhow::Context;
use deadpool_postgres::{Hook, HookError, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use std::time::Duration;
use tokio_postgres::NoTls;

/// The default `DATABASE_URL`: the local server with trust auth.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Idle time before the first keepalive probe.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
/// Time between probes.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Probes missed before the connection is dead.
const KEEPALIVE_PROBES: u32 = 3;
/// Data unacknowledged for this long ends the connection.
const USER_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a server running a long statement checks that its client is still there.
const CLIENT_CHECK: Duration = Duration::from_secs(10);

/// What every session of a process is told at its start.
#[derive(Debug, Clone, Default)]
pub struct Sessions {
    /// Its `application_name` (when the URL names none), as `pg_stat_activity` shows it.
    pub application_name: String,
    /// The longest wait for a lock (`lock_timeout`): a statement that would wait longer fails,
    /// as an outage, and is tried again — never a wait without end behind a frozen holder.
    pub lock_timeout: Option<Duration>,
    /// The longest statement (`statement_timeout`).
    pub statement_timeout: Option<Duration>,
    /// The longest pause inside a transaction (`idle_in_transaction_session_timeout`): the
    /// server ends the session of a client that froze in the middle of a transaction, and its
    /// locks with it.
    pub idle_in_transaction: Option<Duration>,
}

impl Sessions {
    /// The settings as `(name, value)` pairs for `set_config`, keepalives included.
    fn settings(&self) -> Vec<(&'static str, String)> {
        let millis = |duration: Duration| duration.as_millis().max(1).to_string();
        let mut settings = vec![
            ("tcp_keepalives_idle", KEEPALIVE_IDLE.as_secs().to_string()),
            (
                "tcp_keepalives_interval",
                KEEPALIVE_INTERVAL.as_secs().to_string(),
            ),
            ("tcp_keepalives_count", KEEPALIVE_PROBES.to_string()),
            ("tcp_user_timeout", millis(USER_TIMEOUT)),
            ("client_connection_check_interval", millis(CLIENT_CHECK)),
        ];
        if let Some(wait) = self.lock_timeout {
            settings.push(("lock_timeout", millis(wait)));
        }
        if let Some(longest) = self.statement_timeout {
            settings.push(("statement_timeout", millis(longest)));
        }
        if let Some(pause) = self.idle_in_transaction {
            settings.push(("idle_in_transaction_session_timeout", millis(pause)));
        }
        settings
    }

    /// One statement that applies [`Sessions::settings`], skipping any this server does not
    /// know (an older PostgreSQL), so that no setting can keep a connection from opening.
    fn apply_sql(&self) -> String {
        let values = self
            .settings()
            .iter()
            .map(|(name, value)| format!("('{name}', '{value}')"))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "SELECT set_config(s.name, v.value, false) \
             FROM (VALUES {values}) AS v(name, value) JOIN pg_settings s USING (name)"
        )
    }
}

/// The connection settings of `url`, with keepalives on (unless the URL turned them off) and
/// `application_name` set (unless the URL set one).
fn config(url: &str, sessions: &Sessions) -> anyhow::Result<tokio_postgres::Config> {
    let mut config: tokio_postgres::Config = url
        .parse()
        .with_context(|| "DATABASE_URL is not a valid PostgreSQL URL".to_string())?;
    if config.get_keepalives() {
        config
            .keepalives_idle(KEEPALIVE_IDLE)
            .keepalives_interval(KEEPALIVE_INTERVAL)
            .keepalives_retries(KEEPALIVE_PROBES)
            .tcp_user_timeout(USER_TIMEOUT);
    }
    if config.get_application_name().is_none() && !sessions.application_name.is_empty() {
        config.application_name(&sessions.application_name);
    }
    Ok(config)
}

/// Builds a pool of at most `size` connections to `url`, each session set up as `sessions` says.
/// Connections are opened lazily. Opening one gives up after 10 s and waiting for a free one
/// after 60 s, so a server that does not answer is an outage the caller rides through, never a
/// request that hangs.
pub fn pool(url: &str, size: usize, sessions: &Sessions) -> anyhow::Result<Pool> {
    let manager = Manager::from_config(
        config(url, sessions)?,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let setup = sessions.apply_sql();
    Pool::builder(manager)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .create_timeout(Some(Duration::from_secs(10)))
        .recycle_timeout(Some(Duration::from_secs(10)))
        .wait_timeout(Some(Duration::from_secs(60)))
        .post_create(Hook::async_fn(move |client, _| {
            let setup = setup.clone();
            Box::pin(async move {
                client
                    .simple_query(&setup)
                    .await
                    .map(|_| ())
                    .map_err(HookError::Backend)
            })
        }))
        .build()
        .context("cannot build the PostgreSQL pool")
}

/// Opens one connection outside any pool (migrations, tests), with keepalives, driving it on the
/// runtime.
pub async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = config(url, &Sessions::default())?
        .connect(NoTls)
        .await
        .with_context(|| format!("cannot connect to PostgreSQL at {}", redact(url)))?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "PostgreSQL connection ended");
        }
    });
    Ok(client)
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{}@{}", &url[..scheme + 3], user, &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_the_password() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u@h:5432/db"
        );
        assert_eq!(redact("postgres://h/db"), "postgres://h/db");
    }

    #[test]
    fn sessions_say_how_long_they_may_wait() {
        let sql = Sessions {
            application_name: "ingest-worker w".into(),
            lock_timeout: Some(Duration::from_secs(10)),
            statement_timeout: None,
            idle_in_transaction: Some(Duration::from_millis(1500)),
        }
        .apply_sql();
        assert!(sql.contains("('lock_timeout', '10000')"), "{sql}");
        assert!(
            sql.contains("('idle_in_transaction_session_timeout', '1500')"),
            "{sql}"
        );
        assert!(sql.contains("('tcp_keepalives_idle', '30')"), "{sql}");
        assert!(!sql.contains("statement_timeout"), "{sql}");
    }

    #[test]
    fn keepalives_are_on_and_the_url_may_name_the_application() {
        let sessions = Sessions {
            application_name: "ingest-coordinator".into(),
            ..Sessions::default()
        };
        let config = config("postgres://h/db", &sessions).unwrap();
        assert!(config.get_keepalives());
        assert_eq!(config.get_keepalives_idle(), KEEPALIVE_IDLE);
        assert_eq!(config.get_application_name(), Some("ingest-coordinator"));
        let named = super::config("postgres://h/db?application_name=mine", &sessions).unwrap();
        assert_eq!(named.get_application_name(), Some("mine"));
    }
}
