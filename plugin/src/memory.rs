//! An in-memory provider for the plugin's own unit tests (compiled only
//! for them): values by path and version, scripted failures, a hang, and a
//! count of calls — what the resolver, the cache and the retry loop need
//! to be tested without a backend. The backends themselves are tested by
//! the conformance suite (`tests/src/conformance/`).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use async_trait::async_trait;
use vaultbridge_providers::{Provider, ProviderError, SecretRef, SecretValue};

/// One stored version: its id, its bytes, and whether it is per task.
struct Version {
    id: String,
    bytes: Vec<u8>,
    per_task: bool,
}

/// Secrets kept in memory. Without a version label a lookup gets the
/// latest value set for the path.
#[derive(Default)]
pub(crate) struct Memory {
    /// path -> versions, oldest first.
    values: Mutex<BTreeMap<String, Vec<Version>>>,
    /// The next `failures` calls answer `error` instead.
    failures: AtomicUsize,
    error: Mutex<Option<ProviderError>>,
    /// Every call waits forever (a hung backend).
    hang: AtomicBool,
    calls: AtomicUsize,
}

impl Memory {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// `path` holds `value` (a new latest version, numbered from 1).
    pub(crate) fn with(self, path: &str, value: &[u8]) -> Self {
        self.set(path, value, false);
        self
    }

    /// `path` holds a value unique to each task (a leased credential):
    /// each call answers it with `-<call number>` appended.
    pub(crate) fn with_per_task(self, path: &str, value: &[u8]) -> Self {
        self.set(path, value, true);
        self
    }

    /// The next `count` calls fail with `error`, then values are served.
    pub(crate) fn failing(self, count: usize, error: ProviderError) -> Self {
        *self.error.lock().unwrap() = Some(error);
        self.failures.store(count, Ordering::SeqCst);
        self
    }

    /// Every call hangs.
    pub(crate) fn hanging(self) -> Self {
        self.hang.store(true, Ordering::SeqCst);
        self
    }

    /// Add a version of `path`; returns its id ("1", "2", ...).
    pub(crate) fn set(&self, path: &str, value: &[u8], per_task: bool) -> String {
        let mut values = self.values.lock().unwrap();
        let versions = values.entry(path.to_string()).or_default();
        let id = (versions.len() + 1).to_string();
        versions.push(Version {
            id: id.clone(),
            bytes: value.to_vec(),
            per_task,
        });
        id
    }

    /// Calls made so far (each attempt of a retried lookup counts).
    pub(crate) fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Provider for Memory {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn fetch(&self, secret: SecretRef<'_>) -> Result<SecretValue, ProviderError> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if self.hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        let failing = self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if failing && let Some(error) = self.error.lock().unwrap().clone() {
            return Err(error);
        }
        let values = self.values.lock().unwrap();
        let path = secret.path.as_str();
        let versions = values
            .get(path)
            .ok_or_else(|| ProviderError::NotFound(format!("no secret '{path}' in memory")))?;
        let found = match secret.version {
            None => versions.last(),
            Some(wanted) => versions.iter().find(|version| version.id == wanted),
        };
        let found = found.ok_or_else(|| {
            ProviderError::NotFound(format!(
                "secret '{path}' has no version {}",
                secret.version.unwrap_or_default()
            ))
        })?;
        Ok(if found.per_task {
            let mut unique = found.bytes.clone();
            unique.extend_from_slice(format!("-{call}").as_bytes());
            SecretValue::per_task(unique)
        } else {
            SecretValue::new(found.bytes.clone())
        })
    }

    async fn check(&self) -> Result<String, ProviderError> {
        Ok(format!(
            "{} secret(s) in memory",
            self.values.lock().unwrap().len()
        ))
    }
}
