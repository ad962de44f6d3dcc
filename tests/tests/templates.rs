//! Templates (`vaultbridge.template`) through the real binary's socket over
//! a real OpenBao and a real moto: values from both backends in one file,
//! the access policy and the audit trail per input, a leased (per-task)
//! input, errors, Docker's size limit, `check` and `get`, and no value in
//! the plugin's log.
//!
//! Needs `bao` and `moto_server` (tests/setup.sh) and a binary built with
//! the `vault` and `aws` features.

use std::process::Command;

use serde_json::Value;
use vaultbridge_tests::moto::Moto;
use vaultbridge_tests::openbao::OpenBao;
use vaultbridge_tests::{Answer, Plugin, assert_log_has_no_values, binary, engine_request};

const EAST: &str = "us-east-1";
const USER: &str = "usr-K7Q2";
const HOST: &str = "db-H4X9.internal";
/// With the two characters a `.pgpass` field escapes.
const PASSWORD: &str = "Pa55:w\\rd-Z8M1&";
/// Numeric: minijinja's own error for `|int // 0` quotes it.
const PIN: &str = "4711983";

/// The plugin's environment: moto's default account, no instance metadata.
const AWS_KEYS: &[(&str, &str)] = &[
    ("AWS_ACCESS_KEY_ID", "test"),
    ("AWS_SECRET_ACCESS_KEY", "test"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
];

const TEMPLATES: &str = r#"
[templates.pgpass]
source = '''
{%- set host = secret("vault-prod", "apps/billing/db", field="host") -%}
{%- set user = secret("vault-prod", "apps/billing/db", field="user") -%}
{%- set password = secret("aws", "billing/db-password") -%}
{%- macro pg(text) %}{{ text|replace("\\", "\\\\")|replace(":", "\\:") }}{% endmacro -%}
{{ host }}:5432:billing:{{ pg(user) }}:{{ pg(password) }}
'''

[templates.jdbc]
source = '''jdbc:postgresql://{{ secret("vault-prod", "apps/billing/db", field="host") }}/billing?user={{ secret("vault-prod", "apps/billing/db", field="user")|urlencode }}&password={{ secret("aws", "billing/db-password")|urlencode }}'''

[templates.cert]
source = '''
{%- set serial = secret("vault-prod", "pki/issue/web?common_name=app.example.com&ttl=10m", field="serial_number") -%}
serial={{ serial }}
password={{ secret("aws", "billing/db-password") }}
'''

[templates.other-team]
source = '''{{ secret("vault-prod", "apps/billing/db", field="user") }}:{{ secret("vault-prod", "apps/payments/db", field="user") }}'''

[templates.numeric]
source = '''
{{ secret("vault-prod", "apps/billing/db", field="user") }}
{{ secret("aws", "billing/db-password")|int + 1 }}'''

[templates.pin]
source = '''{{ secret("aws", "billing/pin")|int // 0 }}'''

[templates.huge]
source = '''{% for i in range(40) %}{{ secret("aws", "billing/big") }}{% endfor %}'''
"#;

struct Backends {
    bao: OpenBao,
    /// Kept alive for the plugin; stopped on drop.
    _moto: Moto,
    config: String,
    /// Where the audit trail goes.
    audit: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn backends() -> Backends {
    let bao = OpenBao::start();
    bao.bao(&[
        "kv",
        "put",
        "secret/apps/billing/db",
        &format!("host={HOST}"),
        &format!("user={USER}"),
    ]);
    bao.bao(&["kv", "put", "secret/apps/payments/db", "user=pay-Q1W9"]);
    // PKI whose certificates carry a lease: per task.
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
    let moto = Moto::start();
    moto.create_string(EAST, "billing/db-password", PASSWORD);
    moto.create_string(EAST, "billing/big", &"b".repeat(20_000));
    moto.create_string(EAST, "billing/pin", PIN);
    let token = bao.file("root-token", b"root\n");
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.log");
    let config = format!(
        r#"
[providers.vault-prod]
type = "vault"
address = "{addr}"
auth = {{ method = "token", token_file = "{token}" }}
logical_write_prefixes = ["pki/issue/"]

[providers.aws]
type = "aws"
region = "{EAST}"
endpoint_url = "{moto}"

[access]
default = "deny"

[[access.rules]]
name = "billing"
service = "st_api"
paths = ["apps/billing/*", "billing/*", "pki/issue/web"]

[audit]
sink = "file"
path = "{audit}"
{TEMPLATES}"#,
        addr = bao.addr,
        token = token.display(),
        moto = moto.endpoint,
        audit = audit.display(),
    );
    Backends {
        bao,
        _moto: moto,
        config,
        audit,
        _dir: dir,
    }
}

fn ask(plugin: &Plugin, labels: &[(&str, &str)], task: &str) -> Answer {
    let mut request = engine_request("st_db", labels);
    request["TaskID"] = task.into();
    let answer = plugin.get_secret(&request);
    assert_eq!(answer.status, 200, "log:\n{}", plugin.log());
    answer
}

fn text(answer: &Answer) -> String {
    assert_eq!(answer.err(), "", "{}", answer.json());
    String::from_utf8(answer.value()).unwrap()
}

fn template(name: &str) -> [(&'static str, &str); 1] {
    [("vaultbridge.template", name)]
}

fn audit_records(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[test]
fn templates_over_openbao_and_moto_through_the_socket() {
    let backends = backends();
    let plugin = Plugin::start(Some(&backends.config), AWS_KEYS);

    // Values from both backends in one file, exactly as the format wants.
    let pgpass = ask(&plugin, &template("pgpass"), "taska");
    let expected = format!("{HOST}:5432:billing:{USER}:Pa55\\:w\\\\rd-Z8M1&\n");
    assert_eq!(text(&pgpass), expected);
    assert_eq!(pgpass.json()["DoNotReuse"], false);
    let jdbc = text(&ask(&plugin, &template("jdbc"), "taska"));
    assert_eq!(
        jdbc,
        format!("jdbc:postgresql://{HOST}/billing?user={USER}&password=Pa55%3Aw%5Crd-Z8M1%26")
    );
    // The inputs were cached: the same file again is all hits.
    assert_eq!(text(&ask(&plugin, &template("pgpass"), "taskb")), expected);
    let log = plugin.log();
    assert!(
        log.lines().any(|line| line.contains("template=\"pgpass\"")
            && line.contains("inputs=3")
            && line.contains("cache=\"hit\"")),
        "{log}"
    );

    // The audit trail: one record per input, then the template's own.
    let records = audit_records(&backends.audit);
    let first: Vec<&Value> = records
        .iter()
        .take_while(|r| r["template"] == "pgpass")
        .collect();
    assert_eq!(first.len(), 4, "{records:?}");
    let paths: Vec<Value> = first.iter().map(|r| r["path"].clone()).collect();
    assert_eq!(
        paths,
        [
            Value::from("apps/billing/db"),
            Value::from("apps/billing/db"),
            Value::from("billing/db-password"),
            Value::Null
        ]
    );
    for record in &first[..3] {
        assert_eq!(record["decision"], "allow", "{record}");
        assert_eq!(record["rule"], "rule 0 (billing)", "{record}");
        assert_eq!(record["outcome"], "ok");
        assert_eq!(record["service_name"], "st_api");
    }
    assert_eq!(first[3]["outcome"], "ok");

    // A leased input makes the file per task; a re-ask gets the same one.
    let issued = || backends.bao.audit_count("pki/issue/web");
    let before = issued();
    let a = ask(&plugin, &template("cert"), "taska");
    let b = ask(&plugin, &template("cert"), "taskb");
    assert_eq!(a.json()["DoNotReuse"], true, "{}", a.json());
    assert_ne!(text(&a), text(&b));
    assert!(text(&a).ends_with(&format!("password={PASSWORD}\n")));
    let again = ask(&plugin, &template("cert"), "taska");
    assert_eq!(text(&again), text(&a), "a re-ask got another certificate");
    assert_eq!(issued(), before + 2, "a re-ask minted a new lease");

    // The policy judges each input: one denied, nothing served.
    let err = ask(&plugin, &template("other-team"), "taska").err();
    assert!(
        err.contains("template 'other-team': the access policy does not allow service 'st_api' to read path 'apps/payments/db' from provider 'vault-prod'"),
        "{err}"
    );
    let records = audit_records(&backends.audit);
    let denied: Vec<&str> = records
        .iter()
        .filter(|r| r["template"] == "other-team")
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(denied, ["skipped", "policy_denied", "policy_denied"]);

    // Errors name the template and the line, never the value.
    // (`|int` fails on the placeholder too, so its detail is shown.)
    let err = ask(&plugin, &template("numeric"), "taska").err();
    assert!(
        err.contains("template 'numeric', line 2: invalid operation"),
        "{err}"
    );
    let err = ask(&plugin, &template("pin"), "taska").err();
    assert!(
        err.contains("template 'pin', line 1: invalid operation (its detail is not shown"),
        "{err}"
    );
    let err = ask(&plugin, &template("huge"), "taska").err();
    assert!(
        err.contains("template 'huge': the output is larger than 511999 bytes"),
        "{err}"
    );
    let err = ask(
        &plugin,
        &[
            ("vaultbridge.template", "pgpass"),
            ("vaultbridge.field", "user"),
        ],
        "taska",
    )
    .err();
    assert!(
        err.contains("label 'vaultbridge.field' cannot be combined with 'vaultbridge.template'"),
        "{err}"
    );
    let err = ask(&plugin, &template("pgpas"), "taska").err();
    assert!(err.contains("template 'pgpas' is not configured"), "{err}");

    // No value, and no file made of them, in the log or the audit trail.
    let values: Vec<&[u8]> = vec![
        USER.as_bytes(),
        HOST.as_bytes(),
        PASSWORD.as_bytes(),
        PIN.as_bytes(),
        b"Pa55",
        b"Z8M1",
        expected.as_bytes(),
        jdbc.as_bytes(),
    ];
    assert_log_has_no_values(&plugin.log(), &values);
    let trail = std::fs::read_to_string(&backends.audit).unwrap();
    assert_log_has_no_values(&trail, &values);

    // `get` renders one as the plugin does for the described service.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, &backends.config).unwrap();
    let vaultbridge = |args: &[&str]| {
        Command::new(binary())
            .args(args)
            .arg("--config")
            .arg(&config)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(AWS_KEYS.iter().copied())
            .output()
            .unwrap()
    };
    let got = vaultbridge(&[
        "get",
        "--service",
        "st_api",
        "--label",
        "vaultbridge.template=pgpass",
        "db",
    ]);
    assert_eq!(String::from_utf8_lossy(&got.stdout), expected, "{got:?}");
    let refused = vaultbridge(&[
        "get",
        "--service",
        "other",
        "--label",
        "vaultbridge.template=pgpass",
        "db",
    ]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("does not allow service 'other'"));
    // `check` lists each template's lookups.
    let check = vaultbridge(&["check"]);
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{out}");
    assert!(
        out.contains("template pgpass: 3 lookup(s): provider 'vault-prod', path 'apps/billing/db', field 'host'"),
        "{out}"
    );
}

#[test]
fn check_refuses_a_template_that_names_an_unknown_provider() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        "[providers.local]\ntype = \"file\"\nroot = \"/tmp\"\n\
         [templates.pg]\nsource = \"ok\\n{{ secret('vault-prod', 'apps/db') }}\"\n",
    )
    .unwrap();
    let check = Command::new(binary())
        .arg("check")
        .arg("--config")
        .arg(&config)
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(2), "{check:?}");
    let err = String::from_utf8_lossy(&check.stderr);
    assert!(
        err.contains("templates.pg.source: template 'pg', line 2: secret(): provider 'vault-prod' is not configured (configured: local)"),
        "{err}"
    );
}
