//! Checks of every value that ends up in a request to AWS — a header, the
//! URL, the SigV4 credential scope — made where it is read, one function
//! per kind of value.
//!
//! Why: the SDK trusts these strings. An access key id with a trailing
//! newline made it panic while signing (`HeaderValue::from_str(..).unwrap()`
//! in aws-runtime); a session token with a newline failed "to create the
//! canonical request" and was retried as if the network were down; a key id
//! with a space or '/' rewrote the `Authorization` header's structure.
//!
//! The rule: surrounding whitespace is trimmed from what we read and pass on
//! ourselves (environment keys, TOML values), as the SDK trims
//! `AWS_SESSION_TOKEN` and the shared files' values; what the SDK reads
//! itself (endpoint variables, shared files) we cannot trim, so a bad value
//! there is refused. Errors name the key or variable and say what to fix;
//! they never quote a credential (nor, for URLs, anything that could be one).

use aws_credential_types::Credentials;
use aws_credential_types::provider::{
    ProvideCredentials, SharedCredentialsProvider, error::CredentialsError, future,
};

use crate::{ConfigError, EnvLookup};

/// The provider name our environment keys carry (the SDK's own name for them).
const ENV_PROVIDER_NAME: &str = "EnvironmentVariable";

/// Goes into `Authorization: ... Credential=<id>/<date>/<region>/...`: any
/// '/', ',', space or control character would change that header.
pub(super) fn access_key_id(id: &str) -> Result<(), &'static str> {
    if (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        Ok(())
    } else {
        Err("must be 1 to 128 letters and digits (like AKIAIOSFODNN7EXAMPLE)")
    }
}

/// Never sent, only an HMAC key: a space or control character in it is a
/// copy-paste accident that would only show as SignatureDoesNotMatch.
pub(super) fn secret_access_key(key: &str) -> Result<(), &'static str> {
    if !key.is_empty() && key.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(())
    } else {
        Err("must be printable characters without spaces")
    }
}

/// Sent as the `X-Amz-Security-Token` header: base64 text.
pub(super) fn session_token(token: &str) -> Result<(), &'static str> {
    if !token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(())
    } else {
        Err("must be printable characters without spaces (a base64 text)")
    }
}

/// A header value we do not otherwise know the shape of (the container
/// credentials endpoint's `Authorization`): printable ASCII and spaces.
pub(super) fn header_text(value: &str) -> Result<(), &'static str> {
    if !value.is_empty() && value.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
        Ok(())
    } else {
        Err("must be printable characters (no newline or other control character)")
    }
}

/// An endpoint: `http(s)://host[:port][/path]`, no credentials, no spaces.
pub(super) fn endpoint_url(url: &str) -> Result<(), String> {
    // Before any message that quotes it: the part before '@' may be a password.
    let authority = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest)
        .split(['/', '?', '#'])
        .next()
        .unwrap_or_default();
    if authority.contains('@') {
        return Err(
            "must not carry credentials (user:password@): give them through the credentials chain"
                .into(),
        );
    }
    // Not quoted: a control character would break the log line.
    if !url.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("must be a URL without spaces or control characters".into());
    }
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| format!("'{url}' must start with https:// or http://"))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() || host.starts_with(':') {
        return Err(format!("'{url}' has no host"));
    }
    Ok(())
}

/// `arn:<partition>:iam::<account>:role/<path/name>`; it goes into the
/// AssumeRole request and CloudTrail.
pub(super) fn role_arn(arn: &str) -> Result<(), String> {
    if !arn.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("must be an IAM role ARN without spaces or control characters".into());
    }
    let mut parts = arn.splitn(6, ':');
    let shaped = parts.next() == Some("arn")
        && parts.next().is_some_and(|p| !p.is_empty())
        && parts.next() == Some("iam")
        && parts.next() == Some("")
        && parts.next().is_some_and(|a| !a.is_empty())
        && parts
            .next()
            .and_then(|rest| rest.strip_prefix("role/"))
            .is_some_and(|name| !name.is_empty());
    if !shaped {
        return Err(format!(
            "'{arn}' is not an IAM role ARN (arn:aws:iam::<account>:role/<name>)"
        ));
    }
    Ok(())
}

/// STS: 2 to 1224 characters of letters, digits and `+=,.@:/-_`. Never quoted.
pub(super) fn external_id(id: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "+=,.@:/-_".contains(c);
    if !(2..=1224).contains(&id.len()) {
        return Err(format!(
            "must have 2 to 1224 characters, it has {}",
            id.len()
        ));
    }
    if !id.chars().all(allowed) {
        return Err("may only hold letters, digits and +=,.@:/-_".into());
    }
    Ok(())
}

/// STS: 2 to 64 characters of letters, digits and `+=,.@_-`.
pub(super) fn session_name(name: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "+=,.@_-".contains(c);
    if !(2..=64).contains(&name.len()) || !name.chars().all(allowed) {
        return Err(format!(
            "'{}' must be 2 to 64 characters of letters, digits and +=,.@_-",
            name.escape_debug()
        ));
    }
    Ok(())
}

/// A profile name as the shared files can hold it (`[profile <name>]`).
pub(super) fn profile_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    if name.len() > 128 || !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "'{}' is not a profile name (printable characters without spaces)",
            name.escape_debug()
        ));
    }
    Ok(())
}

/// `AWS_ACCESS_KEY_ID` + `AWS_SECRET_ACCESS_KEY` (or `SECRET_ACCESS_KEY`) +
/// optional `AWS_SESSION_TOKEN`, read as the SDK's environment provider
/// reads them (it is first in the chain and used when both keys are set),
/// trimmed and checked. `None`: not both set, the chain goes on as usual.
pub(super) fn env_credentials(env: EnvLookup<'_>) -> Result<Option<Credentials>, ConfigError> {
    let var = |name: &str| {
        env(name)
            .map(|value| value.trim().to_string())
            .filter(|value| !value.is_empty())
    };
    let Some(id) = var("AWS_ACCESS_KEY_ID") else {
        return Ok(None);
    };
    let Some((secret_name, secret)) = ["AWS_SECRET_ACCESS_KEY", "SECRET_ACCESS_KEY"]
        .into_iter()
        .find_map(|name| var(name).map(|value| (name, value)))
    else {
        return Ok(None);
    };
    let token = var("AWS_SESSION_TOKEN");
    access_key_id(&id).map_err(|m| env_error("AWS_ACCESS_KEY_ID", m))?;
    secret_access_key(&secret).map_err(|m| env_error(secret_name, m))?;
    if let Some(token) = &token {
        session_token(token).map_err(|m| env_error("AWS_SESSION_TOKEN", m))?;
    }
    Ok(Some(Credentials::new(
        id,
        secret,
        token,
        None,
        ENV_PROVIDER_NAME,
    )))
}

/// The other standard variables the SDK reads behind our back and turns
/// into URLs or headers: refused at start-up rather than failing (or being
/// quoted in a log line) on first use.
pub(super) fn env_settings(env: EnvLookup<'_>) -> Result<(), ConfigError> {
    let set = |name: &str| env(name).filter(|value| !value.is_empty());
    for name in [
        "AWS_ENDPOINT_URL_SECRETS_MANAGER",
        "AWS_ENDPOINT_URL_STS",
        "AWS_ENDPOINT_URL",
    ] {
        if let Some(url) = set(name) {
            endpoint_url(&url).map_err(|m| env_error(name, m))?;
        }
    }
    if let Some(token) = set("AWS_CONTAINER_AUTHORIZATION_TOKEN") {
        header_text(token.trim()).map_err(|m| env_error("AWS_CONTAINER_AUTHORIZATION_TOKEN", m))?;
    }
    if let Some(profile) = set("AWS_PROFILE") {
        profile_name(&profile).map_err(|m| env_error("AWS_PROFILE", m))?;
    }
    Ok(())
}

fn env_error(name: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::new(format!("environment variable {name}"), message)
}

/// One of the checks above.
type Check = fn(&str) -> Result<(), &'static str>;

/// The keys a shared-files profile holds, checked as they are: the SDK
/// reads the files itself (trimming only the ends of each line).
pub(super) fn profile_keys(
    get: impl Fn(&str) -> Option<String>,
    profile: &str,
) -> Result<(), String> {
    let checks: [(&str, Check); 3] = [
        ("aws_access_key_id", access_key_id),
        ("aws_secret_access_key", secret_access_key),
        ("aws_session_token", session_token),
    ];
    for (field, check) in checks {
        if let Some(value) = get(field) {
            check(&value).map_err(|m| {
                format!("profile '{profile}' in the shared config/credentials files: {field} {m}")
            })?;
        }
    }
    Ok(())
}

/// Checks whatever the credentials chain returns (instance metadata, ECS,
/// STS, a credential process, files re-read on refresh) before the SDK signs
/// with it: those sources are read at run time, not at start-up.
#[derive(Debug)]
pub(super) struct Checked(pub SharedCredentialsProvider);

impl ProvideCredentials for Checked {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::new(async move {
            let credentials = self.0.provide_credentials().await?;
            check_credentials(&credentials).map_err(CredentialsError::invalid_configuration)?;
            Ok(credentials)
        })
    }
}

fn check_credentials(credentials: &Credentials) -> Result<(), String> {
    let unusable = |what: &str, m: &str| {
        format!("the credentials chain returned unusable credentials: the {what} {m}")
    };
    access_key_id(credentials.access_key_id()).map_err(|m| unusable("access key id", m))?;
    secret_access_key(credentials.secret_access_key())
        .map_err(|m| unusable("secret access key", m))?;
    if let Some(token) = credentials.session_token() {
        session_token(token).map_err(|m| unusable("session token", m))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn header_values_refuse_what_would_change_the_request() {
        for id in [
            "AKIA X",
            "AKIA\nX",
            "AKIA/X/us-east-1",
            "AKIA,X",
            "",
            "ÄKIA",
        ] {
            assert!(access_key_id(id).is_err(), "{id:?}");
        }
        assert!(access_key_id("AKIAIOSFODNN7EXAMPLE").is_ok());
        assert!(access_key_id("test").is_ok());
        for token in ["abc\ndef", "abc def", "t\u{1}ok", "", "tök"] {
            assert!(session_token(token).is_err(), "{token:?}");
        }
        assert!(session_token("IQoJb3JpZ2luX2VjEJr//////////wEaCXVz+/=").is_ok());
        assert!(secret_access_key("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY").is_ok());
        assert!(secret_access_key("a\rb").is_err());
        assert!(header_text("Basic abc=").is_ok());
        assert!(header_text("abc\r\nX-Evil: 1").is_err());
    }

    #[test]
    fn urls_with_credentials_are_refused_without_being_quoted() {
        for url in [
            "https://user:hunter2@host",
            "user:hunter2@host",
            "http://user:hunter2@host/path",
        ] {
            let err = endpoint_url(url).unwrap_err();
            assert!(!err.contains("hunter2"), "{err}");
            assert!(err.contains("credentials"), "{err}");
        }
        let err = endpoint_url("http://host\n/x").unwrap_err();
        assert!(!err.contains('\n'), "{err}");
        assert!(endpoint_url("localhost:4566").is_err());
        assert!(endpoint_url("http://:80").is_err());
        assert!(endpoint_url("http://127.0.0.1:4566").is_ok());
        assert!(endpoint_url("https://vpce-1.secretsmanager.eu-west-1.vpce.amazonaws.com").is_ok());
        // '@' in the path is not userinfo.
        assert!(endpoint_url("https://host/a@b").is_ok());
    }

    #[test]
    fn role_arns_external_ids_and_names() {
        assert!(role_arn("arn:aws:iam::123456789012:role/reader").is_ok());
        assert!(role_arn("arn:aws-us-gov:iam::123456789012:role/path/reader").is_ok());
        for arn in [
            "reader",
            "arn:aws:iam::123456789012:role/",
            "arn:aws:iam::123456789012:user/x",
            "arn:aws:sts::123456789012:role/x",
            "arn:aws:iam::123456789012:role/x\n",
            "arn:aws:iam::123456789012:role/a b",
        ] {
            let err = role_arn(arn).unwrap_err();
            assert!(!err.contains('\n'), "{err}");
        }
        assert!(external_id("my-external-id").is_ok());
        let err = external_id("secret-id\nX").unwrap_err();
        assert!(!err.contains("secret-id"), "{err}");
        assert!(session_name("ci").is_ok());
        assert!(session_name("has space").is_err());
        assert!(profile_name("prod").is_ok());
        assert!(!profile_name("pr\nod").unwrap_err().contains('\n'));
    }

    #[test]
    fn environment_keys_are_trimmed_and_checked_and_never_quoted() {
        let none = env_of(&[]);
        assert!(env_credentials(&none).unwrap().is_none());
        // Only an id: the SDK's environment provider is skipped too.
        let only_id = env_of(&[("AWS_ACCESS_KEY_ID", "AKIAX")]);
        assert!(env_credentials(&only_id).unwrap().is_none());

        let padded = env_of(&[
            ("AWS_ACCESS_KEY_ID", "AKIAVBTESTKEY0001\n"),
            ("SECRET_ACCESS_KEY", " secret-key-value \n"),
            ("AWS_SESSION_TOKEN", "session-token-value\r\n"),
        ]);
        let credentials = env_credentials(&padded).unwrap().unwrap();
        assert_eq!(credentials.access_key_id(), "AKIAVBTESTKEY0001");
        assert_eq!(credentials.secret_access_key(), "secret-key-value");
        assert_eq!(credentials.session_token(), Some("session-token-value"));

        type Env = &'static [(&'static str, &'static str)];
        let cases: [(Env, &str, &str); 3] = [
            (
                &[
                    ("AWS_ACCESS_KEY_ID", "AKIA/injected"),
                    ("AWS_SECRET_ACCESS_KEY", "s"),
                ],
                "AWS_ACCESS_KEY_ID",
                "AKIA/injected",
            ),
            (
                &[
                    ("AWS_ACCESS_KEY_ID", "AKIAX"),
                    ("AWS_SECRET_ACCESS_KEY", "sec ret-key"),
                ],
                "AWS_SECRET_ACCESS_KEY",
                "sec ret-key",
            ),
            (
                &[
                    ("AWS_ACCESS_KEY_ID", "AKIAX"),
                    ("AWS_SECRET_ACCESS_KEY", "s"),
                    ("AWS_SESSION_TOKEN", "abc\ndef-token"),
                ],
                "AWS_SESSION_TOKEN",
                "def-token",
            ),
        ];
        for (pairs, name, value) in cases {
            let err = env_credentials(&env_of(pairs)).unwrap_err();
            assert_eq!(err.key, format!("environment variable {name}"));
            assert!(!err.to_string().contains(value), "{err}");
        }
    }

    #[test]
    fn environment_endpoints_and_tokens_are_checked() {
        let err = env_settings(&env_of(&[(
            "AWS_ENDPOINT_URL",
            "https://me:hunter2@proxy.example",
        )]))
        .unwrap_err();
        assert_eq!(err.key, "environment variable AWS_ENDPOINT_URL");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let err = env_settings(&env_of(&[(
            "AWS_ENDPOINT_URL_SECRETS_MANAGER",
            "http://127.0.0.1:5000\n",
        )]))
        .unwrap_err();
        assert_eq!(
            err.key,
            "environment variable AWS_ENDPOINT_URL_SECRETS_MANAGER"
        );
        let err = env_settings(&env_of(&[(
            "AWS_CONTAINER_AUTHORIZATION_TOKEN",
            "tok\r\nX-Evil: 1",
        )]))
        .unwrap_err();
        assert!(!err.to_string().contains("tok"), "{err}");
        assert!(env_settings(&env_of(&[("AWS_ENDPOINT_URL", "http://127.0.0.1:5000")])).is_ok());
    }

    #[test]
    fn profile_keys_name_the_field_not_the_value() {
        let file = |field: &str| match field {
            "aws_access_key_id" => Some("AKIAPROFILEKEY\r".to_string()),
            _ => Some("x".to_string()),
        };
        let err = profile_keys(file, "prod").unwrap_err();
        assert!(
            err.contains("aws_access_key_id") && err.contains("'prod'"),
            "{err}"
        );
        assert!(!err.contains("AKIAPROFILEKEY"), "{err}");
    }

    #[tokio::test]
    async fn the_chain_output_is_checked_before_signing() {
        let bad = Credentials::new("AKIA\nX", "secret", None, None, "test");
        let checked = Checked(SharedCredentialsProvider::new(bad));
        let err = checked.provide_credentials().await.unwrap_err();
        let text = format!("{err}: {:?}", std::error::Error::source(&err));
        assert!(text.contains("access key id"), "{text}");
        assert!(!text.contains("AKIA\nX"), "{text}");
        let good = Credentials::new("AKIAX", "secret", Some("token".into()), None, "test");
        let checked = Checked(SharedCredentialsProvider::new(good));
        assert!(checked.provide_credentials().await.is_ok());
    }
}
