//! What to roll, decided from what the engine and the backends say: pure
//! functions of their answers, so that every rule is tested without an
//! engine.
//!
//! All the controller's state lives in the secrets it creates (their names
//! and labels), none in memory or on disk: a restarted controller, or one
//! run from cron with `--once`, decides exactly as a long-running one.

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use vaultbridge_providers::Version;

use crate::labels::{ROTATION, VERSION};

/// A secret whose driver is this plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverSecret {
    pub id: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub created: Option<SystemTime>,
}

/// How a service's last update ended, as the engine reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateState {
    /// No update yet, or it completed.
    Settled,
    Updating,
    /// Paused or rolled back (or rolling back): the service's own failure
    /// action took over.
    Failed,
}

/// A service and the secrets it references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceUse {
    pub id: String,
    pub name: String,
    /// Secret ids in its spec.
    pub secrets: BTreeSet<String>,
    pub update: UpdateState,
    /// The engine's word on its last update, when it gave one.
    pub message: Option<String>,
}

/// The most characters of a secret name (the engine's limit).
pub const MAX_NAME: usize = 64;

/// `db`, `db-r1`, `db-r2`: a rotated secret's name is its family's root
/// and a generation.
pub fn family(name: &str) -> (&str, u32) {
    if let Some((root, generation)) = name.rsplit_once("-r")
        && !root.is_empty()
        && !generation.is_empty()
        && generation.len() <= 9
        && generation.bytes().all(|b| b.is_ascii_digit())
        && !generation.starts_with('0')
    {
        return (root, generation.parse().unwrap_or(0));
    }
    (name, 0)
}

/// The name of the next generation of `name`'s family, above every
/// generation that exists; the root is shortened to keep within
/// [`MAX_NAME`] (names are ASCII: the engine allows `[a-zA-Z0-9_.-]`).
pub fn next_name<'a>(name: &str, existing: impl IntoIterator<Item = &'a DriverSecret>) -> String {
    let (root, generation) = family(name);
    let highest = existing
        .into_iter()
        .filter_map(|s| {
            let (r, g) = family(&s.name);
            (r == root).then_some(g)
        })
        .fold(generation, u32::max);
    let suffix = format!("-r{}", highest.saturating_add(1));
    let keep = MAX_NAME.saturating_sub(suffix.len()).min(root.len());
    format!("{}{suffix}", root.get(..keep).unwrap_or(root))
}

/// Why a watched secret no longer matches its backend, or `None`.
pub fn stale(secret: &DriverSecret, current: &Version) -> Option<String> {
    if let Some(made_for) = secret.labels.get(ROTATION) {
        return (made_for != &current.id)
            .then(|| format!("made for {made_for}, the backend is at {}", current.id));
    }
    if let Some(pinned) = secret.labels.get(VERSION) {
        // An operator's pin: rotation moves it to the current version.
        return (current.pin.as_deref() != Some(pinned.as_str())).then(|| {
            format!(
                "pinned to version {pinned}, the backend is at {}",
                current.id
            )
        });
    }
    // Not made by us and not pinned: its tasks got whatever was current
    // when they started. If the current version is older than the secret,
    // every one of them got it; otherwise some may hold an older value.
    match (current.created, secret.created) {
        (Some(version), Some(secret)) if version < secret => None,
        (Some(_), Some(_)) => Some(format!(
            "version {} is newer than the secret object",
            current.id
        )),
        _ => Some(format!(
            "not pinned, and the creation times to tell whether its tasks hold version {} are unknown",
            current.id
        )),
    }
}

/// The labels of the secret that replaces `old` for `current`: the same,
/// with the change stamp, and the version pinned where the backend has
/// versions (so that every new task gets exactly that version, whatever
/// the plugin's cache holds).
pub fn successor_labels(old: &DriverSecret, current: &Version) -> BTreeMap<String, String> {
    let mut labels = old.labels.clone();
    labels.insert(ROTATION.to_string(), current.id.clone());
    match &current.pin {
        Some(pin) => labels.insert(VERSION.to_string(), pin.clone()),
        None => labels.remove(VERSION),
    };
    labels
}

/// A secret of `old`'s family already made for `current` (by an earlier
/// run whose roll is under way or failed): reused, never made twice.
pub fn existing_successor<'a>(
    old: &DriverSecret,
    current: &Version,
    secrets: &'a [DriverSecret],
) -> Option<&'a DriverSecret> {
    let (root, _) = family(&old.name);
    secrets.iter().find(|s| {
        s.id != old.id && family(&s.name).0 == root && s.labels.get(ROTATION) == Some(&current.id)
    })
}

/// Secrets the controller may remove: watched (`rotate`), referenced by no
/// service, not needed for a rollback still possible (no service using
/// their family is updating, paused or rolled back), and either made by
/// the controller or replaced by a secret it made. Secrets an operator
/// created and nothing replaced are never removed.
pub fn removable<'a>(
    watched: impl IntoIterator<Item = &'a DriverSecret>,
    all: &[DriverSecret],
    services: &[ServiceUse],
) -> Vec<&'a DriverSecret> {
    watched
        .into_iter()
        .filter(|secret| {
            let (root, generation) = family(&secret.name);
            let in_family: BTreeSet<&str> = all
                .iter()
                .filter(|other| family(&other.name).0 == root)
                .map(|other| other.id.as_str())
                .collect();
            let in_use = services.iter().any(|s| {
                s.secrets.contains(&secret.id)
                    || (s.update != UpdateState::Settled
                        && s.secrets.iter().any(|id| in_family.contains(id.as_str())))
            });
            let ours = secret.labels.contains_key(ROTATION);
            let replaced = all.iter().any(|other| {
                let (r, g) = family(&other.name);
                r == root && g > generation && other.labels.contains_key(ROTATION)
            });
            !in_use && (ours || replaced)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn secret(id: &str, name: &str, labels: &[(&str, &str)]) -> DriverSecret {
        DriverSecret {
            id: id.into(),
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            created: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1000)),
        }
    }

    fn version(id: &str, pin: Option<&str>, created_secs: Option<u64>) -> Version {
        Version {
            id: id.into(),
            pin: pin.map(str::to_string),
            created: created_secs.map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s)),
        }
    }

    fn service(id: &str, secrets: &[&str], update: UpdateState) -> ServiceUse {
        ServiceUse {
            id: id.into(),
            name: format!("svc-{id}"),
            secrets: secrets.iter().map(|s| s.to_string()).collect(),
            update,
            message: None,
        }
    }

    #[test]
    fn names_count_generations_within_the_engine_limit() {
        assert_eq!(family("db"), ("db", 0));
        assert_eq!(family("db-r3"), ("db", 3));
        assert_eq!(family("db-r03"), ("db-r03", 0));
        assert_eq!(family("db-r"), ("db-r", 0));
        assert_eq!(family("-r2"), ("-r2", 0));
        assert_eq!(family("db-r99999999999"), ("db-r99999999999", 0));
        let all = [secret("1", "db", &[]), secret("2", "db-r4", &[])];
        assert_eq!(next_name("db", &all), "db-r5");
        assert_eq!(next_name("db-r4", &all), "db-r5");
        assert_eq!(next_name("other", &all), "other-r1");
        let long = "a".repeat(64);
        let next = next_name(&long, &[]);
        assert_eq!(next.len(), 64);
        assert!(next.ends_with("-r1"), "{next}");
        assert_eq!(family(&next).0.len(), 61);
    }

    #[test]
    fn a_made_secret_is_stale_when_its_stamp_differs() {
        let made = secret("1", "db-r1", &[(ROTATION, "7"), (VERSION, "7")]);
        assert_eq!(stale(&made, &version("7", Some("7"), Some(5000))), None);
        let why = stale(&made, &version("8", Some("8"), Some(5000))).unwrap();
        assert!(why.contains("made for 7") && why.contains("at 8"), "{why}");
    }

    #[test]
    fn a_pinned_secret_is_stale_when_the_pin_is_not_current() {
        let pinned = secret("1", "db", &[(VERSION, "3")]);
        assert_eq!(stale(&pinned, &version("3", Some("3"), Some(1))), None);
        assert!(stale(&pinned, &version("4", Some("4"), Some(1))).is_some());
    }

    #[test]
    fn an_unpinned_secret_is_stale_when_the_version_is_newer_than_it() {
        let plain = secret("1", "db", &[]);
        assert_eq!(stale(&plain, &version("3", Some("3"), Some(999))), None);
        assert!(stale(&plain, &version("3", Some("3"), Some(1001))).is_some());
        // Unknown times: rolled once, to pin a version every replica holds.
        assert!(stale(&plain, &version("3", Some("3"), None)).is_some());
    }

    #[test]
    fn successors_pin_versions_and_stamp_files() {
        let old = secret(
            "1",
            "db",
            &[("vaultbridge.path", "db"), (VERSION, "2"), ("team", "x")],
        );
        let labels = successor_labels(&old, &version("5", Some("5"), None));
        assert_eq!(labels.get(VERSION).map(String::as_str), Some("5"));
        assert_eq!(labels.get(ROTATION).map(String::as_str), Some("5"));
        assert_eq!(labels.get("team").map(String::as_str), Some("x"));
        let file = successor_labels(&old, &version("1.2-3", None, None));
        assert_eq!(file.get(VERSION), None);
        assert_eq!(file.get(ROTATION).map(String::as_str), Some("1.2-3"));
    }

    #[test]
    fn a_successor_made_earlier_is_reused() {
        let old = secret("1", "db", &[]);
        let next = secret("2", "db-r1", &[(ROTATION, "5")]);
        let all = [old.clone(), next.clone()];
        let found = existing_successor(&old, &version("5", Some("5"), None), &all);
        assert_eq!(found, Some(&next));
        assert_eq!(
            existing_successor(&old, &version("6", Some("6"), None), &all),
            None
        );
    }

    #[test]
    fn only_replaced_or_made_secrets_no_one_needs_are_removed() {
        let original = secret("1", "db", &[]);
        let made = secret("2", "db-r1", &[(ROTATION, "5")]);
        let lonely = secret("3", "other", &[]);
        let all = [original.clone(), made.clone(), lonely.clone()];
        let ids = |services: &[ServiceUse]| -> Vec<String> {
            removable(&all, &all, services)
                .into_iter()
                .map(|s| s.id.clone())
                .collect()
        };
        // The roll completed: the original goes, the one in use stays.
        let done = [service("s", &["2"], UpdateState::Settled)];
        assert_eq!(ids(&done), ["1"]);
        // Still updating, or paused: the original may be rolled back to.
        assert!(ids(&[service("s", &["2"], UpdateState::Updating)]).is_empty());
        assert!(ids(&[service("s", &["2"], UpdateState::Failed)]).is_empty());
        // Rolled back: our secret stays as the record of the failure.
        assert!(ids(&[service("s", &["1"], UpdateState::Failed)]).is_empty());
        // A stack redeploy put the original back: ours is garbage.
        assert_eq!(ids(&[service("s", &["1"], UpdateState::Settled)]), ["2"]);
        // Another family's update changes nothing for this one.
        let busy = [
            service("s", &["2"], UpdateState::Settled),
            service("t", &["3"], UpdateState::Updating),
        ];
        assert_eq!(ids(&busy), ["1"]);
    }
}
