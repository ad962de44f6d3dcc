//! The plugin on the machine's real Docker engine, as a managed plugin:
//! issue 6's steps 1-7, in order, in one test (they share one swarm, one
//! plugin and one cleanup guard). Every step is asserted with a deadline;
//! [`Session`]'s `Drop` removes everything created, even when a step fails.
//!
//! Needs root, a running dockerd whose swarm is inactive, and what
//! `tests/setup.sh` installs (busybox-static, docker-registry). Backends
//! other than `file` join by adding a [`BackendCase`] to `backends()`.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use vaultbridge_tests::assert_log_has_no_values;
use vaultbridge_tests::docker::{
    ALIAS, BackendCase, Labels, PerTaskCase, ServiceSpec, Session, TaskReport, docker_ok,
    docker_try, http_get_body, labels, poll, workload_compose_command,
};

/// Converging a service: image is local, so seconds; generous for slow CI.
const CONVERGE: Duration = Duration::from_secs(90);

/// The `file` backend: files under `<config mount>/secrets`, served from
/// `/etc/vaultbridge/secrets` inside the plugin.
fn file_backend(session: &Session) -> BackendCase {
    let secrets = session.path("config/secrets");
    std::fs::create_dir_all(secrets.join("app")).expect("mkdir secrets");
    let password = format!("file-pw-{}-\u{e9}\u{2603}", session.id);
    let db = format!(r#"{{"user":"app","password":"{password}"}}"#);
    std::fs::write(secrets.join("app/db.json"), &db).expect("write secret");
    // The stack's secret `db` (named `<stack>_db`) reads path `db`.
    std::fs::write(secrets.join("db"), &db).expect("write secret");
    // Binary bytes (NUL, newline, high bytes) must arrive exactly.
    let binary: Vec<u8> = [
        b"\x00\x01bin\n".as_slice(),
        session.id.as_bytes(),
        b"\xff\xfe",
    ]
    .concat();
    std::fs::write(secrets.join("app/blob"), &binary).expect("write secret");
    BackendCase {
        provider: "local".into(),
        config_toml: "[providers.local]\ntype = \"file\"\nroot = \"/etc/vaultbridge/secrets\"\n"
            .into(),
        secret: labels(&[
            ("vaultbridge.provider", "local"),
            ("vaultbridge.path", "app/db.json"),
            ("vaultbridge.field", "password"),
        ]),
        expected: password.clone().into_bytes(),
        per_task: Some(PerTaskCase {
            labels: labels(&[
                ("vaultbridge.provider", "local"),
                ("vaultbridge.path", "app/blob"),
                ("vaultbridge.reuse", "false"),
            ]),
            // A file has one value: the suite checks DoNotReuse was answered
            // per task. A Vault lease backend gives `None` here.
            same_value: Some(binary.clone()),
        }),
        missing: labels(&[
            ("vaultbridge.provider", "local"),
            ("vaultbridge.path", "app/does-not-exist"),
        ]),
        missing_reason: vec!["outcome=\"not_found\"".into(), "app/does-not-exist".into()],
        values: vec![password.into_bytes(), db.into_bytes(), binary],
        settings: Vec::new(),
        server: None,
    }
}

/// Vault through a real OpenBao dev server, reached by a host name (a line
/// added to /etc/hosts), with the token in a file in the mount. Its per-task
/// secret is a new token per call (`auth/token/create`), so the two
/// replicas of step 4 must see different values.
#[cfg(feature = "vault")]
fn vault_backend(session: &mut Session) -> BackendCase {
    use vaultbridge_tests::openbao::OpenBao;
    let bao = OpenBao::start();
    let host = format!("openbao-{}.vaultbridge.test", session.id);
    session.add_host(&host, "127.0.0.1");
    let password = format!("bao-pw-{}", session.id);
    bao.bao(&[
        "kv",
        "put",
        "secret/app/db",
        "user=app",
        &format!("password={password}"),
    ]);
    std::fs::write(session.path("config/bao-token"), "root\n").expect("write token file");
    BackendCase {
        provider: "bao".into(),
        config_toml: format!(
            "[providers.bao]\ntype = \"vault\"\naddress = \"http://{host}:{}\"\n\
             logical_write_prefixes = [\"auth/token/create\"]\n\
             [providers.bao.auth]\nmethod = \"token\"\ntoken_file = \"/etc/vaultbridge/bao-token\"\n",
            bao.port
        ),
        secret: labels(&[
            ("vaultbridge.provider", "bao"),
            ("vaultbridge.path", "app/db"),
            ("vaultbridge.field", "password"),
        ]),
        expected: password.clone().into_bytes(),
        per_task: Some(PerTaskCase {
            labels: labels(&[
                ("vaultbridge.provider", "bao"),
                (
                    "vaultbridge.path",
                    "auth/token/create?policies=default&ttl=10m",
                ),
                ("vaultbridge.field", "client_token"),
            ]),
            same_value: None,
        }),
        missing: labels(&[
            ("vaultbridge.provider", "bao"),
            ("vaultbridge.path", "app/does-not-exist"),
        ]),
        missing_reason: vec!["outcome=\"not_found\"".into(), "app/does-not-exist".into()],
        values: vec![password.into_bytes()],
        settings: Vec::new(),
        server: Some(Box::new(bao)),
    }
}

/// AWS Secrets Manager through moto, with credentials in a shared
/// credentials file in the mount (`AWS_SHARED_CREDENTIALS_FILE`).
#[cfg(feature = "aws")]
fn aws_backend(session: &mut Session) -> BackendCase {
    use vaultbridge_tests::moto::Moto;
    const REGION: &str = "eu-west-1";
    let moto = Moto::start();
    let password = format!("aws-pw-{}", session.id);
    moto.create_string(
        REGION,
        "app/db",
        &format!(r#"{{"user":"app","password":"{password}"}}"#),
    );
    let key_secret = format!("aws-key-secret-{}", session.id);
    std::fs::write(
        session.path("config/aws-credentials"),
        format!("[default]\naws_access_key_id = AKIAVBE2E\naws_secret_access_key = {key_secret}\n"),
    )
    .expect("write credentials file");
    BackendCase {
        provider: "aws".into(),
        config_toml: format!(
            "[providers.aws]\ntype = \"aws\"\nregion = \"{REGION}\"\nendpoint_url = \"{}\"\n",
            moto.endpoint
        ),
        secret: labels(&[
            ("vaultbridge.provider", "aws"),
            ("vaultbridge.path", "app/db"),
            ("vaultbridge.field", "password"),
        ]),
        expected: password.clone().into_bytes(),
        per_task: None,
        missing: labels(&[
            ("vaultbridge.provider", "aws"),
            ("vaultbridge.path", "app/does-not-exist"),
        ]),
        missing_reason: vec!["outcome=\"not_found\"".into(), "app/does-not-exist".into()],
        values: vec![password.into_bytes(), key_secret.into_bytes()],
        settings: vec!["AWS_SHARED_CREDENTIALS_FILE=/etc/vaultbridge/aws-credentials".into()],
        server: Some(Box::new(moto)),
    }
}

/// Azure Key Vault through the TLS double, reached as
/// `vbtest.vault.azure.net` (its harness adds the /etc/hosts line), with the
/// test CA and the client secret as files in the mount.
#[cfg(feature = "azure")]
fn azure_backend(session: &mut Session) -> BackendCase {
    use vaultbridge_tests::azure_double::AzureDouble;
    let double = AzureDouble::start();
    let tenant = AzureDouble::unique("tenant");
    let client_id = AzureDouble::unique("app");
    let client_secret = format!("azure-client-secret-{}", session.id);
    double.add_client(&tenant, &client_id, &client_secret, 3600);
    let password = format!("azure-pw-{}", session.id);
    double.add_version(
        "vbtest",
        "app-db",
        &format!(r#"{{"user":"app","password":"{password}"}}"#),
    );
    std::fs::copy(double.ca_file(), session.path("config/azure-ca.pem")).expect("copy CA");
    std::fs::write(
        session.path("config/azure-client-secret"),
        format!("{client_secret}\n"),
    )
    .expect("write client secret file");
    BackendCase {
        provider: "kv".into(),
        config_toml: format!(
            "[providers.kv]\ntype = \"azure\"\nvault_url = \"{}\"\nauthority_host = \"{}\"\n\
             ca_file = \"/etc/vaultbridge/azure-ca.pem\"\n\
             [providers.kv.credential]\ntype = \"client_secret\"\ntenant_id = \"{tenant}\"\n\
             client_id = \"{client_id}\"\nclient_secret_file = \"/etc/vaultbridge/azure-client-secret\"\n",
            double.vault_url("vbtest"),
            double.authority_host()
        ),
        secret: labels(&[
            ("vaultbridge.provider", "kv"),
            ("vaultbridge.path", "app-db"),
            ("vaultbridge.field", "password"),
        ]),
        expected: password.clone().into_bytes(),
        per_task: None,
        missing: labels(&[
            ("vaultbridge.provider", "kv"),
            ("vaultbridge.path", "does-not-exist"),
        ]),
        missing_reason: vec!["outcome=\"not_found\"".into(), "does-not-exist".into()],
        values: vec![password.into_bytes(), client_secret.into_bytes()],
        settings: Vec::new(),
        server: Some(Box::new(double)),
    }
}

/// Google Cloud Secret Manager through its double on the host's loopback
/// (plain http, which the provider allows to loopback only), with a real
/// service account key as a file in the mount; Google's Rust client signs
/// its own token with it.
#[cfg(feature = "gcp")]
fn gcp_backend(session: &mut Session) -> BackendCase {
    use vaultbridge_tests::gcp_double::GcpDouble;
    let double = GcpDouble::start();
    let project = format!("e2e-project-{}", session.id);
    double.add_project(&project, 424_242);
    let account = double.add_service_account(&format!("e2e-sa-{}", session.id), &project);
    let password = format!("gcp-pw-{}", session.id);
    double.add_version(
        &project,
        None,
        "app-db",
        format!(r#"{{"user":"app","password":"{password}"}}"#).as_bytes(),
    );
    std::fs::copy(&account.key_file, session.path("config/gcp-key.json")).expect("copy key");
    let key_body = account
        .private_key
        .lines()
        .nth(2)
        .expect("a PEM body line")
        .to_string();
    BackendCase {
        provider: "gsm".into(),
        config_toml: format!(
            "[providers.gsm]\ntype = \"gcp\"\nproject = \"{project}\"\nendpoint = \"{}\"\n\
             [providers.gsm.credential]\ntype = \"service_account_key\"\n\
             key_file = \"/etc/vaultbridge/gcp-key.json\"\n",
            double.url()
        ),
        secret: labels(&[
            ("vaultbridge.provider", "gsm"),
            ("vaultbridge.path", "app-db"),
            ("vaultbridge.field", "password"),
        ]),
        expected: password.clone().into_bytes(),
        per_task: None,
        missing: labels(&[
            ("vaultbridge.provider", "gsm"),
            ("vaultbridge.path", "does-not-exist"),
        ]),
        missing_reason: vec!["outcome=\"not_found\"".into(), "does-not-exist".into()],
        values: vec![password.into_bytes(), key_body.into_bytes()],
        settings: Vec::new(),
        server: Some(Box::new(double)),
    }
}

/// Every backend the tests crate is built with (tests/run: all of them),
/// each reached by the plugin over the host network.
fn backends(session: &mut Session) -> Vec<BackendCase> {
    #[allow(unused_mut)]
    let mut list = vec![file_backend(session)];
    #[cfg(feature = "vault")]
    list.push(vault_backend(session));
    #[cfg(feature = "aws")]
    list.push(aws_backend(session));
    #[cfg(feature = "azure")]
    list.push(azure_backend(session));
    #[cfg(feature = "gcp")]
    list.push(gcp_backend(session));
    let names: Vec<&str> = list.iter().map(|b| b.provider.as_str()).collect();
    eprintln!(
        "[docker e2e] backends: {} (vault, aws, azure and gcp join with the tests crate's \
         features of the same names; tests/run enables them all)",
        names.join(", ")
    );
    list
}

fn config_toml(backends: &[BackendCase]) -> String {
    let mut text = String::from("default_provider = \"local\"\n\n");
    for backend in backends {
        text.push_str(&backend.config_toml);
        text.push('\n');
    }
    #[cfg(all(feature = "vault", feature = "aws"))]
    text.push_str(TEMPLATES);
    text
}

/// One file from the Vault and AWS cases' values (step 2), and one whose
/// AWS input does not exist.
#[cfg(all(feature = "vault", feature = "aws"))]
const TEMPLATES: &str = r#"
[templates.combo]
source = '''
{%- set user = secret("bao", "app/db", field="user") -%}
user={{ user }}
vault={{ secret("bao", "app/db", field="password") }}
aws={{ secret("aws", "app/db", field="password")|urlencode }}
'''

[templates.broken]
source = '''{{ secret("bao", "app/db", field="user") }}:{{ secret("aws", "app/does-not-exist") }}'''
"#;

/// Step 2 for templates: a secret labelled `vaultbridge.template=combo`
/// mounts the rendered file, built from OpenBao and moto values through
/// the real engine; one with a missing input fails its task, and the
/// plugin's line names the template and the input. Returns the file,
/// which no log may contain.
#[cfg(all(feature = "vault", feature = "aws"))]
fn template_step(
    s: &mut Session,
    plugin: &str,
    plugin_id: &str,
    backends: &[BackendCase],
) -> Vec<Vec<u8>> {
    let id = s.id.clone();
    let expected_of = |provider: &str| {
        let case = backends
            .iter()
            .find(|b| b.provider == provider)
            .expect("backend");
        String::from_utf8(case.expected.clone()).expect("text")
    };
    let rendered = format!(
        "user=app\nvault={}\naws={}\n",
        expected_of("bao"),
        expected_of("aws")
    );
    let secret = format!("vb_{id}_template");
    s.secret_create(
        &secret,
        plugin,
        &labels(&[("vaultbridge.template", "combo")]),
    );
    let service = format!("vb-{id}-template");
    s.service_create(&ServiceSpec::new(&service, &secret, "combo"));
    let reports = s.wait_reports(&service, 1, CONVERGE);
    assert_reports(&service, &reports, "444:0:0", rendered.as_bytes());
    let served = lines_for(s, plugin_id, &secret);
    assert!(
        served.iter().any(|l| l.contains("secret served")
            && l.contains("template=\"combo\"")
            && l.contains("inputs=3")),
        "no 'secret served' line for the template:\n{}",
        served.join("\n")
    );
    let broken = format!("vb_{id}_template_broken");
    s.secret_create(
        &broken,
        plugin,
        &labels(&[("vaultbridge.template", "broken")]),
    );
    let broken_service = format!("vb-{id}-template-broken");
    let mut spec = ServiceSpec::new(&broken_service, &broken, "broken");
    spec.no_restart = true;
    s.service_create(&spec);
    let line = failed_for(s, plugin_id, &broken_service, &broken);
    for wanted in [
        "template=\"broken\"",
        "outcome=\"not_found\"",
        "template 'broken': provider 'aws' (aws), path 'app/does-not-exist'",
    ] {
        assert!(line.contains(wanted), "missing '{wanted}' in: {line}");
    }
    eprintln!("  plugin: {line}");
    vec![rendered.into_bytes()]
}

fn assert_reports(what: &str, reports: &[TaskReport], stat: &str, expected: &[u8]) {
    assert!(!reports.is_empty(), "{what}: no task reported");
    for report in reports {
        assert_eq!(
            report.stat, stat,
            "{what}: slot {} saw /run/secrets/{} with mode:uid:gid '{}'",
            report.slot, report.target, report.stat
        );
        assert!(
            report.bytes == expected,
            "{what}: slot {} read {} bytes from /run/secrets/{}, expected {} bytes (values differ)",
            report.slot,
            report.bytes.len(),
            report.target,
            expected.len()
        );
    }
}

/// The plugin's `secret served`/`secret lookup failed` lines for one secret.
fn lines_for(session: &Session, plugin_id: &str, secret: &str) -> Vec<String> {
    let needle = format!("secret={secret} ");
    session
        .log
        .plugin_lines(plugin_id)
        .into_iter()
        .filter(|l| l.contains(&needle))
        .collect()
}

/// Poll until a task of `service` has failed or been rejected; its state
/// line. Panics naming `what` after `CONVERGE`.
fn wait_task_failed(s: &Session, service: &str, what: &str) -> String {
    poll(
        what,
        CONVERGE,
        || {
            s.task_states(service)
                .into_iter()
                .find(|t| t.contains("Failed") || t.contains("Rejected"))
        },
        || s.describe_service(service),
    )
}

/// `service`'s one task failed without reading anything, and the plugin
/// logged why `secret` was not served: that line.
fn failed_for(s: &Session, plugin_id: &str, service: &str, secret: &str) -> String {
    let failed = wait_task_failed(s, service, &format!("{service}'s task to fail"));
    eprintln!("  task: {failed}");
    assert!(
        s.reports(service).iter().all(|r| r.bytes.is_empty()),
        "{service}: a task read data from {secret}, which it must not get"
    );
    s.log.wait_plugin_line(
        plugin_id,
        0,
        &format!("the plugin's log line about {secret}"),
        Duration::from_secs(10),
        |l| l.contains(&format!("secret={secret} ")) && l.contains("secret lookup failed"),
    )
}

fn step(n: u32, title: &str, started: Instant) {
    eprintln!(
        "[docker e2e {:>5.1}s] step {n}: {title}",
        started.elapsed().as_secs_f64()
    );
}

/// Step 8, on a plugin of its own: `default_path = apps/{stack}/{secret}`
/// and a policy that scopes each stack to `apps/<stack>/`. Stack B reads its
/// secret first (so it is cached), then stack A deploys its own secret and a
/// service whose secret names B's path: A's own is served, the cross read
/// fails the task, in the plugin's log and in the audit trail on the host.
/// Returns the values, which no log may contain.
fn access_policy_step(s: &mut Session, id: &str) -> Vec<Vec<u8>> {
    let (stack_a, stack_b) = (format!("vbpa{id}"), format!("vbpb{id}"));
    let conf = s.path("policy-config");
    let audit = s.path("policy-audit");
    std::fs::create_dir_all(&audit).expect("mkdir audit");
    let mut values = Vec::new();
    for stack in [&stack_a, &stack_b] {
        let dir = conf.join(format!("secrets/apps/{stack}"));
        std::fs::create_dir_all(&dir).expect("mkdir secrets");
        let value = format!("{stack}-own-db-password-{id}").into_bytes();
        std::fs::write(dir.join("db"), &value).expect("write secret");
        values.push(value);
    }
    std::fs::write(
        conf.join("config.toml"),
        r#"default_path = "apps/{stack}/{secret}"

[providers.local]
type = "file"
root = "/etc/vaultbridge/secrets"

[access]
default = "deny"

[[access.rules]]
name = "own stack"
stack = "*"
paths = ["apps/{stack}/**"]

[audit]
sink = "file"
path = "/var/log/vaultbridge/audit.log"
"#,
    )
    .expect("config.toml");
    let plugin = s.build_plugin(
        "vaultbridge-policy",
        &format!("e2e-{id}"),
        &[
            &format!("config.source={}", conf.display()),
            &format!("audit.source={}", audit.display()),
        ],
    );
    let plugin_id = s.plugin_id(&plugin);
    s.enable_plugin(&plugin);
    let image = s.workload_image();
    let command = workload_compose_command();
    let compose = |own_only: bool, stack_b: &str| {
        let thief = if own_only {
            String::new()
        } else {
            format!(
                r#"  thief:
    image: {image}
    command: {command}
    environment:
      VB_SLOT: "{{{{.Task.Slot}}}}"
      VB_TARGETS: stolen
    deploy:
      restart_policy:
        condition: none
    secrets:
      - stolen
"#
            )
        };
        let stolen = if own_only {
            String::new()
        } else {
            format!(
                "  stolen:\n    driver: {plugin}\n    labels:\n      vaultbridge.path: apps/{stack_b}/db\n"
            )
        };
        format!(
            r#"version: "3.8"
services:
  app:
    image: {image}
    command: {command}
    environment:
      VB_SLOT: "{{{{.Task.Slot}}}}"
      VB_TARGETS: db
    stop_grace_period: 2s
    secrets:
      - db
{thief}secrets:
  db:
    driver: {plugin}
{stolen}"#
        )
    };
    s.stack_deploy(&stack_b, &compose(true, &stack_b));
    let reports = s.wait_reports(&format!("{stack_b}_app"), 1, CONVERGE);
    assert_reports(&format!("{stack_b}_app"), &reports, "444:0:0", &values[1]);
    s.stack_deploy(&stack_a, &compose(false, &stack_b));
    let reports = s.wait_reports(&format!("{stack_a}_app"), 1, CONVERGE);
    assert_reports(&format!("{stack_a}_app"), &reports, "444:0:0", &values[0]);
    let thief = format!("{stack_a}_thief");
    let denial = failed_for(s, &plugin_id, &thief, &format!("{stack_a}_stolen"));
    assert!(denial.contains("policy_denied"), "{denial}");
    assert!(
        denial.contains(&format!("service={thief} "))
            && denial.contains(&format!("path=\"apps/{stack_b}/db\""))
            && denial.contains("deny by default"),
        "{denial}"
    );
    eprintln!("  denied: {denial}");

    // The audit trail, written through the audit mount onto the host.
    let trail = std::fs::read_to_string(audit.join("audit.log")).expect("audit.log on the host");
    let records: Vec<Value> = trail
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON record per line"))
        .collect();
    let find = |secret: &str, decision: &str| {
        records
            .iter()
            .find(|r| r["secret"] == secret && r["decision"] == decision)
            .unwrap_or_else(|| panic!("no {decision} record for {secret} in:\n{trail}"))
    };
    let stolen = find(&format!("{stack_a}_stolen"), "deny");
    assert_eq!(stolen["service_name"], thief.as_str());
    assert_eq!(stolen["path"], format!("apps/{stack_b}/db").as_str());
    assert_eq!(stolen["outcome"], "policy_denied");
    assert!(
        stolen["node"].as_str().is_some_and(|n| !n.is_empty()),
        "{stolen}"
    );
    assert!(
        stolen["task_id"].as_str().is_some_and(|t| !t.is_empty()),
        "{stolen}"
    );
    for stack in [&stack_a, &stack_b] {
        let own = find(&format!("{stack}_db"), "allow");
        assert_eq!(own["path"], format!("apps/{stack}/db").as_str());
        assert_eq!(own["rule"], "rule 0 (own stack)");
        assert_eq!(own["outcome"], "ok");
    }
    assert_log_has_no_values(
        &trail,
        &values.iter().map(Vec::as_slice).collect::<Vec<_>>(),
    );
    values
}

/// One watched secret of step 9: its backend, labels, and how to change it.
struct Rotated<'a> {
    provider: String,
    secret: String,
    service: String,
    labels: Labels,
    old: Vec<u8>,
    new: Vec<u8>,
    /// Puts `new` in the backend (a new version where it has versions).
    change: Change<'a>,
}

type Change<'a> = Box<dyn Fn() + 'a>;

/// The rotated secrets of step 9, one per backend that can tell versions,
/// each with its first value in place (and the failing service's file).
fn rotated_secrets<'a>(backends: &'a [BackendCase], conf_dir: &Path, id: &str) -> Vec<Rotated<'a>> {
    std::fs::write(conf_dir.join(format!("secrets/rot-fail-{id}")), b"good").expect("write secret");
    let mut list = Vec::new();
    for backend in backends {
        let provider = backend.provider.clone();
        let old = format!("{provider}-rot-v1-{id}").into_bytes();
        let new = format!("{provider}-rot-v2-{id}").into_bytes();
        let base = |path: &str| {
            vec![
                ("vaultbridge.provider".to_string(), provider.clone()),
                ("vaultbridge.path".to_string(), path.to_string()),
                ("vaultbridge.rotate".to_string(), "true".to_string()),
            ]
        };
        let server = backend.server.as_ref();
        let (labels, change): (Labels, Change<'a>) = match provider.as_str() {
            "local" => {
                let file = conf_dir.join(format!("secrets/rot-{id}"));
                std::fs::write(&file, &old).expect("write secret");
                let value = new.clone();
                (
                    base(&format!("rot-{id}")),
                    Box::new(move || std::fs::write(&file, &value).expect("write secret")),
                )
            }
            #[cfg(feature = "vault")]
            "bao" => {
                use vaultbridge_tests::openbao::OpenBao;
                let bao = server
                    .and_then(|s| s.downcast_ref::<OpenBao>())
                    .expect("the bao backend's server");
                let put = move |value: &[u8]| {
                    let pair = format!("value={}", String::from_utf8_lossy(value));
                    let output = bao
                        .command(&["kv", "put", "secret/rot/db", &pair])
                        .output()
                        .expect("bao kv put");
                    assert!(output.status.success(), "bao kv put failed");
                };
                put(&old);
                let mut labels = base("rot/db");
                labels.push(("vaultbridge.field".into(), "value".into()));
                let value = new.clone();
                (labels, Box::new(move || put(&value)))
            }
            #[cfg(feature = "aws")]
            "aws" => {
                use vaultbridge_tests::moto::Moto;
                let moto = server
                    .and_then(|s| s.downcast_ref::<Moto>())
                    .expect("the aws backend's server");
                moto.create_string("eu-west-1", "rot/db", &String::from_utf8_lossy(&old));
                let value = String::from_utf8_lossy(&new).to_string();
                (
                    base("rot/db"),
                    Box::new(move || {
                        moto.put_string("eu-west-1", "rot/db", &value, &["AWSCURRENT"]);
                    }),
                )
            }
            #[cfg(feature = "azure")]
            "kv" => {
                use vaultbridge_tests::azure_double::AzureDouble;
                let double = server
                    .and_then(|s| s.downcast_ref::<AzureDouble>())
                    .expect("the azure backend's server");
                double.add_version("vbtest", "rot-db", &String::from_utf8_lossy(&old));
                let value = String::from_utf8_lossy(&new).to_string();
                (
                    base("rot-db"),
                    Box::new(move || {
                        double.add_version("vbtest", "rot-db", &value);
                    }),
                )
            }
            other => {
                // No current_version() (e.g. gcp): the controller says it
                // cannot rotate such a secret; nothing to roll here.
                eprintln!("  step 9: backend {other} cannot tell versions; not rotated");
                continue;
            }
        };
        list.push(Rotated {
            secret: format!("vbrot-{provider}-{id}"),
            service: format!("vbrot-{provider}-{id}"),
            provider,
            labels,
            old,
            new,
            change,
        });
    }
    list
}

/// What every running task of `service` reads at `/run/secrets/<target>`
/// (single node: every task's container is local).
fn running_values(service: &str, target: &str) -> Vec<Vec<u8>> {
    let ids = docker_try(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=com.docker.swarm.service.name={service}"),
    ])
    .unwrap_or_default();
    ids.lines()
        .filter_map(|container| {
            let output = std::process::Command::new("docker")
                .args(["exec", container, "/bin/busybox", "cat"])
                .arg(format!("/run/secrets/{target}"))
                .output()
                .ok()?;
            output.status.success().then_some(output.stdout)
        })
        .collect()
}

/// Tasks of `service` whose desired and current state are both running.
fn running_count(service: &str) -> usize {
    docker_try(&[
        "service",
        "ps",
        "--filter",
        "desired-state=running",
        "--format",
        "{{.CurrentState}}",
        service,
    ])
    .map(|text| text.lines().filter(|l| l.starts_with("Running")).count())
    .unwrap_or(0)
}

/// Step 9: the rotation controller, deployed from `packaging/rotate/` as a
/// service, rolls a 3-replica `start-first` service per backend when its
/// value changes; a service whose new tasks fail is rolled back by its own
/// failure action and not rolled again. Returns the values, which no log
/// may contain.
fn rotation_step(
    s: &mut Session,
    plugin: &str,
    rotated: Vec<Rotated<'_>>,
    conf_dir: &Path,
    id: &str,
) -> Vec<Vec<u8>> {
    const REPLICAS: usize = 3;
    const INTERVAL: &str = "2s";
    let plugin_config = std::fs::read_to_string(conf_dir.join("config.toml")).expect("config.toml");
    // The plugin's configuration, with the controller's interval.
    let rotate_config: String = plugin_config
        .lines()
        .map(|line| {
            let header = line.starts_with("[providers.") && line.matches('.').count() == 1;
            if header {
                format!("{line}\nrotate_interval = \"{INTERVAL}\"\n")
            } else {
                format!("{line}\n")
            }
        })
        .collect();
    std::fs::write(conf_dir.join("rotate.toml"), rotate_config).expect("rotate.toml");
    let image = s.workload_image();
    for r in &rotated {
        s.secret_create(&r.secret, plugin, &r.labels);
        docker_ok(&[
            "service",
            "create",
            "--detach",
            "--quiet",
            "--no-resolve-image",
            "--name",
            &r.service,
            "--replicas",
            &REPLICAS.to_string(),
            "--update-order",
            "start-first",
            "--update-parallelism",
            "1",
            "--update-delay",
            "0s",
            // The engine sometimes fails a task's start on its own
            // ("unable to remount dir as readonly ... mounts/secrets:
            // device or resource busy", moby/moby#48783): that task is
            // started again, and the roll goes on instead of pausing.
            "--update-failure-action",
            "continue",
            "--stop-grace-period",
            "2s",
            "--env",
            "VB_SLOT={{.Task.Slot}}",
            "--env",
            "VB_TARGETS=app",
            "--secret",
            &format!("source={},target=app,mode=0440,uid=7", r.secret),
            &image,
            "sh",
            "-c",
            vaultbridge_tests::docker::WORKLOAD_SCRIPT,
        ]);
        s.track_service(&r.service);
    }
    // A service whose new tasks exit: its roll fails and is rolled back.
    let failing_file = conf_dir.join(format!("secrets/rot-fail-{id}"));
    let failing = format!("vbrot-fail-{id}");
    s.secret_create(
        &failing,
        plugin,
        &labels(&[
            ("vaultbridge.provider", "local"),
            ("vaultbridge.path", &format!("rot-fail-{id}")),
            ("vaultbridge.rotate", "true"),
        ]),
    );
    docker_ok(&[
        "service",
        "create",
        "--detach",
        "--quiet",
        "--no-resolve-image",
        "--name",
        &failing,
        "--update-order",
        "start-first",
        "--update-failure-action",
        "rollback",
        "--update-monitor",
        "5s",
        "--stop-grace-period",
        "2s",
        "--secret",
        &format!("source={failing},target=f"),
        &image,
        "sh",
        "-c",
        "grep -q bad /run/secrets/f && exit 3; trap 'exit 0' TERM; sleep 86400 & wait",
    ]);
    s.track_service(&failing);
    for r in &rotated {
        poll(
            &format!(
                "{} to run {REPLICAS} tasks reading the first value",
                r.service
            ),
            CONVERGE,
            || {
                let values = running_values(&r.service, "app");
                (values.len() == REPLICAS && values.iter().all(|v| v == &r.old)).then_some(())
            },
            || s.describe_service(&r.service),
        );
    }
    poll(
        &format!("{failing} to run"),
        CONVERGE,
        || (running_count(&failing) == 1).then_some(()),
        || s.describe_service(&failing),
    );

    // The controller, as an operator deploys it.
    let rotate_image = s.rotate_image();
    let controller_stack = format!("vbrotc{id}");
    let conf = conf_dir.display().to_string();
    s.stack_deploy_file(
        &controller_stack,
        &vaultbridge_tests::docker::repo_root().join("packaging/rotate/stack.yml"),
        &[
            ("VB_ROTATE_IMAGE", rotate_image.as_str()),
            ("VB_CONFIG_DIR", conf.as_str()),
            ("VB_CONFIG_FILE", "rotate.toml"),
            ("VB_DRIVER", plugin),
        ],
    );
    let controller = format!("{controller_stack}_rotate");
    // The controller's containers' own logs (`docker service logs` lags).
    let controller_log = || {
        let filter = format!("label=com.docker.swarm.service.name={controller}");
        let ids = docker_try(&["ps", "-aq", "--filter", &filter]).unwrap_or_default();
        ids.lines()
            .rev()
            .map(|id| {
                let output = std::process::Command::new("docker")
                    .args(["logs", id])
                    .output();
                output
                    .map(|o| {
                        format!(
                            "{}{}",
                            String::from_utf8_lossy(&o.stdout),
                            String::from_utf8_lossy(&o.stderr)
                        )
                    })
                    .unwrap_or_default()
            })
            .collect::<String>()
    };
    poll(
        "the controller to start",
        CONVERGE,
        || {
            controller_log()
                .contains("rotation controller started")
                .then_some(())
        },
        || format!("{}\n{}", s.describe_service(&controller), controller_log()),
    );
    // Nothing changed yet: nothing rolls (the secrets are newer than their versions).
    std::thread::sleep(Duration::from_secs(6));
    assert!(
        !controller_log().contains("change detected"),
        "rolled before any change:\n{}",
        controller_log()
    );

    // Change every value at once; watch the services while they roll.
    let changed = Instant::now();
    for r in &rotated {
        (r.change)();
    }
    std::fs::write(&failing_file, b"bad").expect("write secret");
    let services: Vec<String> = rotated.iter().map(|r| r.service.clone()).collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let stop = stop.clone();
        let services = services.clone();
        std::thread::spawn(move || {
            let mut fewest = vec![usize::MAX; services.len()];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for (i, service) in services.iter().enumerate() {
                    fewest[i] = fewest[i].min(running_count(service));
                }
            }
            fewest
        })
    };
    let mut converged = Vec::new();
    for r in &rotated {
        poll(
            &format!("every task of {} to read the new value", r.service),
            Duration::from_secs(180),
            || {
                let values = running_values(&r.service, "app");
                (values.len() == REPLICAS && values.iter().all(|v| v == &r.new)).then_some(())
            },
            || {
                format!(
                    "{}\ncontroller:\n{}",
                    s.describe_service(&r.service),
                    controller_log()
                )
            },
        );
        converged.push((r.provider.clone(), changed.elapsed()));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let fewest = watcher.join().expect("watcher");
    for (r, fewest) in rotated.iter().zip(&fewest) {
        assert!(
            *fewest >= REPLICAS,
            "{} had only {fewest} running task(s) during its roll",
            r.service
        );
        let states = s.task_states(&r.service);
        assert!(
            !states
                .iter()
                .any(|t| t.contains("Failed") || t.contains("Rejected")),
            "{}: a task failed:\n{}",
            r.service,
            states.join("\n")
        );
    }
    for (provider, took) in &converged {
        eprintln!(
            "  {provider}: change to every replica on the new value: {:.1}s",
            took.as_secs_f64()
        );
    }
    // The replaced secrets are removed once their rolls end; what remains
    // has no data of its own.
    for r in &rotated {
        poll(
            &format!("{} to be removed", r.secret),
            Duration::from_secs(60),
            || {
                docker_try(&["secret", "inspect", &r.secret])
                    .is_err()
                    .then_some(())
            },
            controller_log,
        );
    }
    let listed = docker_ok(&["secret", "ls", "-q"]);
    for secret in listed.lines() {
        let spec: Value = serde_json::from_str(&docker_ok(&[
            "secret",
            "inspect",
            "-f",
            "{{json .Spec}}",
            secret,
        ]))
        .expect("spec JSON");
        assert!(
            spec["Data"].is_null(),
            "secret {} has data of its own",
            spec["Name"]
        );
        assert!(
            spec["Driver"]["Name"]
                .as_str()
                .is_some_and(|d| !d.is_empty()),
            "secret {} has no driver",
            spec["Name"]
        );
    }

    // The failing service: rolled back by its own failure action, reported
    // once, and not rolled again at later passes.
    poll(
        "the failed roll to be reported",
        Duration::from_secs(120),
        || {
            controller_log()
                .lines()
                .any(|l| l.contains(&failing) && l.contains("outcome=\"failed\""))
                .then_some(())
        },
        || {
            format!(
                "{}\ncontroller:\n{}",
                s.describe_service(&failing),
                controller_log()
            )
        },
    );
    std::thread::sleep(Duration::from_secs(8));
    let log = controller_log();
    let started = log
        .lines()
        .filter(|l| {
            l.contains(&format!("service={failing} ")) && l.contains("service update started")
        })
        .count();
    assert_eq!(started, 1, "the failed roll was retried:\n{log}");
    assert_eq!(
        running_count(&failing),
        1,
        "{}",
        s.describe_service(&failing)
    );
    assert!(
        docker_try(&["secret", "inspect", &failing]).is_ok(),
        "the secret a rolled-back service uses was removed"
    );
    eprintln!(
        "  controller log:\n{}",
        log.lines()
            .map(|l| format!("    {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let mut values: Vec<Vec<u8>> = rotated
        .iter()
        .flat_map(|r| [r.old.clone(), r.new.clone()])
        .collect();
    assert_log_has_no_values(&log, &values.iter().map(Vec::as_slice).collect::<Vec<_>>());
    values.push(b"good".to_vec());
    values
}

#[test]
fn docker_engine_end_to_end() {
    let started = Instant::now();
    let mut s = Session::begin();
    let id = s.id.clone();
    let backends = backends(&mut s);
    let conf_dir = s.path("config");
    // Step 9's first values, written now: a secret created within the
    // plugin's cache lifetime of its value's change is rolled once, as a
    // task may have been given an older cached value.
    let rotated = rotated_secrets(&backends, &conf_dir, &id);
    std::fs::write(conf_dir.join("config.toml"), config_toml(&backends)).expect("config.toml");
    let conf_source = format!("config.source={}", conf_dir.display());

    // ---------------------------------------------------------------- 1
    step(
        1,
        "swarm initialised; create the plugin (offline path)",
        started,
    );
    let plugin = s.build_plugin("vaultbridge", &format!("e2e-{id}"), &[]);
    let plugin_id = s.plugin_id(&plugin);
    let config: Value = serde_json::from_str(&docker_ok(&[
        "plugin",
        "inspect",
        "-f",
        "{{json .Config}}",
        &plugin,
    ]))
    .expect("plugin config JSON");
    assert_eq!(
        config["Interface"]["Types"],
        serde_json::json!(["docker.secretprovider/1.0"])
    );
    assert_eq!(config["Interface"]["Socket"], "vaultbridge.sock");
    assert_eq!(config["Network"]["Type"], "host");
    assert_eq!(config["Linux"]["Capabilities"], serde_json::json!([]));
    assert_eq!(
        config["Entrypoint"],
        serde_json::json!(["/vaultbridge", "serve"])
    );
    let mount = &config["Mounts"][0];
    assert_eq!(mount["Destination"], "/etc/vaultbridge");
    assert_eq!(mount["Settable"], serde_json::json!(["source"]));
    // Every variable the binary reads is a setting the engine knows.
    for variable in vaultbridge::config::variables() {
        let name = variable.name;
        if vaultbridge::config::NOT_PLUGIN_SETTINGS.contains(&name) {
            continue;
        }
        let entry = config["Env"]
            .as_array()
            .and_then(|envs| envs.iter().find(|e| e["Name"] == name))
            .unwrap_or_else(|| panic!("the engine does not know the setting {name}"));
        assert_eq!(entry["Settable"], serde_json::json!(["value"]), "{name}");
    }

    // Bad configurations: enable fails, and the engine's log carries the
    // plugin's error, what `vaultbridge check` says for the same
    // configuration. One from the environment (word for word) and one from
    // a config.toml in the mount (the same but for where the file is).
    // Each on a plugin of its own: after a failed start, engine 20.10 keeps
    // restarting the plugin from its exit handler for a few seconds, racing
    // with later `docker plugin set`/`enable` calls on the same plugin. The
    // two enables run in parallel (each takes the engine's ~13 s of retries).
    let check = |args: &[&str], env: &[(&str, &str)]| {
        let output = std::process::Command::new(vaultbridge_tests::binary())
            .arg("check")
            .args(args)
            .env_clear()
            .envs(env.iter().copied())
            .output()
            .expect("run vaultbridge check");
        assert!(
            !output.status.success(),
            "check accepted a bad configuration"
        );
        String::from_utf8_lossy(&output.stderr).trim().to_string()
    };
    let bad_dir = format!("/nonexistent-vaultbridge-{id}");
    let env_message = check(&[], &[("VAULTBRIDGE_FILE_DIR", &bad_dir)]);
    assert!(env_message.contains(&bad_dir), "{env_message}");
    let bad_conf = s.path("bad-config");
    std::fs::create_dir_all(bad_conf.join("secrets")).expect("mkdir");
    std::fs::write(
        bad_conf.join("config.toml"),
        "[providers.local]\ntype = \"file\"\nroot = \"/etc/vaultbridge/secrets\"\nrooot = \"typo\"\n",
    )
    .expect("write bad config");
    let host_path = bad_conf.join("config.toml").display().to_string();
    let file_message =
        check(&["--config", &host_path], &[]).replace(&host_path, "/etc/vaultbridge/config.toml");
    assert!(file_message.contains("rooot"), "{file_message}");
    let bad_env = s.build_plugin(
        "vaultbridge-badenv",
        &format!("e2e-{id}"),
        &[&format!("VAULTBRIDGE_FILE_DIR={bad_dir}")],
    );
    let bad_file = s.build_plugin(
        "vaultbridge-badfile",
        &format!("e2e-{id}"),
        &[&format!("config.source={}", bad_conf.display())],
    );
    let refused: Vec<Result<String, String>> = std::thread::scope(|scope| {
        let runs: Vec<_> = [&bad_env, &bad_file]
            .into_iter()
            .map(|p| scope.spawn(move || docker_try(&["plugin", "enable", p])))
            .collect();
        runs.into_iter()
            .map(|r| r.join().expect("thread"))
            .collect()
    });
    for ((bad, message), refused) in [(&bad_env, &env_message), (&bad_file, &file_message)]
        .into_iter()
        .zip(refused)
    {
        let refused = refused.expect_err("a plugin enabled with a bad configuration");
        eprintln!("  enable {bad}: {}", refused.lines().last().unwrap_or(""));
        // A multi-line message (a TOML error quotes the offending line) is
        // one engine log entry per line, all tagged with the plugin's id.
        let bad_id = s.plugin_id(bad);
        let expected = format!("ERROR vaultbridge::cli: {message}");
        let wanted = expected.lines().count();
        let line = poll(
            "the start-up error in the engine's log",
            Duration::from_secs(30),
            || {
                let lines = s.log.plugin_lines(&bad_id);
                let first = lines.iter().position(|l| l.contains("ERROR"))?;
                (lines.len() >= first + wanted).then(|| lines[first..first + wanted].join("\n"))
            },
            || s.log.plugin_lines(&bad_id).join("\n"),
        );
        assert!(
            line.ends_with(&expected),
            "engine log:\n{line}\ndoes not carry what `vaultbridge check` says:\n{message}"
        );
        eprintln!("  engine log: {line}");
    }

    // A bare install: no settings at all, the default (empty) mount. It
    // enables, says once what to set, and a task's secret fails with that.
    let skip = s.log.plugin_lines(&plugin_id).len();
    s.enable_plugin(&plugin);
    let warned = s.log.wait_plugin_line(
        &plugin_id,
        skip,
        "the bare plugin to say it is not configured",
        Duration::from_secs(30),
        |l| l.contains("WARN") && l.contains("vaultbridge is not configured"),
    );
    assert!(warned.contains("config.source="), "{warned}");
    let bare_secret = format!("vb_{id}_bare");
    s.secret_create(&bare_secret, &plugin, &[]);
    let bare_service = format!("vb-{id}-bare");
    let mut spec = ServiceSpec::new(&bare_service, &bare_secret, "app");
    spec.no_restart = true;
    s.service_create(&spec);
    let failed = wait_task_failed(&s, &bare_service, "the bare plugin's task to fail");
    eprintln!("  bare plugin, task: {failed}");
    let line = s.log.wait_plugin_line(
        &plugin_id,
        skip,
        "the bare plugin's answer in its log",
        Duration::from_secs(10),
        |l| l.contains(&format!("secret={bare_secret} ")) && l.contains("secret lookup failed"),
    );
    assert!(line.contains("outcome=\"not_configured\""), "{line}");
    assert!(line.contains("config.source="), "{line}");
    eprintln!("  bare plugin: {line}");
    docker_ok(&["plugin", "disable", &plugin]);

    // The real configuration: config.toml and secrets in the settable mount.
    // The request-policy variables too: the engine must accept each (they
    // apply to providers from the environment; config.toml has its own keys).
    let mut settings: Vec<String> = vec![
        conf_source.clone(),
        "VAULTBRIDGE_LOG=info".into(),
        "VAULTBRIDGE_CACHE_TTL=30s".into(),
        "VAULTBRIDGE_MAX_STALE=0s".into(),
        "VAULTBRIDGE_DEADLINE=10s".into(),
        "VAULTBRIDGE_MAX_CONCURRENCY=16".into(),
    ];
    settings.extend(backends.iter().flat_map(|b| b.settings.iter().cloned()));
    let mut set_args = vec!["plugin", "set", plugin.as_str()];
    set_args.extend(settings.iter().map(String::as_str));
    docker_ok(&set_args);
    let skip = s.log.plugin_lines(&plugin_id).len();
    s.enable_plugin(&plugin);
    let listening = s.log.wait_plugin_line(
        &plugin_id,
        skip,
        "the plugin to listen with config.toml from the mount",
        Duration::from_secs(30),
        |l| l.contains("vaultbridge listening"),
    );
    assert!(
        listening.contains("config=file /etc/vaultbridge/config.toml"),
        "{listening}"
    );
    for backend in &backends {
        assert!(
            listening.contains(&format!("{} (", backend.provider)),
            "{listening}"
        );
    }

    // ---------------------------------------------------------------- 2
    let mut step2_services = Vec::new();
    for backend in &backends {
        let p = &backend.provider;
        step(
            2,
            &format!("{p}: CLI secret, exact bytes, mode and owner"),
            started,
        );
        let secret = format!("vb_{id}_{p}_cli");
        s.secret_create(&secret, &plugin, &backend.secret);
        let service = format!("vb-{id}-{p}-cli");
        let mut spec = ServiceSpec::new(&service, &secret, "app");
        spec.secrets = vec![format!(
            "source={secret},target=app,mode=0400,uid=123,gid=456"
        )];
        s.service_create(&spec);
        let reports = s.wait_reports(&service, 1, CONVERGE);
        assert_reports(&service, &reports, "400:123:456", &backend.expected);
        let served = lines_for(&s, &plugin_id, &secret);
        assert!(
            served.iter().any(|l| l.contains("secret served")
                && l.contains(&format!("provider=\"{p}\""))
                && l.contains(&format!("service={service} "))),
            "no 'secret served' line for {secret}:\n{}",
            served.join("\n")
        );
        step2_services.push((service, secret));
    }

    #[cfg(all(feature = "vault", feature = "aws"))]
    let rendered = {
        step(
            2,
            "template: one file from OpenBao and moto values",
            started,
        );
        template_step(&mut s, &plugin, &plugin_id, &backends)
    };
    #[cfg(not(all(feature = "vault", feature = "aws")))]
    let rendered: Vec<Vec<u8>> = Vec::new();

    // ---------------------------------------------------------------- 3
    let file = &backends[0];
    step(
        3,
        "stack deploy with driver + labels, <stack>_ prefix",
        started,
    );
    let stack = format!("vbst{id}");
    let image = s.workload_image();
    let compose = format!(
        r#"version: "3.8"
services:
  app:
    image: {image}
    command: {command}
    environment:
      VB_SLOT: "{{{{.Task.Slot}}}}"
      VB_TARGETS: db
    stop_grace_period: 2s
    secrets:
      - source: db
        target: db
        mode: 0440
        uid: "7"
secrets:
  db:
    driver: {plugin}
    labels:
      vaultbridge.provider: local
      vaultbridge.field: password
"#,
        command = workload_compose_command()
    );
    s.stack_deploy(&stack, &compose);
    let stack_secret = format!("{stack}_db");
    let listed = docker_ok(&[
        "secret",
        "ls",
        "--filter",
        &format!("label=com.docker.stack.namespace={stack}"),
        "--format",
        "{{.Name}}",
    ]);
    assert_eq!(listed, stack_secret, "the stack's secret is not <stack>_db");
    let stack_service = format!("{stack}_app");
    let reports = s.wait_reports(&stack_service, 1, CONVERGE);
    assert_reports(&stack_service, &reports, "440:7:0", &file.expected);
    let served = lines_for(&s, &plugin_id, &stack_secret);
    assert!(
        served
            .iter()
            .any(|l| l.contains("secret served") && l.contains("path=\"db\"")),
        "the stack's secret was not read from path 'db' (prefix rule):\n{}",
        served.join("\n")
    );

    // Per-task values the tasks received (never to be logged either).
    let mut issued: Vec<Vec<u8>> = Vec::new();
    // ---------------------------------------------------------------- 4
    for backend in &backends {
        let Some(case) = &backend.per_task else {
            continue;
        };
        let p = &backend.provider;
        step(4, &format!("{p}: per-task value, two replicas"), started);
        let secret = format!("vb_{id}_{p}_pertask");
        s.secret_create(&secret, &plugin, &case.labels);
        let service = format!("vb-{id}-{p}-pertask");
        let mut spec = ServiceSpec::new(&service, &secret, "tok");
        spec.replicas = 2;
        s.service_create(&spec);
        let reports = s.wait_reports(&service, 2, CONVERGE);
        match &case.same_value {
            Some(bytes) => assert_reports(&service, &reports, "444:0:0", bytes),
            None => {
                assert_eq!(reports.len(), 2);
                assert!(
                    !reports[0].bytes.is_empty() && reports[0].bytes != reports[1].bytes,
                    "{service}: the two tasks received the same per-task value"
                );
                issued.extend(reports.iter().map(|r| r.bytes.clone()));
            }
        }
        let per_task_answers = lines_for(&s, &plugin_id, &secret)
            .into_iter()
            .filter(|l| l.contains("secret served") && l.contains("per_task=true"))
            .count();
        assert!(
            per_task_answers >= 2,
            "{secret}: expected a DoNotReuse answer per task, saw {per_task_answers}"
        );
    }

    // ---------------------------------------------------------------- 5
    for backend in &backends {
        let p = &backend.provider;
        step(
            5,
            &format!("{p}: missing backend secret fails the task"),
            started,
        );
        let secret = format!("vb_{id}_{p}_missing");
        s.secret_create(&secret, &plugin, &backend.missing);
        let service = format!("vb-{id}-{p}-missing");
        let mut spec = ServiceSpec::new(&service, &secret, "gone");
        spec.no_restart = true;
        s.service_create(&spec);
        let line = failed_for(&s, &plugin_id, &service, &secret);
        assert!(line.contains(&format!("provider=\"{p}\"")), "{line}");
        for reason in &backend.missing_reason {
            assert!(
                line.contains(reason.as_str()),
                "missing '{reason}' in: {line}"
            );
        }
        eprintln!("  plugin: {line}");
    }

    // ---------------------------------------------------------------- 6
    step(
        6,
        "push to a local registry, remove, install --alias",
        started,
    );
    let registry = s.start_registry();
    let remote_name = format!("{registry}/vaultbridge");
    let remote = s.build_plugin(&remote_name, &format!("e2e-{id}"), &[]);
    docker_ok(&["plugin", "push", &remote]);
    let catalog = http_get_body(&registry, "/v2/_catalog").unwrap_or_default();
    assert!(
        catalog.contains("vaultbridge"),
        "registry catalog: {catalog}"
    );
    docker_ok(&["plugin", "rm", &remote]);
    s.forget_plugin(&remote);
    s.track_plugin(ALIAS); // for cleanup, should the install half-succeed
    // The same settings as the first plugin, given to `install` directly.
    settings.push("VAULTBRIDGE_LOG=info,vaultbridge=info".into());
    let mut install = vec![
        "plugin",
        "install",
        "--alias",
        ALIAS,
        "--grant-all-permissions",
        &remote,
    ];
    install.extend(settings.iter().map(String::as_str));
    docker_ok(&install);
    s.track_plugin(ALIAS);
    let installed_id = s.plugin_id(ALIAS);
    s.log.wait_plugin_line(
        &installed_id,
        0,
        "the installed plugin to listen",
        Duration::from_secs(30),
        |l| l.contains("vaultbridge listening") && l.contains("config=file"),
    );

    // Upgrade in place to a second pushed build: the alias, the settings and
    // the secrets that name the driver stay.
    let upgrade = s.build_plugin(&remote_name, &format!("e2e-{id}-2"), &[]);
    docker_ok(&["plugin", "push", &upgrade]);
    docker_ok(&["plugin", "rm", &upgrade]);
    s.forget_plugin(&upgrade);
    docker_ok(&["plugin", "disable", ALIAS]);
    docker_ok(&[
        "plugin",
        "upgrade",
        "--grant-all-permissions",
        // Without it the CLI asks "Plugin images do not match, are you
        // sure? [y/N]" for any new tag, and on a closed stdin exits 0
        // having upgraded nothing.
        "--skip-remote-check",
        ALIAS,
        &upgrade,
    ]);
    let reference = docker_ok(&["plugin", "inspect", "-f", "{{.PluginReference}}", ALIAS]);
    assert_eq!(
        reference, upgrade,
        "docker plugin upgrade did not switch the reference"
    );
    // The engine keeps env settings across an upgrade, but a mount's source
    // lives in the replaced config: it is back to the default and must be
    // set again (README, Upgrade).
    let settings = docker_ok(&["plugin", "inspect", "-f", "{{json .Settings}}", ALIAS]);
    assert!(
        settings.contains("VAULTBRIDGE_LOG=info,vaultbridge=info"),
        "env settings lost in the upgrade: {settings}"
    );
    docker_ok(&["plugin", "set", ALIAS, &conf_source]);
    let installed_id = s.plugin_id(ALIAS);
    s.track_plugin(ALIAS);
    let root = docker_ok(&["info", "-f", "{{.DockerRootDir}}"]);
    let release = std::fs::read_to_string(format!(
        "{root}/plugins/{installed_id}/rootfs/etc/vaultbridge-release"
    ))
    .expect("the upgraded plugin's rootfs has /etc/vaultbridge-release");
    assert_eq!(release.trim(), upgrade, "the plugin runs another build");
    let skip = s.log.plugin_lines(&installed_id).len();
    s.enable_plugin(ALIAS);
    s.log.wait_plugin_line(
        &installed_id,
        skip,
        "the upgraded plugin to listen with the settings kept",
        Duration::from_secs(30),
        |l| l.contains("vaultbridge listening") && l.contains("config=file"),
    );

    let secret = format!("vb_{id}_installed");
    s.secret_create(&secret, ALIAS, &file.secret);
    let installed_service = format!("vb-{id}-installed");
    s.service_create(&ServiceSpec::new(&installed_service, &secret, "app"));
    let reports = s.wait_reports(&installed_service, 1, CONVERGE);
    assert_reports(&installed_service, &reports, "444:0:0", &file.expected);

    // ---------------------------------------------------------------- 7
    step(7, "disable/enable while services run; scale to 20", started);
    let running = |s: &Session, service: &str| {
        s.task_states(service)
            .iter()
            .filter(|t| t.contains("| Running | Running"))
            .count()
    };
    // A secret no task holds yet; its service is created while the plugin
    // is disabled. (A new task of a service whose reusable secret the node
    // already holds still starts while the plugin is disabled: the worker
    // keeps the value under the secret's id.)
    let late_secret = format!("vb_{id}_late");
    s.secret_create(&late_secret, ALIAS, &file.secret);
    docker_ok(&["plugin", "disable", ALIAS]);
    docker_ok(&["plugin", "disable", &plugin]);
    let late_service = format!("vb-{id}-late");
    s.service_create(&ServiceSpec::new(&late_service, &late_secret, "app"));
    let failed = wait_task_failed(
        &s,
        &late_service,
        "the task scheduled while the plugin is disabled to fail",
    );
    eprintln!("  scheduled while disabled: {failed}");
    assert!(
        s.reports(&late_service).iter().all(|r| r.bytes.is_empty()),
        "a task got {late_secret} while the plugin was disabled"
    );
    // The tasks that already had their secrets kept running throughout.
    for service in [&installed_service, &step2_services[0].0] {
        let slot1 = format!("{service}.1 ");
        assert!(
            s.task_states(service)
                .iter()
                .any(|t| t.starts_with(&slot1) && t.contains("| Running | Running")),
            "{service} stopped running while its plugin was disabled:\n{}",
            s.describe_service(service)
        );
    }
    let skip = s.log.plugin_lines(&installed_id).len();
    s.enable_plugin(ALIAS);
    s.enable_plugin(&plugin);
    s.log.wait_plugin_line(
        &installed_id,
        skip,
        "the plugin to listen again",
        Duration::from_secs(30),
        |l| l.contains("vaultbridge listening"),
    );
    // The restart policy retries the failed task; now it gets its secret.
    let reports = s.wait_reports(&late_service, 1, CONVERGE);
    assert_reports(&late_service, &reports, "444:0:0", &file.expected);
    let served_before = lines_for(&s, &installed_id, &secret).len();
    docker_ok(&[
        "service",
        "scale",
        "--detach",
        &format!("{installed_service}=20"),
    ]);
    let reports = s.wait_reports(&installed_service, 20, Duration::from_secs(180));
    assert_eq!(reports.len(), 20, "one report per slot");
    assert_reports(&installed_service, &reports, "444:0:0", &file.expected);
    poll(
        "20 tasks running",
        CONVERGE,
        || (running(&s, &installed_service) == 20).then_some(()),
        || s.describe_service(&installed_service),
    );
    let served_after = lines_for(&s, &installed_id, &secret)
        .iter()
        .filter(|l| l.contains("secret served"))
        .count();
    assert!(
        served_after >= served_before + 19,
        "the plugin served {secret} {served_after} times (before scaling: {served_before})"
    );
    // The step-2 service still runs on the re-enabled first plugin.
    assert_eq!(running(&s, &step2_services[0].0), 1);

    // ---------------------------------------------------------------- 8
    step(
        8,
        "access policy: two stacks, own secrets served, cross reads denied; audit trail",
        started,
    );
    let policy_values = access_policy_step(&mut s, &id);

    // ---------------------------------------------------------------- 9
    step(
        9,
        "rotation: values change in every backend; the controller rolls each service",
        started,
    );
    let rotation_values = rotation_step(&mut s, &plugin, rotated, &conf_dir, &id);

    // ------------------------------------------------- values never logged
    let log = s.all_plugin_lines().join("\n");
    assert!(log.contains("secret served"), "no plugin log collected");
    let values: Vec<&[u8]> = backends
        .iter()
        .flat_map(|b| b.values.iter().map(Vec::as_slice))
        .chain(issued.iter().map(Vec::as_slice))
        .chain(policy_values.iter().map(Vec::as_slice))
        .chain(rotation_values.iter().map(Vec::as_slice))
        .chain(rendered.iter().map(Vec::as_slice))
        .collect();
    assert_log_has_no_values(&log, &values);

    drop(s);
    eprintln!(
        "[docker e2e] all steps passed in {:.1}s (cleanup included)",
        started.elapsed().as_secs_f64()
    );
}
