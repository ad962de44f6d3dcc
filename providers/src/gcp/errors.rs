//! Turning the client's errors into [`ProviderError`]s an operator can act on.
//!
//! What is kept from an answer: the HTTP status, Google's status word
//! (`NOT_FOUND`, `PERMISSION_DENIED`...) and the first line of its message;
//! from a token endpoint, its OAuth error code (`invalid_grant`) and the
//! first line of its description. Tokens, request URLs and headers never
//! reach a message, and every foreign text is scrubbed and bounded.

use std::time::Duration;

use google_cloud_gax::error::Error as GaxError;
use google_cloud_gax::error::rpc::{Code, StatusDetails};

use crate::ProviderError;

/// Used when a 429 says nothing of when to come back.
const DEFAULT_THROTTLE_WAIT: Duration = Duration::from_secs(1);

const MAX_TEXT: usize = 300;

/// Where the failing call was going, for messages.
pub(super) struct Context<'a> {
    /// `secret projects/p/secrets/db version latest`.
    pub target: &'a str,
    pub endpoint: &'a str,
    pub identity: &'a str,
    /// Where tokens come from.
    pub token_source: &'a str,
    pub fix_hint: &'a str,
}

/// The first line of a server's words, scrubbed, escaped and bounded.
pub(super) fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default().trim();
    crate::text::shown_max(&crate::text::scrub(line), MAX_TEXT).into_owned()
}

fn tls_hint(cause: &str) -> &'static str {
    if cause.contains("certificate") || cause.contains("Certificate") {
        " (TLS: a TLS-inspecting proxy's CA must be in the system's trust store, or in SSL_CERT_FILE)"
    } else {
        ""
    }
}

fn transient(message: String, after: Option<Duration>) -> ProviderError {
    let error = ProviderError::unavailable(message);
    match after {
        Some(wait) => error.with_retry_after(wait),
        None => error,
    }
}

/// Classify one failed `AccessSecretVersion` call (one attempt).
pub(super) fn classify(err: &GaxError, cx: &Context<'_>) -> ProviderError {
    let Context {
        target,
        endpoint,
        identity,
        fix_hint,
        ..
    } = cx;

    if err.is_authentication() {
        return credential_error(err, cx);
    }

    if let Some(status) = err.status() {
        let message = first_line(&status.message);
        let word = status.code.name();
        let said = format!(" (Secret Manager: {word}: {message})");
        return match status.code {
            Code::NotFound => ProviderError::NotFound(format!(
                "no {target}; check vaultbridge.path, vaultbridge.version and the project{said}"
            )),
            Code::FailedPrecondition if message.contains("DESTROYED") => {
                ProviderError::NotFound(format!(
                    "{target} is destroyed: its value is gone for good; pin another version with vaultbridge.version, or drop the label to read the latest{said}"
                ))
            }
            Code::FailedPrecondition if message.contains("DISABLED") => {
                ProviderError::NotFound(format!(
                    "{target} is disabled; enable it (gcloud secrets versions enable), or pin an enabled version with vaultbridge.version{said}"
                ))
            }
            Code::PermissionDenied => ProviderError::Denied(format!(
                "{identity} may not read {target} (or it does not exist); grant it the Secret Manager Secret Accessor role (roles/secretmanager.secretAccessor) on the secret or its project{said}"
            )),
            Code::Unauthenticated => ProviderError::Unauthenticated(format!(
                "Secret Manager at {endpoint} refused the token of {identity}; {fix_hint}{said}"
            )),
            Code::ResourceExhausted => transient(
                format!("Secret Manager at {endpoint} is throttling requests (HTTP 429){said}"),
                Some(retry_after(err).unwrap_or(DEFAULT_THROTTLE_WAIT)),
            ),
            Code::InvalidArgument | Code::OutOfRange => ProviderError::Invalid(format!(
                "Secret Manager refused the request for {target} as malformed; check vaultbridge.path and vaultbridge.version{said}"
            )),
            Code::Unavailable
            | Code::Internal
            | Code::DeadlineExceeded
            | Code::Unknown
            | Code::Aborted => transient(
                format!("Secret Manager at {endpoint} failed to answer for {target}{said}"),
                retry_after(err),
            ),
            _ => ProviderError::unavailable(format!(
                "Secret Manager at {endpoint} refused {target}{said}"
            ))
            .without_retry(),
        };
    }

    if let Some(code) = err.http_status_code() {
        // An answer, but not in Google's error format: a proxy, a load
        // balancer, or not Secret Manager at all.
        let what = format!(
            "{endpoint} answered HTTP {code} for {target}, not in Secret Manager's error format; check endpoint"
        );
        return if code >= 500 || code == 429 || code == 408 {
            transient(what, retry_after(err))
        } else {
            ProviderError::unavailable(what).without_retry()
        };
    }

    if err.is_timeout() {
        return ProviderError::unavailable(format!(
            "no answer from Secret Manager at {endpoint} in time for {target}"
        ));
    }
    if err.is_io() || err.is_connect() || err.is_transport() {
        let cause = first_line(&crate::text::root_cause(err));
        return ProviderError::unavailable(format!(
            "cannot reach Secret Manager at {endpoint}: {cause}{}",
            tls_hint(&cause)
        ));
    }
    if err.is_deserialization() {
        return ProviderError::unavailable(format!(
            "Secret Manager at {endpoint} sent an unreadable answer for {target}; check endpoint"
        ))
        .without_retry();
    }
    ProviderError::unavailable(format!(
        "request to Secret Manager at {endpoint} for {target} failed: {}",
        first_line(&crate::text::cause_chain(err))
    ))
    .without_retry()
}

/// The wait a 429 asks for: a `Retry-After` header, else the RetryInfo
/// detail Google's APIs send.
fn retry_after(err: &GaxError) -> Option<Duration> {
    if let Some(value) = err
        .http_headers()
        .and_then(|h| h.get("retry-after"))
        .and_then(|v| v.to_str().ok())
        .and_then(crate::provider::retry_after_secs)
    {
        return Some(value);
    }
    err.status()?
        .details
        .iter()
        .find_map(|detail| match detail {
            StatusDetails::RetryInfo(info) => {
                let delay = info.retry_delay.as_ref()?;
                let secs = delay.seconds() as f64 + f64::from(delay.nanos()) / 1e9;
                crate::provider::retry_after_secs(&secs.to_string())
            }
            _ => None,
        })
}

/// The token could not be had: the token endpoint's (or metadata
/// server's) answer, or why it could not be asked.
fn credential_error(err: &GaxError, cx: &Context<'_>) -> ProviderError {
    let Context {
        identity,
        token_source,
        fix_hint,
        ..
    } = cx;
    let credentials = find::<google_cloud_gax::error::CredentialsError>(err);
    let is_transient = credentials.is_some_and(|c| c.is_transient());
    let status = http_status(err);

    // Our own subject token reader's words: the file, never its content.
    if let Some(ours) = find::<super::SubjectTokenError>(err) {
        return ProviderError::Unauthenticated(format!(
            "{identity} could not get a token: subject token file {}; {fix_hint}",
            ours.0
        ));
    }

    // The client quotes the body in one of the chain's errors.
    let mut chain: Option<&(dyn std::error::Error + 'static)> = Some(err);
    let mut found = None;
    while let Some(e) = chain {
        found = found.or_else(|| oauth_error(&e.to_string()));
        chain = e.source();
    }
    let said = found
        .map(|(code, description)| {
            if description.is_empty() {
                format!(": {code}")
            } else {
                format!(": {code}: {description}")
            }
        })
        .unwrap_or_default();
    match status {
        Some(code) if is_transient || code >= 500 || code == 429 => transient(
            format!("{token_source} failed to give {identity} a token: HTTP {code}{said}"),
            (code == 429).then_some(DEFAULT_THROTTLE_WAIT),
        ),
        Some(code) => ProviderError::Unauthenticated(format!(
            "{token_source} refused {identity} with HTTP {code}{said}; {fix_hint}"
        )),
        None if is_transient => {
            let cause = first_line(&crate::text::root_cause(err));
            ProviderError::unavailable(format!(
                "cannot reach {token_source} for {identity}: {cause}{}",
                tls_hint(&cause)
            ))
        }
        None => ProviderError::Unauthenticated(format!(
            "{identity} could not get a token: {}; {fix_hint}",
            first_line(&credential_text(err))
        )),
    }
}

/// The cause chain without the client's retry advice.
fn credential_text(err: &GaxError) -> String {
    crate::text::cause_chain(err)
        .replace(" but future attempts may succeed", "")
        .replace(" and future attempts will not succeed", "")
}

fn find<T: std::error::Error + 'static>(err: &GaxError) -> Option<&T> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

/// The token endpoint's HTTP status, wherever in the chain it is.
fn http_status(err: &GaxError) -> Option<u16> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(gax) = e.downcast_ref::<GaxError>()
            && let Some(code) = gax.http_status_code()
        {
            return Some(code);
        }
        if let Some(code) = e
            .downcast_ref::<reqwest::Error>()
            .and_then(reqwest::Error::status)
        {
            return Some(code.as_u16());
        }
        current = e.source();
    }
    None
}

/// `error` and the first line of `error_description` of an OAuth error
/// body (RFC 6749 5.2; Google's token and STS endpoints), which the client
/// quotes as `body=<...>`.
pub(super) fn oauth_error(text: &str) -> Option<(String, String)> {
    let start = text.find("body=<")? + "body=<".len();
    let rest = &text[start..];
    let end = rest.rfind('>')?;
    let body: serde_json::Value = serde_json::from_str(&rest[..end]).ok()?;
    let code = body["error"].as_str()?;
    // Codes are short identifiers; anything else is shown escaped and cut.
    let code = crate::text::shown_max(code, 60).into_owned();
    let description = first_line(body["error_description"].as_str().unwrap_or_default());
    Some((code, description))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oauth_errors_are_read_from_the_quoted_body() {
        let text = r#"failed to exchange token, body=<{"error":"invalid_grant","error_description":"The audience in ID Token [x] does not match the expected audience.\nmore"}> and future attempts will not succeed"#;
        assert_eq!(
            oauth_error(text),
            Some((
                "invalid_grant".into(),
                "The audience in ID Token [x] does not match the expected audience.".into()
            ))
        );
        assert_eq!(oauth_error("failed to exchange token"), None);
        assert_eq!(oauth_error("body=<not json>"), None);
        let hostile =
            r#"body=<{"error":"x\u001b[2J","error_description":"access_token=ya29.secret"}>"#;
        let (code, description) = oauth_error(hostile).unwrap();
        assert!(!code.contains('\u{1b}'), "{code}");
        assert!(!description.contains("ya29.secret"), "{description}");
    }
}
