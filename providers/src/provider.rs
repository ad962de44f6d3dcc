//! The one trait every backend implements, and the values it trades in.

use std::borrow::Cow;

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
    /// How long the value stays valid (a lease's duration), when the
    /// backend says: a task that asks again within it gets the same value.
    pub lease: Option<std::time::Duration>,
}

impl SecretValue {
    pub fn new(bytes: Vec<u8>) -> Self {
        Self {
            bytes: bytes.into(),
            per_task: false,
            lease: None,
        }
    }

    /// A value that must never be shared between tasks (see [`Self::per_task`]).
    pub fn per_task(bytes: Vec<u8>) -> Self {
        Self {
            bytes: bytes.into(),
            per_task: true,
            lease: None,
        }
    }

    /// The value stays valid for `lease` (e.g. Vault's `lease_duration`).
    pub fn with_lease(mut self, lease: std::time::Duration) -> Self {
        self.lease = Some(lease);
        self
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

/// The most characters of one [`ProviderError`] message that are shown.
/// Room for a path, a backend's own words and the advice around them.
pub const MAX_MESSAGE_CHARS: usize = 1200;

/// Why a lookup failed. The variants are distinct because the plugin reacts
/// to each differently: only `Unavailable` is retried (when its [`Outage`]
/// says that is safe) or served stale, and "not found" is never an empty
/// value.
///
/// Messages are for operators: they name the path and what to fix, and never
/// carry a secret value or a credential. They are often built from text we
/// did not write (paths, backend answers), so `Display`, `Debug` and
/// [`ProviderError::message`] show them escaped and bounded
/// ([`crate::text::shown_max`], [`MAX_MESSAGE_CHARS`]) — here, once, so that
/// no place that builds one can forget.
#[derive(thiserror::Error, Clone, PartialEq, Eq)]
pub enum ProviderError {
    #[error("not found: {}", shown_message(.0))]
    NotFound(String),
    #[error("access denied: {}", shown_message(.0))]
    Denied(String),
    #[error("authentication failed: {}", shown_message(.0))]
    Unauthenticated(String),
    #[error("backend unavailable: {}", shown_message(&.0.message))]
    Unavailable(Outage),
    /// The request itself is wrong for this backend (a label it cannot honour).
    #[error("invalid request: {}", shown_message(.0))]
    Invalid(String),
}

/// The backend could not be reached or gave no usable answer, and what
/// asking again would do. Providers make one attempt per call and say this;
/// only the plugin retries (`plugin/src/tuning.rs`).
#[derive(Clone, PartialEq, Eq)]
pub struct Outage {
    pub message: String,
    /// Asking again is safe: the call had no effect, or repeating it does
    /// nothing new (a read). False when it may already have taken effect (a
    /// write or a credential-minting read that timed out or got a 5xx), or
    /// when the answer will not change by asking again.
    pub retry_safe: bool,
    /// The backend's `Retry-After`: no new attempt before this.
    pub retry_after: Option<std::time::Duration>,
}

/// The longest Retry-After we honour; the plugin's deadline cuts it
/// shorter anyway, this only keeps the arithmetic far from overflow.
pub const MAX_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(3600);

/// A `Retry-After: <seconds>` header value, capped at [`MAX_RETRY_AFTER`].
/// The server chooses it: NaN, negative or huge values (`1e20` would make
/// `Duration::from_secs_f64` panic) are ignored or capped, never trusted.
/// (The HTTP-date form is not used by Vault or Key Vault: ignored.)
pub fn retry_after_secs(value: &str) -> Option<std::time::Duration> {
    let secs = value.trim().parse::<f64>().ok()?;
    if secs.is_nan() || secs < 0.0 {
        return None;
    }
    std::time::Duration::try_from_secs_f64(secs.min(MAX_RETRY_AFTER.as_secs_f64())).ok()
}

fn shown_message(message: &str) -> Cow<'_, str> {
    crate::text::shown_max(message, MAX_MESSAGE_CHARS)
}

impl ProviderError {
    /// The backend is unavailable; asking again is safe (see [`Outage`]).
    pub fn unavailable(message: impl Into<String>) -> Self {
        ProviderError::Unavailable(Outage {
            message: message.into(),
            retry_safe: true,
            retry_after: None,
        })
    }

    /// The same outage, but asking again is not safe or cannot help.
    pub fn without_retry(self) -> Self {
        match self {
            ProviderError::Unavailable(outage) => ProviderError::Unavailable(Outage {
                retry_safe: false,
                ..outage
            }),
            other => other,
        }
    }

    /// The same outage, not to be retried before `wait` (Retry-After).
    pub fn with_retry_after(self, wait: std::time::Duration) -> Self {
        match self {
            ProviderError::Unavailable(outage) => ProviderError::Unavailable(Outage {
                retry_after: Some(wait),
                ..outage
            }),
            other => other,
        }
    }

    /// Transient failures: served stale when configured (retried only when
    /// [`Self::retry_safe`]).
    pub fn is_transient(&self) -> bool {
        matches!(self, ProviderError::Unavailable(_))
    }

    /// Another attempt is safe and may succeed.
    pub fn retry_safe(&self) -> bool {
        matches!(self, ProviderError::Unavailable(outage) if outage.retry_safe)
    }

    /// The backend's `Retry-After`, when it gave one.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            ProviderError::Unavailable(outage) => outage.retry_after,
            _ => None,
        }
    }

    /// The message without the kind, escaped and bounded like `Display`.
    pub fn message(&self) -> Cow<'_, str> {
        shown_message(self.raw())
    }

    fn raw(&self) -> &str {
        match self {
            ProviderError::NotFound(m)
            | ProviderError::Denied(m)
            | ProviderError::Unauthenticated(m)
            | ProviderError::Invalid(m) => m,
            ProviderError::Unavailable(outage) => &outage.message,
        }
    }

    fn variant(&self) -> &'static str {
        match self {
            ProviderError::NotFound(_) => "NotFound",
            ProviderError::Denied(_) => "Denied",
            ProviderError::Unauthenticated(_) => "Unauthenticated",
            ProviderError::Unavailable(_) => "Unavailable",
            ProviderError::Invalid(_) => "Invalid",
        }
    }
}

/// Like the derived one, but bounded: `{:?}` of an error reaches logs too.
impl std::fmt::Debug for ProviderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The escaped text as is: `{:?}` of the Cow would escape the
        // escapes' backslashes a second time.
        f.debug_tuple(self.variant())
            .field(&format_args!("\"{}\"", self.message()))
            .finish()
    }
}

/// What a provider knows of the token or credentials it holds, for the
/// plugin's metrics. Times only: never the credential.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Credential {
    /// When they expire; `None`: they do not, or it is not known.
    pub expires_at: Option<std::time::SystemTime>,
    /// When they were last obtained or renewed.
    pub renewed_at: Option<std::time::SystemTime>,
}

/// A secret's current version as its backend describes it, read without
/// the value where the backend allows: what the rotation controller
/// compares to tell that a value changed. Metadata only — never derived
/// from the value (not even a hash), since it ends up in secret labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// Names the current content: it differs whenever the value may have
    /// changed (a version number or id, a file's change time).
    pub id: String,
    /// This version as a `vaultbridge.version` label that pins it; `None`
    /// when the backend keeps no versions (a file).
    pub pin: Option<String>,
    /// When this version was created, if the backend says.
    pub created: Option<std::time::SystemTime>,
}

/// Where one task's per-task value for one secret is kept for the plugins
/// of the other managers (see [`Provider::recall`]): the engine's task id
/// and a digest of everything else the request named. Only lowercase
/// letters, digits and one `/`, so it is safe as a path in any backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskKey(String);

impl TaskKey {
    /// `None` for a task id that is not the engine's (25 lowercase letters
    /// and digits; up to 64 accepted).
    pub fn new(task_id: &str, digest: &[u8; 32]) -> Option<Self> {
        let engine_shaped = !task_id.is_empty()
            && task_id.len() <= 64
            && task_id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !engine_shaped {
            return None;
        }
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        Some(Self(format!("{task_id}/{hex}")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
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

    /// The one spelling of `path` that the plugin's access policy judges:
    /// every way of naming the same backend secret (a mount prefix, another
    /// case, an ARN) gives the same name, so no spelling passes a glob that
    /// another is held to. Never the query (a logical call's body). A
    /// spelling that cannot be reduced so is refused (`Invalid`).
    fn policy_name(&self, path: &SecretPath) -> Result<String, ProviderError> {
        Ok(path.path().to_string())
    }

    /// The expiry and last renewal of the credentials in hand, for
    /// backends that hold expiring ones; `None` (the default) when there
    /// is nothing to say (a file, static keys, nothing obtained yet).
    fn credential(&self) -> Option<Credential> {
        None
    }

    /// The current version of the secret at `path` (see [`Version`]), for
    /// the rotation controller. One attempt, like [`Self::fetch`]; a read,
    /// so an outage is safe to retry. Backends that cannot tell say
    /// `Invalid`, with what to do instead.
    async fn current_version(&self, path: &SecretPath) -> Result<Version, ProviderError> {
        Err(ProviderError::Invalid(format!(
            "the {} provider cannot tell when '{}' changes, so it cannot be rotated; remove the vaultbridge.rotate label",
            self.kind(),
            path.path()
        )))
    }

    /// Whether per-task values minted at `path` are kept where every
    /// manager's plugin finds them ([`Self::remember`], [`Self::recall`]).
    /// Only the leader manager's plugin is asked, and a new leader's is
    /// asked again for every running task: without this, it would mint a
    /// value for each that the task never uses. No I/O.
    fn shares_issued(&self, _path: &SecretPath) -> bool {
        false
    }

    /// The value `task` was already given for `path`, if one is kept and
    /// still valid: per task, its lease what is left of its life. A read:
    /// one attempt, safe to retry.
    async fn recall(
        &self,
        _path: &SecretPath,
        _task: &TaskKey,
    ) -> Result<Option<SecretValue>, ProviderError> {
        Ok(None)
    }

    /// Keep `value`, just minted for `task`, until `expires`. Write-once:
    /// a value already kept for `task` stays (`Ok(false)`). Never to be
    /// retried (it is a write).
    async fn remember(
        &self,
        _path: &SecretPath,
        _task: &TaskKey,
        _value: &[u8],
        _expires: std::time::SystemTime,
    ) -> Result<bool, ProviderError> {
        Ok(false)
    }
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

    #[test]
    fn every_error_message_is_one_escaped_bounded_line() {
        let hostile = format!(
            "db\nINFO vaultbridge: secret served\r\x1b[2K\u{2028}{}",
            "A".repeat(1024 * 1024)
        );
        for error in [
            ProviderError::NotFound(hostile.clone()),
            ProviderError::Denied(hostile.clone()),
            ProviderError::Unauthenticated(hostile.clone()),
            ProviderError::unavailable(hostile.clone()),
            ProviderError::Invalid(hostile.clone()),
        ] {
            for shown in [
                error.to_string(),
                format!("{error:?}"),
                error.message().into_owned(),
            ] {
                assert!(
                    !shown.chars().any(crate::text::is_unsafe_char),
                    "{shown:.80}"
                );
                assert!(
                    shown.chars().count() < MAX_MESSAGE_CHARS + 100,
                    "{}",
                    shown.len()
                );
                assert!(shown.contains("db\\u{a}INFO"), "{shown:.80}");
                assert!(
                    shown.contains("\\u{d}\\u{1b}[2K\\u{2028}AAA"),
                    "{shown:.80}"
                );
                assert!(
                    shown.ends_with("bytes)") || shown.ends_with("bytes)\")"),
                    "{}",
                    &shown[shown.len() - 40..]
                );
            }
        }
        // Ordinary messages are shown as written.
        let plain = ProviderError::NotFound("no secret at kv/app/db".into());
        assert_eq!(plain.to_string(), "not found: no secret at kv/app/db");
        assert_eq!(format!("{plain:?}"), "NotFound(\"no secret at kv/app/db\")");
    }

    #[test]
    fn retry_after_from_the_server_never_panics_and_is_capped() {
        assert_eq!(
            retry_after_secs(" 2 "),
            Some(std::time::Duration::from_secs(2))
        );
        assert_eq!(
            retry_after_secs("0.5"),
            Some(std::time::Duration::from_millis(500))
        );
        assert_eq!(retry_after_secs("0"), Some(std::time::Duration::ZERO));
        for huge in ["1e19", "1e20", "1e300", "inf", "18446744073709551616"] {
            assert_eq!(retry_after_secs(huge), Some(MAX_RETRY_AFTER), "{huge}");
        }
        for bad in [
            "-1",
            "NaN",
            "-inf",
            "soon",
            "",
            "Wed, 21 Oct 2026 07:28:00 GMT",
        ] {
            assert_eq!(retry_after_secs(bad), None, "{bad}");
        }
    }
}
