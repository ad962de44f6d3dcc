//! The typed `[providers.<name>]` tables, one variant per backend.
//!
//! Each backend owns its settings struct (`deny_unknown_fields`, so a typo is
//! an error, not a silently ignored key). Building a provider validates its
//! settings; errors name the key path in the file (`providers.prod.root`).

use std::sync::Arc;

use serde::Deserialize;

use crate::Provider;

/// Reads one environment variable. Injected so tests do not touch the
/// process environment.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// An environment variable the binary reads, and what it sets. Each backend
/// lists its own beside the code that reads them; the plugin adds its own
/// and checks config.json and the docs against the whole list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Variable {
    pub name: &'static str,
    pub meaning: &'static str,
}

/// The one list of backends. A backend is a module (a folder) behind the
/// Cargo feature of the same name that provides `VARIABLES`,
/// `<Config>::from_env` and `build`; registering it is one line in
/// [`backends!`]'s call below (and its `mod` line in lib.rs).
macro_rules! backends {
    ($($feature:literal => $variant:ident($module:ident::$config:ident)),* $(,)?) => {
        /// One `[providers.<name>]` table, selected by its `type` key.
        // Variants differ in size (the vault table has many keys); a config
        // is parsed once at start-up, so boxing would only add noise.
        #[allow(clippy::large_enum_variant)]
        #[derive(Debug, Clone, Deserialize)]
        #[serde(tag = "type", rename_all = "snake_case")]
        pub enum ProviderConfig {
            $(#[cfg(feature = $feature)] $variant(crate::$module::$config),)*
        }

        impl ProviderConfig {
            /// Validate the settings and build the provider. `key` is the
            /// table's path (`providers.<name>`), used to prefix every error.
            pub async fn build(&self, key: &str) -> Result<Arc<dyn Provider>, ConfigError> {
                // `*self`, so that with no backend compiled in the match is empty.
                let _ = key;
                match *self {
                    $(#[cfg(feature = $feature)]
                    ProviderConfig::$variant(ref config) => crate::$module::build(config, key).await,)*
                }
            }

            /// Every variable the compiled-in backends read (themselves, or
            /// through their SDK as documented for it).
            pub fn variables() -> Vec<Variable> {
                #[allow(unused_mut)] // with no backend compiled in
                let mut all: Vec<Variable> = Vec::new();
                $(#[cfg(feature = $feature)] all.extend(crate::$module::VARIABLES);)*
                all
            }

            /// The providers implied by the ecosystem's standard environment
            /// variables, used when there is no config file, each named after
            /// its backend (`file`, `vault`, `aws`, `azure`, `gcp`).
            pub fn from_env(env: EnvLookup<'_>) -> Vec<(String, ProviderConfig)> {
                #[allow(unused_mut)]
                let mut found = Vec::new();
                $(#[cfg(feature = $feature)]
                if let Some(config) = crate::$module::$config::from_env(env) {
                    found.push(($feature.to_string(), ProviderConfig::$variant(config)));
                })*
                let _ = env; // unused when no backend is compiled in
                found
            }
        }
    };
}

backends! {
    "file" => File(file::FileConfig),
    "vault" => Vault(vault::VaultConfig),
    "aws" => Aws(aws::AwsConfig),
    "azure" => Azure(azure::AzureConfig),
    "gcp" => Gcp(gcp::GcpConfig),
}

/// What no provider's table can judge alone: every `[providers.<name>]`
/// table, together.
pub fn check_together(configs: &[(&str, &ProviderConfig)]) -> Result<(), ConfigError> {
    #[cfg(feature = "vault")]
    {
        let vaults: Vec<(&str, &crate::vault::VaultConfig)> = configs
            .iter()
            .filter_map(|(name, config)| match config {
                ProviderConfig::Vault(vault) => Some((*name, vault)),
                #[allow(unreachable_patterns)] // with vault the only backend
                _ => None,
            })
            .collect();
        crate::vault::mounts_apart(&vaults)?;
    }
    let _ = configs;
    Ok(())
}

/// A configuration problem, with the key path it concerns. Both may quote
/// the file's own text (a key, a provider name, a value), so both are shown
/// escaped and bounded: one config error is one log line.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error(
    "{}: {}",
    crate::text::shown_max(key, 300),
    crate::text::shown_max(message, 2000)
)]
pub struct ConfigError {
    /// Dotted path in the config file, e.g. `providers.vault-prod.auth.role_id_file`.
    pub key: String,
    pub message: String,
}

/// A setting still read in an old form: one warning at start-up, naming
/// the key and what to write instead, so the operator can update the file
/// before the old form goes.
#[cfg(any(feature = "vault", feature = "aws", feature = "azure", feature = "gcp"))]
pub(crate) fn deprecated(key: &str, advice: &str) {
    tracing::warn!(key = %key, "{}: {}", crate::text::shown(key), advice);
}

/// A key given under its new name or its old one: the value and the key as
/// written (for later messages). The old name logs [`deprecated`]; both at
/// once is an error naming both. Only vault has a renamed key today.
#[cfg(feature = "vault")]
pub(crate) fn renamed<'a, T: ?Sized>(
    table: &str,
    (new, new_value): (&str, Option<&'a T>),
    (old, old_value): (&str, Option<&'a T>),
) -> Result<Option<(&'a T, String)>, ConfigError> {
    match (new_value, old_value) {
        (Some(_), Some(_)) => Err(ConfigError::new(
            format!("{table}.{new}"),
            format!("{table}.{old} is set too: it is the old name of {new}; keep {new} only"),
        )),
        (Some(value), None) => Ok(Some((value, format!("{table}.{new}")))),
        (None, Some(value)) => {
            let key = format!("{table}.{old}");
            deprecated(&key, &format!("the name {old} is deprecated; write {new}"));
            Ok(Some((value, key)))
        }
        (None, None) => Ok(None),
    }
}

impl ConfigError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

// Only the backends with deprecated forms log from here.
#[cfg(all(
    test,
    any(feature = "vault", feature = "aws", feature = "azure", feature = "gcp")
))]
pub(crate) mod tests {
    use std::sync::{Arc, Mutex};

    /// What `run` logs at `warn` and above, one line per event.
    pub(crate) fn logged(run: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Buffer(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .without_time()
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, run);
        String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap()
    }
}
