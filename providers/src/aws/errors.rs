//! From the SDK's errors to [`ProviderError`]s an operator can act on; any
//! text that came from AWS or the SDK goes through the shared
//! [`crate::text::scrub`] (request ids, credential fragments) first.

use std::time::Duration;

use aws_sdk_secretsmanager::config::http::HttpResponse;
use aws_sdk_secretsmanager::error::{ProvideErrorMetadata, SdkError};

use super::VersionSelector;
use crate::ProviderError;
use crate::text::{cause_chain, scrub, truncate};

/// The longest AWS message we pass on (after scrubbing).
const MAX_MESSAGE: usize = 400;

/// What the failed call was about, for the message.
pub(crate) struct Context<'a> {
    /// The secret's name or ARN; `None` for `check`'s ListSecrets.
    pub path: Option<&'a str>,
    /// The version asked for, if any.
    pub version: Option<VersionSelector<'a>>,
    pub region: &'a str,
    pub endpoint: &'a str,
    pub timeout: Duration,
    /// The configured `role_arn`, if any.
    pub role: Option<&'a str>,
    /// The IAM action the call needs, for "allow ..." advice.
    pub action: &'static str,
}

impl Context<'_> {
    fn what(&self) -> String {
        match (self.path, &self.version) {
            (None, _) => format!("ListSecrets in region {}", self.region),
            (Some(path), Some(version)) => {
                format!(
                    "secret '{path}' ({}) in region {}",
                    version.describe(),
                    self.region
                )
            }
            (Some(path), None) => format!("secret '{path}' in region {}", self.region),
        }
    }
}

const AUTH_CODES: &[&str] = &[
    "UnrecognizedClientException",
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
    "IncompleteSignature",
    "InvalidClientTokenId",
    "InvalidAccessKeyId",
    "MissingAuthenticationToken",
    "MissingAuthenticationTokenException",
    "ExpiredToken",
    "ExpiredTokenException",
    "RequestExpired",
    "AuthFailure",
];

const THROTTLING_CODES: &[&str] = &[
    "ThrottlingException",
    "Throttling",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "LimitExceededException",
    "ProvisionedThroughputExceededException",
];

const SERVER_CODES: &[&str] = &[
    "InternalServiceError",
    "InternalFailure",
    "InternalServerError",
    "ServiceUnavailable",
    "ServiceUnavailableException",
];

/// The error code of a service error: the SDK's, or — when the SDK could not
/// parse the body (an XML error from a proxy or an emulator) — read from the
/// raw body.
pub(crate) fn code_of<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> Option<String> {
    let SdkError::ServiceError(service) = err else {
        return None;
    };
    service
        .err()
        .code()
        .map(str::to_string)
        .or_else(|| raw_field(service.raw(), "Code"))
        .map(|code| normalize_code(&code))
}

fn message_of<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> Option<String> {
    let SdkError::ServiceError(service) = err else {
        return None;
    };
    service
        .err()
        .message()
        .map(str::to_string)
        .or_else(|| raw_field(service.raw(), "Message"))
}

/// `com.amazonaws.secretsmanager#ResourceNotFoundException:http://…` -> `ResourceNotFoundException`.
fn normalize_code(code: &str) -> String {
    let code = code.rsplit('#').next().unwrap_or(code);
    let code = code.split(':').next().unwrap_or(code);
    code.trim().to_string()
}

/// `<Name>…</Name>` of an XML body, or `"name": "…"` / `"__type"` of JSON.
fn raw_field(raw: &HttpResponse, name: &str) -> Option<String> {
    let body = std::str::from_utf8(raw.body().bytes()?).ok()?;
    let xml = || {
        let open = format!("<{name}>");
        let start = body.find(&open)? + open.len();
        let end = body[start..].find("</")? + start;
        Some(body[start..end].trim().to_string())
    };
    let json = || {
        let keys: &[&str] = if name == "Code" {
            &["__type", "code", "Code"]
        } else {
            &["message", "Message"]
        };
        keys.iter().find_map(|key| {
            let quoted = format!("\"{key}\"");
            let after = &body[body.find(&quoted)? + quoted.len()..];
            let after = after.trim_start().strip_prefix(':')?.trim_start();
            let value = after.strip_prefix('"')?;
            Some(value[..value.find('"')?].to_string())
        })
    };
    xml().or_else(json).filter(|value| !value.is_empty())
}

/// The call (the SDK's, or our hard bound over it) ran out of time.
pub(crate) fn no_answer(context: &Context<'_>) -> ProviderError {
    ProviderError::unavailable(format!(
        "no answer from Secrets Manager at {} (region {}) within {:?}",
        context.endpoint, context.region, context.timeout
    ))
}

/// Map any SDK error of a Secrets Manager call.
pub(crate) fn map<E>(err: &SdkError<E, HttpResponse>, context: &Context<'_>) -> ProviderError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let endpoint = context.endpoint;
    let region = context.region;
    match err {
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let code = code_of(err);
            let message = message_of(err).map(|m| scrub(&m));
            let error = classify(code.as_deref(), message.as_deref(), Some(status), context);
            // A throttling answer's `Retry-After` (seconds), when it has one:
            // the plugin waits it out or reports at once, as for every backend.
            match service
                .raw()
                .headers()
                .get("retry-after")
                .and_then(crate::provider::retry_after_secs)
            {
                Some(wait) if error.retry_safe() => error.with_retry_after(wait),
                _ => error,
            }
        }
        SdkError::TimeoutError(_) => no_answer(context),
        SdkError::DispatchFailure(failure) if failure.is_io() || failure.is_timeout() => {
            ProviderError::unavailable(format!(
                "cannot reach Secrets Manager at {endpoint} (region {region}): {}",
                detail(err)
            ))
        }
        SdkError::ResponseError(response) => {
            let status = response.raw().status().as_u16();
            // The same answer next time: not worth asking again.
            ProviderError::unavailable(format!(
                "Secrets Manager at {endpoint} (region {region}) gave an unreadable answer (HTTP {status}): {}",
                detail(err)
            ))
            .without_retry()
        }
        // Credentials are resolved before the request is sent: failures of
        // the chain (no credentials, a failed AssumeRole, an unreadable
        // profile) surface here.
        SdkError::ConstructionFailure(_) | SdkError::DispatchFailure(_) => {
            let text = detail(err);
            let lower = text.to_ascii_lowercase();
            if lower.contains("credential")
                || lower.contains("identity")
                || lower.contains("assume")
                || lower.contains("profile")
                || lower.contains("token")
            {
                let role = context
                    .role
                    .map(|role| format!(" (assuming role {role})"))
                    .unwrap_or_default();
                ProviderError::Unauthenticated(format!(
                    "no usable AWS credentials for region {region}{role}: {text}; provide them through \
                     the standard chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a mounted shared \
                     credentials file and profile, a web identity token file, ECS or EC2 instance \
                     roles) and check role_arn/profile"
                ))
            } else {
                // Not sent, or not answered in a way asking again changes.
                ProviderError::unavailable(format!(
                    "the request to Secrets Manager at {endpoint} (region {region}) failed: {text}"
                ))
                .without_retry()
            }
        }
        // `SdkError` is non-exhaustive.
        _ => ProviderError::unavailable(format!(
            "the request to Secrets Manager at {endpoint} (region {region}) failed: {}",
            detail(err)
        )),
    }
}

/// The error's chain of causes (the SDK's own `DisplayErrorContext` appends
/// a Debug dump we do not want), scrubbed and cut.
fn detail<E: std::error::Error + 'static>(err: &SdkError<E, HttpResponse>) -> String {
    truncate(cause_chain(err), MAX_MESSAGE)
}

/// Escaped and cut: for text the service wrote.
fn shown_short(text: &str) -> String {
    truncate(
        crate::text::shown_max(text, MAX_MESSAGE).into_owned(),
        MAX_MESSAGE,
    )
}

/// Decide the variant from the service's error code (and the HTTP status
/// when the code is unknown). `message` is already scrubbed.
fn classify(
    code: Option<&str>,
    message: Option<&str>,
    status: Option<u16>,
    context: &Context<'_>,
) -> ProviderError {
    let what = context.what();
    let region = context.region;
    let endpoint = context.endpoint;
    // The service's words, escaped and bounded (ProviderError bounds the
    // whole message again; this keeps our advice around them visible).
    let aws = |code: &str| match message {
        Some(m) if !m.is_empty() => shown_short(&format!("{code}: {m}")),
        _ => shown_short(code),
    };
    let code_text = code.unwrap_or("no error code");
    let lower_message = message.unwrap_or_default().to_ascii_lowercase();
    match code {
        Some("ResourceNotFoundException") => {
            let hint = if context.version.is_some() {
                "check the name or ARN, the version label, and the provider's region"
            } else {
                "check the name or ARN, and that the secret lives in the provider's region"
            };
            ProviderError::NotFound(format!(
                "{what} does not exist; {hint} (AWS {})",
                aws(code_text)
            ))
        }
        Some("InvalidRequestException")
            if lower_message.contains("deletion") || lower_message.contains("deleted") =>
        {
            ProviderError::NotFound(format!(
                "{what} is scheduled for deletion; restore it (aws secretsmanager restore-secret) \
                 or point vaultbridge.path at another secret (AWS {})",
                aws(code_text)
            ))
        }
        Some("AccessDeniedException" | "AccessDenied") => ProviderError::Denied(format!(
            "{what}: AWS refused access (AWS {}); allow {} on this secret \
             to the principal named (and kms:Decrypt on its key if it uses a customer-managed KMS key)",
            aws(code_text),
            context.action
        )),
        Some(c) if c == "DecryptionFailure" || c.starts_with("KMS") => {
            ProviderError::Denied(format!(
                "{what}: KMS could not decrypt the secret (AWS {}); allow kms:Decrypt on the secret's \
             KMS key to this provider's principal and check that the key is enabled",
                aws(code_text)
            ))
        }
        Some(c) if AUTH_CODES.contains(&c) => ProviderError::Unauthenticated(format!(
            "Secrets Manager at {endpoint} (region {region}) refused our credentials (AWS {}); check the \
             access key id and secret key, that a session token has not expired, the profile or \
             role the provider uses, and the host's clock",
            aws(code_text)
        )),
        Some(c) if THROTTLING_CODES.contains(&c) => ProviderError::unavailable(format!(
            "Secrets Manager at {endpoint} (region {region}) throttled the request (AWS {})",
            aws(code_text)
        )),
        Some(c) if SERVER_CODES.contains(&c) => ProviderError::unavailable(format!(
            "Secrets Manager at {endpoint} (region {region}) failed (AWS {})",
            aws(code_text)
        )),
        Some(
            c @ ("InvalidParameterException"
            | "InvalidRequestException"
            | "ValidationException"
            | "InvalidParameterValue"),
        ) => ProviderError::Invalid(format!("{what}: AWS refused the request ({})", aws(c))),
        _ => match status {
            Some(401) => ProviderError::Unauthenticated(format!(
                "Secrets Manager at {endpoint} (region {region}) refused our credentials (HTTP 401, {})",
                aws(code_text)
            )),
            Some(403) => ProviderError::Denied(format!(
                "{what}: Secrets Manager at {endpoint} answered HTTP 403 ({}); check the credentials and \
                 that the principal may call {}",
                aws(code_text),
                context.action
            )),
            Some(404) => {
                ProviderError::NotFound(format!("{what} does not exist (AWS {})", aws(code_text)))
            }
            Some(s) if s == 429 || s >= 500 => ProviderError::unavailable(format!(
                "Secrets Manager at {endpoint} (region {region}) answered HTTP {s} ({})",
                aws(code_text)
            )),
            Some(s) => ProviderError::Invalid(format!(
                "{what}: Secrets Manager answered HTTP {s} ({})",
                aws(code_text)
            )),
            None => ProviderError::unavailable(format!(
                "Secrets Manager at {endpoint} (region {region}) failed ({})",
                aws(code_text)
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_secretsmanager::operation::get_secret_value::GetSecretValueError;

    fn context(version: Option<&'static str>) -> Context<'static> {
        Context {
            path: Some("db"),
            version: version.map(VersionSelector::Stage),
            region: "eu-west-1",
            endpoint: "http://127.0.0.1:1",
            timeout: Duration::from_secs(2),
            role: None,
            action: "secretsmanager:GetSecretValue",
        }
    }

    /// A Secrets Manager error answer: `status`, AWS's error `code`, headers.
    fn answer(
        status: u16,
        code: &str,
        headers: &[(&'static str, &'static str)],
    ) -> SdkError<GetSecretValueError, HttpResponse> {
        let mut raw = HttpResponse::new(
            status.try_into().expect("a status code"),
            format!(r#"{{"__type":"{code}","message":"m"}}"#).into(),
        );
        for (name, value) in headers {
            raw.headers_mut().insert(*name, *value);
        }
        let metadata = metadata(code);
        SdkError::service_error(GetSecretValueError::generic(metadata), raw)
    }

    fn metadata(code: &str) -> aws_sdk_secretsmanager::error::ErrorMetadata {
        aws_sdk_secretsmanager::error::ErrorMetadata::builder()
            .code(code)
            .message("m")
            .build()
    }

    #[test]
    fn a_throttling_answers_retry_after_is_handed_on_and_never_makes_an_error_retryable() {
        let c = context(None);
        let throttled = map(
            &answer(429, "ThrottlingException", &[("Retry-After", "2")]),
            &c,
        );
        assert!(throttled.retry_safe(), "{throttled}");
        assert_eq!(throttled.retry_after(), Some(Duration::from_secs(2)));
        // Without the header: backoff, as before.
        let plain = map(&answer(429, "ThrottlingException", &[]), &c);
        assert!(
            plain.retry_safe() && plain.retry_after().is_none(),
            "{plain}"
        );
        // On an answer that asking again cannot fix, the header changes nothing.
        let denied = map(
            &answer(400, "AccessDeniedException", &[("Retry-After", "2")]),
            &c,
        );
        assert!(matches!(denied, ProviderError::Denied(_)), "{denied}");
        assert_eq!(denied.retry_after(), None);
    }

    #[test]
    fn classifies_by_code_then_status() {
        let c = context(None);
        let is = |code: Option<&str>, message: Option<&str>, status: u16| {
            classify(code, message, Some(status), &c)
        };
        assert!(
            matches!(is(Some("ResourceNotFoundException"), None, 404), ProviderError::NotFound(m) if m.contains("eu-west-1"))
        );
        assert!(matches!(
            is(Some("InvalidRequestException"), Some("You can't perform this operation on the secret because it was marked for deletion."), 400),
            ProviderError::NotFound(m) if m.contains("scheduled for deletion")
        ));
        assert!(matches!(
            is(Some("InvalidRequestException"), Some("other"), 400),
            ProviderError::Invalid(_)
        ));
        assert!(matches!(
            is(Some("AccessDeniedException"), Some("User: arn:aws:iam::1:user/u is not authorized"), 400),
            ProviderError::Denied(m) if m.contains("user/u")
        ));
        assert!(
            matches!(is(Some("DecryptionFailure"), None, 400), ProviderError::Denied(m) if m.contains("kms:Decrypt"))
        );
        for code in [
            "UnrecognizedClientException",
            "InvalidSignatureException",
            "ExpiredTokenException",
            "InvalidClientTokenId",
        ] {
            assert!(
                matches!(is(Some(code), None, 400), ProviderError::Unauthenticated(_)),
                "{code}"
            );
        }
        assert!(matches!(
            is(Some("ThrottlingException"), None, 400),
            ProviderError::Unavailable(_)
        ));
        assert!(matches!(
            is(Some("InternalServiceError"), None, 500),
            ProviderError::Unavailable(_)
        ));
        assert!(matches!(is(None, None, 503), ProviderError::Unavailable(_)));
        assert!(matches!(is(None, None, 403), ProviderError::Denied(_)));
        assert!(matches!(
            is(None, None, 401),
            ProviderError::Unauthenticated(_)
        ));
        assert!(matches!(
            is(Some("Weird"), None, 400),
            ProviderError::Invalid(_)
        ));
    }

    #[test]
    fn codes_are_normalized() {
        assert_eq!(
            normalize_code(
                "com.amazonaws.secretsmanager#ResourceNotFoundException:http://internal"
            ),
            "ResourceNotFoundException"
        );
        assert_eq!(normalize_code("AccessDenied"), "AccessDenied");
    }
}
