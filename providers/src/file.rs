//! The `file` backend: one file per secret under a root directory.
//!
//! Needs no server, so it is the embedded default for local use and tests.
//! `vaultbridge.path` is relative to the root; `..`, absolute paths and
//! symlinks that lead outside the root are refused.

use std::path::{Component, Path, PathBuf};

use async_trait::async_trait;
use serde::Deserialize;
use tokio::io::AsyncReadExt;

use crate::{ConfigError, EnvLookup, Provider, ProviderError, SecretRef, SecretValue};

/// Where the embedded default looks when nothing else is configured.
pub const DEFAULT_ROOT: &str = "/etc/vaultbridge/secrets";

/// Files larger than this are refused before being read: no Docker secret can
/// be this large, and reading an arbitrary file into memory is a risk.
const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The directory secrets are read from.
    pub root: PathBuf,
}

impl FileConfig {
    /// `VAULTBRIDGE_FILE_DIR` makes a provider named `file`.
    pub fn from_env(env: EnvLookup<'_>) -> Option<Self> {
        env("VAULTBRIDGE_FILE_DIR")
            .filter(|dir| !dir.is_empty())
            .map(|dir| FileConfig { root: dir.into() })
    }
}

#[derive(Debug)]
pub struct FileProvider {
    /// Canonical, so that containment checks compare like with like.
    root: PathBuf,
}

impl FileProvider {
    pub fn new(config: &FileConfig, key: &str) -> Result<Self, ConfigError> {
        let root_key = format!("{key}.root");
        let root = std::fs::canonicalize(&config.root).map_err(|err| {
            ConfigError::new(&root_key, format!("{}: {err}", config.root.display()))
        })?;
        if !root.is_dir() {
            return Err(ConfigError::new(
                root_key,
                format!("{}: not a directory", config.root.display()),
            ));
        }
        Ok(Self { root })
    }

    /// Resolve `path` under the root, refusing anything that escapes it.
    async fn locate(&self, path: &str) -> Result<PathBuf, ProviderError> {
        if path.is_empty() {
            return Err(ProviderError::Invalid("the path is empty".into()));
        }
        let relative = Path::new(path);
        let escapes = relative
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir));
        if escapes {
            return Err(ProviderError::Invalid(format!(
                "path '{path}' must be relative to the provider's root, without '..'"
            )));
        }
        let full = self.root.join(relative);
        let resolved = tokio::fs::canonicalize(&full)
            .await
            .map_err(|err| io_error(path, &self.root, err))?;
        if !resolved.starts_with(&self.root) {
            return Err(ProviderError::Denied(format!(
                "path '{path}' is a symlink that leads outside the root {}",
                self.root.display()
            )));
        }
        Ok(resolved)
    }
}

fn io_error(path: &str, root: &Path, err: std::io::Error) -> ProviderError {
    let root = root.display();
    match err.kind() {
        std::io::ErrorKind::NotFound => {
            ProviderError::NotFound(format!("no file '{path}' under {root}"))
        }
        std::io::ErrorKind::PermissionDenied => ProviderError::Denied(format!(
            "cannot read '{path}' under {root}: permission denied"
        )),
        _ => ProviderError::Unavailable(format!("cannot read '{path}' under {root}: {err}")),
    }
}

#[async_trait]
impl Provider for FileProvider {
    fn kind(&self) -> &'static str {
        "file"
    }

    async fn fetch(&self, secret: SecretRef<'_>) -> Result<SecretValue, ProviderError> {
        if secret.version.is_some() {
            return Err(ProviderError::Invalid(
                "the file provider keeps no versions; remove the vaultbridge.version label".into(),
            ));
        }
        let full = self.locate(secret.path).await?;
        let io = |err| io_error(secret.path, &self.root, err);
        // Check the type before opening: opening a FIFO would block.
        let metadata = tokio::fs::metadata(&full).await.map_err(io)?;
        if !metadata.is_file() {
            return Err(ProviderError::Invalid(format!(
                "'{}' is not a regular file",
                secret.path
            )));
        }
        if metadata.len() > MAX_FILE_BYTES {
            return Err(ProviderError::Invalid(format!(
                "'{}' is {} bytes; the file provider reads at most {MAX_FILE_BYTES}",
                secret.path,
                metadata.len()
            )));
        }
        let file = tokio::fs::File::open(&full).await.map_err(io)?;
        let mut bytes = Vec::with_capacity(metadata.len() as usize);
        file.take(MAX_FILE_BYTES)
            .read_to_end(&mut bytes)
            .await
            .map_err(io)?;
        Ok(SecretValue::new(bytes))
    }

    async fn check(&self) -> Result<String, ProviderError> {
        let mut entries = tokio::fs::read_dir(&self.root)
            .await
            .map_err(|err| io_error(".", &self.root, err))?;
        let mut count = 0usize;
        while let Some(_entry) = entries
            .next_entry()
            .await
            .map_err(|err| io_error(".", &self.root, err))?
        {
            count += 1;
        }
        Ok(format!(
            "directory {} is readable ({count} entries)",
            self.root.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(dir: &Path) -> FileProvider {
        FileProvider::new(
            &FileConfig {
                root: dir.to_path_buf(),
            },
            "providers.file",
        )
        .unwrap()
    }

    /// Through the shared path check first, as the plugin does.
    async fn fetch(p: &FileProvider, path: &str) -> Result<Vec<u8>, ProviderError> {
        let path = crate::SecretPath::parse(path)
            .map_err(|err| ProviderError::Invalid(err.to_string()))?;
        p.fetch(SecretRef {
            path: &path,
            version: None,
        })
        .await
        .map(|v| v.expose().to_vec())
    }

    #[tokio::test]
    async fn reads_nested_files_and_refuses_escapes() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("db")).unwrap();
        std::fs::write(dir.path().join("db/password"), b"s3cret").unwrap();
        std::fs::write(outside.path().join("stolen"), b"nope").unwrap();
        std::os::unix::fs::symlink(outside.path().join("stolen"), dir.path().join("link")).unwrap();
        let p = provider(dir.path());

        assert_eq!(fetch(&p, "db/password").await.unwrap(), b"s3cret");
        assert!(matches!(
            fetch(&p, "./db/password").await,
            Err(ProviderError::Invalid(_))
        ));
        assert!(matches!(
            fetch(&p, "missing").await,
            Err(ProviderError::NotFound(_))
        ));
        assert!(matches!(
            fetch(&p, "../x").await,
            Err(ProviderError::Invalid(_))
        ));
        assert!(matches!(
            fetch(&p, "db/../../x").await,
            Err(ProviderError::Invalid(_))
        ));
        assert!(matches!(
            fetch(&p, "/etc/passwd").await,
            Err(ProviderError::Invalid(_))
        ));
        assert!(matches!(
            fetch(&p, "link").await,
            Err(ProviderError::Denied(_))
        ));
        assert!(matches!(
            fetch(&p, "db").await,
            Err(ProviderError::Invalid(_))
        ));
        assert!(matches!(
            fetch(&p, "").await,
            Err(ProviderError::Invalid(_))
        ));
    }

    #[tokio::test]
    async fn refuses_versions_and_missing_roots() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), b"x").unwrap();
        let p = provider(dir.path());
        let err = p
            .fetch(SecretRef {
                path: &crate::SecretPath::parse("a").unwrap(),
                version: Some("2"),
            })
            .await
            .unwrap_err();
        assert!(err.to_string().contains("vaultbridge.version"), "{err}");

        let err = FileProvider::new(
            &FileConfig {
                root: dir.path().join("nope"),
            },
            "providers.local",
        )
        .unwrap_err();
        assert_eq!(err.key, "providers.local.root");
        assert!(p.check().await.unwrap().contains("1 entries"));
    }
}
