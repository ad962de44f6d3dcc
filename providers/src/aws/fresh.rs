//! Expiring credentials (an assumed role, web identity, ECS or instance
//! credentials) fetched again in the background, so that the first lookup
//! after a quiet period does not wait for STS or a metadata endpoint — and
//! a failing source shows in the log before a task needs it.
//!
//! The SDK's identity cache sits above this provider and asks it again only
//! when what it holds is about to expire; it then gets what the keeper has
//! already fetched. Static keys (no expiry) start no keeper.

use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider, future};

/// Credentials closer than this to their expiry are fetched again on the
/// request path (the keeper normally replaced them long before).
const USABLE_FOR_AT_LEAST: Duration = Duration::from_secs(60);
/// The keeper never asks more often than this (very short lifetimes).
const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(10);

type Held = Mutex<Option<Credentials>>;

/// The expiry and fetch time of the credentials last obtained, for
/// metrics: times only, never the credentials.
#[derive(Clone, Default)]
pub(super) struct Seen(Arc<Mutex<Option<crate::Credential>>>);

impl Seen {
    pub(super) fn get(&self) -> Option<crate::Credential> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn obtained(&self, credentials: &Credentials) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(crate::Credential {
            expires_at: credentials.expiry(),
            renewed_at: Some(SystemTime::now()),
        });
    }
}

pub(super) struct KeptFresh {
    inner: SharedCredentialsProvider,
    held: Arc<Held>,
    keeper: OnceLock<tokio::task::AbortHandle>,
    seen: Seen,
}

impl std::fmt::Debug for KeptFresh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeptFresh").finish_non_exhaustive()
    }
}

impl KeptFresh {
    pub(super) fn new(inner: SharedCredentialsProvider, seen: Seen) -> Self {
        Self {
            inner,
            held: Arc::default(),
            keeper: OnceLock::new(),
            seen,
        }
    }
}

impl Drop for KeptFresh {
    fn drop(&mut self) {
        if let Some(keeper) = self.keeper.get() {
            keeper.abort();
        }
    }
}

fn lock(held: &Held) -> std::sync::MutexGuard<'_, Option<Credentials>> {
    // Only whole values are stored: a poisoned lock holds a valid one.
    held.lock().unwrap_or_else(|e| e.into_inner())
}

fn usable(credentials: &Credentials) -> bool {
    credentials
        .expiry()
        .is_none_or(|expiry| expiry > SystemTime::now() + USABLE_FOR_AT_LEAST)
}

impl ProvideCredentials for KeptFresh {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::new(async move {
            if let Some(credentials) = lock(&self.held).clone().filter(usable) {
                return Ok(credentials);
            }
            let credentials = self.inner.provide_credentials().await?;
            *lock(&self.held) = Some(credentials.clone());
            self.seen.obtained(&credentials);
            if credentials.expiry().is_some() {
                self.keeper.get_or_init(|| {
                    let keeper = keep_fresh(
                        Arc::downgrade(&self.held),
                        self.inner.clone(),
                        self.seen.clone(),
                    );
                    tokio::spawn(keeper).abort_handle()
                });
            }
            Ok(credentials)
        })
    }
}

/// Fetch again at two thirds of the remaining lifetime, until the provider
/// is dropped (aborted then; `held` no longer upgrades either).
async fn keep_fresh(held: Weak<Held>, inner: SharedCredentialsProvider, seen: Seen) {
    let mut failures: u32 = 0;
    loop {
        let expiry = match held.upgrade() {
            Some(held) => lock(&held).as_ref().and_then(Credentials::expiry),
            None => return,
        };
        let Some(expiry) = expiry else {
            return;
        };
        let left = expiry.duration_since(SystemTime::now()).unwrap_or_default();
        tokio::time::sleep((left * 2 / 3).max(MIN_REFRESH_INTERVAL)).await;
        match inner.provide_credentials().await {
            Ok(fresh) => {
                let expires_in = fresh
                    .expiry()
                    .and_then(|e| e.duration_since(SystemTime::now()).ok())
                    .unwrap_or_default();
                let Some(held) = held.upgrade() else {
                    return;
                };
                seen.obtained(&fresh);
                *lock(&held) = Some(fresh);
                failures = 0;
                tracing::info!(
                    expires_in_secs = expires_in.as_secs(),
                    "aws: credentials refreshed in the background"
                );
            }
            Err(err) => {
                // The chain's error text names the source, never a secret
                // (the credentials it would carry were not produced).
                failures = failures.saturating_add(1);
                let wait = crate::backoff::after_failures(failures);
                tracing::warn!(
                    retry_secs = wait.as_secs(),
                    error = %crate::text::shown(&err.to_string()),
                    "aws: refreshing credentials in the background failed"
                );
                tokio::time::sleep(wait).await;
            }
        }
    }
}
