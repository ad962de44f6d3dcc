//! The `aws` backend: AWS Secrets Manager, one client per
//! `[providers.<name>] type = "aws"` table.
//!
//! - Credentials come from the SDK's standard chain (environment, shared
//!   config/credentials files and profiles, web identity token file, ECS
//!   container credentials, EC2 instance metadata), optionally wrapped in an
//!   STS AssumeRole per instance (`role_arn`, `external_id`, `session_name`).
//! - The endpoint is the region's, or `endpoint_url`, or the standard
//!   `AWS_ENDPOINT_URL_SECRETS_MANAGER` / `AWS_ENDPOINT_URL` (VPC endpoints,
//!   emulators).
//! - `vaultbridge.path` is a secret name or a full or partial ARN;
//!   `vaultbridge.version` is a VersionId or a staging label ([`VersionSelector`]).
//! - `SecretString` comes back as is, `SecretBinary` as its bytes.
//! - Every call is bounded by `timeout`, the SDK's own retries included.
//!
//! Building does no network I/O: credentials are resolved on first use.
//! The table and its variables live in `config`; names, ARNs and versions
//! in `addressing`; error mapping and scrubbing in `errors`; the checks of
//! every value that becomes part of a request (keys, tokens, URLs, ARNs) in
//! `validate`; credentials kept fresh in `fresh`.

mod addressing;
mod config;
mod errors;
mod fresh;
mod validate;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::sts::AssumeRoleProvider;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_secretsmanager::config::{Region, SharedCredentialsProvider};
use secrecy::{ExposeSecret, SecretString};

use crate::duration::Timeout;
use crate::{ConfigError, EnvLookup, Provider, ProviderError, SecretRef, SecretValue};
pub use addressing::VersionSelector;
use addressing::parse_arn;
pub use config::{AwsConfig, DEFAULT_SESSION_NAME, VARIABLES};

/// The provider: a Secrets Manager client bound to one region.
pub struct AwsProvider {
    client: aws_sdk_secretsmanager::Client,
    region: String,
    /// For messages: where requests go.
    endpoint: String,
    timeout: Duration,
    role_arn: Option<String>,
    /// The credentials signing requests: their expiry, for metrics.
    seen: fresh::Seen,
}

impl std::fmt::Debug for AwsProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsProvider")
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Validate an `aws` table and build its client. No network I/O.
pub async fn build(config: &AwsConfig, key: &str) -> Result<Arc<dyn Provider>, ConfigError> {
    Ok(Arc::new(AwsProvider::new(config, key).await?))
}

fn valid_region(region: &str) -> bool {
    !region.is_empty()
        && region.len() <= 64
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && region.contains('-')
}

/// Fail at start-up, naming the key, when a configured profile is missing
/// from the shared files (the SDK would otherwise fail on first use).
async fn validate_profile(profile: &str, key: &str) -> Result<(), ConfigError> {
    // The standard file locations, with their environment overrides.
    let files = Default::default();
    let fs = aws_types::os_shim_internal::Fs::real();
    let env = aws_types::os_shim_internal::Env::real();
    let set = aws_config::profile::load(&fs, &env, &files, Some(profile.to_string().into()))
        .await
        .map_err(|err| ConfigError::new(key, format!("cannot read the shared AWS files: {err}")))?;
    let Some(found) = set.get_profile(profile) else {
        return Err(ConfigError::new(
            key,
            format!(
                "no profile '{profile}' in the shared config/credentials files \
                 (AWS_CONFIG_FILE, AWS_SHARED_CREDENTIALS_FILE, default ~/.aws/config and ~/.aws/credentials)"
            ),
        ));
    };
    validate::profile_keys(|field| found.get(field).map(str::to_string), profile)
        .map_err(|m| ConfigError::new(key, m))
}

/// Where requests go, for messages only (the SDK resolves the same order).
/// `endpoint_url` is the checked, trimmed one; the variables were checked by
/// [`validate::env_settings`] (never a URL with credentials in a message).
fn describe_endpoint(endpoint_url: Option<&str>, region: &str, env: EnvLookup<'_>) -> String {
    let from_env = ["AWS_ENDPOINT_URL_SECRETS_MANAGER", "AWS_ENDPOINT_URL"]
        .into_iter()
        .find_map(|name| env(name).filter(|v| !v.is_empty()));
    endpoint_url
        .map(str::to_string)
        .or(from_env)
        .unwrap_or_else(|| format!("https://secretsmanager.{region}.amazonaws.com"))
}

fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// `sdk` with its credentials provider wrapped in [`validate::Checked`],
/// and expiring credentials kept fresh ([`fresh::KeptFresh`]).
/// `seen` learns the expiry of what it obtains.
fn checked(sdk: aws_config::SdkConfig, seen: &fresh::Seen) -> aws_config::SdkConfig {
    match sdk.credentials_provider() {
        Some(inner) => {
            let checked = SharedCredentialsProvider::new(validate::Checked(inner));
            sdk.into_builder()
                .credentials_provider(SharedCredentialsProvider::new(fresh::KeptFresh::new(
                    checked,
                    seen.clone(),
                )))
                .build()
        }
        None => sdk,
    }
}

impl AwsProvider {
    /// Validate `config` and build the client; credentials come from the
    /// SDK's standard chain (what the plugin always uses).
    pub async fn new(config: &AwsConfig, key: &str) -> Result<Self, ConfigError> {
        Self::build(config, key, None, &process_env).await
    }

    /// Like [`AwsProvider::new`], but with fixed keys instead of the standard
    /// chain (they still act as the source credentials of `role_arn`). For
    /// embedding and for tests that must not depend on the process
    /// environment; the plugin itself never calls it.
    pub async fn with_static_credentials(
        config: &AwsConfig,
        key: &str,
        access_key_id: &str,
        secret_access_key: &SecretString,
    ) -> Result<Self, ConfigError> {
        let credentials = aws_sdk_secretsmanager::config::Credentials::new(
            access_key_id,
            secret_access_key.expose_secret(),
            None,
            None,
            "vaultbridge-static",
        );
        Self::build(
            config,
            key,
            Some(SharedCredentialsProvider::new(credentials)),
            &process_env,
        )
        .await
    }

    /// `env`: the process environment, which the SDK also reads by itself.
    async fn build(
        config: &AwsConfig,
        key: &str,
        credentials: Option<SharedCredentialsProvider>,
        env: EnvLookup<'_>,
    ) -> Result<Self, ConfigError> {
        let region = config.region.trim();
        if !valid_region(region) {
            return Err(ConfigError::new(
                format!("{key}.region"),
                format!("'{region}' is not an AWS region name (like eu-west-1)"),
            ));
        }
        // Every string we pass on is trimmed here and used trimmed below.
        fn trimmed(value: &Option<String>) -> Option<&str> {
            value.as_deref().map(str::trim)
        }
        let endpoint_url = trimmed(&config.endpoint_url);
        let profile = trimmed(&config.profile);
        let role_arn = trimmed(&config.role_arn);
        let session_name = trimmed(&config.session_name);
        let external_id = config
            .external_id
            .as_ref()
            .map(|id| id.expose_secret().trim());
        if let Some(url) = endpoint_url {
            validate::endpoint_url(url)
                .map_err(|m| ConfigError::new(format!("{key}.endpoint_url"), m))?;
        }
        validate::env_settings(env)?;
        if let Some(profile) = profile {
            validate::profile_name(profile)
                .map_err(|m| ConfigError::new(format!("{key}.profile"), m))?;
            validate_profile(profile, &format!("{key}.profile")).await?;
        }
        match role_arn {
            Some(arn) => {
                validate::role_arn(arn)
                    .map_err(|m| ConfigError::new(format!("{key}.role_arn"), m))?;
            }
            None => {
                for (field, set) in [
                    ("external_id", external_id.is_some()),
                    ("session_name", session_name.is_some()),
                ] {
                    if set {
                        return Err(ConfigError::new(
                            format!("{key}.{field}"),
                            "only applies with role_arn; set role_arn or remove it",
                        ));
                    }
                }
            }
        }
        if let Some(name) = session_name {
            validate::session_name(name)
                .map_err(|m| ConfigError::new(format!("{key}.session_name"), m))?;
        }
        if let Some(id) = external_id {
            validate::external_id(id)
                .map_err(|m| ConfigError::new(format!("{key}.external_id"), m))?;
        }
        // The environment's keys, trimmed and checked, stand in for the SDK's
        // environment provider (first in its chain, so nothing else changes).
        let credentials = match credentials {
            Some(credentials) => Some(credentials),
            None => validate::env_credentials(env)?.map(SharedCredentialsProvider::new),
        };
        let timeout = Timeout::resolve(config.timeout.as_ref(), &format!("{key}.timeout"))?;

        // One attempt, within `timeout`: the plugin owns retries (and knows
        // the deadline). The STS calls of an assumed role inherit the same
        // bounds.
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(timeout)
            .read_timeout(timeout)
            .operation_attempt_timeout(timeout)
            .operation_timeout(timeout)
            .build();
        let retries = RetryConfig::disabled();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(region.to_string()))
            .timeout_config(timeouts)
            .retry_config(retries);
        if let Some(profile) = profile {
            loader = loader.profile_name(profile);
        }
        if let Some(credentials) = credentials {
            loader = loader.credentials_provider(credentials);
        }
        // Checked twice with a role: the source credentials sign the STS call.
        // What signs the requests is the last one checked: its expiry is shown.
        let mut seen = fresh::Seen::default();
        let mut sdk = checked(loader.load().await, &seen);
        if let Some(arn) = role_arn {
            let mut role = AssumeRoleProvider::builder(arn)
                .session_name(session_name.unwrap_or(DEFAULT_SESSION_NAME));
            if let Some(id) = external_id {
                role = role.external_id(id);
            }
            let role = role.configure(&sdk).build().await;
            seen = fresh::Seen::default();
            sdk = checked(
                sdk.into_builder()
                    .credentials_provider(SharedCredentialsProvider::new(role))
                    .build(),
                &seen,
            );
        }
        // `endpoint_url` applies to Secrets Manager only, never to STS.
        let mut client_config = aws_sdk_secretsmanager::config::Builder::from(&sdk);
        if let Some(url) = endpoint_url {
            client_config = client_config.endpoint_url(url);
        }
        Ok(AwsProvider {
            client: aws_sdk_secretsmanager::Client::from_conf(client_config.build()),
            region: region.to_string(),
            endpoint: describe_endpoint(endpoint_url, region, env),
            timeout,
            role_arn: role_arn.map(str::to_string),
            seen,
        })
    }

    fn context<'a>(
        &'a self,
        path: Option<&'a str>,
        version: Option<VersionSelector<'a>>,
    ) -> errors::Context<'a> {
        errors::Context {
            path,
            version,
            region: &self.region,
            endpoint: &self.endpoint,
            timeout: self.timeout,
            role: self.role_arn.as_deref(),
            action: "secretsmanager:GetSecretValue",
        }
    }

    /// A name, or an ARN of a Secrets Manager secret in our region.
    fn check_addressable(&self, path: &str) -> Result<(), ProviderError> {
        if path.trim().is_empty() {
            return Err(ProviderError::Invalid(
                "the secret name or ARN is empty".into(),
            ));
        }
        if path.starts_with("arn:") {
            match parse_arn(path) {
                Some(arn) if arn.service == "secretsmanager" => {
                    if arn.region != self.region {
                        return Err(ProviderError::Invalid(format!(
                            "the ARN is in region {}, but this provider reads region {}; \
                             configure a provider for {} and select it with vaultbridge.provider",
                            arn.region, self.region, arn.region
                        )));
                    }
                }
                _ => {
                    return Err(ProviderError::Invalid(format!(
                        "'{path}' is not a Secrets Manager ARN \
                         (arn:aws:secretsmanager:<region>:<account>:secret:<name>)"
                    )));
                }
            }
        }
        Ok(())
    }

    /// A hard bound over the SDK's own timeouts, in case a credentials
    /// provider (instance metadata, a credential process) ignores them.
    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = T>,
    ) -> Result<T, ProviderError> {
        tokio::time::timeout(self.timeout + Duration::from_millis(500), call)
            .await
            .map_err(|_| errors::no_answer(&self.context(None, None)))
    }
}

#[async_trait]
impl Provider for AwsProvider {
    fn credential(&self) -> Option<crate::Credential> {
        self.seen.get()
    }

    /// A name as written; an ARN (which may name another account, and
    /// whose suffix cannot be told from a name's) is refused under a policy.
    fn policy_name(&self, path: &crate::SecretPath) -> Result<String, ProviderError> {
        if parse_arn(path.as_str()).is_some() {
            return Err(ProviderError::Invalid(
                "an access policy is configured, and it judges secret names: address this secret by its name, not its ARN".into(),
            ));
        }
        Ok(path.path().to_string())
    }

    fn kind(&self) -> &'static str {
        "aws"
    }

    async fn fetch(&self, secret: SecretRef<'_>) -> Result<SecretValue, ProviderError> {
        let path: &str = secret.path;
        self.check_addressable(path)?;
        let version = secret.version.map(VersionSelector::parse).transpose()?;
        let mut request = self.client.get_secret_value().secret_id(path);
        request = match version {
            Some(VersionSelector::Id(id)) => request.version_id(id),
            Some(VersionSelector::Stage(stage)) => request.version_stage(stage),
            None => request,
        };
        let context = self.context(Some(path), version);
        let mut output = self
            .bounded(request.send())
            .await?
            .map_err(|err| errors::map(&err, &context))?;
        if let Some(text) = output.secret_string.take() {
            return Ok(SecretValue::new(text.into_bytes()));
        }
        if let Some(blob) = output.secret_binary.take() {
            return Ok(SecretValue::new(blob.into_inner()));
        }
        Err(ProviderError::NotFound(format!(
            "secret '{path}' ({}) in region {} has neither SecretString nor SecretBinary",
            version.map_or_else(|| "version stage AWSCURRENT".to_string(), |v| v.describe()),
            self.region
        )))
    }

    /// The version holding `AWSCURRENT`, from `DescribeSecret` (no value
    /// is read; the principal needs that action). Its time is the secret's
    /// `LastChangedDate`, no earlier than the version's creation: at worst
    /// an unpinned secret whose tags changed is rolled once more than
    /// needed. (`ListSecretVersionIds` has each version's `CreatedDate`,
    /// but moto answers it with the current time.)
    async fn current_version(
        &self,
        path: &crate::SecretPath,
    ) -> Result<crate::Version, ProviderError> {
        let path: &str = path;
        self.check_addressable(path)?;
        let mut context = self.context(Some(path), None);
        context.action = "secretsmanager:DescribeSecret";
        let output = self
            .bounded(self.client.describe_secret().secret_id(path).send())
            .await?
            .map_err(|err| errors::map(&err, &context))?;
        let current = output.version_ids_to_stages().and_then(|versions| {
            versions
                .iter()
                .find(|(_, stages)| stages.iter().any(|stage| stage == "AWSCURRENT"))
                .map(|(id, _)| id.clone())
        });
        let Some(id) = current else {
            return Err(ProviderError::NotFound(format!(
                "secret '{path}' in region {} has no version labelled AWSCURRENT",
                self.region
            )));
        };
        let changed = output
            .last_changed_date()
            .or(output.created_date())
            .and_then(|t| std::time::SystemTime::try_from(*t).ok());
        Ok(crate::Version {
            pin: Some(id.clone()),
            id,
            created: changed,
        })
    }

    /// One `ListSecrets` call for at most one entry: it proves the endpoint
    /// answers and the credentials are accepted without reading a value. A
    /// principal allowed only `GetSecretValue` gets AccessDenied, which still
    /// proves authentication, so that counts as success.
    async fn check(&self) -> Result<String, ProviderError> {
        let context = self.context(None, None);
        let answer = self
            .bounded(self.client.list_secrets().max_results(1).send())
            .await?;
        let reached = format!(
            "Secrets Manager at {} (region {}) accepted our credentials",
            self.endpoint, self.region
        );
        match answer {
            Ok(_) => Ok(format!("{reached} (ListSecrets allowed)")),
            Err(err)
                if matches!(
                    errors::code_of(&err).as_deref(),
                    Some("AccessDeniedException" | "AccessDenied")
                ) =>
            {
                Ok(format!(
                    "{reached} (ListSecrets is not allowed, which is fine: only GetSecretValue is needed)"
                ))
            }
            Err(err) => Err(errors::map(&err, &context)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::addressing::ArnParts;
    use super::*;

    fn config(toml_text: &str) -> AwsConfig {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn version_rule() {
        let uuid = "a1b2c3d4-0000-4111-8222-123456789abc";
        assert_eq!(
            VersionSelector::parse(uuid).unwrap(),
            VersionSelector::Id(uuid)
        );
        assert_eq!(
            VersionSelector::parse("AWSPREVIOUS").unwrap(),
            VersionSelector::Stage("AWSPREVIOUS")
        );
        assert_eq!(
            VersionSelector::parse("blue-green").unwrap(),
            VersionSelector::Stage("blue-green")
        );
        let token = "my-client-request-token-0000000001";
        assert_eq!(
            VersionSelector::parse(&format!("id:{token}")).unwrap(),
            VersionSelector::Id(token)
        );
        assert_eq!(
            VersionSelector::parse(&format!("stage:{uuid}")).unwrap(),
            VersionSelector::Stage(uuid)
        );
        assert!(matches!(
            VersionSelector::parse("id:short"),
            Err(ProviderError::Invalid(_))
        ));
        assert!(matches!(
            VersionSelector::parse("stage:"),
            Err(ProviderError::Invalid(_))
        ));
        // Not quite a UUID: a stage.
        assert_eq!(
            VersionSelector::parse("a1b2c3d4-0000-4111-8222-123456789abg").unwrap(),
            VersionSelector::Stage("a1b2c3d4-0000-4111-8222-123456789abg")
        );
    }

    #[test]
    fn arns_are_split() {
        assert_eq!(
            parse_arn("arn:aws:secretsmanager:eu-west-1:123456789012:secret:db-AbCdEf"),
            Some(ArnParts {
                service: "secretsmanager",
                region: "eu-west-1"
            })
        );
        assert_eq!(parse_arn("db/password"), None);
        assert_eq!(
            parse_arn("arn:aws:iam::123456789012:role/x").map(|a| a.service),
            Some("iam")
        );
    }

    #[test]
    fn from_env_needs_a_region() {
        let none = |_: &str| None;
        assert!(AwsConfig::from_env(&none).is_none());
        let default_only =
            |name: &str| (name == "AWS_DEFAULT_REGION").then(|| "eu-west-1".to_string());
        assert_eq!(
            AwsConfig::from_env(&default_only).unwrap().region,
            "eu-west-1"
        );
        let both = |name: &str| match name {
            "AWS_REGION" => Some("us-east-2".to_string()),
            "AWS_DEFAULT_REGION" => Some("eu-west-1".to_string()),
            _ => None,
        };
        assert_eq!(AwsConfig::from_env(&both).unwrap().region, "us-east-2");
        let empty = |name: &str| (name == "AWS_REGION").then(String::new);
        assert!(AwsConfig::from_env(&empty).is_none());
    }

    #[test]
    fn debug_output_hides_the_external_id() {
        let c = config(
            r#"region = "eu-west-1"
               role_arn = "arn:aws:iam::123456789012:role/reader"
               external_id = "very-private-external-id""#,
        );
        let shown = format!("{c:?}");
        assert!(!shown.contains("very-private"), "{shown}");
        assert!(
            shown.contains("[redacted]") && shown.contains("role/reader"),
            "{shown}"
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = toml::from_str::<AwsConfig>("region = \"eu-west-1\"\nrole = \"x\"").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    async fn build_err(toml_text: &str) -> ConfigError {
        AwsProvider::new(&config(toml_text), "providers.prod")
            .await
            .unwrap_err()
    }

    #[tokio::test]
    async fn validation_names_the_key() {
        let err = build_err(r#"region = "Europe""#).await;
        assert_eq!(err.key, "providers.prod.region");
        let err = build_err("region = \"eu-west-1\"\nendpoint_url = \"localhost:4566\"").await;
        assert_eq!(err.key, "providers.prod.endpoint_url");
        let err =
            build_err("region = \"eu-west-1\"\nendpoint_url = \"http://user:hunter2@localhost\"")
                .await;
        assert_eq!(err.key, "providers.prod.endpoint_url");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let err = build_err("region = \"eu-west-1\"\nrole_arn = \"reader\"").await;
        assert_eq!(err.key, "providers.prod.role_arn");
        let err = build_err("region = \"eu-west-1\"\nexternal_id = \"abc\"").await;
        assert_eq!(err.key, "providers.prod.external_id");
        let err = build_err(
            "region = \"eu-west-1\"\nrole_arn = \"arn:aws:iam::1:role/r\"\nsession_name = \"has space\"",
        )
        .await;
        assert_eq!(err.key, "providers.prod.session_name");
        for bad in [
            "0", "1e-10", "0.099", "300.5", "nan", "inf", "\"0s\"", "\"10\"",
        ] {
            let err = build_err(&format!("region = \"eu-west-1\"\ntimeout = {bad}")).await;
            assert_eq!(err.key, "providers.prod.timeout", "{bad}");
        }
        let err =
            build_err("region = \"eu-west-1\"\nprofile = \"surely-not-a-profile-7f3a\"").await;
        assert_eq!(err.key, "providers.prod.profile");
        assert!(err.message.contains("surely-not-a-profile-7f3a"), "{err}");
    }

    #[tokio::test]
    async fn hostile_values_are_refused_naming_the_key_and_padding_is_trimmed() {
        let err =
            build_err("region = \"eu-west-1\"\nendpoint_url = \"http://127.0.0.1:9/\\r\\nX: 1\"")
                .await;
        assert_eq!(err.key, "providers.prod.endpoint_url");
        assert!(!err.message.contains('\n'), "{err}");
        let err =
            build_err("region = \"eu-west-1\"\nrole_arn = \"arn:aws:iam::1:role/r\\nX\"").await;
        assert_eq!(err.key, "providers.prod.role_arn");
        assert!(!err.message.contains('\n'), "{err}");
        let err = build_err(
            "region = \"eu-west-1\"\nrole_arn = \"arn:aws:iam::1:role/r\"\nexternal_id = \"ext-secret\\n\\u0000\"",
        )
        .await;
        assert_eq!(err.key, "providers.prod.external_id");
        assert!(!err.message.contains("ext-secret"), "{err}");
        let err = build_err("region = \"eu-west-1\"\nprofile = \"a\\nb\"").await;
        assert_eq!(err.key, "providers.prod.profile");

        // Surrounding whitespace of what we pass on ourselves is trimmed.
        let provider = AwsProvider::new(
            &config(
                "region = \" eu-west-1\"\nendpoint_url = \" http://127.0.0.1:9 \"\n\
                 role_arn = \"arn:aws:iam::123456789012:role/reader\\n\"\nsession_name = \" ci \"",
            ),
            "providers.prod",
        )
        .await
        .unwrap();
        assert_eq!(provider.endpoint, "http://127.0.0.1:9");
        assert_eq!(
            provider.role_arn.as_deref(),
            Some("arn:aws:iam::123456789012:role/reader")
        );
    }

    #[tokio::test]
    async fn builds_without_network() {
        let provider = AwsProvider::new(
            &config(
                r#"region = "eu-west-1"
                   endpoint_url = "http://127.0.0.1:9"
                   role_arn = "arn:aws:iam::123456789012:role/reader"
                   session_name = "ci"
                   timeout = "2.5s""#,
            ),
            "providers.prod",
        )
        .await
        .unwrap();
        assert_eq!(provider.timeout, Duration::from_millis(2500));
        assert_eq!(provider.endpoint, "http://127.0.0.1:9");
        assert_eq!(provider.kind(), "aws");
    }

    #[tokio::test]
    async fn refuses_arns_of_other_regions_and_services() {
        let provider = AwsProvider::new(
            &config("region = \"eu-west-1\"\nendpoint_url = \"http://127.0.0.1:9\""),
            "providers.prod",
        )
        .await
        .unwrap();
        let fetch = async |path: &str| {
            let path = crate::SecretPath::parse(path)
                .map_err(|err| ProviderError::Invalid(err.to_string()))?;
            provider
                .fetch(SecretRef {
                    path: &path,
                    version: None,
                })
                .await
        };
        let err = fetch("arn:aws:secretsmanager:us-east-1:123456789012:secret:db-AbCdEf")
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ProviderError::Invalid(m) if m.contains("us-east-1") && m.contains("eu-west-1")),
            "{err}"
        );
        let err = fetch("arn:aws:ssm:eu-west-1:123456789012:parameter/db")
            .await
            .unwrap_err();
        assert!(matches!(err, ProviderError::Invalid(_)), "{err}");
        let err = fetch("").await.unwrap_err();
        assert!(matches!(err, ProviderError::Invalid(_)), "{err}");
    }
}
