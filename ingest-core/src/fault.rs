//! Whose fault a failed step is. The product's promise rests on this split: a batch fails only
//! when PostgreSQL refuses its rows; anything else — a lost connection, a restart, a timeout, a
//! deadlock, a full disk, a race on the catalog, a broker that is away — is an outage, and the
//! step is tried again (see [`crate::outage`]). Callers decide by this type, never by an error's
//! text.
//!
//! A failover is an outage too: between the primary's death and the standby's promotion a
//! session opened with `target_session_attrs=read-write` finds no server that takes writes
//! ("database does not allow writes", a connection error), and one already on a server that
//! turned read-only is told `25006` ("cannot execute … in a read-only transaction"); a commit
//! whose synchronous-replication wait a failover manager ended loses its connection after it
//! took effect on the old primary. None is class 22 or 23, so each is tried again, and every
//! step is safe to try again after an answer that never came (see `ledger`).

use std::fmt;

/// A failed step, by kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Fault {
    /// PostgreSQL refused these rows: trying again gives the same answer, so the batch fails
    /// with this reason (PostgreSQL's message, SQLSTATE and detail).
    #[error("{0}")]
    Refused(String),
    /// A dependency is away, busy or racing us: trying again later may work. The text is for
    /// logs and the batch status, not for an HTTP client.
    #[error("{0}")]
    Outage(String),
}

impl Fault {
    /// An outage with a reason.
    pub fn outage(reason: impl fmt::Display) -> Fault {
        Fault::Outage(reason.to_string())
    }

    /// Classifies an error of a statement that writes or attaches a batch's own rows (COPY,
    /// CREATE INDEX, ATTACH PARTITION): SQLSTATE classes 22 (data exception) and 23 (integrity
    /// constraint violation) are the rows' fault — except a unique violation on a system catalog
    /// (`pg_…`), which is two sessions creating the same object at once. Everything else
    /// (connection loss, `57P01`/`57P03`, `40P01`/`40001`, `53xxx`, `42P07`, timeouts) is an
    /// outage.
    pub fn of_rows(error: &tokio_postgres::Error) -> Fault {
        let Some(db) = error.as_db_error() else {
            return Fault::outage(describe(error));
        };
        let code = db.code().code();
        let catalog_race = code == "23505"
            && db
                .constraint()
                .is_some_and(|constraint| constraint.starts_with("pg_"));
        if (code.starts_with("22") || code.starts_with("23")) && !catalog_race {
            Fault::Refused(describe(error))
        } else {
            Fault::outage(describe(error))
        }
    }

    /// True for [`Fault::Refused`].
    pub fn is_refused(&self) -> bool {
        matches!(self, Fault::Refused(_))
    }
}

/// PostgreSQL's message, SQLSTATE and detail, or the connection error.
pub fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!(
            "{} (SQLSTATE {}){}",
            db.message(),
            db.code().code(),
            db.detail()
                .map(|detail| format!(": {detail}"))
                .unwrap_or_default()
        ),
        None => {
            // tokio-postgres says "db error" or "error communicating with the server" and keeps
            // the cause one level down.
            match std::error::Error::source(error) {
                Some(source) => format!("{error}: {source}"),
                None => error.to_string(),
            }
        }
    }
}

/// Ledger reads and writes touch no batch rows: any failure of theirs is an outage.
impl From<tokio_postgres::Error> for Fault {
    fn from(error: tokio_postgres::Error) -> Fault {
        Fault::Outage(format!("PostgreSQL: {}", describe(&error)))
    }
}

impl From<deadpool_postgres::PoolError> for Fault {
    fn from(error: deadpool_postgres::PoolError) -> Fault {
        match error {
            deadpool_postgres::PoolError::Backend(error) => Fault::from(error),
            other => Fault::Outage(format!("PostgreSQL: {other}")),
        }
    }
}

impl From<lapin::Error> for Fault {
    fn from(error: lapin::Error) -> Fault {
        Fault::Outage(format!("RabbitMQ: {error}"))
    }
}
