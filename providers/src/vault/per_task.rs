//! `per_task_mount`: the per-task values minted on logical paths, kept in a
//! KV v2 mount of their own so that every manager's plugin can find them.
//!
//! Only the leader manager's plugin is asked for secrets, and after a
//! failover the new leader's is asked again for every running task. Its own
//! memory has never seen those tasks, so without this it would mint a token,
//! a database login or a certificate for each, which the task never uses
//! (it keeps the file it started with). With it, the plugin that mints a
//! value writes it to `<mount>/data/<task id>/<digest>` once (`cas=0`),
//! with when it expires; a plugin asked again for that task reads it back.
//!
//! The record is `{"value": <base64>, "expires": <unix seconds>}`; what
//! comes back is checked like any backend answer. No label can read the
//! mount (`paths`), so a task cannot be handed another's credential.

use base64::Engine as _;
use reqwest::Method as Verb;
use serde_json::value::RawValue;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::VaultProvider;
use super::config::{trim_slashes, url_part};
use super::errors::{CallError, no_route, unavailable};
use super::http::Failure;
use super::kv::envelope;
use crate::{ConfigError, ProviderError, SecretValue, TaskKey};

/// Docker refuses values of 500 KiB and more; a record can hold no more.
const MAX_VALUE_BYTES: usize = 512_000;

/// `per_task_mount` must be one segment and no KV mount that labels read.
pub(super) fn check_mount(
    mount: &str,
    kv_mounts: &BTreeMap<String, u8>,
    key: &str,
) -> Result<String, ConfigError> {
    let mount = trim_slashes(mount);
    if mount.is_empty() {
        return Err(ConfigError::new(
            key,
            "is empty; name a KV v2 mount of its own, e.g. \"vaultbridge-per-task\"",
        ));
    }
    let mount = url_part(mount, key, true)?;
    if kv_mounts.contains_key(&mount) {
        return Err(ConfigError::new(
            key,
            format!(
                "'{mount}' is also kv_mount or in kv_mounts, where labels read; give the per-task values a KV v2 mount of their own"
            ),
        ));
    }
    Ok(mount)
}

/// No other Vault provider's labels may reach a `per_task_mount` (each
/// guards its own, `paths`): one on the same server whose KV mounts or
/// logical prefixes name it would read other tasks' credentials. Judged by
/// name, whatever the addresses, as two addresses may be one server.
pub fn mounts_apart(configs: &[(&str, &super::VaultConfig)]) -> Result<(), ConfigError> {
    let owned: Vec<(&str, &str)> = configs
        .iter()
        .filter_map(|(name, c)| Some((*name, trim_slashes(c.per_task_mount.as_deref()?))))
        .filter(|(_, mount)| !mount.is_empty())
        .collect();
    for (name, config) in configs {
        let reaches: Vec<(String, &str)> =
            std::iter::once(("kv_mount".to_string(), config.kv_mount.as_str()))
                .chain(
                    config
                        .kv_mounts
                        .keys()
                        .map(|m| (format!("kv_mounts.{m}"), m.as_str())),
                )
                .chain(
                    config
                        .logical_prefixes
                        .iter()
                        .map(|p| ("logical_prefixes".to_string(), p.as_str())),
                )
                .chain(
                    config
                        .logical_write_prefixes
                        .iter()
                        .map(|p| ("logical_write_prefixes".to_string(), p.as_str())),
                )
                .collect();
        for (owner, mount) in owned.iter().filter(|(owner, _)| owner != name) {
            let first_segment = |path: &str| trim_slashes(path).split('/').next() == Some(*mount);
            if let Some((field, _)) = reaches.iter().find(|(_, path)| first_segment(path)) {
                return Err(ConfigError::new(
                    format!("providers.{name}.{field}"),
                    format!(
                        "reaches '{mount}', the per_task_mount of providers.{owner}, which keeps other tasks' credentials; no label may read it: remove it here"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// KV v2's inner `data` of a record.
#[derive(serde::Deserialize)]
struct Kv2Record {
    #[serde(default)]
    data: Option<Box<RawValue>>,
}

#[derive(serde::Deserialize)]
struct Record {
    value: String,
    expires: u64,
}

/// A record as messages name it: by its task, not by the digest (which is
/// of the request's labels, a logical path's query included).
fn record_name(task: &TaskKey) -> String {
    let task_id = task.as_str().split('/').next().unwrap_or_default();
    format!("the per-task record of task {task_id}")
}

impl VaultProvider {
    fn record_path(&self, task: &TaskKey) -> Option<String> {
        let mount = self.per_task_mount.as_deref()?;
        Some(format!("{mount}/data/{}", task.as_str()))
    }

    /// One call to the mount with the token (a re-login on a refused one).
    async fn send_to_mount(
        &self,
        verb: Verb,
        api_path: &str,
        body: Option<&str>,
    ) -> Result<Vec<u8>, CallError> {
        let verb = &verb;
        self.with_token(|c| async move {
            let body = body.map(str::to_string);
            self.session
                .http
                .send(verb.clone(), api_path, &[], body, &c.token)
                .await
        })
        .await
    }

    pub(super) async fn recall_per_task(
        &self,
        task: &TaskKey,
    ) -> Result<Option<SecretValue>, ProviderError> {
        let Some(api_path) = self.record_path(task) else {
            return Ok(None);
        };
        let parse = |body: Vec<u8>| {
            let inner = envelope(&body)?
                .data
                .ok_or_else(|| Failure::Other("the record holds no data".into()))?;
            serde_json::from_str::<Kv2Record>(inner.get())
                .map_err(|_| Failure::Other("the answer is not a KV v2 response".into()))
        };
        let result = self
            .send_to_mount(Verb::GET, &api_path, None)
            .await
            .and_then(|body| parse(body).map_err(CallError::Vault));
        let what = record_name(task);
        let record = match result {
            Ok(Kv2Record { data: Some(data) }) => data,
            // Deleted by `delete_version_after`: gone, as it should be.
            Ok(Kv2Record { data: None }) => return Ok(None),
            Err(CallError::Vault(f)) if f.is_status(404) && !no_route(&f) => return Ok(None),
            Err(CallError::Provider(e)) => return Err(e),
            Err(CallError::Vault(f)) => return Err(self.per_task_error(&what, "read", f)),
        };
        let Ok(record) = serde_json::from_str::<Record>(record.get()) else {
            return Err(ProviderError::Invalid(format!(
                "{what} is not one the plugin wrote (no value and expiry); remove it, and keep per_task_mount for the plugin alone"
            )));
        };
        let remaining = UNIX_EPOCH
            .checked_add(Duration::from_secs(record.expires))
            .and_then(|expires| expires.duration_since(SystemTime::now()).ok())
            .filter(|left| !left.is_zero());
        let Some(remaining) = remaining else {
            return Ok(None);
        };
        let value = base64::engine::general_purpose::STANDARD
            .decode(record.value.as_bytes())
            .ok()
            .filter(|v| !v.is_empty() && v.len() < MAX_VALUE_BYTES)
            .ok_or_else(|| {
                ProviderError::Invalid(format!(
                    "{what} holds no usable value; remove it, and keep per_task_mount for the plugin alone"
                ))
            })?;
        Ok(Some(SecretValue::per_task(value).with_lease(remaining)))
    }

    /// Write-once (`cas=0`): a record already there stays, `Ok(false)`.
    /// Never retried by anyone: every failure is reported as not retry-safe.
    pub(super) async fn remember_per_task(
        &self,
        task: &TaskKey,
        value: &[u8],
        expires: SystemTime,
    ) -> Result<bool, ProviderError> {
        let Some(api_path) = self.record_path(task) else {
            return Ok(false);
        };
        let expires = expires
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        let body = serde_json::json!({
            "options": { "cas": 0 },
            "data": {
                "value": base64::engine::general_purpose::STANDARD.encode(value),
                "expires": expires,
            },
        })
        .to_string();
        let result = self.send_to_mount(Verb::POST, &api_path, Some(&body)).await;
        let what = record_name(task);
        match result {
            Ok(_) => Ok(true),
            // cas=0 on an existing record: another plugin wrote it first.
            Err(CallError::Vault(f))
                if f.is_status(400) && f.errors().contains("check-and-set") =>
            {
                Ok(false)
            }
            Err(CallError::Provider(e)) => Err(e.without_retry()),
            Err(CallError::Vault(f)) => {
                Err(self.per_task_error(&what, "create", f).without_retry())
            }
        }
    }

    /// For `vaultbridge check`: the mount is there and the token may read
    /// it (a record that cannot exist is looked for); `create` shows at the
    /// first minted value, which is never written for a check.
    pub(super) async fn check_per_task_mount(&self) -> Result<Option<String>, ProviderError> {
        let Some(mount) = self.per_task_mount.as_deref() else {
            return Ok(None);
        };
        let api_path = format!("{mount}/data/vaultbridge-check");
        let result = self.send_to_mount(Verb::GET, &api_path, None).await;
        let what = format!("per_task_mount '{mount}'");
        match result {
            Ok(_) => Ok(Some(format!("{what} readable"))),
            Err(CallError::Vault(f)) if f.is_status(404) && !no_route(&f) => {
                Ok(Some(format!("{what} readable")))
            }
            Err(CallError::Provider(e)) => Err(e),
            Err(CallError::Vault(f)) => Err(self.per_task_error(&what, "read", f)),
        }
    }

    fn per_task_error(&self, what: &str, capability: &str, f: Failure) -> ProviderError {
        let shown = &self.session.http.shown;
        let mount = self.per_task_mount.as_deref().unwrap_or_default();
        match &f {
            Failure::Status { code: 403, .. } => ProviderError::Denied(format!(
                "{what} on Vault {shown}: the token needs '{capability}' on '{mount}/data/*' (per_task_mount): {}",
                f.errors()
            )),
            Failure::Status { code: 404, .. } => ProviderError::NotFound(format!(
                "{what} on Vault {shown}: is '{mount}' a KV v2 mount? Enable it: `vault secrets enable -path={mount} kv-v2`"
            )),
            _ => unavailable(shown, &format!("using {what}"), f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mount_is_one_segment_of_its_own() {
        let kv = BTreeMap::from([("secret".to_string(), 2), ("legacy".to_string(), 1)]);
        let key = "providers.bao.per_task_mount";
        assert_eq!(
            check_mount("/vaultbridge-per-task/", &kv, key).unwrap(),
            "vaultbridge-per-task"
        );
        for (mount, needle) in [
            ("", "is empty"),
            ("/", "is empty"),
            ("secret", "of their own"),
            ("legacy", "of their own"),
            ("a/b", "one path segment"),
            ("..", "'..'"),
            ("a?b", "?"),
        ] {
            let err = check_mount(mount, &kv, key).unwrap_err().to_string();
            assert!(
                err.contains(key) && err.contains(needle),
                "{mount:?}: {err}"
            );
        }
    }

    #[test]
    fn no_other_provider_reaches_the_mount() {
        let vault = |extra: &str| -> super::super::VaultConfig {
            toml::from_str(&format!("address = \"http://127.0.0.1:8200\"\n{extra}")).unwrap()
        };
        let owner = vault("per_task_mount = \"/vb-per-task/\"");
        let fine = vault("kv_mounts = { other = 2 }\nlogical_prefixes = [\"database/creds/\"]");
        // Two providers may share one mount: each refuses labels into it.
        assert!(mounts_apart(&[("a", &owner), ("b", &fine), ("c", &owner)]).is_ok());
        assert!(mounts_apart(&[("a", &owner), ("b", &fine)]).is_ok());
        for (extra, field) in [
            ("kv_mount = \"vb-per-task\"", "providers.b.kv_mount"),
            (
                "kv_mounts = { vb-per-task = 2 }",
                "providers.b.kv_mounts.vb-per-task",
            ),
            (
                "logical_prefixes = [\"/vb-per-task/data/\"]",
                "providers.b.logical_prefixes",
            ),
            (
                "logical_write_prefixes = [\"vb-per-task\"]",
                "providers.b.logical_write_prefixes",
            ),
        ] {
            let err = mounts_apart(&[("a", &owner), ("b", &vault(extra))]).unwrap_err();
            assert_eq!(err.key, field, "{extra}");
            assert!(err.message.contains("providers.a"), "{err}");
        }
    }
}
