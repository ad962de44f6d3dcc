//! Secret backends for vaultbridge.
//!
//! The plugin asks one question of a backend: "what are the bytes at this
//! path (and version)?". Everything else — labels, JSON fields, base64,
//! size limits, caching — lives in the plugin, so a backend stays small.
//!
//! - [`provider`]: the [`Provider`] trait, [`SecretRef`], [`SecretValue`] and
//!   the [`ProviderError`] variants the plugin reacts to differently.
//! - [`path`]: [`SecretPath`], the one validation every path passes before
//!   any backend, prefix or mount decision.
//! - [`backoff`]: the wait after a failed background credential refresh.
//! - `duration`: every backend's `timeout` (`"10s"`): one syntax, one bound.
//! - `tls`: reading PEM files (a CA bundle, a client certificate and key)
//!   for a backend's HTTPS client, with one error format.
//! - [`text`]: showing foreign text in logs and errors (escaped, bounded).
//! - [`config`]: the typed `[providers.<name>]` tables ([`ProviderConfig`]),
//!   validation, and the providers implied by standard environment variables.
//! - one module per backend, each behind a Cargo feature:
//!   `file` (a directory; the embedded default), `vault` (Vault/OpenBao),
//!   `aws` (AWS Secrets Manager), `azure` (Azure Key Vault), `gcp` (Google
//!   Cloud Secret Manager).

pub mod backoff;
pub mod config;
#[cfg(any(feature = "vault", feature = "azure", feature = "gcp"))]
mod credential_file;
#[cfg(any(feature = "vault", feature = "aws", feature = "azure", feature = "gcp"))]
pub mod duration;
pub mod path;
pub mod provider;
pub mod text;
#[cfg(any(feature = "vault", feature = "azure"))]
mod tls;

#[cfg(feature = "aws")]
pub mod aws;
#[cfg(feature = "azure")]
pub mod azure;
#[cfg(feature = "file")]
pub mod file;
#[cfg(feature = "gcp")]
pub mod gcp;
#[cfg(feature = "vault")]
pub mod vault;

pub use config::{ConfigError, EnvLookup, ProviderConfig, Variable};
pub use path::{PathError, SecretPath};
pub use provider::{
    Credential, Outage, Provider, ProviderError, SecretRef, SecretValue, TaskKey, Version,
};
