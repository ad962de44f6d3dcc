//! The HTTP side: one rustls configuration built from OUR settings only,
//! used by our HTTP/1 client for every call that reads a secret
//! ([`Http::send`], `http1.rs`) and by the `reqwest` client that `vaultrs`
//! logs in with; and the classification of failures.
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

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use secrecy::{ExposeSecret, SecretString};
use vaultrs::api::EndpointMiddleware;
use vaultrs::client::{VaultClient, VaultClientSettings};
use vaultrs::error::ClientError;

use super::http1;
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
/// `tls_server_name` when set), the clients, the namespace.
#[derive(Clone)]
pub(crate) struct Http {
    /// What `vaultrs` sends requests to (may carry `tls_server_name` as host).
    pub base: Url,
    /// `base` without its trailing '/', as `rustify` wants it: computed
    /// once here, not on every request.
    rest_base: String,
    /// The address as configured, for messages.
    pub shown: String,
    /// For `vaultrs` (logins, token lookups).
    pub client: reqwest::Client,
    /// For [`Http::send`].
    sends: Arc<Sends>,
    pub namespace: Option<String>,
    pub timeout: Duration,
}

/// What every [`Http::send`] uses, prepared once.
struct Sends {
    /// Our client, with its idle connections.
    client: http1::Client,
    /// `base`'s path and `/v1`, encoded: what every path starts with.
    prefix: String,
    /// The headers every request carries: Host, User-Agent,
    /// X-Vault-Request, X-Vault-Namespace.
    headers: HeaderMap,
}

/// What `url` percent-encodes in one path segment of an http(s) URL
/// (`path_segments_mut().push`): so that no label text can add a
/// segment, a query or a fragment. Checked against `url` in the tests.
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'<')
    .add(b'>')
    .add(b'`')
    .add(b'#')
    .add(b'?')
    .add(b'{')
    .add(b'}')
    .add(b'/')
    .add(b'%')
    .add(b'\\');

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
        let tls = Arc::new(tls_config(key, https, tls, skip_verify)?);
        let mut builder = reqwest::Client::builder()
            .tls_backend_preconfigured((*tls).clone())
            .no_proxy()
            .connect_timeout(timeout)
            .timeout(timeout)
            // Every request carries X-Vault-Token: following a redirect would
            // send it wherever the answer points (another host, or plain
            // http). A 3xx is reported instead (`Failure::from_status`).
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(USER_AGENT);
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
        // Our client connects to `address` and, for https, presents and
        // verifies `base`'s host: `tls_server_name` when set.
        let host = base.host_str().unwrap_or_default();
        let tls = if https {
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            let name = ServerName::try_from(bare.to_string()).map_err(|err| {
                ConfigError::new(format!("{key}.address"), format!("'{host}': {err}"))
            })?;
            Some((tls, name))
        } else {
            None
        };
        let mut headers = HeaderMap::new();
        let host_header = match base.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        };
        let header = |value: &str, field: &str| {
            HeaderValue::from_str(value).map_err(|_| {
                ConfigError::new(format!("{key}.{field}"), "cannot be sent in an HTTP header")
            })
        };
        headers.insert(http::header::HOST, header(&host_header, "address")?);
        headers.insert(
            http::header::USER_AGENT,
            HeaderValue::from_static(USER_AGENT),
        );
        headers.insert("x-vault-request", HeaderValue::from_static("true"));
        if let Some(namespace) = &namespace {
            headers.insert("x-vault-namespace", header(namespace, "namespace")?);
        }
        let prefix = format!(
            "{}/v1",
            base.path().strip_suffix('/').unwrap_or(base.path())
        );
        Ok(Self {
            rest_base: base.as_str().trim_end_matches('/').to_string(),
            sends: Arc::new(Sends {
                client: http1::Client::new(address, tls, timeout),
                prefix,
                headers,
            }),
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
    /// A GET is sent a second time when the connection it went out on had
    /// been closed by Vault while idle (see `http1.rs`); use
    /// [`Http::send_once`] for a GET that may mint.
    ///
    /// The path is built segment by segment (each percent-encoded) and the
    /// query pair by pair (form-encoded), so that nothing in `path` or
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
        let may_resend = method == reqwest::Method::GET;
        self.call(method, path, query, body, token, may_resend)
            .await
    }

    /// [`Http::send`], never sent twice: for paths that may mint on a GET
    /// (database/creds).
    pub async fn send_once(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<String>,
        token: &SecretString,
    ) -> Result<Vec<u8>, Failure> {
        self.call(method, path, query, body, token, false).await
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<String>,
        token: &SecretString,
        may_resend: bool,
    ) -> Result<Vec<u8>, Failure> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut token = HeaderValue::from_str(token.expose_secret()).map_err(|_| {
            // The token's text is not repeated.
            Failure::Other("the token has characters an HTTP header cannot carry".into())
        })?;
        token.set_sensitive(true);
        let target = self.target(path, query);
        let call = http1::Call {
            method: &method,
            target: &target,
            headers: &self.sends.headers,
            token,
            body: body.map(Bytes::from),
            may_resend,
        };
        let answer = self
            .sends
            .client
            .call(&call, MAX_ANSWER_BYTES, deadline)
            .await
            .map_err(|err| self.failure(err))?;
        let status = answer.status;
        if status == 429 {
            // Vault's rate-limit quotas answer 429 with the wait in seconds.
            let retry_after = answer
                .retry_after
                .as_ref()
                .and_then(|value| value.to_str().ok())
                .and_then(crate::provider::retry_after_secs);
            return Err(Failure::RateLimited {
                retry_after,
                errors: Failure::from_status(status, &answer.body).errors(),
            });
        }
        if !(200..300).contains(&status) {
            return Err(Failure::from_status(status, &answer.body));
        }
        Ok(answer.body)
    }

    /// The request target: `prefix`, each segment of `path` encoded, the
    /// query form-encoded. "." and ".." segments are dropped, as `url`
    /// drops them: no label walks up the path.
    fn target(&self, path: &str, query: &[(&str, &str)]) -> String {
        let prefix = &self.sends.prefix;
        let mut target = String::with_capacity(prefix.len() + path.len() + 32);
        target.push_str(prefix);
        for segment in path.split('/') {
            if matches!(segment, "." | "..") {
                continue;
            }
            target.push('/');
            target.extend(utf8_percent_encode(segment, SEGMENT));
        }
        if !query.is_empty() {
            target.push('?');
            let start = target.len();
            let mut pairs = form_urlencoded::Serializer::for_suffix(target, start);
            pairs.extend_pairs(query);
            target = pairs.finish();
        }
        target
    }

    /// Our client's error as a [`Failure`]; never the request's headers.
    fn failure(&self, err: http1::Error) -> Failure {
        match err {
            http1::Error::Connect { message, tls } => Failure::Transport {
                message,
                tls,
                sent: false,
            },
            http1::Error::Exchange { message } => Failure::Transport {
                tls: mentions_tls(&message),
                message,
                sent: true,
            },
            http1::Error::TooLarge => Failure::Other(format!(
                "the answer is larger than {MAX_ANSWER_BYTES} bytes"
            )),
            http1::Error::Timeout { sent } => Failure::Transport {
                message: format!(
                    "no answer in time (timeout {})",
                    humantime::format_duration(self.timeout)
                ),
                tls: false,
                sent,
            },
        }
    }
}

/// Our User-Agent, on every request of both clients.
const USER_AGENT: &str = concat!("vaultbridge/", env!("CARGO_PKG_VERSION"));

/// The TLS configuration of one HTTP client (the provider's, or a cert
/// login's own), from our settings only: `ca_file` pins (only those CAs),
/// else the system's roots; the client certificate; `tls_skip_verify`.
/// Built once, for both our client and reqwest's.
fn tls_config(
    key: &str,
    https: bool,
    tls: &TlsFiles<'_>,
    skip_verify: bool,
) -> Result<rustls::ClientConfig, ConfigError> {
    let cannot = |err: rustls::Error| {
        ConfigError::new(
            format!("{key}.address"),
            format!("cannot build the TLS client: {err}"),
        )
    };
    let provider = CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(rustls::ALL_VERSIONS)
        .map_err(cannot)?;
    if skip_verify
        && https
        && let Some((path, ca_key)) = &tls.ca_file
    {
        // Not used, but a broken file is still reported at start-up.
        crate::tls::ca_certificates(path, ca_key)?;
    }
    let builder = if skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerifier(provider)))
    } else if !https {
        // Plain http: no roots needed, and none loaded.
        builder.with_root_certificates(rustls::RootCertStore::empty())
    } else if let Some((path, ca_key)) = &tls.ca_file {
        // Pinning: only these CAs, not the system's.
        let mut roots = rustls::RootCertStore::empty();
        for certificate in crate::tls::ca_certificates(path, ca_key)? {
            roots.add(certificate).map_err(|err| {
                ConfigError::new(
                    ca_key.clone(),
                    format!(
                        "{}: a certificate cannot be used as a CA: {err}",
                        path.display()
                    ),
                )
            })?;
        }
        builder.with_root_certificates(roots)
    } else {
        let verifier = rustls_platform_verifier::Verifier::new(provider).map_err(cannot)?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
    };
    let mut config = match &tls.client {
        Some(((cert, cert_key), (private, private_key))) => {
            let (chain, secret) = crate::tls::identity((cert, cert_key), (private, private_key))?;
            builder
                .with_client_auth_cert(chain, secret)
                .map_err(|err| {
                    ConfigError::new(
                        cert_key.clone(),
                        format!(
                            "{} and {}: not a usable certificate and private key: {err}",
                            cert.display(),
                            private.display()
                        ),
                    )
                })?
        }
        None => builder.with_no_client_auth(),
    };
    // Both clients speak HTTP/1.1 only.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// `tls_skip_verify`: any certificate is accepted (the handshake's
/// signatures are still checked).
#[derive(Debug)]
struct NoVerifier(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Whether an error's text says TLS failed.
fn mentions_tls(chain: &str) -> bool {
    chain.contains("certificate")
        || chain.contains("tls")
        || chain.contains("TLS")
        || chain.contains("handshake")
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
        let tls = mentions_tls(&chain);
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

    /// The request target is what the `url` builder made of the same path
    /// and query before our client: label text cannot add a segment, a
    /// query parameter or a fragment.
    #[test]
    fn builds_the_target_segment_by_segment_as_url_did() {
        let http = local_http("http://127.0.0.1:8200/prefix", Duration::from_secs(1));
        let paths = [
            "secret/data/app/db",
            "secret/data/a b/c%2fd",
            "secret/data/x?version=1#frag",
            "secret/data/../../sys/seal",
            "secret/data/./x/",
            "secret//data",
            "secret/data/ünïcode/\\back/`{x}`/<\"q\">/;=@:+&$,!*'()[]|^~",
            "secret/data/\u{7f}\u{1}",
        ];
        let queries: [&[(&str, &str)]; 3] = [
            &[],
            &[("version", "3")],
            &[("a b", "c&d=e"), ("x", "ü+%/?#")],
        ];
        for path in paths {
            for query in queries {
                let mut url = Url::parse("http://127.0.0.1:8200/prefix/").unwrap();
                url.path_segments_mut()
                    .unwrap()
                    .pop_if_empty()
                    .push("v1")
                    .extend(path.split('/'));
                if !query.is_empty() {
                    url.query_pairs_mut().extend_pairs(query);
                }
                let expected = match url.query() {
                    Some(query) => format!("{}?{query}", url.path()),
                    None => url.path().to_string(),
                };
                assert_eq!(http.target(path, query), expected, "{path} {query:?}");
            }
        }
        let root = local_http("http://127.0.0.1:8200", Duration::from_secs(1));
        assert_eq!(root.target("secret/data/x", &[]), "/v1/secret/data/x");
    }

    // Our HTTP/1 client against a canned server on a real socket.

    /// What the canned server does with one request.
    #[derive(Clone)]
    enum Reply {
        /// Write these bytes and keep the connection open.
        Answer(Vec<u8>),
        /// Write these bytes, then close.
        AnswerAndClose(Vec<u8>),
        /// Close without answering: what a server does that closed an
        /// idle connection as the request arrived.
        Close,
        /// Never answer.
        Stall,
    }

    /// A 200 with `body`, kept alive.
    fn ok(body: &str) -> Reply {
        Reply::Answer(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
        )
    }

    /// The requests a canned server saw: (connection number, request
    /// head and body).
    type Seen = Arc<std::sync::Mutex<Vec<(usize, String)>>>;

    /// Serve canned replies on 127.0.0.1: the n-th request (over all
    /// connections) gets `replies[n]`, later ones the last reply.
    async fn canned(replies: Vec<Reply>) -> (String, Seen) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        let seen: Seen = Arc::default();
        let requests = Arc::new(AtomicUsize::new(0));
        let replies = Arc::new(replies);
        let log = seen.clone();
        tokio::spawn(async move {
            for connection in 0.. {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let (log, requests, replies) = (log.clone(), requests.clone(), replies.clone());
                tokio::spawn(async move {
                    let mut buffer = Vec::new();
                    loop {
                        // One request: the head, then Content-Length bytes.
                        let head_end = loop {
                            if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                                break at + 4;
                            }
                            let mut chunk = [0u8; 4096];
                            match socket.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                            }
                        };
                        let head = String::from_utf8_lossy(&buffer[..head_end]).to_lowercase();
                        let length: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map_or(0, |n| n.trim().parse().unwrap());
                        while buffer.len() < head_end + length {
                            let mut chunk = [0u8; 4096];
                            match socket.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let request: Vec<u8> = buffer.drain(..head_end + length).collect();
                        log.lock()
                            .unwrap()
                            .push((connection, String::from_utf8_lossy(&request).into_owned()));
                        let n = requests.fetch_add(1, Ordering::SeqCst);
                        match replies[n.min(replies.len() - 1)].clone() {
                            Reply::Answer(bytes) => {
                                if socket.write_all(&bytes).await.is_err() {
                                    return;
                                }
                            }
                            Reply::AnswerAndClose(bytes) => {
                                let _ = socket.write_all(&bytes).await;
                                return;
                            }
                            Reply::Close => return,
                            Reply::Stall => {
                                tokio::time::sleep(Duration::from_secs(3600)).await;
                            }
                        }
                    }
                });
            }
        });
        (address, seen)
    }

    fn local_http(address: &str, timeout: Duration) -> Http {
        let tls = TlsFiles {
            ca_file: None,
            client: None,
        };
        let address = parse_address(address, "providers.v").unwrap();
        Http::new(
            "providers.v",
            &address,
            &tls,
            None,
            false,
            Some("team-a/".into()),
            timeout,
        )
        .unwrap()
    }

    const TOKEN: &str = "s.token-that-must-stay-home";

    async fn get(http: &Http, path: &str) -> Result<Vec<u8>, Failure> {
        let token = SecretString::from(TOKEN);
        http.send(reqwest::Method::GET, path, &[], None, &token)
            .await
    }

    async fn post(http: &Http, path: &str) -> Result<Vec<u8>, Failure> {
        let token = SecretString::from(TOKEN);
        let body = Some(r#"{"ttl":"1h"}"#.to_string());
        http.send(reqwest::Method::POST, path, &[], body, &token)
            .await
    }

    fn connections(seen: &Seen) -> Vec<usize> {
        seen.lock().unwrap().iter().map(|(c, _)| *c).collect()
    }

    #[tokio::test]
    async fn keeps_one_connection_alive_for_calls_in_a_row() {
        let (address, seen) = canned(vec![ok(r#"{"n":1}"#), ok(r#"{"n":2}"#)]).await;
        let http = local_http(&address, Duration::from_secs(5));
        assert_eq!(get(&http, "secret/data/a").await.unwrap(), br#"{"n":1}"#);
        let token = SecretString::from(TOKEN);
        let query = [("version", "2")];
        let second = http
            .send(
                reqwest::Method::GET,
                "secret/data/a b",
                &query,
                None,
                &token,
            )
            .await
            .unwrap();
        assert_eq!(second, br#"{"n":2}"#);
        assert_eq!(
            connections(&seen),
            [0, 0],
            "the second call did not reuse the connection"
        );
        let requests = seen.lock().unwrap();
        let first = &requests[0].1;
        let host = address.trim_start_matches("http://");
        assert!(
            first.starts_with("GET /v1/secret/data/a HTTP/1.1\r\n"),
            "{first}"
        );
        for header in [
            format!("host: {host}\r\n"),
            format!("user-agent: vaultbridge/{}\r\n", env!("CARGO_PKG_VERSION")),
            "x-vault-request: true\r\n".into(),
            "x-vault-namespace: team-a/\r\n".into(),
            format!("x-vault-token: {TOKEN}\r\n"),
        ] {
            assert!(first.contains(&header), "{header} missing from {first}");
        }
        assert!(
            requests[1]
                .1
                .starts_with("GET /v1/secret/data/a%20b?version=2 HTTP/1.1\r\n"),
            "{}",
            requests[1].1
        );
    }

    #[tokio::test]
    async fn posts_a_json_body() {
        let (address, seen) = canned(vec![ok("{}")]).await;
        let http = local_http(&address, Duration::from_secs(5));
        post(&http, "auth/token/create").await.unwrap();
        let request = &seen.lock().unwrap()[0].1;
        assert!(
            request.starts_with("POST /v1/auth/token/create HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(
            request.contains("content-type: application/json\r\n"),
            "{request}"
        );
        assert!(request.contains("content-length: 12\r\n"), "{request}");
        assert!(request.ends_with("\r\n\r\n{\"ttl\":\"1h\"}"), "{request}");
    }

    #[tokio::test]
    async fn a_get_whose_reused_connection_closes_under_it_is_sent_once_more() {
        // The second request finds its connection closed by the server.
        let (address, seen) = canned(vec![ok("{}"), Reply::Close, ok(r#"{"again":1}"#)]).await;
        let http = local_http(&address, Duration::from_secs(5));
        get(&http, "secret/data/a").await.unwrap();
        assert_eq!(
            get(&http, "secret/data/a").await.unwrap(),
            br#"{"again":1}"#
        );
        assert_eq!(connections(&seen), [0, 0, 1]);
    }

    #[tokio::test]
    async fn a_post_whose_reused_connection_closes_under_it_is_not_sent_again() {
        let (address, seen) = canned(vec![ok("{}"), Reply::Close, ok("{}")]).await;
        let http = local_http(&address, Duration::from_secs(5));
        get(&http, "secret/data/a").await.unwrap();
        let failure = post(&http, "auth/token/create").await.unwrap_err();
        assert!(
            matches!(failure, Failure::Transport { sent: true, .. }),
            "{failure:?}"
        );
        assert!(failure.may_have_taken_effect());
        assert!(
            !format!("{failure:?}").contains("token-that-must"),
            "{failure:?}"
        );
        assert_eq!(connections(&seen), [0, 0], "the POST was sent again");
        // Nor a GET that may mint.
        let (address, seen) = canned(vec![ok("{}"), Reply::Close, ok("{}")]).await;
        let http = local_http(&address, Duration::from_secs(5));
        get(&http, "secret/data/a").await.unwrap();
        let token = SecretString::from(TOKEN);
        let failure = http
            .send_once(
                reqwest::Method::GET,
                "database/creds/app",
                &[],
                None,
                &token,
            )
            .await
            .unwrap_err();
        assert!(failure.may_have_taken_effect(), "{failure:?}");
        assert_eq!(connections(&seen), [0, 0], "the GET was sent again");
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_while_idle_is_not_used() {
        // Answered and closed without saying so: seen before the next
        // request, so even a POST goes out once, on a new connection.
        let answered = match ok("{}") {
            Reply::Answer(bytes) => Reply::AnswerAndClose(bytes),
            other => other,
        };
        let (address, seen) = canned(vec![answered, ok("{}")]).await;
        let http = local_http(&address, Duration::from_secs(5));
        get(&http, "secret/data/a").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        post(&http, "auth/token/create").await.unwrap();
        assert_eq!(connections(&seen), [0, 1]);
    }

    #[tokio::test]
    async fn reads_chunked_answers_and_keeps_the_connection() {
        let chunked = Reply::Answer(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n6\r\n\":\"b\"}\r\n0\r\n\r\n"
                .to_vec(),
        );
        let (address, seen) = canned(vec![chunked.clone(), chunked]).await;
        let http = local_http(&address, Duration::from_secs(5));
        assert_eq!(get(&http, "secret/data/a").await.unwrap(), br#"{"a":"b"}"#);
        assert_eq!(get(&http, "secret/data/a").await.unwrap(), br#"{"a":"b"}"#);
        assert_eq!(connections(&seen), [0, 0]);
    }

    #[tokio::test]
    async fn connection_close_is_honoured() {
        let closing = Reply::AnswerAndClose(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}".to_vec(),
        );
        let (address, seen) = canned(vec![closing.clone(), closing]).await;
        let http = local_http(&address, Duration::from_secs(5));
        assert_eq!(get(&http, "secret/data/a").await.unwrap(), b"{}");
        assert_eq!(post(&http, "secret/data/a").await.unwrap(), b"{}");
        assert_eq!(connections(&seen), [0, 1]);
        // An answer that ends at the close, with no length at all.
        let (address, _) = canned(vec![Reply::AnswerAndClose(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{\"to\":\"eof\"}".to_vec(),
        )])
        .await;
        let http = local_http(&address, Duration::from_secs(5));
        assert_eq!(
            get(&http, "secret/data/a").await.unwrap(),
            br#"{"to":"eof"}"#
        );
    }

    #[tokio::test]
    async fn refuses_an_answer_larger_than_the_bound() {
        let mut big = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
            MAX_ANSWER_BYTES + 1
        )
        .into_bytes();
        big.resize(big.len() + MAX_ANSWER_BYTES + 1, b'x');
        let (address, seen) = canned(vec![Reply::Answer(big), ok("{}")]).await;
        let http = local_http(&address, Duration::from_secs(10));
        let failure = get(&http, "secret/data/a").await.unwrap_err();
        assert!(
            failure.errors().contains("larger than 4194304 bytes"),
            "{failure:?}"
        );
        // The half-read connection is not used again.
        get(&http, "secret/data/a").await.unwrap();
        assert_eq!(connections(&seen), [0, 1]);
    }

    #[tokio::test]
    async fn gives_up_at_the_timeout() {
        let (address, _) = canned(vec![Reply::Stall]).await;
        let http = local_http(&address, Duration::from_millis(300));
        let started = std::time::Instant::now();
        let failure = get(&http, "secret/data/a").await.unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        match &failure {
            Failure::Transport { message, sent, .. } => {
                assert!(message.contains("no answer in time"), "{message}");
                assert!(*sent, "a request that went out may have been acted on");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_refused_connection_was_not_sent() {
        // A port nothing listens on (bound, then freed).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let http = local_http(&format!("http://127.0.0.1:{port}"), Duration::from_secs(5));
        let failure = post(&http, "auth/token/create").await.unwrap_err();
        assert!(
            matches!(
                failure,
                Failure::Transport {
                    sent: false,
                    tls: false,
                    ..
                }
            ),
            "{failure:?}"
        );
        assert!(!failure.may_have_taken_effect());
    }

    #[tokio::test]
    async fn a_rate_limit_says_when_to_ask_again() {
        let limited = Reply::Answer(
            b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\nContent-Length: 36\r\n\r\n{\"errors\":[\"request path kv: rate\"]}"
                .to_vec(),
        );
        let (address, _) = canned(vec![limited]).await;
        let http = local_http(&address, Duration::from_secs(5));
        let failure = get(&http, "secret/data/a").await.unwrap_err();
        assert_eq!(
            failure,
            Failure::RateLimited {
                retry_after: Some(Duration::from_secs(7)),
                errors: "request path kv: rate".into()
            }
        );
    }
}
