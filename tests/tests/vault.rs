//! The `vault` provider against a real OpenBao dev server (started per test
//! by `vaultbridge_tests::openbao`), both directly and through the plugin's
//! Unix socket with the real binary.
//!
//! Needs `bao` (tests/setup.sh) and openssl. Run:
//! `cargo build -p vaultbridge --no-default-features --features file,vault &&
//!  cargo test -p vaultbridge-tests --features vault --test vault`

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use vaultbridge_providers::vault::VaultConfig;
use vaultbridge_providers::{Provider, ProviderError, SecretRef};
use vaultbridge_tests::openbao::{self, BlackHole, LossyProxy, OpenBao};
use vaultbridge_tests::{Answer, Plugin, assert_log_has_no_values, engine_request};

/// A TOML value from JSON (strings, numbers, booleans, arrays, tables).
fn toml_value(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let items: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{} = {}", Value::from(k.as_str()), toml_value(v)))
                .collect();
            format!("{{ {} }}", items.join(", "))
        }
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(toml_value).collect();
            format!("[{}]", items.join(", "))
        }
        other => other.to_string(),
    }
}

/// `[providers.<name>] type = "vault"` with the keys of `config`.
fn toml_provider(name: &str, config: &Value) -> String {
    let mut text = format!("[providers.{name}]\ntype = \"vault\"\n");
    for (key, value) in config.as_object().expect("config object") {
        text.push_str(&format!("{key} = {}\n", toml_value(value)));
    }
    text
}

async fn direct(config: &Value) -> Arc<dyn Provider> {
    let parsed: VaultConfig = serde_json::from_value(config.clone()).expect("valid vault config");
    vaultbridge_providers::vault::build(&parsed, "providers.v")
        .await
        .expect("build")
}

/// The plugin with its cache off (these suites test the backend; the
/// cache has its own) and `extra` plugin-level keys (`deadline`, …).
fn start_plugin_with(config: &Value, extra: &[(&str, &str)]) -> Plugin {
    let mut text = toml_provider("v", config);
    text.push_str("cache_ttl = \"0s\"\n");
    for (key, value) in extra {
        text.push_str(&format!("{key} = {}\n", Value::from(*value)));
    }
    Plugin::start(Some(&text), &[])
}

fn start_plugin(config: &Value) -> Plugin {
    start_plugin_with(config, &[])
}

async fn fetch(
    provider: &Arc<dyn Provider>,
    path: &str,
    version: Option<&str>,
) -> Result<(Vec<u8>, bool), ProviderError> {
    provider
        .fetch(SecretRef {
            path: &vaultbridge_providers::SecretPath::parse(path)
                .map_err(|err| vaultbridge_providers::ProviderError::Invalid(err.to_string()))?,
            version,
        })
        .await
        .map(|v| (v.expose().to_vec(), v.per_task))
}

fn ask(plugin: &Plugin, labels: &[(&str, &str)]) -> Answer {
    plugin.get_secret(&engine_request("s", labels))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The plugin's value for `field` of the secret at `path`.
fn ask_field(plugin: &Plugin, path: &str, field: &str) -> Vec<u8> {
    ask(
        plugin,
        &[("vaultbridge.path", path), ("vaultbridge.field", field)],
    )
    .value()
}

/// One fetch by a provider built afresh from `config`.
async fn fetch_once(config: &Value, path: &str) -> Result<(Vec<u8>, bool), ProviderError> {
    fetch(&direct(config).await, path, None).await
}

/// `err` is of the variant `kind` (e.g. `ProviderError::NotFound`) and its
/// message contains each of `needles`.
#[track_caller]
fn assert_error(err: &ProviderError, kind: fn(String) -> ProviderError, needles: &[&str]) {
    let expected = kind(String::new());
    let message = err.to_string();
    assert!(
        std::mem::discriminant(err) == std::mem::discriminant(&expected)
            && needles.iter().all(|needle| message.contains(needle)),
        "expected {expected:?} containing {needles:?}, got: {err}"
    );
}

/// The plugin answered with an `Err` containing each of `needles`.
#[track_caller]
fn assert_refused(answer: &Answer, needles: &[&str]) {
    let err = answer.err();
    assert!(
        needles.iter().all(|needle| err.contains(needle)),
        "expected an Err containing {needles:?}, got: {err}"
    );
}

/// Less than `seconds` have passed since `started`.
#[track_caller]
fn assert_took_less_than(started: Instant, seconds: u64) {
    assert!(
        started.elapsed() < Duration::from_secs(seconds),
        "took {:?}",
        started.elapsed()
    );
}

/// `bao kv put <path> <key=value>...`.
fn kv_put(bao: &OpenBao, path: &str, pairs: &[&str]) {
    let mut args = vec!["kv", "put", path];
    args.extend_from_slice(pairs);
    bao.bao(&args);
}

/// `auth.method = "token"` with the token in `token_file`.
fn token_config(bao: &OpenBao, token_file: &Path) -> Value {
    json!({"address": bao.addr, "auth": {"method": "token", "token_file": token_file}})
}

/// The root token in a file, for `auth.method = "token"`.
fn root_config(bao: &OpenBao) -> Value {
    token_config(bao, &bao.file("root-token", b"root\n"))
}

/// A new token with the reader policy (as `bao` prints it: a newline after).
fn reader_token(bao: &OpenBao) -> String {
    bao.bao(&["token", "create", "-policy=reader", "-field=token"])
}

/// A policy that may read `secret/data/app/*` (and its metadata) only.
fn reader_policy(bao: &OpenBao) {
    bao.bao_stdin(
        &["policy", "write", "reader", "-"],
        r#"path "secret/data/app/*" { capabilities = ["read"] }
           path "secret/metadata/app/*" { capabilities = ["read"] }"#,
    );
}

/// AppRole enabled with `role` granting the reader policy, its tokens
/// living `ttl` (and at most `max_ttl`); returns the role's role_id.
fn enable_approle(bao: &OpenBao, role: &str, ttl: &str, max_ttl: Option<&str>) -> String {
    bao.bao(&["auth", "enable", "approle"]);
    let path = format!("auth/approle/role/{role}");
    let ttl = format!("token_ttl={ttl}");
    let mut args = vec!["write", &path, "token_policies=reader", &ttl];
    let max_ttl = max_ttl.map(|max| format!("token_max_ttl={max}"));
    args.extend(max_ttl.as_deref());
    bao.bao(&args);
    bao.bao(&["read", "-field=role_id", &format!("{path}/role-id")])
}

/// A new secret_id for `role`.
fn approle_secret_id(bao: &OpenBao, role: &str) -> String {
    let path = format!("auth/approle/role/{role}/secret-id");
    bao.bao(&["write", "-f", "-field=secret_id", &path])
}

/// A new secret_id for `role`, response-wrapped: the wrapping token.
fn wrapped_approle_secret_id(bao: &OpenBao, role: &str, wrap_ttl: &str) -> String {
    let path = format!("auth/approle/role/{role}/secret-id");
    let wrap_ttl = format!("-wrap-ttl={wrap_ttl}");
    bao.bao(&["write", &wrap_ttl, "-f", "-field=wrapping_token", &path])
}

/// `auth.method = "approle"` with `role_id` and `secret_id` in files.
fn approle_config(bao: &OpenBao, role_id: &str, secret_id: &str) -> Value {
    json!({
        "address": bao.addr,
        "auth": {
            "method": "approle",
            "role_id_file": bao.file("role-id", role_id.as_bytes()),
            "secret_id_file": bao.file("secret-id", secret_id.as_bytes()),
        },
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn kv2_plain_field_whole_map_versions_and_binary() {
    let bao = OpenBao::start();
    kv_put(&bao, "secret/app/db", &["user=app", "password=pw-one-1111"]);
    kv_put(&bao, "secret/app/db", &["user=app", "password=pw-two-2222"]);
    kv_put(&bao, "secret/plain", &["value=hello-plain"]);
    let binary: Vec<u8> = (0u8..=255).collect();
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(&binary);
    kv_put(&bao, "secret/bin", &[&format!("blob={encoded}")]);
    let config = root_config(&bao);

    // Directly: the whole data map as compact JSON, versions.
    let p = direct(&config).await;
    let (whole, per_task) = fetch(&p, "app/db", None).await.unwrap();
    assert!(!per_task);
    assert_eq!(
        serde_json::from_slice::<Value>(&whole).unwrap(),
        json!({"user": "app", "password": "pw-two-2222"})
    );
    assert!(
        !text(&whole).contains(' '),
        "compact JSON: {}",
        text(&whole)
    );
    let (v1, _) = fetch(&p, "app/db", Some("1")).await.unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&v1).unwrap()["password"],
        "pw-one-1111"
    );
    // `<mount>/<path>` names the same secret.
    assert_eq!(fetch(&p, "secret/app/db", None).await.unwrap().0, whole);
    let err = fetch(&p, "app/db", Some("two")).await.unwrap_err();
    assert_error(&err, ProviderError::Invalid, &[]);

    // Through the socket.
    let plugin = start_plugin(&config);
    let answer = ask(
        &plugin,
        &[
            ("vaultbridge.path", "app/db"),
            ("vaultbridge.field", "password"),
        ],
    );
    assert_eq!(answer.value(), b"pw-two-2222");
    assert_eq!(answer.json()["DoNotReuse"], false);
    let answer = ask(
        &plugin,
        &[
            ("vaultbridge.path", "secret/app/db"),
            ("vaultbridge.field", "password"),
            ("vaultbridge.version", "1"),
        ],
    );
    assert_eq!(answer.value(), b"pw-one-1111");
    let answer = ask(&plugin, &[("vaultbridge.path", "app/db")]);
    assert_eq!(answer.value(), whole);
    assert_eq!(ask_field(&plugin, "plain", "value"), b"hello-plain");
    let answer = ask(
        &plugin,
        &[
            ("vaultbridge.path", "bin"),
            ("vaultbridge.field", "blob"),
            ("vaultbridge.decode", "base64"),
        ],
    );
    assert_eq!(answer.value(), binary);

    // Latest after an update: no stale value.
    kv_put(
        &bao,
        "secret/app/db",
        &["user=app", "password=pw-three-3333"],
    );
    assert_eq!(ask_field(&plugin, "app/db", "password"), b"pw-three-3333");
    assert_eq!(
        serde_json::from_slice::<Value>(&fetch(&p, "app/db", None).await.unwrap().0).unwrap()["password"],
        "pw-three-3333"
    );
    let answer = ask(
        &plugin,
        &[
            ("vaultbridge.path", "app/db"),
            ("vaultbridge.version", "2"),
            ("vaultbridge.field", "password"),
        ],
    );
    assert_eq!(answer.value(), b"pw-two-2222");

    assert_log_has_no_values(
        &plugin.log(),
        &[
            b"pw-one-1111",
            b"pw-two-2222",
            b"pw-three-3333",
            b"hello-plain",
            encoded.as_bytes(),
        ],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kv2_deleted_destroyed_and_missing_versions_are_not_found() {
    let bao = OpenBao::start();
    for n in 1..=3 {
        kv_put(&bao, "secret/app/x", &[&format!("v=value-{n}")]);
    }
    bao.bao(&["kv", "delete", "-versions=1", "secret/app/x"]);
    bao.bao(&["kv", "destroy", "-versions=2", "secret/app/x"]);
    kv_put(&bao, "secret/app/gone", &["v=bye"]);
    bao.bao(&["kv", "delete", "secret/app/gone"]);
    let config = root_config(&bao);
    let p = direct(&config).await;

    let err = fetch(&p, "app/x", Some("1")).await.unwrap_err();
    assert_error(
        &err,
        ProviderError::NotFound,
        &["version 1 of 'app/x'", "deleted"],
    );
    let err = fetch(&p, "app/x", Some("2")).await.unwrap_err();
    assert_error(&err, ProviderError::NotFound, &["destroyed"]);
    let err = fetch(&p, "app/x", Some("9")).await.unwrap_err();
    assert_error(&err, ProviderError::NotFound, &["no version 9"]);
    assert_eq!(
        fetch(&p, "app/x", Some("3")).await.unwrap().0,
        br#"{"v":"value-3"}"#
    );
    let err = fetch(&p, "app/gone", None).await.unwrap_err();
    assert_error(&err, ProviderError::NotFound, &["deleted"]);
    let err = fetch(&p, "app/never", None).await.unwrap_err();
    assert_error(&err, ProviderError::NotFound, &["'app/never'"]);

    let plugin = start_plugin(&config);
    let answer = ask(
        &plugin,
        &[("vaultbridge.path", "app/x"), ("vaultbridge.version", "1")],
    );
    assert_refused(&answer, &["deleted", "not found"]);
    let answer = ask(
        &plugin,
        &[("vaultbridge.path", "app/x"), ("vaultbridge.version", "2")],
    );
    assert_refused(&answer, &["destroyed"]);
    let answer = ask(&plugin, &[("vaultbridge.path", "app/never")]);
    assert_refused(&answer, &["not found", "app/never"]);
    assert!(plugin.log().contains("not_found"), "{}", plugin.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn kv1_mounts_mount_prefix_and_unknown_mounts() {
    let bao = OpenBao::start();
    bao.bao(&["secrets", "enable", "-version=1", "-path=kv1", "kv"]);
    kv_put(&bao, "kv1/legacy/db", &["pw=old-style-pw"]);
    kv_put(&bao, "secret/kv1/db", &["pw=v2-lookalike"]);
    let mut config = root_config(&bao);
    config["kv_mounts"] = json!({"kv1": 1});
    let p = direct(&config).await;
    assert_eq!(
        fetch(&p, "kv1/legacy/db", None).await.unwrap().0,
        br#"{"pw":"old-style-pw"}"#
    );
    // The first segment names a known mount; the default mount's own key
    // `kv1/db` is reached with an explicit `secret/` prefix.
    assert_eq!(
        fetch(&p, "secret/kv1/db", None).await.unwrap().0,
        br#"{"pw":"v2-lookalike"}"#
    );
    let err = fetch(&p, "kv1/legacy/db", Some("1")).await.unwrap_err();
    assert_error(&err, ProviderError::Invalid, &[]);
    let err = fetch(&p, "kv1/legacy/nope", None).await.unwrap_err();
    assert_error(&err, ProviderError::NotFound, &["KV v1 mount 'kv1'"]);

    // kv_mount itself may be a KV v1 mount.
    let mut v1 = root_config(&bao);
    v1["kv_mount"] = json!("kv1");
    v1["kv_version"] = json!(1);
    let p1 = direct(&v1).await;
    assert_eq!(
        fetch(&p1, "legacy/db", None).await.unwrap().0,
        br#"{"pw":"old-style-pw"}"#
    );

    // A mount that does not exist.
    let mut missing = root_config(&bao);
    missing["kv_mount"] = json!("nomount");
    let pm = direct(&missing).await;
    let err = fetch(&pm, "x", None).await.unwrap_err();
    assert_error(
        &err,
        ProviderError::NotFound,
        &["no secrets engine is mounted at 'nomount/'"],
    );

    let plugin = start_plugin(&config);
    assert_eq!(ask_field(&plugin, "kv1/legacy/db", "pw"), b"old-style-pw");
    let answer = ask(
        &plugin,
        &[
            ("vaultbridge.path", "kv1/legacy/db"),
            ("vaultbridge.version", "3"),
        ],
    );
    assert_refused(&answer, &["KV v1 keeps no versions"]);
}

/// PKI with a root CA and a role `web` for *.example.com, with
/// generate_lease: every `pki/issue/web` is a new certificate with a lease.
fn pki_web_role(bao: &OpenBao) {
    bao.bao(&["secrets", "enable", "pki"]);
    bao.bao(&["secrets", "tune", "-max-lease-ttl=48h", "pki"]);
    bao.bao(&[
        "write",
        "pki/root/generate/internal",
        "common_name=test-root",
        "ttl=48h",
        "key_type=ec",
    ]);
    bao.bao(&[
        "write",
        "pki/roles/web",
        "allowed_domains=example.com",
        "allow_subdomains=true",
        "generate_lease=true",
        "max_ttl=1h",
        "key_type=ec",
    ]);
}

/// A call that may have taken effect is made once: a write or a minting
/// read whose answer a gateway lost (502 after OpenBao served it), or a
/// write answered 204. A KV read that fails the same way is retried.
/// Counted in OpenBao's audit log, through the plugin's socket.
#[tokio::test(flavor = "multi_thread")]
async fn calls_that_may_have_taken_effect_are_never_retried() {
    let bao = OpenBao::start();
    pki_web_role(&bao);
    kv_put(&bao, "secret/app/flaky", &["password=x"]);

    // The gateway loses every answer to pki/issue and to the KV read.
    let lossy = LossyProxy::start(&bao.addr, "pki/issue/web");
    let mut config = root_config(&bao);
    config["address"] = lossy.addr.clone().into();
    config["logical_write_prefixes"] = json!(["pki/issue/", "cubbyhole/"]);
    let plugin = start_plugin_with(&config, &[("deadline", "3s")]);
    let answer = ask(
        &plugin,
        &[(
            "vaultbridge.path",
            "pki/issue/web?common_name=app.example.com",
        )],
    );
    assert!(answer.err().contains("502"), "{}", answer.err());
    assert_eq!(
        bao.audit_count("pki/issue/web"),
        1,
        "a lost write was sent again"
    );

    // A write answered 204 (its work done, nothing to serve): once, at once.
    let started = Instant::now();
    let answer = ask(&plugin, &[("vaultbridge.path", "cubbyhole/note?k=v")]);
    assert!(answer.err().contains("no body"), "{}", answer.err());
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(bao.audit_count("cubbyhole/note"), 1);

    // A KV read lost the same way is safe to ask again, within the deadline.
    let lossy_kv = LossyProxy::start(&bao.addr, "secret/data/app/flaky");
    config["address"] = lossy_kv.addr.clone().into();
    let plugin = start_plugin_with(&config, &[("deadline", "2s")]);
    let answer = ask(&plugin, &[("vaultbridge.path", "secret/app/flaky")]);
    assert!(answer.err().contains("502"), "{}", answer.err());
    let reads = bao.audit_reads("secret/data/app/flaky");
    assert!(reads > 1, "a failed KV read was not retried ({reads} read)");
}

/// Vault's rate-limit quota answers 429 with Retry-After: the plugin does
/// not ask again before it, and reports at once when it does not fit.
#[tokio::test(flavor = "multi_thread")]
async fn a_rate_limited_read_waits_for_retry_after_or_is_reported_at_once() {
    let bao = OpenBao::start();
    kv_put(&bao, "secret/app/a", &["password=a"]);
    kv_put(&bao, "secret/app/b", &["password=b"]);
    // Vault sends Retry-After with its 429s only when told to.
    bao.bao(&[
        "write",
        "sys/quotas/config",
        "enable_rate_limit_response_headers=true",
    ]);
    bao.bao(&[
        "write",
        "sys/quotas/rate-limit/kv",
        "path=secret/",
        "rate=1",
        "interval=20s",
    ]);
    let plugin = start_plugin_with(&root_config(&bao), &[("deadline", "3s")]);
    assert_eq!(ask_field(&plugin, "secret/app/a", "password"), b"a");
    let started = Instant::now();
    let answer = ask(&plugin, &[("vaultbridge.path", "secret/app/b")]);
    let err = answer.err();
    assert!(err.contains("429") && err.contains("Retry-After"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // One attempt: the quota's wait (~20 s) is past the 3 s deadline.
    assert!(err.contains("after 1 attempt(s)"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn leased_dynamic_secrets_are_per_task_and_differ_per_call() {
    let bao = OpenBao::start();
    pki_web_role(&bao);
    let mut config = root_config(&bao);
    config["logical_write_prefixes"] = json!(["pki/issue/", "auth/token/create"]);
    let path = "pki/issue/web?common_name=app.example.com&ttl=10m";
    let p = direct(&config).await;
    let (first, per_task) = fetch(&p, path, None).await.unwrap();
    assert!(per_task, "a leased PKI certificate must be per task");
    let (second, _) = fetch(&p, path, None).await.unwrap();
    let serial =
        |bytes: &[u8]| serde_json::from_slice::<Value>(bytes).unwrap()["serial_number"].clone();
    assert!(serial(&first).is_string());
    assert_ne!(serial(&first), serial(&second));
    // A token created through the generic write path: `auth`, per task.
    let (token, per_task) = fetch(&p, "auth/token/create?ttl=10m", None).await.unwrap();
    assert!(per_task);
    assert!(serde_json::from_slice::<Value>(&token).unwrap()["client_token"].is_string());
    let err = fetch(&p, "pki/issue/web?common_name=evil.other.org", None)
        .await
        .unwrap_err();
    assert_error(&err, ProviderError::Invalid, &[]);

    let plugin = start_plugin(&config);
    let labels = [
        ("vaultbridge.path", path),
        ("vaultbridge.field", "serial_number"),
    ];
    // Two tasks: two certificates. The engine asking again for a task that
    // has its certificate (failover, reconnect): the same one, no new lease.
    let as_task = |task: &str| {
        let mut request = engine_request("s", &labels);
        request["TaskID"] = task.into();
        plugin.get_secret(&request)
    };
    let issued = || bao.audit_count("pki/issue/web");
    let before = issued();
    let a = as_task("taska");
    let b = as_task("taskb");
    assert_eq!(a.json()["DoNotReuse"], true, "{}", a.json());
    assert_eq!(b.json()["DoNotReuse"], true);
    assert_ne!(a.value(), b.value());
    assert_eq!(issued(), before + 2, "one certificate per task");
    for _ in 0..3 {
        let again = as_task("taska");
        assert_eq!(again.json()["DoNotReuse"], true);
        assert_eq!(again.value(), a.value(), "a re-ask got another certificate");
    }
    assert_eq!(issued(), before + 2, "a re-ask minted a new lease");
    assert!(
        plugin.log().contains("cache=\"reissued\""),
        "{}",
        plugin.log()
    );
    let key = ask_field(&plugin, path, "private_key");
    assert!(text(&key).contains("PRIVATE KEY"));
    assert_log_has_no_values(&plugin.log(), &[&key]);
    assert!(
        plugin.log().contains("left to expire at its TTL"),
        "{}",
        plugin.log()
    );
}

/// Issue 16: only the leader manager's plugin is asked, and a new leader's
/// is asked again for every running task. With `per_task_mount`, the value
/// one plugin minted for a task is the one another plugin hands that task:
/// no second certificate. Two plugin processes stand for two managers; the
/// token is least-privilege (create and read on the mount, nothing more).
#[tokio::test(flavor = "multi_thread")]
async fn per_task_values_are_shared_between_the_managers_plugins() {
    let bao = OpenBao::start();
    pki_web_role(&bao);
    kv_put(&bao, "secret/app/db", &["password=kv-pw"]);
    bao.bao(&["secrets", "enable", "-path=vaultbridge-per-task", "kv-v2"]);
    bao.bao_stdin(
        &["policy", "write", "minter", "-"],
        r#"path "pki/issue/web" { capabilities = ["update"] }
           path "secret/data/app/*" { capabilities = ["read"] }
           path "vaultbridge-per-task/data/*" { capabilities = ["create", "read"] }"#,
    );
    let token = bao.bao(&["token", "create", "-policy=minter", "-field=token"]);
    let mut config = token_config(&bao, &bao.file("minter-token", token.as_bytes()));
    config["logical_write_prefixes"] = json!(["pki/issue/"]);
    config["per_task_mount"] = json!("vaultbridge-per-task");
    let (leader, next_leader) = (start_plugin(&config), start_plugin(&config));
    let labels = [
        (
            "vaultbridge.path",
            "pki/issue/web?common_name=app.example.com&ttl=10m",
        ),
        ("vaultbridge.field", "certificate"),
    ];
    let as_task = |plugin: &Plugin, task: &str, labels: &[(&str, &str)]| {
        let mut request = engine_request("s", labels);
        request["TaskID"] = task.into();
        plugin.get_secret(&request)
    };
    let issued = || bao.audit_count("pki/issue/web");
    let records = || bao.audited_under("vaultbridge-per-task/");
    // The records once the writes made in the background have landed.
    let settled = || loop {
        let seen = records();
        std::thread::sleep(Duration::from_millis(300));
        if records().len() == seen.len() {
            return seen;
        }
    };

    let first = as_task(&leader, "task1aaaaaaaaaaaaaaaaaaaa", &labels);
    assert_eq!(first.json()["DoNotReuse"], true, "{}", first.json());
    assert!(text(&first.value()).contains("BEGIN CERTIFICATE"));
    assert_eq!(issued(), 1);
    // A look for a record, then the write of the new one (in the
    // background: the task is answered first).
    let waited = Instant::now();
    while records().len() < 2 && waited.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let after_first = records();
    assert_eq!(after_first.len(), 2, "{after_first:?}");
    assert!(
        after_first[0].starts_with("read vaultbridge-per-task/data/task1aaaaaaaaaaaaaaaaaaaa/")
    );
    assert!(
        after_first[1].starts_with("create vaultbridge-per-task/data/task1aaaaaaaaaaaaaaaaaaaa/")
    );

    // The failover: the other plugin, asked again for the running task,
    // hands it the same certificate and mints none.
    for _ in 0..2 {
        let again = as_task(&next_leader, "task1aaaaaaaaaaaaaaaaaaaa", &labels);
        assert_eq!(again.value(), first.value(), "{}", again.err());
        assert_eq!(again.json()["DoNotReuse"], true);
    }
    assert_eq!(
        issued(),
        1,
        "a re-ask on another plugin minted a certificate"
    );
    assert!(
        next_leader.log().contains("cache=\"reissued\""),
        "{}",
        next_leader.log()
    );
    // The second re-ask came from its own memory: one read of the record.
    assert_eq!(records().len(), 3, "{:?}", records());

    // A new task on the new leader: its own certificate.
    let second = as_task(&next_leader, "task2bbbbbbbbbbbbbbbbbbbb", &labels);
    assert_ne!(second.value(), first.value());
    assert_eq!(issued(), 2);
    // Another secret of the same task (other labels): its own record.
    let mut other = labels.to_vec();
    other[1] = ("vaultbridge.field", "serial_number");
    let serial = as_task(&next_leader, "task1aaaaaaaaaaaaaaaaaaaa", &other);
    assert!(serial.err().is_empty(), "{}", serial.err());
    assert_eq!(issued(), 3);

    // A KV read is not minted: it never looks for a record.
    let before = settled().len();
    let kv = as_task(
        &leader,
        "task3cccccccccccccccccccc",
        &[
            ("vaultbridge.path", "app/db"),
            ("vaultbridge.field", "password"),
        ],
    );
    assert_eq!(kv.value(), b"kv-pw");
    assert_eq!(records().len(), before);

    // A logical value that is not minted (no lease) is never kept: with
    // `reuse=false` it is read again (no record written); shared, it is
    // looked for once and then served from the cache without a look.
    let cached = Plugin::start(
        Some(&format!(
            "{}cache_ttl = \"60s\"\n",
            toml_provider("v", &{
                let mut c = config.clone();
                c["logical_prefixes"] = json!(["auth/token/lookup-self"]);
                c
            })
        )),
        &[],
    );
    let lookup_self = [
        ("vaultbridge.path", "auth/token/lookup-self"),
        ("vaultbridge.field", "display_name"),
    ];
    let before = settled().len();
    for task in ["task10aaaaaaaaaaaaaaaaaaa", "task11bbbbbbbbbbbbbbbbbbb"] {
        assert_eq!(as_task(&cached, task, &lookup_self).value(), b"token");
    }
    assert_eq!(records().len(), before + 1, "{:?}", records());
    let mut own = lookup_self.to_vec();
    own.push(("vaultbridge.reuse", "false"));
    for task in ["task12ccccccccccccccccccc", "task13ddddddddddddddddddd"] {
        let answer = as_task(&cached, task, &own);
        assert_eq!(answer.value(), b"token");
        assert_eq!(answer.json()["DoNotReuse"], true);
    }
    let written = settled();
    assert!(
        !written.iter().any(|r| r.starts_with("create ")
            && ["task10", "task11", "task12", "task13"]
                .iter()
                .any(|t| r.contains(t))),
        "{written:?}"
    );

    // No label reads the mount: it holds other tasks' credentials.
    let record = after_first[1]
        .split_once(' ')
        .unwrap()
        .1
        .replace("/data/", "/");
    for path in [record.as_str(), "vaultbridge-per-task/x"] {
        let answer = as_task(
            &next_leader,
            "task4dddddddddddddddddddd",
            &[("vaultbridge.path", path)],
        );
        assert_refused(&answer, &["per_task_mount", "no label may read it"]);
    }

    // A record someone else wrote there, broken or expired: a new value,
    // a warning, never a panic.
    let digest = after_first[1].rsplit('/').next().unwrap().to_string();
    for (task, data) in [
        (
            "task5eeeeeeeeeeeeeeeeeeee",
            r#"{"value": "not base64!", "expires": 99999999999}"#,
        ),
        (
            "task6ffffffffffffffffffff",
            r#"{"value": "eA==", "expires": 1}"#,
        ),
        ("task7gggggggggggggggggggg", r#"{"nonsense": 1}"#),
    ] {
        // The digest names the secret's request, not the task.
        let path = format!("vaultbridge-per-task/{task}/{digest}");
        bao.bao_stdin(&["kv", "put", &path, "-"], data);
        let before = issued();
        let answer = as_task(&next_leader, task, &labels);
        assert!(
            text(&answer.value()).contains("BEGIN CERTIFICATE"),
            "{task}: {}",
            answer.err()
        );
        assert_eq!(issued(), before + 1, "{task}");
    }
    let log = next_leader.log();
    assert!(
        log.contains("is not one the plugin wrote") && log.contains("holds no usable value"),
        "{log}"
    );

    // `vaultbridge check` looks at the mount too.
    let check = |config: &Value| vaultbridge_tests::check_cli(&toml_provider("v", config), &[]);
    let (ok, said) = check(&config);
    assert!(
        ok && said.contains("per_task_mount 'vaultbridge-per-task' readable"),
        "{said}"
    );

    // A mount that is not there: every task is still served, and the log
    // says what to do; `check` fails, saying so.
    config["per_task_mount"] = json!("no-such-mount");
    let (ok, said) = check(&config);
    assert!(!ok && said.contains("no-such-mount"), "{said}");
    let unmounted = start_plugin(&config);
    let answer = as_task(&unmounted, "task8hhhhhhhhhhhhhhhhhhhh", &labels);
    assert!(
        text(&answer.value()).contains("BEGIN CERTIFICATE"),
        "{}",
        answer.err()
    );
    assert!(
        unmounted
            .log()
            .contains("the token needs 'read' on 'no-such-mount/data/*'")
            || unmounted.log().contains("Enable it"),
        "{}",
        unmounted.log()
    );
    for plugin in [&leader, &next_leader, &unmounted] {
        assert_log_has_no_values(&plugin.log(), &[&first.value(), &second.value()]);
    }
}

/// AppRole with token TTL 5 s and max TTL 15 s; requests every 100 ms for
/// 45 s through the socket: none fails, and both our log and OpenBao's
/// audit log show renewals and re-logins.
#[tokio::test(flavor = "multi_thread")]
async fn approle_tokens_are_renewed_and_reobtained_without_a_failure() {
    let bao = OpenBao::start();
    reader_policy(&bao);
    kv_put(&bao, "secret/app/db", &["password=approle-pw-4242"]);
    let role_id = enable_approle(&bao, "app", "5s", Some("15s"));
    let secret_id = approle_secret_id(&bao, "app");
    let config = approle_config(&bao, &role_id, &secret_id);
    let plugin = start_plugin(&config);
    let labels = [
        ("vaultbridge.path", "app/db"),
        ("vaultbridge.field", "password"),
    ];
    let started = Instant::now();
    let mut failures = Vec::new();
    let mut count = 0;
    while started.elapsed() < Duration::from_secs(45) {
        let answer = ask(&plugin, &labels);
        count += 1;
        if answer.err() != "" || answer.value() != b"approle-pw-4242" {
            failures.push(format!("{:?}: {}", started.elapsed(), answer.err()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = plugin.log();
    assert!(
        failures.is_empty(),
        "{} of {count} failed: {failures:?}\nlog:\n{log}",
        failures.len()
    );
    assert!(count > 200, "only {count} requests");
    let renewals = log.matches("vault token renewed").count();
    let relogins = log.matches("max TTL reached); logging in again").count();
    let logins = log.matches("vault login").count();
    eprintln!("{count} requests, {logins} logins, {renewals} renewals, {relogins} re-logins");
    assert!(renewals >= 4, "renewals: {renewals}\n{log}");
    assert!(
        relogins >= 2 && logins >= 3,
        "re-logins: {relogins}, logins: {logins}\n{log}"
    );
    assert_eq!(
        bao.audit_count("auth/approle/login"),
        logins,
        "server-side logins"
    );
    assert!(bao.audit_count("auth/token/renew-self") >= renewals);
    assert_log_has_no_values(&log, &[b"approle-pw-4242", secret_id.trim().as_bytes()]);
}

/// Concurrent first requests share ONE login; a response-wrapped secret_id
/// works once and a used wrapping token is an authentication error.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_requests_share_one_login_and_wrapped_secret_ids_work() {
    let bao = OpenBao::start();
    reader_policy(&bao);
    kv_put(&bao, "secret/app/db", &["password=shared-login-pw"]);
    let role_id = enable_approle(&bao, "app", "1h", None);
    let wrapping = wrapped_approle_secret_id(&bao, "app", "120s");
    let mut config = approle_config(&bao, &role_id, &wrapping);
    config["auth"]["secret_id_wrapped"] = json!(true);
    let p = direct(&config).await;
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let p = p.clone();
            tokio::spawn(async move { fetch(&p, "app/db", None).await })
        })
        .collect();
    for task in tasks {
        let (value, _) = task.await.unwrap().unwrap();
        assert_eq!(value, br#"{"password":"shared-login-pw"}"#);
    }
    assert_eq!(
        bao.audit_count("auth/approle/login"),
        1,
        "one login for 20 requests"
    );
    assert_eq!(bao.audit_count("sys/wrapping/unwrap"), 1);
    assert!(p.check().await.unwrap().contains("reader"));

    // The wrapping token was used: another instance cannot log in with it.
    let p2 = direct(&config).await;
    let err = fetch(&p2, "app/db", None).await.unwrap_err();
    assert_error(&err, ProviderError::Unauthenticated, &["already used"]);
    let plugin = start_plugin(&config);
    let answer = ask(&plugin, &[("vaultbridge.path", "app/db")]);
    assert_refused(&answer, &["authentication failed"]);
    assert_log_has_no_values(&plugin.log(), &[wrapping.trim().as_bytes()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn jwt_login_with_a_generated_key_pair() {
    let bao = OpenBao::start();
    reader_policy(&bao);
    kv_put(&bao, "secret/app/jwt", &["token=jwt-guarded-value"]);
    let dir = bao.dir.path();
    openbao::openssl(
        dir,
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            "jwt-key.pem",
        ],
    );
    openbao::openssl(
        dir,
        &[
            "pkey",
            "-in",
            "jwt-key.pem",
            "-pubout",
            "-out",
            "jwt-pub.pem",
        ],
    );
    bao.bao(&["auth", "enable", "jwt"]);
    bao.bao(&[
        "write",
        "auth/jwt/config",
        &format!(
            "jwt_validation_pubkeys=@{}",
            dir.join("jwt-pub.pem").display()
        ),
    ]);
    bao.bao(&[
        "write",
        "auth/jwt/role/app",
        "role_type=jwt",
        "bound_audiences=vaultbridge",
        "user_claim=sub",
        "token_policies=reader",
        "token_ttl=1h",
    ]);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let jwt = openbao::sign_jwt(
        dir,
        &dir.join("jwt-key.pem"),
        &json!({"sub": "svc-app", "aud": "vaultbridge", "iat": now, "nbf": now - 5, "exp": now + 600}),
    );
    let jwt_config = |role: &str, jwt_file: &Path| {
        json!({"address": bao.addr, "auth": {"method": "jwt", "role": role,
            "jwt_file": jwt_file}})
    };
    let jwt_file = bao.file("jwt", jwt.as_bytes());
    let config = jwt_config("app", &jwt_file);
    let p = direct(&config).await;
    assert_eq!(
        fetch(&p, "app/jwt", None).await.unwrap().0,
        br#"{"token":"jwt-guarded-value"}"#
    );
    let plugin = start_plugin(&config);
    assert_eq!(ask_field(&plugin, "app/jwt", "token"), b"jwt-guarded-value");
    assert!(
        plugin.log().contains("jwt login at auth/jwt, role 'app'"),
        "{}",
        plugin.log()
    );

    // The JWT file is read again at each login: a refused JWT, then a
    // rotated valid one in the same file, works without a restart.
    let rotating = bao.file("jwt-rotating", b"not.a.jwt");
    let later = direct(&jwt_config("app", &rotating)).await;
    let err = fetch(&later, "app/jwt", None).await.unwrap_err();
    assert_error(&err, ProviderError::Unauthenticated, &[]);
    std::fs::write(&rotating, &jwt).unwrap();
    // A login already under way (the background task's retry) may have
    // read the old file; a request that waited for it shares its error.
    // The next login reads the new one.
    let started = Instant::now();
    while fetch(&later, "app/jwt", None).await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the rotated JWT was never used"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A role the JWT does not satisfy: an authentication error.
    let err = fetch_once(&jwt_config("nope", &jwt_file), "app/jwt")
        .await
        .unwrap_err();
    assert_error(&err, ProviderError::Unauthenticated, &["role 'nope'"]);
    assert_log_has_no_values(&plugin.log(), &[b"jwt-guarded-value", jwt.as_bytes()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn userpass_login() {
    let bao = OpenBao::start();
    reader_policy(&bao);
    kv_put(&bao, "secret/app/u", &["k=userpass-value"]);
    bao.bao(&["auth", "enable", "userpass"]);
    bao.bao(&[
        "write",
        "auth/userpass/users/svc",
        "password=pass-word-123",
        "token_policies=reader",
    ]);
    let svc_config = |password_file: PathBuf| {
        json!({"address": bao.addr, "auth": {"method": "userpass", "username": "svc",
            "password_file": password_file}})
    };
    let config = svc_config(bao.file("password", b"pass-word-123\n"));
    let plugin = start_plugin(&config);
    assert_eq!(ask_field(&plugin, "app/u", "k"), b"userpass-value");
    let wrong = svc_config(bao.file("wrong", b"nope\n"));
    let err = fetch_once(&wrong, "app/u").await.unwrap_err();
    assert_error(&err, ProviderError::Unauthenticated, &["user 'svc'"]);
    // The background login at start-up reports a bad credential without
    // waiting for a request.
    let wrong_plugin = start_plugin(&wrong);
    let reported = vaultbridge_tests::wait_until(Duration::from_secs(10), || {
        wrong_plugin.log().contains("start-up login failed")
    });
    assert!(reported, "{}", wrong_plugin.log());
    assert_log_has_no_values(&plugin.log(), &[b"pass-word-123"]);
}

/// `bao server -dev -dev-tls`: cert auth, CA pinning, the TLS server name.
#[tokio::test(flavor = "multi_thread")]
async fn cert_auth_and_ca_pinning_over_tls() {
    let bao = OpenBao::start_tls();
    reader_policy(&bao);
    kv_put(&bao, "secret/app/tls", &["k=over-tls-value"]);
    let dir = bao.dir.path();
    openbao::client_certificate(dir, "vaultbridge-client");
    bao.bao(&["auth", "enable", "cert"]);
    bao.bao(&[
        "write",
        "auth/cert/certs/web",
        &format!("certificate=@{}", dir.join("client-ca.pem").display()),
        "token_policies=reader",
        "token_ttl=1h",
    ]);
    let ca = bao.ca_cert.clone().unwrap();
    let config = json!({
        "address": bao.addr,
        "ca_file": ca,
        "client_cert": dir.join("client.pem"),
        "client_key": dir.join("client-key.pem"),
        "auth": {"method": "cert", "name": "web"},
    });
    let p = direct(&config).await;
    assert_eq!(
        fetch(&p, "app/tls", None).await.unwrap().0,
        br#"{"k":"over-tls-value"}"#
    );
    assert!(
        p.check()
            .await
            .unwrap()
            .contains("cert login at auth/cert, role 'web'")
    );
    // The login certificate may also be given under auth only.
    let own = json!({
        "address": bao.addr, "ca_file": ca,
        "auth": {"method": "cert", "name": "web", "client_cert": dir.join("client.pem"),
                 "client_key": dir.join("client-key.pem")},
    });
    assert!(fetch_once(&own, "app/tls").await.is_ok());

    let root = bao.file("root-token", b"root");
    let with = |extra: Value| {
        let mut c = token_config(&bao, &root);
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    // Pinning: the server's CA only; another CA or the system roots fail.
    let wrong_ca = with(json!({"ca_file": dir.join("client-ca.pem")}));
    let err = fetch_once(&wrong_ca, "app/tls").await.unwrap_err();
    assert_error(&err, ProviderError::unavailable, &["TLS"]);
    let system_roots = with(json!({}));
    let err = fetch_once(&system_roots, "app/tls").await.unwrap_err();
    assert_error(&err, ProviderError::unavailable, &["TLS"]);
    // tls_server_name: the certificate names localhost, not vault.wrong.test.
    let named = with(json!({"ca_file": ca, "tls_server_name": "localhost"}));
    assert!(fetch_once(&named, "app/tls").await.is_ok());
    let misnamed = with(json!({"ca_file": ca, "tls_server_name": "vault.wrong.test"}));
    let err = fetch_once(&misnamed, "app/tls").await.unwrap_err();
    assert_error(&err, ProviderError::unavailable, &["TLS"]);
    // Skipping verification only when asked.
    let skip = with(json!({"tls_skip_verify": true}));
    assert!(fetch_once(&skip, "app/tls").await.is_ok());

    let plugin = start_plugin(&config);
    assert_eq!(ask_field(&plugin, "app/tls", "k"), b"over-tls-value");
    let pinned_wrong = start_plugin_with(&wrong_ca, &[("deadline", "2s")]);
    let answer = ask(&pinned_wrong, &[("vaultbridge.path", "app/tls")]);
    assert_refused(&answer, &["backend unavailable", "ca_file"]);
    let skipping = start_plugin(&skip);
    assert_eq!(ask_field(&skipping, "app/tls", "k"), b"over-tls-value");
    assert!(
        skipping.log().contains("tls_skip_verify = true"),
        "{}",
        skipping.log()
    );

    // No config file: the CLI's variables, mTLS and the server name
    // included. VAULT_SKIP_VERIFY is ignored (vaultrs alone would skip).
    let ca_text = ca.display().to_string();
    let cert_text = dir.join("client.pem").display().to_string();
    let key_text = dir.join("client-key.pem").display().to_string();
    let from_env = Plugin::start(
        None,
        &[
            ("VAULT_ADDR", &bao.addr),
            ("VAULT_TOKEN", "root"),
            ("VAULT_CACERT", &ca_text),
            ("VAULT_TLS_SERVER_NAME", "localhost"),
            ("VAULT_CLIENT_CERT", &cert_text),
            ("VAULT_CLIENT_KEY", &key_text),
        ],
    );
    assert_eq!(ask_field(&from_env, "app/tls", "k"), b"over-tls-value");
    let unverified = Plugin::start(
        None,
        &[
            ("VAULT_ADDR", &bao.addr),
            ("VAULT_TOKEN", "root"),
            ("VAULT_SKIP_VERIFY", "true"),
            ("VAULTBRIDGE_DEADLINE", "2s"),
        ],
    );
    let answer = ask(&unverified, &[("vaultbridge.path", "app/tls")]);
    assert_refused(&answer, &["TLS"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_denying_policy_gives_permission_denied_naming_the_path() {
    let bao = OpenBao::start();
    reader_policy(&bao);
    kv_put(&bao, "secret/other/db", &["pw=forbidden-value"]);
    kv_put(&bao, "secret/app/ok", &["pw=allowed-value"]);
    let token = reader_token(&bao);
    let config = token_config(&bao, &bao.file("t", token.as_bytes()));
    let p = direct(&config).await;
    assert!(fetch(&p, "app/ok", None).await.is_ok());
    let err = fetch(&p, "other/db", None).await.unwrap_err();
    assert_error(
        &err,
        ProviderError::Denied,
        &["'other/db'", "secret/data/other/db"],
    );
    let message = err.to_string();
    assert!(
        message.contains("[default, reader]") || message.contains("reader"),
        "{message}"
    );

    let plugin = start_plugin(&config);
    let answer = ask(&plugin, &[("vaultbridge.path", "other/db")]);
    assert_refused(&answer, &["access denied", "other/db"]);
    assert!(plugin.log().contains("denied"), "{}", plugin.log());
    assert_log_has_no_values(
        &plugin.log(),
        &[b"forbidden-value", token.trim().as_bytes()],
    );
}

/// A token that stops working (revoked) is replaced by re-reading the
/// token file and retried once; a still-valid token's 403 is not retried.
#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_token_is_replaced_from_its_file_and_the_read_retried() {
    let bao = OpenBao::start();
    reader_policy(&bao);
    kv_put(&bao, "secret/app/r", &["pw=retry-value"]);
    let first = reader_token(&bao);
    let file = bao.file("token", first.as_bytes());
    let config = token_config(&bao, &file);
    let p = direct(&config).await;
    assert!(fetch(&p, "app/r", None).await.is_ok());
    bao.bao(&["token", "revoke", first.trim()]);
    let second = reader_token(&bao);
    std::fs::write(&file, &second).unwrap();
    assert_eq!(
        fetch(&p, "app/r", None).await.unwrap().0,
        br#"{"pw":"retry-value"}"#
    );
    // Denied with a valid token: one lookup-self to tell, no re-login.
    let lookups = bao.audit_count("auth/token/lookup-self");
    assert!(matches!(
        fetch(&p, "forbidden/x", None).await,
        Err(ProviderError::Denied(_))
    ));
    assert_eq!(bao.audit_count("auth/token/lookup-self"), lookups + 1);
}

/// A stopped server, and one that accepts but never answers: an
/// "unavailable" answer well within the provider's timeout, never a hang.
#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_or_hung_server_is_unavailable_within_the_deadline() {
    let mut bao = OpenBao::start();
    kv_put(&bao, "secret/app/db", &["pw=before-stop"]);
    let mut config = root_config(&bao);
    config["timeout"] = json!("3s");
    let p = direct(&config).await;
    // The plugin retries "unavailable" until its deadline: keep it short.
    let plugin = start_plugin_with(&config, &[("deadline", "3s")]);
    assert!(fetch(&p, "app/db", None).await.is_ok());
    assert_eq!(ask_field(&plugin, "app/db", "pw"), b"before-stop");
    bao.kill();

    let started = Instant::now();
    let err = fetch(&p, "app/db", None).await.unwrap_err();
    assert_took_less_than(started, 6);
    assert_error(&err, ProviderError::unavailable, &[&bao.addr]);
    let started = Instant::now();
    let answer = ask(&plugin, &[("vaultbridge.path", "app/db")]);
    assert_took_less_than(started, 5);
    assert_refused(&answer, &["backend unavailable"]);
    assert!(plugin.log().contains("unavailable"), "{}", plugin.log());

    let hole = BlackHole::start();
    let mut hung = token_config(&bao, &bao.file("root-token", b"root"));
    hung["address"] = json!(format!("http://127.0.0.1:{}", hole.port));
    hung["timeout"] = json!("2s");
    let started = Instant::now();
    let err = fetch_once(&hung, "app/db").await.unwrap_err();
    assert_took_less_than(started, 4);
    assert_error(&err, ProviderError::unavailable, &["in time"]);
    let hung_plugin = start_plugin_with(&hung, &[("deadline", "3s")]);
    let started = Instant::now();
    let answer = ask(&hung_plugin, &[("vaultbridge.path", "app/db")]);
    assert_took_less_than(started, 5);
    assert_refused(&answer, &["backend unavailable"]);
}

/// No config file: `VAULT_ADDR` (+ `VAULT_TOKEN`) alone make a provider
/// named `vault`; `vaultbridge check` logs in and looks the token up.
#[tokio::test(flavor = "multi_thread")]
async fn vault_addr_alone_makes_a_provider_and_check_proves_login() {
    let bao = OpenBao::start();
    kv_put(&bao, "secret/app/env", &["pw=from-env-config"]);
    let plugin = Plugin::start(
        None,
        &[
            ("VAULT_ADDR", &bao.addr),
            ("VAULT_TOKEN", "root"),
            ("VAULT_SKIP_VERIFY", "true"),
        ],
    );
    let answer = ask(
        &plugin,
        &[
            ("vaultbridge.provider", "vault"),
            ("vaultbridge.path", "app/env"),
            ("vaultbridge.field", "pw"),
        ],
    );
    assert_eq!(answer.value(), b"from-env-config");
    assert!(plugin.started.elapsed() > Duration::ZERO);

    let check = |config: &Value| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, toml_provider("v", config)).unwrap();
        let out = std::process::Command::new(vaultbridge_tests::binary())
            .arg("check")
            .arg("--config")
            .arg(&path)
            .env_clear()
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (ok, out) = check(&root_config(&bao));
    assert!(ok, "{out}");
    assert!(
        out.contains("authenticated (token from") && out.contains("policies [root]"),
        "{out}"
    );
    let bad = token_config(&bao, &bao.file("bad", b"s.not-a-token"));
    let (ok, out) = check(&bad);
    assert!(!ok, "{out}");
    assert!(
        out.contains("FAIL") && out.contains("invalid, revoked or expired"),
        "{out}"
    );
    assert!(!out.contains("s.not-a-token"), "{out}");
}

/// `namespace` sends `X-Vault-Namespace` (OpenBao has namespaces too); a
/// sealed server is "unavailable" saying so.
#[tokio::test(flavor = "multi_thread")]
async fn namespaces_and_a_sealed_server() {
    let bao = OpenBao::start();
    bao.bao(&["namespace", "create", "team"]);
    let in_team = |args: &[&str]| {
        let out = bao
            .command(args)
            .env("BAO_NAMESPACE", "team")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    in_team(&["secrets", "enable", "-path=secret", "kv-v2"]);
    in_team(&["kv", "put", "secret/app/ns", "k=in-the-team-namespace"]);
    let mut config = root_config(&bao);
    config["namespace"] = json!("team");
    let p = direct(&config).await;
    assert_eq!(
        fetch(&p, "app/ns", None).await.unwrap().0,
        br#"{"k":"in-the-team-namespace"}"#
    );
    assert!(p.check().await.unwrap().contains("namespace 'team'"));
    let root = direct(&root_config(&bao)).await;
    assert!(matches!(
        fetch(&root, "app/ns", None).await,
        Err(ProviderError::NotFound(_))
    ));
    let plugin = start_plugin(&config);
    assert_eq!(ask_field(&plugin, "app/ns", "k"), b"in-the-team-namespace");

    bao.bao(&["operator", "seal"]);
    let err = fetch(&root, "app/ns", None).await.unwrap_err();
    assert_error(&err, ProviderError::unavailable, &["is sealed"]);
    let sealed_plugin = start_plugin_with(&config, &[("deadline", "2s")]);
    let answer = ask(&sealed_plugin, &[("vaultbridge.path", "app/ns")]);
    assert_refused(&answer, &["sealed"]);
}

/// Labels chosen by whoever creates a secret cannot leave the configured
/// prefixes: dot segments, percent escapes and the like are refused before
/// any request, so Vault never sees them (its audit log proves it), and
/// fields come back exactly as stored.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_paths_never_reach_vault_and_fields_keep_their_text() {
    let bao = OpenBao::start();
    bao.bao_stdin(
        &["kv", "put", "secret/app/nums", "-"],
        r#"{"big": 123456789012345678901234567890, "f": 1.10, "s": "x"}"#,
    );
    let mut config = root_config(&bao);
    config["logical_prefixes"] = json!(["database/creds/"]);
    config["logical_write_prefixes"] = json!(["pki/issue/"]);
    let plugin = start_plugin(&config);
    // One good read first: the login (a token lookup-self) is behind us.
    // OpenBao's KV engine itself stores numbers as float64; the plugin
    // returns its text unchanged (a serde_json::Value would print `e29`).
    assert_eq!(
        ask_field(&plugin, "app/nums", "big"),
        b"1.2345678901234568e+29"
    );
    assert_eq!(ask_field(&plugin, "app/nums", "f"), b"1.1");
    let watched = [
        "auth/token/lookup-self",
        "sys/policy/evil",
        "auth/token/create",
    ];
    let before: Vec<usize> = watched.iter().map(|p| bao.audit_count(p)).collect();
    for path in [
        "database/creds/../../auth/token/lookup-self",
        "database/creds/./../../auth/token/lookup-self",
        "database/creds/%2e%2e/%2e%2e/auth/token/lookup-self",
        "database/creds/%2E%2E%2F%2E%2E%2Fauth/token/lookup-self",
        "database/creds/..\\..\\auth/token/lookup-self",
        "database/creds//../auth/token/lookup-self",
        "pki/issue/../../sys/policy/evil?policy=path",
        "pki/issue/web?common_name=a&x=1#/../../../sys/policy/evil",
        "database/creds/ro\n../../auth/token/lookup-self",
        "/auth/token/lookup-self",
    ] {
        let answer = ask(&plugin, &[("vaultbridge.path", path)]);
        let err = answer.err();
        assert!(err.contains("vaultbridge.path"), "{path:?}: {err}");
        assert!(answer.json().get("Value").is_none(), "{path:?}");
        assert!(!err.contains('\n'), "{err}");
    }
    let after: Vec<usize> = watched.iter().map(|p| bao.audit_count(p)).collect();
    assert_eq!(after, before, "requests reached {watched:?}");
    assert!(!plugin.log().contains("root\""), "the token never shows");
}

/// A token with a trailing newline is trimmed; one with a control character
/// inside, or a namespace with a newline, is refused at start naming the
/// setting (it used to panic inside the HTTP client on every request).
#[tokio::test(flavor = "multi_thread")]
async fn header_values_are_trimmed_or_refused_at_start() {
    let bao = OpenBao::start();
    kv_put(&bao, "secret/app/db", &["password=pw"]);
    let env = [("VAULT_ADDR", bao.addr.as_str()), ("VAULT_TOKEN", "root\n")];
    let plugin = Plugin::start(None, &env);
    assert_eq!(ask_field(&plugin, "app/db", "password"), b"pw");
    drop(plugin);

    let addr = bao.addr.as_str();
    let cases: [(&[(&str, &str)], &str); 2] = [
        (
            &[("VAULT_ADDR", addr), ("VAULT_TOKEN", "ro\u{1}ot")],
            "VAULT_TOKEN",
        ),
        (
            &[
                ("VAULT_ADDR", addr),
                ("VAULT_TOKEN", "root"),
                ("VAULT_NAMESPACE", "team\nx"),
            ],
            "providers.vault.namespace",
        ),
    ];
    for (env, key) in cases {
        let mut plugin = Plugin::spawn(None, env, &[]);
        let status = plugin.wait_exit(Duration::from_secs(10)).expect("exits");
        assert!(!status.success());
        let log = plugin.log();
        assert!(log.contains(key), "{key}: {log}");
        assert!(!log.contains("panicked"), "{log}");
        assert!(!log.contains("ro\u{1}ot"), "{log}");
    }

    let token = bao.file("token", b"ro\x07ot\n");
    let mut plugin = Plugin::spawn(
        Some(&toml_provider("v", &token_config(&bao, &token))),
        &[],
        &[],
    );
    plugin.wait_exit(Duration::from_secs(10)).expect("exits");
    assert!(plugin.log().contains("auth.token_file"), "{}", plugin.log());
}

/// Issue 13 item 3: a least-privilege token (`no_default_policy`, a policy
/// that may read ONE secret and nothing else, not even lookup-self) is
/// accepted: the read works directly and through the real binary, another
/// path is denied naming the missing capability, and `check` says what it
/// could not verify. A revoked token is still unauthenticated.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_that_cannot_look_itself_up_serves_what_its_policy_allows() {
    let bao = OpenBao::start();
    kv_put(&bao, "secret/app/one", &["pw=least-privilege-pw"]);
    kv_put(&bao, "secret/app/two", &["pw=not-for-this-token"]);
    bao.bao_stdin(
        &["policy", "write", "only-one", "-"],
        r#"path "secret/data/app/one" { capabilities = ["read"] }"#,
    );
    let token = bao.bao(&[
        "token",
        "create",
        "-no-default-policy",
        "-policy=only-one",
        "-field=token",
    ]);
    let config = token_config(&bao, &bao.file("least", token.as_bytes()));
    let p = direct(&config).await;
    assert_eq!(
        fetch(&p, "app/one", None).await.unwrap().0,
        br#"{"pw":"least-privilege-pw"}"#
    );
    let err = fetch(&p, "app/two", None).await.unwrap_err();
    assert_error(
        &err,
        ProviderError::Denied,
        &[
            "lacks 'read' on Vault API path 'secret/data/app/two'",
            "its policy must allow it",
        ],
    );
    let report = p.check().await.unwrap();
    assert!(
        report.contains("token accepted")
            && report.contains("cannot introspect it (lookup-self denied)")
            && report.contains("TTL and renewal unknown"),
        "{report}"
    );
    assert!(!report.contains(token.trim()), "{report}");

    // Through the real binary and its socket.
    let plugin = start_plugin(&config);
    assert_eq!(
        ask_field(&plugin, "app/one", "pw"),
        b"least-privilege-pw".to_vec()
    );
    assert_refused(
        &ask(&plugin, &[("vaultbridge.path", "app/two")]),
        &["lacks 'read'", "secret/data/app/two"],
    );
    assert_log_has_no_values(
        &plugin.log(),
        &[
            b"least-privilege-pw",
            b"not-for-this-token",
            token.trim().as_bytes(),
        ],
    );

    // Allowed renew-self but not lookup-self: the TTL is learnt from
    // renewal and the token is kept alive past it with no traffic.
    bao.bao_stdin(
        &["policy", "write", "one-and-renew", "-"],
        r#"path "secret/data/app/one" { capabilities = ["read"] }
           path "auth/token/renew-self" { capabilities = ["update"] }"#,
    );
    let renewing = bao.bao(&[
        "token",
        "create",
        "-no-default-policy",
        "-policy=one-and-renew",
        "-ttl=3s",
        "-explicit-max-ttl=60s",
        "-field=token",
    ]);
    let renewing_config = token_config(&bao, &bao.file("renewing", renewing.as_bytes()));
    let r = direct(&renewing_config).await;
    let report = r.check().await.unwrap();
    assert!(
        report.contains("cannot introspect it")
            && report.contains("learnt from renew-self, renewed in the background"),
        "{report}"
    );
    let renewals = bao.audit_count("auth/token/renew-self");
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        bao.audit_count("auth/token/renew-self") > renewals,
        "renewed while idle"
    );
    assert_eq!(
        fetch(&r, "app/one", None).await.unwrap().0,
        br#"{"pw":"least-privilege-pw"}"#,
        "alive after more than its TTL"
    );

    // Revoked: lookup-self and the read both say 403, yet it is an
    // authentication error, not "cannot introspect".
    bao.bao(&["token", "revoke", token.trim()]);
    let err = fetch(&p, "app/one", None).await.unwrap_err();
    assert_error(
        &err,
        ProviderError::Unauthenticated,
        &["invalid, revoked or expired"],
    );
    let err = fetch_once(&config, "app/one").await.unwrap_err();
    assert_error(
        &err,
        ProviderError::Unauthenticated,
        &["invalid, revoked or expired"],
    );
}

/// Issue 13 item 4: the credential is kept alive with no traffic. AppRole
/// tokens live 6 s (max 60 s); after one read nothing is asked for 14 s
/// (more than two TTLs), then a read succeeds, OpenBao's audit log shows
/// the renewals made while idle, and the read's path has no login.
#[tokio::test(flavor = "multi_thread")]
async fn an_idle_provider_keeps_its_token_alive_in_the_background() {
    let bao = OpenBao::start();
    reader_policy(&bao);
    kv_put(&bao, "secret/app/idle", &["pw=idle-pw-77"]);
    let role_id = enable_approle(&bao, "app", "6s", Some("60s"));
    let secret_id = approle_secret_id(&bao, "app");
    let config = approle_config(&bao, &role_id, &secret_id);
    let p = direct(&config).await;
    assert_eq!(
        fetch(&p, "app/idle", None).await.unwrap().0,
        br#"{"pw":"idle-pw-77"}"#
    );
    let logins = bao.audit_count("auth/approle/login");
    let renewals = bao.audit_count("auth/token/renew-self");
    assert_eq!(logins, 1, "one login at start");
    std::thread::sleep(Duration::from_secs(14));
    let renewed_while_idle = bao.audit_count("auth/token/renew-self") - renewals;
    assert_eq!(
        bao.audit_count("auth/approle/login"),
        logins,
        "no login while idle (max TTL not reached)"
    );
    // Renewal at 2/3 of 6 s: about one every 4 s (2 s of margin before
    // expiry, for a busy CI machine).
    assert!(
        (2..=6).contains(&renewed_while_idle),
        "renewals while idle: {renewed_while_idle}"
    );
    let started = Instant::now();
    assert_eq!(
        fetch(&p, "app/idle", None).await.unwrap().0,
        br#"{"pw":"idle-pw-77"}"#
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(
        bao.audit_count("auth/approle/login"),
        logins,
        "no login on the read's path"
    );
    eprintln!("{renewed_while_idle} renewals in 14 s idle, {logins} login");

    // Dropped: the background task stops with the provider.
    drop(p);
    std::thread::sleep(Duration::from_millis(200));
    let after_drop = bao.audit_count("auth/token/renew-self");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        bao.audit_count("auth/token/renew-self"),
        after_drop,
        "no renewal after the provider is dropped"
    );
}
