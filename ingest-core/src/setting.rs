//! Values of settings, parsed at the edge (flags and environment variables) into the types the
//! processes use: durations, and the connection URLs and token whose `Debug` hides what is
//! secret, so that a configuration can derive `Debug` and be logged whole.
//!
//! A duration is written as the variable's name says — `INGEST_MERGE_LOCK_MS=1000`,
//! `INGEST_LEASE_SECONDS=300` — or with a unit, humantime's way (`1s`, `1500ms`, `5m`).

use secrecy::SecretString;
use std::convert::Infallible;
use std::fmt;
use std::ops::Deref;
use std::str::FromStr;
use std::time::Duration;

/// A duration given in milliseconds (a bare number) or with a unit.
pub fn millis(text: &str) -> Result<Duration, String> {
    duration(text, 0.001)
}

/// A duration given in seconds (a bare number, fractions allowed) or with a unit.
pub fn seconds(text: &str) -> Result<Duration, String> {
    duration(text, 1.0)
}

/// A bare number times `unit` seconds, or humantime's form.
fn duration(text: &str, unit: f64) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(number) = text.parse::<f64>() {
        return Duration::try_from_secs_f64(number * unit)
            .map_err(|_| format!("{text:?} is not a duration (negative or too large)"));
    }
    humantime::parse_duration(text).map_err(|error| format!("{text:?} is not a duration: {error}"))
}

/// A bearer token from the environment (its `Debug` says `[REDACTED]`).
pub fn secret(text: &str) -> Result<SecretString, Infallible> {
    Ok(SecretString::from(text))
}

/// A connection URL (PostgreSQL's, or RabbitMQ's nodes' separated by commas) whose `Debug` and
/// `Display` leave the password out. It reads as the URL itself (`&url`, `url.as_str()`) where
/// a connection is made.
#[derive(Clone, PartialEq, Eq)]
pub struct Url(String);

impl Url {
    /// The whole URL, password included: for connecting only.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Deref for Url {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl FromStr for Url {
    type Err = Infallible;

    fn from_str(text: &str) -> Result<Url, Infallible> {
        Ok(Url(text.to_string()))
    }
}

impl From<String> for Url {
    fn from(url: String) -> Url {
        Url(url)
    }
}

impl From<&str> for Url {
    fn from(url: &str) -> Url {
        Url(url.to_string())
    }
}

impl fmt::Debug for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", crate::broker::redact(&self.0))
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::broker::redact(&self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_number_is_in_the_unit_of_the_name_and_a_unit_wins() {
        assert_eq!(millis("1500"), Ok(Duration::from_millis(1500)));
        assert_eq!(seconds("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(seconds("30"), Ok(Duration::from_secs(30)));
        assert_eq!(millis("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(seconds("1m 30s"), Ok(Duration::from_secs(90)));
        assert!(millis("-1").is_err());
        assert!(seconds("soon")
            .unwrap_err()
            .contains("\"soon\" is not a duration"));
    }

    #[test]
    fn a_url_never_shows_its_password() {
        let url: Url = "postgres://u:hunter2@h:5432/db".parse().unwrap();
        assert_eq!(format!("{url:?}"), "\"postgres://u@h:5432/db\"");
        assert_eq!(url.to_string(), "postgres://u@h:5432/db");
        assert_eq!(url.as_str(), "postgres://u:hunter2@h:5432/db");
        let nodes = Url::from("amqp://g:p@a:5672,amqp://g:p@b:5672");
        assert_eq!(nodes.to_string(), "amqp://g@a:5672,amqp://g@b:5672");
        let token = secret("s3cret").unwrap();
        assert!(!format!("{token:?}").contains("s3cret"));
    }
}
