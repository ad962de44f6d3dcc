//! Where the plugin's providers come from, in order of precedence:
//!
//! 1. a TOML file: `--config FILE` or `VAULTBRIDGE_CONFIG` (must exist), else
//!    [`DEFAULT_CONFIG_PATH`] when present (the plugin's settable mount);
//! 2. otherwise the ecosystem's standard environment variables, one provider
//!    per backend they configure (`VAULTBRIDGE_FILE_DIR` -> `file`, ...);
//! 3. otherwise the embedded default: a `file` provider rooted at
//!    [`vaultbridge_providers::file::DEFAULT_ROOT`].
//!
//! A file replaces the environment entirely; the two are never merged, so
//! what runs is what the file says.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use vaultbridge_providers::{ConfigError, EnvLookup, ProviderConfig};

use crate::cache::Limits;
use crate::tuning::Tuning;

/// Where the managed plugin's settable mount puts the config file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/vaultbridge/config.toml";

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The provider used when a secret has no `vaultbridge.provider` label.
    /// Not needed when only one provider is configured.
    pub default_provider: Option<String>,
    /// Bounds of the value cache shared by all providers.
    #[serde(default)]
    pub cache: Limits,
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderEntry>,
}

/// One `[providers.<name>]` table: the backend's keys plus the plugin's
/// request policy keys (`cache_ttl`, `max_stale`, `deadline`, `max_concurrency`).
#[derive(Debug, Clone, Deserialize)]
pub struct ProviderEntry {
    // Policy first: serde hands the keys it does not take to the backend,
    // whose `deny_unknown_fields` then reports typos.
    #[serde(flatten)]
    pub tuning: Tuning,
    #[serde(flatten)]
    pub backend: ProviderConfig,
}

/// Where the configuration was read from, for the start-up log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    Environment,
    EmbeddedDefault,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::File(path) => write!(f, "file {}", path.display()),
            Source::Environment => f.write_str("environment variables"),
            Source::EmbeddedDefault => f.write_str("embedded default"),
        }
    }
}

impl Config {
    /// Load the configuration following the precedence above. `explicit` is
    /// `--config`/`VAULTBRIDGE_CONFIG`.
    pub fn load(
        explicit: Option<&Path>,
        env: EnvLookup<'_>,
    ) -> Result<(Config, Source), ConfigError> {
        let default_path = Path::new(DEFAULT_CONFIG_PATH);
        let file = match explicit {
            Some(path) => Some(path),
            None if default_path.exists() => Some(default_path),
            None => None,
        };
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .map_err(|err| ConfigError::new(path.display().to_string(), err.to_string()))?;
            let config = Config::parse(&text).map_err(|err| ConfigError {
                key: format!("{}: {}", path.display(), err.key),
                message: err.message,
            })?;
            return Ok((config, Source::File(path.to_path_buf())));
        }

        let tuning = tuning_from_env(env)?;
        let providers: BTreeMap<_, _> = ProviderConfig::from_env(env)
            .into_iter()
            .map(|(name, backend)| (name, ProviderEntry { tuning, backend }))
            .collect();
        if providers.is_empty() {
            let file = vaultbridge_providers::file::FileConfig {
                root: vaultbridge_providers::file::DEFAULT_ROOT.into(),
            };
            let entry = ProviderEntry {
                tuning: Tuning::default(),
                backend: ProviderConfig::File(file),
            };
            let config = Config {
                default_provider: None,
                cache: Limits::default(),
                providers: BTreeMap::from([("file".to_string(), entry)]),
            };
            return Ok((config, Source::EmbeddedDefault));
        }
        let config = Config {
            default_provider: env("VAULTBRIDGE_DEFAULT_PROVIDER").filter(|s| !s.is_empty()),
            cache: Limits::default(),
            providers,
        };
        config.validate_names()?;
        Ok((config, Source::Environment))
    }

    /// Parse and check the TOML text of a config file. Errors are one line
    /// (the engine's log shows each line of plugin output separately).
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let deserializer = toml::Deserializer::parse(text)
            .map_err(|err| ConfigError::new("(file)", one_line(text, &err)))?;
        let config: Config = serde_path_to_error::deserialize(deserializer).map_err(|err| {
            let key = err.path().to_string();
            ConfigError::new(
                if key == "." { "(file)".into() } else { key },
                one_line(text, err.inner()),
            )
        })?;
        config.validate_names()?;
        Ok(config)
    }

    fn validate_names(&self) -> Result<(), ConfigError> {
        if self.providers.is_empty() {
            return Err(ConfigError::new(
                "providers",
                "no provider is configured; add a [providers.<name>] table",
            ));
        }
        self.cache.validate()?;
        for (name, entry) in &self.providers {
            entry.tuning.validate(&format!("providers.{name}"))?;
            let valid = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !valid {
                return Err(ConfigError::new(
                    format!("providers.{name}"),
                    "provider names use only letters, digits, '-' and '_'",
                ));
            }
        }
        if let Some(default) = &self.default_provider
            && !self.providers.contains_key(default)
        {
            return Err(ConfigError::new(
                "default_provider",
                format!(
                    "'{default}' is not a configured provider (configured: {})",
                    self.names().join(", ")
                ),
            ));
        }
        Ok(())
    }

    pub fn names(&self) -> Vec<&str> {
        self.providers.keys().map(String::as_str).collect()
    }
}

/// A TOML error as "message (line N)", without the multi-line snippet.
fn one_line(text: &str, err: &toml::de::Error) -> String {
    let message = err.message().trim().replace('\n', "; ");
    match err.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("{message} (line {line})")
        }
        None => message,
    }
}

/// `VAULTBRIDGE_CACHE_TTL`, `VAULTBRIDGE_MAX_STALE`, `VAULTBRIDGE_DEADLINE`,
/// `VAULTBRIDGE_MAX_CONCURRENCY`: the policy of providers made from the
/// environment.
fn tuning_from_env(env: EnvLookup<'_>) -> Result<Tuning, ConfigError> {
    let mut tuning = Tuning::default();
    let duration = |name: &str, slot: &mut std::time::Duration| -> Result<(), ConfigError> {
        if let Some(text) = env(name).filter(|s| !s.is_empty()) {
            *slot = humantime::parse_duration(&text)
                .map_err(|err| ConfigError::new(name, format!("'{text}': {err} (e.g. 30s, 5m)")))?;
        }
        Ok(())
    };
    duration("VAULTBRIDGE_CACHE_TTL", &mut tuning.cache_ttl)?;
    duration("VAULTBRIDGE_MAX_STALE", &mut tuning.max_stale)?;
    duration("VAULTBRIDGE_DEADLINE", &mut tuning.deadline)?;
    if let Some(text) = env("VAULTBRIDGE_MAX_CONCURRENCY").filter(|s| !s.is_empty()) {
        tuning.max_concurrency = text.parse().map_err(|_| {
            ConfigError::new(
                "VAULTBRIDGE_MAX_CONCURRENCY",
                format!("'{text}' is not a number"),
            )
        })?;
    }
    tuning.validate("")?;
    Ok(tuning)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn parses_a_file_and_names_bad_keys() {
        let config = Config::parse(
            "default_provider = \"local\"\n[providers.local]\ntype = \"file\"\nroot = \"/tmp\"\n",
        )
        .unwrap();
        assert_eq!(config.names(), ["local"]);

        let err =
            Config::parse("[providers.local]\ntype = \"file\"\nrot = \"/tmp\"\n").unwrap_err();
        assert!(err.key.starts_with("providers.local"), "{err}");
        assert!(err.message.contains("unknown field `rot`"), "{err}");
        assert!(err.message.ends_with("(line 1)"), "{err}");
        assert!(!err.to_string().contains('\n'), "{err}");

        let err = Config::parse("[providers.x]\ntype = \"nope\"\n").unwrap_err();
        assert!(err.message.contains("unknown variant `nope`"), "{err}");

        let err = Config::parse("colour = 1\n[providers.x]\ntype = \"file\"\nroot = \"/\"\n")
            .unwrap_err();
        assert!(err.message.contains("unknown field `colour`"), "{err}");

        let err = Config::parse(
            "default_provider = \"b\"\n[providers.a]\ntype = \"file\"\nroot = \"/\"\n",
        )
        .unwrap_err();
        assert_eq!(err.key, "default_provider");
        assert!(err.message.contains("configured: a"), "{err}");

        let err = Config::parse("[providers]\n").unwrap_err();
        assert_eq!(err.key, "providers");
    }

    #[test]
    fn policy_keys_sit_beside_the_backend_keys() {
        let config = Config::parse(
            "[cache]\nmax_entries = 5\n[providers.local]\ntype = \"file\"\nroot = \"/tmp\"\ncache_ttl = \"2m\"\nmax_stale = \"1h\"\ndeadline = \"3s\"\nmax_concurrency = 4\n",
        )
        .unwrap();
        let entry = &config.providers["local"];
        assert_eq!(entry.tuning.cache_ttl, std::time::Duration::from_secs(120));
        assert_eq!(entry.tuning.max_stale, std::time::Duration::from_secs(3600));
        assert_eq!(entry.tuning.deadline, std::time::Duration::from_secs(3));
        assert_eq!(entry.tuning.max_concurrency, 4);
        assert_eq!(config.cache.max_entries, 5);

        let err =
            Config::parse("[providers.local]\ntype = \"file\"\nroot = \"/\"\ncache_tl = \"1s\"\n")
                .unwrap_err();
        assert!(err.message.contains("unknown field `cache_tl`"), "{err}");
        let err = Config::parse(
            "[providers.local]\ntype = \"file\"\nroot = \"/\"\ncache_ttl = \"soon\"\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("providers.local"), "{err}");
        let err =
            Config::parse("[providers.local]\ntype = \"file\"\nroot = \"/\"\ndeadline = \"0s\"\n")
                .unwrap_err();
        assert_eq!(err.key, "providers.local.deadline", "{err}");
        for (key, value) in [
            ("deadline", "\"18446744073709551615s\""),
            ("deadline", "\"31s\""),
            ("cache_ttl", "\"1000years\""),
            ("max_stale", "\"100years\""),
            ("max_concurrency", "9223372036854775807"),
            ("max_concurrency", "0"),
        ] {
            let err = Config::parse(&format!(
                "[providers.local]\ntype = \"file\"\nroot = \"/\"\n{key} = {value}\n"
            ))
            .unwrap_err();
            assert_eq!(
                err.key,
                format!("providers.local.{key}"),
                "{key} = {value}: {err}"
            );
            assert!(err.message.contains("out of range"), "{err}");
        }
        let err = Config::parse("[cache]\nmax_entries = 9223372036854775807\n[providers.l]\ntype = \"file\"\nroot = \"/\"\n").unwrap_err();
        assert_eq!(err.key, "cache.max_entries", "{err}");
        let deadline = |name: &str| match name {
            "VAULTBRIDGE_FILE_DIR" => Some("/srv".to_string()),
            "VAULTBRIDGE_DEADLINE" => Some("18446744073709551615s".to_string()),
            _ => None,
        };
        let err = Config::load(None, &deadline).unwrap_err();
        assert_eq!(err.key, "VAULTBRIDGE_DEADLINE", "{err}");
        assert!(err.message.contains("30s"), "{err}");

        let env = |name: &str| match name {
            "VAULTBRIDGE_FILE_DIR" => Some("/srv".to_string()),
            "VAULTBRIDGE_CACHE_TTL" => Some("10s".to_string()),
            "VAULTBRIDGE_DEADLINE" => Some("banana".to_string()),
            _ => None,
        };
        let err = Config::load(None, &env).unwrap_err();
        assert_eq!(err.key, "VAULTBRIDGE_DEADLINE");
    }

    #[test]
    fn environment_then_embedded_default() {
        let env = |name: &str| (name == "VAULTBRIDGE_FILE_DIR").then(|| "/srv/secrets".to_string());
        let (config, source) = Config::load(None, &env).unwrap();
        assert_eq!(source, Source::Environment);
        assert_eq!(config.names(), ["file"]);

        if !Path::new(DEFAULT_CONFIG_PATH).exists() {
            let (config, source) = Config::load(None, &no_env).unwrap();
            assert_eq!(source, Source::EmbeddedDefault);
            assert_eq!(config.names(), ["file"]);
        }
    }

    #[test]
    fn an_explicit_file_must_exist() {
        let err = Config::load(Some(Path::new("/nonexistent/vb.toml")), &no_env).unwrap_err();
        assert!(err.key.contains("/nonexistent/vb.toml"), "{err}");
    }
}
