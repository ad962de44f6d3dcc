//! How a request fails: [`ResolveError`] (why, for the operator) and
//! [`Failure`] (its stable outcome word and bounded message, as logged,
//! audited and sent to Docker). On its own so that the cache, the resolver
//! and the configuration can all name it without depending on each other.

use vaultbridge_providers::ProviderError;

use crate::labels::PROVIDER;

/// What a plugin with no configuration answers, logs at start and `check`
/// prints: what to set, one line (the engine logs each line separately).
pub const NOT_CONFIGURED: &str = "vaultbridge is not configured: there is no config file \
(/etc/vaultbridge/config.toml, --config or VAULTBRIDGE_CONFIG), no backend variable \
(VAULT_ADDR, AWS_REGION, AZURE_KEYVAULT_URL or VAULTBRIDGE_FILE_DIR) and no \
/etc/vaultbridge/secrets folder for the file provider. As a managed plugin: put a \
config.toml (or a secrets/ folder) in a host directory, then `docker plugin disable \
<plugin>`, `docker plugin set <plugin> config.source=<that directory>` (or set the \
variables with `docker plugin set`), `docker plugin enable <plugin>`; see docs/configuration.md";

/// A failed request: a stable word for logs and metrics, and the message
/// for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub outcome: &'static str,
    /// Escaped and bounded (it quotes labels and backend answers): ready for
    /// a log line, Docker's `Err` or a terminal.
    pub message: String,
}

/// The longest failure message sent to the engine, logged or printed.
pub const MAX_ERROR_CHARS: usize = 2000;

impl Failure {
    pub(crate) fn new(outcome: &'static str, message: &str) -> Self {
        Self {
            outcome,
            message: vaultbridge_providers::text::shown_max(message, MAX_ERROR_CHARS).into_owned(),
        }
    }

    /// The same failure, its message after `prefix` (text already safe to
    /// show: it is not escaped again), still bounded.
    pub(crate) fn prefixed(&self, prefix: &str) -> Self {
        let message: String = format!("{prefix}{}", self.message)
            .chars()
            .take(MAX_ERROR_CHARS)
            .collect();
        Self {
            outcome: self.outcome,
            message,
        }
    }

    /// Docker's `Err` for the secret `secret` (already shown escaped).
    pub fn docker_err(&self, secret: &str) -> String {
        format!("vaultbridge: secret '{secret}': {}", self.message)
    }
}

impl From<&ResolveError> for Failure {
    fn from(err: &ResolveError) -> Self {
        Failure::new(err.outcome(), &err.to_string())
    }
}

/// Why a lookup failed, phrased for the operator who reads the plugin log.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ResolveError {
    #[error("provider '{name}' is not configured (label {PROVIDER}); configured: {known}")]
    UnknownProvider { name: String, known: String },
    #[error(
        "several providers are configured ({known}) and none is the default; add --label {PROVIDER}=<name> or set default_provider"
    )]
    NoDefault { known: String },
    #[error("provider '{provider}' ({kind}), path '{path}': {error}")]
    Provider {
        provider: String,
        kind: &'static str,
        path: String,
        error: ProviderError,
    },
    #[error("provider '{provider}', path '{path}': {message}")]
    Shape {
        provider: String,
        path: String,
        message: String,
    },
    #[error("{NOT_CONFIGURED}")]
    NotConfigured,
    #[error("internal error: {0}")]
    Internal(String),
}

impl ResolveError {
    /// A short, stable word per failure kind, for logs and (later) metrics.
    pub fn outcome(&self) -> &'static str {
        use vaultbridge_providers::ProviderError as P;
        match self {
            ResolveError::UnknownProvider { .. } | ResolveError::NoDefault { .. } => "bad_labels",
            ResolveError::Shape { .. } => "bad_value",
            ResolveError::NotConfigured => "not_configured",
            ResolveError::Internal(_) => "internal",
            ResolveError::Provider { error, .. } => match error {
                P::NotFound(_) => "not_found",
                P::Denied(_) => "denied",
                P::Unauthenticated(_) => "unauthenticated",
                P::Unavailable(_) => "unavailable",
                P::Invalid(_) => "bad_labels",
            },
        }
    }

    /// Worth serving a stale value for: the backend could not be reached.
    pub fn is_transient(&self) -> bool {
        matches!(self, ResolveError::Provider { error, .. } if error.is_transient())
    }
}
