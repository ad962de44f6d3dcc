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

use vaultbridge_providers::TaskKey;

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

/// Docker's task ids are 25 lowercase letters and digits; anything else is
/// not the engine's, and is not remembered.
const MAX_TASK_ID_BYTES: usize = 64;

impl TaskSecret {
    /// Its name where the managers' plugins share per-task values
    /// ([`vaultbridge_providers::Provider::recall`]): the task id, and a
    /// digest of the rest, each part length-prefixed so that no two
    /// requests name the same record. `None` for a task id that is not the
    /// engine's.
    pub fn shared_key(&self) -> Option<TaskKey> {
        use sha2::{Digest as _, Sha256};
        let lookup = &self.lookup;
        let mut hasher = Sha256::new();
        let mut part = |bytes: &[u8]| {
            hasher.update((bytes.len() as u64).to_be_bytes());
            hasher.update(bytes);
        };
        // An absent part is one byte, a present one that byte's opposite
        // and the text: `None` and `Some("")` differ.
        let mut optional = |text: Option<&str>| match text {
            None => part(b"-"),
            Some(text) => part(format!("+{text}").as_bytes()),
        };
        optional(Some(&self.secret_name));
        optional(Some(&lookup.provider));
        optional(Some(&lookup.path));
        optional(lookup.version.as_deref());
        optional(lookup.field.as_deref());
        optional(Some(&format!("{:?}", lookup.decode)));
        optional(lookup.rotation.as_deref());
        optional(Some(if self.reuse { "reuse" } else { "own" }));
        TaskKey::new(&self.task_id, &hasher.finalize().into())
    }

    /// What an entry holds: the value, and the request text in its key.
    fn size(&self, value: &Value) -> usize {
        let lookup = &self.lookup;
        value.expose_secret().len()
            + self.task_id.len()
            + self.secret_name.len()
            + lookup.provider.len()
            + lookup.path.len()
            + lookup.version.as_ref().map_or(0, String::len)
            + lookup.field.as_ref().map_or(0, String::len)
    }
}

struct Entry {
    value: Value,
    expires: Instant,
    size: usize,
    /// Which insertion this is: the order queue's older copies of the key
    /// (from before a replacement) must not evict it.
    seq: u64,
}

#[derive(Default)]
struct State {
    entries: HashMap<TaskSecret, Entry>,
    /// Insertion order, for eviction; may name entries since replaced.
    order: VecDeque<(TaskSecret, u64)>,
    bytes: usize,
    next_seq: u64,
}

impl State {
    fn remove(&mut self, task: &TaskSecret) {
        if let Some(gone) = self.entries.remove(task) {
            self.bytes -= gone.size;
        }
    }
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

    /// Whether no value is remembered: then [`Self::get`] finds nothing,
    /// and a caller need not build the key to ask it.
    pub fn is_empty(&self) -> bool {
        self.lock().entries.is_empty()
    }

    /// The value `task` already got, if it is still valid.
    pub fn get(&self, task: &TaskSecret) -> Option<Value> {
        let mut state = self.lock();
        let entry = state.entries.get(task)?;
        if entry.expires > Instant::now() {
            return Some(entry.value.clone());
        }
        state.remove(task);
        None
    }

    /// Remember what `task` got, for `lease` (or [`DEFAULT_KEEP`]).
    pub fn insert(&self, task: TaskSecret, value: Value, lease: Option<Duration>) {
        let size = task.size(&value);
        let engine_task_id = !task.task_id.is_empty()
            && task.task_id.len() <= MAX_TASK_ID_BYTES
            && task.task_id.bytes().all(|b| b.is_ascii_alphanumeric());
        if !engine_task_id || size > MAX_BYTES {
            return;
        }
        let now = Instant::now();
        let Some(expires) = now.checked_add(lease.unwrap_or(DEFAULT_KEEP)) else {
            return;
        };
        let mut state = self.lock();
        state.remove(&task);
        // Oldest first out, until the new value fits.
        while state.entries.len() >= MAX_ENTRIES || state.bytes + size > MAX_BYTES {
            let Some((oldest, seq)) = state.order.pop_front() else {
                break;
            };
            if state
                .entries
                .get(&oldest)
                .is_some_and(|entry| entry.seq == seq)
            {
                state.remove(&oldest);
            }
        }
        // The order queue may hold replaced or expired entries: keep it
        // from growing past a small multiple of the live ones.
        if state.order.len() > 2 * MAX_ENTRIES {
            let State { entries, order, .. } = &mut *state;
            order.retain(|(key, seq)| entries.get(key).is_some_and(|entry| entry.seq == *seq));
        }
        let seq = state.next_seq;
        state.next_seq += 1;
        state.order.push_back((task.clone(), seq));
        state.bytes += size;
        let entry = Entry {
            value,
            expires,
            size,
            seq,
        };
        state.entries.insert(task, entry);
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
                rotation: None,
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
        assert_eq!(issued.usage().0, MAX_ENTRIES);
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

    #[tokio::test(start_paused = true)]
    async fn only_engine_task_ids_are_remembered_and_keys_count() {
        let issued = Issued::default();
        for id in [
            "x".repeat(1024 * 1024),
            "t-1".into(),
            "t\n1".into(),
            "".into(),
        ] {
            issued.insert(task(&id, "db"), value(b"v"), None);
        }
        assert_eq!(issued.usage(), (0, 0));
        // A long secret name counts: the bytes bound covers the keys too.
        let name = "n".repeat(100_000);
        issued.insert(task("t1", &name), value(b"v"), None);
        assert!(issued.usage().1 > 100_000);
    }

    #[tokio::test(start_paused = true)]
    async fn a_replaced_entry_is_not_evicted_by_its_older_place_in_line() {
        let issued = Issued::default();
        issued.insert(task("first", "db"), value(b"1"), None);
        issued.insert(task("second", "db"), value(b"2"), None);
        issued.insert(task("first", "db"), value(b"1b"), None);
        for n in 0..MAX_ENTRIES - 2 {
            issued.insert(task(&format!("t{n}"), "db"), value(b"v"), None);
        }
        // Full: the next one evicts the oldest live entry, `second`.
        issued.insert(task("last", "db"), value(b"v"), None);
        assert!(issued.get(&task("second", "db")).is_none());
        assert!(issued.get(&task("first", "db")).is_some());
    }

    #[test]
    fn shared_keys_name_one_task_and_everything_its_request_said() {
        let base = task("k3f9x2m1q8w7e6r5t4y3u2i1o", "db");
        let key = base.shared_key().expect("an engine task id");
        let (id, digest) = key.as_str().split_once('/').unwrap();
        assert_eq!(id, "k3f9x2m1q8w7e6r5t4y3u2i1o");
        assert_eq!(digest.len(), 64);
        assert!(digest.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(base.clone().shared_key(), Some(key.clone()));
        // Every part of the request changes the name.
        let variants: [fn(&mut TaskSecret); 9] = [
            |t| t.task_id = "other0task0id0000000000000".into(),
            |t| t.secret_name = "db2".into(),
            |t| t.lookup.provider = "vault2".into(),
            |t| t.lookup.path = "database/creds/other".into(),
            |t| t.lookup.version = Some(String::new()),
            |t| t.lookup.field = Some("password".into()),
            |t| t.lookup.decode = Decode::Base64,
            |t| t.lookup.rotation = Some("1".into()),
            |t| t.reuse = false,
        ];
        let mut seen = std::collections::BTreeSet::from([key.as_str().to_string()]);
        for change in variants {
            let mut changed = base.clone();
            change(&mut changed);
            let key = changed.shared_key().unwrap();
            assert!(seen.insert(key.as_str().to_string()), "{key:?} twice");
        }
        // Moving text between parts changes it too (length-prefixed).
        let mut a = base.clone();
        (a.secret_name, a.lookup.provider) = ("dbv".into(), "ault".into());
        assert_ne!(a.shared_key(), base.shared_key());
        // Not the engine's task id: nothing to share under.
        for id in ["", "T1", "t-1", "t/1", "../x", &"x".repeat(65)] {
            assert_eq!(task(id, "db").shared_key(), None, "{id:?}");
        }
    }
}
