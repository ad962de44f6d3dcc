//! Per-task values already handed to a task.
//!
//! The engine asks again for every live task when a node's assignment stream
//! restarts (leader failover, node reconnect). For a per-task value (a Vault
//! lease, `vaultbridge.reuse=false`) a fresh lookup would mint a new lease
//! that nobody uses and nobody revokes; instead the task gets the value it
//! already has, while that value's lease is valid. A new task gets its own.
//!
//! Bounded in entries and bytes (oldest first out); values are zeroized when
//! dropped, as the cache's are.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use secrecy::ExposeSecret;
use tokio::time::Instant;

use crate::cache::{Key, Value};

/// How long a per-task value is kept when the backend gave no lease: long
/// enough to cover a failover during a long-running task.
pub const DEFAULT_KEEP: Duration = Duration::from_secs(24 * 3600);
/// At most this many remembered task values...
pub const MAX_ENTRIES: usize = 10_000;
/// ...holding at most this many bytes (per-task credentials are small).
pub const MAX_BYTES: usize = 16 * 1024 * 1024;

/// One task's request for one secret: the engine's re-ask repeats all of it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TaskSecret {
    pub task_id: String,
    pub secret_name: String,
    /// Everything the labels say: where the value comes from, and
    /// `vaultbridge.reuse` (a task asking for the shared value must not get
    /// a per-task one it was given under other labels).
    pub lookup: Key,
    pub reuse: bool,
}

struct Entry {
    value: Value,
    expires: Instant,
}

#[derive(Default)]
struct State {
    entries: HashMap<TaskSecret, Entry>,
    /// Insertion order, for eviction; may name entries already replaced.
    order: VecDeque<TaskSecret>,
    bytes: usize,
}

#[derive(Default)]
pub struct Issued {
    state: Mutex<State>,
}

impl Issued {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every mutation below leaves the maps consistent before it can
        // panic; a poisoned lock only means a caller panicked elsewhere.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The value `task` already got, if it is still valid.
    pub fn get(&self, task: &TaskSecret) -> Option<Value> {
        let mut state = self.lock();
        let entry = state.entries.get(task)?;
        if entry.expires > Instant::now() {
            return Some(entry.value.clone());
        }
        let gone = state.entries.remove(task)?;
        state.bytes -= gone.value.expose_secret().len();
        None
    }

    /// Remember what `task` got, for `lease` (or [`DEFAULT_KEEP`]).
    pub fn insert(&self, task: TaskSecret, value: Value, lease: Option<Duration>) {
        let size = value.expose_secret().len();
        if task.task_id.is_empty() || size > MAX_BYTES {
            return;
        }
        let now = Instant::now();
        let Some(expires) = now.checked_add(lease.unwrap_or(DEFAULT_KEEP)) else {
            return;
        };
        let mut state = self.lock();
        if let Some(old) = state.entries.remove(&task) {
            state.bytes -= old.value.expose_secret().len();
        }
        // Oldest first out, until the new value fits.
        while state.entries.len() >= MAX_ENTRIES || state.bytes + size > MAX_BYTES {
            let Some(oldest) = state.order.pop_front() else {
                break;
            };
            if let Some(gone) = state.entries.remove(&oldest) {
                state.bytes -= gone.value.expose_secret().len();
            }
        }
        // The order queue may hold names of replaced or expired entries:
        // keep it from growing past a small multiple of the live ones.
        if state.order.len() > 2 * MAX_ENTRIES {
            let State { entries, order, .. } = &mut *state;
            order.retain(|key| entries.contains_key(key));
        }
        state.order.push_back(task.clone());
        state.bytes += size;
        state.entries.insert(task, Entry { value, expires });
    }

    #[cfg(test)]
    fn usage(&self) -> (usize, usize) {
        let state = self.lock();
        (state.entries.len(), state.bytes)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use secrecy::SecretSlice;

    use super::*;
    use crate::labels::Decode;

    fn task(id: &str, secret: &str) -> TaskSecret {
        TaskSecret {
            task_id: id.into(),
            secret_name: secret.into(),
            lookup: Key {
                provider: "vault".into(),
                path: "database/creds/app".into(),
                version: None,
                field: None,
                decode: Decode::None,
            },
            reuse: true,
        }
    }

    fn value(bytes: &[u8]) -> Value {
        Arc::new(SecretSlice::from(bytes.to_vec()))
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_gets_its_own_value_again_until_the_lease_ends() {
        let issued = Issued::default();
        issued.insert(
            task("t1", "db"),
            value(b"one"),
            Some(Duration::from_secs(60)),
        );
        let again = issued.get(&task("t1", "db")).expect("remembered");
        assert_eq!(again.expose_secret(), b"one");
        // Another task, another secret of the same task: not this value.
        assert!(issued.get(&task("t2", "db")).is_none());
        assert!(issued.get(&task("t1", "other")).is_none());
        // The same task and secret under other labels: not this value.
        let relabelled = TaskSecret {
            reuse: false,
            ..task("t1", "db")
        };
        assert!(issued.get(&relabelled).is_none());

        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(
            issued.get(&task("t1", "db")).is_none(),
            "kept past its lease"
        );
        assert_eq!(issued.usage(), (0, 0));

        // No lease: kept for the default.
        issued.insert(task("t3", "db"), value(b"three"), None);
        tokio::time::advance(DEFAULT_KEEP - Duration::from_secs(1)).await;
        assert!(issued.get(&task("t3", "db")).is_some());
        // No task id (not from the engine): nothing to remember it by.
        issued.insert(task("", "db"), value(b"x"), None);
        assert_eq!(issued.usage().0, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn bounded_in_entries_and_bytes_oldest_out() {
        let issued = Issued::default();
        for n in 0..MAX_ENTRIES + 10 {
            issued.insert(task(&format!("t{n}"), "db"), value(b"v"), None);
        }
        assert_eq!(issued.usage(), (MAX_ENTRIES, MAX_ENTRIES));
        assert!(issued.get(&task("t0", "db")).is_none(), "oldest kept");
        assert!(
            issued
                .get(&task(&format!("t{}", MAX_ENTRIES + 9), "db"))
                .is_some()
        );

        let big = vec![b'x'; MAX_BYTES / 2 + 1];
        issued.insert(task("big1", "db"), value(&big), None);
        issued.insert(task("big2", "db"), value(&big), None);
        let (_, bytes) = issued.usage();
        assert!(bytes <= MAX_BYTES, "{bytes}");
        assert!(issued.get(&task("big1", "db")).is_none());
        assert!(issued.get(&task("big2", "db")).is_some());
        // Replacing an entry does not count its bytes twice.
        issued.insert(task("big2", "db"), value(b"small"), None);
        assert!(issued.usage().1 < MAX_BYTES / 2);
    }
}
