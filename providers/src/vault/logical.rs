//! Logical paths (`logical_prefixes` GETs, `logical_write_prefixes` POSTs):
//! secrets engines other than KV, whose answers may be per task.

use reqwest::Method as Verb;

use super::VaultProvider;
use super::errors::{CallError, no_route, unavailable};
use super::http::Failure;
use super::kv::{envelope, json_value};
use crate::{ProviderError, SecretValue};

/// The longest lease taken at its word: a year (Vault's default maximum
/// is 32 days).
const MAX_LEASE_SECS: u64 = 366 * 24 * 3600;

impl VaultProvider {
    pub(super) async fn fetch_logical(
        &self,
        post: bool,
        path: &str,
        query: Option<&str>,
        version: Option<&str>,
    ) -> Result<SecretValue, ProviderError> {
        let what = format!("logical path '{path}'");
        if version.is_some() {
            return Err(ProviderError::Invalid(format!(
                "{what}: vaultbridge.version applies to KV v2 only; remove the label"
            )));
        }
        // GET: the query stays on the URL; POST: it is the JSON body.
        // Either way each pair is encoded by the URL/JSON builder, so no
        // label text can add a parameter or change the path.
        let pairs: Vec<(&str, &str)> = query
            .map(|q| q.split('&').filter_map(|kv| kv.split_once('=')).collect())
            .unwrap_or_default();
        let pairs = &pairs;
        let result = self
            .with_token(|c| async move {
                let (method, url_query, body) = if post {
                    let body: serde_json::Map<String, serde_json::Value> = pairs
                        .iter()
                        .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
                        .collect();
                    (
                        Verb::POST,
                        &[][..],
                        Some(serde_json::Value::Object(body).to_string()),
                    )
                } else {
                    (Verb::GET, &pairs[..], None)
                };
                // Never sent twice, a GET either: these paths may mint.
                let bytes = self
                    .session
                    .http
                    .send_once(method, path, url_query, body, &c.token)
                    .await?;
                envelope(&bytes)
            })
            .await;
        let response = match result {
            Ok(r) => r,
            Err(CallError::Provider(e)) => return Err(e),
            Err(CallError::Vault(f)) => {
                let shown = &self.session.http.shown;
                return Err(match &f {
                    Failure::Status { code: 404, .. } if no_route(&f) => {
                        ProviderError::NotFound(format!(
                            "no secrets engine handles {what} on Vault {shown}; check the path"
                        ))
                    }
                    Failure::Status { code: 404, .. } => {
                        ProviderError::NotFound(format!("nothing at {what}"))
                    }
                    Failure::Status { code: 403, .. } => {
                        let capability = if post { "update" } else { "read" };
                        self.denied(&what, capability, path, &f).await
                    }
                    Failure::Status { code: 400, .. } => {
                        ProviderError::Invalid(format!("Vault refused {what}: {}", f.errors()))
                    }
                    // Generic paths may mint (database/creds, pki/issue):
                    // one that may have been served is never asked again.
                    _ if f.may_have_taken_effect() => {
                        unavailable(shown, &format!("requesting {what}"), f).without_retry()
                    }
                    _ => unavailable(shown, &format!("requesting {what}"), f),
                });
            }
        };
        // A token-creating path answers with `auth`, a secrets engine with
        // `data`. Either way a lease (or a new token) makes it per task.
        let mut lease_duration = response.lease_duration;
        let (body, leased) = match (response.data, response.auth) {
            (Some(data), _) => (
                data,
                !response.lease_id.is_empty() || response.lease_duration > 0,
            ),
            (_, Some(auth)) => {
                // A token's lease is the token's own TTL, inside `auth`.
                #[derive(serde::Deserialize)]
                struct TokenLease {
                    #[serde(default)]
                    lease_duration: u64,
                }
                if let Ok(token) = serde_json::from_str::<TokenLease>(auth.get()) {
                    lease_duration = token.lease_duration;
                }
                (auth, true)
            }
            _ => {
                return Err(ProviderError::NotFound(format!(
                    "{what} answered without data"
                )));
            }
        };
        if leased {
            tracing::info!(
                provider = %self.session.name,
                path,
                lease_seconds = lease_duration,
                "vault: leased value, left to expire at its TTL (not revoked, not renewed)"
            );
        }
        let bytes = json_value(Some(body.get()), &what)?;
        Ok(if leased {
            let value = SecretValue::per_task(bytes);
            match lease_duration {
                0 => value,
                // Vault's number: bounded, so no time arithmetic overflows.
                seconds => {
                    value.with_lease(std::time::Duration::from_secs(seconds.min(MAX_LEASE_SECS)))
                }
            }
        } else {
            SecretValue::new(bytes)
        })
    }
}
