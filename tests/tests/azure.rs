//! Azure Key Vault: the provider against the Key Vault / Entra double
//! (`tests/azure-double/`), through the official SDK — directly, and through
//! the real plugin's socket.
//!
//! Each test registers its own tenant, app and secrets (unique names), so the
//! tests share one double safely while running in parallel.
//!
//! What every backend must do (found, field, version, binary, not found,
//! denied, bad credentials, hung, throttled, check, the environment form,
//! down) is the conformance suite's (`tests/tests/conformance.rs`, fixture
//! `tests/src/conformance/azure.rs`); this suite keeps what is Azure's own.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use vaultbridge::tuning::{Tuning, Upstream};
use vaultbridge_providers::azure::{AzureConfig, CredentialConfig, build};
use vaultbridge_providers::duration::Timeout;
use vaultbridge_providers::{Outage, Provider, ProviderError, SecretRef};
use vaultbridge_tests::azure_double::AzureDouble;
use vaultbridge_tests::{Plugin, assert_log_has_no_values, engine_request, wait_until};

const VAULT: &str = "vbtest";
const VAULT2: &str = "vbtest2";

/// One app registration in the double, with a secret file for the plugin.
struct App {
    tenant: String,
    client_id: String,
    secret: String,
    secret_file: std::path::PathBuf,
}

fn app(double: &AzureDouble, token_lifetime: u64) -> App {
    let tenant = AzureDouble::unique("tenant");
    let client_id = AzureDouble::unique("app");
    let secret = AzureDouble::unique("client-secret-value");
    double.add_client(&tenant, &client_id, &secret, token_lifetime);
    let secret_file = double.dir().join(format!("{client_id}.secret"));
    std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
    App {
        tenant,
        client_id,
        secret,
        secret_file,
    }
}

fn config(double: &AzureDouble, app: &App, vault: &str, timeout: f64) -> AzureConfig {
    AzureConfig {
        vault_url: double.vault_url(vault),
        credential: CredentialConfig::ClientSecret {
            tenant_id: app.tenant.clone(),
            client_id: app.client_id.clone(),
            client_secret_file: Some(app.secret_file.clone()),
            client_secret: None,
        },
        authority_host: Some(double.authority_host()),
        ca_file: Some(double.ca_file().to_path_buf()),
        timeout: Some(Timeout::Text(format!("{timeout}s"))),
    }
}

async fn provider(config: &AzureConfig) -> Arc<dyn Provider> {
    build(config, "providers.kv").await.expect("build")
}

async fn fetch(
    p: &dyn Provider,
    path: &str,
    version: Option<&str>,
) -> Result<Vec<u8>, ProviderError> {
    p.fetch(SecretRef {
        path: &vaultbridge_providers::SecretPath::parse(path)
            .map_err(|err| vaultbridge_providers::ProviderError::Invalid(err.to_string()))?,
        version,
    })
    .await
    .map(|v| v.expose().to_vec())
}

/// The provider behind the plugin's one owner of retries and deadlines.
fn upstream(p: Arc<dyn Provider>, deadline_secs: f64) -> Upstream {
    let tuning = Tuning {
        deadline: Duration::from_secs_f64(deadline_secs),
        ..Tuning::default()
    };
    Upstream::new("kv".into(), p, tuning)
}

async fn fetch_via(up: &Upstream, path: &str) -> Result<Vec<u8>, ProviderError> {
    let path = vaultbridge_providers::SecretPath::parse(path).expect("a valid path");
    up.fetch(SecretRef {
        path: &path,
        version: None,
    })
    .await
    .map(|v| v.expose().to_vec())
}

/// The `[providers.<name>]` table for the plugin; the plugin's cache is off
/// so that every request reaches the double.
fn toml_provider(name: &str, double: &AzureDouble, app: &App, vault: &str, extra: &str) -> String {
    format!(
        r#"
[providers.{name}]
type = "azure"
vault_url = "{vault_url}"
authority_host = "{authority}"
ca_file = "{ca}"
timeout = "5s"
cache_ttl = "0s"
{extra}
[providers.{name}.credential]
type = "client_secret"
tenant_id = "{tenant}"
client_id = "{client}"
client_secret_file = "{secret_file}"
"#,
        vault_url = double.vault_url(vault),
        authority = double.authority_host(),
        ca = double.ca_file().display(),
        tenant = app.tenant,
        client = app.client_id,
        secret_file = app.secret_file.display(),
    )
}

fn tokens_issued(double: &AzureDouble, client_id: &str) -> u64 {
    double.stats()["tokens_issued"][client_id]
        .as_u64()
        .unwrap_or(0)
}

// ---------------------------------------------------------------- provider

#[tokio::test]
async fn provider_reads_latest_and_pinned_versions() {
    let double = AzureDouble::start();
    let app = app(&double, 3599);
    let name = AzureDouble::unique("db-password");
    let v1 = double.add_version(VAULT, &name, "first-value");
    let v2 = double.add_version(VAULT, &name, "second-value");
    let p = provider(&config(&double, &app, VAULT, 5.0)).await;

    assert_eq!(fetch(&*p, &name, None).await.unwrap(), b"second-value");
    assert_eq!(fetch(&*p, &name, Some(&v1)).await.unwrap(), b"first-value");
    assert_eq!(fetch(&*p, &name, Some(&v2)).await.unwrap(), b"second-value");
    // The SDK went through the challenge, then used one token for all three.
    assert_eq!(tokens_issued(&double, &app.client_id), 1);
    assert!(double.stats()["challenges"].as_u64().unwrap() >= 1);

    let check = p.check().await.expect("check");
    assert!(check.contains(&double.vault_url(VAULT)), "{check}");
    assert!(check.contains(&app.client_id), "{check}");
}

#[tokio::test]
async fn provider_errors_are_distinct_and_actionable() {
    let double = AzureDouble::start();
    let app = app(&double, 3599);
    let vault_url = double.vault_url(VAULT);
    let p = provider(&config(&double, &app, VAULT, 5.0)).await;

    let missing = AzureDouble::unique("missing");
    match fetch(&*p, &missing, None).await {
        Err(ProviderError::NotFound(m)) => {
            assert!(m.contains(&missing) && m.contains(&vault_url), "{m}");
            assert!(m.contains("SecretNotFound"), "{m}");
        }
        other => panic!("expected NotFound, got {other:?}"),
    }

    let name = AzureDouble::unique("versioned");
    double.add_version(VAULT, &name, "v");
    let unknown = "0123456789abcdef0123456789abcdef";
    match fetch(&*p, &name, Some(unknown)).await {
        Err(ProviderError::NotFound(m)) => assert!(m.contains(unknown), "{m}"),
        other => panic!("expected NotFound, got {other:?}"),
    }

    let forbidden = AzureDouble::unique("forbidden");
    double.put_secret(VAULT, &forbidden, json!({"value": "nope", "denied": true}));
    match fetch(&*p, &forbidden, None).await {
        Err(ProviderError::Denied(m)) => {
            // Which identity, which vault, what to do.
            assert!(m.contains(&app.client_id) && m.contains(&app.tenant), "{m}");
            assert!(
                m.contains(&vault_url) && m.contains("Key Vault Secrets User"),
                "{m}"
            );
        }
        other => panic!("expected Denied, got {other:?}"),
    }

    let disabled = AzureDouble::unique("disabled");
    double.put_secret(VAULT, &disabled, json!({"value": "old", "enabled": false}));
    match fetch(&*p, &disabled, None).await {
        Err(ProviderError::Denied(m)) => assert!(m.contains("is disabled"), "{m}"),
        other => panic!("expected Denied (disabled), got {other:?}"),
    }
}

#[tokio::test]
async fn provider_wrong_client_secret_surfaces_the_aadsts_code_not_the_secret() {
    let double = AzureDouble::start();
    let app = app(&double, 3599);
    let wrong = "wrong-client-secret-value-0042";
    std::fs::write(&app.secret_file, wrong).unwrap();
    let name = AzureDouble::unique("s");
    double.add_version(VAULT, &name, "value");
    let p = provider(&config(&double, &app, VAULT, 5.0)).await;

    for result in [
        fetch(&*p, &name, None).await.map(|_| String::new()),
        p.check().await,
    ] {
        match result {
            Err(ProviderError::Unauthenticated(m)) => {
                assert!(m.contains("AADSTS7000215"), "{m}");
                assert!(
                    m.contains(&app.client_id) && m.contains("client_secret_file"),
                    "{m}"
                );
                assert!(!m.contains(wrong) && !m.contains(&app.secret), "{m}");
                assert!(
                    !m.contains("Trace ID") && !m.contains("Correlation ID"),
                    "{m}"
                );
            }
            other => panic!("expected Unauthenticated, got {other:?}"),
        }
    }

    // An unknown tenant is a different, equally precise, answer.
    let mut cfg = config(&double, &app, VAULT, 5.0);
    cfg.credential = CredentialConfig::ClientSecret {
        tenant_id: AzureDouble::unique("no-such-tenant"),
        client_id: app.client_id.clone(),
        client_secret_file: Some(app.secret_file.clone()),
        client_secret: None,
    };
    match fetch(&*provider(&cfg).await, &name, None).await {
        Err(ProviderError::Unauthenticated(m)) => assert!(m.contains("AADSTS90002"), "{m}"),
        other => panic!("expected Unauthenticated, got {other:?}"),
    }
}

/// After a first lookup, the token is refreshed in the background, without
/// traffic, before it expires; dropping the provider stops that.
#[tokio::test]
async fn the_token_is_kept_fresh_in_the_background_until_dropped() {
    let double = AzureDouble::start();
    // 250 s: inside the SDK's 5-minute refresh window at once, so the
    // keeper asks again after its 10 s floor (real tokens: ~55 min).
    let app = app(&double, 250);
    let name = AzureDouble::unique("kept-fresh");
    double.add_version(VAULT, &name, "v");
    let p = provider(&config(&double, &app, VAULT, 5.0)).await;
    assert_eq!(
        tokens_issued(&double, &app.client_id),
        0,
        "build fetched a token"
    );
    assert_eq!(fetch(&*p, &name, None).await.unwrap(), b"v");
    assert_eq!(tokens_issued(&double, &app.client_id), 1);
    let started = Instant::now();
    while tokens_issued(&double, &app.client_id) < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no token refresh without traffic"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(p);
    let after = tokens_issued(&double, &app.client_id);
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(
        tokens_issued(&double, &app.client_id),
        after,
        "refreshing went on after the provider was dropped"
    );
}

#[tokio::test]
async fn throttling_is_waited_out_by_the_plugin_within_the_deadline() {
    let double = AzureDouble::start();
    let app = app(&double, 3599);
    let p = provider(&config(&double, &app, VAULT, 8.0)).await;
    let throttled = |name: &str| double.stats()["throttled"][format!("{VAULT}/{name}")].clone();

    // The provider makes one attempt and hands on the vault's Retry-After.
    let once = AzureDouble::unique("throttled-once");
    double.put_secret(
        VAULT,
        &once,
        json!({"value": "x", "throttle": 1, "retry_after": 1}),
    );
    let err = fetch(&*p, &once, None).await.unwrap_err();
    assert!(err.retry_safe(), "{err}");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(1)), "{err}");
    assert_eq!(throttled(&once), 1);

    // The plugin waits each Retry-After out, then gets the value.
    let name = AzureDouble::unique("throttled");
    double.put_secret(
        VAULT,
        &name,
        json!({"value": "after-throttle", "throttle": 2, "retry_after": 1}),
    );
    let up = upstream(p.clone(), 8.0);
    let started = Instant::now();
    assert_eq!(fetch_via(&up, &name).await.unwrap(), b"after-throttle");
    assert_eq!(throttled(&name), 2);
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    // A Retry-After beyond the deadline: one attempt, reported at once.
    let long = AzureDouble::unique("throttled-long");
    double.put_secret(
        VAULT,
        &long,
        json!({"value": "x", "throttle": 5, "retry_after": 60}),
    );
    let started = Instant::now();
    match fetch_via(&up, &long).await {
        Err(ProviderError::Unavailable(Outage { message: m, .. })) => {
            assert!(m.contains("429") && m.contains("60.0s"), "{m}")
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert_eq!(throttled(&long), 1, "asked again despite Retry-After");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_throttled_token_endpoint_is_retried_by_the_plugin() {
    let double = AzureDouble::start();
    let app = app(&double, 3599);
    double.throttle_token_endpoint(&app.tenant, &app.client_id, &app.secret, 1);
    let name = AzureDouble::unique("after-token-429");
    double.add_version(VAULT, &name, "token-eventually");
    let up = upstream(provider(&config(&double, &app, VAULT, 8.0)).await, 8.0);
    // A 429 from Entra is transient (its Retry-After honoured), not "bad credentials".
    assert_eq!(fetch_via(&up, &name).await.unwrap(), b"token-eventually");
    assert_eq!(tokens_issued(&double, &app.client_id), 1);

    double.throttle_token_endpoint(&app.tenant, &app.client_id, &app.secret, 100);
    let fresh = upstream(provider(&config(&double, &app, VAULT, 1.5)).await, 1.5);
    match fetch_via(&fresh, &name).await {
        Err(ProviderError::Unavailable(Outage { message: m, .. })) => {
            assert!(m.contains("AADSTS90055") && m.contains("HTTP 429"), "{m}")
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn provider_vault_down_is_unavailable_within_the_deadline() {
    let double = AzureDouble::start();
    let app = app(&double, 3599);

    // Nothing listens: connection refused, retried briefly, then Unavailable.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let mut cfg = config(&double, &app, VAULT, 2.0);
    cfg.vault_url = format!("https://{VAULT}.vault.azure.net:{port}");
    let started = Instant::now();
    match fetch(&*provider(&cfg).await, "db", None).await {
        Err(ProviderError::Unavailable(Outage { message: m, .. })) => {
            assert!(m.contains("cannot reach vault"), "{m}")
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );

    // Something accepts connections and never answers: the timeout answers.
    let blackhole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    cfg.vault_url = format!(
        "https://{VAULT}.vault.azure.net:{}",
        blackhole.local_addr().unwrap().port()
    );
    let started = Instant::now();
    match fetch(&*provider(&cfg).await, "db", None).await {
        Err(ProviderError::Unavailable(Outage { message: m, .. })) => {
            assert!(m.contains(&cfg.vault_url), "{m}")
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    drop(blackhole);
}

#[tokio::test]
async fn provider_keeps_working_across_token_expiry() {
    let double = AzureDouble::start();
    let lifetime = 3;
    let app = app(&double, lifetime);
    let name = AzureDouble::unique("rotating-token");
    double.add_version(VAULT, &name, "steady");
    let p = provider(&config(&double, &app, VAULT, 5.0)).await;

    let until = Instant::now() + Duration::from_secs(2 * lifetime + 1);
    let mut requests = 0;
    while Instant::now() < until {
        assert_eq!(fetch(&*p, &name, None).await.unwrap(), b"steady");
        requests += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(requests > 10, "{requests}");
    // Tokens expired during the run and were replaced before use.
    assert!(tokens_issued(&double, &app.client_id) >= 3);
    assert_eq!(double.stats()["expired_tokens"], 0);
}

#[tokio::test]
async fn provider_shares_one_token_between_concurrent_lookups() {
    let double = AzureDouble::start();
    let app = app(&double, 3599);
    let name = AzureDouble::unique("shared");
    double.add_version(VAULT, &name, "same-for-all");
    let p = provider(&config(&double, &app, VAULT, 5.0)).await;
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let p = Arc::clone(&p);
            let name = name.clone();
            tokio::spawn(async move { fetch(&*p, &name, None).await })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), b"same-for-all");
    }
    assert_eq!(tokens_issued(&double, &app.client_id), 1);
}

#[tokio::test]
async fn provider_workload_identity_exchanges_the_federated_token() {
    let double = AzureDouble::start();
    let tenant = AzureDouble::unique("tenant");
    let client_id = AzureDouble::unique("aks-app");
    let assertion = AzureDouble::unique("eyJhbGciOi.service-account-token");
    double.add_federated_client(&tenant, &client_id, &assertion);
    let token_file = double.dir().join(format!("{client_id}.token"));
    std::fs::write(&token_file, &assertion).unwrap();
    let name = AzureDouble::unique("wi");
    double.add_version(VAULT, &name, "via-workload-identity");

    let mut cfg = AzureConfig {
        vault_url: double.vault_url(VAULT),
        credential: CredentialConfig::WorkloadIdentity {
            tenant_id: tenant.clone(),
            client_id: client_id.clone(),
            token_file: Some(token_file.clone()),
        },
        authority_host: Some(double.authority_host()),
        ca_file: Some(double.ca_file().to_path_buf()),
        timeout: Some(Timeout::from("5s")),
    };
    let p = provider(&cfg).await;
    assert_eq!(
        fetch(&*p, &name, None).await.unwrap(),
        b"via-workload-identity"
    );

    let other = double.dir().join(format!("{client_id}.other"));
    std::fs::write(&other, "a-token-from-another-issuer").unwrap();
    cfg.credential = CredentialConfig::WorkloadIdentity {
        tenant_id: tenant,
        client_id,
        token_file: Some(other),
    };
    match fetch(&*provider(&cfg).await, &name, None).await {
        Err(ProviderError::Unauthenticated(m)) => {
            assert!(
                m.contains("AADSTS700213") && m.contains("federated credential"),
                "{m}"
            );
            assert!(!m.contains("a-token-from-another-issuer"), "{m}");
        }
        other => panic!("expected Unauthenticated, got {other:?}"),
    }
}

#[tokio::test]
async fn provider_refuses_a_challenge_for_another_domain() {
    // Reached by IP, the vault's challenge (resource vault.azure.net) does not
    // match the host: the SDK's check, kept on, sends no token there.
    let double = AzureDouble::start();
    let app = app(&double, 3599);
    let name = AzureDouble::unique("s");
    double.add_version(VAULT, &name, "value");
    let mut cfg = config(&double, &app, VAULT, 5.0);
    cfg.vault_url = format!("https://127.0.0.1:{}", double.tls_port());
    match fetch(&*provider(&cfg).await, &name, None).await {
        Err(ProviderError::Unauthenticated(m)) => {
            assert!(
                m.contains("another domain") && m.contains("vault_url"),
                "{m}"
            )
        }
        other => panic!("expected Unauthenticated, got {other:?}"),
    }
    assert_eq!(tokens_issued(&double, &app.client_id), 0);
}

#[tokio::test]
async fn provider_without_the_ca_does_not_trust_the_double() {
    let double = AzureDouble::start();
    let app = app(&double, 3599);
    let mut cfg = config(&double, &app, VAULT, 5.0);
    cfg.ca_file = None;
    match fetch(&*provider(&cfg).await, "db", None).await {
        Err(ProviderError::Unavailable(Outage { message: m, .. })) => {
            assert!(m.contains("certificate") && m.contains("ca_file"), "{m}")
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

// ------------------------------------------------------------------ plugin

#[test]
fn plugin_serves_latest_version_field_and_binary() {
    let double = AzureDouble::start();
    let app = app(&double, 3599);
    let plain = AzureDouble::unique("api-key");
    let v1 = double.add_version(VAULT, &plain, "api-key-one");
    double.add_version(VAULT, &plain, "api-key-two");
    let json_name = AzureDouble::unique("db");
    double.add_version(
        VAULT,
        &json_name,
        r#"{"user":"app","password":"pw-in-json-77"}"#,
    );
    let pfx_name = AzureDouble::unique("tls-pfx");
    // Binary content (a PFX, say) is stored base64-encoded, as the portal and CLI do.
    let binary: Vec<u8> = vec![0x30, 0x82, 0x00, 0xff, 0xfe, 0x00, 0x01];
    double.add_version(VAULT, &pfx_name, "MIIA//4AAQ==");

    let plugin = Plugin::start(Some(&toml_provider("kv", &double, &app, VAULT, "")), &[]);
    let answer = plugin.get_secret(&engine_request(&plain, &[]));
    assert_eq!(answer.value(), b"api-key-two", "{}", answer.err());
    let answer = plugin.get_secret(&engine_request(
        "st_pinned",
        &[("vaultbridge.path", &plain), ("vaultbridge.version", &v1)],
    ));
    assert_eq!(answer.value(), b"api-key-one", "{}", answer.err());
    let answer = plugin.get_secret(&engine_request(
        "st_db_password",
        &[
            ("vaultbridge.path", &json_name),
            ("vaultbridge.field", "password"),
        ],
    ));
    assert_eq!(answer.value(), b"pw-in-json-77", "{}", answer.err());
    let answer = plugin.get_secret(&engine_request(
        "st_cert",
        &[
            ("vaultbridge.path", &pfx_name),
            ("vaultbridge.decode", "base64"),
        ],
    ));
    assert_eq!(answer.value(), binary, "{}", answer.err());

    assert_log_has_no_values(
        &plugin.log(),
        &[
            b"api-key-one",
            b"api-key-two",
            b"pw-in-json-77",
            app.secret.as_bytes(),
        ],
    );
}

#[test]
fn plugin_routes_to_two_vaults_in_one_config() {
    let double = AzureDouble::start();
    let app = app(&double, 3599);
    let name = AzureDouble::unique("shared-name");
    double.add_version(VAULT, &name, "from-vault-one");
    double.add_version(VAULT2, &name, "from-vault-two");
    let config = format!(
        "default_provider = \"one\"\n{}{}",
        toml_provider("one", &double, &app, VAULT, ""),
        toml_provider("two", &double, &app, VAULT2, "")
    );
    let plugin = Plugin::start(Some(&config), &[]);
    let answer = plugin.get_secret(&engine_request(&name, &[]));
    assert_eq!(answer.value(), b"from-vault-one", "{}", answer.err());
    let answer = plugin.get_secret(&engine_request(&name, &[("vaultbridge.provider", "two")]));
    assert_eq!(answer.value(), b"from-vault-two", "{}", answer.err());
    let answer = plugin.get_secret(&engine_request(&name, &[("vaultbridge.provider", "one")]));
    assert_eq!(answer.value(), b"from-vault-one", "{}", answer.err());
}

#[test]
fn plugin_reports_missing_forbidden_and_bad_credentials() {
    let double = AzureDouble::start();
    let app = app(&double, 3599);
    let forbidden = AzureDouble::unique("locked");
    double.put_secret(
        VAULT,
        &forbidden,
        json!({"value": "locked-value", "denied": true}),
    );
    let missing = AzureDouble::unique("absent");
    let plugin = Plugin::start(Some(&toml_provider("kv", &double, &app, VAULT, "")), &[]);

    let err = plugin.get_secret(&engine_request(&missing, &[])).err();
    assert!(err.contains("not found") && err.contains(&missing), "{err}");
    assert!(err.contains(&double.vault_url(VAULT)), "{err}");
    let err = plugin.get_secret(&engine_request(&forbidden, &[])).err();
    assert!(
        err.contains("access denied") && err.contains(&app.client_id),
        "{err}"
    );
    let err = plugin
        .get_secret(&engine_request(
            "st_x",
            &[("vaultbridge.path", "not_a_kv_name")],
        ))
        .err();
    assert!(err.contains("vaultbridge.path"), "{err}");

    let bad = app_with_secret_file(&double, &app, "wrong-secret-never-logged-91");
    let plugin2 = Plugin::start(Some(&toml_provider("kv", &double, &bad, VAULT, "")), &[]);
    let err = plugin2.get_secret(&engine_request(&missing, &[])).err();
    assert!(
        err.contains("authentication failed") && err.contains("AADSTS7000215"),
        "{err}"
    );
    for log in [plugin.log(), plugin2.log()] {
        assert_log_has_no_values(
            &log,
            &[
                b"locked-value",
                app.secret.as_bytes(),
                bad.secret.as_bytes(),
            ],
        );
    }
}

/// The same app, but its secret file holds `secret`.
fn app_with_secret_file(double: &AzureDouble, app: &App, secret: &str) -> App {
    let secret_file = double
        .dir()
        .join(format!("{}.bad", AzureDouble::unique("secret")));
    std::fs::write(&secret_file, secret).unwrap();
    App {
        tenant: app.tenant.clone(),
        client_id: app.client_id.clone(),
        secret: secret.to_string(),
        secret_file,
    }
}

#[test]
fn plugin_answers_after_throttling() {
    let double = AzureDouble::start();
    let app = app(&double, 3599);
    let name = AzureDouble::unique("busy");
    double.put_secret(
        VAULT,
        &name,
        json!({"value": "eventually", "throttle": 2, "retry_after": 1}),
    );
    let plugin = Plugin::start(Some(&toml_provider("kv", &double, &app, VAULT, "")), &[]);
    let answer = plugin.get_secret(&engine_request(&name, &[]));
    assert_eq!(answer.value(), b"eventually", "{}", answer.err());
    assert_eq!(double.stats()["throttled"][format!("{VAULT}/{name}")], 2);
}

#[test]
fn plugin_keeps_working_across_token_expiry() {
    let double = AzureDouble::start();
    let lifetime = 3;
    let app = app(&double, lifetime);
    let name = AzureDouble::unique("steady");
    double.add_version(VAULT, &name, "steady-value");
    let plugin = Plugin::start(Some(&toml_provider("kv", &double, &app, VAULT, "")), &[]);
    let until = Instant::now() + Duration::from_secs(2 * lifetime + 1);
    let mut requests = 0;
    while Instant::now() < until {
        let answer = plugin.get_secret(&engine_request(&name, &[]));
        assert_eq!(
            answer.value(),
            b"steady-value",
            "request {requests}: {}",
            answer.err()
        );
        requests += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(requests > 10, "{requests}");
    assert!(tokens_issued(&double, &app.client_id) >= 3);
    // The metrics see the token's expiry (the keeper reads it).
    let expires_in = "vaultbridge_credential_expires_in_seconds{provider=\"kv\"}";
    let seen = wait_until(Duration::from_secs(5), || {
        plugin
            .metric(expires_in)
            .is_some_and(|left| left <= lifetime as f64)
    });
    assert!(seen, "{:?}", plugin.metric(expires_in));
    assert!(
        plugin
            .metric("vaultbridge_credential_last_renewal_timestamp_seconds{provider=\"kv\"}")
            .is_some()
    );
    assert_eq!(
        double.stats()["secret_gets"][format!("{VAULT}/{name}")]
            .as_u64()
            .unwrap(),
        requests
    );
}

#[test]
fn check_command_proves_reachability_and_authentication() {
    let double = AzureDouble::start();
    let app = app(&double, 3599);
    let dir = tempfile::tempdir().unwrap();
    let run = |config: &str| {
        let path = dir.path().join("config.toml");
        std::fs::write(&path, config).unwrap();
        std::process::Command::new(vaultbridge_tests::binary())
            .arg("check")
            .arg("--config")
            .arg(&path)
            .env_clear()
            .output()
            .unwrap()
    };
    let out = run(&toml_provider("kv", &double, &app, VAULT, ""));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("ok    kv (azure)") && text.contains(&app.client_id),
        "{text}"
    );

    let bad = app_with_secret_file(&double, &app, "not-the-secret-5150");
    let out = run(&toml_provider("kv", &double, &bad, VAULT, ""));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("FAIL  kv (azure)") && text.contains("AADSTS7000215"),
        "{text}"
    );
    assert!(!text.contains("not-the-secret-5150"), "{text}");
}
