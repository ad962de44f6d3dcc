//! The one scrubber: what must not reach a log or an error from a backend's
//! own words — credentials, signatures, tokens, request ids, the canonical
//! request a signature mismatch quotes. Every backend's error text goes
//! through [`scrub`] (via [`super::cause_chain`] or directly).

/// Keys whose value is a credential or a signature: `Key=value`, `Key: value`.
const SECRET_KEYS: &[&str] = &[
    "credential",
    "signature",
    "x-amz-security-token",
    "x-amz-credential",
    "x-amz-signature",
    "securitytoken",
    "security_token",
    "sessiontoken",
    "session_token",
    "aws_secret_access_key",
    "secret_access_key",
    "aws_session_token",
    "authorization",
    "x-vault-token",
    "client_token",
    "secret_id",
    "client_secret",
    "access_token",
    "client_assertion",
    "password",
];

/// Keys whose value is a request id (useless to the operator, noise in logs).
const REQUEST_ID_KEYS: &[&str] = &[
    "request id",
    "requestid",
    "request_id",
    "request-id",
    "x-amzn-requestid",
    "x-amz-request-id",
    "x-amz-id-2",
    "extended_request_id",
];

/// Access key ids (`AKIA…` long-term, `ASIA…` temporary).
const ACCESS_KEY_PREFIXES: &[&str] = &["AKIA", "ASIA"];

/// Remove request ids and credential fragments from text a backend or its
/// SDK wrote: values after credential/signature/token/request-id keys,
/// access key ids, long hexadecimal runs (signatures, hashes), long base64
/// runs (session tokens), and the canonical request / string-to-sign AWS
/// appends to a signature mismatch.
pub fn scrub(text: &str) -> String {
    let mut text = text.to_string();
    for marker in [
        "The Canonical String for this request should have been",
        "The String-to-Sign should have been",
        "canonical request:",
        "string to sign:",
    ] {
        if let Some(at) = text.to_ascii_lowercase().find(&marker.to_ascii_lowercase()) {
            text.truncate(at);
            text.push_str("[canonical request omitted]");
        }
    }
    let text = redact_after_keys(&text, SECRET_KEYS, "[redacted]");
    let text = redact_after_keys(&text, REQUEST_ID_KEYS, "[request id]");
    redact_tokens(&text)
}

/// Replace the value following any of `keys` (case-insensitive), skipping
/// separators such as `=`, `:`, quotes, spaces and `Some(`.
fn redact_after_keys(text: &str, keys: &[&str], replacement: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        let hit = keys.iter().find(|key| {
            lower[i..].starts_with(*key)
                && (i == 0 || !lower.as_bytes()[i - 1].is_ascii_alphanumeric())
        });
        let Some(key) = hit else {
            let c = text[i..].chars().next().expect("in bounds");
            out.push(c);
            i += c.len_utf8();
            continue;
        };
        let key_end = i + key.len();
        out.push_str(&text[i..key_end]);
        // Skip separators; require at least one, so plain prose such as
        // "signature we calculated" is left alone.
        let rest = &text[key_end..];
        let trimmed = rest.trim_start_matches(['=', ':', '"', '\'', ' ', '(', '{']);
        let trimmed = trimmed.strip_prefix("Some(").unwrap_or(trimmed);
        let trimmed = trimmed.trim_start_matches(['"', '\'']);
        let separators = rest.len() - trimmed.len();
        if !rest[..separators].contains(['=', ':']) {
            i = key_end;
            continue;
        }
        let value_len = trimmed
            .find(|c: char| {
                c.is_whitespace() || matches!(c, ',' | '"' | '\'' | ')' | '}' | ';' | '&')
            })
            .unwrap_or(trimmed.len());
        if value_len == 0 {
            i = key_end;
            continue;
        }
        out.push_str(&rest[..separators]);
        out.push_str(replacement);
        i = key_end + separators + value_len;
    }
    out
}

/// Redact access key ids, long hex runs and long base64 runs wherever they are.
fn redact_tokens(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        out.push_str(&redact_word(word));
        word.clear();
    };
    for c in text.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=') {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

fn redact_word(word: &str) -> String {
    let is_key_id = ACCESS_KEY_PREFIXES.iter().any(|p| word.starts_with(p))
        && word.len() >= 16
        && word
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
    if is_key_id {
        return "[access key id]".into();
    }
    if word.len() >= 40 && word.bytes().all(|b| b.is_ascii_hexdigit()) {
        return "[redacted]".into();
    }
    let base64ish = word.len() >= 64
        && word.bytes().any(|b| b.is_ascii_digit())
        && word.bytes().any(|b| b.is_ascii_uppercase())
        && word.bytes().any(|b| b.is_ascii_lowercase());
    if base64ish {
        return "[redacted]".into();
    }
    word.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_removes_request_ids() {
        let text = "service error: ResourceNotFoundException: gone, request id: 6d1b2c3a-0f2e-4a4b-9d41-3b4a5c6d7e8f";
        let out = scrub(text);
        assert!(!out.contains("6d1b2c3a"), "{out}");
        assert!(out.contains("ResourceNotFoundException: gone"), "{out}");
        let debug = r#"ErrorMetadata { code: Some("X"), extras: Some({"aws_request_id": "abc-123-def"}) } RequestId: ABCDEF0123"#;
        let out = scrub(debug);
        assert!(
            !out.contains("abc-123-def") && !out.contains("ABCDEF0123"),
            "{out}"
        );
        let header = "x-amzn-RequestId=0a1b2c3d-0000-1111-2222-333344445555";
        assert!(!scrub(header).contains("0a1b2c3d"), "{}", scrub(header));
    }

    #[test]
    fn scrub_removes_credential_fragments() {
        let text = "Authorization: AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20260101/us-east-1/secretsmanager/aws4_request, \
                    SignedHeaders=host;x-amz-date, Signature=fe5f80f77d5fa3beca038a248ff027d0445342fe2855ddc963176630326f1024";
        let out = scrub(text);
        assert!(!out.contains("AKIAIOSFODNN7EXAMPLE"), "{out}");
        assert!(!out.contains("fe5f80f77d5f"), "{out}");
        let loose = "The security token included in the request is invalid. key ASIAQWERTYUIOPASDFGH token=IQoJb3JpZ2luX2VjEJr//////////wEaCXVzLWVhc3QtMSJHMEUCIQDexample";
        let out = scrub(loose);
        assert!(
            out.starts_with("The security token included in the request is invalid."),
            "{out}"
        );
        assert!(
            !out.contains("ASIAQWERTYUIOPASDFGH") && !out.contains("IQoJb3JpZ2lu"),
            "{out}"
        );
        let mismatch = "The request signature we calculated does not match the signature you provided. \
                        Check your AWS Secret Access Key and signing method.\n\nThe Canonical String for this request should have been\n'POST\n/\n\nhost:x'";
        let out = scrub(mismatch);
        assert!(
            out.contains("The request signature we calculated does not match"),
            "{out}"
        );
        assert!(!out.contains("host:x"), "{out}");
        let session = "aws_session_token = FwoGZXIvYXdzEJr";
        assert!(
            !scrub(session).contains("FwoGZXIvYXdzEJr"),
            "{}",
            scrub(session)
        );
    }

    #[test]
    fn scrub_keeps_useful_text() {
        let denied = "User: arn:aws:iam::123456789012:user/reader is not authorized to perform: \
                      secretsmanager:GetSecretValue on resource: db-password because no identity-based policy allows it";
        assert_eq!(scrub(denied), denied);
        let version = "Secrets Manager can't find the specified secret value for VersionId: 0a1b2c3d-0000-1111-2222-333344445555";
        assert_eq!(scrub(version), version);
        assert_eq!(scrub("héllo wörld — ok"), "héllo wörld — ok");
    }

    #[test]
    fn scrub_removes_vault_and_entra_credentials() {
        for (text, secret) in [
            ("X-Vault-Token: hvs.CAESIJ1abc", "hvs.CAESIJ1abc"),
            ("{\"client_token\":\"s.abcdef\"}", "s.abcdef"),
            ("secret_id=9f1c2d3e", "9f1c2d3e"),
            ("client_secret=Qx~8Q~abc", "Qx~8Q~abc"),
            ("password: hunter2", "hunter2"),
        ] {
            let out = scrub(text);
            assert!(!out.contains(secret), "{text} -> {out}");
        }
        assert_eq!(scrub("permission denied"), "permission denied");
    }
}
