//! The `azure` backend: Azure Key Vault secrets, through the official SDK
//! (`azure_security_keyvault_secrets` + `azure_identity`, rustls).
//!
//! - `vaultbridge.path` is the secret's name, `vaultbridge.version` a version
//!   id (latest when absent). The value comes back as stored (a JSON text for
//!   `vaultbridge.field`, base64 for `vaultbridge.decode=base64`).
//! - Credentials: client secret, workload identity, managed identity
//!   ([`config`]). The SDK's credential caches the token and refreshes it
//!   before it expires; one credential serves every concurrent lookup of the
//!   provider.
//! - One attempt per lookup, bounded by `timeout` (token acquisition
//!   included). A transient failure (connection, 5xx, 429) is reported with
//!   the vault's Retry-After; the plugin decides whether there is time to
//!   ask again. Everything else is final ([`errors`]).
//! - The SDK's check that a vault's authentication challenge names the vault's
//!   own domain stays on.
//!
//! `build` does no network I/O: the first lookup (or `vaultbridge check`)
//! fetches the token. From then on a background task keeps it fresh
//! ([`keep_token_fresh`]), so the first lookup after a quiet week does not
//! wait for Entra.

mod config;
mod errors;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use azure_core::cloud::{CloudConfiguration, CustomConfiguration};
use azure_core::credentials::TokenCredential;
use azure_core::http::policies::{Policy, PolicyResult};
use azure_core::http::{ClientOptions, RetryOptions, Transport};
use azure_identity::{
    ClientAssertion, ClientAssertionCredential, ClientAssertionCredentialOptions,
    ClientSecretCredential, ClientSecretCredentialOptions, ManagedIdentityCredential,
    ManagedIdentityCredentialOptions, UserAssignedId,
};
use azure_security_keyvault_secrets::{
    SecretClient, SecretClientOptions,
    models::{Secret, SecretClientGetSecretOptions},
};
use secrecy::ExposeSecret;

pub use config::{AzureConfig, CredentialConfig, PUBLIC_AUTHORITY_HOST, VARIABLES};
use config::{ManagedId, ValidCredential};
use errors::Context;

use crate::{ConfigError, Provider, ProviderError, SecretRef, SecretValue};

/// Turns the Entra token endpoint's error answers into HTTP errors carrying
/// the status, the AADSTS codes and the description.
///
/// `azure_identity` 1.0 parses Entra's error body into borrowed strings, which
/// fails whenever the description holds an escape — and Entra's always does
/// (`\r\n` before "Trace ID"). The SDK then reports a JSON error instead of
/// the status and the AADSTS code, so a throttled or failing token endpoint
/// would look like bad credentials. This policy sits right before the
/// transport of the credential's pipeline and answers such responses with
/// the error the SDK meant to build.
#[derive(Debug)]
struct EntraErrors;

#[async_trait]
impl Policy for EntraErrors {
    async fn send(
        &self,
        ctx: &azure_core::http::Context,
        request: &mut azure_core::http::Request,
        next: &[Arc<dyn Policy>],
    ) -> PolicyResult {
        let response = next[0].send(ctx, request, &next[1..]).await?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let raw = response.try_into_raw_response().await?;
        #[derive(serde::Deserialize, Default)]
        #[serde(default)]
        struct EntraError {
            error: String,
            error_description: String,
            error_codes: Vec<i64>,
        }
        let body: EntraError = serde_json::from_slice(raw.body().as_ref()).unwrap_or_default();
        let codes: Vec<String> = body.error_codes.iter().map(i64::to_string).collect();
        let message = if body.error_description.is_empty() {
            format!("{} {}", u16::from(status), body.error)
        } else {
            errors::first_line(&body.error_description)
        };
        Err(azure_core::Error::with_message(
            azure_core::error::ErrorKind::HttpResponse {
                status,
                error_code: (!codes.is_empty()).then(|| codes.join(",")),
                raw_response: Some(Box::new(raw)),
            },
            message,
        ))
    }
}

/// The workload identity's assertion: the projected service account token,
/// read at every token request (the credential caches the Entra token, so
/// that is once per token lifetime) and checked like at start-up.
///
/// Instead of the SDK's `WorkloadIdentityCredential`, which sends the file
/// as it is (a trailing newline included) and keeps it for 10 minutes.
#[derive(Debug)]
struct FederatedTokenFile(std::path::PathBuf);

#[async_trait]
impl ClientAssertion for FederatedTokenFile {
    async fn secret(
        &self,
        _: Option<azure_core::http::ClientMethodOptions<'_>>,
    ) -> azure_core::Result<String> {
        // On a blocking thread, one read of the file at a time: a hung
        // file holds one thread, not one more per token request.
        let read = crate::credential_file::read_text_blocking(&self.0).await;
        let message = match config::federated_token(&self.0, read) {
            Ok(token) => return Ok(token),
            Err(message) => message,
        };
        Err(azure_core::Error::with_message(
            azure_core::error::ErrorKind::Credential,
            format!("federated token file {message}"),
        ))
    }
}

/// Validate the settings and build the provider (no network I/O).
pub async fn build(config: &AzureConfig, key: &str) -> Result<Arc<dyn Provider>, ConfigError> {
    let process_env = |name: &str| std::env::var(name).ok();
    Ok(Arc::new(AzureProvider::new(config, key, &process_env)?))
}

pub struct AzureProvider {
    client: SecretClient,
    /// The client's credential, refreshed in the background once a lookup
    /// has used it (see [`keep_token_fresh`]).
    credential: Arc<dyn TokenCredential>,
    token_scope: String,
    keeper: std::sync::OnceLock<tokio::task::AbortHandle>,
    /// The token's expiry and when the keeper first saw it, for metrics.
    seen: Seen,
    /// The vault's base URL, for messages.
    vault: String,
    identity: String,
    fix_hint: &'static str,
    /// Where tokens come from, for messages.
    authority: String,
    timeout: Duration,
}

impl std::fmt::Debug for AzureProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureProvider")
            .field("vault", &self.vault)
            .field("identity", &self.identity)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl AzureProvider {
    pub fn new(
        config: &AzureConfig,
        key: &str,
        process_env: crate::EnvLookup<'_>,
    ) -> Result<Self, ConfigError> {
        let valid = config.validate(key, process_env)?;

        // One HTTP client for the vault and the token endpoint: our timeouts,
        // the system's roots plus ca_file, no redirects (as the SDK's own).
        let http = reqwest::Client::builder()
            .connect_timeout(valid.timeout)
            .timeout(valid.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .tls_certs_merge(valid.ca_certs)
            .build()
            .map_err(|err| ConfigError::new(key, format!("cannot set up HTTPS: {err}")))?;
        let authority_base = valid.authority_host.as_str().trim_end_matches('/');
        let mut cloud = CustomConfiguration::default();
        // Always set: otherwise the SDK reads AZURE_AUTHORITY_HOST behind our back.
        cloud.authority_host = authority_base.to_string();
        let client_options = ClientOptions {
            transport: Some(Transport::new(Arc::new(http))),
            // One attempt: the plugin retries, within its deadline
            // (plugin/src/tuning.rs).
            retry: RetryOptions::none(),
            cloud: Some(Arc::new(CloudConfiguration::Custom(cloud))),
            ..Default::default()
        };

        // The token endpoint's pipeline: the same, plus readable Entra errors.
        let entra_options = ClientOptions {
            per_try_policies: vec![Arc::new(EntraErrors)],
            ..client_options.clone()
        };
        let credential_key = format!("{key}.credential");
        let sdk_error = |err: azure_core::Error| {
            ConfigError::new(&credential_key, errors::first_line(&err.to_string()))
        };
        let (credential, authority): (Arc<dyn TokenCredential>, String) = match &valid.credential {
            ValidCredential::ClientSecret {
                tenant_id,
                client_id,
                secret,
            } => (
                ClientSecretCredential::new(
                    tenant_id,
                    client_id.clone(),
                    secret.expose_secret().to_string().into(),
                    Some(ClientSecretCredentialOptions {
                        client_options: entra_options,
                    }),
                )
                .map_err(sdk_error)?,
                format!("{authority_base}/{tenant_id}"),
            ),
            ValidCredential::WorkloadIdentity {
                tenant_id,
                client_id,
                token_file,
            } => (
                ClientAssertionCredential::new(
                    tenant_id.clone(),
                    client_id.clone(),
                    FederatedTokenFile(token_file.clone()),
                    Some(ClientAssertionCredentialOptions {
                        client_options: entra_options,
                    }),
                )
                .map_err(sdk_error)?,
                format!("{authority_base}/{tenant_id}"),
            ),
            ValidCredential::ManagedIdentity(id) => {
                let user_assigned_id = match id {
                    ManagedId::System => None,
                    ManagedId::ClientId(id) => Some(UserAssignedId::ClientId(id.clone())),
                    ManagedId::ObjectId(id) => Some(UserAssignedId::ObjectId(id.clone())),
                    ManagedId::ResourceId(id) => Some(UserAssignedId::ResourceId(id.clone())),
                };
                (
                    ManagedIdentityCredential::new(Some(ManagedIdentityCredentialOptions {
                        user_assigned_id,
                        client_options: client_options.clone(),
                    }))
                    .map_err(sdk_error)?,
                    "the managed identity endpoint".to_string(),
                )
            }
        };

        let vault = valid.vault_url.as_str().trim_end_matches('/').to_string();
        let token_scope = token_scope(&valid.vault_url);
        let client = SecretClient::new(
            valid.vault_url.as_str(),
            credential.clone(),
            Some(SecretClientOptions {
                client_options,
                // Never turned off: a vault's challenge must name its own domain.
                verify_challenge_resource: Some(true),
                ..Default::default()
            }),
        )
        .map_err(|err| {
            ConfigError::new(
                format!("{key}.vault_url"),
                errors::first_line(&err.to_string()),
            )
        })?;

        Ok(Self {
            client,
            credential,
            token_scope,
            keeper: std::sync::OnceLock::new(),
            seen: Seen::default(),
            vault,
            identity: valid.credential.describe(),
            fix_hint: valid.credential.fix_hint(),
            authority,
            timeout: valid.timeout,
        })
    }

    /// One GET, one attempt within `timeout`: the plugin decides whether
    /// and when to ask again (`Retry-After` included); see the module docs.
    async fn get(
        &self,
        name: &str,
        version: Option<&str>,
        target: &str,
    ) -> Result<Secret, ProviderError> {
        let cx = Context {
            vault: &self.vault,
            target,
            identity: &self.identity,
            fix_hint: self.fix_hint,
            authority: &self.authority,
        };
        let options = SecretClientGetSecretOptions {
            secret_version: version.map(str::to_string),
            ..Default::default()
        };
        let outcome =
            tokio::time::timeout(self.timeout, self.client.get_secret(name, Some(options))).await;
        match outcome {
            Err(_elapsed) => Err(ProviderError::unavailable(format!(
                "no answer from vault {} (or its token endpoint) within the {:?} timeout",
                self.vault, self.timeout
            ))),
            Ok(Ok(response)) => {
                // The credential works: from now on it is kept fresh.
                self.keeper.get_or_init(|| {
                    let credential = Arc::downgrade(&self.credential);
                    let scope = self.token_scope.clone();
                    let vault = self.vault.clone();
                    let seen = self.seen.clone();
                    tokio::spawn(keep_token_fresh(credential, scope, vault, seen)).abort_handle()
                });
                response.into_model().map_err(|err| {
                    ProviderError::unavailable(format!(
                        "vault {} sent an unreadable answer for {target}: {}",
                        self.vault,
                        errors::first_line(&err.to_string())
                    ))
                    .without_retry()
                })
            }
            Ok(Err(err)) => Err(errors::classify(&err, &cx).into_error()),
        }
    }
}

impl Drop for AzureProvider {
    fn drop(&mut self) {
        if let Some(keeper) = self.keeper.get() {
            keeper.abort();
        }
    }
}

/// The scope Key Vault's challenge asks tokens for: the vault's domain
/// without the vault's own name (`https://vault.azure.net/.default` for
/// `https://<name>.vault.azure.net`, likewise in sovereign clouds).
fn token_scope(vault_url: &azure_core::http::Url) -> String {
    let host = vault_url.host_str().unwrap_or_default();
    let domain = host.split_once('.').map_or(host, |(_, rest)| rest);
    format!("https://{domain}/.default")
}

/// The token's expiry as the keeper last saw it. The SDK fetches tokens
/// itself: a new expiry is counted as renewed when the keeper first sees it
/// (at most [`REFRESH_LEAD`] after the SDK fetched it, usually at once).
#[derive(Clone, Default)]
struct Seen(Arc<std::sync::Mutex<Option<crate::Credential>>>);

impl Seen {
    fn get(&self) -> Option<crate::Credential> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn token(&self, expires_at: std::time::SystemTime) {
        let mut held = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // The same token again (within a second of rounding): not renewed.
        let same = held.and_then(|c| c.expires_at).is_some_and(|before| {
            before
                .duration_since(expires_at)
                .or_else(|e| Ok::<_, ()>(e.duration()))
                .is_ok_and(|gap| gap < Duration::from_secs(2))
        });
        if !same {
            *held = Some(crate::Credential {
                expires_at: Some(expires_at),
                renewed_at: Some(std::time::SystemTime::now()),
            });
        }
    }
}

/// `azure_identity` fetches a new token only when a caller asks for one
/// that expires within 5 minutes. Asking at [`REFRESH_LEAD`] before expiry
/// renews it then, off the request path; a lookup finds a fresh token.
const REFRESH_LEAD: Duration = Duration::from_secs(4 * 60);

/// Keep the credential's token for `scope` fresh until the provider is
/// dropped (the task is aborted then, and `credential` no longer upgrades).
async fn keep_token_fresh(
    credential: std::sync::Weak<dyn TokenCredential>,
    scope: String,
    vault: String,
    seen: Seen,
) {
    let mut failures: u32 = 0;
    loop {
        let Some(current) = credential.upgrade() else {
            return;
        };
        let wait = match current.get_token(&[&scope], None).await {
            Ok(token) => {
                failures = 0;
                let left = token.expires_on - azure_core::time::OffsetDateTime::now_utc();
                let left = Duration::try_from(left).unwrap_or_default();
                // Checked: the lifetime is the token endpoint's number.
                if let Some(expires_at) = std::time::SystemTime::now().checked_add(left) {
                    seen.token(expires_at);
                }
                tracing::debug!(%vault, expires_in_secs = left.as_secs(), "azure: token fresh");
                // Never sooner than every 10 s: a token already inside the
                // window (a very short lifetime) must not make this spin.
                left.saturating_sub(REFRESH_LEAD)
                    .max(Duration::from_secs(10))
            }
            Err(err) => {
                failures = failures.saturating_add(1);
                let wait = crate::backoff::after_failures(failures);
                tracing::warn!(
                    %vault,
                    retry_secs = wait.as_secs(),
                    error = %crate::text::shown(&errors::first_line(&err.to_string())),
                    "azure: refreshing the token in the background failed"
                );
                wait
            }
        };
        drop(current);
        tokio::time::sleep(wait).await;
    }
}

/// Key Vault object names: 1-127 characters of 0-9, a-z, A-Z and '-'.
fn check_name(name: &str) -> Result<(), ProviderError> {
    let valid = (1..=127).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(ProviderError::Invalid(format!(
            "'{name}' is not a Key Vault secret name (1-127 letters, digits and '-'); set vaultbridge.path to the secret's name in the vault"
        )))
    }
}

/// Version ids are 32 hexadecimal characters; anything that is not
/// alphanumeric would change the request path.
fn check_version(version: &str) -> Result<(), ProviderError> {
    if !version.is_empty()
        && version.len() <= 64
        && version.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        Ok(())
    } else {
        Err(ProviderError::Invalid(format!(
            "'{version}' is not a Key Vault version id (32 hexadecimal characters); fix or remove vaultbridge.version"
        )))
    }
}

#[async_trait]
impl Provider for AzureProvider {
    /// Key Vault names are case-insensitive: `PROD-db` is `prod-db`.
    fn policy_name(&self, path: &crate::SecretPath) -> Result<String, ProviderError> {
        Ok(path.path().to_ascii_lowercase())
    }

    fn kind(&self) -> &'static str {
        "azure"
    }

    fn credential(&self) -> Option<crate::Credential> {
        self.seen.get()
    }

    async fn fetch(&self, secret: SecretRef<'_>) -> Result<SecretValue, ProviderError> {
        check_name(secret.path)?;
        if let Some(version) = secret.version {
            check_version(version)?;
        }
        let target = match secret.version {
            Some(version) => format!("secret '{}' version {version}", secret.path),
            None => format!("secret '{}'", secret.path),
        };
        let secret_answer = self.get(secret.path, secret.version, &target).await?;
        let value = secret_answer.value.ok_or_else(|| {
            ProviderError::NotFound(format!("{target} in vault {} has no value", self.vault))
        })?;
        Ok(SecretValue::new(value.into_bytes()))
    }

    /// The version id of the secret's current version. Key Vault has no
    /// call that names the current version without its value: the value
    /// read along is dropped here, unused.
    async fn current_version(
        &self,
        path: &crate::SecretPath,
    ) -> Result<crate::Version, ProviderError> {
        check_name(path)?;
        let target = format!("secret '{path}'");
        let current = self.get(path, None, &target).await?;
        let id = current
            .id
            .as_deref()
            .and_then(|id| id.rsplit('/').next())
            .filter(|version| check_version(version).is_ok())
            .ok_or_else(|| {
                ProviderError::unavailable(format!(
                    "vault {} answered for {target} without a version id",
                    self.vault
                ))
                .without_retry()
            })?
            .to_string();
        let created = current
            .attributes
            .and_then(|attributes| attributes.created)
            .map(std::time::SystemTime::from);
        Ok(crate::Version {
            pin: Some(id.clone()),
            id,
            created,
        })
    }

    /// Reads a secret name that no one uses: "not found" proves the vault
    /// answered and accepted our token, without reading any value.
    async fn check(&self) -> Result<String, ProviderError> {
        let probe = "vaultbridge-check-probe";
        match self.get(probe, None, &format!("secret '{probe}'")).await {
            Ok(_) | Err(ProviderError::NotFound(_)) => Ok(format!(
                "vault {} is reachable and accepts the token of {}",
                self.vault, self.identity
            )),
            Err(ProviderError::Denied(_)) => Ok(format!(
                "vault {} is reachable and accepts the token of {} (which may not read the probe secret: check it may read yours)",
                self.vault, self.identity
            )),
            Err(other) => Err(other),
        }
    }
}

#[cfg(test)]
mod tests;
