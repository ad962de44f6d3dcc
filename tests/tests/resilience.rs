//! Issue 7's behaviour against a real OpenBao server, through the real
//! binary and socket: a burst is one backend call (counted by OpenBao's audit
//! device, not by us), stale values only while the backend is unavailable,
//! and a hung backend is cut off at the deadline.

use std::time::{Duration, Instant};

use vaultbridge_tests::openbao::{BlackHole, OpenBao};
use vaultbridge_tests::{Plugin, engine_request, raw_request};

/// A plugin whose one provider is OpenBao with the root token.
fn plugin(bao: &OpenBao, extra: &str) -> Plugin {
    let token = bao.file("root-token", b"root\n");
    let config = format!(
        "[providers.bao]\ntype = \"vault\"\naddress = \"{}\"\nauth = {{ method = \"token\", token_file = \"{}\" }}\n{extra}",
        bao.addr,
        token.display()
    );
    Plugin::start(Some(&config), &[])
}

fn ask(plugin: &Plugin, path: &str) -> vaultbridge_tests::Answer {
    plugin.get_secret(&engine_request(
        "s",
        &[("vaultbridge.path", path), ("vaultbridge.field", "pw")],
    ))
}

#[test]
fn a_burst_of_one_thousand_is_one_backend_call() {
    let bao = OpenBao::start();
    bao.bao(&["kv", "put", "secret/burst", "pw=one-call-only"]);
    let plugin = plugin(&bao, "");
    let body = engine_request(
        "s",
        &[("vaultbridge.path", "burst"), ("vaultbridge.field", "pw")],
    )
    .to_string();
    // Connect all first, then fire at once.
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(1000));
    let threads: Vec<_> = (0..1000)
        .map(|_| {
            let socket = plugin.socket.clone();
            let body = body.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                raw_request(
                    &socket,
                    "POST",
                    "/SecretProvider.GetSecret",
                    body.as_bytes(),
                )
                .expect("request")
                .value()
            })
        })
        .collect();
    for thread in threads {
        assert_eq!(thread.join().unwrap(), b"one-call-only");
    }
    assert_eq!(bao.audit_reads("secret/data/burst"), 1, "backend reads");
}

#[test]
fn stale_values_are_served_only_while_the_backend_is_unavailable() {
    let mut bao = OpenBao::start();
    bao.bao(&["kv", "put", "secret/app", "pw=last-good"]);
    let with_stale = plugin(
        &bao,
        "cache_ttl = \"1s\"\nmax_stale = \"1h\"\ndeadline = \"2s\"\n",
    );
    let without = plugin(&bao, "cache_ttl = \"1s\"\ndeadline = \"2s\"\n");
    assert_eq!(ask(&with_stale, "app").value(), b"last-good");
    assert_eq!(ask(&without, "app").value(), b"last-good");

    // Deleted while up: not-found is answered as such, never with the old value.
    bao.bao(&["kv", "put", "secret/gone", "pw=soon-deleted"]);
    assert_eq!(ask(&with_stale, "gone").value(), b"soon-deleted");
    bao.bao(&["kv", "metadata", "delete", "secret/gone"]);
    std::thread::sleep(Duration::from_millis(1100)); // past the 1 s TTL
    let answer = ask(&with_stale, "gone");
    assert!(answer.err().contains("not found"), "{}", answer.err());

    bao.kill();
    let answer = ask(&with_stale, "app");
    assert_eq!(answer.value(), b"last-good");
    assert!(
        with_stale.log().contains("serving a stale value"),
        "{}",
        with_stale.log()
    );
    assert!(with_stale.log().contains("cache=\"stale\""));

    // Off by default: the same outage is an error.
    let answer = ask(&without, "app");
    assert!(
        answer.err().contains("backend unavailable"),
        "{}",
        answer.err()
    );
    // And a secret never fetched has nothing stale to serve.
    let answer = ask(&with_stale, "never-seen");
    assert!(
        answer.err().contains("backend unavailable"),
        "{}",
        answer.err()
    );
    // Neither did the deleted secret come back.
    let answer = ask(&with_stale, "gone");
    assert!(
        answer.err().contains("backend unavailable"),
        "{}",
        answer.err()
    );
}

#[test]
fn a_hung_backend_is_cut_off_at_the_deadline() {
    let hole = BlackHole::start();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "root").unwrap();
    // The client's own timeout is longer than the deadline: the deadline rules.
    let config = format!(
        "[providers.hung]\ntype = \"vault\"\naddress = \"http://127.0.0.1:{}\"\ntimeout = \"30s\"\ndeadline = \"1s\"\nauth = {{ method = \"token\", token_file = \"{}\" }}\n",
        hole.port,
        token.display()
    );
    let plugin = Plugin::start(Some(&config), &[]);
    let asked = Instant::now();
    let answer = ask(&plugin, "anything");
    let took = asked.elapsed();
    assert!(answer.err().contains("deadline"), "{}", answer.err());
    // Generous bound: 1 s deadline, 30 s without it.
    assert!(took < Duration::from_secs(10), "{took:?}");
}
