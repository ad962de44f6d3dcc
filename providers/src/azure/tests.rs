//! Unit tests: settings, validation, redaction. The behaviour against a
//! vault is tested end to end in `tests/tests/azure.rs`, against the double.

use std::collections::HashMap;

use super::*;
use crate::ProviderConfig;
use crate::duration::Timeout;

fn parse(toml_text: &str) -> Result<AzureConfig, String> {
    #[derive(serde::Deserialize)]
    struct File {
        providers: HashMap<String, ProviderConfig>,
    }
    let file: File = toml::from_str(toml_text).map_err(|e| e.to_string())?;
    match file.providers.into_values().next() {
        Some(ProviderConfig::Azure(config)) => Ok(config),
        _ => Err("not an azure provider".into()),
    }
}

fn no_env(_: &str) -> Option<String> {
    None
}

fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
    move |name| {
        pairs
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    }
}

fn build_err(config: &AzureConfig) -> ConfigError {
    AzureProvider::new(config, "providers.kv", &no_env).unwrap_err()
}

#[test]
fn parses_each_credential_and_refuses_unknown_keys() {
    let config = parse(
        r#"
        [providers.kv]
        type = "azure"
        vault_url = "https://myvault.vault.azure.net"
        authority_host = "https://login.microsoftonline.us"
        timeout = "2.5s"
        [providers.kv.credential]
        type = "client_secret"
        tenant_id = "t"
        client_id = "c"
        client_secret_file = "/run/secrets/azure"
        "#,
    )
    .unwrap();
    assert_eq!(config.timeout, Some(Timeout::from("2.5s")));
    assert!(matches!(
        config.credential,
        CredentialConfig::ClientSecret { ref client_secret_file, .. } if client_secret_file.is_some()
    ));
    // The deprecated bare number, through the tagged enum's buffering.
    let config = parse(
        r#"
        [providers.kv]
        type = "azure"
        vault_url = "https://myvault.vault.azure.net"
        timeout = 3
        credential = { type = "managed_identity" }
        "#,
    )
    .unwrap();
    assert_eq!(config.timeout, Some(Timeout::Seconds(3.0)));

    let config = parse(
        r#"
        [providers.kv]
        type = "azure"
        vault_url = "https://myvault.vault.azure.net"
        credential = { type = "managed_identity", client_id = "abc" }
        "#,
    )
    .unwrap();
    assert!(matches!(
        config.credential,
        CredentialConfig::ManagedIdentity { client_id: Some(ref id), .. } if id == "abc"
    ));

    let err = parse(
        r#"
        [providers.kv]
        type = "azure"
        vault_url = "https://myvault.vault.azure.net"
        credential = { type = "client_secret", tenant_id = "t", client_id = "c", client_secret = "inline" }
        "#,
    )
    .unwrap_err();
    assert!(err.contains("client_secret"), "{err}");

    let err = parse(
        r#"
        [providers.kv]
        type = "azure"
        vault_url = "https://myvault.vault.azure.net"
        vault = "typo"
        credential = { type = "managed_identity" }
        "#,
    )
    .unwrap_err();
    assert!(err.contains("vault"), "{err}");
}

#[test]
fn environment_selects_the_credential_like_the_azure_sdks() {
    assert!(AzureConfig::from_env(&no_env).is_none());
    assert!(AzureConfig::from_env(&env_of(&[("AZURE_KEYVAULT_URL", "")])).is_none());

    let config = AzureConfig::from_env(&env_of(&[
        ("AZURE_KEYVAULT_URL", "https://kv.vault.azure.net"),
        ("AZURE_TENANT_ID", "t"),
        ("AZURE_CLIENT_ID", "c"),
        ("AZURE_CLIENT_SECRET", "s3cr3t-value"),
        ("AZURE_FEDERATED_TOKEN_FILE", "/var/run/token"),
        ("AZURE_AUTHORITY_HOST", "https://login.chinacloudapi.cn"),
    ]))
    .unwrap();
    assert_eq!(config.vault_url, "https://kv.vault.azure.net");
    assert_eq!(
        config.authority_host.as_deref(),
        Some("https://login.chinacloudapi.cn")
    );
    let CredentialConfig::ClientSecret {
        tenant_id,
        client_id,
        client_secret,
        ..
    } = &config.credential
    else {
        panic!("expected a client secret credential: {config:?}");
    };
    assert_eq!((tenant_id.as_str(), client_id.as_str()), ("t", "c"));
    assert_eq!(
        client_secret.as_ref().unwrap().expose_secret(),
        "s3cr3t-value"
    );

    let config = AzureConfig::from_env(&env_of(&[
        ("AZURE_KEYVAULT_URL", "https://kv.vault.azure.net"),
        ("AZURE_TENANT_ID", "t"),
        ("AZURE_CLIENT_ID", "c"),
        ("AZURE_FEDERATED_TOKEN_FILE", "/var/run/token"),
    ]))
    .unwrap();
    assert!(matches!(
        config.credential,
        CredentialConfig::WorkloadIdentity { ref token_file, .. } if token_file.as_deref() == Some(std::path::Path::new("/var/run/token"))
    ));

    let config = AzureConfig::from_env(&env_of(&[
        ("AZURE_KEYVAULT_URL", "https://kv.vault.azure.net"),
        ("AZURE_CLIENT_ID", "uami"),
    ]))
    .unwrap();
    assert!(matches!(
        config.credential,
        CredentialConfig::ManagedIdentity { client_id: Some(ref id), .. } if id == "uami"
    ));
}

#[test]
fn debug_output_never_shows_the_client_secret() {
    let config = AzureConfig::from_env(&env_of(&[
        ("AZURE_KEYVAULT_URL", "https://kv.vault.azure.net"),
        ("AZURE_TENANT_ID", "t"),
        ("AZURE_CLIENT_ID", "c"),
        ("AZURE_CLIENT_SECRET", "hunter2-client-secret"),
    ]))
    .unwrap();
    let shown = format!("{config:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("REDACTED"), "{shown}");

    let provider = AzureProvider::new(&config, "providers.azure", &no_env).unwrap();
    let shown = format!("{provider:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("client_id c"), "{shown}");
}

fn secret_config(dir: &std::path::Path) -> AzureConfig {
    let secret = dir.join("secret");
    std::fs::write(&secret, "value-from-file\n").unwrap();
    AzureConfig {
        vault_url: "https://kv.vault.azure.net".into(),
        credential: CredentialConfig::ClientSecret {
            tenant_id: "t".into(),
            client_id: "c".into(),
            client_secret_file: Some(secret),
            client_secret: None,
        },
        authority_host: None,
        ca_file: None,
        timeout: None,
    }
}

#[test]
fn validation_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let good = secret_config(dir.path());
    AzureProvider::new(&good, "providers.kv", &no_env).unwrap();

    let mut config = good.clone();
    config.vault_url = "http://kv.vault.azure.net".into();
    let err = build_err(&config);
    assert_eq!(err.key, "providers.kv.vault_url");
    assert!(err.message.contains("https"), "{err}");

    config.vault_url = "https://kv.vault.azure.net/secrets/x".into();
    assert_eq!(build_err(&config).key, "providers.kv.vault_url");
    // A password in the URL is refused without being quoted, whatever else is wrong.
    config.vault_url = "http://user:hunter2@kv.vault.azure.net".into();
    let err = build_err(&config);
    assert_eq!(err.key, "providers.kv.vault_url");
    assert!(!err.to_string().contains("hunter2"), "{err}");

    let mut config = good.clone();
    config.authority_host = Some("http://login.example".into());
    assert_eq!(build_err(&config).key, "providers.kv.authority_host");

    for bad in [
        Timeout::Seconds(0.0),
        Timeout::Seconds(f64::NAN),
        Timeout::from("99ms"),
        Timeout::from("301s"),
        Timeout::from("ten"),
    ] {
        let mut config = good.clone();
        config.timeout = Some(bad.clone());
        let err = build_err(&config);
        assert_eq!(err.key, "providers.kv.timeout", "{bad:?}");
    }
    for fine in [Timeout::Seconds(2.5), Timeout::from("300s")] {
        let mut config = good.clone();
        config.timeout = Some(fine);
        AzureProvider::new(&config, "providers.kv", &no_env).unwrap();
    }

    let mut config = good.clone();
    config.ca_file = Some(dir.path().join("missing.pem"));
    assert_eq!(build_err(&config).key, "providers.kv.ca_file");
    std::fs::write(dir.path().join("junk.pem"), "not a certificate").unwrap();
    config.ca_file = Some(dir.path().join("junk.pem"));
    let err = build_err(&config);
    assert_eq!(err.key, "providers.kv.ca_file");
    assert!(
        err.message.ends_with(
            ": not PEM (no -----BEGIN line; a DER file converts with openssl x509 -inform der)"
        ),
        "{err}"
    );
    std::fs::write(dir.path().join("ca.pem"), crate::tls::tests::CERT).unwrap();
    config.ca_file = Some(dir.path().join("ca.pem"));
    AzureProvider::new(&config, "providers.kv", &no_env).unwrap();

    let mut config = good.clone();
    config.credential = CredentialConfig::ClientSecret {
        tenant_id: "t".into(),
        client_id: "c".into(),
        client_secret_file: Some(dir.path().join("nope")),
        client_secret: None,
    };
    let err = build_err(&config);
    assert_eq!(err.key, "providers.kv.credential.client_secret_file");

    config.credential = CredentialConfig::ClientSecret {
        tenant_id: "t".into(),
        client_id: "c".into(),
        client_secret_file: None,
        client_secret: None,
    };
    let err = build_err(&config);
    assert_eq!(err.key, "providers.kv.credential.client_secret_file");
    assert!(err.message.contains("AZURE_CLIENT_SECRET"), "{err}");
    // ...which the documented fallback provides.
    let env = env_of(&[("AZURE_CLIENT_SECRET", "from-env")]);
    AzureProvider::new(&config, "providers.kv", &env).unwrap();

    config.credential = CredentialConfig::ClientSecret {
        tenant_id: "".into(),
        client_id: "c".into(),
        client_secret_file: None,
        client_secret: None,
    };
    assert_eq!(build_err(&config).key, "providers.kv.credential.tenant_id");

    config.credential = CredentialConfig::WorkloadIdentity {
        tenant_id: "t".into(),
        client_id: "c".into(),
        token_file: Some(dir.path().join("no-token")),
    };
    assert_eq!(build_err(&config).key, "providers.kv.credential.token_file");

    // Credential files that never end are refused at once, not read whole.
    config.credential = CredentialConfig::WorkloadIdentity {
        tenant_id: "t".into(),
        client_id: "c".into(),
        token_file: Some("/dev/zero".into()),
    };
    let err = build_err(&config);
    assert_eq!(err.key, "providers.kv.credential.token_file");
    assert!(err.to_string().contains("larger than 64 KiB"), "{err}");
    config.credential = CredentialConfig::ClientSecret {
        tenant_id: "t".into(),
        client_id: "c".into(),
        client_secret_file: Some("/dev/zero".into()),
        client_secret: None,
    };
    let err = build_err(&config);
    assert_eq!(err.key, "providers.kv.credential.client_secret_file");
    assert!(err.to_string().contains("larger than 64 KiB"), "{err}");

    config.credential = CredentialConfig::ManagedIdentity {
        client_id: Some("a".into()),
        object_id: Some("b".into()),
        resource_id: None,
    };
    assert_eq!(build_err(&config).key, "providers.kv.credential");
}

#[tokio::test]
async fn refuses_names_and_versions_that_are_not_key_vault_ids() {
    let dir = tempfile::tempdir().unwrap();
    let provider = AzureProvider::new(&secret_config(dir.path()), "providers.kv", &no_env).unwrap();
    // "", "../x" and "x?y=1" are refused before any backend by SecretPath.
    for bad in ["", "../x", "x?y", "x#y"] {
        assert!(crate::SecretPath::parse(bad).is_err(), "{bad}");
    }
    for bad in ["db_password", "a/b", "x?y=1", &"a".repeat(128)] {
        let err = provider
            .fetch(SecretRef {
                path: &crate::SecretPath::parse(bad).unwrap(),
                version: None,
            })
            .await
            .unwrap_err();
        assert!(
            matches!(err, ProviderError::Invalid(ref m) if m.contains("vaultbridge.path")),
            "{bad}: {err}"
        );
    }
    for bad in ["", "abc/def", "../1", "v?x=1"] {
        let err = provider
            .fetch(SecretRef {
                path: &crate::SecretPath::parse("db").unwrap(),
                version: Some(bad),
            })
            .await
            .unwrap_err();
        assert!(
            matches!(err, ProviderError::Invalid(ref m) if m.contains("vaultbridge.version")),
            "{bad}: {err}"
        );
    }
}

/// Values that become the token URL's path, query parameters or form fields
/// are checked where they are read; errors name the key and never forge a
/// log line or quote a credential.
#[test]
fn hostile_ids_urls_and_credential_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let good = secret_config(dir.path());
    let with_ids = |tenant: &str, client: &str| {
        let mut config = good.clone();
        config.credential = CredentialConfig::ClientSecret {
            tenant_id: tenant.into(),
            client_id: client.into(),
            client_secret_file: Some(dir.path().join("secret")),
            client_secret: None,
        };
        config
    };
    for tenant in ["t/../evil", "t\nx", "t?x=1", "..", "t#x", "tënant", "t x"] {
        let err = build_err(&with_ids(tenant, "c"));
        assert_eq!(err.key, "providers.kv.credential.tenant_id", "{tenant:?}");
        assert!(!err.to_string().contains('\n'), "{err}");
    }
    for client in ["c\r\nX-Evil: 1", "c&scope=x", "c/../x"] {
        let err = build_err(&with_ids("t", client));
        assert_eq!(err.key, "providers.kv.credential.client_id", "{client:?}");
        assert!(!err.to_string().contains('\n'), "{err}");
    }
    // Padding is trimmed; GUIDs and domain names pass.
    AzureProvider::new(
        &with_ids(
            " 72f988bf-86f1-41af-91ab-2d7cd011db47\n",
            "contoso.onmicrosoft.com",
        ),
        "providers.kv",
        &no_env,
    )
    .unwrap();
    AzureProvider::new(
        &with_ids("contoso.onmicrosoft.com", "app_1"),
        "providers.kv",
        &no_env,
    )
    .unwrap();

    let mut config = good.clone();
    config.credential = CredentialConfig::ManagedIdentity {
        client_id: None,
        object_id: None,
        resource_id: Some("/subscriptions/1/x&api-version=evil".into()),
    };
    assert_eq!(
        build_err(&config).key,
        "providers.kv.credential.resource_id"
    );
    config.credential = CredentialConfig::ManagedIdentity {
        client_id: None,
        object_id: None,
        resource_id: Some(
            "/subscriptions/1/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id-1"
                .into(),
        ),
    };
    AzureProvider::new(&config, "providers.kv", &no_env).unwrap();

    // The authority's path and query would be dropped by the SDK.
    for authority in [
        "https://login.microsoftonline.com/evil",
        "https://login.microsoftonline.com?x=1",
        "https://login.microsoft\nonline.com",
    ] {
        let mut config = good.clone();
        config.authority_host = Some(authority.into());
        let err = build_err(&config);
        assert_eq!(err.key, "providers.kv.authority_host", "{authority:?}");
        assert!(!err.to_string().contains('\n'), "{err}");
    }
    let mut config = good.clone();
    config.authority_host = Some("https://me:hunter2@login.microsoftonline.com".into());
    assert!(!build_err(&config).to_string().contains("hunter2"));
    // A newline inside would be dropped by the URL parser, silently.
    config.authority_host = None;
    config.vault_url = "https://kv.vault.az\nure.net".into();
    assert_eq!(build_err(&config).key, "providers.kv.vault_url");
    config.vault_url = " https://kv.vault.azure.net\n".into();
    AzureProvider::new(&config, "providers.kv", &no_env).unwrap();

    // A client secret file of two lines (a PEM, say) is refused, unquoted.
    let two_lines = dir.path().join("two-lines");
    std::fs::write(&two_lines, "first-secret-line\nsecond-secret-line\n").unwrap();
    let mut config = good.clone();
    config.credential = CredentialConfig::ClientSecret {
        tenant_id: "t".into(),
        client_id: "c".into(),
        client_secret_file: Some(two_lines.clone()),
        client_secret: None,
    };
    let err = build_err(&config);
    assert_eq!(err.key, "providers.kv.credential.client_secret_file");
    assert!(err.message.contains("two-lines"), "{err}");
    assert!(!err.to_string().contains("secret-line"), "{err}");
    // The same from AZURE_CLIENT_SECRET.
    config.credential = CredentialConfig::ClientSecret {
        tenant_id: "t".into(),
        client_id: "c".into(),
        client_secret_file: None,
        client_secret: None,
    };
    let env = env_of(&[("AZURE_CLIENT_SECRET", "env-secret\u{7}value")]);
    let err = AzureProvider::new(&config, "providers.kv", &env).unwrap_err();
    assert!(err.message.contains("AZURE_CLIENT_SECRET"), "{err}");
    assert!(!err.to_string().contains("env-secret"), "{err}");

    // The federated token file: checked at start-up, trimmed.
    let token = dir.path().join("token");
    std::fs::write(&token, "eyJhbGciOi.payload-part\nsecond-token-line").unwrap();
    config.credential = CredentialConfig::WorkloadIdentity {
        tenant_id: "t".into(),
        client_id: "c".into(),
        token_file: Some(token.clone()),
    };
    let err = build_err(&config);
    assert_eq!(err.key, "providers.kv.credential.token_file");
    assert!(!err.to_string().contains("token-line"), "{err}");
    std::fs::write(&token, "eyJhbGciOi.payload.sig\n").unwrap();
    AzureProvider::new(&config, "providers.kv", &no_env).unwrap();
    assert_eq!(
        config::read_federated_token(&token).unwrap(),
        "eyJhbGciOi.payload.sig"
    );
}

/// The assertion is read again at each token request: a file that went bad
/// after start-up gives an error naming the file, never its content.
#[tokio::test]
async fn the_federated_token_is_checked_when_read_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    std::fs::write(&path, "first.token.value").unwrap();
    let assertion = FederatedTokenFile(path.clone());
    assert_eq!(assertion.secret(None).await.unwrap(), "first.token.value");
    std::fs::write(&path, "rotated.token.value\n").unwrap();
    assert_eq!(assertion.secret(None).await.unwrap(), "rotated.token.value");
    std::fs::write(&path, "bad\u{0}token-content").unwrap();
    let err = assertion.secret(None).await.unwrap_err().to_string();
    assert!(
        err.contains("token") && err.contains(&path.display().to_string()),
        "{err}"
    );
    assert!(!err.contains("token-content"), "{err}");
}

/// A hung federated token file holds one blocking thread, not the runtime
/// and not the pool, however many token requests time out on it.
#[test]
fn hung_federated_token_reads_do_not_take_the_blocking_pool() {
    crate::credential_file::hung::cancelled_reads_leave_the_pool(|path| async move {
        let _ = FederatedTokenFile(path).secret(None).await;
    });
}
