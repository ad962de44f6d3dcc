//! The cache through the real binary and socket, with the `file` provider:
//! TTL expiry, per-task bypass, coalescing of a burst.
//! (Backend-counted coalescing and stale-on-error against OpenBao live in
//! the vault suite.)

use std::time::Duration;

use vaultbridge_tests::{Plugin, engine_request, raw_request, wait_until};

fn plugin(extra: &str) -> (Plugin, tempfile::TempDir) {
    let secrets = tempfile::tempdir().unwrap();
    std::fs::write(secrets.path().join("token"), b"version-1").unwrap();
    let config = format!(
        "[providers.local]\ntype = \"file\"\nroot = \"{}\"\n{extra}",
        secrets.path().display()
    );
    (Plugin::start(Some(&config), &[]), secrets)
}

#[test]
fn values_are_cached_until_their_ttl() {
    let (plugin, secrets) = plugin("cache_ttl = \"1s\"\n");
    let get = || plugin.get_secret(&engine_request("token", &[])).value();
    assert_eq!(get(), b"version-1");
    std::fs::write(secrets.path().join("token"), b"version-2").unwrap();
    assert_eq!(get(), b"version-1", "served from the cache within the TTL");
    assert!(
        wait_until(Duration::from_secs(10), || get() == b"version-2"),
        "the new value never appeared after the 1s TTL"
    );
    assert!(plugin.log().contains("cache=\"hit\""), "{}", plugin.log());
}

#[test]
fn per_task_values_bypass_the_cache() {
    let (plugin, secrets) = plugin("cache_ttl = \"1h\"\n");
    assert_eq!(
        plugin.get_secret(&engine_request("token", &[])).value(),
        b"version-1"
    );
    std::fs::write(secrets.path().join("token"), b"version-2").unwrap();
    let per_task = plugin.get_secret(&engine_request("token", &[("vaultbridge.reuse", "false")]));
    assert_eq!(per_task.value(), b"version-2");
    assert_eq!(per_task.json()["DoNotReuse"], true);
    // ...and did not replace the cached, shared value.
    assert_eq!(
        plugin.get_secret(&engine_request("token", &[])).value(),
        b"version-1"
    );
    assert!(
        plugin.log().contains("cache=\"bypass\""),
        "{}",
        plugin.log()
    );
}

#[test]
fn a_zero_ttl_disables_the_cache() {
    let (plugin, secrets) = plugin("cache_ttl = \"0s\"\n");
    assert_eq!(
        plugin.get_secret(&engine_request("token", &[])).value(),
        b"version-1"
    );
    std::fs::write(secrets.path().join("token"), b"version-2").unwrap();
    assert_eq!(
        plugin.get_secret(&engine_request("token", &[])).value(),
        b"version-2"
    );
}

#[test]
fn a_burst_for_one_secret_is_one_lookup() {
    let (plugin, _secrets) = plugin("");
    let body = engine_request("token", &[]).to_string();
    let threads: Vec<_> = (0..300)
        .map(|_| {
            let socket = plugin.socket.clone();
            let body = body.clone();
            std::thread::spawn(move || {
                raw_request(
                    &socket,
                    "POST",
                    "/SecretProvider.GetSecret",
                    body.as_bytes(),
                )
                .unwrap()
                .value()
            })
        })
        .collect();
    for thread in threads {
        assert_eq!(thread.join().unwrap(), b"version-1");
    }
    let log = plugin.log();
    let misses = log.matches("cache=\"miss\"").count();
    let served = log.matches("secret served").count();
    assert_eq!(served, 300);
    assert_eq!(misses, 1, "{log}");
}
