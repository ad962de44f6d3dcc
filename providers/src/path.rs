//! The one check every secret path and version passes before any backend,
//! prefix or mount decision sees it.
//!
//! Whoever creates a Docker secret chooses its labels, and the plugin acts on
//! them with its own credentials. A path like
//! `database/creds/../../auth/token/lookup-self` is under a configured prefix
//! as text, but a URL library resolves its dot segments and Vault answers
//! with the plugin's own token. So a path is refused, not repaired, when it
//! has anything a URL, a file system or a proxy could read differently from
//! how we read it: empty, `.` or `..` segments, percent escapes, backslashes,
//! `#`, control or invisible characters. What is accepted means the same
//! thing as text, as a file path and as a URL path, so every later decision
//! (prefix, mount, file root) is made on exactly what the backend receives.

use std::fmt;

use crate::text::is_unsafe_char;

/// Longer than any backend's name (an AWS ARN is at most 2048).
pub const MAX_PATH_BYTES: usize = 2048;
/// Versions are ids or stage names: short.
pub const MAX_VERSION_BYTES: usize = 256;

/// A validated `vaultbridge.path`: `segment/segment[?key=value&…]`.
///
/// Only [`SecretPath::parse`] makes one, so a backend that receives a
/// `SecretPath` knows it was checked. The `?` query is for Vault logical
/// paths; other backends see it as part of the name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SecretPath {
    text: String,
    /// Where the `?` is, when there is a query.
    query_at: Option<usize>,
}

/// Why a path or version was refused. Never quotes it: the caller names the
/// label and shows the (escaped) value once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("it is empty")]
    Empty,
    #[error("it is {0} bytes long; at most {MAX_PATH_BYTES} are allowed")]
    TooLong(usize),
    #[error("it contains a control or invisible character (U+{0:04X}); write the path without it")]
    UnsafeChar(u32),
    #[error(
        "it has an empty segment (a leading or trailing '/', or '//'); paths are relative, like app/db"
    )]
    EmptySegment,
    #[error(
        "it has a '.' or '..' segment (also when followed by ';…', which servers and proxies may read as a path parameter and drop); write the path from the provider's root without '..' or '.' (e.g. app/db)"
    )]
    DotSegment,
    #[error(
        "it has a segment that starts with ';' (servers and proxies may read ';…' as a path parameter and see an empty segment); write the name without it"
    )]
    ParamSegment,
    #[error(
        "it has a segment that starts or ends with a space (URL parsers and servers may trim it, and '.. ' becomes '..'); write the name without it"
    )]
    EdgeSpace,
    #[error("it contains a percent escape ('%{0}'); write the character itself")]
    PercentEscape(String),
    #[error("it contains '{0}', which is not allowed in a secret path")]
    Forbidden(char),
    #[error("its '?' query must be key=value pairs joined by '&'")]
    BadQuery,
}

impl SecretPath {
    /// Validate `raw` (see the module docs). Nothing is trimmed or
    /// rewritten: what was written is what the backend gets, or an error.
    pub fn parse(raw: &str) -> Result<Self, PathError> {
        check_text(raw, MAX_PATH_BYTES)?;
        let query_at = raw.find('?');
        let path = &raw[..query_at.unwrap_or(raw.len())];
        if path.is_empty() {
            return Err(PathError::Empty);
        }
        for segment in path.split('/') {
            check_segment(segment)?;
        }
        if let Some(at) = query_at {
            let query = &raw[at + 1..];
            let pairs_ok = !query.is_empty()
                && query
                    .split('&')
                    .all(|pair| matches!(pair.split_once('='), Some((k, _)) if !k.is_empty()));
            if !pairs_ok || query.contains('?') {
                return Err(PathError::BadQuery);
            }
        }
        Ok(Self {
            text: raw.to_string(),
            query_at,
        })
    }

    /// The whole path as written, query included.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The path without its query.
    pub fn path(&self) -> &str {
        &self.text[..self.query_at.unwrap_or(self.text.len())]
    }

    /// The `key=value&…` after `?`, if any.
    pub fn query(&self) -> Option<&str> {
        self.query_at.map(|at| &self.text[at + 1..])
    }

    /// The query as pairs (each has a non-empty key).
    pub fn query_pairs(&self) -> Vec<(&str, &str)> {
        self.query()
            .map(|q| {
                q.split('&')
                    .filter_map(|pair| pair.split_once('='))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The segments of [`Self::path`]: none empty, none `.` or `..`.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.path().split('/')
    }

    /// Whether the path (without query) begins with the whole segments of
    /// `prefix` (`database/creds` matches `database/creds/ro`, not
    /// `database/credentials`). A trailing '/' on the prefix is ignored.
    pub fn has_prefix(&self, prefix: &str) -> bool {
        let prefix = prefix.trim_matches('/');
        let path = self.path();
        !prefix.is_empty()
            && path.starts_with(prefix)
            && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/'))
    }
}

impl fmt::Display for SecretPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::ops::Deref for SecretPath {
    type Target = str;
    fn deref(&self) -> &str {
        &self.text
    }
}

/// One segment of a path: not empty, not `.` or `..`, and not so after a
/// server or proxy that reads `;` as the start of path parameters (RFC 3986
/// §3.3; Tomcat, Jetty, some proxies) cuts it there: `..;x` would be `..`.
pub fn check_segment(segment: &str) -> Result<(), PathError> {
    if segment.is_empty() {
        return Err(PathError::EmptySegment);
    }
    if segment.starts_with(char::is_whitespace) || segment.ends_with(char::is_whitespace) {
        return Err(PathError::EdgeSpace);
    }
    match segment.split(';').next().unwrap_or_default() {
        "." | ".." => Err(PathError::DotSegment),
        "" => Err(PathError::ParamSegment),
        _ => Ok(()),
    }
}

/// Validate a `vaultbridge.version`: a version id or stage name, which
/// backends put in a URL segment, a query or a JSON field. So it follows
/// the segment rule too (`..` as a URL segment would climb).
pub fn check_version(raw: &str) -> Result<(), PathError> {
    check_text(raw, MAX_VERSION_BYTES)?;
    check_segment(raw)?;
    match raw
        .chars()
        .find(|c| matches!(c, '/' | '?' | '&' | '=') || c.is_whitespace())
    {
        Some(c) => Err(PathError::Forbidden(c)),
        None => Ok(()),
    }
}

/// The rules every path and version share.
fn check_text(raw: &str, max: usize) -> Result<(), PathError> {
    if raw.is_empty() {
        return Err(PathError::Empty);
    }
    if raw.len() > max {
        return Err(PathError::TooLong(raw.len()));
    }
    if let Some(c) = raw.chars().find(|c| is_unsafe_char(*c)) {
        return Err(PathError::UnsafeChar(c as u32));
    }
    if let Some(c) = raw.chars().find(|c| matches!(c, '\\' | '#')) {
        return Err(PathError::Forbidden(c));
    }
    // Any %XX, not only %2e/%2f: one decoding layer more or less anywhere
    // on the way (a proxy, the server's router) must not change the path.
    let bytes = raw.as_bytes();
    if let Some(at) = bytes
        .windows(3)
        .position(|w| w[0] == b'%' && w[1].is_ascii_hexdigit() && w[2].is_ascii_hexdigit())
    {
        return Err(PathError::PercentEscape(raw[at + 1..at + 3].to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(raw: &str) -> PathError {
        SecretPath::parse(raw).unwrap_err()
    }

    #[test]
    fn accepts_ordinary_paths_as_written() {
        for raw in [
            "db",
            "app/db.json",
            "team-a/app/db_password",
            "arn:aws:secretsmanager:eu-west-1:123456789012:secret:app/db-AbCdEf",
            "pki/issue/web?common_name=a.example.com&ttl=1h",
            "a/.hidden/b..c/...",
            "100%/done",
            "a/b;c/d",
            "a/...;x/b;",
        ] {
            let path = SecretPath::parse(raw).unwrap();
            assert_eq!(path.as_str(), raw);
        }
        let p = SecretPath::parse("pki/issue/web?common_name=a.example.com&ttl=").unwrap();
        assert_eq!(p.path(), "pki/issue/web");
        assert_eq!(
            p.query_pairs(),
            [("common_name", "a.example.com"), ("ttl", "")]
        );
        assert_eq!(p.segments().collect::<Vec<_>>(), ["pki", "issue", "web"]);
    }

    #[test]
    fn refuses_every_way_out_of_a_prefix() {
        assert_eq!(
            err("database/creds/../../auth/token/lookup-self"),
            PathError::DotSegment
        );
        assert_eq!(err("./db"), PathError::DotSegment);
        assert_eq!(err("a/."), PathError::DotSegment);
        // What a ';'-parameter-stripping proxy would turn into '..' or ''.
        assert_eq!(err("a/..;/b"), PathError::DotSegment);
        assert_eq!(err("a/..;x/b"), PathError::DotSegment);
        assert_eq!(err(".;x/db"), PathError::DotSegment);
        assert_eq!(err("a/.;"), PathError::DotSegment);
        assert_eq!(err("..;jsessionid=1?a=b"), PathError::DotSegment);
        assert_eq!(err("a/;x/b"), PathError::ParamSegment);
        assert_eq!(err(";"), PathError::ParamSegment);
        // What a URL parser that trims the input (a URL built as text)
        // would turn into '..' or '.'.
        for edge in [".. ", " ..", "a/. ", "a/ b", "prefix/..\u{a0}"] {
            assert_eq!(err(edge), PathError::EdgeSpace, "{edge:?}");
        }
        assert!(
            SecretPath::parse("a b/c d").is_ok(),
            "inner spaces are names"
        );
        assert_eq!(err("/etc/passwd"), PathError::EmptySegment);
        assert_eq!(err("a//b"), PathError::EmptySegment);
        assert_eq!(err("a/b/"), PathError::EmptySegment);
        assert_eq!(err("a/%2e%2e/b"), PathError::PercentEscape("2e".into()));
        assert_eq!(err("a%2Fb"), PathError::PercentEscape("2F".into()));
        assert_eq!(err("a%5c..%5cb"), PathError::PercentEscape("5c".into()));
        assert_eq!(err("a\\..\\b"), PathError::Forbidden('\\'));
        assert_eq!(err("a#frag"), PathError::Forbidden('#'));
        assert_eq!(err("a/b\n"), PathError::UnsafeChar(0x0a));
        assert_eq!(err("a\0b"), PathError::UnsafeChar(0));
        assert_eq!(err("a\u{202e}b"), PathError::UnsafeChar(0x202e));
        assert_eq!(err(""), PathError::Empty);
        assert_eq!(err("?a=b"), PathError::Empty);
        assert_eq!(err(&"a".repeat(5000)), PathError::TooLong(5000));
        assert_eq!(err("a?"), PathError::BadQuery);
        assert_eq!(err("a?b"), PathError::BadQuery);
        assert_eq!(err("a?=b"), PathError::BadQuery);
        assert_eq!(err("a?b=1?c=2"), PathError::BadQuery);
    }

    #[test]
    fn prefixes_match_whole_segments() {
        let p = SecretPath::parse("database/creds/ro").unwrap();
        assert!(p.has_prefix("database/creds/"));
        assert!(p.has_prefix("database/creds"));
        assert!(p.has_prefix("database/creds/ro"));
        assert!(!p.has_prefix("database/cred"));
        assert!(!p.has_prefix("database/creds/ro/x"));
        assert!(!p.has_prefix("/"));
        let q = SecretPath::parse("pki/issue/web?common_name=x").unwrap();
        assert!(q.has_prefix("pki/issue/"));
    }

    #[test]
    fn versions_are_single_tokens() {
        for ok in ["3", "AWSCURRENT", "4d5b0c6e-9f0a-4b2c-8d1e-2f3a4b5c6d7e"] {
            assert_eq!(check_version(ok), Ok(()));
        }
        assert_eq!(check_version("1/../x"), Err(PathError::Forbidden('/')));
        assert_eq!(check_version("1 2"), Err(PathError::Forbidden(' ')));
        assert_eq!(check_version("1?x=1"), Err(PathError::Forbidden('?')));
        assert_eq!(
            check_version("%2f"),
            Err(PathError::PercentEscape("2f".into()))
        );
        assert_eq!(check_version("1\r\n"), Err(PathError::UnsafeChar(0x0d)));
        assert_eq!(check_version(""), Err(PathError::Empty));
        assert_eq!(check_version("."), Err(PathError::DotSegment));
        assert_eq!(check_version(".."), Err(PathError::DotSegment));
        assert_eq!(check_version("..;x"), Err(PathError::DotSegment));
        assert_eq!(check_version(";1"), Err(PathError::ParamSegment));
        assert_eq!(check_version("..."), Ok(()));
        assert_eq!(check_version("1.2"), Ok(()));
    }
}
