//! `[providers.<name>] type = "vault"`: the settings, their validation, and
//! the provider implied by `VAULT_ADDR` when there is no config file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use secrecy::SecretString;
use serde::Deserialize;

use crate::duration::Timeout;
use crate::{ConfigError, EnvLookup, Variable};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultConfig {
    /// `https://vault.example.com:8200` (or `http://` for a local dev server).
    pub address: String,
    /// Vault Enterprise / OpenBao namespace (`X-Vault-Namespace`).
    #[serde(default)]
    pub namespace: Option<String>,
    /// PEM file of the CA(s) to trust. When set, ONLY these CAs are trusted
    /// (pinning); otherwise the system's roots are used.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The old name of `ca_file` (azure's name, and the `*_file` keys',
    /// won): still read, with a deprecation warning.
    #[serde(default)]
    pub ca_cert: Option<PathBuf>,
    /// PEM client certificate and key presented in every TLS handshake
    /// (mutual TLS, and the default identity of `auth.method = "cert"`).
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// The name the server certificate must carry, when it differs from the
    /// host in `address` (e.g. `address` is an IP or a load balancer).
    #[serde(default)]
    pub tls_server_name: Option<String>,
    /// Accept any server certificate. Only ever when set explicitly; logs a
    /// warning at start-up.
    #[serde(default)]
    pub tls_skip_verify: bool,
    /// The KV mount paths without a mount prefix are read from.
    #[serde(default = "default_kv_mount")]
    pub kv_mount: String,
    /// KV version of `kv_mount`: 1 or 2.
    #[serde(default = "default_kv_version")]
    pub kv_version: u8,
    /// Further KV mounts addressable as `<mount>/<path>`, with their version:
    /// `kv_mounts = { legacy = 1, team-a = 2 }`.
    #[serde(default)]
    pub kv_mounts: BTreeMap<String, u8>,
    /// Paths starting with one of these are read with a generic logical
    /// `GET` (dynamic secrets: `database/creds/`, `aws/creds/`).
    #[serde(default)]
    pub logical_prefixes: Vec<String>,
    /// Paths starting with one of these are requested with a logical
    /// `POST` (`pki/issue/`, `auth/token/create`); a `?k=v&…` suffix on the
    /// path becomes the JSON body.
    #[serde(default)]
    pub logical_write_prefixes: Vec<String>,
    /// A KV v2 mount of its own where the per-task values minted on
    /// logical paths are kept, so that any manager's plugin hands a task
    /// asked for again (a leader failover) the value it already has instead
    /// of minting another. No label can read it.
    #[serde(default)]
    pub per_task_mount: Option<String>,
    /// How long every call to Vault may take (connect + answer): "10s".
    #[serde(default)]
    pub timeout: Option<Timeout>,
    /// How to log in; a token from `VAULT_TOKEN` when absent.
    #[serde(default)]
    pub auth: AuthConfig,
}

fn default_kv_mount() -> String {
    "secret".into()
}
fn default_kv_version() -> u8 {
    2
}
fn default_approle_mount() -> String {
    "approle".into()
}
fn default_jwt_mount() -> String {
    "jwt".into()
}
fn default_cert_mount() -> String {
    "cert".into()
}
fn default_userpass_mount() -> String {
    "userpass".into()
}

/// `[providers.<name>.auth]`, selected by `method`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum AuthConfig {
    Token(TokenAuth),
    Approle(AppRoleAuth),
    Jwt(JwtAuth),
    Cert(CertAuth),
    Userpass(UserpassAuth),
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig::Token(TokenAuth::default())
    }
}

/// A token given to us: read from `token_file` (re-read whenever the token
/// in hand stops working, so a Vault Agent sink can rotate it), else from
/// the environment variable `token_env` (default `VAULT_TOKEN`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenAuth {
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    #[serde(default)]
    pub token_env: Option<String>,
    /// The token itself, when it came from the injected environment (no
    /// config file). Never deserialized.
    #[serde(skip)]
    pub token: Option<SecretString>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppRoleAuth {
    pub role_id_file: PathBuf,
    pub secret_id_file: PathBuf,
    /// `secret_id_file` holds a response-wrapping token that wraps the
    /// secret_id (`vault write -wrap-ttl=… -f auth/approle/role/R/secret-id`).
    #[serde(default)]
    pub secret_id_wrapped: bool,
    #[serde(default = "default_approle_mount")]
    pub mount: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtAuth {
    pub role: String,
    /// Re-read on every login (projected service-account tokens rotate).
    pub jwt_file: PathBuf,
    #[serde(default = "default_jwt_mount")]
    pub mount: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertAuth {
    /// The `auth/cert/certs/<name>` role to log in against; any matching
    /// role when absent.
    #[serde(default)]
    pub name: Option<String>,
    /// A certificate for the login only; the top-level `client_cert` /
    /// `client_key` when absent.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    #[serde(default = "default_cert_mount")]
    pub mount: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserpassAuth {
    pub username: String,
    pub password_file: PathBuf,
    #[serde(default = "default_userpass_mount")]
    pub mount: String,
}

/// The variables [`VaultConfig::from_env`] reads (a token's `token_env`
/// names one of the operator's choosing; the managed plugin passes only
/// these).
pub const VARIABLES: &[Variable] = &[
    Variable {
        name: "VAULT_ADDR",
        meaning: "Vault/OpenBao address; configures a provider named vault",
    },
    Variable {
        name: "VAULT_NAMESPACE",
        meaning: "Vault Enterprise namespace",
    },
    Variable {
        name: "VAULT_TOKEN",
        meaning: "Vault token (visible in docker plugin inspect: prefer a token file in the mount)",
    },
    Variable {
        name: "VAULT_CACERT",
        meaning: "CA bundle for Vault's TLS certificate (a path inside the plugin, e.g. under /etc/vaultbridge)",
    },
    Variable {
        name: "VAULT_CLIENT_CERT",
        meaning: "client certificate for Vault TLS auth (path inside the plugin)",
    },
    Variable {
        name: "VAULT_CLIENT_KEY",
        meaning: "client key for Vault TLS auth (path inside the plugin)",
    },
    Variable {
        name: "VAULT_TLS_SERVER_NAME",
        meaning: "TLS server name to verify for Vault",
    },
];

impl VaultConfig {
    /// `VAULT_ADDR` alone makes a provider named `vault`, with the token
    /// from `VAULT_TOKEN` and TLS from the CLI's standard variables.
    pub fn from_env(env: EnvLookup<'_>) -> Option<Self> {
        let get = |name: &str| env(name).filter(|v| !v.is_empty());
        let address = get("VAULT_ADDR")?;
        Some(VaultConfig {
            address,
            namespace: get("VAULT_NAMESPACE"),
            ca_file: get("VAULT_CACERT").map(PathBuf::from),
            ca_cert: None,
            client_cert: get("VAULT_CLIENT_CERT").map(PathBuf::from),
            client_key: get("VAULT_CLIENT_KEY").map(PathBuf::from),
            tls_server_name: get("VAULT_TLS_SERVER_NAME"),
            // VAULT_SKIP_VERIFY is deliberately NOT honoured: skipping
            // verification needs `tls_skip_verify = true` in a file.
            tls_skip_verify: false,
            kv_mount: default_kv_mount(),
            kv_version: default_kv_version(),
            kv_mounts: BTreeMap::new(),
            logical_prefixes: Vec::new(),
            logical_write_prefixes: Vec::new(),
            per_task_mount: None,
            timeout: None,
            auth: AuthConfig::Token(TokenAuth {
                token_file: None,
                token_env: None,
                token: get("VAULT_TOKEN").map(SecretString::from),
            }),
        })
    }
}

/// A mount or prefix as written, without surrounding slashes.
pub(crate) fn trim_slashes(text: &str) -> &str {
    text.trim_matches('/')
}

/// Validated, normalised KV mounts: mount name -> version.
pub(crate) fn kv_mounts(
    config: &VaultConfig,
    key: &str,
) -> Result<(String, BTreeMap<String, u8>), ConfigError> {
    let check_version = |k: String, version: u8| {
        if version == 1 || version == 2 {
            Ok(())
        } else {
            Err(ConfigError::new(
                k,
                format!("KV version {version} does not exist; use 1 or 2"),
            ))
        }
    };
    let mount = trim_slashes(&config.kv_mount).to_string();
    if mount.is_empty() {
        return Err(ConfigError::new(
            format!("{key}.kv_mount"),
            "the KV mount is empty; the default is \"secret\"",
        ));
    }
    let mount = url_part(&mount, &format!("{key}.kv_mount"), false)?;
    check_version(format!("{key}.kv_version"), config.kv_version)?;
    let mut mounts = BTreeMap::new();
    mounts.insert(mount.clone(), config.kv_version);
    for (name, version) in &config.kv_mounts {
        let k = format!("{key}.kv_mounts.{name}");
        check_version(k.clone(), *version)?;
        let trimmed = trim_slashes(name);
        if trimmed.is_empty() || trimmed.contains('/') {
            return Err(ConfigError::new(
                k,
                "a KV mount in kv_mounts must be one path segment (e.g. \"legacy\")",
            ));
        }
        url_part(trimmed, &k, true)?;
        if let Some(previous) = mounts.insert(trimmed.to_string(), *version)
            && previous != *version
        {
            return Err(ConfigError::new(
                k,
                format!("mount '{trimmed}' is also kv_mount with kv_version {previous}"),
            ));
        }
    }
    Ok((mount, mounts))
}

/// A mount (`kv_mount`, `auth.mount`) or a name that becomes part of a
/// URL path (`auth.role`, `auth.username`, `auth.name`), held to the rule
/// of a secret path ([`crate::SecretPath`]): the `url` crate silently drops
/// `.` and `..` segments, so `approle/../x` would call another path.
/// Mounts may have several segments (surrounding '/' are dropped); names
/// must be one segment, taken as written.
pub(crate) fn url_part(value: &str, key: &str, one_segment: bool) -> Result<String, ConfigError> {
    let text = if one_segment {
        value
    } else {
        trim_slashes(value)
    };
    let problem = match crate::SecretPath::parse(text) {
        Err(err) => err.to_string(),
        Ok(path) if path.query().is_some() => "it contains '?'".to_string(),
        Ok(_) if one_segment && text.contains('/') => {
            "it must be one path segment, without '/'".to_string()
        }
        Ok(_) => return Ok(text.to_string()),
    };
    Err(ConfigError::new(
        key,
        format!("'{}': {problem}", crate::text::shown(value)),
    ))
}

/// A token as Vault issues it, trimmed of the newline a file or `echo`
/// adds. It becomes the `X-Vault-Token` header: anything a header cannot
/// carry would make the HTTP client panic on every request, so it is
/// refused when read. `None` when it is not printable ASCII.
pub(crate) fn header_token(raw: &str) -> Option<&str> {
    let token = raw.trim();
    (!token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic())).then_some(token)
}

/// A namespace (`team/sub`), which becomes the `X-Vault-Namespace` header
/// and selects a subtree: same rule as a secret path, printable ASCII only.
pub(crate) fn check_namespace(namespace: &str, key: &str) -> Result<String, ConfigError> {
    let trimmed = trim_slashes(namespace);
    let valid = trimmed.bytes().all(|b| b.is_ascii_graphic())
        && crate::SecretPath::parse(trimmed).is_ok_and(|p| p.query().is_none());
    if valid {
        Ok(trimmed.to_string())
    } else {
        Err(ConfigError::new(
            key,
            format!(
                "'{}' is not a namespace: use path segments of printable ASCII (e.g. team-a/prod), without '.', '..', '?', '%' or spaces",
                crate::text::shown(namespace)
            ),
        ))
    }
}

/// A token file must be readable and hold a token alone (re-checked at
/// every re-read, where the message names the file too).
pub(crate) fn token_file(path: &Path, key: &str) -> Result<(), ConfigError> {
    let text = crate::credential_file::read_text(path)
        .map_err(|err| ConfigError::new(key, format!("{}: {err}", path.display())))?;
    match header_token(&text) {
        Some(_) => Ok(()),
        // Not written yet (a Vault Agent sink): the first login says so.
        None if text.trim().is_empty() => Ok(()),
        None => Err(ConfigError::new(
            key,
            format!(
                "{}: the file has a space or control character inside the token; write the token alone",
                path.display()
            ),
        )),
    }
}

/// Fail at start-up when a file we will need is missing or unreadable.
pub(crate) fn readable_file(path: &Path, key: &str) -> Result<(), ConfigError> {
    std::fs::File::open(path)
        .map(|_| ())
        .map_err(|err| ConfigError::new(key, format!("{}: {err}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<VaultConfig, String> {
        toml::from_str::<VaultConfig>(text).map_err(|e| e.to_string())
    }

    #[test]
    fn parses_every_auth_method_and_refuses_unknown_keys() {
        let c = parse(
            r#"address = "https://v:8200"
               [auth]
               method = "approle"
               role_id_file = "/r"
               secret_id_file = "/s"
               secret_id_wrapped = true"#,
        )
        .unwrap();
        assert!(
            matches!(&c.auth, AuthConfig::Approle(a) if a.secret_id_wrapped && a.mount == "approle")
        );
        assert_eq!(
            (c.kv_mount.as_str(), c.kv_version, c.timeout),
            ("secret", 2, None)
        );
        let c = parse("address = \"http://x\"\nauth = { method = \"jwt\", role = \"r\", jwt_file = \"/j\", mount = \"k8s\" }").unwrap();
        assert!(matches!(&c.auth, AuthConfig::Jwt(j) if j.mount == "k8s" && j.role == "r"));
        let c =
            parse("address = \"http://x\"\nauth = { method = \"cert\", name = \"web\" }").unwrap();
        assert!(matches!(&c.auth, AuthConfig::Cert(j) if j.mount == "cert"));
        let c = parse("address = \"http://x\"\nauth = { method = \"userpass\", username = \"u\", password_file = \"/p\" }").unwrap();
        assert!(matches!(&c.auth, AuthConfig::Userpass(_)));
        let c = parse("address = \"http://x\"").unwrap();
        assert!(matches!(&c.auth, AuthConfig::Token(t) if t.token_file.is_none()));

        let err = parse("address = \"http://x\"\nkv_mnt = \"a\"").unwrap_err();
        assert!(err.contains("kv_mnt"), "{err}");
        let err = parse("address = \"http://x\"\nauth = { method = \"approle\", role_id_file = \"/r\", secret_id_file = \"/s\", secretid = 1 }").unwrap_err();
        assert!(err.contains("secretid"), "{err}");
        let err = parse("address = \"http://x\"\nauth = { method = \"token\", token = \"s.x\" }")
            .unwrap_err();
        assert!(err.contains("token"), "{err}");
        let err = parse("address = \"http://x\"\nauth = { method = \"kerberos\" }").unwrap_err();
        assert!(err.contains("kerberos"), "{err}");
    }

    #[test]
    fn from_env_needs_vault_addr_and_ignores_skip_verify() {
        let vars = |name: &str| match name {
            "VAULT_ADDR" => Some("https://v:8200".to_string()),
            "VAULT_TOKEN" => Some("s.topsecrettoken".to_string()),
            "VAULT_NAMESPACE" => Some("team".to_string()),
            "VAULT_CACERT" => Some("/ca.pem".to_string()),
            "VAULT_TLS_SERVER_NAME" => Some("vault.internal".to_string()),
            "VAULT_SKIP_VERIFY" => Some("true".to_string()),
            _ => None,
        };
        let c = VaultConfig::from_env(&vars).unwrap();
        assert_eq!(c.address, "https://v:8200");
        assert_eq!(c.namespace.as_deref(), Some("team"));
        assert_eq!(c.ca_file.as_deref(), Some(Path::new("/ca.pem")));
        assert_eq!(c.tls_server_name.as_deref(), Some("vault.internal"));
        assert!(!c.tls_skip_verify);
        assert!(matches!(&c.auth, AuthConfig::Token(t) if t.token.is_some()));
        // The token never shows in Debug output.
        let shown = format!("{c:?}");
        assert!(!shown.contains("topsecrettoken"), "{shown}");
        assert!(VaultConfig::from_env(&|_: &str| None).is_none());
        assert!(
            VaultConfig::from_env(&|n: &str| (n == "VAULT_TOKEN").then(|| "x".into())).is_none()
        );
    }

    #[test]
    fn validates_kv_mounts() {
        let c = parse("address = \"http://x\"\nkv_mount = \"/kv/\"\nkv_version = 1\nkv_mounts = { other = 2 }").unwrap();
        let (mount, mounts) = kv_mounts(&c, "providers.v").unwrap();
        assert_eq!(mount, "kv");
        assert_eq!(mounts.get("kv"), Some(&1));
        assert_eq!(mounts.get("other"), Some(&2));
        let c = parse("address = \"http://x\"\nkv_version = 3").unwrap();
        assert_eq!(
            kv_mounts(&c, "providers.v").unwrap_err().key,
            "providers.v.kv_version"
        );
        let c = parse("address = \"http://x\"\nkv_mounts = { \"a/b\" = 2 }").unwrap();
        assert_eq!(
            kv_mounts(&c, "providers.v").unwrap_err().key,
            "providers.v.kv_mounts.a/b"
        );
    }
}
