//! The value cache with request coalescing and stale-on-error.
//!
//! The engine calls the plugin once per task and does not cache answers:
//! scaling to 500 replicas is 500 calls, a leader failover thousands. So:
//! - a fresh entry is served from memory (a *hit*);
//! - concurrent identical lookups share one backend call (*coalesced*),
//!   success or error; the call runs in its own task, so a client that hangs
//!   up does not cancel it for the others;
//! - when the backend is unavailable, an entry up to `max_stale` past its TTL
//!   is served (*stale*), logged loudly.
//!
//! Per-task values are never stored, and never handed to two tasks.
//! Bounded in entries and bytes; values are zeroized when the last
//! reference to them is dropped.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretSlice};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::ResolveError;
use crate::labels::Decode;

/// A shaped secret value, shared between the cache and in-flight answers.
pub type Value = Arc<SecretSlice<u8>>;

/// Everything that makes two lookups return the same bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub provider: Arc<str>,
    pub path: String,
    pub version: Option<String>,
    pub field: Option<String>,
    pub decode: Decode,
    /// The rotation controller's change stamp: a rotated secret's first
    /// read is never served a value cached for the one it replaces.
    pub rotation: Option<String>,
}

/// What a fetch produced: the value, and whether it is unique to one task.
#[derive(Clone)]
pub struct Fetched {
    pub value: Value,
    pub per_task: bool,
    /// How long a per-task value stays valid (the backend's lease), if known.
    pub lease: Option<Duration>,
}

impl std::fmt::Debug for Fetched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetched")
            .field("len", &self.value.expose_secret().len())
            .field("per_task", &self.per_task)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl Fetched {
    /// A value any task may get (from the cache, or a shared call).
    pub fn shared(value: Value) -> Self {
        Self {
            value,
            per_task: false,
            lease: None,
        }
    }
}

/// How an answer was obtained, for the log line (and later, metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Hit,
    Miss,
    Coalesced,
    Stale,
    /// Not cacheable (per-task): fetched for this request alone.
    Bypass,
    /// The per-task value this task already got (the engine asked again).
    Reissued,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Hit => "hit",
            Source::Miss => "miss",
            Source::Coalesced => "coalesced",
            Source::Stale => "stale",
            Source::Bypass => "bypass",
            Source::Reissued => "reissued",
        }
    }
}

/// Cache lifetimes of one provider.
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    pub ttl: Duration,
    pub max_stale: Duration,
}

/// Global bounds (`[cache]` in the config file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    pub max_entries: usize,
    pub max_bytes: usize,
}

/// Far above any real need; beyond them a value is a typo.
const MAX_ENTRIES: usize = 1_000_000;
const MAX_BYTES: usize = 1024 * 1024 * 1024;

impl Limits {
    pub fn validate(&self) -> Result<(), vaultbridge_providers::ConfigError> {
        if self.max_entries > MAX_ENTRIES {
            return Err(vaultbridge_providers::ConfigError::new(
                "cache.max_entries",
                format!(
                    "{} is out of range: at most {MAX_ENTRIES}",
                    self.max_entries
                ),
            ));
        }
        if self.max_bytes > MAX_BYTES {
            return Err(vaultbridge_providers::ConfigError::new(
                "cache.max_bytes",
                format!(
                    "{} is out of range: at most {MAX_BYTES} (1 GiB)",
                    self.max_bytes
                ),
            ));
        }
        Ok(())
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_entries: 10_000,
            max_bytes: 32 * 1024 * 1024,
        }
    }
}

pub struct Cache {
    state: Mutex<State>,
    limits: Limits,
}

#[derive(Default)]
struct State {
    entries: HashMap<Key, Entry>,
    flights: HashMap<Key, watch::Receiver<Option<Flight>>>,
    bytes: usize,
    last_sweep: Option<Instant>,
}

struct Entry {
    value: Value,
    fetched: Instant,
    lifetimes: Lifetimes,
}

impl Entry {
    fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.fetched)
    }
    fn is_fresh(&self, now: Instant) -> bool {
        self.age(now) < self.lifetimes.ttl
    }
    fn is_usable_stale(&self, now: Instant) -> bool {
        self.age(now) < self.lifetimes.ttl + self.lifetimes.max_stale
    }
}

/// The duty to answer one flight's waiters and remove it from the map.
/// Done by [`Landing::land`]; if the call panics (or its task is dropped)
/// first, `Drop` does it with an error, so that no flight outlives its
/// call and the next request starts a new one.
struct Landing {
    cache: Arc<Cache>,
    key: Key,
    sender: Option<watch::Sender<Option<Flight>>>,
}

impl Landing {
    fn land(&mut self, lifetimes: Lifetimes, result: Result<Fetched, ResolveError>) {
        if let Some(sender) = self.sender.take() {
            let flight = self.cache.land(&self.key, lifetimes, result);
            let _ = sender.send(Some(flight));
        }
    }
}

impl Drop for Landing {
    fn drop(&mut self) {
        if let Some(sender) = self.sender.take() {
            self.cache.lock().flights.remove(&self.key);
            tracing::error!(
                provider = %self.key.provider,
                "internal error: a backend call ended without an answer (a bug); its requests get an error and the next request tries again"
            );
            let _ = sender.send(Some(Flight::Done(Err(ResolveError::Internal(
                "the backend call failed unexpectedly; try again (see the plugin log)".into(),
            )))));
        }
    }
}

/// The result of one shared backend call, as every waiter sees it.
#[derive(Clone)]
enum Flight {
    Done(Result<Value, ResolveError>),
    Stale(Value),
    /// A per-task value: the first waiter takes it, the others fetch their own.
    PerTask(Arc<Mutex<Option<Fetched>>>),
}

impl Cache {
    pub fn new(limits: Limits) -> Self {
        Self {
            state: Mutex::new(State::default()),
            limits,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps inconsistent
        // in a way that matters more than losing the cache: keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of entries and bytes held.
    pub fn usage(&self) -> (usize, usize) {
        let state = self.lock();
        (state.entries.len(), state.bytes)
    }

    /// Whether an entry for `key` is held, fresh or not: its value was
    /// shared, not made for one task.
    pub fn holds(&self, key: &Key) -> bool {
        self.lock().entries.contains_key(key)
    }

    /// Serve `key` from memory, or join/start the one backend call for it.
    /// `fetch` may be called again by a waiter that must not share a
    /// per-task value.
    pub async fn get_or_fetch<F, Fut>(
        self: &Arc<Self>,
        key: &Key,
        lifetimes: Lifetimes,
        fetch: F,
    ) -> Result<(Fetched, Source), ResolveError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Fetched, ResolveError>> + Send + 'static,
    {
        let (mut receiver, source) = {
            let mut state = self.lock();
            let now = Instant::now();
            if let Some(entry) = state.entries.get(key)
                && entry.is_fresh(now)
            {
                return Ok((Fetched::shared(entry.value.clone()), Source::Hit));
            }
            match state.flights.get(key) {
                Some(receiver) => (receiver.clone(), Source::Coalesced),
                None => {
                    let (sender, receiver) = watch::channel(None);
                    state.flights.insert(key.clone(), receiver.clone());
                    let mut landing = Landing {
                        cache: self.clone(),
                        key: key.clone(),
                        sender: Some(sender),
                    };
                    let call = fetch();
                    tokio::spawn(async move {
                        let result = call.await;
                        landing.land(lifetimes, result);
                    });
                    (receiver, Source::Miss)
                }
            }
        };
        let flight = match receiver.wait_for(Option::is_some).await {
            Ok(flight) => flight.clone().expect("waited for Some"),
            Err(_) => {
                return Err(ResolveError::Internal(
                    "the shared backend call ended without an answer".into(),
                ));
            }
        };
        match flight {
            Flight::Done(result) => result.map(|value| (Fetched::shared(value), source)),
            Flight::Stale(value) => Ok((Fetched::shared(value), Source::Stale)),
            Flight::PerTask(slot) => {
                let taken = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
                match taken {
                    Some(fetched) => Ok((fetched, Source::Bypass)),
                    None => fetch().await.map(|fetched| (fetched, Source::Bypass)),
                }
            }
        }
    }

    /// Record a finished backend call and decide what its waiters get.
    fn land(
        &self,
        key: &Key,
        lifetimes: Lifetimes,
        result: Result<Fetched, ResolveError>,
    ) -> Flight {
        let mut state = self.lock();
        state.flights.remove(key);
        let now = Instant::now();
        match result {
            Ok(fetched) if fetched.per_task => Flight::PerTask(Arc::new(Mutex::new(Some(fetched)))),
            Ok(fetched) => {
                self.insert(&mut state, key, &fetched.value, lifetimes, now);
                Flight::Done(Ok(fetched.value))
            }
            Err(error) if error.is_transient() => match state.entries.get(key) {
                Some(entry) if entry.is_usable_stale(now) => {
                    tracing::warn!(
                        provider = %key.provider,
                        path = %key.path,
                        age_secs = entry.age(now).as_secs(),
                        max_stale_secs = lifetimes.max_stale.as_secs(),
                        error = %error,
                        "BACKEND UNAVAILABLE: serving a stale value"
                    );
                    Flight::Stale(entry.value.clone())
                }
                _ => Flight::Done(Err(error)),
            },
            Err(error) => {
                // Gone or no longer allowed: never serve the old value again.
                Self::remove(&mut state, key);
                Flight::Done(Err(error))
            }
        }
    }

    fn insert(
        &self,
        state: &mut State,
        key: &Key,
        value: &Value,
        lifetimes: Lifetimes,
        now: Instant,
    ) {
        Self::remove(state, key);
        let size = value.expose_secret().len();
        let keep = lifetimes.ttl + lifetimes.max_stale;
        if keep.is_zero() || size > self.limits.max_bytes || self.limits.max_entries == 0 {
            return;
        }
        self.sweep(state, now);
        while state.entries.len() >= self.limits.max_entries
            || state.bytes + size > self.limits.max_bytes
        {
            let oldest = state
                .entries
                .iter()
                .min_by_key(|(_, entry)| entry.fetched)
                .map(|(key, _)| key.clone());
            match oldest {
                Some(oldest) => Self::remove(state, &oldest),
                None => break,
            }
        }
        state.bytes += size;
        state.entries.insert(
            key.clone(),
            Entry {
                value: value.clone(),
                fetched: now,
                lifetimes,
            },
        );
    }

    /// Drop entries past any use, at most once a second.
    fn sweep(&self, state: &mut State, now: Instant) {
        if state
            .last_sweep
            .is_some_and(|last| now.saturating_duration_since(last) < Duration::from_secs(1))
        {
            return;
        }
        state.last_sweep = Some(now);
        let expired: Vec<Key> = state
            .entries
            .iter()
            .filter(|(_, entry)| !entry.is_usable_stale(now))
            .map(|(key, _)| key.clone())
            .collect();
        for key in expired {
            Self::remove(state, &key);
        }
    }

    fn remove(state: &mut State, key: &Key) {
        if let Some(entry) = state.entries.remove(key) {
            state.bytes -= entry.value.expose_secret().len();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use vaultbridge_providers::ProviderError;

    use super::*;

    fn key(path: &str) -> Key {
        Key {
            provider: "p".into(),
            path: path.into(),
            version: None,
            field: None,
            decode: Decode::None,
            rotation: None,
        }
    }

    const LIFE: Lifetimes = Lifetimes {
        ttl: Duration::from_secs(30),
        max_stale: Duration::ZERO,
    };

    fn value(bytes: &[u8]) -> Value {
        Arc::new(SecretSlice::from(bytes.to_vec()))
    }

    /// (bytes, per_task) or the error the stand-in backend answers with.
    type Answer = Result<(Vec<u8>, bool), ProviderError>;

    /// A backend stand-in that counts calls and answers after a pause.
    #[derive(Clone)]
    struct Backend {
        calls: Arc<AtomicUsize>,
        answer: Arc<Mutex<Answer>>,
    }

    impl Backend {
        fn new(answer: Answer) -> Self {
            Self {
                calls: Arc::new(AtomicUsize::new(0)),
                answer: Arc::new(Mutex::new(answer)),
            }
        }
        fn set(&self, answer: Answer) {
            *self.answer.lock().unwrap() = answer;
        }
        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
        fn fetch(&self) -> impl Future<Output = Result<Fetched, ResolveError>> + Send + 'static {
            let this = self.clone();
            async move {
                let n = this.calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                let answer = this.answer.lock().unwrap().clone();
                answer
                    .map(|(bytes, per_task)| {
                        let mut bytes = bytes;
                        if per_task {
                            bytes.extend_from_slice(n.to_string().as_bytes());
                        }
                        Fetched {
                            value: value(&bytes),
                            per_task,
                            lease: None,
                        }
                    })
                    .map_err(|error| ResolveError::Provider {
                        provider: "p".into(),
                        kind: "test",
                        path: "x".into(),
                        error,
                    })
            }
        }
    }

    async fn get(
        cache: &Arc<Cache>,
        backend: &Backend,
        key: &Key,
        life: Lifetimes,
    ) -> Result<(Vec<u8>, Source), ResolveError> {
        cache
            .get_or_fetch(key, life, || backend.fetch())
            .await
            .map(|(f, s)| (f.value.expose_secret().to_vec(), s))
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_lookups_make_one_backend_call_then_hit() {
        let cache = Arc::new(Cache::new(Limits::default()));
        let backend = Backend::new(Ok((b"v".to_vec(), false)));
        let k = key("a");
        let lookups = (0..100).map(|_| get(&cache, &backend, &k, LIFE));
        let results = futures::future::join_all(lookups).await;
        assert_eq!(backend.calls(), 1);
        assert!(results.iter().all(|r| r.as_ref().unwrap().0 == b"v"));
        let sources: Vec<Source> = results.into_iter().map(|r| r.unwrap().1).collect();
        assert_eq!(sources.iter().filter(|s| **s == Source::Miss).count(), 1);
        assert_eq!(
            get(&cache, &backend, &k, LIFE).await.unwrap().1,
            Source::Hit
        );
        assert_eq!(backend.calls(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_call_fails_its_waiters_and_the_next_request_starts_afresh() {
        let cache = Arc::new(Cache::new(Limits::default()));
        let k = key("a");
        let panicking = || async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if true {
                panic!("a bug in a backend");
            }
            Err(ResolveError::Internal("unreachable".into()))
        };
        let results =
            futures::future::join_all((0..5).map(|_| cache.get_or_fetch(&k, LIFE, panicking)))
                .await;
        for result in results {
            let err = result.expect_err("the panic is an error");
            assert!(matches!(err, ResolveError::Internal(_)), "{err}");
        }
        assert!(cache.lock().flights.is_empty(), "no flight left behind");
        let backend = Backend::new(Ok((b"v".to_vec(), false)));
        assert_eq!(
            get(&cache, &backend, &k, LIFE).await.unwrap(),
            (b"v".to_vec(), Source::Miss)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn errors_are_shared_but_not_cached() {
        let cache = Arc::new(Cache::new(Limits::default()));
        let backend = Backend::new(Err(ProviderError::NotFound("nope".into())));
        let k = key("a");
        let results =
            futures::future::join_all((0..10).map(|_| get(&cache, &backend, &k, LIFE))).await;
        assert!(results.iter().all(Result::is_err));
        assert_eq!(backend.calls(), 1);
        assert!(get(&cache, &backend, &k, LIFE).await.is_err());
        assert_eq!(backend.calls(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn entries_expire_after_their_ttl() {
        let cache = Arc::new(Cache::new(Limits::default()));
        let backend = Backend::new(Ok((b"v1".to_vec(), false)));
        let k = key("a");
        assert_eq!(get(&cache, &backend, &k, LIFE).await.unwrap().0, b"v1");
        backend.set(Ok((b"v2".to_vec(), false)));
        tokio::time::advance(Duration::from_secs(29)).await;
        assert_eq!(get(&cache, &backend, &k, LIFE).await.unwrap().0, b"v1");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(get(&cache, &backend, &k, LIFE).await.unwrap().0, b"v2");
        assert_eq!(backend.calls(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn per_task_values_are_never_shared_or_stored() {
        let cache = Arc::new(Cache::new(Limits::default()));
        let backend = Backend::new(Ok((b"lease-".to_vec(), true)));
        let k = key("a");
        let results =
            futures::future::join_all((0..5).map(|_| get(&cache, &backend, &k, LIFE))).await;
        let mut values: Vec<Vec<u8>> = results.into_iter().map(|r| r.unwrap().0).collect();
        values.sort();
        values.dedup();
        assert_eq!(values.len(), 5, "every task got its own value");
        assert_eq!(cache.usage().0, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn stale_is_served_only_when_unavailable_and_only_within_max_stale() {
        let cache = Arc::new(Cache::new(Limits::default()));
        let life = Lifetimes {
            ttl: Duration::from_secs(10),
            max_stale: Duration::from_secs(60),
        };
        let backend = Backend::new(Ok((b"good".to_vec(), false)));
        let k = key("a");
        get(&cache, &backend, &k, life).await.unwrap();

        backend.set(Err(ProviderError::unavailable("down")));
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(
            get(&cache, &backend, &k, life).await.unwrap(),
            (b"good".to_vec(), Source::Stale)
        );
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(
            get(&cache, &backend, &k, life).await.is_err(),
            "past max_stale"
        );

        // Denied is never answered with a stale value, and drops the entry.
        let k = key("b");
        backend.set(Ok((b"good".to_vec(), false)));
        get(&cache, &backend, &k, life).await.unwrap();
        tokio::time::advance(Duration::from_secs(11)).await;
        backend.set(Err(ProviderError::Denied("policy".into())));
        assert!(get(&cache, &backend, &k, life).await.is_err());
        backend.set(Err(ProviderError::unavailable("down")));
        assert!(get(&cache, &backend, &k, life).await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn bounded_in_entries_and_bytes() {
        let cache = Arc::new(Cache::new(Limits {
            max_entries: 100,
            max_bytes: 1000,
        }));
        let backend = Backend::new(Ok((vec![b'x'; 7], false)));
        for i in 0..1000 {
            get(&cache, &backend, &key(&i.to_string()), LIFE)
                .await
                .unwrap();
        }
        let (entries, bytes) = cache.usage();
        assert!(entries <= 100, "{entries}");
        assert!(bytes <= 1000, "{bytes}");
        // The newest entries survive.
        assert_eq!(
            get(&cache, &backend, &key("999"), LIFE).await.unwrap().1,
            Source::Hit
        );

        let big = Backend::new(Ok((vec![b'x'; 300], false)));
        for i in 0..10 {
            get(&cache, &big, &key(&format!("big{i}")), LIFE)
                .await
                .unwrap();
        }
        let (_, bytes) = cache.usage();
        assert!(bytes <= 1000, "{bytes}");
    }
}
