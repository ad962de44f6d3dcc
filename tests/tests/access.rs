//! The access policy, `default_path` and the audit trail, through the real
//! binary on a real socket with the engine's full request shape: two
//! stacks that try to read each other's secrets.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use vaultbridge_tests::{
    Plugin, assert_log_has_no_values, binary, engine_request, raw_request_within, wait_until,
};

const BILLING_DB: &[u8] = b"billing-db-password-5e1c";
const PAYMENTS_DB: &[u8] = b"payments-db-password-90af";
const SHARED_CA: &[u8] = b"shared-ca-bundle-77d2";

/// A file provider with one subtree per stack, and a policy that scopes
/// every stack to its own subtree (plus a shared folder), default deny.
fn setup(audit: &str) -> (tempfile::TempDir, String) {
    setup_with(POLICY, audit)
}

const POLICY: &str = r#"
[access]
default = "deny"

[[access.rules]]
name = "own stack"
stack = "*"
paths = ["apps/{stack}/**"]

[[access.rules]]
name = "shared"
paths = ["shared/*"]
"#;

fn setup_with(policy: &str, audit: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    for (path, value) in [
        ("apps/billing/db", BILLING_DB),
        ("apps/payments/db", PAYMENTS_DB),
        ("shared/ca", SHARED_CA),
    ] {
        let file = root.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, value).unwrap();
    }
    let config = format!(
        r#"default_path = "apps/{{stack}}/{{secret}}"

[providers.local]
type = "file"
root = "{root}"
{policy}
{audit}
"#,
        root = root.display()
    );
    (dir, config)
}

/// The engine's request for `secret` from a service of `stack`.
fn from_stack(stack: &str, secret: &str, labels: &[(&str, &str)]) -> Value {
    let mut request = engine_request(secret, labels);
    request["ServiceName"] = format!("{stack}_api").into();
    request["ServiceLabels"] = serde_json::json!({"com.docker.stack.namespace": stack});
    request["TaskName"] = format!("{stack}_api.1.t{stack}").into();
    request
}

fn audit_records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON record per line"))
        .collect()
}

/// The policy plugin with its audit trail in a file; the folders live as
/// long as the returned guard.
fn plugin_with_audit_file() -> (Plugin, std::path::PathBuf, [tempfile::TempDir; 2]) {
    let audit_dir = tempfile::tempdir().unwrap();
    let audit_file = audit_dir.path().join("audit.log");
    let (dir, config) = setup(&format!(
        "[audit]\nsink = \"file\"\npath = \"{}\"\n",
        audit_file.display()
    ));
    (
        Plugin::start(Some(&config), &[]),
        audit_file,
        [audit_dir, dir],
    )
}

#[test]
fn each_stack_reads_its_own_secrets_and_a_cache_hit_never_crosses() {
    let (plugin, audit_file, _dirs) = plugin_with_audit_file();

    // No path label: default_path gives apps/<stack>/<secret>.
    let billing_db = [("com.docker.stack.namespace", "billing")];
    let answer = plugin.get_secret(&from_stack("billing", "billing_db", &billing_db));
    assert_eq!(answer.value(), BILLING_DB, "{}", answer.err());
    let answer = plugin.get_secret(&from_stack(
        "payments",
        "payments_db",
        &[("com.docker.stack.namespace", "payments")],
    ));
    assert_eq!(answer.value(), PAYMENTS_DB, "{}", answer.err());

    // payments names billing's path: refused, though billing's value is
    // now in the cache under exactly that path.
    let cross = [("vaultbridge.path", "apps/billing/db")];
    let answer = plugin.get_secret(&from_stack("payments", "stolen", &cross));
    let err = answer.err();
    assert!(answer.json()["Value"].is_null());
    assert!(
        err.contains("access policy does not allow service 'payments_api'")
            && err.contains("path 'apps/billing/db'")
            && err.contains("provider 'local'"),
        "{err}"
    );
    // Which rule would allow it is the operator's business, not the caller's.
    assert!(!err.contains("own stack") && !err.contains("rule"), "{err}");

    // Both read the shared folder; billing still gets its cached value.
    for stack in ["billing", "payments"] {
        let answer = plugin.get_secret(&from_stack(
            stack,
            "ca",
            &[("vaultbridge.path", "shared/ca")],
        ));
        assert_eq!(answer.value(), SHARED_CA, "{stack}: {}", answer.err());
    }
    let answer = plugin.get_secret(&from_stack("billing", "billing_db", &billing_db));
    assert_eq!(answer.value(), BILLING_DB);
    // A service outside any stack has no {stack}: default_path says so.
    let mut loose = engine_request("db", &[]);
    loose["ServiceLabels"] = serde_json::json!({});
    let err = plugin.get_secret(&loose).err();
    assert!(
        err.contains("default_path") && err.contains("not part of a stack"),
        "{err}"
    );

    let log = plugin.log();
    let denial = log
        .lines()
        .find(|l| l.contains("secret=stolen "))
        .expect("a log line for the denial");
    assert!(
        denial.contains("outcome=\"policy_denied\"")
            && denial.contains("policy=\"deny by default\"")
            && denial.contains("service=payments_api"),
        "{denial}"
    );
    assert!(
        log.lines().any(|l| l.contains("secret=billing_db ")
            && l.contains("policy=\"allow by rule 0 (own stack)\"")),
        "{log}"
    );
    assert_log_has_no_values(&log, &[BILLING_DB, PAYMENTS_DB, SHARED_CA]);

    // One audit record per decision, in order; never a value.
    let text = std::fs::read_to_string(&audit_file).unwrap();
    assert_log_has_no_values(&text, &[BILLING_DB, PAYMENTS_DB, SHARED_CA]);
    let records = audit_records(&audit_file);
    assert_eq!(records.len(), 7, "{text}");
    let stolen = &records[2];
    for (key, value) in [
        ("log_type", "audit"),
        ("service_name", "payments_api"),
        ("secret", "stolen"),
        ("provider", "local"),
        ("path", "apps/billing/db"),
        ("decision", "deny"),
        ("rule", "default"),
        ("outcome", "policy_denied"),
        ("node", "n7c0a1b2c3d4"),
        ("image", "repo/api:1.4@sha256:0123"),
        ("task_id", "x9q1w2e3r4t5"),
    ] {
        assert_eq!(stolen[key], value, "{key}: {stolen}");
    }
    assert!(stolen["cache"].is_null() && stolen["time"].is_string());
    assert_eq!(records[0]["cache"], "miss");
    assert_eq!(records[5]["cache"], "hit");
    assert_eq!(records[5]["rule"], "rule 0 (own stack)");
    assert_eq!(records[6]["outcome"], "bad_labels");
    assert_eq!(records[6]["decision"], "none");
}

#[test]
fn audit_records_cannot_be_forged_and_a_lost_record_withholds_the_secret() {
    let (plugin, audit_file, _dirs) = plugin_with_audit_file();
    let mut forged = from_stack(
        "billing",
        "billing_db",
        &[("com.docker.stack.namespace", "billing")],
    );
    forged["ServiceName"] = "x\"}\n{\"log_type\":\"audit\",\"decision\":\"allow\"}\u{2028}".into();
    forged["TaskImage"] = "img\r\nforged".into();
    assert_eq!(plugin.get_secret(&forged).value(), BILLING_DB);
    let records = audit_records(&audit_file);
    assert_eq!(records.len(), 1);
    assert!(
        records[0]["service_name"]
            .as_str()
            .unwrap()
            .starts_with("x\"")
    );

    // A trail that can no longer be written (its folder gone): no secret
    // is served.
    let gone = tempfile::tempdir().unwrap();
    let (_dir, config) = setup(&format!(
        "[audit]\nsink = \"file\"\npath = \"{}\"\n",
        gone.path().join("audit.log").display()
    ));
    let plugin = Plugin::start(Some(&config), &[]);
    drop(gone);
    let answer = plugin.get_secret(&from_stack(
        "billing",
        "billing_db",
        &[("com.docker.stack.namespace", "billing")],
    ));
    assert!(answer.json()["Value"].is_null());
    assert!(
        answer.err().contains("audit trail cannot be written"),
        "{}",
        answer.err()
    );
    assert_log_has_no_values(&plugin.log(), &[BILLING_DB]);
}

#[test]
fn stdout_audit_is_marked_and_no_policy_is_said_once() {
    let (_dir, config) = setup_with("", "[audit]\nsink = \"stdout\"\n");
    let plugin = Plugin::start(Some(&config), &[]);
    let answer = plugin.get_secret(&from_stack(
        "payments",
        "x",
        &[("vaultbridge.path", "apps/billing/db")],
    ));
    // No policy: every path the credentials reach, as before.
    assert_eq!(answer.value(), BILLING_DB);
    let log = plugin.log();
    assert_eq!(log.matches("no [access] policy").count(), 1, "{log}");
    let audit_line = log
        .lines()
        .find(|l| l.contains("\"log_type\":\"audit\""))
        .expect("an audit line on stdout");
    let record: Value = serde_json::from_str(audit_line).unwrap();
    assert_eq!(record["decision"], "none");
    assert_eq!(record["outcome"], "ok");
}

fn vaultbridge(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(binary())
        .args(args)
        .env_clear()
        .output()
        .expect("run vaultbridge");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn get_resolves_as_the_plugin_would_for_a_caller_and_check_lints_the_policy() {
    let (dir, config) = setup("");
    let file = dir.path().join("config.toml");
    std::fs::write(&file, &config).unwrap();
    let file = file.display().to_string();

    let (code, out, err) = vaultbridge(&[
        "get",
        "--config",
        &file,
        "--stack",
        "billing",
        "--service",
        "billing_api",
        "billing_db",
    ]);
    assert_eq!((code, out.as_bytes()), (0, BILLING_DB), "{err}");
    let (code, out, err) = vaultbridge(&[
        "get",
        "--config",
        &file,
        "--stack",
        "payments",
        "--service",
        "payments_api",
        "--label",
        "vaultbridge.path=apps/billing/db",
        "x",
    ]);
    assert_eq!(code, 1);
    assert!(out.is_empty());
    assert!(
        err.contains("does not allow service 'payments_api'"),
        "{err}"
    );
    // No caller described: no stack, so no rule grants and default_path fails.
    let (code, _, err) = vaultbridge(&[
        "get",
        "--config",
        &file,
        "--label",
        "vaultbridge.path=shared/ca",
        "ca",
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = vaultbridge(&[
        "get",
        "--config",
        &file,
        "--label",
        "vaultbridge.path=apps/billing/db",
        "db",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("a caller with no service name"), "{err}");

    let (code, out, err) = vaultbridge(&["check", "--config", &file]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("access: 2 rule(s), default deny"), "{out}");

    // An audit file whose folder does not exist would stop the plugin:
    // check says so (without creating anything).
    let audit = format!("{config}[audit]\nsink = \"file\"\npath = \"/nonexistent-vb/audit.log\"\n");
    std::fs::write(&file, audit).unwrap();
    let (code, out, _) = vaultbridge(&["check", "--config", &file]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAIL  audit: the folder /nonexistent-vb"),
        "{out}"
    );
    assert!(!Path::new("/nonexistent-vb").exists());
    std::fs::write(&file, &config).unwrap();

    // A rule after a catch-all never decides: check says which, exit 1.
    let shadowed = config.replace(
        "[[access.rules]]\nname = \"shared\"",
        "[[access.rules]]\npaths = [\"**\"]\n\n[[access.rules]]\nname = \"shared\"",
    );
    std::fs::write(&file, shadowed).unwrap();
    let (code, out, _) = vaultbridge(&["check", "--config", &file]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("WARN  access.rules[2]: rule 2 (shared) never decides: rule 1"),
        "{out}"
    );

    // A rule naming a provider that is not configured: the config is refused.
    let unknown = config.replace(
        "name = \"shared\"",
        "name = \"shared\"\nproviders = [\"vault\"]",
    );
    std::fs::write(&file, unknown).unwrap();
    let (code, _, err) = vaultbridge(&["check", "--config", &file]);
    assert_eq!(code, 2);
    assert!(
        err.contains("access.rules[1].providers")
            && err.contains("'vault' matches no configured provider"),
        "{err}"
    );
}

#[test]
fn check_stack_asks_once_per_service_with_its_own_identity() {
    let (dir, config) = setup_with(
        r#"
[access]
default = "deny"

[[access.rules]]
service = "billing_api"
image = "registry.example.com/billing/**"
paths = ["apps/{stack}/**"]
"#,
        "",
    );
    let file = dir.path().join("config.toml");
    std::fs::write(&file, &config).unwrap();
    let stack = dir.path().join("stack.yml");
    std::fs::write(
        &stack,
        r#"
services:
  api:
    image: registry.example.com/billing/api:1.4
    secrets: [db]
  intruder:
    image: busybox
    secrets: [db]
secrets:
  db:
    driver: vaultbridge
"#,
    )
    .unwrap();
    let (code, out, err) = vaultbridge(&[
        "check",
        "--config",
        &file.display().to_string(),
        "--stack",
        &stack.display().to_string(),
        "--stack-name",
        "billing",
    ]);
    assert_eq!(code, 1, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines.contains(&"ok    billing_db for billing_api (local, apps/billing/db): 24 bytes"),
        "{out}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("FAIL  billing_db for billing_intruder: ")
                && l.contains("does not allow service 'billing_intruder'")),
        "{out}"
    );
    assert!(lines.contains(&"1 ok, 1 failed, 0 skipped"), "{out}");
    assert_log_has_no_values(&out, &[BILLING_DB]);
}

#[test]
fn with_a_policy_a_symlink_in_ones_own_folder_reaches_nothing_else() {
    let (dir, config) = setup("");
    let root = dir.path().join("root");
    std::os::unix::fs::symlink("../payments/db", root.join("apps/billing/steal")).unwrap();
    std::os::unix::fs::symlink("../payments", root.join("apps/billing/sub")).unwrap();
    let plugin = Plugin::start(Some(&config), &[]);
    for path in ["apps/billing/steal", "apps/billing/sub/db"] {
        let answer = plugin.get_secret(&from_stack("billing", "x", &[("vaultbridge.path", path)]));
        assert!(answer.json()["Value"].is_null(), "{path} was served");
        assert!(
            answer.err().contains("goes through a symlink"),
            "{path}: {}",
            answer.err()
        );
    }
    assert_log_has_no_values(&plugin.log(), &[PAYMENTS_DB]);

    // Following symlinks cannot be asked for alongside a policy.
    let file = dir.path().join("config.toml");
    let following = config.replace("type = \"file\"", "type = \"file\"\nfollow_symlinks = true");
    std::fs::write(&file, following).unwrap();
    let (code, _, err) = vaultbridge(&["check", "--config", &file.display().to_string()]);
    assert_eq!(code, 2);
    assert!(err.contains("providers.local.follow_symlinks"), "{err}");
}

#[test]
fn a_stdout_nobody_reads_holds_the_audited_requests_not_the_plugin() {
    let (dir, config) = setup_with("", "[audit]\nsink = \"stdout\"\n");
    // stdout: a pipe nobody reads, as a dockerd that stopped reading the
    // plugin's output leaves it (opened read-write, so that opening does
    // not wait for a reader; its 64 KiB then fill).
    let fifo = dir.path().join("stdout");
    let mut plugin = Plugin::spawn_in_shell(
        &format!("mkfifo '{0}' && exec 1<>'{0}'", fifo.display()),
        Some(&config),
        &[],
        &[],
    );
    assert!(
        wait_until(Duration::from_secs(10), || {
            plugin.try_request("POST", "/Plugin.Activate", b"").is_ok()
        }),
        "plugin did not answer; log:\n{}",
        plugin.log()
    );
    let request = from_stack("billing", "db", &[]).to_string();
    let ask = |path: &str, body: &[u8]| {
        raw_request_within(&plugin.socket, "POST", path, body, Duration::from_secs(2))
    };
    // Audited secrets until the pipe is full: that one's record cannot be
    // written, so it is not answered (fail closed).
    let served = (0..1000)
        .take_while(|_| ask("/SecretProvider.GetSecret", request.as_bytes()).is_ok())
        .count();
    assert!(
        (10..1000).contains(&served),
        "{served} answered before the pipe filled"
    );
    // The plugin itself still answers, and stops on SIGTERM.
    let activate = ask("/Plugin.Activate", b"");
    assert!(activate.is_ok(), "{activate:?}");
    let status = plugin.terminate(Duration::from_secs(20));
    assert!(status.is_some(), "still running 20 s after SIGTERM");
}
