//! Logging in, and keeping a token alive.
//!
//! One [`Session`] per provider holds the token behind a `tokio` mutex.
//! [`keep_alive`] (one task per provider, spawned by `vault::build`) renews
//! the token at 2/3 of its TTL and logs in again when renewal can no longer
//! extend it (max TTL reached, not renewable), independent of traffic, so a
//! request after a long idle period finds a live token.
//! Callers ask [`Session::token`] for a token: if it is fresh enough they get
//! it at once; otherwise (the background task lags or is absent) the first
//! caller renews or logs in while holding the lock, so concurrent requests
//! wait for that ONE login instead of each starting their own.
//!
//! A token that may not look itself up (`auth/token/lookup-self` denied, as
//! for a least-privilege token created with `no_default_policy`) is still
//! accepted when Vault knows it; its TTL is learnt from renew-self when that
//! is allowed, else it is not scheduled for renewal.

use std::time::{Duration, Instant, SystemTime};

use std::sync::{Arc, Weak};

use secrecy::{ExposeSecret, SecretString};
use tokio::sync::{Mutex, Notify};
use tracing::instrument::WithSubscriber;
use vaultrs::error::ClientError;

mod method;

pub(crate) use method::Method;
#[cfg(test)]
use method::read_secret;
use method::{login_failure, read_token};

use super::http::{Failure, Http};
use crate::{Credential, ProviderError};

/// The token in hand.
struct TokenState {
    token: SecretString,
    /// Bumped at each login, so that a 403 seen with an old token does not
    /// throw away a newer one.
    generation: u64,
    /// When the current lease started (login or last renewal).
    since: Instant,
    /// The current lease; `None` for a token that never expires.
    ttl: Option<Duration>,
    /// The TTL granted at login: renew when less than a third of it is left.
    login_ttl: Option<Duration>,
    renewable: bool,
    /// `None`: the token cannot look itself up, so we do not know them.
    policies: Option<Vec<String>>,
    /// Whether the background task should keep this token alive: it has a
    /// known TTL and either renewal or a real login can extend it.
    scheduled: bool,
}

impl TokenState {
    fn remaining(&self, now: Instant) -> Option<Duration> {
        self.ttl
            .map(|ttl| ttl.saturating_sub(now.saturating_duration_since(self.since)))
    }

    /// Not expired yet.
    fn usable(&self, now: Instant) -> bool {
        self.remaining(now).is_none_or(|left| !left.is_zero())
    }

    fn current(&self) -> Current {
        Current {
            token: self.token.clone(),
            generation: self.generation,
        }
    }

    /// Less than a third of the login TTL left (renew at 2/3).
    fn due(&self, now: Instant) -> bool {
        self.due_in(now).is_some_and(|wait| wait.is_zero())
    }

    /// How long until [`Self::due`]; `None` for a token that never expires
    /// or whose TTL we do not know.
    fn due_in(&self, now: Instant) -> Option<Duration> {
        let (left, full) = (self.remaining(now)?, self.login_ttl?);
        Some(if left < full / 3 {
            Duration::ZERO
        } else {
            (left - full / 3).max(Duration::from_millis(1))
        })
    }
}

/// A token to use for one request.
#[derive(Clone)]
pub(crate) struct Current {
    pub token: SecretString,
    pub generation: u64,
}

/// What lookup-self says about a token (for `check()` and a token "login").
pub(crate) struct Identity {
    pub policies: Vec<String>,
    pub ttl: Option<Duration>,
    pub renewable: bool,
}

/// Whether Vault accepts a token, and what we could learn about it.
pub(crate) enum Lookup {
    /// lookup-self answered.
    Known(Identity),
    /// lookup-self was denied, but Vault knows the token: a least-privilege
    /// token whose policy does not allow introspection.
    Opaque,
    /// Vault does not know the token: invalid, revoked or expired.
    Refused,
}

pub(crate) struct Session {
    pub http: Http,
    pub method: Method,
    /// `providers.<name>`, for logs.
    pub name: String,
    state: Mutex<Option<TokenState>>,
    generations: std::sync::atomic::AtomicU64,
    /// Login attempts finished, and how the last one failed: a caller that
    /// waited for an attempt shares its result instead of starting another
    /// (N queued requests must not make N logins against a dead Vault).
    attempts: std::sync::atomic::AtomicU64,
    last_error: std::sync::Mutex<Option<ProviderError>>,
    /// Signalled when the token in hand changes outside the background
    /// task (a login or an invalidation on the request path), so that the
    /// task plans again. Its own `Arc`: the task waits on it without
    /// keeping the session alive.
    changed: Arc<Notify>,
    /// The token's expiry and last renewal, for metrics (readable without
    /// waiting for a login in progress).
    credential: std::sync::Mutex<Option<Credential>>,
}

/// How a refresh went (for the background task's back-off).
enum Refreshed {
    /// The token in hand was fresh enough; nothing was done.
    Fresh,
    /// Renewed or logged in again.
    Done,
}

/// Run a `vaultrs` call with its own logging silenced: it logs every 404 at
/// ERROR and request details at DEBUG; we log one line per outcome ourselves.
pub(crate) async fn quiet<T>(
    call: impl std::future::Future<Output = Result<T, ClientError>>,
) -> Result<T, Failure> {
    // `Dispatch::none()`, not a new `NoSubscriber`: creating a dispatcher
    // registers it, which rebuilds every callsite's interest cache — a
    // few hundred microseconds on every backend call.
    call.with_subscriber(tracing::Dispatch::none())
        .await
        .map_err(Failure::from_client)
}

fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs())
}

impl Session {
    pub fn new(http: Http, method: Method, name: String) -> Self {
        Self {
            http,
            method,
            name,
            state: Mutex::new(None),
            generations: Default::default(),
            attempts: Default::default(),
            last_error: Default::default(),
            changed: Default::default(),
            credential: Default::default(),
        }
    }

    /// When the token in hand expires and when it was obtained or renewed.
    pub fn credential(&self) -> Option<Credential> {
        *self.credential.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publish what [`Self::credential`] says about `state`.
    fn publish(&self, state: Option<&TokenState>) {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let credential = state.map(|state| Credential {
            // Checked: the TTL is the server's number, whatever it is.
            expires_at: state.remaining(now).and_then(|left| wall.checked_add(left)),
            renewed_at: wall.checked_sub(now.saturating_duration_since(state.since)),
        });
        *self.credential.lock().unwrap_or_else(|e| e.into_inner()) = credential;
    }

    /// A token good for at least a third of its login TTL: renewed or
    /// re-obtained first when needed. Concurrent callers share one login.
    pub async fn token(&self) -> Result<Current, ProviderError> {
        use std::sync::atomic::Ordering;
        let attempts_before = self.attempts.load(Ordering::Acquire);
        let mut guard = self.state.lock().await;
        let now = Instant::now();
        if let Some(state) = guard.as_ref()
            && !state.due(now)
        {
            return Ok(state.current());
        }
        // A login finished while we waited for the lock and it failed:
        // share its outcome rather than trying again right away (the token
        // in hand if it still works, else the error).
        if self.attempts.load(Ordering::Acquire) != attempts_before
            && let Some(err) = self.last_error.lock().ok().and_then(|e| e.clone())
        {
            return match guard.as_ref() {
                Some(old) if old.usable(now) => Ok(old.current()),
                _ => Err(err),
            };
        }
        let outcome = self.refresh(&mut guard, "request").await;
        // The background task plans from the new state.
        self.changed.notify_one();
        outcome
            .map(|_| guard.as_ref().map(TokenState::current))
            .and_then(|c| c.ok_or_else(|| ProviderError::Unauthenticated("no Vault token".into())))
    }

    /// When the background task should next act: `Some(ZERO)` now (no
    /// token yet, or due), `None` when nothing is to be scheduled.
    async fn plan(&self) -> Option<Duration> {
        match self.state.lock().await.as_ref() {
            None => Some(Duration::ZERO),
            Some(state) if state.scheduled => state.due_in(Instant::now()),
            Some(_) => None,
        }
    }

    /// The background task's step: renew or log in if due. `Err` when the
    /// token in hand could not be refreshed (back off, then try again).
    async fn refresh_in_background(&self) -> Result<Refreshed, ProviderError> {
        let mut guard = self.state.lock().await;
        if guard.as_ref().is_some_and(|s| !s.due(Instant::now())) {
            return Ok(Refreshed::Fresh);
        }
        self.refresh(&mut guard, "background").await?;
        match guard.as_ref() {
            // Still due: neither renewal nor login gave more time.
            Some(state) if state.scheduled && state.due(Instant::now()) => {
                Err(ProviderError::unavailable(
                    "the token could not be extended (renewal and login gave no more time)",
                ))
            }
            _ => Ok(Refreshed::Done),
        }
    }

    /// Renew the token in `guard`, or log in again when renewal cannot
    /// extend it. `Ok` when a usable token is in `guard` afterwards (a
    /// failed re-login keeps an old token that still works: `Err` then
    /// only if the token in hand is still due, see the callers).
    async fn refresh(
        &self,
        guard: &mut Option<TokenState>,
        why: &'static str,
    ) -> Result<Refreshed, ProviderError> {
        let outcome = self.renew_or_login(guard, why).await;
        self.publish(guard.as_ref());
        outcome
    }

    async fn renew_or_login(
        &self,
        guard: &mut Option<TokenState>,
        why: &'static str,
    ) -> Result<Refreshed, ProviderError> {
        use std::sync::atomic::Ordering;
        let previous = guard.as_ref().map(|s| s.token.clone());
        if let Some(state) = guard.as_mut() {
            if state.renewable {
                match self.renew(state).await {
                    Ok(()) if !state.due(Instant::now()) => {
                        tracing::info!(
                            provider = %self.name,
                            ttl = %state.ttl.map(secs).unwrap_or_default(),
                            by = why,
                            "vault token renewed"
                        );
                        return Ok(Refreshed::Done);
                    }
                    Ok(()) => tracing::info!(
                        provider = %self.name,
                        "vault token cannot be renewed further (max TTL reached); logging in again"
                    ),
                    Err(err) => tracing::warn!(
                        provider = %self.name,
                        "vault token renewal failed ({err}); logging in again"
                    ),
                }
            } else {
                tracing::info!(
                    provider = %self.name,
                    "vault token is not renewable and expires soon; logging in again"
                );
            }
        }
        let outcome = self.login().await;
        if let Ok(mut last) = self.last_error.lock() {
            *last = outcome.as_ref().err().cloned();
        }
        self.attempts.fetch_add(1, Ordering::Release);
        match outcome {
            Ok(mut fresh) => {
                // A given token at its max TTL reads back as itself: there
                // is nothing to log in with, so stop scheduling it (it is
                // used until Vault refuses it, then the file is re-read).
                if previous
                    .as_ref()
                    .is_some_and(|p| p.expose_secret() == fresh.token.expose_secret())
                {
                    fresh.scheduled = false;
                }
                tracing::info!(
                    provider = %self.name,
                    method = %self.method.describe(),
                    ttl = %fresh.ttl.map(secs).unwrap_or_else(|| "unknown".into()),
                    renewable = fresh.renewable,
                    by = why,
                    "vault login"
                );
                *guard = Some(fresh);
                Ok(Refreshed::Done)
            }
            // A failed re-login while the old token still works: use it.
            Err(err) => match guard.as_ref() {
                Some(old) if old.usable(Instant::now()) => {
                    tracing::warn!(
                        provider = %self.name,
                        by = why,
                        "vault: logging in again failed ({err}); using the current token until it expires"
                    );
                    if why == "background" {
                        Err(err)
                    } else {
                        Ok(Refreshed::Fresh)
                    }
                }
                _ => Err(err),
            },
        }
    }

    /// Forget the token of `generation` (it was refused); the next
    /// [`Self::token`] logs in. A newer token is kept.
    pub async fn invalidate(&self, generation: u64) {
        let mut guard = self.state.lock().await;
        if guard.as_ref().is_some_and(|s| s.generation == generation) {
            tracing::info!(provider = %self.name, "vault token was refused; logging in again");
            *guard = None;
            self.publish(None);
            self.changed.notify_one();
        }
    }

    /// Whether Vault still accepts `token`, and what lookup-self says.
    ///
    /// Vault answers 403 "permission denied" both for a token it does not
    /// know and for one whose policy does not allow lookup-self. To tell
    /// them apart we ask `sys/internal/ui/mounts`: it needs no policy, but
    /// when a token is sent Vault checks it (403 if unknown, 200 if valid,
    /// listing only what the token may see). Measured on OpenBao 2.7.
    pub async fn lookup(&self, token: &SecretString) -> Result<Lookup, Failure> {
        let client = self.http.vault(token);
        match quiet(vaultrs::token::lookup_self(&client)).await {
            Ok(info) => Ok(Lookup::Known(Identity {
                policies: info.policies,
                ttl: (info.ttl > 0).then(|| Duration::from_secs(info.ttl)),
                renewable: info.renewable.unwrap_or(false),
            })),
            Err(f) if f.is_status(403) || f.is_status(401) => {
                match self
                    .http
                    .send(
                        reqwest::Method::GET,
                        "sys/internal/ui/mounts",
                        &[],
                        None,
                        token,
                    )
                    .await
                {
                    Ok(_) => Ok(Lookup::Opaque),
                    Err(f) if f.is_status(403) || f.is_status(401) => Ok(Lookup::Refused),
                    Err(f) => Err(f),
                }
            }
            Err(f) => Err(f),
        }
    }

    /// The policies of the token in hand (for "denied" messages); `None`
    /// when the token cannot look itself up.
    pub async fn policies(&self) -> Option<Vec<String>> {
        self.state
            .lock()
            .await
            .as_ref()
            .and_then(|s| s.policies.clone())
    }

    /// The TTL and renewability of the token in hand, as we track them
    /// (learnt from renew-self for a token that cannot look itself up).
    pub async fn lease(&self) -> Option<(Option<Duration>, bool)> {
        let now = Instant::now();
        self.state
            .lock()
            .await
            .as_ref()
            .map(|s| (s.remaining(now), s.renewable))
    }

    async fn renew(&self, state: &mut TokenState) -> Result<(), Failure> {
        let client = self.http.vault(&state.token);
        let started = Instant::now();
        let auth = quiet(vaultrs::token::renew_self(&client, None)).await?;
        state.since = started;
        state.ttl = Some(Duration::from_secs(auth.lease_duration));
        state.renewable = auth.renewable;
        Ok(())
    }

    fn next_generation(&self) -> u64 {
        self.generations
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1
    }

    async fn login(&self) -> Result<TokenState, ProviderError> {
        let started = Instant::now();
        let what = self.method.describe();
        let login_error = |f: Failure| login_failure(&self.http.shown, &what, f);
        let auth = match &self.method {
            Method::Token {
                file,
                fixed,
                source,
            } => {
                let token = match (file, fixed) {
                    (Some(file), _) => read_token(file, "token").await?,
                    (None, Some(token)) => token.clone(),
                    (None, None) => {
                        return Err(ProviderError::Unauthenticated(format!(
                            "no Vault token: {source} is not set; set it, or configure auth.token_file or another auth.method"
                        )));
                    }
                };
                let info = match self.lookup(&token).await {
                    Ok(Lookup::Known(info)) => info,
                    Ok(Lookup::Opaque) => return self.opaque_token(token, started).await,
                    Ok(Lookup::Refused) => {
                        return Err(ProviderError::Unauthenticated(format!(
                            "Vault at {} refuses the {what}: it is invalid, revoked or expired; provide a new token",
                            self.http.shown
                        )));
                    }
                    Err(f) => return Err(login_error(f)),
                };
                let renewable = info.renewable && info.ttl.is_some();
                return Ok(TokenState {
                    token,
                    generation: self.next_generation(),
                    since: started,
                    ttl: info.ttl,
                    login_ttl: info.ttl,
                    renewable,
                    policies: Some(info.policies),
                    // A given token can only be renewed, never re-obtained.
                    scheduled: renewable,
                });
            }
            method => method.log_in(self).await?,
        };
        let ttl = (auth.lease_duration > 0).then(|| Duration::from_secs(auth.lease_duration));
        // The answer is Vault's, and it becomes our next header: check it
        // like any other token.
        if super::config::header_token(&auth.client_token) != Some(auth.client_token.as_str()) {
            return Err(ProviderError::Unauthenticated(format!(
                "{what}: Vault at {} answered with a token that is empty or not printable ASCII",
                self.http.shown
            )));
        }
        Ok(TokenState {
            token: SecretString::from(auth.client_token),
            generation: self.next_generation(),
            since: started,
            ttl,
            login_ttl: ttl,
            renewable: auth.renewable,
            policies: Some(auth.policies),
            // Renewed while renewal extends it, else logged in again.
            scheduled: ttl.is_some(),
        })
    }

    /// A given token Vault accepts but that may not look itself up: learn
    /// its TTL from renew-self when its policy allows that (renewing it is
    /// what we would do anyway), else serve reads without scheduling.
    async fn opaque_token(
        &self,
        token: SecretString,
        started: Instant,
    ) -> Result<TokenState, ProviderError> {
        let client = self.http.vault(&token);
        let (ttl, renewable) = match quiet(vaultrs::token::renew_self(&client, None)).await {
            Ok(auth) => (
                (auth.lease_duration > 0).then(|| Duration::from_secs(auth.lease_duration)),
                auth.renewable,
            ),
            Err(Failure::Status { .. }) => (None, false),
            Err(f) => {
                return Err(login_failure(&self.http.shown, &self.method.describe(), f));
            }
        };
        tracing::info!(
            provider = %self.name,
            ttl = %ttl.map(secs).unwrap_or_else(|| "unknown".into()),
            "vault token accepted; it cannot look itself up (lookup-self denied){}",
            if ttl.is_some() {
                ": TTL learnt from renew-self"
            } else {
                ": TTL and renewal unknown, not renewed in the background"
            }
        );
        let renewable = renewable && ttl.is_some();
        Ok(TokenState {
            token,
            generation: self.next_generation(),
            since: started,
            ttl,
            login_ttl: ttl,
            renewable,
            policies: None,
            scheduled: renewable,
        })
    }
}

/// Keep the session's token alive until the session is dropped: renew at
/// 2/3 of its TTL, log in again when renewal cannot extend it, back off on
/// failure. Holds only a [`Weak`] reference between steps (the provider
/// also aborts it on drop), so it never keeps a provider alive.
pub(crate) async fn keep_alive(session: Weak<Session>) {
    let Some(changed) = session.upgrade().map(|s| s.changed.clone()) else {
        return;
    };
    let mut failures: u32 = 0;
    let mut started = false;
    loop {
        let plan = match session.upgrade() {
            Some(s) => s.plan().await,
            None => return,
        };
        match plan {
            // Nothing to schedule (no TTL known, or a token we cannot
            // extend): wait until the request path changes the token.
            None => {
                changed.notified().await;
                continue;
            }
            Some(wait) if !wait.is_zero() => {
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = changed.notified() => continue,
                }
            }
            Some(_) => {}
        }
        let Some(s) = session.upgrade() else { return };
        match s.refresh_in_background().await {
            Ok(_) => {
                failures = 0;
                started = true;
            }
            Err(err) => {
                failures = failures.saturating_add(1);
                let wait = crate::backoff::after_failures(failures);
                let what = if started {
                    "keeping the token alive failed"
                } else {
                    "the start-up login failed"
                };
                tracing::warn!(
                    provider = %s.name,
                    attempt = failures,
                    retry_in_ms = wait.as_millis() as u64,
                    "vault: {what} ({err}); trying again in the background (each request also tries)"
                );
                drop(s);
                tokio::time::sleep(wait).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(ttl: u64, elapsed: u64) -> TokenState {
        let now = Instant::now();
        TokenState {
            token: SecretString::from("s.x"),
            generation: 1,
            since: now - Duration::from_secs(elapsed),
            ttl: Some(Duration::from_secs(ttl)),
            login_ttl: Some(Duration::from_secs(30)),
            renewable: true,
            policies: Some(vec![]),
            scheduled: true,
        }
    }

    #[test]
    fn renews_after_two_thirds_of_the_login_ttl() {
        let now = Instant::now();
        assert!(!state(30, 0).due(now));
        assert!(!state(30, 19).due(now));
        assert!(state(30, 21).due(now));
        // A renewal capped by the max TTL leaves less than a third: due.
        assert!(state(5, 0).due(now));
        let mut forever = state(30, 100);
        forever.ttl = None;
        assert!(!forever.due(now));
        assert_eq!(forever.due_in(now), None);
        // The background task wakes when the third is reached.
        let wait = state(30, 0).due_in(now).unwrap();
        assert!(wait > Duration::from_secs(19) && wait <= Duration::from_secs(20));
        assert_eq!(state(30, 25).due_in(now), Some(Duration::ZERO));
    }

    #[test]
    fn any_ttl_vault_sends_is_safe_arithmetic() {
        // Vault's TTLs (lease_duration, lookup-self ttl) are u64 seconds
        // chosen by the server: the largest must not overflow anything.
        let now = Instant::now();
        let mut huge = state(u64::MAX, 0);
        huge.login_ttl = Some(Duration::from_secs(u64::MAX));
        assert!(huge.usable(now));
        assert!(!huge.due(now));
        assert!(huge.remaining(now).is_some());
        let later = now + Duration::from_secs(3600);
        assert!(huge.usable(later));
        assert!(!state(0, 0).usable(later));
    }

    /// A hung credential file (a FIFO nobody writes) holds one blocking
    /// thread, not the runtime and not the pool, through a login's read.
    #[test]
    fn cancelled_hung_reads_do_not_take_the_blocking_pool() {
        crate::credential_file::hung::cancelled_reads_leave_the_pool(|path| async move {
            let _ = read_secret(&path, "secret_id").await;
        });
    }

    #[tokio::test]
    async fn unreadable_credentials_name_the_file_not_the_content() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, " \n").unwrap();
        let err = read_secret(&empty, "secret_id").await.unwrap_err();
        assert!(err.to_string().contains("is empty"), "{err}");
        let err = read_secret(&dir.path().join("nope"), "role_id")
            .await
            .unwrap_err();
        assert!(matches!(err, ProviderError::Unauthenticated(_)));
        assert!(err.to_string().contains("role_id file"), "{err}");
        let full = dir.path().join("full");
        std::fs::write(&full, "s3cr3t-id\n").unwrap();
        assert_eq!(
            read_secret(&full, "x").await.unwrap().expose_secret(),
            "s3cr3t-id"
        );
        assert_eq!(
            read_token(&full, "x").await.unwrap().expose_secret(),
            "s3cr3t-id"
        );
        for bad in ["s.abc\x01def", "s.a b", "s.\u{7f}x", "tok\nen"] {
            std::fs::write(&full, bad).unwrap();
            let err = read_token(&full, "token").await.unwrap_err();
            assert!(err.to_string().contains("control character"), "{err}");
            assert!(!err.to_string().contains("s.a"), "{err}");
        }
        // A JWT of 64 KiB is read; one byte more, or bytes that are not
        // UTF-8, are refused without quoting them.
        std::fs::write(&full, "j".repeat(64 * 1024)).unwrap();
        assert_eq!(
            read_token(&full, "JWT")
                .await
                .unwrap()
                .expose_secret()
                .len(),
            64 * 1024
        );
        std::fs::write(&full, "j".repeat(64 * 1024 + 1)).unwrap();
        let err = read_token(&full, "JWT").await.unwrap_err().to_string();
        assert!(
            err.contains("larger than 64 KiB") && !err.contains("jjj"),
            "{err}"
        );
        std::fs::write(&full, b"s3cr3t\xff").unwrap();
        let err = read_secret(&full, "password")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("not UTF-8") && !err.contains("s3cr3t"),
            "{err}"
        );
    }
}
