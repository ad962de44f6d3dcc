//! The one trait every backend implements, and the values it trades in.

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretSlice};

use crate::path::SecretPath;

/// Where a secret lives in a backend, as the labels named it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SecretRef<'a> {
    /// The backend's name or path for the secret (`vaultbridge.path`),
    /// already validated ([`SecretPath::parse`]).
    pub path: &'a SecretPath,
    /// A backend-specific version (`vaultbridge.version`), latest when
    /// absent; already checked by [`crate::path::check_version`].
    pub version: Option<&'a str>,
}

/// The bytes a backend returned. Held in a zeroizing, redacting box.
pub struct SecretValue {
    bytes: SecretSlice<u8>,
    /// True when the value is unique to this request (a leased, dynamic
    /// credential): it must not be cached or shared between tasks.
    pub per_task: bool,
}

impl SecretValue {
    pub fn new(bytes: Vec<u8>) -> Self {
        Self {
            bytes: bytes.into(),
            per_task: false,
        }
    }

    /// A value that must never be shared between tasks (see [`Self::per_task`]).
    pub fn per_task(bytes: Vec<u8>) -> Self {
        Self {
            bytes: bytes.into(),
            per_task: true,
        }
    }

    pub fn expose(&self) -> &[u8] {
        self.bytes.expose_secret()
    }

    pub fn len(&self) -> usize {
        self.expose().len()
    }

    pub fn is_empty(&self) -> bool {
        self.expose().is_empty()
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretValue")
            .field("len", &self.len())
            .field("per_task", &self.per_task)
            .finish_non_exhaustive()
    }
}

/// Why a lookup failed. The variants are distinct because the plugin reacts
/// to each differently: only `Unavailable` is retried or served stale, and
/// "not found" is never an empty value.
///
/// Messages are for operators: they name the path and what to fix, and never
/// carry a secret value or a credential.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ProviderError {
    #[error("not found: {0}")]
    NotFound(String),
    #[error("access denied: {0}")]
    Denied(String),
    #[error("authentication failed: {0}")]
    Unauthenticated(String),
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// The request itself is wrong for this backend (a label it cannot honour).
    #[error("invalid request: {0}")]
    Invalid(String),
}

impl ProviderError {
    /// Transient failures worth retrying and, if configured, serving stale.
    pub fn is_transient(&self) -> bool {
        matches!(self, ProviderError::Unavailable(_))
    }
}

/// A read-only secret backend.
#[async_trait]
pub trait Provider: Send + Sync {
    /// The backend kind, as written in `type = "..."`.
    fn kind(&self) -> &'static str;

    /// Fetch one secret's bytes.
    async fn fetch(&self, secret: SecretRef<'_>) -> Result<SecretValue, ProviderError>;

    /// Prove the backend is reachable and our credentials work, without
    /// reading a secret. Returns a one-line description for `vaultbridge check`.
    async fn check(&self) -> Result<String, ProviderError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_the_value() {
        let value = SecretValue::new(b"hunter2-very-secret".to_vec());
        let shown = format!("{value:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("len: 19"), "{shown}");
    }
}
