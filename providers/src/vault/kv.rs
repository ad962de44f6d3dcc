//! KV v1 and v2 reads: the value, its version, and what a miss means.

use reqwest::Method as Verb;
use serde_json::value::RawValue;

use super::VaultProvider;
use super::auth::quiet;
use super::errors::{CallError, no_route, unavailable};
use super::http::Failure;
use crate::{ProviderError, SecretValue, Version};

/// The envelope of every Vault answer: only what we use. `data` and `auth`
/// stay raw text, so a secret comes back byte for byte as Vault sent it
/// (a `serde_json::Value` would turn big or precise numbers into `f64`).
#[derive(serde::Deserialize)]
pub(super) struct Envelope {
    #[serde(default)]
    pub(super) data: Option<Box<RawValue>>,
    #[serde(default)]
    pub(super) auth: Option<Box<RawValue>>,
    #[serde(default)]
    pub(super) lease_id: String,
    #[serde(default)]
    pub(super) lease_duration: u64,
}

/// KV v2's inner `data` object.
#[derive(serde::Deserialize)]
pub(super) struct Kv2Data {
    #[serde(default)]
    data: Option<Box<RawValue>>,
}

pub(super) fn envelope(body: &[u8]) -> Result<Envelope, Failure> {
    if body.is_empty() {
        // A write endpoint that answers 204: its work is done, and there is
        // no value in the answer to serve.
        return Err(Failure::Other(
            "Vault answered with no body: this path returns nothing to serve".into(),
        ));
    }
    serde_json::from_slice(body)
        .map_err(|_| Failure::Other("the answer is not a Vault JSON response".into()))
}

/// The secret's JSON text as Vault sent it; no data, `null` or `{}` is
/// "not found", never an empty value.
pub(super) fn json_value(data: Option<&str>, what: &str) -> Result<Vec<u8>, ProviderError> {
    let text = data.unwrap_or("null").trim();
    let start: String = text
        .chars()
        .filter(|c| !c.is_whitespace())
        .take(2)
        .collect();
    match (text, start.as_str()) {
        ("null", _) => Err(ProviderError::NotFound(format!("{what} holds no data"))),
        (_, "{}") => Err(ProviderError::NotFound(format!("{what} holds no keys"))),
        _ => Ok(text.as_bytes().to_vec()),
    }
}

impl VaultProvider {
    pub(super) async fn fetch_kv(
        &self,
        mount: &str,
        path: &str,
        kv_version: u8,
        version: Option<&str>,
    ) -> Result<SecretValue, ProviderError> {
        if kv_version == 1 {
            let what = format!("'{path}' in KV v1 mount '{mount}'");
            if version.is_some() {
                return Err(ProviderError::Invalid(format!(
                    "{what}: KV v1 keeps no versions; remove the vaultbridge.version label"
                )));
            }
            let api_path = format!("{mount}/{path}");
            let result = self
                .with_token(|c| {
                    let api_path = &api_path;
                    async move {
                        let body = self
                            .session
                            .http
                            .send(Verb::GET, api_path, &[], None, &c.token)
                            .await?;
                        envelope(&body)
                    }
                })
                .await;
            return match result {
                Ok(response) => json_value(response.data.as_deref().map(RawValue::get), &what)
                    .map(SecretValue::new),
                Err(CallError::Provider(e)) => Err(e),
                Err(CallError::Vault(f)) => Err(self.kv_error(&what, &api_path, mount, f).await),
            };
        }

        let number = version
            .map(|v| {
                v.parse::<u64>().ok().filter(|n| *n > 0).ok_or_else(|| {
                    ProviderError::Invalid(format!(
                        "vaultbridge.version={v}: a KV v2 version is a positive integer"
                    ))
                })
            })
            .transpose()?;
        let what = match number {
            Some(n) => format!("version {n} of '{path}' in KV v2 mount '{mount}'"),
            None => format!("'{path}' in KV v2 mount '{mount}'"),
        };
        let api_path = format!("{mount}/data/{path}");
        let version_query = number.map(|n| n.to_string());
        let result = self
            .with_token(|c| {
                let (api_path, version_query) = (&api_path, &version_query);
                async move {
                    let query: Vec<(&str, &str)> = version_query
                        .iter()
                        .map(|n| ("version", n.as_str()))
                        .collect();
                    let body = self
                        .session
                        .http
                        .send(Verb::GET, api_path, &query, None, &c.token)
                        .await?;
                    let outer = envelope(&body)?;
                    // KV v2 nests the secret: {"data": {"data": {...}, "metadata": {...}}}.
                    match outer.data {
                        Some(inner) => serde_json::from_str::<Kv2Data>(inner.get())
                            .map(|d| d.data.map(|raw| raw.get().to_string()))
                            .map_err(|_| {
                                Failure::Other("the answer is not a KV v2 response".into())
                            }),
                        None => Ok(None),
                    }
                }
            })
            .await;
        match result {
            Ok(data) => json_value(data.as_deref(), &what).map(SecretValue::new),
            Err(CallError::Provider(e)) => Err(e),
            Err(CallError::Vault(f)) if f.is_status(404) && !no_route(&f) => {
                Err(self.explain_missing_v2(mount, path, number, &what).await)
            }
            Err(CallError::Vault(f)) => Err(self.kv_error(&what, &api_path, mount, f).await),
        }
    }

    /// The current version of a KV v2 secret, from its metadata (which
    /// holds no value); the token needs `read` on `<mount>/metadata/<path>`.
    pub(super) async fn current_kv_version(
        &self,
        mount: &str,
        path: &str,
        kv_version: u8,
    ) -> Result<Version, ProviderError> {
        if kv_version == 1 {
            return Err(ProviderError::Invalid(format!(
                "'{path}' in KV v1 mount '{mount}': KV v1 keeps no versions, so a change cannot be told without reading the value; keep rotated secrets in a KV v2 mount"
            )));
        }
        let what = format!("the metadata of '{path}' in KV v2 mount '{mount}'");
        let api_path = format!("{mount}/metadata/{path}");
        let metadata = self
            .with_token(|c| async move {
                let client = self.session.http.vault(&c.token);
                quiet(vaultrs::kv2::read_metadata(&client, mount, path)).await
            })
            .await;
        let metadata = match metadata {
            Ok(metadata) => metadata,
            Err(CallError::Provider(e)) => return Err(e),
            Err(CallError::Vault(f)) => {
                return Err(self.kv_error(&what, &api_path, mount, f).await);
            }
        };
        let current = metadata.current_version;
        let created = metadata
            .versions
            .get(&current.to_string())
            .and_then(|v| humantime::parse_rfc3339_weak(&v.created_time).ok());
        if current == 0 {
            return Err(ProviderError::NotFound(format!(
                "no version of '{path}' in KV v2 mount '{mount}'"
            )));
        }
        Ok(Version {
            id: current.to_string(),
            pin: Some(current.to_string()),
            created,
        })
    }

    /// A KV v2 read said 404: tell a deleted or destroyed version from a
    /// missing one, using the metadata when the policy allows reading it.
    pub(super) async fn explain_missing_v2(
        &self,
        mount: &str,
        path: &str,
        number: Option<u64>,
        what: &str,
    ) -> ProviderError {
        let metadata = self
            .with_token(|c| async move {
                let client = self.session.http.vault(&c.token);
                quiet(vaultrs::kv2::read_metadata(&client, mount, path)).await
            })
            .await;
        let Ok(metadata) = metadata else {
            return ProviderError::NotFound(format!(
                "no secret {what} (or it is deleted; the token may not read its metadata to tell)"
            ));
        };
        let wanted = number.unwrap_or(metadata.current_version);
        match metadata.versions.get(&wanted.to_string()) {
            Some(v) if v.destroyed => ProviderError::NotFound(format!(
                "version {wanted} of '{path}' in KV v2 mount '{mount}' was destroyed and cannot be recovered; pick another vaultbridge.version (current is {})",
                metadata.current_version
            )),
            Some(v) if !v.deletion_time.is_empty() => ProviderError::NotFound(format!(
                "version {wanted} of '{path}' in KV v2 mount '{mount}' was deleted at {}; undelete it (vault kv undelete -versions={wanted} {mount}/{path}) or pick another vaultbridge.version (current is {})",
                v.deletion_time, metadata.current_version
            )),
            _ => ProviderError::NotFound(format!(
                "'{path}' in KV v2 mount '{mount}' has no version {wanted} (versions {}..={} are kept)",
                metadata.oldest_version.max(1),
                metadata.current_version
            )),
        }
    }

    pub(super) async fn kv_error(
        &self,
        what: &str,
        api_path: &str,
        mount: &str,
        f: Failure,
    ) -> ProviderError {
        let shown = &self.session.http.shown;
        match &f {
            Failure::Status { code: 404, .. } if no_route(&f) => ProviderError::NotFound(format!(
                "no secrets engine is mounted at '{mount}/' on Vault {shown} (reading {what}); check kv_mount / kv_mounts or the mount prefix of the path"
            )),
            Failure::Status { code: 404, .. } => {
                ProviderError::NotFound(format!("no secret {what}"))
            }
            Failure::Status { code: 403, .. } => self.denied(what, "read", api_path, &f).await,
            Failure::Status { code: 400, .. } => {
                ProviderError::Invalid(format!("Vault refused reading {what}: {}", f.errors()))
            }
            // Asking again helps only after a connection failure, a rate
            // limit or a server error: an answer we cannot use, a redirect,
            // 405, 412 or 501 will be the same next time.
            Failure::Other(_)
            | Failure::Status {
                code: 0..=428 | 430..=499 | 501,
                ..
            } => unavailable(shown, &format!("reading {what}"), f).without_retry(),
            _ => unavailable(shown, &format!("reading {what}"), f),
        }
    }
}
