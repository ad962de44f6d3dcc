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

/// Where the managed plugin's settable mount puts the config file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/vaultbridge/config.toml";

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The provider used when a secret has no `vaultbridge.provider` label.
    /// Not needed when only one provider is configured.
    pub default_provider: Option<String>,
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderConfig>,
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

        let providers: BTreeMap<_, _> = ProviderConfig::from_env(env).into_iter().collect();
        if providers.is_empty() {
            let root = vaultbridge_providers::file::DEFAULT_ROOT;
            let config: Config = Config::parse(&format!(
                "[providers.file]\ntype = \"file\"\nroot = \"{root}\"\n"
            ))?;
            return Ok((config, Source::EmbeddedDefault));
        }
        let config = Config {
            default_provider: env("VAULTBRIDGE_DEFAULT_PROVIDER").filter(|s| !s.is_empty()),
            providers,
        };
        config.validate_names()?;
        Ok((config, Source::Environment))
    }

    /// Parse and check the TOML text of a config file.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let deserializer = toml::Deserializer::parse(text)
            .map_err(|err| ConfigError::new("(file)", err.to_string()))?;
        let config: Config = serde_path_to_error::deserialize(deserializer).map_err(|err| {
            let key = err.path().to_string();
            ConfigError::new(
                if key == "." { "(file)".into() } else { key },
                err.into_inner().to_string().trim_end().to_string(),
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
        for name in self.providers.keys() {
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
