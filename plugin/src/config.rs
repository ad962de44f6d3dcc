//! Where the plugin's providers come from, in order of precedence:
//!
//! 1. a TOML file: `--config FILE` or `VAULTBRIDGE_CONFIG` (must exist), else
//!    [`DEFAULT_CONFIG_PATH`] when present (the plugin's settable mount);
//! 2. otherwise the ecosystem's standard environment variables, one provider
//!    per backend they configure (`VAULTBRIDGE_FILE_DIR` -> `file`, ...);
//! 3. otherwise the embedded default: a `file` provider rooted at
//!    [`vaultbridge_providers::file::DEFAULT_ROOT`], when that folder exists;
//! 4. otherwise nothing: the plugin still starts (a bare `docker plugin
//!    install` must enable) and answers every request with [`NOT_CONFIGURED`].
//!
//! A file replaces the environment entirely; the two are never merged, so
//! what runs is what the file says.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use vaultbridge_providers::text::shown;
use vaultbridge_providers::{ConfigError, EnvLookup, ProviderConfig, Variable};

use crate::access::pattern::Pattern;
use crate::access::{AccessConfig, Policy};
use crate::audit::AuditConfig;
use crate::cache::Limits;
use crate::template::{TemplateConfig, Templates};
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
    /// The path of a secret without a `vaultbridge.path` label, from the
    /// asking service (`apps/{stack}/{secret}`); the secret's name otherwise.
    pub default_path: Option<String>,
    /// Which services may read which paths; everything, when absent.
    pub access: Option<AccessConfig>,
    /// Where the audit trail goes; nowhere, when absent.
    pub audit: Option<AuditConfig>,
    /// Serve `/metrics`, `/healthz` and `/readyz` over HTTP on this
    /// address (`127.0.0.1:9469`); off when absent.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Named templates (`vaultbridge.template=<name>`): one file from
    /// several lookups.
    #[serde(default)]
    pub templates: BTreeMap<String, TemplateConfig>,
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

/// The variables the plugin itself reads; the backends list theirs.
pub const VARIABLES: &[Variable] = &[
    Variable {
        name: "VAULTBRIDGE_CONFIG",
        meaning: "TOML configuration file inside the plugin (default: /etc/vaultbridge/config.toml when present)",
    },
    Variable {
        name: "VAULTBRIDGE_DEFAULT_PROVIDER",
        meaning: "default provider when several are configured from the environment",
    },
    Variable {
        name: "VAULTBRIDGE_CACHE_TTL",
        meaning: "how long a value is served from the cache, for providers from the environment (default 30s; 0s: no cache)",
    },
    Variable {
        name: "VAULTBRIDGE_MAX_STALE",
        meaning: "how long past its TTL a cached value may be served while the backend is unavailable (default 0s: never)",
    },
    Variable {
        name: "VAULTBRIDGE_DEADLINE",
        meaning: "time one lookup may take, retries included (default 10s, at most 30s)",
    },
    Variable {
        name: "VAULTBRIDGE_MAX_CONCURRENCY",
        meaning: "backend calls in flight at once per provider (default 16)",
    },
    Variable {
        name: "VAULTBRIDGE_METRICS_LISTEN",
        meaning: "address of the HTTP listener for /metrics, /healthz and /readyz, e.g. 127.0.0.1:9469 (default: off; a config file says metrics_listen instead)",
    },
    Variable {
        name: "VAULTBRIDGE_LOG",
        meaning: "log filter (tracing syntax): info, debug, vaultbridge=debug, ...",
    },
    Variable {
        name: "VAULTBRIDGE_LOG_FORMAT",
        meaning: "log line format: text or json",
    },
    Variable {
        name: "VAULTBRIDGE_WORKER_THREADS",
        meaning: "threads serving requests (default 1, at most 64): one serves about 100,000 cached answers a second; more only add hand-overs between threads",
    },
    Variable {
        name: "VAULTBRIDGE_SOCKET",
        meaning: "socket path for `serve` run by hand (the managed plugin's is fixed: not settable there)",
    },
    Variable {
        name: "SSL_CERT_FILE",
        meaning: "extra/private CA bundle (a file in the config mount, e.g. /etc/vaultbridge/ca.pem) trusted for TLS to Vault, AWS and Azure endpoints",
    },
];

/// Read by the binary but not a managed-plugin setting: the engine dials
/// the socket config.json names, so moving it would break the plugin.
pub const NOT_PLUGIN_SETTINGS: &[&str] = &["VAULTBRIDGE_SOCKET"];

/// Every environment variable the binary reads: the one list config.json's
/// `env` and docs/configuration.md are checked against (tests below).
pub fn variables() -> Vec<Variable> {
    let mut all = VARIABLES.to_vec();
    all.extend(ProviderConfig::variables());
    all
}

pub use crate::error::NOT_CONFIGURED;

/// Where the configuration was read from, for the start-up log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    Environment,
    EmbeddedDefault,
    /// No file, no variables, no default folder: no provider at all.
    Nothing,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::File(path) => write!(f, "file {}", path.display()),
            Source::Environment => f.write_str("environment variables"),
            Source::EmbeddedDefault => f.write_str("embedded default"),
            Source::Nothing => f.write_str("none"),
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
        let metrics_listen = metrics_listen_from_env(env)?;
        let providers: BTreeMap<_, _> = ProviderConfig::from_env(env)
            .into_iter()
            .map(|(name, backend)| (name, ProviderEntry { tuning, backend }))
            .collect();
        #[cfg(feature = "file")]
        if providers.is_empty() {
            let (mut config, source) =
                Config::embedded_default(Path::new(vaultbridge_providers::file::DEFAULT_ROOT));
            config.metrics_listen = metrics_listen;
            return Ok((config, source));
        }
        let config = Config {
            default_provider: env("VAULTBRIDGE_DEFAULT_PROVIDER").filter(|s| !s.is_empty()),
            providers,
            metrics_listen,
            ..Config::empty()
        };
        // Without the file backend there is no embedded default.
        #[cfg(not(feature = "file"))]
        if config.providers.is_empty() {
            return Ok((config, Source::Nothing));
        }
        config.validate_names()?;
        Ok((config, Source::Environment))
    }

    /// A `file` provider on `root` when that folder exists, else no provider.
    #[cfg(feature = "file")]
    fn embedded_default(root: &Path) -> (Config, Source) {
        let mut config = Config::empty();
        if !root.is_dir() {
            return (config, Source::Nothing);
        }
        let file = vaultbridge_providers::file::FileConfig {
            root: root.into(),
            follow_symlinks: None,
        };
        let entry = ProviderEntry {
            tuning: Tuning::default(),
            backend: ProviderConfig::File(file),
        };
        config.providers.insert("file".to_string(), entry);
        (config, Source::EmbeddedDefault)
    }

    fn empty() -> Config {
        Config {
            default_provider: None,
            cache: Limits::default(),
            providers: BTreeMap::new(),
            default_path: None,
            access: None,
            audit: None,
            metrics_listen: None,
            templates: BTreeMap::new(),
        }
    }

    /// The templates, compiled, their lookups checked against the providers.
    pub fn templates(&self) -> Result<Templates, ConfigError> {
        Templates::compile(&self.templates, &self.names())
    }

    /// The access policy, when `[access]` is configured.
    pub fn policy(&self) -> Result<Option<Policy>, ConfigError> {
        self.access
            .as_ref()
            .map(|access| Policy::compile(access, &self.names()))
            .transpose()
    }

    /// `default_path`, parsed.
    pub fn default_path(&self) -> Result<Option<Pattern>, ConfigError> {
        self.default_path
            .as_deref()
            .map(|text| {
                let pattern = Pattern::parse(text, true, false).map_err(|why| {
                    ConfigError::new("default_path", format!("'{}' {why}", shown(text)))
                })?;
                if pattern.placeholders().next().is_none() {
                    return Err(ConfigError::new(
                        "default_path",
                        format!(
                            "'{}' has no placeholder, so every secret would read the same path; use e.g. apps/{{stack}}/{{secret}}",
                            shown(text)
                        ),
                    ));
                }
                Ok(pattern)
            })
            .transpose()
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
        let mut config = config;
        config.validate_names()?;
        config.confine_file_providers()?;
        Ok(config)
    }

    /// With an access policy, file providers do not follow symlinks unless
    /// told to, and cannot be told to: the policy judges the path as
    /// written, and a link in one team's folder would reach another's.
    fn confine_file_providers(&mut self) -> Result<(), ConfigError> {
        if self.access.is_none() {
            return Ok(());
        }
        #[cfg(feature = "file")]
        for (name, entry) in &mut self.providers {
            // (Irrefutable when `file` is the only backend built in.)
            #[allow(irrefutable_let_patterns)]
            if let ProviderConfig::File(file) = &mut entry.backend {
                if file.follow_symlinks == Some(true) {
                    return Err(ConfigError::new(
                        format!("providers.{name}.follow_symlinks"),
                        "cannot be true with an [access] policy: a symlink would let an allowed path read any file under the root; remove the key",
                    ));
                }
                file.follow_symlinks = Some(false);
            }
        }
        Ok(())
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
        self.policy()?;
        self.default_path()?;
        self.templates()?;
        if let Some(audit) = &self.audit {
            audit.validate()?;
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

/// `VAULTBRIDGE_METRICS_LISTEN`: an `IP:port` (a file says `metrics_listen`).
fn metrics_listen_from_env(
    env: EnvLookup<'_>,
) -> Result<Option<std::net::SocketAddr>, ConfigError> {
    let Some(text) = env("VAULTBRIDGE_METRICS_LISTEN").filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    text.parse().map(Some).map_err(|_| {
        ConfigError::new(
            "VAULTBRIDGE_METRICS_LISTEN",
            format!(
                "'{}' is not an IP address and port, e.g. 127.0.0.1:9469",
                shown(&text)
            ),
        )
    })
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
    use std::collections::BTreeSet;

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

        // The file's own text in a key or message cannot start a log line.
        for text in [
            "default_provider = \"a\\nb\"\n[providers.a]\ntype = \"file\"\nroot = \"/\"\n",
            "[providers.\"a\\nb\"]\ntype = \"file\"\nroot = \"/\"\n",
            "\"a\\rb\" = 1\n",
            "[providers.x]\ntype = \"file\"\nroot = \"/\"\n\"k\\u001b[2K\" = 1\n",
        ] {
            let shown = Config::parse(text).unwrap_err().to_string();
            assert!(!shown.chars().any(char::is_control), "{shown:?}");
        }
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

        let root = tempfile::tempdir().unwrap();
        let (config, source) = Config::embedded_default(root.path());
        assert_eq!(source, Source::EmbeddedDefault);
        assert_eq!(config.names(), ["file"]);

        // A bare install: the default folder does not exist. No provider,
        // and the plugin still starts (it answers NOT_CONFIGURED).
        let (config, source) = Config::embedded_default(&root.path().join("secrets"));
        assert_eq!(source, Source::Nothing);
        assert!(config.providers.is_empty());
        assert!(!NOT_CONFIGURED.contains('\n'));
    }

    /// Variable-like words (`VAULTBRIDGE_…`, `VAULT_…`, `AWS_…`, `AZURE_…`,
    /// `SSL_…`) in `text`; `quoted`: only those inside double quotes.
    fn variable_words(text: &str, quoted: bool) -> BTreeSet<String> {
        const PREFIXES: &[&str] = &["VAULTBRIDGE_", "VAULT_", "AWS_", "AZURE_", "SSL_"];
        let is_word = |c: char| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_';
        let mut found = BTreeSet::new();
        for (start, _) in text.match_indices(|c: char| c.is_ascii_uppercase()) {
            let before = text[..start].chars().next_back();
            if before.is_some_and(is_word) || (quoted && before != Some('"')) {
                continue;
            }
            let word: String = text[start..].chars().take_while(|&c| is_word(c)).collect();
            let after = text[start + word.len()..].chars().next();
            if (quoted && after != Some('"')) || word.ends_with('_') {
                continue;
            }
            if PREFIXES
                .iter()
                .any(|p| word.starts_with(p) && word.len() > p.len())
            {
                found.insert(word);
            }
        }
        found
    }

    fn repo_file(path: &str) -> String {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        std::fs::read_to_string(root.join(path)).unwrap_or_else(|err| panic!("{path}: {err}"))
    }

    /// Files under `dir` (recursively) whose name ends in `.{extension}`.
    fn files_named(dir: &Path, extension: &str, found: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files_named(&path, extension, found);
            } else if path.extension().is_some_and(|e| e == extension) {
                found.push(path);
            }
        }
    }

    fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
        files_named(dir, "rs", found);
    }

    fn markdown_files(dir: &Path, found: &mut Vec<PathBuf>) {
        files_named(dir, "md", found);
    }

    fn registered() -> BTreeSet<String> {
        let all = variables();
        let names: BTreeSet<String> = all.iter().map(|v| v.name.to_string()).collect();
        assert_eq!(names.len(), all.len(), "a variable is listed twice");
        names
    }

    /// Read on purpose and never honoured (documented as such).
    const IGNORED: &[&str] = &["VAULT_SKIP_VERIFY"];

    #[test]
    fn every_variable_the_config_reads_is_registered() {
        let registered = registered();
        let asked = std::cell::RefCell::new(BTreeSet::new());
        // Every variable set, so every branch that reads one is taken.
        let value = |name: &str| match name {
            "VAULT_ADDR" => "http://127.0.0.1:8200",
            "AZURE_KEYVAULT_URL" => "https://x.vault.azure.net",
            "VAULTBRIDGE_MAX_CONCURRENCY" => "4",
            "VAULTBRIDGE_CACHE_TTL" | "VAULTBRIDGE_MAX_STALE" | "VAULTBRIDGE_DEADLINE" => "5s",
            "VAULTBRIDGE_DEFAULT_PROVIDER" => "file",
            "VAULTBRIDGE_METRICS_LISTEN" => "127.0.0.1:9469",
            "VAULTBRIDGE_CONFIG" => "",
            _ => "/tmp",
        };
        for set in [true, false] {
            let env = |name: &str| {
                asked.borrow_mut().insert(name.to_string());
                set.then(|| value(name).to_string())
            };
            let _ = Config::load(None, &env);
        }
        let unregistered: Vec<_> = asked.borrow().difference(&registered).cloned().collect();
        assert!(
            unregistered.is_empty(),
            "read but not in variables(): {unregistered:?}"
        );
    }

    #[test]
    fn the_source_names_only_registered_variables() {
        let registered = registered();
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut files = Vec::new();
        rust_files(&root.join("plugin/src"), &mut files);
        rust_files(&root.join("providers/src"), &mut files);
        let mut unregistered = BTreeSet::new();
        for file in &files {
            let text = std::fs::read_to_string(file).unwrap();
            for word in variable_words(&text, true) {
                if !registered.contains(&word) && !IGNORED.contains(&word.as_str()) {
                    unregistered.insert(format!("{word} ({})", file.display()));
                }
            }
        }
        assert!(
            unregistered.is_empty(),
            "named in the code but not in variables(): {unregistered:?}"
        );
        // The scanner itself finds what it must.
        // (Single quotes here, so this sample is not itself scanned.)
        let sample = "env('VAULT_TOKEN') 'AWS_X' 'NOT_OURS' AWS_BARE 'AZURE_'".replace('\'', "\"");
        assert_eq!(
            variable_words(&sample, true),
            BTreeSet::from(["VAULT_TOKEN".to_string(), concat!("AWS", "_X").to_string()])
        );
    }

    #[test]
    fn config_json_declares_every_plugin_setting_as_registered() {
        let manifest: serde_json::Value = serde_json::from_str(&repo_file("config.json")).unwrap();
        let declared: BTreeMap<String, (String, serde_json::Value)> = manifest["env"]
            .as_array()
            .expect("config.json env")
            .iter()
            .map(|e| {
                let name = e["name"].as_str().unwrap().to_string();
                let description = e["description"].as_str().unwrap_or_default().to_string();
                (name, (description, e["settable"].clone()))
            })
            .collect();
        let wanted: BTreeMap<String, String> = variables()
            .into_iter()
            .filter(|v| !NOT_PLUGIN_SETTINGS.contains(&v.name))
            .map(|v| (v.name.to_string(), v.meaning.to_string()))
            .collect();
        let missing: Vec<_> = wanted
            .keys()
            .filter(|n| !declared.contains_key(*n))
            .collect();
        let extra: Vec<_> = declared
            .keys()
            .filter(|n| !wanted.contains_key(*n))
            .collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "config.json env: missing {missing:?}, not read by the binary {extra:?}"
        );
        for (name, meaning) in &wanted {
            let (description, settable) = &declared[name];
            assert_eq!(description, meaning, "config.json description of {name}");
            assert_eq!(
                settable,
                &serde_json::json!(["value"]),
                "{name} is not settable"
            );
        }
    }

    #[test]
    fn the_docs_describe_every_variable_and_no_other() {
        let reference = repo_file("docs/configuration.md");
        for variable in variables() {
            let row = format!("| `{}` | {} |", variable.name, variable.meaning);
            assert!(
                reference.contains(&row),
                "docs/configuration.md lacks the row:\n{row}"
            );
        }
        let registered = registered();
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut docs = vec![root.join("README.md")];
        markdown_files(&root.join("docs"), &mut docs);
        for doc in docs {
            let text = std::fs::read_to_string(&doc).unwrap();
            for word in variable_words(&text, false) {
                // Ours must exist; other ecosystems' names may be mentioned.
                if word.starts_with("VAULTBRIDGE_") {
                    assert!(
                        registered.contains(&word),
                        "{} documents {word}, which the binary does not read",
                        doc.display()
                    );
                }
            }
        }
    }

    #[test]
    fn the_metrics_listener_address_from_a_file_or_the_environment() {
        let config = Config::parse(
            "metrics_listen = \"127.0.0.1:9469\"\n[providers.l]\ntype = \"file\"\nroot = \"/\"\n",
        )
        .unwrap();
        assert_eq!(
            config.metrics_listen,
            Some("127.0.0.1:9469".parse().unwrap())
        );
        let err = Config::parse(
            "metrics_listen = \"localhost\"\n[providers.l]\ntype = \"file\"\nroot = \"/\"\n",
        )
        .unwrap_err();
        assert_eq!(err.key, "metrics_listen", "{err}");

        let env = |name: &str| match name {
            "VAULTBRIDGE_FILE_DIR" => Some("/srv".to_string()),
            "VAULTBRIDGE_METRICS_LISTEN" => Some("[::1]:9469".to_string()),
            _ => None,
        };
        let (config, _) = Config::load(None, &env).unwrap();
        assert_eq!(config.metrics_listen, Some("[::1]:9469".parse().unwrap()));
        let bad = |name: &str| match name {
            "VAULTBRIDGE_FILE_DIR" => Some("/srv".to_string()),
            "VAULTBRIDGE_METRICS_LISTEN" => Some("9469\n".to_string()),
            _ => None,
        };
        let err = Config::load(None, &bad).unwrap_err();
        assert_eq!(err.key, "VAULTBRIDGE_METRICS_LISTEN");
        assert!(err.message.contains("127.0.0.1:9469"), "{err}");
        assert!(!err.to_string().contains('\n'), "{err}");
        // Off unless asked for.
        let (config, _) = Config::load(None, &|name: &str| {
            (name == "VAULTBRIDGE_FILE_DIR").then(|| "/srv".to_string())
        })
        .unwrap();
        assert_eq!(config.metrics_listen, None);
    }

    #[test]
    fn an_explicit_file_must_exist() {
        let err = Config::load(Some(Path::new("/nonexistent/vb.toml")), &no_env).unwrap_err();
        assert!(err.key.contains("/nonexistent/vb.toml"), "{err}");
    }
}
