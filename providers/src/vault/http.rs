//! The HTTP side: one rustls `reqwest` client built from OUR settings only,
//! the `vaultrs` client wrapped around it, and the classification of
//! failures.
//!
//! We build the `reqwest::Client` ourselves and hand it to `vaultrs`
//! (`VaultClient`'s fields are public) instead of `VaultClient::new`,
//! because `VaultClientSettingsBuilder` fills unset fields from `VAULT_*`
//! variables behind our back (any `VAULT_SKIP_VERIFY` value, even "false",
//! disables verification in some versions), and because `vaultrs` has no
//! connect timeout, no TLS server-name override and only *adds* CAs to the
//! system roots where we want `ca_file` to pin.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use secrecy::{ExposeSecret, SecretString};
use vaultrs::api::EndpointMiddleware;
use vaultrs::client::{VaultClient, VaultClientSettings};
use vaultrs::error::ClientError;

use crate::ConfigError;

/// A file setting and the config key it came from (for error messages).
pub(crate) type Keyed<'a> = (&'a Path, String);

/// The TLS files of one HTTP client (the provider's, or a cert login's own).
pub(crate) struct TlsFiles<'a> {
    pub ca_file: Option<Keyed<'a>>,
    /// Certificate and key.
    pub client: Option<(Keyed<'a>, Keyed<'a>)>,
}

/// Everything needed to talk to one Vault: the base URL (host replaced by
/// `tls_server_name` when set), the client, the namespace.
#[derive(Clone)]
pub(crate) struct Http {
    /// What requests are sent to (may carry `tls_server_name` as host).
    pub base: Url,
    /// `base` without its trailing '/', as `rustify` wants it: computed
    /// once here, not on every request.
    rest_base: String,
    /// The address as configured, for messages.
    pub shown: String,
    pub client: reqwest::Client,
    pub namespace: Option<String>,
    pub timeout: Duration,
}

/// Parse `address`, refusing what cannot work.
pub(crate) fn parse_address(address: &str, key: &str) -> Result<Url, ConfigError> {
    let k = format!("{key}.address");
    let url = Url::parse(address)
        .map_err(|err| ConfigError::new(&k, format!("'{address}' is not a URL: {err}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ConfigError::new(
            k,
            format!("'{address}': the scheme must be https:// (or http:// for a local dev server)"),
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(ConfigError::new(k, format!("'{address}' has no host")));
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(ConfigError::new(
            k,
            format!("'{address}': give only scheme, host, port (and an optional path prefix)"),
        ));
    }
    Ok(url)
}

impl Http {
    /// Build the client. Reads the PEM files (so that a bad file fails at
    /// start-up, naming its key) but does no network I/O.
    pub fn new(
        key: &str,
        address: &Url,
        tls: &TlsFiles<'_>,
        tls_server_name: Option<&str>,
        skip_verify: bool,
        namespace: Option<String>,
        timeout: Duration,
    ) -> Result<Self, ConfigError> {
        let https = address.scheme() == "https";
        let mut builder = reqwest::Client::builder()
            .tls_backend_rustls()
            .no_proxy()
            .connect_timeout(timeout)
            .timeout(timeout)
            // Every request carries X-Vault-Token: following a redirect would
            // send it wherever the answer points (another host, or plain
            // http). A 3xx is reported instead (`Failure::from_status`).
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("vaultbridge/", env!("CARGO_PKG_VERSION")));
        if !https {
            // reqwest#2988 (what vaultrs works around too): no platform
            // verifier for a plain-HTTP client.
            builder = builder.tls_certs_only(Vec::new());
        } else if let Some((path, ca_key)) = &tls.ca_file {
            // Pinning: only these CAs, not the system's.
            builder = builder.tls_certs_only(crate::tls::ca_bundle(path, ca_key)?);
        }
        if let Some(((cert, cert_key), (private, private_key))) = &tls.client {
            builder = builder.identity(crate::tls::identity(
                (cert, cert_key),
                (private, private_key),
            )?);
        }
        if skip_verify {
            builder = builder.tls_danger_accept_invalid_certs(true);
        }
        let mut base = address.clone();
        if let Some(name) = tls_server_name {
            // Connect to `address`'s host, but use `name` for SNI and
            // certificate verification: requests go to https://<name>:port
            // and a resolver maps <name> to the configured host's addresses.
            let host = address.host_str().unwrap_or_default().to_string();
            let port = address.port_or_known_default().unwrap_or(443);
            base.set_host(Some(name)).map_err(|err| {
                ConfigError::new(format!("{key}.tls_server_name"), format!("'{name}': {err}"))
            })?;
            builder = builder.dns_resolver(Arc::new(FixedHost { host, port }));
        }
        let client = builder.build().map_err(|err| {
            ConfigError::new(
                format!("{key}.address"),
                format!("cannot build the HTTPS client: {}", error_chain(&err)),
            )
        })?;
        // The path prefix must end in '/', or joining drops its last segment.
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        Ok(Self {
            rest_base: base.as_str().trim_end_matches('/').to_string(),
            base,
            shown: address.as_str().trim_end_matches('/').to_string(),
            client,
            namespace,
            timeout,
        })
    }

    /// A `vaultrs` client sending `token` (empty for a login).
    pub fn vault(&self, token: &SecretString) -> VaultClient {
        let token = token.expose_secret().to_string();
        VaultClient {
            http: rustify::clients::reqwest::Client::new(&self.rest_base, self.client.clone()),
            middle: EndpointMiddleware {
                token: token.clone(),
                version: "v1".into(),
                wrap: None,
                namespace: self.namespace.clone(),
            },
            // Every field set here, from our config: nothing from VAULT_*.
            settings: VaultClientSettings {
                address: self.base.clone(),
                ca_certs: Vec::new(),
                identity: None,
                timeout: Some(self.timeout),
                token,
                verify: true,
                version: 1,
                wrapping: false,
                namespace: self.namespace.clone(),
                proxy: None,
            },
        }
    }

    /// One call to `/v1/<path>` with our headers: the body of a 2xx
    /// answer (at most [`MAX_ANSWER_BYTES`]), else the classified failure.
    ///
    /// The URL is built segment by segment (each percent-encoded by the URL
    /// builder) and the query pair by pair, so that nothing in `path` or
    /// `query` can change which path is called; `path` is a validated
    /// [`crate::SecretPath`] or built from one.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<String>,
        token: &SecretString,
    ) -> Result<Vec<u8>, Failure> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| Failure::Other("the Vault address cannot carry a path".into()))?
            .pop_if_empty()
            .push("v1")
            .extend(path.split('/'));
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let mut request = self
            .client
            .request(method, url)
            .header("X-Vault-Request", "true")
            .header("X-Vault-Token", token.expose_secret());
        if let Some(namespace) = &self.namespace {
            request = request.header("X-Vault-Namespace", namespace);
        }
        if let Some(body) = body {
            request = request
                .header("Content-Type", "application/json")
                .body(body);
        }
        let mut response = request
            .send()
            .await
            .map_err(|e| Failure::from_reqwest(&e))?;
        let status = response.status().as_u16();
        // Vault's rate-limit quotas answer 429 with the wait in seconds.
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(crate::provider::retry_after_secs);
        // Bounded: a hostile or broken server must not make us buffer
        // gigabytes. No Docker secret is larger than 500 KiB.
        let mut bytes = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| Failure::from_reqwest(&e))?
        {
            if bytes.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(Failure::Other(format!(
                    "the answer is larger than {MAX_ANSWER_BYTES} bytes"
                )));
            }
            bytes.extend_from_slice(&chunk);
        }
        if status == 429 {
            return Err(Failure::RateLimited {
                retry_after,
                errors: Failure::from_status(status, &bytes).errors(),
            });
        }
        if !(200..300).contains(&status) {
            return Err(Failure::from_status(status, &bytes));
        }
        Ok(bytes)
    }
}

/// The most of one Vault answer we read.
pub(crate) const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// Resolves every name to `host`: used with `tls_server_name`, where the
/// URL carries the certificate's name but we must connect to `address`.
struct FixedHost {
    host: String,
    port: u16,
}

impl Resolve for FixedHost {
    fn resolve(&self, _name: Name) -> Resolving {
        let target = (self.host.clone(), self.port);
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host(target).await?.collect();
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// A failed call to Vault, classified, with nothing secret in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// Vault answered with an HTTP error status.
    Status { code: u16, errors: Vec<String> },
    /// No answer: connection refused, DNS, TLS, timeout.
    /// `sent`: the request may have reached Vault (anything but a failure
    /// to connect), so it may have taken effect.
    Transport {
        message: String,
        tls: bool,
        sent: bool,
    },
    /// HTTP 429 (a rate-limit quota): refused before acting; not to be
    /// asked again before `retry_after`, when Vault said.
    RateLimited {
        retry_after: Option<std::time::Duration>,
        errors: String,
    },
    /// An answer we could not use.
    Other(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Status { code, .. } => write!(f, "HTTP {code}: {}", self.errors()),
            _ => f.write_str(&self.errors()),
        }
    }
}

impl Failure {
    /// Whether a failed call may still have done its work (minted a
    /// credential, issued a certificate): then asking again is not safe.
    /// A rate limit (429) or a sealed or standby Vault (503) refused it
    /// before acting; a connection that failed never sent it.
    pub fn may_have_taken_effect(&self) -> bool {
        match self {
            Failure::Status { code: 429, .. } | Failure::RateLimited { .. } => false,
            // Vault's own 503s (sealed, standby); a proxy's 503 may come
            // after the upstream was reached.
            Failure::Status { code: 503, errors }
                if errors
                    .iter()
                    .any(|e| e.contains("sealed") || e.contains("standby")) =>
            {
                false
            }
            Failure::Status { .. } | Failure::Other(_) => true,
            Failure::Transport { sent, .. } => *sent,
        }
    }

    pub fn is_status(&self, code: u16) -> bool {
        matches!(self, Failure::Status { code: c, .. } if *c == code)
    }

    /// Vault's error strings, joined, cleaned of go-multierror framing.
    pub fn errors(&self) -> String {
        match self {
            Failure::Status { errors, .. } => errors.join("; "),
            Failure::Transport { message, .. }
            | Failure::Other(message)
            | Failure::RateLimited {
                errors: message, ..
            } => message.clone(),
        }
    }

    /// An HTTP error status from Vault and its body, of which only the
    /// `{"errors": [...]}` list is kept: never the rest (a 404 for a
    /// deleted version carries the secret's metadata).
    pub fn from_status(code: u16, body: &[u8]) -> Self {
        if (300..400).contains(&code) {
            return Failure::Status {
                code,
                errors: vec![format!(
                    "a redirect, which vaultbridge does not follow because it would carry the token; \
                     set address to the server that answers (e.g. the active node, with the scheme and port it serves)"
                )],
            };
        }
        let errors = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| {
                v.get("errors")?.as_array().map(|a| {
                    a.iter()
                        .filter_map(|e| e.as_str().map(str::to_string))
                        .collect()
                })
            })
            .unwrap_or_default();
        Failure::Status {
            code,
            errors: clean(errors),
        }
    }

    pub fn from_client(err: ClientError) -> Self {
        match err {
            ClientError::APIError { code, errors } => Failure::Status {
                code,
                errors: clean(errors),
            },
            ClientError::RestClientError { source } => Self::from_rest(source),
            ClientError::ResponseEmptyError | ClientError::ResponseDataEmptyError => {
                Failure::Other("Vault answered without data".into())
            }
            ClientError::JsonParseError { .. } => {
                Failure::Other("Vault's answer had an unexpected shape".into())
            }
            other => Failure::Other(format!("{other}")),
        }
    }

    fn from_rest(err: rustify::errors::ClientError) -> Self {
        use rustify::errors::ClientError as Rest;
        match err {
            Rest::ServerResponseError { code, content } => {
                Self::from_status(code, content.as_deref().unwrap_or_default().as_bytes())
            }
            Rest::RequestError { source, .. } | Rest::ResponseError { source } => {
                match source.downcast_ref::<reqwest::Error>() {
                    Some(err) => Self::from_reqwest(err),
                    None => Failure::Transport {
                        message: error_chain(source.as_ref()),
                        tls: false,
                        sent: true,
                    },
                }
            }
            Rest::ResponseParseError { .. } => {
                Failure::Other("Vault's answer had an unexpected shape".into())
            }
            other => Failure::Other(format!("{other}")),
        }
    }

    pub fn from_reqwest(err: &reqwest::Error) -> Self {
        let chain = error_chain(err);
        let tls = chain.contains("certificate")
            || chain.contains("tls")
            || chain.contains("TLS")
            || chain.contains("handshake");
        let message = if err.is_timeout() {
            format!("no answer in time ({chain})")
        } else {
            chain
        };
        Failure::Transport {
            message,
            tls,
            sent: !err.is_connect(),
        }
    }
}

/// `err` and its sources, once each, scrubbed ([`crate::text::cause_chain`]).
pub(crate) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    crate::text::cause_chain(err)
}

/// How many of Vault's error strings are kept, and how many characters of
/// each: a hostile or broken server may send thousands.
const MAX_ERRORS: usize = 5;
const MAX_ERROR_CHARS: usize = 200;

/// "1 error occurred:\n\t* permission denied\n\n" -> "permission denied";
/// one line each, escaped and bounded, at most [`MAX_ERRORS`] of them (then
/// a count of the rest).
pub(crate) fn clean(errors: Vec<String>) -> Vec<String> {
    let mut lines = errors
        .into_iter()
        .flat_map(|e| {
            let items: Vec<String> = e
                .lines()
                .filter_map(|l| l.trim().strip_prefix("* ").map(str::to_string))
                .collect();
            if items.is_empty() { vec![e] } else { items }
        })
        .map(|e| {
            // The server's words: escaped and bounded like any foreign text.
            let line = e.split_whitespace().collect::<Vec<_>>().join(" ");
            crate::text::shown_max(&line, MAX_ERROR_CHARS).into_owned()
        })
        .filter(|e| !e.is_empty());
    let mut kept: Vec<String> = lines.by_ref().take(MAX_ERRORS).collect();
    let rest = lines.count();
    if rest > 0 {
        kept.push(format!("…and {rest} more error(s)"));
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleans_multierror_framing() {
        assert_eq!(
            clean(vec!["1 error occurred:\n\t* permission denied\n\n".into()]),
            vec!["permission denied".to_string()]
        );
        assert_eq!(
            clean(vec!["no handler for route \"x\"".into()]),
            vec!["no handler for route \"x\"".to_string()]
        );
    }

    #[test]
    fn keeps_a_bounded_number_of_bounded_errors() {
        let many: Vec<String> = (0..10_000)
            .map(|i| format!("error {i}\n\x1b[2K{}", "x".repeat(10_000)))
            .collect();
        let kept = clean(many);
        assert_eq!(kept.len(), MAX_ERRORS + 1);
        assert_eq!(kept[MAX_ERRORS], "…and 9995 more error(s)");
        assert!(kept[0].starts_with("error 0 \\u{1b}[2Kxxx"), "{}", kept[0]);
        let total: usize = kept.iter().map(|e| e.chars().count()).sum();
        assert!(total < (MAX_ERROR_CHARS + 20) * (MAX_ERRORS + 1), "{total}");
        let multi = "7 errors occurred:\n".to_string() + &"\t* denied\n".repeat(7);
        assert_eq!(clean(vec![multi]).len(), MAX_ERRORS + 1);
    }

    #[test]
    fn keeps_only_the_errors_of_a_status_body() {
        let body = br#"{"errors":["1 error occurred:\n\t* permission denied\n\n"],"data":{"secret":"s3cr3t"}}"#;
        let failure = Failure::from_status(403, body);
        assert_eq!(
            failure,
            Failure::Status {
                code: 403,
                errors: vec!["permission denied".to_string()]
            }
        );
        assert!(!format!("{failure:?}").contains("s3cr3t"));
        assert_eq!(
            Failure::from_status(502, b"<html>bad gateway</html>"),
            Failure::Status {
                code: 502,
                errors: vec![]
            }
        );
        assert_eq!(
            Failure::from_status(500, b""),
            Failure::Status {
                code: 500,
                errors: vec![]
            }
        );
    }

    #[tokio::test]
    async fn redirects_are_reported_not_followed() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        // Where a hostile redirect points: it must never see a connection.
        let elsewhere = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        elsewhere.set_nonblocking(true).unwrap();
        let elsewhere_port = elsewhere.local_addr().unwrap().port();
        let vault = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let vault_addr = vault.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut conn, _) = vault.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = conn.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buf[..n]);
            }
            let answer = format!(
                "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://127.0.0.1:{elsewhere_port}/v1/secret/data/x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            conn.write_all(answer.as_bytes()).await.unwrap();
            request
        });

        let address = parse_address(&format!("http://{vault_addr}"), "providers.v").unwrap();
        let tls = TlsFiles {
            ca_file: None,
            client: None,
        };
        let http = Http::new(
            "providers.v",
            &address,
            &tls,
            None,
            false,
            None,
            Duration::from_secs(5),
        )
        .unwrap();
        let token = SecretString::from("s.token-that-must-stay-home");
        let failure = http
            .send(reqwest::Method::GET, "secret/data/x", &[], None, &token)
            .await
            .unwrap_err();

        let request = server.await.unwrap();
        assert!(
            String::from_utf8_lossy(&request).contains("s.token-that-must-stay-home"),
            "the test server should have seen the token"
        );
        // Had the redirect been followed, that connection would be queued
        // by now: `send` only returns after following.
        assert_eq!(
            elsewhere.accept().unwrap_err().kind(),
            std::io::ErrorKind::WouldBlock,
            "the redirect was followed, with the token"
        );
        assert!(failure.is_status(307), "{failure}");
        let error = crate::vault::unavailable(&http.shown, "reading secret/data/x", failure);
        let message = error.to_string();
        assert!(message.contains("HTTP 307"), "{message}");
        assert!(message.contains("redirect"), "{message}");
        assert!(!message.contains("token-that-must"), "{message}");
    }

    #[test]
    fn refuses_bad_addresses() {
        assert!(parse_address("vault:8200", "providers.v").is_err());
        let err = parse_address("ftp://vault", "providers.v").unwrap_err();
        assert_eq!(err.key, "providers.v.address");
        assert!(parse_address("https://vault?x=1", "providers.v").is_err());
        assert!(parse_address("https://vault.example.com:8200", "providers.v").is_ok());
    }
}
