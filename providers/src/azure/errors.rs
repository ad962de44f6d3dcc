//! Turning the SDK's errors into [`ProviderError`]s an operator can act on.
//!
//! What is kept from a response: the HTTP status, Key Vault's error code and
//! the first line of its message; Entra's AADSTS code and the first line of
//! its description (the lines after it carry trace and correlation ids). The
//! request URL, tokens and headers never reach a message.

use std::time::Duration;

use azure_core::error::ErrorKind;
use azure_core::http::{RawResponse, StatusCode};

use crate::ProviderError;

/// A failed attempt, and whether another one could succeed.
#[derive(Debug)]
pub(super) enum Failure {
    /// Worth another attempt, after `after` (the server's Retry-After, if any).
    Transient {
        error: ProviderError,
        after: Option<Duration>,
        throttled: bool,
    },
    Final(ProviderError),
}

/// Used when a 429 carries no Retry-After.
const DEFAULT_THROTTLE_WAIT: Duration = Duration::from_secs(1);

impl Failure {
    /// The error the plugin acts on: a transient one carries the wait the
    /// vault asked for; an outage that asking again will not fix says so.
    pub(super) fn into_error(self) -> ProviderError {
        match self {
            Failure::Transient {
                error,
                after,
                throttled,
            } => match after.or(throttled.then_some(DEFAULT_THROTTLE_WAIT)) {
                Some(wait) => error.with_retry_after(wait),
                None => error,
            },
            Failure::Final(error) => error.without_retry(),
        }
    }
}

/// Where the failing call was going, for messages.
pub(super) struct Context<'a> {
    /// The vault's base URL.
    pub vault: &'a str,
    /// `secret 'db' (version abc)`, or the check's description.
    pub target: &'a str,
    pub identity: &'a str,
    pub fix_hint: &'a str,
    /// `https://login.microsoftonline.com/<tenant>`, or the managed identity endpoint.
    pub authority: &'a str,
}

const MAX_TEXT: usize = 300;

/// The first line of a server's message, scrubbed and bounded.
pub(super) fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    // Entra sometimes puts the trace id on the same line.
    let line = line.split(" Trace ID:").next().unwrap_or_default().trim();
    // Escaped too: a server's words can carry ESC, bidi controls...
    crate::text::shown_max(&crate::text::scrub(line), MAX_TEXT).into_owned()
}

fn errors_in_chain(err: &azure_core::Error) -> Vec<&azure_core::Error> {
    let mut found = Vec::new();
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(az) = e.downcast_ref::<azure_core::Error>() {
            found.push(az);
        }
        current = e.source();
    }
    found
}

/// The innermost cause's text (e.g. "Connection refused (os error 111)",
/// "invalid peer certificate: UnknownIssuer"), which names no URL.
fn root_cause(err: &azure_core::Error) -> String {
    first_line(&crate::text::root_cause(err))
}

fn retry_after(raw: &RawResponse) -> Option<Duration> {
    let value = raw
        .headers()
        .get_optional_str(&azure_core::http::headers::RETRY_AFTER)?;
    crate::provider::retry_after_secs(value)
}

/// Key Vault's `{"error":{"code","message","innererror":{"code"}}}`.
fn key_vault_error(raw: &RawResponse) -> (String, String, String) {
    let body: serde_json::Value = serde_json::from_slice(raw.body().as_ref()).unwrap_or_default();
    let error = &body["error"];
    // Codes are short identifiers; anything else is shown escaped and cut.
    let text = |v: &serde_json::Value| {
        crate::text::shown_max(v.as_str().unwrap_or_default(), 100).into_owned()
    };
    (
        text(&error["code"]),
        first_line(error["message"].as_str().unwrap_or_default()),
        text(&error["innererror"]["code"]),
    )
}

fn is_transport(kind: &ErrorKind) -> bool {
    matches!(kind, ErrorKind::Connection | ErrorKind::Io)
}

fn tls_hint(cause: &str) -> &'static str {
    if cause.contains("certificate") || cause.contains("Certificate") {
        " (TLS: if the vault is reached through a private endpoint or a TLS-inspecting proxy, give its CA in ca_file)"
    } else {
        ""
    }
}

/// Classify one failed `get_secret` call.
pub(super) fn classify(err: &azure_core::Error, cx: &Context<'_>) -> Failure {
    let chain = errors_in_chain(err);
    let from_credential = chain
        .iter()
        .any(|e| matches!(e.kind(), ErrorKind::Credential));
    let http = chain.iter().find_map(|e| match e.kind() {
        ErrorKind::HttpResponse {
            status,
            error_code,
            raw_response,
        } => Some((e, *status, error_code.clone(), raw_response.as_deref())),
        _ => None,
    });
    let transport = chain.iter().any(|e| is_transport(e.kind()));
    let Context {
        vault,
        target,
        identity,
        fix_hint,
        authority,
    } = cx;

    if from_credential {
        return match http {
            Some((e, status, code, raw)) => {
                // Entra's error: the SDK puts the description in the message
                // and the AADSTS numbers in the error code.
                let described = first_line(&e.to_string());
                let code = code
                    .map(|c| format!(" (AADSTS{})", c.replace(',', ", AADSTS")))
                    .filter(|_| !described.contains("AADSTS"))
                    .unwrap_or_default();
                let status_num = u16::from(status);
                let message = format!(
                    "the token endpoint {authority} refused {identity} with HTTP {status_num}: {described}{code}; {fix_hint}"
                );
                if status == StatusCode::TooManyRequests || status_num >= 500 {
                    Failure::Transient {
                        error: ProviderError::unavailable(message),
                        after: raw.and_then(retry_after),
                        throttled: status == StatusCode::TooManyRequests,
                    }
                } else {
                    Failure::Final(ProviderError::Unauthenticated(message))
                }
            }
            None if transport => {
                let cause = root_cause(err);
                Failure::Transient {
                    error: ProviderError::unavailable(format!(
                        "cannot reach the token endpoint {authority} for {identity}: {cause}{}",
                        tls_hint(&cause)
                    )),
                    after: None,
                    throttled: false,
                }
            }
            None => Failure::Final(ProviderError::Unauthenticated(format!(
                "{identity} could not get a token: {}; {fix_hint}",
                credential_text(err)
            ))),
        };
    }

    if let Some((_, status, _, raw)) = http {
        let (code, message, inner) = raw.map(key_vault_error).unwrap_or_default();
        let said = if message.is_empty() {
            String::new()
        } else {
            format!(" (Key Vault: {code}: {message})")
        };
        let status_num = u16::from(status);
        return match status {
            StatusCode::NotFound => Failure::Final(ProviderError::NotFound(format!(
                "no {target} in vault {vault}; check vaultbridge.path / vaultbridge.version and the vault name{said}"
            ))),
            StatusCode::Forbidden if inner == "SecretDisabled" => {
                Failure::Final(ProviderError::Denied(format!(
                    "{target} in vault {vault} is disabled; enable it in the vault, or pin an enabled version with vaultbridge.version{said}"
                )))
            }
            StatusCode::Forbidden => Failure::Final(ProviderError::Denied(format!(
                "{identity} may not read {target} in vault {vault}; grant it the 'Key Vault Secrets User' role (RBAC vaults) or a 'get' secret access policy, and check the vault's firewall{said}"
            ))),
            StatusCode::Unauthorized => Failure::Final(ProviderError::Unauthenticated(format!(
                "vault {vault} refused the token of {identity}; check that tenant_id is the vault's tenant and authority_host matches the vault's cloud{said}"
            ))),
            StatusCode::TooManyRequests => Failure::Transient {
                error: ProviderError::unavailable(format!(
                    "vault {vault} is throttling requests (HTTP 429){said}"
                )),
                after: raw.and_then(retry_after),
                throttled: true,
            },
            StatusCode::BadRequest => Failure::Final(ProviderError::Invalid(format!(
                "vault {vault} refused the request for {target} as malformed{said}"
            ))),
            _ if status_num >= 500 || status == StatusCode::RequestTimeout => Failure::Transient {
                error: ProviderError::unavailable(format!(
                    "vault {vault} answered HTTP {status_num}{said}"
                )),
                after: raw.and_then(retry_after),
                throttled: false,
            },
            _ => Failure::Final(ProviderError::unavailable(format!(
                "vault {vault} answered HTTP {status_num} for {target}{said}"
            ))),
        };
    }

    if transport {
        let cause = root_cause(err);
        return Failure::Transient {
            error: ProviderError::unavailable(format!(
                "cannot reach vault {vault}: {cause}{}",
                tls_hint(&cause)
            )),
            after: None,
            throttled: false,
        };
    }

    let text = first_line(&err.to_string());
    if text.contains("challenge resource") {
        // The SDK's check that the vault's challenge names the vault's own
        // domain (kept on: it stops tokens going to a look-alike host).
        return Failure::Final(ProviderError::Unauthenticated(format!(
            "vault {vault} asked for a token for another domain, so none was sent; vault_url must be the vault's own name (https://<name>.vault.azure.net, or the sovereign cloud's vault domain): {text}"
        )));
    }
    Failure::Final(ProviderError::unavailable(format!(
        "request to vault {vault} failed: {text}"
    )))
}

/// A credential error without an HTTP answer (unreadable token file, no
/// managed identity endpoint...), minus the SDK's troubleshooting link lines.
fn credential_text(err: &azure_core::Error) -> String {
    let text = err.to_string();
    if let Some(aadsts) = aadsts_text(&text) {
        return aadsts;
    }
    let useful: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with("To troubleshoot"))
        .collect();
    first_line(&useful.join(" "))
}

/// `AADSTS<code>: <description>` out of an error's text, without what
/// follows the description's first line (trace and correlation ids).
///
/// `azure_identity` 1.0 fails to parse Entra's error body when the
/// description contains escaped characters (it always does: `\r\n` before
/// "Trace ID"), and reports a serde error quoting the description instead
/// of an HTTP error; the code is still in that text.
fn aadsts_text(text: &str) -> Option<String> {
    let start = text.find("AADSTS")?;
    let rest = &text[start..];
    let end = ["\\r", "\\n", "\r", "\n", " Trace ID", "\""]
        .iter()
        .filter_map(|stop| rest.find(stop))
        .min()
        .unwrap_or(rest.len());
    Some(first_line(&rest[..end]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_line_drops_entra_trace_lines() {
        let description = "AADSTS7000215: Invalid client secret provided.\r\nTrace ID: 1234\r\nCorrelation ID: 5678\r\nTimestamp: 2026";
        assert_eq!(
            first_line(description),
            "AADSTS7000215: Invalid client secret provided."
        );
        assert_eq!(
            first_line("AADSTS90002: Tenant not found. Trace ID: abc Correlation ID: def"),
            "AADSTS90002: Tenant not found."
        );
        let serde_quote = r#"ClientSecretCredential authentication failed. invalid type: string "AADSTS7000215: Invalid client secret provided.\r\nTrace ID: a88b\r\nCorrelation ID: 1"#;
        assert_eq!(
            aadsts_text(serde_quote).unwrap(),
            "AADSTS7000215: Invalid client secret provided."
        );
        assert_eq!(aadsts_text("no code here"), None);
        let long = "x".repeat(1000);
        let cut = first_line(&long);
        assert!(
            cut.starts_with(&"x".repeat(MAX_TEXT)) && cut.contains('…'),
            "{cut}"
        );
        assert!(cut.chars().count() < MAX_TEXT + 20, "{cut}");
        assert_eq!(
            first_line("Vault \u{1b}[31mgone\u{202e}"),
            "Vault \\u{1b}[31mgone\\u{202e}"
        );
    }
}
