//! `[providers.<name>] type = "azure"`: the settings, the no-config-file
//! environment path, and their validation (no network I/O).

use std::path::{Path, PathBuf};
use std::time::Duration;

use azure_core::http::Url;
use secrecy::zeroize::Zeroizing;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::duration::Timeout;
use crate::{ConfigError, EnvLookup, Variable};

/// The public cloud's Microsoft Entra authority.
pub const PUBLIC_AUTHORITY_HOST: &str = "https://login.microsoftonline.com";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzureConfig {
    /// `https://<vault>.vault.azure.net` (or a sovereign cloud's vault domain).
    pub vault_url: String,
    /// How the plugin authenticates to Microsoft Entra ID.
    pub credential: CredentialConfig,
    /// The Entra authority, for sovereign clouds (`https://login.microsoftonline.us`,
    /// `https://login.chinacloudapi.cn`). Default: the public cloud.
    #[serde(default)]
    pub authority_host: Option<String>,
    /// Extra CA certificates (PEM) trusted in addition to the system's, for
    /// private endpoints behind TLS-inspecting proxies.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// How long one attempt may take, token acquisition included: "10s".
    #[serde(default)]
    pub timeout: Option<Timeout>,
}

/// `[providers.<name>.credential]`, selected by its `type`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum CredentialConfig {
    /// A service principal and its client secret.
    ClientSecret {
        tenant_id: String,
        client_id: String,
        /// A file holding the secret. Without it, `AZURE_CLIENT_SECRET`.
        #[serde(default)]
        client_secret_file: Option<PathBuf>,
        /// Set only by the environment path (`AZURE_CLIENT_SECRET`).
        #[serde(skip)]
        client_secret: Option<SecretString>,
    },
    /// Workload identity federation (AKS): a projected service-account token
    /// exchanged for an Entra token.
    WorkloadIdentity {
        tenant_id: String,
        client_id: String,
        /// The projected token. Without it, `AZURE_FEDERATED_TOKEN_FILE`.
        #[serde(default)]
        token_file: Option<PathBuf>,
    },
    /// The managed identity of the VM / App Service the plugin runs on:
    /// system-assigned, or user-assigned when one id is given.
    ManagedIdentity {
        #[serde(default)]
        client_id: Option<String>,
        #[serde(default)]
        object_id: Option<String>,
        #[serde(default)]
        resource_id: Option<String>,
    },
}

/// The variables [`AzureConfig::from_env`] reads.
pub const VARIABLES: &[Variable] = &[
    Variable {
        name: "AZURE_KEYVAULT_URL",
        meaning: "Key Vault URL, https://<name>.vault.azure.net; configures a provider named azure",
    },
    Variable {
        name: "AZURE_TENANT_ID",
        meaning: "Microsoft Entra tenant id",
    },
    Variable {
        name: "AZURE_CLIENT_ID",
        meaning: "application (client) id",
    },
    Variable {
        name: "AZURE_CLIENT_SECRET",
        meaning: "client secret (visible in docker plugin inspect: prefer a file in the mount)",
    },
    Variable {
        name: "AZURE_FEDERATED_TOKEN_FILE",
        meaning: "federated (workload identity) token file (path inside the plugin)",
    },
    Variable {
        name: "AZURE_AUTHORITY_HOST",
        meaning: "Entra authority host, default https://login.microsoftonline.com",
    },
];

impl AzureConfig {
    /// `AZURE_KEYVAULT_URL` makes a provider named `azure`. The credential
    /// follows the Azure SDKs' environment conventions, in the order
    /// `DefaultAzureCredential` tries them: `AZURE_CLIENT_SECRET` (with
    /// `AZURE_TENANT_ID`, `AZURE_CLIENT_ID`) -> client secret;
    /// `AZURE_FEDERATED_TOKEN_FILE` -> workload identity; otherwise the managed
    /// identity (user-assigned when `AZURE_CLIENT_ID` is set).
    /// `AZURE_AUTHORITY_HOST` selects a sovereign cloud.
    pub fn from_env(env: EnvLookup<'_>) -> Option<Self> {
        let var = |name: &str| env(name).filter(|value| !value.is_empty());
        let vault_url = var("AZURE_KEYVAULT_URL")?;
        let tenant_id = var("AZURE_TENANT_ID").unwrap_or_default();
        let client_id = var("AZURE_CLIENT_ID");
        let credential = if let Some(secret) = var("AZURE_CLIENT_SECRET") {
            CredentialConfig::ClientSecret {
                tenant_id,
                client_id: client_id.unwrap_or_default(),
                client_secret_file: None,
                client_secret: Some(SecretString::from(secret)),
            }
        } else if let Some(file) = var("AZURE_FEDERATED_TOKEN_FILE") {
            CredentialConfig::WorkloadIdentity {
                tenant_id,
                client_id: client_id.unwrap_or_default(),
                token_file: Some(file.into()),
            }
        } else {
            CredentialConfig::ManagedIdentity {
                client_id,
                object_id: None,
                resource_id: None,
            }
        };
        Some(AzureConfig {
            vault_url,
            credential,
            authority_host: var("AZURE_AUTHORITY_HOST"),
            ca_file: None,
            timeout: None,
        })
    }
}

/// The settings after validation, ready to build clients from.
pub(super) struct Validated {
    pub vault_url: Url,
    pub authority_host: Url,
    pub timeout: Duration,
    pub ca_certs: Vec<reqwest::Certificate>,
    pub credential: ValidCredential,
}

pub(super) enum ValidCredential {
    ClientSecret {
        tenant_id: String,
        client_id: String,
        secret: SecretString,
    },
    WorkloadIdentity {
        tenant_id: String,
        client_id: String,
        token_file: PathBuf,
    },
    ManagedIdentity(ManagedId),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ManagedId {
    System,
    ClientId(String),
    ObjectId(String),
    ResourceId(String),
}

impl ValidCredential {
    /// Who we are, for error messages: never a secret.
    pub fn describe(&self) -> String {
        match self {
            ValidCredential::ClientSecret {
                tenant_id,
                client_id,
                ..
            } => format!("client secret credential (tenant {tenant_id}, client_id {client_id})"),
            ValidCredential::WorkloadIdentity {
                tenant_id,
                client_id,
                token_file,
            } => format!(
                "workload identity (tenant {tenant_id}, client_id {client_id}, token file {})",
                token_file.display()
            ),
            ValidCredential::ManagedIdentity(ManagedId::System) => {
                "system-assigned managed identity".to_string()
            }
            ValidCredential::ManagedIdentity(ManagedId::ClientId(id)) => {
                format!("user-assigned managed identity (client_id {id})")
            }
            ValidCredential::ManagedIdentity(ManagedId::ObjectId(id)) => {
                format!("user-assigned managed identity (object_id {id})")
            }
            ValidCredential::ManagedIdentity(ManagedId::ResourceId(id)) => {
                format!("user-assigned managed identity (resource_id {id})")
            }
        }
    }

    /// What to check when the token endpoint refuses us.
    pub fn fix_hint(&self) -> &'static str {
        match self {
            ValidCredential::ClientSecret { .. } => {
                "check tenant_id, client_id and the client secret (client_secret_file or AZURE_CLIENT_SECRET)"
            }
            ValidCredential::WorkloadIdentity { .. } => {
                "check tenant_id, client_id and the federated credential (issuer and subject) of the app registration"
            }
            ValidCredential::ManagedIdentity(_) => {
                "check that the host has this managed identity assigned"
            }
        }
    }
}

impl AzureConfig {
    /// Check every setting; errors name the key (`providers.kv.vault_url`).
    /// `process_env` is consulted only for the documented fallbacks
    /// (`AZURE_CLIENT_SECRET`, `AZURE_FEDERATED_TOKEN_FILE`) of a config file.
    pub(super) fn validate(
        &self,
        key: &str,
        process_env: EnvLookup<'_>,
    ) -> Result<Validated, ConfigError> {
        let vault_url = parse_https_url(&self.vault_url, &format!("{key}.vault_url"))?;
        if !matches!(vault_url.path(), "" | "/")
            || vault_url.query().is_some()
            || vault_url.fragment().is_some()
        {
            return Err(ConfigError::new(
                format!("{key}.vault_url"),
                format!(
                    "'{}' must be the vault's base URL only, like https://myvault.vault.azure.net",
                    self.vault_url.trim()
                ),
            ));
        }
        let authority_text = self
            .authority_host
            .as_deref()
            .unwrap_or(PUBLIC_AUTHORITY_HOST);
        let authority_host = parse_https_url(authority_text, &format!("{key}.authority_host"))?;
        // The SDK joins `/<tenant>/oauth2/v2.0/token` onto the host, replacing
        // any path and query: refuse them instead of silently dropping them.
        if !matches!(authority_host.path(), "" | "/")
            || authority_host.query().is_some()
            || authority_host.fragment().is_some()
        {
            return Err(ConfigError::new(
                format!("{key}.authority_host"),
                format!(
                    "'{}' must be the authority's base URL only, like {PUBLIC_AUTHORITY_HOST}",
                    authority_text.trim()
                ),
            ));
        }
        let timeout = Timeout::resolve(self.timeout.as_ref(), &format!("{key}.timeout"))?;
        let ca_certs = match &self.ca_file {
            None => Vec::new(),
            Some(path) => crate::tls::ca_bundle(path, &format!("{key}.ca_file"))?,
        };
        let credential = self
            .credential
            .validate(&format!("{key}.credential"), process_env)?;
        Ok(Validated {
            vault_url,
            authority_host,
            timeout,
            ca_certs,
            credential,
        })
    }
}

impl CredentialConfig {
    fn validate(
        &self,
        key: &str,
        process_env: EnvLookup<'_>,
    ) -> Result<ValidCredential, ConfigError> {
        let required = |value: &str, field: &str, env_name: &str| {
            let value = value.trim();
            let key = format!("{key}.{field}");
            if value.is_empty() {
                return Err(ConfigError::new(
                    key,
                    format!(
                        "missing (set it, or {env_name} when configuring from the environment)"
                    ),
                ));
            }
            let kind = if field == "tenant_id" {
                IdKind::Tenant
            } else {
                IdKind::Client
            };
            check_id(value, kind).map_err(|m| ConfigError::new(key, m))?;
            Ok(value.to_string())
        };
        match self {
            CredentialConfig::ClientSecret {
                tenant_id,
                client_id,
                client_secret_file,
                client_secret,
            } => {
                let tenant_id = required(tenant_id, "tenant_id", "AZURE_TENANT_ID")?;
                let client_id = required(client_id, "client_id", "AZURE_CLIENT_ID")?;
                let file_key = format!("{key}.client_secret_file");
                let (secret, source) = match (client_secret, client_secret_file) {
                    (_, Some(path)) => (
                        read_secret_file(path, &file_key)?,
                        path.display().to_string(),
                    ),
                    (Some(secret), None) => (secret.clone(), "AZURE_CLIENT_SECRET".to_string()),
                    (None, None) => (
                        process_env("AZURE_CLIENT_SECRET")
                            .filter(|s| !s.is_empty())
                            .map(SecretString::from)
                            .ok_or_else(|| {
                                ConfigError::new(
                                    &file_key,
                                    "missing: give the file holding the client secret, or set AZURE_CLIENT_SECRET",
                                )
                            })?,
                        "AZURE_CLIENT_SECRET".to_string(),
                    ),
                };
                // Trimmed like the file's content: `docker plugin set` and
                // copy-paste leave newlines too.
                let secret = one_line_credential(secret.expose_secret())
                    .map(SecretString::from)
                    .map_err(|m| ConfigError::new(&file_key, format!("{source}: {m}")))?;
                Ok(ValidCredential::ClientSecret {
                    tenant_id,
                    client_id,
                    secret,
                })
            }
            CredentialConfig::WorkloadIdentity {
                tenant_id,
                client_id,
                token_file,
            } => {
                let tenant_id = required(tenant_id, "tenant_id", "AZURE_TENANT_ID")?;
                let client_id = required(client_id, "client_id", "AZURE_CLIENT_ID")?;
                let token_file = token_file
                    .clone()
                    .or_else(|| {
                        process_env("AZURE_FEDERATED_TOKEN_FILE")
                            .filter(|s| !s.is_empty())
                            .map(PathBuf::from)
                    })
                    .ok_or_else(|| {
                        ConfigError::new(
                            format!("{key}.token_file"),
                            "missing: give the projected service account token's path, or set AZURE_FEDERATED_TOKEN_FILE",
                        )
                    })?;
                // Read at every token request (`FederatedTokenFile`); read
                // once here so that a bad file stops the start-up.
                read_federated_token(&token_file)
                    .map_err(|m| ConfigError::new(format!("{key}.token_file"), m))?;
                Ok(ValidCredential::WorkloadIdentity {
                    tenant_id,
                    client_id,
                    token_file,
                })
            }
            CredentialConfig::ManagedIdentity {
                client_id,
                object_id,
                resource_id,
            } => {
                // They become query parameters of the identity endpoint's URL.
                let id = |value: &Option<String>, field: &str, kind: IdKind| {
                    value
                        .as_deref()
                        .map(|value| {
                            let value = value.trim();
                            check_id(value, kind)
                                .map(|()| value.to_string())
                                .map_err(|m| ConfigError::new(format!("{key}.{field}"), m))
                        })
                        .transpose()
                };
                let given: Vec<ManagedId> = [
                    id(client_id, "client_id", IdKind::Client)?.map(ManagedId::ClientId),
                    id(object_id, "object_id", IdKind::Client)?.map(ManagedId::ObjectId),
                    id(resource_id, "resource_id", IdKind::Resource)?.map(ManagedId::ResourceId),
                ]
                .into_iter()
                .flatten()
                .collect();
                match given.len() {
                    0 => Ok(ValidCredential::ManagedIdentity(ManagedId::System)),
                    1 => Ok(ValidCredential::ManagedIdentity(given[0].clone())),
                    _ => Err(ConfigError::new(
                        key,
                        "give at most one of client_id, object_id, resource_id (none: the system-assigned identity)",
                    )),
                }
            }
        }
    }
}

/// What an id becomes part of decides what it may hold.
#[derive(Clone, Copy)]
enum IdKind {
    /// The token URL's path (`{authority}/{tenant}/oauth2/v2.0/token`): a
    /// GUID or a domain name (`contoso.onmicrosoft.com`).
    Tenant,
    /// Client (application) and object ids: GUIDs (names in tests).
    Client,
    /// An ARM resource id: `/subscriptions/<id>/resourceGroups/...`.
    Resource,
}

/// One check per kind of id; the message quotes the id escaped (ids are not
/// secrets, but a newline must not forge a log line).
fn check_id(value: &str, kind: IdKind) -> Result<(), String> {
    let (allowed, what): (fn(u8) -> bool, &str) = match kind {
        IdKind::Tenant => (
            |b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.',
            "a tenant id (a GUID) or domain name: letters, digits, '-' and '.'",
        ),
        IdKind::Client => (
            |b| b.is_ascii_alphanumeric() || b"-._".contains(&b),
            "an id (a GUID): letters, digits, '-', '.' and '_'",
        ),
        IdKind::Resource => (
            |b| b.is_ascii_alphanumeric() || b"-._/()".contains(&b),
            "an ARM resource id (/subscriptions/.../userAssignedIdentities/<name>)",
        ),
    };
    // No dot segments: a tenant "." or ".." would walk the token URL's path.
    let shaped = match kind {
        IdKind::Resource => value.starts_with('/') && !value.contains(".."),
        _ => !value.starts_with('.') && !value.contains(".."),
    };
    if value.is_empty() || value.len() > 512 || !shaped || !value.bytes().all(allowed) {
        return Err(format!("'{}' is not {what}", value.escape_debug()));
    }
    Ok(())
}

/// A client secret or federated token: one line of text, trimmed. It goes
/// into the token request's form body; a control character or a second line
/// means the wrong file (a PEM, a kubeconfig) or a paste accident. Never quoted.
pub(super) fn one_line_credential(text: &str) -> Result<String, &'static str> {
    let text = text.trim();
    if text.is_empty() {
        return Err("the credential is empty");
    }
    if text.chars().any(char::is_control) {
        return Err(
            "holds more than one line or a control character: give a file holding only the credential",
        );
    }
    Ok(text.to_string())
}

/// The projected service account token, trimmed and checked; errors name
/// the file, never its content.
pub(super) fn read_federated_token(path: &Path) -> Result<String, String> {
    federated_token(path, crate::credential_file::read_text(path))
}

/// The token in `read`, the result of reading `path`.
pub(super) fn federated_token(
    path: &Path,
    read: std::io::Result<Zeroizing<String>>,
) -> Result<String, String> {
    let text = read.map_err(|err| format!("{}: {err}", path.display()))?;
    one_line_credential(&text).map_err(|m| format!("{}: {m}", path.display()))
}

fn parse_https_url(text: &str, key: &str) -> Result<Url, ConfigError> {
    let text = text.trim();
    // Before any message that quotes the URL: a password must not reach the log.
    let authority = text
        .split_once("://")
        .map_or(text, |(_, rest)| rest)
        .split(['/', '?', '#'])
        .next()
        .unwrap_or_default();
    if authority.contains('@') {
        return Err(ConfigError::new(key, "must not carry credentials"));
    }
    // Not quoted; and the URL parser would drop tabs and newlines silently.
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ConfigError::new(
            key,
            "must be a URL without spaces or control characters",
        ));
    }
    let url = Url::parse(text).map_err(|err| ConfigError::new(key, format!("'{text}': {err}")))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ConfigError::new(key, "must not carry credentials"));
    }
    if url.scheme() != "https" || url.host_str().is_none() {
        return Err(ConfigError::new(
            key,
            format!(
                "'{text}' must be an https:// URL with a host (Azure refuses tokens over plain HTTP)"
            ),
        ));
    }
    Ok(url)
}

fn read_secret_file(path: &Path, key: &str) -> Result<SecretString, ConfigError> {
    let text = crate::credential_file::read_text(path)
        .map_err(|err| ConfigError::new(key, format!("{}: {err}", path.display())))?;
    // Trimmed and checked by `one_line_credential`: files written by editors
    // and `echo` end with a newline that is not part of the secret.
    Ok(SecretString::from(text.as_str()))
}
