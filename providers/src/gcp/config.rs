//! `[providers.<name>] type = "gcp"`: the settings, the no-config-file
//! environment path, and their validation (files are read here, once, so a
//! bad one stops the start-up; no network I/O).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use crate::duration::Timeout;
use crate::{ConfigError, EnvLookup, Variable};

/// Secret Manager's global endpoint.
pub const GLOBAL_ENDPOINT: &str = "https://secretmanager.googleapis.com";
/// The metadata server of GCE, GKE, Cloud Run.
pub const METADATA_ENDPOINT: &str = "http://metadata.google.internal";
/// Google's token exchange endpoint (workload identity federation).
pub const STS_TOKEN_URL: &str = "https://sts.googleapis.com/v1/token";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcpConfig {
    /// The project of secrets addressed by their id alone (an id like
    /// `my-project` or a number). Full names (`projects/P/secrets/S`) name
    /// their own.
    #[serde(default)]
    pub project: Option<String>,
    /// A region (`europe-west1`): the provider then reads regional secrets
    /// (`projects/P/locations/L/secrets/S`) through the regional endpoint.
    #[serde(default)]
    pub location: Option<String>,
    /// The API endpoint. Default: the global one, or
    /// `https://secretmanager.<location>.rep.googleapis.com` with `location`.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// How the plugin gets its access tokens.
    pub credential: CredentialConfig,
    /// How long one attempt may take, token acquisition included: "10s".
    #[serde(default)]
    pub timeout: Option<Timeout>,
}

/// `[providers.<name>.credential]`, selected by its `type`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum CredentialConfig {
    /// A service account key (the JSON file IAM gives).
    ServiceAccountKey { key_file: PathBuf },
    /// Workload identity federation: an external-account credential file
    /// (`gcloud iam workload-identity-pools create-cred-config`) whose
    /// subject token is read from a file.
    ExternalAccount {
        credential_file: PathBuf,
        /// The token exchange endpoint, instead of the file's `token_url`.
        #[serde(default)]
        token_url: Option<String>,
    },
    /// The metadata server of the VM, GKE node or Cloud Run service: its
    /// attached service account.
    MetadataServer {
        /// Default `http://metadata.google.internal`.
        #[serde(default)]
        endpoint: Option<String>,
    },
    /// From the environment path: `GOOGLE_APPLICATION_CREDENTIALS`, a
    /// service account key or an external-account file (its `type` says).
    #[serde(skip)]
    File(PathBuf),
}

/// The variables [`GcpConfig::from_env`] reads, and those Google's client
/// reads behind any configuration.
pub const VARIABLES: &[Variable] = &[
    Variable {
        name: "GOOGLE_CLOUD_PROJECT",
        meaning: "Google Cloud project of secrets given by id; configures a provider named gcp",
    },
    Variable {
        name: "GOOGLE_APPLICATION_CREDENTIALS",
        meaning: "service account key or workload identity federation file (path inside the plugin); without it, the metadata server",
    },
    Variable {
        name: "VAULTBRIDGE_GCP_ENDPOINT",
        meaning: "Secret Manager API endpoint, default https://secretmanager.googleapis.com",
    },
    Variable {
        name: "GCE_METADATA_HOST",
        meaning: "metadata server host[:port] (read by Google's client; overrides any metadata endpoint)",
    },
    Variable {
        name: "GOOGLE_CLOUD_UNIVERSE_DOMAIN",
        meaning: "universe domain (read by Google's client; the provider pins googleapis.com, so another value fails its start-up)",
    },
];

impl GcpConfig {
    /// `GOOGLE_CLOUD_PROJECT` makes a provider named `gcp`, with
    /// `GOOGLE_APPLICATION_CREDENTIALS` (a key or an external-account file)
    /// or else the metadata server, as Google's Application Default
    /// Credentials would (without gcloud's user credentials).
    pub fn from_env(env: EnvLookup<'_>) -> Option<Self> {
        let var = |name: &str| env(name).filter(|value| !value.is_empty());
        let project = var("GOOGLE_CLOUD_PROJECT")?;
        let credential = match var("GOOGLE_APPLICATION_CREDENTIALS") {
            Some(file) => CredentialConfig::File(file.into()),
            None => CredentialConfig::MetadataServer { endpoint: None },
        };
        Some(GcpConfig {
            project: Some(project),
            location: None,
            endpoint: var("VAULTBRIDGE_GCP_ENDPOINT"),
            credential,
            timeout: None,
        })
    }
}

/// The settings after validation, ready to build clients from.
pub(super) struct Validated {
    pub project: Option<String>,
    pub location: Option<String>,
    pub endpoint: String,
    pub timeout: Duration,
    pub credential: ValidCredential,
}

#[derive(Debug)]
pub(super) enum ValidCredential {
    ServiceAccountKey {
        /// The key file's JSON, for Google's builder.
        key: SecretJson,
        client_email: String,
        file: PathBuf,
    },
    ExternalAccount {
        audience: String,
        subject_token_type: String,
        token_url: String,
        /// Where the subject token is read, at every token exchange.
        token_file: PathBuf,
        /// `text` (the whole file) or `json` with this field.
        json_field: Option<String>,
        file: PathBuf,
    },
    MetadataServer {
        endpoint: String,
    },
}

/// A parsed key file: holds a private key, so never shown.
pub(super) struct SecretJson(pub serde_json::Value);

impl std::fmt::Debug for SecretJson {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretJson(<redacted>)")
    }
}

impl ValidCredential {
    /// Who we are, for error messages: never a secret.
    pub fn describe(&self) -> String {
        match self {
            ValidCredential::ServiceAccountKey {
                client_email, file, ..
            } => format!(
                "service account {client_email} (key file {})",
                file.display()
            ),
            ValidCredential::ExternalAccount { audience, file, .. } => format!(
                "workload identity federation ({}, credential file {})",
                shown(audience),
                file.display()
            ),
            ValidCredential::MetadataServer { endpoint } => {
                format!("the metadata server's service account ({endpoint})")
            }
        }
    }

    /// Where tokens come from, for messages.
    pub fn token_source(&self) -> String {
        match self {
            ValidCredential::ServiceAccountKey { .. } => {
                "the service account key (self-signed token)".to_string()
            }
            ValidCredential::ExternalAccount { token_url, .. } => {
                format!("the token exchange endpoint {token_url}")
            }
            ValidCredential::MetadataServer { endpoint } => {
                format!("the metadata server {endpoint}")
            }
        }
    }

    /// What to check when tokens are refused.
    pub fn fix_hint(&self) -> &'static str {
        match self {
            ValidCredential::ServiceAccountKey { .. } => {
                "check that the key is not disabled or deleted (gcloud iam service-accounts keys list) and that the service account is enabled"
            }
            ValidCredential::ExternalAccount { .. } => {
                "check the pool and provider in the credential file's audience, the provider's attribute mapping and conditions, and that the subject token file holds a current token"
            }
            ValidCredential::MetadataServer { .. } => {
                "check that the instance (or GKE workload) has a service account attached with the cloud-platform scope"
            }
        }
    }
}

fn shown(text: &str) -> std::borrow::Cow<'_, str> {
    crate::text::shown(text)
}

impl GcpConfig {
    /// Check every setting; errors name the key (`providers.gsm.project`).
    pub(super) fn validate(&self, key: &str) -> Result<Validated, ConfigError> {
        let project = self
            .project
            .as_deref()
            .map(|p| {
                let p = p.trim();
                check_project(p)
                    .map(|()| p.to_string())
                    .map_err(|m| ConfigError::new(format!("{key}.project"), m))
            })
            .transpose()?;
        let location = self
            .location
            .as_deref()
            .map(|l| {
                let l = l.trim();
                check_location(l)
                    .map(|()| l.to_string())
                    .map_err(|m| ConfigError::new(format!("{key}.location"), m))
            })
            .transpose()?;
        let endpoint = match (&self.endpoint, &location) {
            (Some(text), _) => parse_url(text, &format!("{key}.endpoint"), Scheme::Https)?,
            (None, Some(location)) => {
                format!("https://secretmanager.{location}.rep.googleapis.com")
            }
            (None, None) => GLOBAL_ENDPOINT.to_string(),
        };
        let timeout = Timeout::resolve(self.timeout.as_ref(), &format!("{key}.timeout"))?;
        let credential = self.credential.validate(&format!("{key}.credential"))?;
        Ok(Validated {
            project,
            location,
            endpoint,
            timeout,
            credential,
        })
    }
}

impl CredentialConfig {
    fn validate(&self, key: &str) -> Result<ValidCredential, ConfigError> {
        match self {
            CredentialConfig::ServiceAccountKey { key_file } => {
                let json = read_json(key_file, &format!("{key}.key_file"))?;
                service_account(json, key_file, &format!("{key}.key_file"))
            }
            CredentialConfig::ExternalAccount {
                credential_file,
                token_url,
            } => {
                let file_key = format!("{key}.credential_file");
                let json = read_json(credential_file, &file_key)?;
                let token_url = token_url
                    .as_deref()
                    .map(|url| parse_url(url, &format!("{key}.token_url"), Scheme::Https))
                    .transpose()?;
                external_account(json.0, credential_file, &file_key, token_url)
            }
            CredentialConfig::MetadataServer { endpoint } => {
                let endpoint = match endpoint {
                    Some(text) => parse_url(text, &format!("{key}.endpoint"), Scheme::Any)?,
                    None => METADATA_ENDPOINT.to_string(),
                };
                Ok(ValidCredential::MetadataServer { endpoint })
            }
            CredentialConfig::File(path) => {
                let file_key = "GOOGLE_APPLICATION_CREDENTIALS";
                let json = read_json(path, file_key)?;
                match json.0["type"].as_str() {
                    Some("service_account") => service_account(json, path, file_key),
                    Some("external_account") => external_account(json.0, path, file_key, None),
                    other => Err(ConfigError::new(
                        file_key,
                        format!(
                            "{}: type {} is not supported: give a service account key (\"service_account\") or a workload identity federation file (\"external_account\"); without the variable, the metadata server is used",
                            path.display(),
                            other.map_or("(none)".into(), |t| format!("'{}'", shown(t)))
                        ),
                    )),
                }
            }
        }
    }
}

/// A service account key file: checked here so that a wrong file stops
/// the start-up with its name (never its content).
fn service_account(
    json: SecretJson,
    file: &Path,
    key: &str,
) -> Result<ValidCredential, ConfigError> {
    let problem = |what: &str| ConfigError::new(key, format!("{}: {what}", file.display()));
    let text = |field: &str| json.0[field].as_str().map(str::trim).unwrap_or_default();
    if text("type") != "service_account" {
        return Err(problem(
            "not a service account key (its \"type\" is not \"service_account\"): create one with gcloud iam service-accounts keys create",
        ));
    }
    let client_email = text("client_email").to_string();
    if client_email.is_empty()
        || client_email.len() > 320
        || !client_email.contains('@')
        || client_email
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(problem("no usable \"client_email\""));
    }
    for field in ["private_key_id", "project_id"] {
        if !json.0[field].is_string() {
            return Err(problem(&format!("no \"{field}\"")));
        }
    }
    let private_key = text("private_key");
    if private_key.contains("BEGIN RSA PRIVATE KEY") {
        return Err(problem(
            "its private_key is PKCS#1 (BEGIN RSA PRIVATE KEY): Google's keys are PKCS#8 (BEGIN PRIVATE KEY); download the key again",
        ));
    }
    if !private_key.contains("-----BEGIN PRIVATE KEY-----") {
        return Err(problem("no PKCS#8 \"private_key\" (BEGIN PRIVATE KEY)"));
    }
    Ok(ValidCredential::ServiceAccountKey {
        key: json,
        client_email,
        file: file.to_path_buf(),
    })
}

/// The grant types a subject token may have (Google's STS documentation).
const SUBJECT_TOKEN_TYPES: &[&str] = &[
    "urn:ietf:params:oauth:token-type:jwt",
    "urn:ietf:params:oauth:token-type:id_token",
    "urn:ietf:params:oauth:token-type:saml2",
];

/// An external-account file whose subject token comes from a file. The
/// file also chooses URLs and commands for the other sources, which the
/// plugin does not follow: it is configuration, and is held to what the
/// plugin can check.
fn external_account(
    json: serde_json::Value,
    file: &Path,
    key: &str,
    token_url: Option<String>,
) -> Result<ValidCredential, ConfigError> {
    let problem = |what: String| ConfigError::new(key, format!("{}: {what}", file.display()));
    let text = |field: &str| json[field].as_str().map(str::trim).unwrap_or_default();
    if text("type") != "external_account" {
        return Err(problem(
            "not a workload identity federation file (its \"type\" is not \"external_account\")"
                .into(),
        ));
    }
    let audience = text("audience").to_string();
    if !audience.starts_with("//iam.googleapis.com/")
        || audience.len() > 512
        || audience
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(problem(
            "its \"audience\" must be //iam.googleapis.com/projects/<number>/locations/global/workloadIdentityPools/<pool>/providers/<provider>".into(),
        ));
    }
    let subject_token_type = text("subject_token_type").to_string();
    if !SUBJECT_TOKEN_TYPES.contains(&subject_token_type.as_str()) {
        return Err(problem(format!(
            "its \"subject_token_type\" '{}' is not one of {}",
            shown(&subject_token_type),
            SUBJECT_TOKEN_TYPES.join(", ")
        )));
    }
    if json.get("service_account_impersonation_url").is_some() {
        return Err(problem(
            "service account impersonation (\"service_account_impersonation_url\") is not supported: grant the federated principal the Secret Manager Secret Accessor role itself (direct resource access) and create the file without --service-account".into(),
        ));
    }
    if json.get("workforce_pool_user_project").is_some() {
        return Err(problem(
            "workforce identity federation (\"workforce_pool_user_project\") is for people, not workloads: use a workload identity pool".into(),
        ));
    }
    let token_url = match token_url {
        Some(url) => url,
        None => {
            let url = text("token_url");
            let url = if url.is_empty() { STS_TOKEN_URL } else { url };
            parse_url(url, key, Scheme::Https)
                .map_err(|e| problem(format!("its \"token_url\": {}", e.message)))?
        }
    };
    let source = &json["credential_source"];
    let Some(token_file) = source["file"].as_str().filter(|f| !f.trim().is_empty()) else {
        return Err(problem(
            "its \"credential_source\" must name a \"file\" holding the subject token (url, executable and aws sources are not followed by the plugin)".into(),
        ));
    };
    let token_file = PathBuf::from(token_file.trim());
    let json_field = match source["format"]["type"].as_str() {
        None | Some("text") => None,
        Some("json") => Some(
            source["format"]["subject_token_field_name"]
                .as_str()
                .filter(|f| !f.is_empty())
                .ok_or_else(|| {
                    problem(
                        "its credential_source.format is json but names no subject_token_field_name"
                            .into(),
                    )
                })?
                .to_string(),
        ),
        Some(other) => {
            return Err(problem(format!(
                "credential_source.format.type '{}' is neither text nor json",
                shown(other)
            )));
        }
    };
    // Read once here so that a missing or wrong token file stops the start-up.
    read_subject_token(&token_file, json_field.as_deref())
        .map_err(|m| problem(format!("subject token file {m}")))?;
    Ok(ValidCredential::ExternalAccount {
        audience,
        subject_token_type,
        token_url,
        token_file,
        json_field,
        file: file.to_path_buf(),
    })
}

/// The subject token, trimmed and checked; errors name the file, never its
/// content. Read at every token exchange (projected tokens rotate).
pub(super) fn read_subject_token(path: &Path, json_field: Option<&str>) -> Result<String, String> {
    subject_token(path, crate::credential_file::read_text(path), json_field)
}

/// The token in `read`, the result of reading `path`.
pub(super) fn subject_token(
    path: &Path,
    read: std::io::Result<secrecy::zeroize::Zeroizing<String>>,
    json_field: Option<&str>,
) -> Result<String, String> {
    let at = |m: &dyn std::fmt::Display| format!("{}: {m}", path.display());
    let text = read.map_err(|err| at(&err))?;
    let token = match json_field {
        None => text.trim().to_string(),
        Some(field) => {
            let json: serde_json::Value =
                serde_json::from_str(&text).map_err(|_| at(&"not JSON"))?;
            json[field]
                .as_str()
                .map(|t| t.trim().to_string())
                .ok_or_else(|| at(&format!("no string field '{}'", shown(field))))?
        }
    };
    if token.is_empty() {
        return Err(at(&"empty"));
    }
    if token.chars().any(char::is_control) || token.contains(' ') {
        return Err(at(
            &"holds more than one line, a space or a control character: give a file holding only the token",
        ));
    }
    Ok(token)
}

/// A JSON credential file; errors name the file, never its content (a
/// key file holds a private key; serde's messages quote what they saw).
fn read_json(path: &Path, key: &str) -> Result<SecretJson, ConfigError> {
    let problem =
        |what: &dyn std::fmt::Display| ConfigError::new(key, format!("{}: {what}", path.display()));
    let bytes = crate::credential_file::read(path).map_err(|err| problem(&err))?;
    let json: serde_json::Value = serde_json::from_slice(&bytes).map_err(|err| {
        problem(&format!(
            "not JSON (line {}, column {})",
            err.line(),
            err.column()
        ))
    })?;
    if !json.is_object() {
        return Err(problem(&"not a JSON object"));
    }
    Ok(SecretJson(json))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Scheme {
    /// https; plain http only to this host's loopback (a local proxy, a
    /// test double): a token never crosses a network in clear.
    Https,
    /// The metadata server is plain http by design (a link-local address).
    Any,
}

/// A base URL (no credentials, query or fragment), without a trailing '/'.
fn parse_url(text: &str, key: &str, scheme: Scheme) -> Result<String, ConfigError> {
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
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ConfigError::new(
            key,
            "must be a URL without spaces or control characters",
        ));
    }
    let url = Url::parse(text)
        .map_err(|err| ConfigError::new(key, format!("'{}': {err}", shown(text))))?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err(ConfigError::new(
            key,
            format!("'{}' must not have a query or fragment", shown(text)),
        ));
    }
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name == "localhost",
        None => false,
    };
    let ok = match (url.scheme(), scheme) {
        (_, _) if url.host().is_none() => false,
        ("https", _) => true,
        ("http", Scheme::Any) => true,
        ("http", Scheme::Https) => loopback,
        _ => false,
    };
    if !ok {
        return Err(ConfigError::new(
            key,
            format!(
                "'{}' must be an https:// URL with a host (plain http only to 127.0.0.1, ::1 or localhost)",
                shown(text)
            ),
        ));
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

/// A project id (6-30 lowercase letters, digits, hyphens, starting with a
/// letter) or a project number; `domain:project` ids of old projects too.
pub(super) fn check_project(value: &str) -> Result<(), String> {
    let id = value.rsplit_once(':').map_or(
        value,
        |(domain, id)| {
            if domain.is_empty() { "" } else { id }
        },
    );
    let number =
        !value.is_empty() && value.len() <= 20 && value.bytes().all(|b| b.is_ascii_digit());
    let named = (1..=63).contains(&id.len())
        && id.as_bytes()[0].is_ascii_lowercase()
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.:".contains(&b));
    if number || named {
        Ok(())
    } else {
        Err(format!(
            "'{}' is not a project id (lowercase letters, digits and '-', starting with a letter) or project number",
            shown(value)
        ))
    }
}

/// A location: `europe-west1`, `us-central1`.
pub(super) fn check_location(value: &str) -> Result<(), String> {
    if (1..=63).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        Ok(())
    } else {
        Err(format!(
            "'{}' is not a location (lowercase letters, digits and '-', like europe-west1)",
            shown(value)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_need_https_except_to_loopback() {
        let ok = |t: &str, s| parse_url(t, "k", s).unwrap();
        let bad = |t: &str, s| parse_url(t, "k", s).unwrap_err().message;
        assert_eq!(
            ok("https://secretmanager.googleapis.com/", Scheme::Https),
            "https://secretmanager.googleapis.com"
        );
        assert_eq!(
            ok("http://127.0.0.1:8080", Scheme::Https),
            "http://127.0.0.1:8080"
        );
        assert_eq!(ok("http://[::1]:80", Scheme::Https), "http://[::1]");
        assert!(bad("http://example.com", Scheme::Https).contains("https://"));
        assert_eq!(
            ok("http://169.254.169.254", Scheme::Any),
            "http://169.254.169.254"
        );
        assert!(bad("ftp://x", Scheme::Any).contains("https://"));
        let with_password = bad("https://u:hunter2@example.com", Scheme::Https);
        assert!(!with_password.contains("hunter2"), "{with_password}");
        assert!(bad("https://x/?a=b", Scheme::Https).contains("query"));
        assert!(bad("https://x\n.com", Scheme::Https).contains("control"));
    }

    #[test]
    fn projects_and_locations() {
        for good in ["my-project", "123456789012", "example.com:my-project"] {
            assert_eq!(check_project(good), Ok(()), "{good}");
        }
        for bad in ["", "My-Project", "-x", "a/b", "x\ny", ":x", "1a"] {
            assert!(check_project(bad).is_err(), "{bad:?}");
        }
        assert_eq!(check_location("europe-west1"), Ok(()));
        assert!(check_location("europe/west1").is_err());
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn a_service_account_key_is_checked_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let secret = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC-very-secret";
        let key = |private_key: &str, kind: &str| {
            serde_json::json!({"type": kind, "project_id": "p", "private_key_id": "k1",
                "private_key": private_key, "client_email": "sa@p.iam.gserviceaccount.com"})
            .to_string()
        };
        let config = |file: PathBuf| CredentialConfig::ServiceAccountKey { key_file: file };
        let good = write(
            dir.path(),
            "good.json",
            &key(
                &format!("-----BEGIN PRIVATE KEY-----\n{secret}\n-----END PRIVATE KEY-----\n"),
                "service_account",
            ),
        );
        let valid = config(good).validate("providers.g.credential").unwrap();
        assert!(valid.describe().contains("sa@p.iam.gserviceaccount.com"));
        let cases = [
            (
                key(
                    &format!("-----BEGIN RSA PRIVATE KEY-----\n{secret}"),
                    "service_account",
                ),
                "PKCS#1",
            ),
            (key(secret, "service_account"), "PKCS#8"),
            (key(secret, "authorized_user"), "not a service account key"),
            (format!("{{\"private_key\": \"{secret}"), "not JSON"),
            ("[1]".to_string(), "not a JSON object"),
        ];
        for (text, expected) in cases {
            let path = write(dir.path(), "bad.json", &text);
            let err = config(path).validate("providers.g.credential").unwrap_err();
            assert_eq!(err.key, "providers.g.credential.key_file");
            assert!(err.message.contains(expected), "{expected}: {err}");
            assert!(!err.to_string().contains(secret), "{err}");
        }
        let missing = config(dir.path().join("nope.json"))
            .validate("k")
            .unwrap_err();
        assert!(missing.message.contains("nope.json"), "{missing}");
        let big = write(dir.path(), "big.json", &" ".repeat(70 * 1024));
        assert!(
            config(big)
                .validate("k")
                .unwrap_err()
                .message
                .contains("64 KiB")
        );
    }

    #[test]
    fn an_external_account_file_is_held_to_a_file_source() {
        let dir = tempfile::tempdir().unwrap();
        let token = write(dir.path(), "token", "eyJhbGciOi.subject.token\n");
        let file = |extra: serde_json::Value| {
            let mut json = serde_json::json!({
                "type": "external_account",
                "audience": "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/q",
                "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
                "token_url": "https://sts.googleapis.com/v1/token",
                "credential_source": {"file": token.display().to_string()},
            });
            for (k, v) in extra.as_object().unwrap() {
                json[k] = v.clone();
            }
            write(dir.path(), "wif.json", &json.to_string())
        };
        let config = |path: PathBuf| CredentialConfig::ExternalAccount {
            credential_file: path,
            token_url: None,
        };
        match config(file(serde_json::json!({}))).validate("k").unwrap() {
            ValidCredential::ExternalAccount {
                token_url,
                token_file,
                ..
            } => {
                assert_eq!(token_url, STS_TOKEN_URL);
                assert_eq!(
                    read_subject_token(&token_file, None).unwrap(),
                    "eyJhbGciOi.subject.token"
                );
            }
            _ => panic!("not an external account"),
        }
        let cases = [
            (
                serde_json::json!({"credential_source": {"executable": {"command": "/bin/sh -c x"}}}),
                "must name a \"file\"",
            ),
            (
                serde_json::json!({"credential_source": {"url": "http://169.254.169.254/x"}}),
                "must name a \"file\"",
            ),
            (
                serde_json::json!({"service_account_impersonation_url": "https://x"}),
                "impersonation",
            ),
            (
                serde_json::json!({"token_url": "http://sts.example.com/v1/token"}),
                "token_url",
            ),
            (serde_json::json!({"audience": "evil"}), "audience"),
            (
                serde_json::json!({"subject_token_type": "x"}),
                "subject_token_type",
            ),
            (
                serde_json::json!({"credential_source": {"file": "/nonexistent/token"}}),
                "/nonexistent/token",
            ),
        ];
        for (extra, expected) in cases {
            let err = config(file(extra)).validate("k").unwrap_err();
            assert!(err.message.contains(expected), "{expected}: {err}");
        }
        std::fs::write(&token, "two\nlines").unwrap();
        let err = config(file(serde_json::json!({})))
            .validate("k")
            .unwrap_err();
        assert!(err.message.contains("more than one line"), "{err}");
        assert!(!err.message.contains("two"), "{err}");
    }
}
