//! Google Cloud Secret Manager: the provider against the Secret Manager
//! double (`tests/gcp-double/`), through Google's official Rust client —
//! directly and through the real plugin's socket — and the double itself
//! checked with Google's official Python clients.
//!
//! Each test seeds its own project, identities and secrets (unique names),
//! so the tests share one double safely while running in parallel.
//!
//! What every backend must do (found, field, version, binary, not found,
//! denied, bad credentials, hung, throttled, check, the environment form,
//! down) is the conformance suite's (`tests/tests/conformance.rs`, fixture
//! `tests/src/conformance/gcp.rs`); this suite keeps what is Google's own:
//! the three credential flows, addressing, and the error cases.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::json;
use vaultbridge::tuning::{Tuning, Upstream};
use vaultbridge_providers::duration::Timeout;
use vaultbridge_providers::gcp::{CredentialConfig, GcpConfig, build};
use vaultbridge_providers::{Provider, ProviderError, SecretPath, SecretRef};
use vaultbridge_tests::docker::repo_root;
use vaultbridge_tests::gcp_double::{GcpDouble, python};
use vaultbridge_tests::{Plugin, assert_log_has_no_values, engine_request};

static NUMBERS: AtomicU64 = AtomicU64::new(1);

/// The double has one metadata server: the tests that set it take turns.
static METADATA: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn metadata_turn() -> std::sync::MutexGuard<'static, ()> {
    METADATA
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A project of this test's own, with its number.
fn project(double: &GcpDouble) -> (String, u64) {
    let id = GcpDouble::unique("proj");
    let number = 700_000_000
        + u64::from(std::process::id()) * 1000
        + NUMBERS.fetch_add(1, Ordering::Relaxed);
    double.add_project(&id, number);
    (id, number)
}

fn config(double: &GcpDouble, project: &str, credential: CredentialConfig) -> GcpConfig {
    GcpConfig {
        project: Some(project.to_string()),
        location: None,
        endpoint: Some(double.url()),
        credential,
        timeout: Some(Timeout::Text("3s".into())),
    }
}

fn key(path: &std::path::Path) -> CredentialConfig {
    CredentialConfig::ServiceAccountKey {
        key_file: path.to_path_buf(),
    }
}

/// The start-up error a config gets.
async fn build_error(config: &GcpConfig) -> vaultbridge_providers::ConfigError {
    match build(config, "providers.gsm").await {
        Ok(_) => panic!("the provider built"),
        Err(err) => err,
    }
}

async fn provider(config: &GcpConfig) -> Arc<dyn Provider> {
    build(config, "providers.gsm").await.expect("build")
}

async fn fetch(
    p: &dyn Provider,
    path: &str,
    version: Option<&str>,
) -> Result<Vec<u8>, ProviderError> {
    p.fetch(SecretRef {
        path: &SecretPath::parse(path).map_err(|err| ProviderError::Invalid(err.to_string()))?,
        version,
    })
    .await
    .map(|v| v.expose().to_vec())
}

#[track_caller]
fn assert_kind(result: &Result<Vec<u8>, ProviderError>, kind: &str, needles: &[&str]) -> String {
    let err = match result {
        Ok(value) => panic!("expected {kind}, got {} bytes", value.len()),
        Err(err) => err,
    };
    let shown = err.to_string();
    assert!(
        format!("{err:?}").starts_with(kind),
        "expected {kind}: {shown}"
    );
    for needle in needles {
        assert!(shown.contains(needle), "expected {needle:?} in: {shown}");
    }
    shown
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The double answers Google's official Python clients as Google does:
/// the JWT grant and the STS exchange of `google-auth`, the metadata
/// server, and `google-cloud-secret-manager`'s access call with its values,
/// names and error kinds.
#[test]
fn google_python_clients_agree_with_the_double() {
    let _metadata = metadata_turn();
    let double = GcpDouble::start();
    let (project, number) = project(&double);
    let account = double.add_service_account(&GcpDouble::unique("py-sa"), &project);
    let other = double.add_service_account(&GcpDouble::unique("py-other"), &project);
    let mut wrong: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&account.key_file).unwrap()).unwrap();
    wrong["private_key"] = json!(other.private_key);
    let wrong_key_file = double.dir().join(format!("{project}-wrong.json"));
    std::fs::write(&wrong_key_file, wrong.to_string()).unwrap();

    let name = GcpDouble::unique;
    let (
        text,
        versioned,
        binary,
        denied,
        disabled,
        destroyed,
        throttled,
        unavailable,
        regional,
        federated,
        on_metadata,
    ) = (
        name("text"),
        name("versioned"),
        name("binary"),
        name("denied"),
        name("disabled"),
        name("destroyed"),
        name("throttled"),
        name("unavailable"),
        name("regional"),
        name("federated"),
        name("metadata"),
    );
    let add = |secret: &str, value: &[u8]| double.add_version(&project, None, secret, value);
    add(&text, b"py-text-value");
    double.put_secret(
        &project,
        None,
        &versioned,
        json!({"value_b64": "b2xkZXI=", "alias": "stable"}),
    );
    add(&versioned, b"latest");
    add(&binary, b"\x00\xff\x80binary");
    add(&denied, b"x");
    double.put_secret(
        &project,
        None,
        &denied,
        json!({"accessors": ["nobody@example.com"]}),
    );
    let v = add(&disabled, b"x");
    double.set_state(&project, None, &disabled, v, "DISABLED");
    let v = add(&destroyed, b"x");
    double.set_state(&project, None, &destroyed, v, "DESTROYED");
    add(&throttled, b"x");
    double.put_secret(&project, None, &throttled, json!({"throttle": 1}));
    add(&unavailable, b"x");
    double.put_secret(&project, None, &unavailable, json!({"unavailable": 1}));
    double.add_version(
        &project,
        Some("europe-west1"),
        &regional,
        b"py-regional-value",
    );
    add(&federated, b"py-federated-value");
    add(&on_metadata, b"py-metadata-value");

    let subject_token = name("subject-token");
    let audience = double.add_pool(
        number,
        &name("pool"),
        &subject_token,
        "system:serviceaccount:ns:app",
    );
    let token_file = double.dir().join(format!("{project}.token"));
    std::fs::write(&token_file, &subject_token).unwrap();
    let wrong_token_file = double.dir().join(format!("{project}.wrong-token"));
    std::fs::write(&wrong_token_file, "not-the-registered-token").unwrap();
    let external_account_file = double.external_account_file(&project, &audience, &token_file);
    let metadata_email = format!("{}@developer.gserviceaccount.com", number);
    double.set_metadata(Some(&metadata_email), 200);

    let spec = json!({
        "endpoint": double.url(),
        "project": project, "number": number,
        "key_file": account.key_file, "wrong_key_file": wrong_key_file,
        "text": text, "text_value": "py-text-value",
        "versioned": versioned, "older": "older", "latest": "latest", "alias": "stable",
        "binary": binary, "binary_hex": "00ff8062696e617279",
        "missing": name("missing"), "denied": denied, "disabled": disabled, "destroyed": destroyed,
        "throttled": throttled, "unavailable": unavailable,
        "regional": regional, "regional_value": "py-regional-value", "location": "europe-west1",
        "external_account_file": external_account_file, "wrong_subject_token_file": wrong_token_file,
        "federated": federated, "federated_value": "py-federated-value",
        "metadata_host": format!("127.0.0.1:{}", double.port()), "metadata_email": metadata_email,
        "metadata_secret": on_metadata, "metadata_value": "py-metadata-value",
    });
    let output = Command::new(python())
        .arg(repo_root().join("tests/gcp-double/check_double.py"))
        .arg(spec.to_string())
        .env_remove("GOOGLE_APPLICATION_CREDENTIALS")
        // google-auth reads it when imported.
        .env("GCE_METADATA_HOST", format!("127.0.0.1:{}", double.port()))
        .output()
        .expect("run check_double.py (tests/setup.sh installs google-cloud-secret-manager)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "Google's Python clients disagree with the double:\n{stdout}\n{stderr}"
    );
    for check in [
        "jwt_grant",
        "jwt_grant_refused",
        "access_with_oauth_token",
        "access_with_self_signed_jwt",
        "versions_and_alias",
        "regional",
        "errors",
        "sts_exchange",
        "sts_exchange_refused",
        "metadata_server",
    ] {
        assert!(
            stdout.lines().any(|l| l == format!("ok {check}")),
            "no 'ok {check}' in:\n{stdout}"
        );
    }
    let stats = double.stats();
    assert!(
        stats["tokens"]["jwt_grant"].as_u64().unwrap() >= 1,
        "{stats}"
    );
    assert!(stats["tokens"]["sts"].as_u64().unwrap() >= 1, "{stats}");
    assert!(
        stats["tokens"]["metadata"].as_u64().unwrap() >= 1,
        "{stats}"
    );
}

/// A service account key: Google's Rust client signs its own token (it asks
/// no token endpoint), and every way of addressing a value works.
#[test]
fn service_account_key_reads_by_id_full_name_version_alias_and_region() {
    let double = GcpDouble::start();
    let (project, number) = project(&double);
    let account = double.add_service_account(&GcpDouble::unique("sa"), &project);
    let secret = GcpDouble::unique("db");
    double.put_secret(
        &project,
        None,
        &secret,
        json!({"value_b64": "b25l", "alias": "stable"}),
    );
    double.add_version(&project, None, &secret, b"two");
    let regional = GcpDouble::unique("regional");
    double.add_version(&project, Some("europe-west1"), &regional, b"in-europe");
    let grants_before = double.stats()["tokens"]["jwt_grant"].as_u64().unwrap();

    runtime().block_on(async {
        let p = provider(&config(&double, &project, key(&account.key_file))).await;
        assert_eq!(fetch(&*p, &secret, None).await.unwrap(), b"two");
        assert_eq!(fetch(&*p, &secret, Some("1")).await.unwrap(), b"one");
        assert_eq!(fetch(&*p, &secret, Some("stable")).await.unwrap(), b"one");
        assert_eq!(fetch(&*p, &secret, Some("latest")).await.unwrap(), b"two");
        let full = format!("projects/{project}/secrets/{secret}");
        assert_eq!(fetch(&*p, &full, None).await.unwrap(), b"two");
        // By project number too.
        let by_number = format!("projects/{number}/secrets/{secret}");
        assert_eq!(fetch(&*p, &by_number, None).await.unwrap(), b"two");
        // The policy judges one spelling.
        let path = |s: &str| SecretPath::parse(s).unwrap();
        assert_eq!(p.policy_name(&path(&secret)).unwrap(), full);
        assert_eq!(p.policy_name(&path(&full)).unwrap(), full);

        // A regional secret needs a provider of its region...
        let regional_full = format!("projects/{project}/locations/europe-west1/secrets/{regional}");
        assert_kind(
            &fetch(&*p, &regional_full, None).await,
            "Invalid",
            &["location = \"europe-west1\""],
        );
        // ...whose endpoint is the regional one (here: the double again).
        let mut in_region = config(&double, &project, key(&account.key_file));
        in_region.location = Some("europe-west1".into());
        let r = provider(&in_region).await;
        assert_eq!(fetch(&*r, &regional, None).await.unwrap(), b"in-europe");
        assert_eq!(
            fetch(&*r, &regional_full, None).await.unwrap(),
            b"in-europe"
        );
        assert_eq!(r.policy_name(&path(&regional)).unwrap(), regional_full);
        assert_kind(
            &fetch(&*r, &full, None).await,
            "Invalid",
            &["global secret"],
        );
        let check = r.check().await.expect("check");
        assert!(check.contains(&account.email), "{check}");
    });
    let stats = double.stats();
    assert_eq!(
        stats["tokens"]["jwt_grant"].as_u64().unwrap(),
        grants_before,
        "the Rust client self-signs: no JWT grant expected ({stats})"
    );
    assert!(
        stats["tokens"]["self_signed"].as_u64().unwrap() >= 1,
        "{stats}"
    );
}

/// Labels the provider refuses before asking Google, each saying what to fix.
#[test]
fn bad_labels_are_refused_with_what_to_fix() {
    let double = GcpDouble::start();
    let (project, _) = project(&double);
    let account = double.add_service_account(&GcpDouble::unique("sa"), &project);
    runtime().block_on(async {
        let p = provider(&config(&double, &project, key(&account.key_file))).await;
        for (path, version, needle) in [
            ("db", Some("0"), "vaultbridge.version"),
            ("db", Some("1.5"), "vaultbridge.version"),
            ("db.prod", None, "not a secret id"),
            (
                "projects/p/secrets/db/versions/3",
                None,
                "vaultbridge.version",
            ),
            ("projects/Bad_Project/secrets/db", None, "not a project id"),
            (
                "folders/1/secrets/db",
                None,
                "projects/<project>/secrets/<id>",
            ),
            ("projects/p/locations/EU/secrets/db", None, "not a location"),
        ] {
            assert_kind(&fetch(&*p, path, version).await, "Invalid", &[needle]);
        }
        let mut no_project = config(&double, &project, key(&account.key_file));
        no_project.project = None;
        let p = provider(&no_project).await;
        assert_kind(
            &fetch(&*p, "db", None).await,
            "Invalid",
            &["no project", "set project"],
        );
    });
}

/// Workload identity federation: the subject token file is exchanged at the
/// STS endpoint; a token the pool refuses is reported with STS's error code,
/// never the token.
#[test]
fn workload_identity_federation_exchanges_the_subject_token_file() {
    let double = GcpDouble::start();
    let (project, number) = project(&double);
    let subject_token = GcpDouble::unique("eyJ.subject");
    let subject = "system:serviceaccount:prod:billing";
    let audience = double.add_pool(number, &GcpDouble::unique("pool"), &subject_token, subject);
    let principal = GcpDouble::principal(&audience, subject);
    let secret = GcpDouble::unique("federated");
    double.add_version(&project, None, &secret, b"federated-value");
    double.put_secret(&project, None, &secret, json!({"accessors": [principal]}));
    let token_file = double.dir().join(format!("{secret}.token"));
    std::fs::write(&token_file, format!("{subject_token}\n")).unwrap();
    let file = double.external_account_file(&secret, &audience, &token_file);
    let exchanges = || double.stats()["tokens"]["sts"].as_u64().unwrap();

    runtime().block_on(async {
        let before = exchanges();
        let wif = CredentialConfig::ExternalAccount {
            credential_file: file.clone(),
            token_url: None,
        };
        let p = provider(&config(&double, &project, wif)).await;
        assert_eq!(fetch(&*p, &secret, None).await.unwrap(), b"federated-value");
        assert_eq!(fetch(&*p, &secret, None).await.unwrap(), b"federated-value");
        assert_eq!(exchanges(), before + 1, "one exchange, the token is cached");

        // The token_url override wins over the file's.
        let overridden = CredentialConfig::ExternalAccount {
            credential_file: file.clone(),
            token_url: Some(format!("http://127.0.0.1:{}/nowhere", double.port())),
        };
        let p = provider(&config(&double, &project, overridden)).await;
        let shown = assert_kind(
            &fetch(&*p, &secret, None).await,
            "Unauthenticated",
            &["/nowhere", "HTTP 404"],
        );
        assert!(!shown.contains(&subject_token), "{shown}");

        // A subject token the pool does not accept.
        let wrong_token = double.dir().join(format!("{secret}.wrong"));
        std::fs::write(&wrong_token, "eyJ.wrong-subject-token").unwrap();
        let wrong_file =
            double.external_account_file(&format!("{secret}-wrong"), &audience, &wrong_token);
        let wif = CredentialConfig::ExternalAccount {
            credential_file: wrong_file,
            token_url: None,
        };
        let p = provider(&config(&double, &project, wif)).await;
        let shown = assert_kind(
            &fetch(&*p, &secret, None).await,
            "Unauthenticated",
            &[
                "token exchange endpoint",
                "HTTP 400",
                "invalid_grant",
                "workload identity federation",
            ],
        );
        assert!(!shown.contains("wrong-subject-token"), "{shown}");

        // The file is read at every exchange: emptied, a new provider says so.
        std::fs::write(&wrong_token, "").unwrap();
        let wif = CredentialConfig::ExternalAccount {
            credential_file: double.dir().join(format!("{secret}-wrong.json")),
            token_url: None,
        };
        // Checked at start-up...
        let err = build_error(&config(&double, &project, wif)).await;
        assert!(err.message.contains("empty"), "{err}");
        // ...and at every exchange: the provider that was refused makes new
        // credentials (Google's would repeat the refusal forever), at most
        // once a second.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let shown = assert_kind(
            &fetch(&*p, &secret, None).await,
            "Unauthenticated",
            &["subject token file", "empty"],
        );
        assert!(
            shown.contains(&wrong_token.display().to_string()),
            "{shown}"
        );
    });
}

/// The metadata server: its token, its missing service account (404) and
/// its outage (503, worth another attempt).
#[test]
fn metadata_server_gives_the_attached_service_account_token() {
    let _metadata = metadata_turn();
    let double = GcpDouble::start();
    let (project, number) = project(&double);
    let email = format!("{number}-compute@developer.gserviceaccount.com");
    double.set_metadata(Some(&email), 200);
    let secret = GcpDouble::unique("on-gce");
    double.add_version(&project, None, &secret, b"metadata-value");
    double.put_secret(&project, None, &secret, json!({"accessors": [email]}));
    let metadata = CredentialConfig::MetadataServer {
        endpoint: Some(double.url()),
    };

    runtime().block_on(async {
        let p = provider(&config(&double, &project, metadata.clone())).await;
        assert_eq!(fetch(&*p, &secret, None).await.unwrap(), b"metadata-value");
    });
    // No service account attached yet: refused (404); once one is, the same
    // provider gets its token (Google's credentials alone would not).
    double.set_metadata(None, 200);
    runtime().block_on(async {
        let p = provider(&config(&double, &project, metadata.clone())).await;
        assert_kind(
            &fetch(&*p, &secret, None).await,
            "Unauthenticated",
            &["metadata server", "HTTP 404"],
        );
        double.set_metadata(Some(&email), 200);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(fetch(&*p, &secret, None).await.unwrap(), b"metadata-value");
    });
    double.set_metadata(Some(&email), 503);
    runtime().block_on(async {
        let p = provider(&config(&double, &project, metadata.clone())).await;
        let err = fetch(&*p, &secret, None).await.unwrap_err();
        assert!(err.retry_safe(), "a token read is safe to repeat: {err:?}");
        assert!(err.to_string().contains("HTTP 503"), "{err}");
    });
    double.set_metadata(Some(&email), 200);
}

/// Google's answers, each sorted into the kind the plugin acts on, naming
/// the secret, the identity and what to do.
#[test]
fn errors_name_the_secret_the_identity_and_the_fix() {
    let double = GcpDouble::start();
    let (project, number) = project(&double);
    let account = double.add_service_account(&GcpDouble::unique("sa"), &project);
    let name = GcpDouble::unique;
    let (db, denied, disabled, destroyed, flaky) = (
        name("db"),
        name("denied"),
        name("disabled"),
        name("destroyed"),
        name("flaky"),
    );
    double.add_version(&project, None, &db, b"v1");
    double.add_version(&project, None, &denied, b"x");
    double.put_secret(
        &project,
        None,
        &denied,
        json!({"accessors": ["someone@else.com"]}),
    );
    let v = double.add_version(&project, None, &disabled, b"x");
    double.set_state(&project, None, &disabled, v, "DISABLED");
    double.add_version(&project, None, &destroyed, b"x");
    double.set_state(&project, None, &destroyed, 1, "DESTROYED");
    double.add_version(&project, None, &flaky, b"flaky-value");
    double.put_secret(&project, None, &flaky, json!({"unavailable": 1}));

    runtime().block_on(async {
        let p = provider(&config(&double, &project, key(&account.key_file))).await;
        assert_kind(
            &fetch(&*p, &name("missing"), None).await,
            "NotFound",
            &["NOT_FOUND", "not found"],
        );
        assert_kind(
            &fetch(&*p, &db, Some("7")).await,
            "NotFound",
            &["version 7", "not found"],
        );
        assert_kind(
            &fetch(&*p, &disabled, None).await,
            "NotFound",
            &["is disabled", "DISABLED", "gcloud secrets versions enable"],
        );
        assert_kind(
            &fetch(&*p, &destroyed, Some("1")).await,
            "NotFound",
            &["is destroyed", "DESTROYED"],
        );
        assert_kind(
            &fetch(&*p, &denied, None).await,
            "Denied",
            &[
                &account.email,
                &denied,
                "Secret Manager Secret Accessor",
                "roles/secretmanager.secretAccessor",
            ],
        );
        // 503: retry-safe (a read); one attempt per call.
        let err = fetch(&*p, &flaky, None).await.unwrap_err();
        assert!(err.retry_safe(), "{err:?}");
        assert_eq!(
            double.accesses(number, None, &flaky),
            1,
            "the provider made one attempt"
        );
        // Through the plugin's one retry owner, the next attempt gets the value.
        double.put_secret(&project, None, &flaky, json!({"unavailable": 1}));
        let up = Upstream::new(
            "gsm".into(),
            p.clone(),
            Tuning {
                deadline: Duration::from_secs(5),
                ..Tuning::default()
            },
        );
        let path = SecretPath::parse(&flaky).unwrap();
        let value = up
            .fetch(SecretRef {
                path: &path,
                version: None,
            })
            .await
            .expect("retried");
        assert_eq!(value.expose(), b"flaky-value");
        assert_eq!(double.accesses(number, None, &flaky), 3);
    });

    // A key the service account does not have: Google refuses the token.
    let other = double.add_service_account(&GcpDouble::unique("other"), &project);
    let mut wrong: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&account.key_file).unwrap()).unwrap();
    wrong["private_key"] = json!(other.private_key);
    let wrong_file: PathBuf = double.dir().join(format!("{project}-wrong.json"));
    std::fs::write(&wrong_file, wrong.to_string()).unwrap();
    runtime().block_on(async {
        let p = provider(&config(&double, &project, key(&wrong_file))).await;
        assert_kind(
            &fetch(&*p, &db, None).await,
            "Unauthenticated",
            &["refused the token", &account.email, "UNAUTHENTICATED"],
        );
        let err = p.check().await.unwrap_err();
        assert!(matches!(err, ProviderError::Unauthenticated(_)), "{err:?}");
    });
}

/// Bad configuration stops the start-up, naming the key and the file, never
/// a key's content.
#[test]
fn bad_credential_files_stop_the_start_up() {
    let double = GcpDouble::start();
    let (project, _) = project(&double);
    let account = double.add_service_account(&GcpDouble::unique("sa"), &project);
    let key_body = account.private_key.lines().nth(2).unwrap().to_string();
    let mut broken: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&account.key_file).unwrap()).unwrap();
    // A PKCS#8 envelope around garbage: caught by signing once at build.
    broken["private_key"] = json!(format!(
        "-----BEGIN PRIVATE KEY-----\n{key_body}\n-----END PRIVATE KEY-----\n"
    ));
    let broken_file = double.dir().join(format!("{project}-broken.json"));
    std::fs::write(&broken_file, broken.to_string()).unwrap();
    runtime().block_on(async {
        let err = build_error(&config(&double, &project, key(&broken_file))).await;
        assert_eq!(err.key, "providers.gsm.credential.key_file");
        assert!(err.message.contains("cannot sign"), "{err}");
        assert!(!err.to_string().contains(&key_body), "{err}");

        let mut plain_http = config(&double, &project, key(&account.key_file));
        plain_http.endpoint = Some("http://secretmanager.example.com".into());
        let err = build_error(&plain_http).await;
        assert_eq!(err.key, "providers.gsm.endpoint");
    });
}

/// Through the real binary: a config file with a service account key, the
/// value over the socket, and nothing secret in the log.
#[test]
fn the_plugin_serves_a_gcp_secret_over_its_socket() {
    let double = GcpDouble::start();
    let (project, _) = project(&double);
    let account = double.add_service_account(&GcpDouble::unique("sa"), &project);
    let secret = GcpDouble::unique("api-key");
    double.add_version(&project, None, &secret, br#"{"token":"plugin-gcp-value"}"#);
    let config = format!(
        "[providers.gsm]\ntype = \"gcp\"\nproject = \"{project}\"\nendpoint = \"{}\"\ncache_ttl = \"0s\"\n\
         [providers.gsm.credential]\ntype = \"service_account_key\"\nkey_file = \"{}\"\n",
        double.url(),
        account.key_file.display()
    );
    let plugin = Plugin::start(Some(&config), &[]);
    let answer = plugin.get_secret(&engine_request(
        "api_key",
        &[
            ("vaultbridge.provider", "gsm"),
            ("vaultbridge.path", &secret),
            ("vaultbridge.field", "token"),
        ],
    ));
    assert_eq!(answer.value(), b"plugin-gcp-value", "{}", answer.err());
    let missing = plugin.get_secret(&engine_request(
        "gone",
        &[
            ("vaultbridge.provider", "gsm"),
            ("vaultbridge.path", "no-such-secret"),
        ],
    ));
    assert!(missing.err().contains("not found"), "{}", missing.err());
    let key_body = account.private_key.lines().nth(2).unwrap();
    assert_log_has_no_values(&plugin.log(), &[b"plugin-gcp-value", key_body.as_bytes()]);
}
