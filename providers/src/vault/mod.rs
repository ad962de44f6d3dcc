//! The `vault` backend: HashiCorp Vault and OpenBao, through `vaultrs`
//! (rustls only).
//!
//! - [`config`]: the `[providers.<name>]` settings and `VAULT_ADDR` defaults.
//! - `http`: the one HTTP client, built from our settings only (no `VAULT_*`
//!   read behind our back), and failure classification.
//! - `auth`: login methods, background renewal, single-flight re-login,
//!   least-privilege tokens that cannot look themselves up.
//! - `paths`: where a `vaultbridge.path` goes (KV v2, KV v1, or a generic
//!   logical path) and the one name the access policy judges.
//! - `kv`, `logical`: the reads, and what comes back.
//! - `errors`: Vault's failures sorted into `ProviderError` kinds.
//! - this file: the provider, its token, and the `Provider` impl.
//!
//! Path rule (README "Provider: vault"):
//! 1. a path starting with a `logical_write_prefixes` entry is a logical
//!    `POST` (its `?k=v&…` suffix is the JSON body); one starting with a
//!    `logical_prefixes` entry is a logical `GET`. The response's `data` (or
//!    `auth`, for a login/token path) is returned as compact JSON; a response
//!    with a lease (or a token) is per task.
//! 2. else, when the first segment is a known KV mount (`kv_mount` or a
//!    `kv_mounts` key) and more follows, it is `<mount>/<path>`;
//! 3. else the whole path is a key under `kv_mount`.

pub mod config;

mod auth;
mod errors;
mod http;
mod http1;
mod kv;
mod logical;
mod paths;
mod per_task;

use std::sync::Arc;

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};

pub use config::{AuthConfig, VARIABLES, VaultConfig};
pub use per_task::mounts_apart;

use crate::duration::Timeout;
use crate::{ConfigError, Provider, ProviderError, SecretPath, SecretRef, SecretValue};
use auth::{Current, Lookup, Method, Session};
use errors::CallError;
pub(crate) use errors::unavailable;
use http::{Failure, Http, TlsFiles};
use paths::Target;

/// Validate `config` and build the provider. No network I/O here: a
/// background task logs in and then keeps the token alive.
pub async fn build(config: &VaultConfig, key: &str) -> Result<Arc<dyn Provider>, ConfigError> {
    let mut provider = VaultProvider::new(config, key)?;
    provider.keep_alive_in_background();
    Ok(Arc::new(provider))
}

pub struct VaultProvider {
    session: Arc<Session>,
    /// The task of [`auth::keep_alive`], aborted when the provider is
    /// dropped.
    keeper: Option<tokio::task::AbortHandle>,
    kv_mount: String,
    kv_mounts: std::collections::BTreeMap<String, u8>,
    logical_get: Vec<String>,
    logical_post: Vec<String>,
    /// `per_task_mount`: where minted per-task values are shared.
    per_task_mount: Option<String>,
}

/// A client certificate and key given together (or neither).
fn pair<'a>(
    cert: &'a Option<std::path::PathBuf>,
    private: &'a Option<std::path::PathBuf>,
    prefix: &str,
) -> Result<Option<(http::Keyed<'a>, http::Keyed<'a>)>, ConfigError> {
    match (cert, private) {
        (None, None) => Ok(None),
        (Some(c), Some(k)) => Ok(Some((
            (c.as_path(), format!("{prefix}.client_cert")),
            (k.as_path(), format!("{prefix}.client_key")),
        ))),
        (Some(_), None) => Err(ConfigError::new(
            format!("{prefix}.client_key"),
            "client_cert is set but client_key is not; give both",
        )),
        (None, Some(_)) => Err(ConfigError::new(
            format!("{prefix}.client_cert"),
            "client_key is set but client_cert is not; give both",
        )),
    }
}

impl VaultProvider {
    pub fn new(config: &VaultConfig, key: &str) -> Result<Self, ConfigError> {
        let address = http::parse_address(&config.address, key)?;
        let https = address.scheme() == "https";
        let (kv_mount, kv_mounts) = config::kv_mounts(config, key)?;
        let timeout = Timeout::resolve(config.timeout.as_ref(), &format!("{key}.timeout"))?;
        let need_https = |field: &str| {
            ConfigError::new(
                format!("{key}.{field}"),
                format!("needs an https:// address, not {}", config.address),
            )
        };
        let ca_file = crate::config::renamed(
            key,
            ("ca_file", config.ca_file.as_deref()),
            ("ca_cert", config.ca_cert.as_deref()),
        )?;
        if !https {
            if let Some((_, ca_key)) = &ca_file {
                return Err(ConfigError::new(
                    ca_key,
                    format!("needs an https:// address, not {}", config.address),
                ));
            }
            if config.tls_server_name.is_some() {
                return Err(need_https("tls_server_name"));
            }
            if config.client_cert.is_some() {
                return Err(need_https("client_cert"));
            }
        }
        if let Some(name) = &config.tls_server_name
            && (name.is_empty() || name.parse::<std::net::IpAddr>().is_ok())
        {
            return Err(ConfigError::new(
                format!("{key}.tls_server_name"),
                format!("'{name}' must be a DNS name (the name in the server's certificate)"),
            ));
        }
        let own_client = pair(&config.client_cert, &config.client_key, key)?;
        if config.tls_skip_verify {
            tracing::warn!(
                provider = %key,
                "tls_skip_verify = true: the Vault server's certificate is NOT verified; anyone on the path can read every secret"
            );
        }
        let namespace = config
            .namespace
            .as_deref()
            .filter(|n| !config::trim_slashes(n).is_empty())
            .map(|n| config::check_namespace(n, &format!("{key}.namespace")))
            .transpose()?;
        let make_http = |client| {
            Http::new(
                key,
                &address,
                &TlsFiles {
                    ca_file: ca_file.clone(),
                    client,
                },
                config.tls_server_name.as_deref(),
                config.tls_skip_verify,
                namespace.clone(),
                timeout,
            )
        };
        let http = make_http(own_client.clone())?;
        let auth_key = format!("{key}.auth");
        let mount_of = |mount: &str, field: &str| -> Result<String, ConfigError> {
            let m = config::trim_slashes(mount);
            if m.is_empty() {
                Err(ConfigError::new(format!("{auth_key}.{field}"), "is empty"))
            } else {
                config::url_part(m, &format!("{auth_key}.{field}"), false)
            }
        };
        // Role and user names go into login URLs (or bodies) as one segment.
        let name_of =
            |name: &str, field: &str| config::url_part(name, &format!("{auth_key}.{field}"), true);
        let method = match &config.auth {
            AuthConfig::Token(t) => {
                if let Some(file) = &t.token_file {
                    config::token_file(file, &format!("{auth_key}.token_file"))?;
                }
                let (fixed, source) = match (&t.token, &t.token_env) {
                    (Some(token), _) => (Some(token.clone()), "VAULT_TOKEN".to_string()),
                    // Config file: the token comes from the process
                    // environment (the plugin's `env` settings).
                    (None, env_name) => {
                        let name = env_name.clone().unwrap_or_else(|| "VAULT_TOKEN".into());
                        let value = std::env::var(&name)
                            .ok()
                            .filter(|v| !v.is_empty())
                            .map(SecretString::from);
                        if value.is_none() && t.token_file.is_none() && env_name.is_some() {
                            return Err(ConfigError::new(
                                format!("{auth_key}.token_env"),
                                format!("the environment variable {name} is not set"),
                            ));
                        }
                        (value, name)
                    }
                };
                // Trimmed and checked now: a token with a newline or a
                // control character would fail (or panic) on every request.
                let fixed = match fixed {
                    Some(token) => Some(SecretString::from(
                        config::header_token(token.expose_secret())
                            .ok_or_else(|| {
                                ConfigError::new(
                                    &source,
                                    "the Vault token has a space or control character inside it, or is empty; set it to the token alone",
                                )
                            })?
                            .to_string(),
                    )),
                    None => None,
                };
                if fixed.is_none() && t.token_file.is_none() {
                    return Err(ConfigError::new(
                        &auth_key,
                        format!(
                            "no Vault token source: {source} is not set and there is no auth.token_file; set one, or configure another auth.method (approle, jwt, cert, userpass)"
                        ),
                    ));
                }
                Method::Token {
                    file: t.token_file.clone(),
                    fixed,
                    source,
                }
            }
            AuthConfig::Approle(a) => {
                config::readable_file(&a.role_id_file, &format!("{auth_key}.role_id_file"))?;
                config::readable_file(&a.secret_id_file, &format!("{auth_key}.secret_id_file"))?;
                Method::AppRole {
                    mount: mount_of(&a.mount, "mount")?,
                    role_id_file: a.role_id_file.clone(),
                    secret_id_file: a.secret_id_file.clone(),
                    wrapped: a.secret_id_wrapped,
                    unwrapped: Default::default(),
                }
            }
            AuthConfig::Jwt(j) => {
                config::readable_file(&j.jwt_file, &format!("{auth_key}.jwt_file"))?;
                if j.role.is_empty() {
                    return Err(ConfigError::new(format!("{auth_key}.role"), "is empty"));
                }
                Method::Jwt {
                    mount: mount_of(&j.mount, "mount")?,
                    role: name_of(&j.role, "role")?,
                    jwt_file: j.jwt_file.clone(),
                }
            }
            AuthConfig::Cert(c) => {
                if !https {
                    return Err(ConfigError::new(
                        format!("{auth_key}.method"),
                        format!(
                            "cert login needs an https:// address, not {}",
                            config.address
                        ),
                    ));
                }
                let login_http = match pair(&c.client_cert, &c.client_key, &auth_key)? {
                    Some(own) => Some(make_http(Some(own))?),
                    None if own_client.is_some() => None,
                    None => {
                        return Err(ConfigError::new(
                            format!("{auth_key}.client_cert"),
                            format!(
                                "cert login needs a client certificate: set auth.client_cert and auth.client_key, or {key}.client_cert and client_key"
                            ),
                        ));
                    }
                };
                Method::Cert {
                    mount: mount_of(&c.mount, "mount")?,
                    name: c
                        .name
                        .as_deref()
                        .filter(|n| !n.is_empty())
                        .map(|n| name_of(n, "name"))
                        .transpose()?,
                    login_http,
                }
            }
            AuthConfig::Userpass(u) => {
                config::readable_file(&u.password_file, &format!("{auth_key}.password_file"))?;
                if u.username.is_empty() {
                    return Err(ConfigError::new(format!("{auth_key}.username"), "is empty"));
                }
                Method::Userpass {
                    mount: mount_of(&u.mount, "mount")?,
                    username: name_of(&u.username, "username")?,
                    password_file: u.password_file.clone(),
                }
            }
        };
        let prefixes = |list: &[String], field: &str| -> Result<Vec<String>, ConfigError> {
            list.iter()
                .map(|p| {
                    // Whole segments, held to the same rule as a label's path.
                    let trimmed = p.trim_matches('/');
                    match SecretPath::parse(trimmed) {
                        Ok(path) if path.query().is_none() => Ok(trimmed.to_string()),
                        Ok(_) => Err(ConfigError::new(
                            format!("{key}.{field}"),
                            format!("prefix '{}' must not contain '?'", crate::text::shown(p)),
                        )),
                        Err(err) => Err(ConfigError::new(
                            format!("{key}.{field}"),
                            format!("prefix '{}' is refused: {err}", crate::text::shown(p)),
                        )),
                    }
                })
                .collect()
        };
        let per_task_mount = config
            .per_task_mount
            .as_deref()
            .map(|mount| per_task::check_mount(mount, &kv_mounts, &format!("{key}.per_task_mount")))
            .transpose()?;
        Ok(Self {
            session: Arc::new(Session::new(http, method, key.to_string())),
            keeper: None,
            kv_mount,
            kv_mounts,
            per_task_mount,
            logical_get: prefixes(&config.logical_prefixes, "logical_prefixes")?,
            logical_post: prefixes(&config.logical_write_prefixes, "logical_write_prefixes")?,
        })
    }

    /// Log in now, off the start-up path (the socket must open at once),
    /// then keep the token alive independent of traffic (`auth` module
    /// docs): a bad credential shows in the log at start, and a request
    /// after a long idle period finds a live token. Needs a tokio runtime;
    /// without one requests log in and renew on demand.
    pub fn keep_alive_in_background(&mut self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if let Some(old) = self.keeper.take() {
            old.abort();
        }
        let task = runtime.spawn(auth::keep_alive(Arc::downgrade(&self.session)));
        self.keeper = Some(task.abort_handle());
    }

    /// Run `op` with a token. On a 403, if Vault no longer accepts the token
    /// (expired, revoked), log in again and retry once; a 403 with a valid
    /// token is a real "permission denied" and is returned as is.
    async fn with_token<T, F, Fut>(&self, op: F) -> Result<T, CallError>
    where
        F: Fn(Current) -> Fut,
        Fut: std::future::Future<Output = Result<T, Failure>>,
    {
        let current = self.session.token().await.map_err(CallError::Provider)?;
        let failure = match op(current.clone()).await {
            Ok(value) => return Ok(value),
            Err(f) if f.is_status(403) => f,
            Err(f) => return Err(CallError::Vault(f)),
        };
        match self.session.lookup(&current.token).await {
            Ok(Lookup::Known(_) | Lookup::Opaque) => return Err(CallError::Vault(failure)),
            Ok(Lookup::Refused) => self.session.invalidate(current.generation).await,
            // The probe failing says nothing about the 403: report that.
            Err(_) => return Err(CallError::Vault(failure)),
        }
        let fresh = self.session.token().await.map_err(CallError::Provider)?;
        op(fresh).await.map_err(CallError::Vault)
    }
}

#[async_trait]
impl Provider for VaultProvider {
    fn kind(&self) -> &'static str {
        "vault"
    }

    fn policy_name(&self, path: &SecretPath) -> Result<String, ProviderError> {
        self.canonical(path)
    }

    fn credential(&self) -> Option<crate::Credential> {
        self.session.credential()
    }

    async fn fetch(&self, secret: SecretRef<'_>) -> Result<SecretValue, ProviderError> {
        match self.target(secret.path)? {
            Target::Kv {
                mount,
                path,
                version,
            } => self.fetch_kv(mount, path, version, secret.version).await,
            Target::Logical { post, path, query } => {
                self.fetch_logical(post, path, query, secret.version).await
            }
        }
    }

    fn shares_issued(&self, path: &SecretPath) -> bool {
        self.per_task_mount.is_some() && matches!(self.target(path), Ok(Target::Logical { .. }))
    }

    async fn recall(
        &self,
        _path: &SecretPath,
        task: &crate::TaskKey,
    ) -> Result<Option<SecretValue>, ProviderError> {
        self.recall_per_task(task).await
    }

    async fn remember(
        &self,
        _path: &SecretPath,
        task: &crate::TaskKey,
        value: &[u8],
        expires: std::time::SystemTime,
    ) -> Result<bool, ProviderError> {
        self.remember_per_task(task, value, expires).await
    }

    async fn current_version(&self, path: &SecretPath) -> Result<crate::Version, ProviderError> {
        match self.target(path)? {
            Target::Kv {
                mount,
                path,
                version,
            } => self.current_kv_version(mount, path, version).await,
            // A dynamic credential is minted per task: nothing to roll.
            Target::Logical { .. } => Err(ProviderError::Invalid(format!(
                "'{path}' is not a KV path: a dynamic credential is new for every task and is never rotated by rolling services; remove the vaultbridge.rotate label"
            ))),
        }
    }

    /// Log in (if needed) and look the token up; say what could not be
    /// verified (a least-privilege token may not look itself up).
    async fn check(&self) -> Result<String, ProviderError> {
        let identity = self.check_identity().await?;
        match self.check_per_task_mount().await? {
            Some(mount) => Ok(format!("{identity}; {mount}")),
            None => Ok(identity),
        }
    }
}

impl VaultProvider {
    async fn check_identity(&self) -> Result<String, ProviderError> {
        let shown = &self.session.http.shown;
        let current = self.session.token().await?;
        let namespace = self
            .session
            .http
            .namespace
            .as_deref()
            .map(|n| format!(" namespace '{n}'"))
            .unwrap_or_default();
        let method = self.session.method.describe();
        match self.session.lookup(&current.token).await {
            Ok(Lookup::Known(identity)) => Ok(format!(
                "Vault {shown}{namespace}: authenticated ({method}), policies [{}], token TTL {}",
                identity.policies.join(", "),
                identity
                    .ttl
                    .map(|t| format!("{}s", t.as_secs()))
                    .unwrap_or_else(|| "none (never expires)".into())
            )),
            Ok(Lookup::Opaque) => {
                let lease = match self.session.lease().await {
                    Some((Some(ttl), true)) => format!(
                        "TTL {}s learnt from renew-self, renewed in the background",
                        ttl.as_secs()
                    ),
                    Some((Some(ttl), false)) => {
                        format!(
                            "TTL {}s learnt from renew-self, not renewable",
                            ttl.as_secs()
                        )
                    }
                    _ => "TTL and renewal unknown (renew-self denied too), not renewed".into(),
                };
                Ok(format!(
                    "Vault {shown}{namespace}: token accepted ({method}); cannot introspect it (lookup-self denied): policies unknown, {lease}; reads are checked when they happen"
                ))
            }
            Ok(Lookup::Refused) => Err(ProviderError::Unauthenticated(format!(
                "Vault at {shown} refuses the token just obtained ({method})"
            ))),
            Err(f) => Err(unavailable(shown, "token lookup-self", f)),
        }
    }
}

impl Drop for VaultProvider {
    /// No background task outlives its provider.
    fn drop(&mut self) {
        if let Some(keeper) = self.keeper.take() {
            keeper.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(extra: &str) -> VaultProvider {
        VaultProvider::new(&with_token(&format!(
            "address = \"http://127.0.0.1:1\"\nkv_mounts = {{ kv1 = 1, team = 2 }}\nlogical_prefixes = [\"database/creds/\"]\nlogical_write_prefixes = [\"pki/issue/\"]\n{extra}"
        )), "providers.v")
        .unwrap()
    }

    /// `text` parsed, with a token as from VAULT_TOKEN when it names no
    /// token file (a provider without any token source is refused).
    fn with_token(text: &str) -> VaultConfig {
        let mut config: VaultConfig = toml::from_str(text).unwrap();
        if let AuthConfig::Token(t) = &mut config.auth
            && t.token_file.is_none()
        {
            t.token = Some(SecretString::from("s.test"));
        }
        config
    }

    #[test]
    fn routes_paths_by_the_documented_rule() {
        // Leaked: a Target borrows the provider and the path (test only).
        let p: &'static VaultProvider = Box::leak(Box::new(provider("")));
        let target = |raw: &str| {
            SecretPath::parse(raw)
                .map_err(|err| ProviderError::Invalid(err.to_string()))
                .and_then(|path| p.target(Box::leak(Box::new(path))))
        };
        let kv = |mount, path, version| Target::Kv {
            mount,
            path,
            version,
        };
        assert_eq!(target("app/db").unwrap(), kv("secret", "app/db", 2));
        assert_eq!(target("secret/app").unwrap(), kv("secret", "app", 2));
        assert_eq!(target("kv1/app").unwrap(), kv("kv1", "app", 1));
        assert_eq!(target("team/x/y").unwrap(), kv("team", "x/y", 2));
        // A bare mount name is a key under kv_mount.
        assert_eq!(target("kv1").unwrap(), kv("secret", "kv1", 2));
        assert_eq!(
            target("database/creds/ro").unwrap(),
            Target::Logical {
                post: false,
                path: "database/creds/ro",
                query: None
            }
        );
        assert_eq!(
            target("pki/issue/web?common_name=a.example.com").unwrap(),
            Target::Logical {
                post: true,
                path: "pki/issue/web",
                query: Some("common_name=a.example.com")
            }
        );
        // Prefixes match whole segments of the validated path.
        assert_eq!(
            target("database/credsx/ro").unwrap(),
            kv("secret", "database/credsx/ro", 2)
        );
        assert!(matches!(target("app?x=1"), Err(ProviderError::Invalid(_))));
        for escape in [
            "database/creds/../../auth/token/lookup-self",
            "pki/issue/../../sys/policy/x?policy=y",
            "database/creds/%2e%2e/%2e%2e/auth/token/lookup-self",
            "a//b",
            "/app/db",
            "/",
        ] {
            assert!(
                matches!(target(escape), Err(ProviderError::Invalid(_))),
                "{escape}"
            );
        }
    }

    #[test]
    fn every_spelling_of_a_secret_has_one_policy_name() {
        let p = provider("");
        let name = |raw: &str| p.policy_name(&SecretPath::parse(raw).unwrap()).unwrap();
        // The default mount's prefix is dropped; other mounts keep theirs.
        assert_eq!(name("secret/prod/db"), "prod/db");
        assert_eq!(name("prod/db"), "prod/db");
        assert_eq!(name("kv1/app"), "kv1/app");
        assert_eq!(name("team/x/y"), "team/x/y");
        // A logical call's query (its body) is never part of the name.
        assert_eq!(
            name("pki/issue/web?common_name=a.example.com"),
            "pki/issue/web"
        );
        assert_eq!(name("database/creds/ro"), "database/creds/ro");
    }

    #[test]
    fn configured_prefixes_follow_the_path_rule() {
        let parse = with_token;
        for bad in ["\"../x\"", "\"a/./b/\"", "\"//\"", "\"a?b=1\""] {
            let config = parse(&format!(
                "address = \"http://x\"\nlogical_prefixes = [{bad}]"
            ));
            let err = VaultProvider::new(&config, "providers.v").err().unwrap();
            assert_eq!(err.key, "providers.v.logical_prefixes", "{bad}");
        }
    }

    #[test]
    fn mounts_and_login_names_follow_the_path_rule() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "x").unwrap();
        let file = file.display();
        let build = |text: &str| VaultProvider::new(&with_token(text), "providers.v");
        let key_of = |text: &str| build(text).err().map(|e| e.key);
        for bad in [
            "approle/../x",
            "a/./b",
            "..;x",
            "a%2fb",
            "a\u{200b}b",
            "a?b=1",
            "a#b",
        ] {
            let mounts = [
                (
                    format!("address = \"http://x\"\nkv_mount = \"{bad}\""),
                    "providers.v.kv_mount",
                ),
                (
                    format!(
                        "address = \"http://x\"\nauth = {{ method = \"approle\", role_id_file = \"{file}\", secret_id_file = \"{file}\", mount = \"{bad}\" }}"
                    ),
                    "providers.v.auth.mount",
                ),
                (
                    format!(
                        "address = \"http://x\"\nauth = {{ method = \"jwt\", role = \"r\", jwt_file = \"{file}\", mount = \"{bad}\" }}"
                    ),
                    "providers.v.auth.mount",
                ),
                (
                    format!(
                        "address = \"http://x\"\nauth = {{ method = \"jwt\", role = \"{bad}\", jwt_file = \"{file}\" }}"
                    ),
                    "providers.v.auth.role",
                ),
                (
                    format!(
                        "address = \"http://x\"\nauth = {{ method = \"userpass\", username = \"{bad}\", password_file = \"{file}\" }}"
                    ),
                    "providers.v.auth.username",
                ),
            ];
            for (text, key) in mounts {
                assert_eq!(key_of(&text).as_deref(), Some(key), "{text}");
            }
        }
        let err = build("address = \"http://x\"\nkv_mounts = { \"..\" = 2 }")
            .err()
            .unwrap();
        assert_eq!(err.key, "providers.v.kv_mounts...");
        // One segment for names; several for mounts.
        assert!(config::url_part("team/x", "k", true).is_err());
        assert_eq!(
            config::url_part("/team/kv/", "k", false).unwrap(),
            "team/kv"
        );
        let err = config::url_part("web/..", "providers.v.auth.name", true).unwrap_err();
        assert_eq!(err.key, "providers.v.auth.name");
        assert!(err.message.contains("'web/..'"), "{err}");
        assert!(build(&format!(
            "address = \"http://x\"\nkv_mount = \"/team/kv/\"\nauth = {{ method = \"userpass\", username = \"ops.bot@example.com\", password_file = \"{file}\", mount = \"corp/userpass\" }}"
        ))
        .is_ok());
    }

    #[test]
    fn header_values_are_checked_when_read() {
        let dir = tempfile::tempdir().unwrap();
        let build = |config: &VaultConfig| VaultProvider::new(config, "providers.v");
        // No token source at all: refused at start, not on every request.
        let bare: VaultConfig = toml::from_str("address = \"http://x\"").unwrap();
        assert_eq!(build(&bare).err().unwrap().key, "providers.v.auth");
        // A token from the environment is trimmed; one with a control
        // character inside is refused naming where it came from.
        let mut config = bare.clone();
        config.auth = AuthConfig::Token(config::TokenAuth {
            token: Some(SecretString::from("s.good\n")),
            ..Default::default()
        });
        assert!(build(&config).is_ok());
        for bad in ["s.bad\u{1}token", "s.bad token", "\n"] {
            config.auth = AuthConfig::Token(config::TokenAuth {
                token: Some(SecretString::from(bad)),
                ..Default::default()
            });
            let err = build(&config).err().unwrap();
            assert_eq!(err.key, "VAULT_TOKEN", "{bad:?}");
            assert!(!err.to_string().contains("s.bad"), "{err}");
        }
        let file = dir.path().join("token");
        std::fs::write(&file, "s.x\u{7}y\n").unwrap();
        let err = build(&with_token(&format!(
            "address = \"http://x\"\nauth = {{ method = \"token\", token_file = \"{}\" }}",
            file.display()
        )))
        .err()
        .unwrap();
        assert_eq!(err.key, "providers.v.auth.token_file");
        // A file that never ends is refused at once, not read whole.
        let err = build(&with_token(
            "address = \"http://x\"\nauth = { method = \"token\", token_file = \"/dev/zero\" }",
        ))
        .err()
        .unwrap();
        assert_eq!(err.key, "providers.v.auth.token_file");
        assert!(err.to_string().contains("larger than 64 KiB"), "{err}");
        for bad in ["team\nx", "a/../b", "a b", "%2e"] {
            let mut config = with_token("address = \"http://x\"");
            config.namespace = Some(bad.into());
            assert_eq!(
                build(&config).err().unwrap().key,
                "providers.v.namespace",
                "{bad:?}"
            );
        }
        let mut config = with_token("address = \"http://x\"");
        config.namespace = Some("/team-a/prod/".into());
        assert!(build(&config).is_ok());
        let err = build(&with_token(
            "address = \"http://x\"\ntimeout = 18446744073709551615",
        ));
        assert_eq!(err.err().unwrap().key, "providers.v.timeout");
    }

    #[test]
    fn build_validates_without_network() {
        let dir = tempfile::tempdir().unwrap();
        let parse = |text: &str| toml::from_str::<VaultConfig>(text).unwrap();
        let err = |text: &str| {
            VaultProvider::new(&parse(text), "providers.v")
                .err()
                .unwrap()
        };

        let e = err(
            "address = \"http://x\"\nauth = { method = \"approle\", role_id_file = \"/nope/r\", secret_id_file = \"/nope/s\" }",
        );
        assert_eq!(e.key, "providers.v.auth.role_id_file");
        assert!(e.message.contains("/nope/r"), "{e}");
        let e = err("address = \"http://x\"\nca_file = \"/ca.pem\"");
        assert_eq!(e.key, "providers.v.ca_file");
        let e = err("address = \"https://x\"\nca_file = \"/nope/ca.pem\"");
        assert_eq!(e.key, "providers.v.ca_file");
        // The old name: still read (its errors name it as written), with
        // a warning...
        let logged = crate::config::tests::logged(|| {
            let e = err("address = \"https://x\"\nca_cert = \"/nope/ca.pem\"");
            assert_eq!(e.key, "providers.v.ca_cert");
        });
        assert!(
            logged.contains("providers.v.ca_cert: the name ca_cert is deprecated; write ca_file"),
            "{logged}"
        );
        // ...but not with the new one.
        let e = err("address = \"https://x\"\nca_file = \"/a.pem\"\nca_cert = \"/b.pem\"");
        assert_eq!(
            e.to_string(),
            "providers.v.ca_file: providers.v.ca_cert is set too: it is the old name of ca_file; keep ca_file only"
        );
        let bad = dir.path().join("bad.pem");
        std::fs::write(&bad, "not a pem").unwrap();
        let e = err(&format!(
            "address = \"https://x\"\nca_file = \"{}\"",
            bad.display()
        ));
        assert_eq!(e.key, "providers.v.ca_file");
        // Good files, under the new and the old name, and a client pair.
        use crate::tls::tests::{CERT, KEY, files};
        let (_pems, pems) = files(&[("ca.pem", CERT.as_bytes()), ("key.pem", KEY.as_bytes())]);
        let (ca, key) = (pems[0].display(), pems[1].display());
        for name in ["ca_file", "ca_cert"] {
            let text = format!(
                "address = \"https://x\"\n{name} = \"{ca}\"\nclient_cert = \"{ca}\"\nclient_key = \"{key}\""
            );
            VaultProvider::new(&with_token(&text), "providers.v").unwrap();
        }
        let e = err(&format!(
            "address = \"https://x\"\nclient_cert = \"{ca}\"\nclient_key = \"{ca}\""
        ));
        assert_eq!(e.key, "providers.v.client_key");
        assert!(e.message.contains("no private key in it"), "{e}");
        let e = err("address = \"https://x\"\nclient_cert = \"/c\"");
        assert_eq!(e.key, "providers.v.client_key");
        let e = err("address = \"https://x\"\nauth = { method = \"cert\" }");
        assert_eq!(e.key, "providers.v.auth.client_cert");
        let e = err("address = \"http://x\"\nauth = { method = \"cert\" }");
        assert_eq!(e.key, "providers.v.auth.method");
        let e = err("address = \"https://x\"\ntls_server_name = \"10.0.0.1\"");
        assert_eq!(e.key, "providers.v.tls_server_name");
        let e = err("address = \"x\"");
        assert_eq!(e.key, "providers.v.address");
        let e = err("address = \"http://x\"\ntimeout = 0");
        assert_eq!(e.key, "providers.v.timeout");
        let e = err("address = \"http://x\"\ntimeout = \"ten\"");
        assert_eq!(e.key, "providers.v.timeout");
        let ok = |text: &str| VaultProvider::new(&with_token(text), "providers.v").is_ok();
        assert!(ok("address = \"http://x\"\ntimeout = \"500ms\""));
        assert!(
            ok("address = \"http://x\"\ntimeout = 5"),
            "the deprecated form"
        );
        let e = err(
            "address = \"http://x\"\nauth = { method = \"token\", token_env = \"VAULTBRIDGE_TEST_SURELY_UNSET\" }",
        );
        assert_eq!(e.key, "providers.v.auth.token_env");
        // Debug of a provider config never shows a token.
        let config = VaultConfig::from_env(&|n: &str| match n {
            "VAULT_ADDR" => Some("http://x".into()),
            "VAULT_TOKEN" => Some("hvs.very-secret".into()),
            _ => None,
        })
        .unwrap();
        assert!(!format!("{config:?}").contains("very-secret"));
        assert!(VaultProvider::new(&config, "providers.vault").is_ok());
    }

    #[tokio::test]
    async fn an_unreachable_vault_is_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "s.x\n").unwrap();
        let p = provider(&format!(
            "timeout = \"2s\"\nauth = {{ method = \"token\", token_file = \"{}\" }}",
            token.display()
        ));
        let err = p
            .fetch(SecretRef {
                path: &SecretPath::parse("app").unwrap(),
                version: None,
            })
            .await
            .unwrap_err();
        assert!(matches!(err, ProviderError::Unavailable(_)), "{err}");
        assert!(err.to_string().contains("http://127.0.0.1:1"), "{err}");
    }

    /// Five requests waiting for a login that times out make ONE
    /// connection, and all get its error (no login per waiting request).
    #[tokio::test(flavor = "multi_thread")]
    async fn waiting_requests_share_one_failed_login() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming().flatten() {
                counter.fetch_add(1, Ordering::SeqCst);
                held.push(stream); // never answered
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "s.x").unwrap();
        let config: VaultConfig = toml::from_str(&format!(
            "address = \"http://127.0.0.1:{port}\"\ntimeout = \"1s\"\nauth = {{ method = \"token\", token_file = \"{}\" }}",
            token.display()
        ))
        .unwrap();
        let p = Arc::new(VaultProvider::new(&config, "providers.v").unwrap());
        let tasks: Vec<_> = (0..5)
            .map(|_| {
                let p = p.clone();
                tokio::spawn(async move {
                    p.fetch(SecretRef {
                        path: &SecretPath::parse("app").unwrap(),
                        version: None,
                    })
                    .await
                })
            })
            .collect();
        for task in tasks {
            let err = task.await.unwrap().unwrap_err();
            assert!(matches!(err, ProviderError::Unavailable(_)), "{err}");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn kv1_and_logical_refuse_versions() {
        let p = provider("");
        let err = p
            .fetch(SecretRef {
                path: &SecretPath::parse("kv1/app").unwrap(),
                version: Some("2"),
            })
            .await
            .unwrap_err();
        assert!(matches!(err, ProviderError::Invalid(_)), "{err}");
        let err = p
            .fetch(SecretRef {
                path: &SecretPath::parse("secret/app").unwrap(),
                version: Some("latest"),
            })
            .await
            .unwrap_err();
        assert!(err.to_string().contains("positive integer"), "{err}");
    }
}
