//! The `gcp` backend: Google Cloud Secret Manager, through Google's official
//! Rust client (`google-cloud-secretmanager-v1` + `google-cloud-auth`,
//! REST over rustls).
//!
//! - `vaultbridge.path` is a secret id (in the provider's `project`, and its
//!   `location` for regional secrets) or a full name, `projects/P/secrets/S`
//!   or `projects/P/locations/L/secrets/S`; `vaultbridge.version` a version
//!   number or an alias (`latest` without it). The value comes back as
//!   stored; its CRC32C, when Google sends one, is checked.
//! - Credentials ([`config`]): a service account key (the client signs its
//!   own short-lived token, no token endpoint is asked), workload identity
//!   federation (the subject token file exchanged at Google's STS, re-read
//!   at every exchange), or the metadata server. The client caches the
//!   token and fetches a new one before it expires.
//! - One attempt per lookup, bounded by `timeout` (token included): the
//!   client's own retry loop is replaced by `NeverRetry`; the plugin decides
//!   whether to ask again ([`errors`]).
//!
//! `build` asks no server: a service account key is tried locally (it signs
//! a token), the other credentials are made on the first lookup or
//! `vaultbridge check` ([`Renewing`], which also replaces credentials that
//! Google's client gave up on).

mod config;
mod errors;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use google_cloud_auth::credentials::Credentials;
use google_cloud_auth::credentials::subject_token::{
    Builder as SubjectTokenBuilder, SubjectToken, SubjectTokenProvider,
};
use google_cloud_gax::retry_policy::NeverRetry;
use google_cloud_secretmanager_v1::client::SecretManagerService;

pub use config::{CredentialConfig, GcpConfig, VARIABLES};
use config::{ValidCredential, Validated};
use errors::Context;

use crate::{ConfigError, Provider, ProviderError, SecretPath, SecretRef, SecretValue};

/// The scope of every token: Secret Manager accepts no narrower one.
const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// Set on every client and credential, so that a key file's or the
/// metadata server's universe never sends a token elsewhere.
const UNIVERSE: &str = "googleapis.com";

/// Validate the settings and build the provider (no network I/O).
pub async fn build(config: &GcpConfig, key: &str) -> Result<Arc<dyn Provider>, ConfigError> {
    Ok(Arc::new(GcpProvider::new(config, key).await?))
}

pub struct GcpProvider {
    client: SecretManagerService,
    credentials: Credentials,
    project: Option<String>,
    location: Option<String>,
    endpoint: String,
    identity: String,
    token_source: String,
    fix_hint: &'static str,
    timeout: Duration,
}

impl std::fmt::Debug for GcpProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcpProvider")
            .field("endpoint", &self.endpoint)
            .field("project", &self.project)
            .field("identity", &self.identity)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The subject token file could not be used: the file and what is wrong,
/// never its content.
#[derive(Debug)]
pub(crate) struct SubjectTokenError(String);

impl std::fmt::Display for SubjectTokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SubjectTokenError {}

impl google_cloud_auth::errors::SubjectTokenProviderError for SubjectTokenError {
    fn is_transient(&self) -> bool {
        false
    }
}

/// Workload identity federation's subject token, read at every exchange
/// (the client caches the Google token, so once per token lifetime) and
/// checked like at start-up.
#[derive(Debug)]
struct SubjectTokenFile {
    path: std::path::PathBuf,
    json_field: Option<String>,
}

impl SubjectTokenProvider for SubjectTokenFile {
    type Error = SubjectTokenError;

    async fn subject_token(&self) -> Result<SubjectToken, Self::Error> {
        // On a blocking thread, one read of the file at a time: a hung
        // file holds one thread, not one more per token exchange.
        let read = crate::credential_file::read_text_blocking(&self.path).await;
        config::subject_token(&self.path, read, self.json_field.as_deref())
            .map(|token| SubjectTokenBuilder::new(token).build())
            .map_err(SubjectTokenError)
    }
}

fn credentials(valid: &ValidCredential) -> Result<Credentials, String> {
    use google_cloud_auth::credentials::{external_account, mds, service_account};
    let built = match valid {
        ValidCredential::ServiceAccountKey { key, .. } => {
            service_account::Builder::new(key.0.clone())
                .with_access_specifier(service_account::AccessSpecifier::from_scopes([SCOPE]))
                .with_universe_domain(UNIVERSE)
                .build()
        }
        ValidCredential::ExternalAccount {
            audience,
            subject_token_type,
            token_url,
            token_file,
            json_field,
            ..
        } => external_account::ProgrammaticBuilder::new(Arc::new(SubjectTokenFile {
            path: token_file.clone(),
            json_field: json_field.clone(),
        }))
        .with_audience(audience.clone())
        .with_subject_token_type(subject_token_type.clone())
        .with_token_url(token_url.clone())
        .with_scopes([SCOPE])
        .with_universe_domain(UNIVERSE)
        // One attempt: the plugin retries (plugin/src/tuning.rs).
        .with_retry_policy(NeverRetry)
        .build(),
        ValidCredential::MetadataServer { endpoint } => mds::Builder::default()
            .with_endpoint(endpoint.clone())
            .with_universe_domain(UNIVERSE)
            .with_retry_policy(NeverRetry)
            .build(),
    };
    built.map_err(|err| errors::first_line(&crate::text::cause_chain(&err)))
}

/// Google's credentials fetch their first token as soon as they are made,
/// then keep it fresh in a background task (every 10 s after a transient
/// failure) — but after a refused token (a wrong subject token, a metadata
/// server without a service account) that task ends and the credentials
/// answer that refusal forever, even once the cause is fixed. This wrapper
/// makes them on first use (so `build` asks no server) and makes new ones
/// after a refusal: the next lookup asks again, at most once per
/// [`RENEW_AFTER`] (lookups, not a loop, drive it).
struct Renewing {
    credential: ValidCredential,
    held: std::sync::Mutex<Held>,
}

#[derive(Default)]
struct Held {
    current: Option<Credentials>,
    made: Option<std::time::Instant>,
    /// `current` answered a refusal: replace it once it is old enough.
    refused: bool,
}

const RENEW_AFTER: Duration = Duration::from_secs(1);

impl std::fmt::Debug for Renewing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renewing")
            .field("credential", &self.credential.describe())
            .finish_non_exhaustive()
    }
}

impl Renewing {
    fn current(&self) -> Result<Credentials, google_cloud_gax::error::CredentialsError> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let due = held.refused && held.made.is_none_or(|made| made.elapsed() >= RENEW_AFTER);
        if let Some(current) = &held.current
            && !due
        {
            return Ok(current.clone());
        }
        let made = credentials(&self.credential)
            .map_err(|m| google_cloud_gax::error::CredentialsError::from_msg(false, m))?;
        held.current = Some(made.clone());
        held.made = Some(std::time::Instant::now());
        held.refused = false;
        Ok(made)
    }

    /// After a refusal: new credentials on the next use that comes at
    /// least [`RENEW_AFTER`] after these were made.
    fn refused(&self) {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).refused = true;
    }
}

impl google_cloud_auth::credentials::CredentialsProvider for Renewing {
    async fn headers(
        &self,
        extensions: http::Extensions,
    ) -> Result<
        google_cloud_auth::credentials::CacheableResource<http::HeaderMap>,
        google_cloud_gax::error::CredentialsError,
    > {
        let current = self.current()?;
        let result = current.headers(extensions).await;
        if let Err(err) = &result
            && !err.is_transient()
        {
            self.refused();
        }
        result
    }

    async fn universe_domain(&self) -> Option<String> {
        Some(UNIVERSE.to_string())
    }
}

impl GcpProvider {
    pub async fn new(config: &GcpConfig, key: &str) -> Result<Self, ConfigError> {
        let Validated {
            project,
            location,
            endpoint,
            timeout,
            credential,
        } = config.validate(key)?;
        let credential_key = format!("{key}.credential");
        let (identity, token_source, fix_hint) = (
            credential.describe(),
            credential.token_source(),
            credential.fix_hint(),
        );
        let key_file = match &credential {
            ValidCredential::ServiceAccountKey { file, .. } => Some(file.clone()),
            _ => None,
        };
        let credentials = Credentials::from(Renewing {
            credential,
            held: Default::default(),
        });
        if let Some(file) = key_file {
            // Signing a token is local: a key that cannot sign stops the
            // start-up here instead of failing every lookup.
            credentials
                .headers(Default::default())
                .await
                .map_err(|err| {
                    ConfigError::new(
                        format!("{credential_key}.key_file"),
                        format!(
                            "{}: the private key cannot sign: {}",
                            file.display(),
                            errors::first_line(&crate::text::cause_chain(&err))
                        ),
                    )
                })?;
        }
        let client = SecretManagerService::builder()
            .with_endpoint(endpoint.clone())
            .with_credentials(credentials.clone())
            .with_universe_domain(UNIVERSE)
            // One attempt: the plugin retries, within its deadline.
            .with_retry_policy(NeverRetry)
            .with_attempt_timeout(timeout)
            .build()
            .await
            .map_err(|err| {
                ConfigError::new(
                    format!("{key}.endpoint"),
                    errors::first_line(&crate::text::cause_chain(&err)),
                )
            })?;
        Ok(Self {
            client,
            credentials,
            project,
            location,
            endpoint,
            identity,
            token_source,
            fix_hint,
            timeout,
        })
    }

    /// The secret's full name (`projects/P/[locations/L/]secrets/S`) for a
    /// `vaultbridge.path`, checked part by part.
    fn secret_name(&self, path: &str) -> Result<String, ProviderError> {
        let parts: Vec<&str> = path.split('/').collect();
        let (project, location, secret) = match parts.as_slice() {
            [secret] => {
                let project = self.project.as_deref().ok_or_else(|| {
                    ProviderError::Invalid(format!(
                        "'{}' is a secret id but this provider has no project: set project in its table (or GOOGLE_CLOUD_PROJECT), or give the full name projects/<project>/secrets/<id> in vaultbridge.path",
                        crate::text::shown(path)
                    ))
                })?;
                (project, self.location.as_deref(), *secret)
            }
            ["projects", project, "secrets", secret] => (*project, None, *secret),
            [
                "projects",
                project,
                "locations",
                location,
                "secrets",
                secret,
            ] => (*project, Some(*location), *secret),
            [.., "versions", _] => {
                return Err(ProviderError::Invalid(format!(
                    "'{}' names a version in vaultbridge.path: give the secret's name there and the version in vaultbridge.version",
                    crate::text::shown(path)
                )));
            }
            _ => {
                return Err(ProviderError::Invalid(format!(
                    "'{}' is not a secret id or a name projects/<project>/secrets/<id> (regional: projects/<project>/locations/<location>/secrets/<id>); fix vaultbridge.path",
                    crate::text::shown(path)
                )));
            }
        };
        config::check_project(project)
            .map_err(|m| ProviderError::Invalid(format!("vaultbridge.path: {m}")))?;
        check_secret_id(secret)?;
        if let Some(location) = location {
            config::check_location(location)
                .map_err(|m| ProviderError::Invalid(format!("vaultbridge.path: {m}")))?;
        }
        // One client, one endpoint: regional secrets live behind their
        // region's endpoint only, global ones behind the global endpoint.
        match (location, self.location.as_deref()) {
            (Some(wanted), Some(served)) if wanted != served => {
                return Err(ProviderError::Invalid(format!(
                    "'{}' is a regional secret in {wanted}, but this provider reads {served}: use a provider with location = \"{wanted}\"",
                    crate::text::shown(path)
                )));
            }
            (Some(wanted), None) => {
                return Err(ProviderError::Invalid(format!(
                    "'{}' is a regional secret in {wanted}: regional secrets are read through their region's endpoint; use a provider with location = \"{wanted}\"",
                    crate::text::shown(path)
                )));
            }
            (None, Some(served)) => {
                return Err(ProviderError::Invalid(format!(
                    "'{}' is a global secret, but this provider reads regional secrets in {served}: use a provider without location",
                    crate::text::shown(path)
                )));
            }
            _ => {}
        }
        Ok(match location {
            Some(location) => format!("projects/{project}/locations/{location}/secrets/{secret}"),
            None => format!("projects/{project}/secrets/{secret}"),
        })
    }

    /// One access call, one attempt within `timeout`.
    async fn access(&self, name: &str, target: &str) -> Result<Vec<u8>, ProviderError> {
        let cx = Context {
            target,
            endpoint: &self.endpoint,
            identity: &self.identity,
            token_source: &self.token_source,
            fix_hint: self.fix_hint,
        };
        let call = self
            .client
            .access_secret_version()
            .set_name(name.to_string())
            .send();
        let response = match tokio::time::timeout(self.timeout, call).await {
            Err(_elapsed) => {
                return Err(ProviderError::unavailable(format!(
                    "no answer from Secret Manager at {} (or {}) within the {:?} timeout",
                    self.endpoint, self.token_source, self.timeout
                )));
            }
            Ok(Err(err)) => return Err(errors::classify(&err, &cx)),
            Ok(Ok(response)) => response,
        };
        let payload = response.payload.ok_or_else(|| {
            ProviderError::NotFound(format!(
                "{target} has no payload in Secret Manager's answer"
            ))
        })?;
        if let Some(expected) = payload.data_crc32c
            && i64::from(crc32c(&payload.data)) != expected
        {
            return Err(ProviderError::unavailable(format!(
                "the value of {target} arrived damaged (its CRC32C does not match Google's)"
            )));
        }
        Ok(payload.data.to_vec())
    }
}

/// Secret ids: 1-255 letters, digits, '-' and '_'.
fn check_secret_id(id: &str) -> Result<(), ProviderError> {
    if (1..=255).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        Ok(())
    } else {
        Err(ProviderError::Invalid(format!(
            "'{}' is not a secret id (1-255 letters, digits, '-' and '_'); fix vaultbridge.path",
            crate::text::shown(id)
        )))
    }
}

/// A version number (`3`) or an alias (`prod`, `latest`).
fn check_version(version: &str) -> Result<(), ProviderError> {
    let number = (1..=19).contains(&version.len())
        && !version.starts_with('0')
        && version.bytes().all(|b| b.is_ascii_digit());
    let alias = (1..=63).contains(&version.len())
        && version.as_bytes()[0].is_ascii_alphabetic()
        && version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if number || alias {
        Ok(())
    } else {
        Err(ProviderError::Invalid(format!(
            "'{}' is not a Secret Manager version: a number (3) or an alias (latest, prod); fix or remove vaultbridge.version",
            crate::text::shown(version)
        )))
    }
}

/// CRC32C (Castagnoli), which Secret Manager sends as `dataCrc32c`.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[async_trait]
impl Provider for GcpProvider {
    fn kind(&self) -> &'static str {
        "gcp"
    }

    /// The full name: `db` and `projects/<project>/secrets/db` are one
    /// secret. (A project's number and its id are two spellings the plugin
    /// cannot tell apart without asking Google: the policy sees either as
    /// written.)
    fn policy_name(&self, path: &SecretPath) -> Result<String, ProviderError> {
        self.secret_name(path.path())
    }

    async fn fetch(&self, secret: SecretRef<'_>) -> Result<SecretValue, ProviderError> {
        let name = self.secret_name(secret.path.path())?;
        let version = secret.version.unwrap_or("latest");
        check_version(version)?;
        let target = format!("secret {name} version {version}");
        let value = self
            .access(&format!("{name}/versions/{version}"), &target)
            .await?;
        Ok(SecretValue::new(value))
    }

    /// Reads a secret id that no one uses: "not found" (or "denied", which
    /// is what Google says of a missing secret to who may not list) proves
    /// Secret Manager answered and accepted the token.
    async fn check(&self) -> Result<String, ProviderError> {
        let Some(project) = self.project.as_deref() else {
            // No project to ask about: the token alone.
            return match tokio::time::timeout(
                self.timeout,
                self.credentials.headers(Default::default()),
            )
            .await
            {
                Ok(Ok(_)) => Ok(format!(
                    "{} got a token (no project configured: Secret Manager itself was not asked)",
                    self.identity
                )),
                Ok(Err(err)) => Err(errors::classify(
                    &google_cloud_gax::error::Error::authentication(err),
                    &Context {
                        target: "a token",
                        endpoint: &self.endpoint,
                        identity: &self.identity,
                        token_source: &self.token_source,
                        fix_hint: self.fix_hint,
                    },
                )),
                Err(_) => Err(ProviderError::unavailable(format!(
                    "no token from {} within the {:?} timeout",
                    self.token_source, self.timeout
                ))),
            };
        };
        let name = match self.location.as_deref() {
            Some(location) => {
                format!("projects/{project}/locations/{location}/secrets/vaultbridge-check-probe")
            }
            None => format!("projects/{project}/secrets/vaultbridge-check-probe"),
        };
        match self
            .access(
                &format!("{name}/versions/latest"),
                &format!("secret {name}"),
            )
            .await
        {
            Ok(_) | Err(ProviderError::NotFound(_)) => Ok(format!(
                "Secret Manager at {} is reachable and accepts the token of {}",
                self.endpoint, self.identity
            )),
            Err(ProviderError::Denied(_)) => Ok(format!(
                "Secret Manager at {} is reachable and accepts the token of {} (which may not read the probe secret: check it may read yours)",
                self.endpoint, self.identity
            )),
            Err(other) => Err(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hung subject token file holds one blocking thread, not the
    /// runtime and not the pool, however many exchanges time out on it.
    #[test]
    fn hung_subject_token_reads_do_not_take_the_blocking_pool() {
        crate::credential_file::hung::cancelled_reads_leave_the_pool(|path| async move {
            let file = SubjectTokenFile {
                path,
                json_field: None,
            };
            let _ = file.subject_token().await;
        });
    }

    #[test]
    fn crc32c_is_castagnoli() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn versions_are_numbers_or_aliases() {
        for good in ["1", "42", "latest", "prod", "blue_green-2"] {
            assert_eq!(check_version(good), Ok(()), "{good}");
        }
        for bad in ["0", "01", "-1", "1.2", "a/b", "2x", "", "x y"] {
            assert!(check_version(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn secret_ids() {
        assert_eq!(check_secret_id("db_password-2"), Ok(()));
        for bad in ["", "a.b", "a b", &"x".repeat(256)] {
            assert!(check_secret_id(bad).is_err(), "{bad:?}");
        }
    }
}
