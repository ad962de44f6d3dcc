//! The `[providers.<name>] type = "aws"` table and the variables that make
//! one from the environment.

use secrecy::SecretString;
use serde::{Deserialize, Deserializer};

use crate::duration::Timeout;
use crate::{EnvLookup, Variable};

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
