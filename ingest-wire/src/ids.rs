//! Small values the API names, parsed once at the edge.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A batch's id (PostgreSQL's `bigserial`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(transparent)]
pub struct BatchId(pub i64);

impl BatchId {
    /// The number.
    pub fn get(self) -> i64 {
        self.0
    }
}

impl fmt::Display for BatchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A line of the submitted file as an editor shows it: the header is line 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(transparent)]
pub struct LineNumber(pub u64);

impl LineNumber {
    /// The number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for LineNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The value of an `Idempotency-Key` header: 1 to 200 visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(try_from = "String", into = "String")]
pub struct IdempotencyKey(String);

/// Why a text is not an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidKey;

impl fmt::Display for InvalidKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Idempotency-Key must be 1 to 200 visible ASCII characters")
    }
}

impl std::error::Error for InvalidKey {}

impl IdempotencyKey {
    /// The longest key, in bytes.
    pub const MAX_LEN: usize = 200;

    /// Parses a key.
    pub fn parse(key: &str) -> Result<IdempotencyKey, InvalidKey> {
        let visible = key
            .bytes()
            .all(|byte| byte.is_ascii_graphic() || byte == b' ');
        if key.is_empty() || key.len() > IdempotencyKey::MAX_LEN || !visible {
            return Err(InvalidKey);
        }
        Ok(IdempotencyKey(key.to_string()))
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for IdempotencyKey {
    type Error = InvalidKey;

    fn try_from(key: String) -> Result<Self, Self::Error> {
        IdempotencyKey::parse(&key)
    }
}

impl From<IdempotencyKey> for String {
    fn from(key: IdempotencyKey) -> String {
        key.0
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_1_to_200_visible_characters() {
        assert!(IdempotencyKey::parse("batch-2016-01 #3").is_ok());
        assert!(IdempotencyKey::parse(&"k".repeat(200)).is_ok());
        assert_eq!(IdempotencyKey::parse(""), Err(InvalidKey));
        assert_eq!(IdempotencyKey::parse(&"k".repeat(201)), Err(InvalidKey));
        assert_eq!(IdempotencyKey::parse("tab\there"), Err(InvalidKey));
        assert_eq!(IdempotencyKey::parse("é"), Err(InvalidKey));
    }
}
