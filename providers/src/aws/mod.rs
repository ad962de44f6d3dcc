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
//! Error mapping and scrubbing live in [`errors`]; the checks of every value
//! that becomes part of a request (keys, tokens, URLs, ARNs) in [`validate`].

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
use serde::{Deserialize, Deserializer};

use crate::duration::Timeout;
use crate::{ConfigError, EnvLookup, Provider, ProviderError, SecretRef, SecretValue, Variable};

/// The session name of an assumed role when `session_name` is not set; it
/// shows in CloudTrail as the caller.
pub const DEFAULT_SESSION_NAME: &str = "vaultbridge";

/// One `[providers.<name>] type = "aws"` table.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsConfig {
    /// The region the secrets live in, e.g. `eu-west-1`.
    pub region: String,
    /// Overrides the Secrets Manager endpoint (a VPC endpoint, an emulator).
    /// Without it the standard `AWS_ENDPOINT_URL_SECRETS_MANAGER` /
    /// `AWS_ENDPOINT_URL` apply, else the region's public endpoint.
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// A profile of the shared config/credentials files (`AWS_CONFIG_FILE`,
    /// `AWS_SHARED_CREDENTIALS_FILE`, default `~/.aws/`).
    #[serde(default)]
    pub profile: Option<String>,
    /// Assume this IAM role (STS AssumeRole) with the chain's credentials.
    #[serde(default)]
    pub role_arn: Option<String>,
    /// The external id the role's trust policy requires.
    #[serde(default, deserialize_with = "optional_secret")]
    pub external_id: Option<SecretString>,
    /// The assumed role's session name (default [`DEFAULT_SESSION_NAME`]).
    #[serde(default)]
    pub session_name: Option<String>,
    /// How long one attempt may take (the SDK's own retries are off): "10s".
    #[serde(default)]
    pub timeout: Option<Timeout>,
}

fn optional_secret<'de, D: Deserializer<'de>>(de: D) -> Result<Option<SecretString>, D::Error> {
    Ok(Option::<String>::deserialize(de)?.map(SecretString::from))
}

impl std::fmt::Debug for AwsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsConfig")
            .field("region", &self.region)
            .field("endpoint_url", &self.endpoint_url)
            .field("profile", &self.profile)
            .field("role_arn", &self.role_arn)
            .field(
                "external_id",
                &self.external_id.as_ref().map(|_| "[redacted]"),
            )
            .field("session_name", &self.session_name)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The variables the aws provider reads: the region itself, the rest
/// through the SDK's standard chain (checked by `validate`).
pub const VARIABLES: &[Variable] = &[
    Variable {
        name: "AWS_REGION",
        meaning: "AWS region; configures a provider named aws",
    },
    Variable {
        name: "AWS_DEFAULT_REGION",
        meaning: "AWS region when AWS_REGION is not set",
    },
    Variable {
        name: "AWS_PROFILE",
        meaning: "profile in the shared AWS config/credentials files",
    },
    Variable {
        name: "AWS_ACCESS_KEY_ID",
        meaning: "static AWS access key id (prefer instance roles or files in the mount)",
    },
    Variable {
        name: "AWS_SECRET_ACCESS_KEY",
        meaning: "static AWS secret key (visible in docker plugin inspect)",
    },
    Variable {
        name: "AWS_SESSION_TOKEN",
        meaning: "AWS session token for temporary credentials",
    },
    Variable {
        name: "AWS_ENDPOINT_URL",
        meaning: "AWS endpoint override (all services)",
    },
    Variable {
        name: "AWS_ENDPOINT_URL_SECRETS_MANAGER",
        meaning: "Secrets Manager endpoint override",
    },
    Variable {
        name: "AWS_ENDPOINT_URL_STS",
        meaning: "STS endpoint override (assume-role, web identity)",
    },
    Variable {
        name: "AWS_SHARED_CREDENTIALS_FILE",
        meaning: "AWS credentials file (path inside the plugin, e.g. /etc/vaultbridge/aws/credentials)",
    },
    Variable {
        name: "AWS_CONFIG_FILE",
        meaning: "AWS config file (path inside the plugin)",
    },
    Variable {
        name: "AWS_ROLE_ARN",
        meaning: "role to assume with a web identity token",
    },
    Variable {
        name: "AWS_WEB_IDENTITY_TOKEN_FILE",
        meaning: "web identity token file (path inside the plugin)",
    },
    Variable {
        name: "AWS_CONTAINER_AUTHORIZATION_TOKEN",
        meaning: "authorization token for the ECS/EKS container credentials endpoint",
    },
];

impl AwsConfig {
    /// `AWS_REGION`, else `AWS_DEFAULT_REGION`, makes a provider named `aws`.
    /// Everything else (credentials, profile, endpoint) the SDK reads from
    /// the standard variables itself.
    pub fn from_env(env: EnvLookup<'_>) -> Option<Self> {
        let region = ["AWS_REGION", "AWS_DEFAULT_REGION"]
            .into_iter()
            .find_map(|name| env(name).filter(|value| !value.trim().is_empty()))?;
        Some(AwsConfig {
            region: region.trim().to_string(),
            endpoint_url: None,
            profile: None,
            role_arn: None,
            external_id: None,
            session_name: None,
            timeout: None,
        })
    }
}

/// What `vaultbridge.version` selects.
///
/// The rule: `id:<x>` is VersionId `x` and `stage:<x>` is staging label `x`,
/// explicitly; otherwise a value shaped like a UUID (8-4-4-4-12 hexadecimal
/// digits, any case — what Secrets Manager generates) is a VersionId, and
/// anything else is a staging label (`AWSCURRENT`, `AWSPREVIOUS`, custom).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionSelector<'a> {
    Id(&'a str),
    Stage(&'a str),
}

impl<'a> VersionSelector<'a> {
    pub fn parse(version: &'a str) -> Result<Self, ProviderError> {
        let selector = if let Some(id) = version.strip_prefix("id:") {
            VersionSelector::Id(id)
        } else if let Some(stage) = version.strip_prefix("stage:") {
            VersionSelector::Stage(stage)
        } else if looks_like_uuid(version) {
            VersionSelector::Id(version)
        } else {
            VersionSelector::Stage(version)
        };
        match selector {
            VersionSelector::Id(id) if !(32..=64).contains(&id.len()) => {
                Err(ProviderError::Invalid(format!(
                    "vaultbridge.version: a VersionId has 32 to 64 characters, '{id}' has {}",
                    id.len()
                )))
            }
            VersionSelector::Stage(stage) if stage.is_empty() || stage.len() > 256 => {
                Err(ProviderError::Invalid(format!(
                    "vaultbridge.version: a staging label has 1 to 256 characters, this one has {}",
                    stage.len()
                )))
            }
            selector => Ok(selector),
        }
    }

    pub(crate) fn describe(&self) -> String {
        match self {
            VersionSelector::Id(id) => format!("version id {id}"),
            VersionSelector::Stage(stage) => format!("version stage {stage}"),
        }
    }
}

fn looks_like_uuid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(group, len)| group.len() == len && group.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The parts of a Secrets Manager ARN we check before asking AWS.
#[derive(Debug, PartialEq, Eq)]
struct ArnParts<'a> {
    service: &'a str,
    region: &'a str,
}

/// `arn:<partition>:secretsmanager:<region>:<account>:secret:<name>[-XXXXXX]`.
fn parse_arn(path: &str) -> Option<ArnParts<'_>> {
    let mut parts = path.splitn(7, ':');
    if parts.next()? != "arn" {
        return None;
    }
    let _partition = parts.next()?;
    let service = parts.next()?;
    let region = parts.next()?;
    Some(ArnParts { service, region })
}

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
        }
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
