//! The real binary on a real Unix socket, spoken to in raw HTTP/1.1 the way
//! dockerd does, with the `file` provider (no server needed).

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use vaultbridge_tests::{Plugin, assert_log_has_no_values, engine_request, wait_until};

const PASSWORD: &[u8] = b"s0cket-test-password-7f3a";
const API_KEY: &[u8] = b"s0cket-test-api-key-19bd";
const OUTSIDE: &[u8] = b"outside-the-root-value-c41e";

/// A secrets folder with a few files, and a plugin serving it.
fn plugin_with_secrets() -> (Plugin, tempfile::TempDir) {
    let secrets = tempfile::tempdir().unwrap();
    let root = &secrets.path().join("root");
    std::fs::create_dir_all(root.join("apps/billing")).unwrap();
    std::fs::write(root.join("db_password"), PASSWORD).unwrap();
    std::fs::write(
        root.join("apps/billing/config.json"),
        format!(
            r#"{{"api_key":"{}","port":8443,"tls":{{"on":true}},"cert_b64":"AAECA/8="}}"#,
            String::from_utf8_lossy(API_KEY)
        ),
    )
    .unwrap();
    std::fs::write(root.join("blob.b64"), "AAECA/8=\n").unwrap();
    std::fs::write(root.join("empty"), b"").unwrap();
    std::fs::write(root.join("max"), vec![b'm'; 511_999]).unwrap();
    std::fs::write(root.join("too_big"), vec![b'x'; 512_000]).unwrap();
    std::fs::write(secrets.path().join("outside-secret"), OUTSIDE).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", root.join("escape")).unwrap();
    let config = format!(
        "[providers.local]\ntype = \"file\"\nroot = \"{}\"\n",
        root.display()
    );
    (Plugin::start(Some(&config), &[]), secrets)
}

#[test]
fn activate_answers_with_an_empty_body() {
    let (plugin, _secrets) = plugin_with_secrets();
    let answer = plugin.request("POST", "/Plugin.Activate", b"");
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.json(),
        serde_json::json!({"Implements": ["secretprovider"]})
    );
    assert!(
        answer
            .headers
            .contains("application/vnd.docker.plugins.v1.1+json"),
        "{}",
        answer.headers
    );
}

/// (labels, the bytes expected)
type ValueCase<'a> = (&'a [(&'a str, &'a str)], &'a [u8]);

#[test]
fn serves_a_full_engine_request_and_every_label() {
    let (plugin, _secrets) = plugin_with_secrets();

    // The full engine shape, plus a field the engine may add one day.
    let mut request = engine_request("st_db_password", &[("com.docker.stack.namespace", "st")]);
    request["FutureField"] = serde_json::json!({"nested": [1, 2, 3]});
    let answer = plugin.get_secret(&request);
    assert_eq!(answer.status, 200);
    assert_eq!(answer.value(), PASSWORD);
    assert_eq!(answer.json()["DoNotReuse"], false);

    let cases: &[ValueCase] = &[
        (&[("vaultbridge.path", "db_password")], PASSWORD),
        (
            &[
                ("vaultbridge.provider", "local"),
                ("vaultbridge.path", "apps/billing/config.json"),
                ("vaultbridge.field", "api_key"),
            ],
            API_KEY,
        ),
        (
            &[
                ("vaultbridge.path", "apps/billing/config.json"),
                ("vaultbridge.field", "port"),
            ],
            b"8443",
        ),
        (
            &[
                ("vaultbridge.path", "apps/billing/config.json"),
                ("vaultbridge.field", "tls"),
            ],
            br#"{"on":true}"#,
        ),
        (
            &[
                ("vaultbridge.path", "apps/billing/config.json"),
                ("vaultbridge.field", "cert_b64"),
                ("vaultbridge.decode", "base64"),
            ],
            &[0, 1, 2, 3, 255],
        ),
        (
            &[
                ("vaultbridge.path", "blob.b64"),
                ("vaultbridge.decode", "base64"),
            ],
            &[0, 1, 2, 3, 255],
        ),
    ];
    for (labels, expected) in cases {
        let answer = plugin.get_secret(&engine_request("any", labels));
        assert_eq!(answer.value(), *expected, "labels {labels:?}");
    }

    let answer = plugin.get_secret(&engine_request(
        "any",
        &[
            ("vaultbridge.path", "db_password"),
            ("vaultbridge.reuse", "false"),
        ],
    ));
    assert_eq!(answer.value(), PASSWORD);
    assert_eq!(answer.json()["DoNotReuse"], true);

    let log = plugin.log();
    assert_log_has_no_values(&log, &[PASSWORD, API_KEY]);
    assert!(log.contains("secret served"), "{log}");
}

/// (labels, secret name, words the Err must contain)
type ErrCase<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a [&'a str]);

#[test]
fn every_bad_input_gets_a_clear_err() {
    let (plugin, _secrets) = plugin_with_secrets();
    let cases: &[ErrCase] = &[
        (
            &[],
            "missing",
            &["secret 'missing'", "not found", "no file 'missing'"],
        ),
        (
            &[("vaultbridge.path", "../outside-secret")],
            "x",
            &["without '..'"],
        ),
        (&[("vaultbridge.path", "/etc/hostname")], "x", &["relative"]),
        (
            &[("vaultbridge.path", "escape")],
            "x",
            &["symlink", "outside the root"],
        ),
        (
            &[("vaultbridge.path", "apps")],
            "x",
            &["not a regular file"],
        ),
        (
            &[("vaultbridge.path", "empty")],
            "x",
            &["empty (0 bytes)", "1 to 511999"],
        ),
        (
            &[("vaultbridge.path", "too_big")],
            "x",
            &["512000 bytes", "at most 511999"],
        ),
        (
            &[("vaultbridge.pth", "x")],
            "x",
            &["unknown label 'vaultbridge.pth'", "vaultbridge.path"],
        ),
        (
            &[("vaultbridge.provider", "vault")],
            "x",
            &["provider 'vault' is not configured", "configured: local"],
        ),
        (
            &[("vaultbridge.version", "2")],
            "db_password",
            &["keeps no versions", "vaultbridge.version"],
        ),
        (
            &[("vaultbridge.decode", "hex")],
            "db_password",
            &["vaultbridge.decode=hex", "'base64'"],
        ),
        (
            &[("vaultbridge.decode", "base64")],
            "db_password",
            &["not valid base64"],
        ),
        (
            &[("vaultbridge.field", "nope")],
            "apps/billing/config.json",
            // How many keys, never which: key names can be sensitive.
            &["no key 'nope'", "4 key(s)"],
        ),
        (
            &[("vaultbridge.field", "x")],
            "db_password",
            &["needs a JSON object"],
        ),
        (
            &[("vaultbridge.reuse", "maybe")],
            "db_password",
            &["'true' or 'false'"],
        ),
    ];
    for (labels, name, words) in cases {
        let answer = plugin.get_secret(&engine_request(name, labels));
        assert_eq!(answer.status, 200, "{labels:?}");
        let err = answer.err();
        for word in *words {
            assert!(
                err.contains(word),
                "labels {labels:?}: Err {err:?} lacks {word:?}"
            );
        }
        assert!(answer.json().get("Value").is_none(), "{labels:?}");
        assert!(
            !err.contains("api_key") && !err.contains("cert_b64"),
            "{err}"
        );
    }

    // The largest value Docker accepts is served.
    let answer = plugin.get_secret(&engine_request("max", &[]));
    assert_eq!(answer.value().len(), 511_999);

    let log = plugin.log();
    assert!(
        log.contains("outcome=\"not_found\"") || log.contains("outcome=not_found"),
        "{log}"
    );
    assert_log_has_no_values(&log, &[PASSWORD, API_KEY, OUTSIDE]);
}

#[test]
fn malformed_requests_and_wrong_routes_get_json_errors() {
    let (plugin, _secrets) = plugin_with_secrets();
    let answer = plugin.request("POST", "/SecretProvider.GetSecret", b"{\"SecretName\": ");
    assert_eq!(answer.status, 400);
    assert!(
        answer.err().contains("malformed GetSecret request"),
        "{}",
        answer.err()
    );

    let answer = plugin.request("POST", "/SecretProvider.GetSecret", b"[1,2]");
    assert_eq!(answer.status, 400);

    let answer = plugin.request("POST", "/VolumeDriver.Mount", b"{}");
    assert_eq!(answer.status, 404);
    assert!(answer.err().contains("unknown endpoint"));

    let answer = plugin.request("GET", "/SecretProvider.GetSecret", b"");
    assert_eq!(answer.status, 405);
    assert!(answer.err().contains("POST"));

    let huge = vec![b' '; 2 * 1024 * 1024];
    let answer = plugin.request("POST", "/SecretProvider.GetSecret", &huge);
    assert_eq!(answer.status, 413);
    assert!(answer.err().contains("larger than"), "{}", answer.err());

    // A connection that opens and closes without a request (dockerd does
    // this to probe the socket) is ignored, and the server keeps serving.
    drop(UnixStream::connect(&plugin.socket).unwrap());
    let answer = plugin.request("POST", "/Plugin.Activate", b"");
    assert_eq!(answer.status, 200);
}

#[test]
fn serves_200_concurrent_requests() {
    let (plugin, _secrets) = plugin_with_secrets();
    let socket = plugin.socket.clone();
    let threads: Vec<_> = (0..200)
        .map(|i| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let path = if i % 2 == 0 { "db_password" } else { "max" };
                let body = engine_request("x", &[("vaultbridge.path", path)]).to_string();
                let answer = vaultbridge_tests::raw_request(
                    &socket,
                    "POST",
                    "/SecretProvider.GetSecret",
                    body.as_bytes(),
                )
                .expect("request");
                (i, answer.value().len())
            })
        })
        .collect();
    for thread in threads {
        let (i, len) = thread.join().unwrap();
        assert_eq!(len, if i % 2 == 0 { PASSWORD.len() } else { 511_999 });
    }
}

#[test]
fn sigterm_finishes_in_flight_requests_then_removes_the_socket() {
    let (mut plugin, _secrets) = plugin_with_secrets();
    // A request whose body is still arriving is in flight.
    let body = engine_request("db_password", &[]).to_string();
    let (first, rest) = body.as_bytes().split_at(body.len() / 2);
    let mut stream = UnixStream::connect(&plugin.socket).unwrap();
    write!(
        stream,
        "POST /SecretProvider.GetSecret HTTP/1.1\r\nHost: plugin.moby.localhost\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    stream.write_all(first).unwrap();
    std::thread::sleep(Duration::from_millis(100));

    // SIGTERM while the request is in flight, then complete the request.
    plugin.signal_term();
    assert!(
        wait_until(Duration::from_secs(10), || plugin
            .log()
            .contains("shutting down")),
        "{}",
        plugin.log()
    );
    stream.write_all(rest).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let answer = vaultbridge_tests::read_answer(&mut stream).unwrap();
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.value(), PASSWORD);

    let status = plugin.wait_exit(Duration::from_secs(10)).expect("exited");
    assert!(status.success(), "{status:?}\n{}", plugin.log());
    assert!(!plugin.socket.exists(), "socket file left behind");
    // The request was answered after the signal, not before.
    let log = plugin.log();
    let signalled = log.find("shutting down").expect("shutdown logged");
    let served = log.find("secret served").expect("request logged");
    assert!(signalled < served, "{log}");
}

#[test]
fn a_stuck_request_does_not_hold_shutdown_past_the_grace_period() {
    let secrets = tempfile::tempdir().unwrap();
    let config = format!(
        "[providers.local]\ntype = \"file\"\nroot = \"{}\"\n",
        secrets.path().display()
    );
    let mut plugin = Plugin::spawn(Some(&config), &[], &["--grace-period", "1"]);
    assert!(wait_until(Duration::from_secs(10), || plugin
        .try_request("POST", "/Plugin.Activate", b"")
        .is_ok()));
    let mut stream = UnixStream::connect(&plugin.socket).unwrap();
    // Headers promise a body that never comes.
    write!(
        stream,
        "POST /SecretProvider.GetSecret HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{"
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let asked = Instant::now();
    let status = plugin.terminate(Duration::from_secs(15)).expect("exited");
    assert!(status.success(), "{status:?}");
    // Generous upper bound: the grace period is 1 s; without the bound it would wait forever.
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "{:?}",
        asked.elapsed()
    );
    assert!(
        plugin.log().contains("did not finish in time"),
        "{}",
        plugin.log()
    );
}

#[test]
fn socket_is_private_replaces_stale_files_and_refuses_a_live_server() {
    let (plugin, secrets) = plugin_with_secrets();
    let mode = std::fs::metadata(&plugin.socket)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // A second server on the same live socket refuses to start.
    let config_path = secrets.path().join("config.toml");
    std::fs::write(
        &config_path,
        format!(
            "[providers.local]\ntype = \"file\"\nroot = \"{}\"\n",
            secrets.path().join("root").display()
        ),
    )
    .unwrap();
    let rival = std::process::Command::new(vaultbridge_tests::binary())
        .arg("serve")
        .arg("--socket")
        .arg(&plugin.socket)
        .arg("--config")
        .arg(&config_path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&rival.stderr);
    assert!(!rival.status.success());
    assert!(err.contains("already answering"), "{err}");
    // ...and the first is unharmed.
    assert_eq!(plugin.request("POST", "/Plugin.Activate", b"").status, 200);

    // A stale socket (no server behind it) is replaced.
    let stale_dir = tempfile::tempdir().unwrap();
    let stale = stale_dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let mut child = std::process::Command::new(vaultbridge_tests::binary())
        .args(["serve", "--socket"])
        .arg(&stale)
        .arg("--config")
        .arg(&config_path)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let answered = wait_until(Duration::from_secs(10), || {
        vaultbridge_tests::raw_request(&stale, "POST", "/Plugin.Activate", b"").is_ok()
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(answered, "did not replace the stale socket");
}

#[test]
fn answers_well_before_the_engine_dials() {
    let secrets = tempfile::tempdir().unwrap();
    let plugin = Plugin::spawn(
        None,
        &[(
            "VAULTBRIDGE_FILE_DIR",
            &secrets.path().display().to_string(),
        )],
        &[],
    );
    assert!(wait_until(Duration::from_secs(10), || plugin
        .try_request("POST", "/Plugin.Activate", b"")
        .is_ok()));
    // dockerd dials 500 ms after start; the target is 100 ms (measured in the
    // benchmark). This bound only guards against a regression that would
    // make the engine give up, with room for a loaded CI machine.
    let elapsed = plugin.started.elapsed();
    assert!(elapsed < Duration::from_millis(500), "{elapsed:?}");
    assert!(
        plugin.log().contains("config=environment variables"),
        "{}",
        plugin.log()
    );
}

#[test]
fn bad_configuration_stops_start_up_with_the_key_named() {
    let mut plugin = Plugin::spawn(
        Some("[providers.local]\ntype = \"file\"\nroot = \"/nonexistent/vaultbridge\"\n"),
        &[],
        &[],
    );
    let status = plugin.wait_exit(Duration::from_secs(10)).expect("exited");
    assert!(!status.success());
    let log = plugin.log();
    assert!(log.contains("providers.local.root"), "{log}");
    assert!(
        !Path::new(&plugin.socket).exists(),
        "socket opened despite bad config"
    );

    let mut plugin = Plugin::spawn(
        Some("[providers.local]\ntype = \"file\"\nroot = \"/\"\nextra = 1\n"),
        &[],
        &[],
    );
    assert!(!plugin.wait_exit(Duration::from_secs(10)).unwrap().success());
    assert!(
        plugin.log().contains("unknown field `extra`"),
        "{}",
        plugin.log()
    );
}

#[test]
fn json_logs_are_one_object_per_line_without_values() {
    let secrets = tempfile::tempdir().unwrap();
    std::fs::write(secrets.path().join("token"), PASSWORD).unwrap();
    let plugin = Plugin::start(
        None,
        &[
            (
                "VAULTBRIDGE_FILE_DIR",
                &secrets.path().display().to_string(),
            ),
            ("VAULTBRIDGE_LOG_FORMAT", "json"),
        ],
    );
    assert_eq!(
        plugin.get_secret(&engine_request("token", &[])).value(),
        PASSWORD
    );
    plugin.get_secret(&engine_request("absent", &[]));
    let log = plugin.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let served = lines
        .iter()
        .find(|l| l["message"] == "secret served")
        .expect("served line");
    assert_eq!(served["secret"], "token");
    assert_eq!(served["provider"], "file");
    assert_eq!(served["service"], "st_api");
    assert_eq!(served["outcome"], "ok");
    let failed = lines
        .iter()
        .find(|l| l["message"] == "secret lookup failed")
        .expect("failure line");
    assert_eq!(failed["outcome"], "not_found");
    assert_log_has_no_values(&log, &[PASSWORD]);
}

#[test]
fn cli_get_and_check() {
    let secrets = tempfile::tempdir().unwrap();
    std::fs::write(secrets.path().join("cfg"), br#"{"k":"v1"}"#).unwrap();
    let dir = secrets.path().display().to_string();
    let run = |args: &[&str]| {
        std::process::Command::new(vaultbridge_tests::binary())
            .args(args)
            .env_clear()
            .env("VAULTBRIDGE_FILE_DIR", &dir)
            .output()
            .unwrap()
    };
    let out = run(&["get", "--label", "vaultbridge.field=k", "cfg"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, b"v1");
    let out = run(&["get", "nope"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));

    let out = run(&["check"]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok    file (file)"));
    let out = std::process::Command::new(vaultbridge_tests::binary())
        .args(["check", "--config", "/nonexistent.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// A bare install (no config file, no variables, no default secrets folder)
/// starts, says once what to set, and answers every request with that; `check`
/// says the same and fails.
#[test]
fn with_nothing_configured_it_serves_and_says_what_to_set() {
    // What the plugin looks for by default; on a host that has them this
    // test cannot show the bare case, and says so instead of passing.
    for path in ["/etc/vaultbridge/config.toml", "/etc/vaultbridge/secrets"] {
        assert!(
            !std::path::Path::new(path).exists(),
            "{path} exists on this host: the bare-install test needs it absent"
        );
    }
    let plugin = Plugin::start(None, &[]);
    let told = |text: &str| {
        [
            "config.source=",
            "VAULT_ADDR",
            "VAULTBRIDGE_FILE_DIR",
            "config.toml",
        ]
        .iter()
        .all(|needle| text.contains(needle))
    };
    for name in ["db_password", "other"] {
        let answer = plugin.get_secret(&engine_request(name, &[]));
        let err = answer.err();
        assert!(err.contains("not configured") && told(&err), "{err}");
    }
    let log = plugin.log();
    let warned: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("WARN") && line.contains("not configured"))
        .filter(|line| !line.contains("secret lookup failed"))
        .collect();
    assert_eq!(warned.len(), 1, "{log}");
    assert!(told(warned[0]), "{log}");
    assert!(log.contains("outcome=\"not_configured\""), "{log}");

    let out = std::process::Command::new(vaultbridge_tests::binary())
        .arg("check")
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("not configured") && told(&said), "{said}");
}

/// Request fields and labels are the secret creator's text: they cannot
/// forge a log line, make an answer huge, or change a stored value.
#[test]
fn hostile_request_text_is_escaped_bounded_and_values_are_exact() {
    let (plugin, secrets) = plugin_with_secrets();
    std::fs::write(
        secrets.path().join("root/nums.json"),
        r#"{"n": 123456789012345678901234567890, "f": 1.10, "o": {"a": [1.0]}}"#,
    )
    .unwrap();
    let field = |name: &str| {
        plugin
            .get_secret(&engine_request(
                "x",
                &[
                    ("vaultbridge.path", "nums.json"),
                    ("vaultbridge.field", name),
                ],
            ))
            .value()
    };
    assert_eq!(field("n"), b"123456789012345678901234567890");
    assert_eq!(field("f"), b"1.10");
    assert_eq!(field("o"), br#"{"a": [1.0]}"#);

    let forged = "db\nFORGED vaultbridge: secret served outcome=ok\x1b[2K\u{2028}";
    let mut request = engine_request(forged, &[]);
    request["ServiceName"] = forged.into();
    request["TaskName"] = forged.into();
    let err = plugin.get_secret(&request).err();
    assert!(err.contains("refused") && !err.contains('\n'), "{err}");
    let answer = plugin.get_secret(&engine_request(
        "x",
        &[("vaultbridge.path", forged), ("vaultbridge.decode", forged)],
    ));
    assert!(
        !answer.err().chars().any(char::is_control),
        "{}",
        answer.err()
    );

    let huge = "n".repeat(900_000);
    let answer = plugin.get_secret(&engine_request(&huge, &[("vaultbridge.version", &huge)]));
    assert!(answer.body.len() < 5_000, "{} bytes", answer.body.len());

    let log = plugin.log();
    assert!(
        !log.lines().any(|line| line.starts_with("FORGED")),
        "a forged line: {log}"
    );
    assert!(
        !log.contains('\u{1b}') && !log.contains('\u{2028}'),
        "{log}"
    );
    assert!(
        log.lines().all(|line| line.len() < 10_000),
        "a huge log line"
    );
}
// --- Hostile connections -------------------------------------------------
//
// These mirror the server's constants (plugin/src/server.rs): the suite
// drives the binary, not the crate.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_CONNECTIONS: usize = 256;

/// Read (and discard) until the server closes the connection: how long that
/// took, or `None` if it is still open after `limit`.
fn time_until_closed(stream: &mut UnixStream, limit: Duration) -> Option<Duration> {
    use std::io::{ErrorKind, Read};
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.checked_sub(start.elapsed())?;
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => {}
            Err(err)
                if matches!(
                    err.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            // Reset by the server: closed too.
            Err(_) => return Some(start.elapsed()),
        }
    }
}

/// One answer on a connection that stays open (keep-alive): status and body.
fn read_one_answer(stream: &mut UnixStream) -> (u16, Vec<u8>) {
    use std::io::Read;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).expect("read answer head");
        assert_eq!(
            n,
            1,
            "closed mid-answer: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .map(|value| value.trim().parse().unwrap())
        .expect("content-length");
    let mut body = vec![0; length];
    stream.read_exact(&mut body).expect("read answer body");
    (status, body)
}

const KEEP_ALIVE_ACTIVATE: &[u8] =
    b"POST /Plugin.Activate HTTP/1.1\r\nHost: plugin.moby.localhost\r\nContent-Length: 0\r\n\r\n";

fn file_config(root: &Path) -> String {
    format!(
        "[providers.local]\ntype = \"file\"\nroot = \"{}\"\n",
        root.display()
    )
}

fn wait_answering(plugin: &Plugin) {
    let answered = wait_until(Duration::from_secs(10), || {
        plugin.try_request("POST", "/Plugin.Activate", b"").is_ok()
    });
    assert!(answered, "plugin did not answer; log:\n{}", plugin.log());
}

#[test]
fn a_header_sent_one_byte_per_second_is_cut_off_by_the_header_timeout() {
    let (plugin, _secrets) = plugin_with_secrets();
    let mut stream = UnixStream::connect(&plugin.socket).unwrap();
    let opened = Instant::now();
    let mut closed = None;
    // Enough bytes to outlast the timeout by a few seconds, not the whole head.
    for byte in KEEP_ALIVE_ACTIVATE.iter().take(10) {
        if stream.write_all(&[*byte]).is_err() {
            closed = Some(opened.elapsed());
            break;
        }
        // Waiting up to a second for the server to hang up is the pause.
        if time_until_closed(&mut stream, Duration::from_secs(1)).is_some() {
            closed = Some(opened.elapsed());
            break;
        }
    }
    let closed = closed.expect("a one-byte-per-second header was never cut off");
    assert!(
        closed >= HEADER_READ_TIMEOUT - Duration::from_secs(1)
            && closed < HEADER_READ_TIMEOUT + Duration::from_secs(3),
        "closed after {closed:?}"
    );
    assert_eq!(plugin.request("POST", "/Plugin.Activate", b"").status, 200);
}

#[test]
fn a_stalled_body_is_answered_408_and_closed_within_the_body_timeout() {
    let (plugin, _secrets) = plugin_with_secrets();
    let mut stream = UnixStream::connect(&plugin.socket).unwrap();
    write!(
        stream,
        "POST /SecretProvider.GetSecret HTTP/1.1\r\nHost: plugin.moby.localhost\r\nContent-Length: 1000\r\n\r\n{{\"SecretNa"
    )
    .unwrap();
    let sent = Instant::now();
    stream
        .set_read_timeout(Some(BODY_TIMEOUT + Duration::from_secs(5)))
        .unwrap();
    // Read to the end: the answer, then the server closes.
    let answer = vaultbridge_tests::read_answer(&mut stream).expect("an answer, then EOF");
    let took = sent.elapsed();
    assert_eq!(answer.status, 408, "{answer:?}");
    assert!(
        answer.err().contains("did not arrive within 10 s"),
        "{}",
        answer.err()
    );
    assert!(
        answer
            .headers
            .to_ascii_lowercase()
            .contains("connection: close"),
        "{}",
        answer.headers
    );
    assert!(
        took >= BODY_TIMEOUT - Duration::from_secs(1)
            && took < BODY_TIMEOUT + Duration::from_secs(3),
        "answered after {took:?}"
    );
    assert!(
        plugin.log().contains("request body did not arrive in time"),
        "{}",
        plugin.log()
    );
    assert_eq!(plugin.request("POST", "/Plugin.Activate", b"").status, 200);
}

/// A body that arrives in pieces (chunked, or a Content-Length body written
/// in parts) is read whole, as one sent at once is, on one connection.
#[test]
fn a_body_sent_in_pieces_is_read_whole() {
    use base64::Engine as _;
    let (plugin, _secrets) = plugin_with_secrets();
    let body = engine_request("db_password", &[]).to_string().into_bytes();
    let want = base64::engine::general_purpose::STANDARD.encode(PASSWORD);
    let mut stream = UnixStream::connect(&plugin.socket).unwrap();
    let head = "POST /SecretProvider.GetSecret HTTP/1.1\r\nHost: plugin.moby.localhost\r\n";
    let served = |stream: &mut UnixStream, pieces: usize| {
        let (status, answer) = read_one_answer(stream);
        let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap();
        assert_eq!(
            (status, &answer["Value"]),
            (200, &serde_json::json!(want)),
            "{pieces}: {answer}"
        );
    };
    for pieces in [1, 3, 40] {
        let size = body.len().div_ceil(pieces);
        // Chunked: each piece a chunk, written apart.
        write!(stream, "{head}Transfer-Encoding: chunked\r\n\r\n").unwrap();
        for piece in body.chunks(size) {
            write!(stream, "{:x}\r\n", piece.len()).unwrap();
            stream.write_all(piece).unwrap();
            stream.write_all(b"\r\n").unwrap();
            stream.flush().unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
        stream.write_all(b"0\r\n\r\n").unwrap();
        served(&mut stream, pieces);
        // Content-Length, the body written in parts.
        write!(stream, "{head}Content-Length: {}\r\n\r\n", body.len()).unwrap();
        for piece in body.chunks(size) {
            stream.write_all(piece).unwrap();
            stream.flush().unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
        served(&mut stream, pieces);
    }
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let (plugin, _secrets) = plugin_with_secrets();
    let mut stream = UnixStream::connect(&plugin.socket).unwrap();
    // Two requests on one connection: keep-alive works...
    for _ in 0..2 {
        stream.write_all(KEEP_ALIVE_ACTIVATE).unwrap();
        let (status, body) = read_one_answer(&mut stream);
        assert_eq!(status, 200);
        assert_eq!(body, br#"{"Implements":["secretprovider"]}"#);
    }
    // ...and an idle connection does not stay open for ever.
    let idle = time_until_closed(&mut stream, HEADER_READ_TIMEOUT + Duration::from_secs(5))
        .expect("idle keep-alive connection still open");
    assert!(
        idle >= HEADER_READ_TIMEOUT - Duration::from_secs(1)
            && idle < HEADER_READ_TIMEOUT + Duration::from_secs(3),
        "closed after {idle:?} idle"
    );
}

#[test]
fn sigterm_closes_connections_without_a_complete_request_at_once() {
    // Default grace period (10 s): nothing below may wait for it.
    let (mut plugin, _secrets) = plugin_with_secrets();
    let mut half = UnixStream::connect(&plugin.socket).unwrap();
    half.write_all(b"POST /SecretProvider.GetSecret HTTP/1.1\r\nHost: x\r\nContent-Le")
        .unwrap();
    let _silent = UnixStream::connect(&plugin.socket).unwrap();
    // Answered, then idle: also proves the two above were accepted (in order).
    let mut kept = UnixStream::connect(&plugin.socket).unwrap();
    kept.write_all(KEEP_ALIVE_ACTIVATE).unwrap();
    assert_eq!(read_one_answer(&mut kept).0, 200);
    // The second request's headers, half sent.
    kept.write_all(b"POST /Plugin.Activate HTTP/1.1\r\nHo")
        .unwrap();
    std::thread::sleep(Duration::from_millis(100)); // let the bytes reach the plugin

    let asked = Instant::now();
    let status = plugin.terminate(Duration::from_secs(15)).expect("exited");
    let took = asked.elapsed();
    assert!(status.success(), "{status:?}\n{}", plugin.log());
    // Without closing them, it would wait for the header timeout (5 s) or
    // the grace period (10 s).
    assert!(took < Duration::from_secs(3), "exit took {took:?}");
    let log = plugin.log();
    assert!(!log.contains("did not finish in time"), "{log}");
    assert!(!plugin.socket.exists(), "socket file left behind");
}

/// The sockets a process holds, from /proc.
fn open_sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|entry| std::fs::read_link(entry.path()).ok())
                .filter(|target| target.to_string_lossy().starts_with("socket:"))
                .count()
        })
        .unwrap_or(0)
}

/// The sockets a process holds once the count stops changing.
fn settled_sockets(pid: u32) -> usize {
    let mut last = open_sockets(pid);
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        let now = open_sockets(pid);
        if now == last {
            return now;
        }
        last = now;
    }
    panic!("the plugin's socket count never settled (last {last})");
}

#[test]
fn connections_beyond_the_cap_wait_and_docker_still_gets_through() {
    let (mut plugin, _secrets) = plugin_with_secrets();
    let pid = plugin.pid().unwrap();
    // Before any connection: its listener and tokio's signal sockets. The
    // readiness probe's connection may still be open on the plugin's side
    // (it closes once the plugin reads the EOF), so wait for a settled count:
    // a baseline one too high makes the cap unreachable.
    let baseline = settled_sockets(pid);
    let idle: Vec<UnixStream> = (0..MAX_CONNECTIONS + 50)
        .map(|_| UnixStream::connect(&plugin.socket).expect("connect"))
        .collect();
    // The plugin takes up to the cap, then leaves the rest queued.
    let at_cap = wait_until(Duration::from_secs(5), || {
        open_sockets(pid) >= baseline + MAX_CONNECTIONS
    });
    assert!(
        at_cap,
        "only {} sockets open (baseline {baseline})",
        open_sockets(pid)
    );
    let over = wait_until(Duration::from_millis(500), || {
        open_sockets(pid) > baseline + MAX_CONNECTIONS
    });
    assert!(
        !over,
        "{} sockets open (baseline {baseline}): the cap is not enforced",
        open_sockets(pid)
    );

    // Docker's request waits for a slot: idle ones time out and free theirs.
    let asked = Instant::now();
    let answer = plugin.get_secret(&engine_request("db_password", &[]));
    assert_eq!(answer.value(), PASSWORD);
    let took = asked.elapsed();
    assert!(
        took < HEADER_READ_TIMEOUT + Duration::from_secs(5),
        "answered after {took:?}"
    );
    assert!(plugin.is_running());
    // Connections closed by the client or timed out say nothing at info level.
    let log = plugin.log();
    assert!(!log.contains("WARN") && !log.contains("ERROR"), "{log}");
    drop(idle);
}

#[test]
fn accept_errors_are_logged_once_a_second_and_the_plugin_recovers() {
    let secrets = tempfile::tempdir().unwrap();
    std::fs::write(secrets.path().join("db_password"), PASSWORD).unwrap();
    // Room for the runtime and a few connections, then accept fails (EMFILE).
    let mut plugin =
        Plugin::spawn_in_shell("ulimit -n 40", Some(&file_config(secrets.path())), &[], &[]);
    wait_answering(&plugin);
    let open: Vec<UnixStream> = (0..60)
        .map(|_| UnixStream::connect(&plugin.socket).expect("connect"))
        .collect();
    let lines = |log: &str| -> Vec<String> {
        log.lines()
            .filter(|line| line.contains("cannot accept a connection"))
            .map(str::to_string)
            .collect()
    };
    let failing = wait_until(Duration::from_secs(5), || !lines(&plugin.log()).is_empty());
    assert!(failing, "no accept error logged:\n{}", plugin.log());
    let first_seen = Instant::now();
    // A later line counts the failures it did not log (one every 100 ms).
    let counted = |line: &String| {
        line.split("suppressed=")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|n| n > 0)
    };
    let rate_limited = wait_until(Duration::from_secs(5), || {
        lines(&plugin.log()).iter().any(counted)
    });
    let logged = lines(&plugin.log());
    assert!(rate_limited, "{logged:#?}");
    let allowed = first_seen.elapsed().as_secs() as usize + 2;
    assert!(
        logged.len() <= allowed,
        "{} lines: {logged:#?}",
        logged.len()
    );
    assert!(logged[0].contains("Too many open files"), "{}", logged[0]);

    // Descriptors free again: it accepts and serves.
    drop(open);
    let answered = wait_until(Duration::from_secs(10), || {
        plugin
            .try_request(
                "POST",
                "/SecretProvider.GetSecret",
                engine_request("db_password", &[]).to_string().as_bytes(),
            )
            .is_ok_and(|answer| answer.value() == PASSWORD)
    });
    assert!(answered, "{}", plugin.log());
    assert!(plugin.is_running());
    assert!(
        plugin.log().contains("accepting connections again"),
        "{}",
        plugin.log()
    );
}

#[test]
fn under_umask_000_the_socket_is_never_reachable_wider_than_0600() {
    use std::os::unix::fs::FileTypeExt;
    use std::sync::atomic::{AtomicBool, Ordering};
    let secrets = tempfile::tempdir().unwrap();
    let mut plugin =
        Plugin::spawn_in_shell("umask 000", Some(&file_config(secrets.path())), &[], &[]);
    let dir = plugin.dir.path().to_path_buf();
    // Watch the folder as fast as we can while the plugin starts: what the
    // plugin creates there, and inside any folder it creates.
    let started = std::sync::Arc::new(AtomicBool::new(false));
    let watcher = {
        let (dir, started) = (dir.clone(), started.clone());
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !started.load(Ordering::Relaxed) {
                for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                    let Ok(meta) = std::fs::symlink_metadata(entry.path()) else {
                        continue;
                    };
                    let mode = meta.permissions().mode() & 0o777;
                    seen.push((
                        entry.path(),
                        meta.file_type().is_socket(),
                        meta.is_dir(),
                        mode,
                    ));
                }
            }
            seen
        })
    };
    let answered = wait_until(Duration::from_secs(10), || {
        plugin.try_request("POST", "/Plugin.Activate", b"").is_ok()
    });
    started.store(true, Ordering::Relaxed);
    let seen = watcher.join().unwrap();
    assert!(answered, "{}", plugin.log());
    for (path, socket, folder, mode) in &seen {
        // A socket in the open folder is 0600 from the moment it appears; a
        // folder the plugin makes there lets nobody else in.
        if *socket {
            assert_eq!(*mode, 0o600, "{} seen as {mode:o}", path.display());
        }
        if *folder {
            assert_eq!(mode & 0o077, 0, "{} seen as {mode:o}", path.display());
        }
    }
    let mode = std::fs::metadata(&plugin.socket)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["config.toml", "plugin.log", "vaultbridge.sock"],
        "the staging folder is gone"
    );
    assert!(plugin.terminate(Duration::from_secs(10)).is_some());
}

/// `check --stack`: every vaultbridge secret of a stack file resolved as the
/// plugin would after `docker stack deploy`, one line each, no value shown.
#[test]
fn cli_check_stack() {
    const GOOD: &[u8] = b"stack-check-good-value-5e1d";
    const FIELD: &str = "stack-check-field-value-a07c";
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::write(secrets.join("db_password"), GOOD).unwrap();
    std::fs::write(
        secrets.join("app.json"),
        format!(r#"{{"api_key":"{FIELD}","port":1}}"#),
    )
    .unwrap();
    let good = r#"
services:
  api:
    image: busybox
    secrets:
      - db_password
      - source: api_key
        target: key
secrets:
  db_password:
    driver: vaultbridge
  api_key:
    driver: vaultbridge:latest
    labels:
      - vaultbridge.path=app.json
      - vaultbridge.field=api_key
  plain:
    file: ./plain.txt
  elsewhere:
    driver: other-driver
"#;
    let broken = format!(
        "{good}  missing:
    driver: vaultbridge
    labels: {{vaultbridge.path: nope/missing}}
  typo:
    driver: vaultbridge
    labels: {{vaultbridge.feild: api_key}}
"
    );
    let check = |text: &str| {
        let file = dir.path().join("stack.yml");
        std::fs::write(&file, text).unwrap();
        let out = std::process::Command::new(vaultbridge_tests::binary())
            .args(["check", "--stack"])
            .arg(&file)
            .args(["--stack-name", "st"])
            .env_clear()
            .env("VAULTBRIDGE_FILE_DIR", &secrets)
            .output()
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        for value in [std::str::from_utf8(GOOD).unwrap(), FIELD] {
            assert!(
                !stdout.contains(value) && !stderr.contains(value),
                "a value was printed:\n{stdout}\n{stderr}"
            );
        }
        (out.status.code(), stdout, stderr)
    };
    let has_line = |stdout: &str, line: &str| stdout.lines().any(|l| l == line);

    let (code, stdout, stderr) = check(good);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let expected = [
        "ok    st_api_key (file, app.json): 28 bytes",
        "ok    st_db_password (file, db_password): 27 bytes",
        "skip  st_elsewhere (unused): driver 'other-driver' (another plugin)",
        "skip  st_plain (unused): file: the deploy stores its content",
        "2 ok, 0 failed, 2 skipped",
    ];
    for line in expected {
        assert!(has_line(&stdout, line), "{line:?} missing:\n{stdout}");
    }

    let (code, stdout, stderr) = check(&broken);
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    for line in &expected[..4] {
        assert!(has_line(&stdout, line), "{line:?} missing:\n{stdout}");
    }
    // The same messages the plugin answers the engine with.
    let failed = |name: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(&format!("FAIL  {name} (unused): ")))
            .unwrap_or_else(|| panic!("no FAIL line for {name}:\n{stdout}"))
            .to_string()
    };
    let missing = failed("st_missing");
    assert!(
        missing.contains("path 'nope/missing'") && missing.contains("not found"),
        "{missing}"
    );
    let typo = failed("st_typo");
    assert!(typo.contains("unknown label 'vaultbridge.feild'"), "{typo}");
    assert!(has_line(&stdout, "2 ok, 2 failed, 2 skipped"), "{stdout}");

    let (code, stdout, stderr) = check("secrets:\n  a: {driver: vaultbridge\n");
    assert_eq!(code, Some(2), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("stack.yml: ") && stderr.contains("not valid YAML"),
        "{stderr}"
    );
    let (code, _, stderr) = check("secrets:\n  a:\n    labels: 7\n");
    assert_eq!(code, Some(2));
    assert!(stderr.contains("stack.yml: secrets.a.labels: "), "{stderr}");
}

#[test]
fn serves_on_one_worker_thread_unless_told_otherwise() {
    let (plugin, _secrets) = plugin_with_secrets();
    let request = engine_request("db_password", &[]);
    assert_eq!(plugin.get_secret(&request).value(), PASSWORD);
    let listening = |log: &str| {
        log.lines()
            .find(|line| line.contains("vaultbridge listening"))
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no start line:\n{log}"))
    };
    let has = |line: &str, field: &str| line.split(' ').any(|f| f == field);
    let line = listening(&plugin.log());
    assert!(has(&line, "worker_threads=1"), "{line}");

    let secrets = tempfile::tempdir().unwrap();
    std::fs::write(secrets.path().join("db_password"), PASSWORD).unwrap();
    let config = format!(
        "[providers.local]\ntype = \"file\"\nroot = \"{}\"\n",
        secrets.path().display()
    );
    let three = Plugin::start(Some(&config), &[("VAULTBRIDGE_WORKER_THREADS", "3")]);
    assert_eq!(three.get_secret(&request).value(), PASSWORD);
    let line = listening(&three.log());
    assert!(has(&line, "worker_threads=3"), "{line}");

    // Out of range: refused at start, naming the setting and its range.
    let mut none = Plugin::spawn(Some(&config), &[("VAULTBRIDGE_WORKER_THREADS", "0")], &[]);
    let status = none.wait_exit(Duration::from_secs(10)).expect("exits");
    assert!(!status.success());
    let log = none.log();
    assert!(
        log.contains("--worker-threads") && log.contains("1..=64"),
        "{log}"
    );
}
