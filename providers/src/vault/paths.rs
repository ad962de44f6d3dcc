//! Where a `vaultbridge.path` goes (the path rule in the module docs of
//! `vault`), and the one name the access policy judges for it.

use super::VaultProvider;
use crate::{ProviderError, SecretPath};

/// Where one `vaultbridge.path` points.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Target<'a> {
    Kv {
        mount: &'a str,
        path: &'a str,
        version: u8,
    },
    Logical {
        post: bool,
        path: &'a str,
        query: Option<&'a str>,
    },
}

impl VaultProvider {
    /// The policy's name for `secret`: a KV path on the default mount
    /// without the mount (`secret/app/db` and `app/db` are one secret), any
    /// other KV mount as `<mount>/<path>`, a logical path without its query.
    pub(super) fn canonical(&self, secret: &SecretPath) -> Result<String, ProviderError> {
        Ok(match self.target(secret)? {
            Target::Kv { mount, path, .. } if mount == self.kv_mount => path.to_string(),
            Target::Kv { mount, path, .. } => format!("{mount}/{path}"),
            Target::Logical { path, .. } => path.to_string(),
        })
    }

    /// Apply the path rule (module docs) to a path [`SecretPath`] already
    /// validated: no empty, `.` or `..` segment, no escape, so a prefix or
    /// mount decided here is the path Vault receives.
    pub(super) fn target<'a>(
        &'a self,
        secret: &'a SecretPath,
    ) -> Result<Target<'a>, ProviderError> {
        let path = secret.path();
        if let Some(mount) = &self.per_task_mount
            && secret.has_prefix(mount)
        {
            // Other tasks' credentials: the plugin's own, never a label's.
            return Err(ProviderError::Invalid(format!(
                "'{path}' is in the per_task_mount '{mount}', which keeps the values minted for other tasks; no label may read it"
            )));
        }
        let post = self.logical_post.iter().any(|p| secret.has_prefix(p));
        if post || self.logical_get.iter().any(|p| secret.has_prefix(p)) {
            return Ok(Target::Logical {
                post,
                path,
                query: secret.query(),
            });
        }
        if secret.query().is_some() {
            return Err(ProviderError::Invalid(format!(
                "'{path}?…': a '?' query is only allowed on logical paths (logical_prefixes / logical_write_prefixes)"
            )));
        }
        if let Some((first, rest)) = path.split_once('/')
            && let Some(version) = self.kv_mounts.get(first)
        {
            return Ok(Target::Kv {
                mount: first,
                path: rest,
                version: *version,
            });
        }
        Ok(Target::Kv {
            mount: &self.kv_mount,
            path,
            version: self.kv_mounts[&self.kv_mount],
        })
    }
}
