//! The `aws` backend against a real moto server: each scenario through the
//! provider directly (`AwsProvider`) and through the plugin's socket (the
//! real binary, configured by a TOML file or by the standard AWS variables).
//!
//! Needs `moto_server` (tests/setup.sh) and a `vaultbridge` binary built
//! with the `aws` feature (`VAULTBRIDGE_BIN`, or the workspace's build).

use std::time::{Duration, Instant};

use secrecy::SecretString;
use serde_json::json;
use vaultbridge_providers::aws::{AwsConfig, AwsProvider};
use vaultbridge_providers::duration::Timeout;
use vaultbridge_providers::{Outage, Provider, ProviderError, SecretRef};
use vaultbridge_tests::moto::{ACCOUNT, Moto, xml_field};
use vaultbridge_tests::{
    Answer, Plugin, assert_log_has_no_values, check_cli, engine_request, wait_until,
};

const EAST: &str = "us-east-1";
const WEST: &str = "eu-west-1";

/// The plugin's environment: moto's default account, no instance metadata.
const TEST_KEYS: &[(&str, &str)] = &[
    ("AWS_ACCESS_KEY_ID", "test"),
    ("AWS_SECRET_ACCESS_KEY", "test"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
];

fn aws_config(region: &str, endpoint: &str, timeout: Option<f64>) -> AwsConfig {
    AwsConfig {
        region: region.to_string(),
        endpoint_url: Some(endpoint.to_string()),
        profile: None,
        role_arn: None,
        external_id: None,
        session_name: None,
        timeout: timeout.map(|seconds| Timeout::Text(format!("{seconds}s"))),
    }
}

/// The provider, built as the plugin builds it, with fixed keys.
async fn provider_as(endpoint: &str, region: &str, key: &str, secret: &str) -> AwsProvider {
    AwsProvider::with_static_credentials(
        &aws_config(region, endpoint, Some(5.0)),
        "providers.aws",
        key,
        &SecretString::from(secret.to_string()),
    )
    .await
    .expect("build the aws provider")
}

async fn provider(moto: &Moto, region: &str) -> AwsProvider {
    provider_as(&moto.endpoint, region, "test", "test").await
}

async fn fetch(
    provider: &AwsProvider,
    path: &str,
    version: Option<&str>,
) -> Result<Vec<u8>, ProviderError> {
    provider
        .fetch(SecretRef {
            path: &vaultbridge_providers::SecretPath::parse(path)
                .map_err(|err| vaultbridge_providers::ProviderError::Invalid(err.to_string()))?,
            version,
        })
        .await
        .map(|value| value.expose().to_vec())
}

/// A `[providers.<name>]` table per (name, region), all at moto.
fn config_toml(moto_endpoint: &str, providers: &[(&str, &str)], extra: &str) -> String {
    let mut text = String::new();
    for (name, region) in providers {
        text.push_str(&format!(
            "[providers.{name}]\ntype = \"aws\"\nregion = \"{region}\"\nendpoint_url = \"{moto_endpoint}\"\n{extra}\n"
        ));
    }
    text
}

fn ask(plugin: &Plugin, name: &str, labels: &[(&str, &str)]) -> Answer {
    let answer = plugin.get_secret(&engine_request(name, labels));
    assert_eq!(answer.status, 200, "log:\n{}", plugin.log());
    answer
}

fn value(plugin: &Plugin, name: &str, labels: &[(&str, &str)]) -> Vec<u8> {
    let answer = ask(plugin, name, labels);
    assert_eq!(answer.err(), "", "log:\n{}", plugin.log());
    answer.value()
}

fn err(plugin: &Plugin, name: &str, labels: &[(&str, &str)]) -> String {
    let answer = ask(plugin, name, labels);
    let err = answer.err();
    assert!(!err.is_empty(), "expected an Err, got {:?}", answer.json());
    err
}

#[tokio::test]
async fn strings_json_binary_and_arns() {
    let moto = Moto::start();
    let plain = moto.create_string(EAST, "app/plain", "hello from moto");
    moto.create_string(
        EAST,
        "app/json",
        r#"{"user":"app","password":"pw-json-123","port":5432}"#,
    );
    let binary_bytes: &[u8] = &[0, 159, 146, 150, 255, 1, 2];
    moto.create_binary(EAST, "app/binary", binary_bytes);
    moto.create_string(EAST, "app/b64", "ZGVjb2RlZCBieXRlcw==");
    moto.create_string(EAST, "plain-name", "by the secret's own name");

    // Directly.
    let p = provider(&moto, EAST).await;
    assert_eq!(
        fetch(&p, "app/plain", None).await.unwrap(),
        b"hello from moto"
    );
    assert_eq!(
        fetch(&p, &plain.arn, None).await.unwrap(),
        b"hello from moto"
    );
    assert_eq!(
        fetch(&p, plain.partial_arn(), None).await.unwrap(),
        b"hello from moto"
    );
    assert_eq!(
        fetch(&p, "app/json", None).await.unwrap(),
        br#"{"user":"app","password":"pw-json-123","port":5432}"#,
        "SecretString comes back as is"
    );
    assert_eq!(fetch(&p, "app/binary", None).await.unwrap(), binary_bytes);
    let checked = p.check().await.unwrap();
    assert!(checked.contains(EAST), "{checked}");

    // Through the socket.
    let plugin = Plugin::start(
        Some(&config_toml(&moto.endpoint, &[("aws", EAST)], "")),
        TEST_KEYS,
    );
    let path = |p| ("vaultbridge.path", p);
    assert_eq!(
        value(&plugin, "s1", &[path("app/plain")]),
        b"hello from moto"
    );
    assert_eq!(
        value(&plugin, "plain-name", &[]),
        b"by the secret's own name"
    );
    assert_eq!(
        value(
            &plugin,
            "s2",
            &[path("app/json"), ("vaultbridge.field", "password")]
        ),
        b"pw-json-123"
    );
    assert_eq!(
        value(
            &plugin,
            "s3",
            &[path("app/json"), ("vaultbridge.field", "port")]
        ),
        b"5432"
    );
    assert_eq!(value(&plugin, "s4", &[path("app/binary")]), binary_bytes);
    assert_eq!(
        value(
            &plugin,
            "s5",
            &[path("app/b64"), ("vaultbridge.decode", "base64")]
        ),
        b"decoded bytes"
    );
    assert_eq!(
        value(&plugin, "s6", &[path(&plain.arn)]),
        b"hello from moto"
    );
    assert_eq!(
        value(&plugin, "s7", &[path(plain.partial_arn())]),
        b"hello from moto"
    );
    let missing_field = err(
        &plugin,
        "s8",
        &[path("app/json"), ("vaultbridge.field", "nope")],
    );
    assert!(missing_field.contains("no key 'nope'"), "{missing_field}");
    assert_log_has_no_values(
        &plugin.log(),
        &[b"hello from moto", b"pw-json-123", b"decoded bytes"],
    );

    let (ok, out) = check_cli(
        &config_toml(&moto.endpoint, &[("aws", EAST)], ""),
        TEST_KEYS,
    );
    assert!(ok && out.contains("ok    aws (aws)"), "{out}");
}

#[tokio::test]
async fn version_ids_and_stages() {
    let moto = Moto::start();
    let first = moto.create_string(EAST, "rotating", "value-one");
    let second = moto.put_string(EAST, "rotating", "value-two", &[]);
    let blue = moto.put_string(EAST, "rotating", "value-blue", &["blue"]);
    let unknown_id = "0a1b2c3d-0000-4111-8222-333344445555";

    let p = provider(&moto, EAST).await;
    let v = |version| fetch(&p, "rotating", Some(version));
    assert_eq!(fetch(&p, "rotating", None).await.unwrap(), b"value-two");
    assert_eq!(v("AWSCURRENT").await.unwrap(), b"value-two");
    assert_eq!(v("AWSPREVIOUS").await.unwrap(), b"value-one");
    assert_eq!(v(&first.version_id).await.unwrap(), b"value-one");
    assert_eq!(v(&second).await.unwrap(), b"value-two");
    assert_eq!(v("blue").await.unwrap(), b"value-blue");
    let blue_by_id = format!("id:{blue}");
    assert_eq!(v(&blue_by_id).await.unwrap(), b"value-blue");
    assert_eq!(v("stage:AWSPREVIOUS").await.unwrap(), b"value-one");
    match v("green").await {
        Err(ProviderError::NotFound(m)) => {
            assert!(m.contains("version stage green"), "{m}")
        }
        other => panic!("{other:?}"),
    }
    match v(unknown_id).await {
        Err(ProviderError::NotFound(m)) => {
            assert!(m.contains(&format!("version id {unknown_id}")), "{m}")
        }
        other => panic!("{other:?}"),
    }

    let plugin = Plugin::start(
        Some(&config_toml(&moto.endpoint, &[("aws", EAST)], "")),
        TEST_KEYS,
    );
    let at = |version| value(&plugin, "rotating", &[("vaultbridge.version", version)]);
    assert_eq!(value(&plugin, "rotating", &[]), b"value-two");
    assert_eq!(at("AWSPREVIOUS"), b"value-one");
    assert_eq!(at(&first.version_id), b"value-one");
    assert_eq!(at(&second), b"value-two");
    assert_eq!(at("blue"), b"value-blue");
    assert_eq!(at(&format!("id:{blue}")), b"value-blue");
    let e = err(&plugin, "rotating", &[("vaultbridge.version", "green")]);
    assert!(
        e.contains("not found") && e.contains("version stage green"),
        "{e}"
    );
    let e = err(&plugin, "rotating", &[("vaultbridge.version", unknown_id)]);
    assert!(e.contains("not found") && e.contains(unknown_id), "{e}");
    assert_log_has_no_values(&plugin.log(), &[b"value-one", b"value-two", b"value-blue"]);
}

#[tokio::test]
async fn missing_deleted_and_wrong_region() {
    let moto = Moto::start();
    moto.create_string(EAST, "doomed", "doomed-value");
    moto.delete(EAST, "doomed");
    let east_only = moto.create_string(EAST, "east-only", "east-value");

    let east = provider(&moto, EAST).await;
    let west = provider(&moto, WEST).await;
    match fetch(&east, "no/such/secret", None).await {
        Err(ProviderError::NotFound(m)) => {
            assert!(m.contains("'no/such/secret'") && m.contains(EAST), "{m}")
        }
        other => panic!("{other:?}"),
    }
    match fetch(&east, "doomed", None).await {
        Err(ProviderError::NotFound(m)) => {
            assert!(m.contains("scheduled for deletion"), "{m}")
        }
        other => panic!("{other:?}"),
    }
    match fetch(&west, "east-only", None).await {
        Err(ProviderError::NotFound(m)) => assert!(m.contains(WEST), "{m}"),
        other => panic!("{other:?}"),
    }
    match fetch(&west, &east_only.arn, None).await {
        Err(ProviderError::Invalid(m)) => {
            assert!(m.contains(EAST) && m.contains(WEST), "{m}")
        }
        other => panic!("{other:?}"),
    }

    let plugin = Plugin::start(
        Some(&config_toml(
            &moto.endpoint,
            &[("east", EAST), ("west", WEST)],
            "",
        )),
        &[TEST_KEYS, &[("VAULTBRIDGE_DEFAULT_PROVIDER", "east")]].concat(),
    );
    let e = err(
        &plugin,
        "x",
        &[
            ("vaultbridge.provider", "east"),
            ("vaultbridge.path", "no/such/secret"),
        ],
    );
    assert!(
        e.contains("not found") && e.contains("no/such/secret") && e.contains(EAST),
        "{e}"
    );
    let e = err(
        &plugin,
        "x",
        &[
            ("vaultbridge.provider", "east"),
            ("vaultbridge.path", "doomed"),
        ],
    );
    assert!(e.contains("scheduled for deletion"), "{e}");
    let e = err(
        &plugin,
        "x",
        &[
            ("vaultbridge.provider", "west"),
            ("vaultbridge.path", "east-only"),
        ],
    );
    assert!(e.contains("not found") && e.contains(WEST), "{e}");
    let e = err(
        &plugin,
        "x",
        &[
            ("vaultbridge.provider", "west"),
            ("vaultbridge.path", &east_only.arn),
        ],
    );
    assert!(e.contains("invalid request") && e.contains(EAST), "{e}");
    assert!(
        plugin.log().contains("not_found"),
        "outcome logged:\n{}",
        plugin.log()
    );
}

#[tokio::test]
async fn two_regions_in_one_config() {
    let moto = Moto::start();
    moto.create_string(EAST, "shared/db", "east-value");
    let west_secret = moto.create_string(WEST, "shared/db", "west-value");

    assert_eq!(
        fetch(&provider(&moto, EAST).await, "shared/db", None)
            .await
            .unwrap(),
        b"east-value"
    );
    assert_eq!(
        fetch(&provider(&moto, WEST).await, "shared/db", None)
            .await
            .unwrap(),
        b"west-value"
    );

    let config = format!(
        "default_provider = \"east\"\n{}",
        config_toml(&moto.endpoint, &[("east", EAST), ("west", WEST)], "")
    );
    let plugin = Plugin::start(Some(&config), TEST_KEYS);
    let path = ("vaultbridge.path", "shared/db");
    assert_eq!(value(&plugin, "a", &[path]), b"east-value");
    assert_eq!(
        value(&plugin, "b", &[path, ("vaultbridge.provider", "west")]),
        b"west-value"
    );
    assert_eq!(
        value(
            &plugin,
            "c",
            &[
                ("vaultbridge.provider", "west"),
                ("vaultbridge.path", &west_secret.arn)
            ]
        ),
        b"west-value"
    );
    let (ok, out) = check_cli(&config, TEST_KEYS);
    assert!(
        ok && out.contains("ok    east (aws)") && out.contains("ok    west (aws)"),
        "{out}"
    );
}

/// No config file: `AWS_REGION` / `AWS_DEFAULT_REGION` make a provider named
/// `aws`, and the standard endpoint variables point the SDK at moto.
#[test]
fn configured_by_the_standard_environment() {
    let moto = Moto::start();
    moto.create_string(EAST, "env/secret", "east-by-env");
    moto.create_string(WEST, "env/secret", "west-by-env");

    let plugin = Plugin::start(
        None,
        &[
            TEST_KEYS,
            &[
                ("AWS_REGION", EAST),
                ("AWS_ENDPOINT_URL_SECRETS_MANAGER", &moto.endpoint),
            ],
        ]
        .concat(),
    );
    assert_eq!(
        value(&plugin, "x", &[("vaultbridge.path", "env/secret")]),
        b"east-by-env"
    );
    assert_eq!(
        value(
            &plugin,
            "x",
            &[
                ("vaultbridge.provider", "aws"),
                ("vaultbridge.path", "env/secret")
            ]
        ),
        b"east-by-env"
    );

    // By host name, as real endpoints are reached (resolved by the binary).
    let by_name = format!("http://localhost:{}", moto.port);
    let plugin = Plugin::start(
        None,
        &[
            TEST_KEYS,
            &[("AWS_DEFAULT_REGION", WEST), ("AWS_ENDPOINT_URL", &by_name)],
        ]
        .concat(),
    );
    assert_eq!(
        value(&plugin, "x", &[("vaultbridge.path", "env/secret")]),
        b"west-by-env"
    );
}

/// moto with credential checks on: only keys of moto's IAM users, with a
/// valid signature, are accepted, and IAM policies are enforced.
#[tokio::test]
async fn credentials_are_checked() {
    // Exactly the calls below run before checks start.
    let moto = Moto::start_with_auth(6);
    let (reader, nobody) = moto.reader_and_nobody();
    moto.create_string(EAST, "guarded", "guarded-value");
    // Checks are on now: moto's unsigned default key is refused.
    let refused = moto.secrets_as("test", EAST, "ListSecrets", &json!({}));
    assert_eq!(refused.status, 403, "{}", refused.body);

    let reader_id = xml_field(&reader, "AccessKeyId");
    let reader_secret = xml_field(&reader, "SecretAccessKey");
    let nobody_id = xml_field(&nobody, "AccessKeyId");
    let nobody_secret = xml_field(&nobody, "SecretAccessKey");
    let wrong_id = "AKIAWRONGWRONGWRONG7";

    // Directly.
    let good = provider_as(&moto.endpoint, EAST, &reader_id, &reader_secret).await;
    assert_eq!(
        fetch(&good, "guarded", None).await.unwrap(),
        b"guarded-value"
    );
    assert!(good.check().await.unwrap().contains("ListSecrets allowed"));

    let denied = provider_as(&moto.endpoint, EAST, &nobody_id, &nobody_secret).await;
    match fetch(&denied, "guarded", None).await {
        Err(ProviderError::Denied(m)) => {
            assert!(
                m.contains(&format!("arn:aws:iam::{ACCOUNT}:user/nobody")),
                "{m}"
            );
            assert!(m.contains("secretsmanager:GetSecretValue"), "{m}");
        }
        other => panic!("{other:?}"),
    }
    // Authenticated, just not allowed to list: check passes and says so.
    let checked = denied.check().await.unwrap();
    assert!(checked.contains("not allowed"), "{checked}");

    let unknown = provider_as(&moto.endpoint, EAST, wrong_id, "wrong-secret").await;
    for result in [
        fetch(&unknown, "guarded", None)
            .await
            .map(|_| String::new()),
        unknown.check().await,
    ] {
        match result {
            Err(ProviderError::Unauthenticated(m)) => {
                assert!(m.contains("InvalidClientTokenId"), "{m}");
                assert!(!m.contains(wrong_id), "the key id is scrubbed: {m}");
            }
            other => panic!("{other:?}"),
        }
    }
    let bad_signature = provider_as(&moto.endpoint, EAST, &reader_id, "not-the-secret-key").await;
    match fetch(&bad_signature, "guarded", None).await {
        Err(ProviderError::Unauthenticated(m)) => {
            assert!(m.contains("SignatureDoesNotMatch"), "{m}");
            assert!(!m.contains(reader_id.as_str()), "{m}");
        }
        other => panic!("{other:?}"),
    }

    // Through the socket, and `vaultbridge check`.
    let config = config_toml(&moto.endpoint, &[("aws", EAST)], "");
    let env = |id: &str, secret: &str| {
        vec![
            ("AWS_ACCESS_KEY_ID", id.to_string()),
            ("AWS_SECRET_ACCESS_KEY", secret.to_string()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
        ]
    };
    for (id, secret, expect) in [
        (reader_id.as_str(), reader_secret.as_str(), Ok(())),
        (
            nobody_id.as_str(),
            nobody_secret.as_str(),
            Err("access denied"),
        ),
        (wrong_id, "wrong-secret", Err("authentication failed")),
        (
            reader_id.as_str(),
            "not-the-secret-key",
            Err("authentication failed"),
        ),
    ] {
        let owned = env(id, secret);
        let pairs: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let plugin = Plugin::start(Some(&config), &pairs);
        let path = [("vaultbridge.path", "guarded")];
        match expect {
            Ok(()) => assert_eq!(value(&plugin, "g", &path), b"guarded-value"),
            Err(kind) => {
                let e = err(&plugin, "g", &path);
                assert!(e.contains(kind), "{e}");
                assert!(!e.to_ascii_lowercase().contains("unhandled"), "{e}");
                assert!(!e.contains(secret), "{e}");
            }
        }
        assert_log_has_no_values(&plugin.log(), &[b"guarded-value", secret.as_bytes()]);
        let (ok, out) = check_cli(&config, &pairs);
        let authenticated = expect.is_ok() || id == nobody_id;
        assert_eq!(ok, authenticated, "{out}");
        assert!(!out.contains(secret), "{out}");
    }
}

/// A stopped server and a server that never answers both give `Unavailable`
/// within the configured timeout, never a hang.
#[tokio::test]
async fn backend_down_is_unavailable_within_the_deadline() {
    let mut moto = Moto::start();
    moto.create_string(EAST, "up-then-down", "was-up");
    let timeout = Duration::from_secs(2);
    let p = AwsProvider::with_static_credentials(
        &aws_config(EAST, &moto.endpoint, Some(timeout.as_secs_f64())),
        "providers.aws",
        "test",
        &SecretString::from("test".to_string()),
    )
    .await
    .unwrap();
    assert_eq!(fetch(&p, "up-then-down", None).await.unwrap(), b"was-up");
    // The plugin retries an unavailable backend within its own per-provider
    // `deadline`; the provider's `timeout` bounds each of its calls.
    let socket_keys = "timeout = \"2s\"\ndeadline = \"4s\"";
    let socket_bound = Duration::from_secs(8); // 2 × the deadline
    let config = config_toml(&moto.endpoint, &[("aws", EAST)], socket_keys);
    let plugin = Plugin::start(Some(&config), TEST_KEYS);
    moto.stop();

    let started = Instant::now();
    match fetch(&p, "up-then-down", None).await {
        Err(ProviderError::Unavailable(Outage { message: m, .. })) => {
            assert!(
                m.contains("cannot reach") && m.contains(&moto.endpoint),
                "{m}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < 2 * timeout, "{:?}", started.elapsed());
    assert!(matches!(
        p.check().await,
        Err(ProviderError::Unavailable(_))
    ));

    // A listener that accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_endpoint = format!("http://{}", silent.local_addr().unwrap());
    let hung = AwsProvider::with_static_credentials(
        &aws_config(EAST, &silent_endpoint, Some(timeout.as_secs_f64())),
        "providers.aws",
        "test",
        &SecretString::from("test".to_string()),
    )
    .await
    .unwrap();
    let started = Instant::now();
    match fetch(&hung, "anything", None).await {
        Err(ProviderError::Unavailable(Outage { message: m, .. })) => {
            assert!(m.contains(&silent_endpoint), "{m}")
        }
        other => panic!("{other:?}"),
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed >= timeout / 2 && elapsed < 2 * timeout,
        "{elapsed:?}"
    );

    // Through the socket.
    let started = Instant::now();
    let e = err(&plugin, "x", &[("vaultbridge.path", "up-then-down")]);
    assert!(e.contains("unavailable"), "{e}");
    assert!(started.elapsed() < socket_bound, "{:?}", started.elapsed());
    assert!(plugin.log().contains("unavailable"), "{}", plugin.log());

    let hung_config = config_toml(&silent_endpoint, &[("aws", EAST)], socket_keys);
    let plugin = Plugin::start(Some(&hung_config), TEST_KEYS);
    let started = Instant::now();
    let e = err(&plugin, "x", &[("vaultbridge.path", "anything")]);
    assert!(e.contains("unavailable"), "{e}");
    assert!(started.elapsed() < socket_bound, "{:?}", started.elapsed());
    drop(silent);
}

/// Shared config/credentials files (mounted into the plugin) with profiles,
/// and `role_arn`: the source user may only assume the role, the role may
/// read the secret — so a value proves the role was used.
#[test]
fn profiles_and_assumed_roles() {
    let moto = Moto::start_with_auth(6);
    let assume = json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
        "Action": "sts:AssumeRole", "Resource": "*"}]});
    let trust = json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
        "Principal": {"AWS": format!("arn:aws:iam::{ACCOUNT}:user/assumer")}, "Action": "sts:AssumeRole"}]});
    let read = json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
        "Action": "secretsmanager:GetSecretValue", "Resource": "*"}]});
    moto.iam(&[("Action", "CreateUser"), ("UserName", "assumer")]);
    moto.iam(&[
        ("Action", "PutUserPolicy"),
        ("UserName", "assumer"),
        ("PolicyName", "assume"),
        ("PolicyDocument", &assume.to_string()),
    ]);
    let keys = moto.iam(&[("Action", "CreateAccessKey"), ("UserName", "assumer")]);
    moto.iam(&[
        ("Action", "CreateRole"),
        ("RoleName", "secret-reader"),
        ("AssumeRolePolicyDocument", &trust.to_string()),
    ]);
    moto.iam(&[
        ("Action", "PutRolePolicy"),
        ("RoleName", "secret-reader"),
        ("PolicyName", "read"),
        ("PolicyDocument", &read.to_string()),
    ]);
    moto.create_string(EAST, "role-guarded", "role-value");
    let key_id = xml_field(&keys, "AccessKeyId");
    let secret_key = xml_field(&keys, "SecretAccessKey");
    let role = format!("arn:aws:iam::{ACCOUNT}:role/secret-reader");
    let path = [("vaultbridge.path", "role-guarded")];

    // STS must reach moto too: the global AWS_ENDPOINT_URL covers both.
    let base_env = |id: &str, secret: &str| {
        vec![
            ("AWS_ACCESS_KEY_ID".to_string(), id.to_string()),
            ("AWS_SECRET_ACCESS_KEY".to_string(), secret.to_string()),
            ("AWS_ENDPOINT_URL".to_string(), moto.endpoint.clone()),
            ("AWS_EC2_METADATA_DISABLED".to_string(), "true".to_string()),
        ]
    };
    let start = |config: &str, env: &[(String, String)]| {
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Plugin::start(Some(config), &pairs)
    };
    let with_role = format!(
        "[providers.aws]\ntype = \"aws\"\nregion = \"{EAST}\"\nrole_arn = \"{role}\"\nsession_name = \"e2e-session\"\n"
    );
    let without_role = format!("[providers.aws]\ntype = \"aws\"\nregion = \"{EAST}\"\n");

    let plugin = start(&with_role, &base_env(&key_id, &secret_key));
    assert_eq!(value(&plugin, "r", &path), b"role-value");
    assert_log_has_no_values(&plugin.log(), &[b"role-value", secret_key.as_bytes()]);

    let plugin = start(&without_role, &base_env(&key_id, &secret_key));
    let e = err(&plugin, "r", &path);
    assert!(
        e.contains("access denied") && e.contains("user/assumer"),
        "{e}"
    );

    let plugin = start(&with_role, &base_env("AKIAWRONGWRONGWRONG7", "nope"));
    let e = err(&plugin, "r", &path);
    assert!(
        e.contains("authentication failed") && e.contains(&format!("assuming role {role}")),
        "{e}"
    );
    assert!(!e.contains("AKIAWRONGWRONGWRONG7"), "{e}");

    // A mounted credentials file and config file: the profile assumes the
    // role itself (source_profile), selected by `profile` in the TOML.
    let dir = tempfile::tempdir().unwrap();
    let credentials = dir.path().join("credentials");
    let aws_config_file = dir.path().join("config");
    std::fs::write(
        &credentials,
        format!("[base]\naws_access_key_id = {key_id}\naws_secret_access_key = {secret_key}\n"),
    )
    .unwrap();
    std::fs::write(
        &aws_config_file,
        format!("[profile via-role]\nrole_arn = {role}\nsource_profile = base\n"),
    )
    .unwrap();
    let files_env = vec![
        (
            "AWS_SHARED_CREDENTIALS_FILE".to_string(),
            credentials.display().to_string(),
        ),
        (
            "AWS_CONFIG_FILE".to_string(),
            aws_config_file.display().to_string(),
        ),
        ("AWS_ENDPOINT_URL".to_string(), moto.endpoint.clone()),
        ("AWS_EC2_METADATA_DISABLED".to_string(), "true".to_string()),
    ];
    let plugin = start(
        &format!("{without_role}profile = \"via-role\"\n"),
        &files_env,
    );
    assert_eq!(value(&plugin, "r", &path), b"role-value");
    let plugin = start(&format!("{without_role}profile = \"base\"\n"), &files_env);
    let e = err(&plugin, "r", &path);
    assert!(e.contains("access denied"), "{e}");

    // A profile missing from the files stops the plugin at start-up, naming the key.
    let mut plugin = Plugin::spawn(
        Some(&format!("{without_role}profile = \"missing\"\n")),
        &files_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect::<Vec<_>>(),
        &[],
    );
    let status = plugin.wait_exit(Duration::from_secs(10));
    assert!(matches!(status, Some(s) if !s.success()), "{status:?}");
    assert!(
        plugin.log().contains("providers.aws.profile") && plugin.log().contains("'missing'"),
        "{}",
        plugin.log()
    );
}

/// A local ECS container credentials endpoint: each answer expires after
/// `expires_in` (else in 2099). Stopped (its thread joined) on drop, also
/// when the test panics.
struct CredentialsEndpoint {
    uri: String,
    addr: std::net::SocketAddr,
    served: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CredentialsEndpoint {
    fn start(expires_in: Option<Duration>) -> CredentialsEndpoint {
        use std::io::{Read, Write};
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let served = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&served);
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { break };
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request);
                counter.fetch_add(1, Ordering::SeqCst);
                let expiration = match expires_in {
                    Some(left) => {
                        let at = std::time::SystemTime::now() + left;
                        let secs = at.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
                        rfc3339(secs)
                    }
                    None => "2099-01-01T00:00:00Z".to_string(),
                };
                let body = format!(
                    r#"{{"AccessKeyId":"ASIAECSCONTAINER0001","SecretAccessKey":"ecs-secret","Token":"ecs-token","Expiration":"{expiration}"}}"#
                );
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        CredentialsEndpoint {
            uri: format!("http://{addr}/credentials"),
            addr,
            served,
            stop,
            thread: Some(thread),
        }
    }

    fn served(&self) -> usize {
        self.served.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for CredentialsEndpoint {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // Wake the blocking accept so the loop sees `stop`.
        let _ = std::net::TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `secs` since the epoch as `YYYY-MM-DDTHH:MM:SSZ` (civil from days,
/// H. Hinnant's algorithm).
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Expiring credentials are fetched again in the background, without any
/// request: the first lookup after a quiet period does not wait for them.
#[test]
fn expiring_credentials_are_refreshed_without_traffic() {
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    assert_eq!(rfc3339(1_795_000_000), "2026-11-18T11:06:40Z");
    let moto = Moto::start();
    moto.create_string(EAST, "fresh/secret", "fresh-value");
    let config = format!("[providers.aws]\ntype = \"aws\"\nregion = \"{EAST}\"\n");
    // 18 s credentials: the keeper asks again after ~12 s (2/3).
    let endpoint = CredentialsEndpoint::start(Some(Duration::from_secs(18)));
    let plugin = Plugin::start(
        Some(&config),
        &[
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", endpoint.uri.as_str()),
            ("AWS_ENDPOINT_URL_SECRETS_MANAGER", &moto.endpoint),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ],
    );
    assert_eq!(
        value(&plugin, "f", &[("vaultbridge.path", "fresh/secret")]),
        b"fresh-value"
    );
    let before = endpoint.served();
    assert!(before >= 1, "the ECS endpoint was asked");
    // The metrics see the credentials' expiry and when they were fetched.
    let expires_in = "vaultbridge_credential_expires_in_seconds{provider=\"aws\"}";
    let renewed = "vaultbridge_credential_last_renewal_timestamp_seconds{provider=\"aws\"}";
    let left = plugin.metric(expires_in).expect("expiry series");
    assert!(left > 0.0 && left <= 18.0, "{left}");
    let first_renewal = plugin.metric(renewed).expect("renewal series");
    let refreshed = wait_until(Duration::from_secs(25), || endpoint.served() > before);
    assert!(refreshed, "no refresh without traffic:\n{}", plugin.log());
    let later = wait_until(Duration::from_secs(5), || {
        plugin.metric(renewed).is_some_and(|at| at > first_renewal)
    });
    assert!(later, "the renewal time did not move");
    assert!(
        plugin
            .log()
            .contains("aws: credentials refreshed in the background"),
        "{}",
        plugin.log()
    );
    assert_log_has_no_values(&plugin.log(), &[b"ecs-secret", b"ecs-token"]);
}

/// The rest of the standard chain through the plugin, with no keys in the
/// environment: a web identity token file (STS AssumeRoleWithWebIdentity at
/// moto) and ECS container credentials (a local credentials endpoint).
#[test]
fn web_identity_and_container_credentials() {
    let moto = Moto::start();
    moto.create_string(EAST, "chain/secret", "chain-value");
    let config = format!("[providers.aws]\ntype = \"aws\"\nregion = \"{EAST}\"\n");
    let path = [("vaultbridge.path", "chain/secret")];

    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "eyJhbGciOiJSUzI1NiJ9.e30.c2ln").unwrap();
    let token_path = token.display().to_string();
    let role = format!("arn:aws:iam::{ACCOUNT}:role/web-reader");
    let plugin = Plugin::start(
        Some(&config),
        &[
            ("AWS_WEB_IDENTITY_TOKEN_FILE", token_path.as_str()),
            ("AWS_ROLE_ARN", &role),
            ("AWS_ROLE_SESSION_NAME", "e2e"),
            ("AWS_ENDPOINT_URL", &moto.endpoint),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ],
    );
    assert_eq!(value(&plugin, "w", &path), b"chain-value");

    // ECS: the SDK GETs AWS_CONTAINER_CREDENTIALS_FULL_URI (loopback allowed).
    let endpoint = CredentialsEndpoint::start(None);
    let uri = endpoint.uri.clone();
    let plugin = Plugin::start(
        Some(&config),
        &[
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", uri.as_str()),
            ("AWS_ENDPOINT_URL_SECRETS_MANAGER", &moto.endpoint),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ],
    );
    assert_eq!(value(&plugin, "e", &path), b"chain-value");
    assert!(endpoint.served() >= 1, "the ECS endpoint was asked");
    assert_log_has_no_values(
        &plugin.log(),
        &[b"chain-value", b"ecs-secret", b"ecs-token"],
    );
}
