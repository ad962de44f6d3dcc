//! The `azure` backend's fixture: the Key Vault / Entra test double over
//! TLS, an app registration with its secret in a file, and the same app
//! with a wrong secret. The double itself denies a secret, throttles one
//! (429 + Retry-After) and counts the reads that reached it.

use base64::Engine as _;
use serde_json::json;

use super::{Fixture, Labels, Role, Seed, Supported, labels};
use crate::azure_double::AzureDouble;
use crate::proxy::BlackHole;

const VAULT: &str = "vbtest";
const BINARY: &[u8] = b"\x00\xff\xfeconf-azure-binary-\x80\x04";

pub struct AzureFixture {
    double: AzureDouble,
    tenant: String,
    client_id: String,
    client_secret: String,
    secret_file: std::path::PathBuf,
    wrong_file: std::path::PathBuf,
    wrong_secret: String,
    /// Secret names, unique to this process (the double may be shared).
    names: Names,
    older_id: String,
    /// Seeded values (unique per run).
    text: String,
    json_password: String,
    older: String,
    latest: String,
    denied_value: String,
    hole: BlackHole,
}

struct Names {
    text: String,
    json: String,
    binary: String,
    versioned: String,
    denied: String,
    throttled: String,
    missing: String,
}

impl AzureFixture {
    pub fn start() -> AzureFixture {
        let double = AzureDouble::start();
        let tenant = AzureDouble::unique("conf-tenant");
        let client_id = AzureDouble::unique("conf-app");
        let client_secret = AzureDouble::unique("conf-azure-client-secret");
        double.add_client(&tenant, &client_id, &client_secret, 3599);
        let secret_file = double.dir().join(format!("{client_id}.secret"));
        std::fs::write(&secret_file, format!("{client_secret}\n")).expect("write secret");
        let wrong_secret = AzureDouble::unique("conf-azure-wrong-secret");
        let wrong_file = double.dir().join(format!("{client_id}.wrong"));
        std::fs::write(&wrong_file, &wrong_secret).expect("write secret");

        let name = AzureDouble::unique;
        let names = Names {
            text: name("conf-text"),
            json: name("conf-json"),
            binary: name("conf-binary"),
            versioned: name("conf-versioned"),
            denied: name("conf-denied"),
            throttled: name("conf-throttled"),
            missing: name("conf-missing"),
        };
        let text = name("conf-azure-text");
        let json_password = name("conf-azure-json-pw");
        let older = name("conf-azure-version-one");
        let latest = name("conf-azure-version-two");
        let denied_value = name("conf-azure-denied");
        double.add_version(VAULT, &names.text, &text);
        double.add_version(VAULT, &names.throttled, &text);
        double.add_version(
            VAULT,
            &names.json,
            &json!({"user": "app", "password": json_password}).to_string(),
        );
        double.add_version(
            VAULT,
            &names.binary,
            &base64::engine::general_purpose::STANDARD.encode(BINARY),
        );
        let older_id = double.add_version(VAULT, &names.versioned, &older);
        double.add_version(VAULT, &names.versioned, &latest);
        double.put_secret(
            VAULT,
            &names.denied,
            json!({"value": denied_value, "denied": true}),
        );
        AzureFixture {
            double,
            tenant,
            client_id,
            client_secret,
            secret_file,
            wrong_file,
            wrong_secret,
            names,
            older_id,
            text,
            json_password,
            older,
            latest,
            denied_value,
            hole: BlackHole::start(),
        }
    }

    fn table_at(&self, vault_url: &str, secret_file: &std::path::Path) -> String {
        format!(
            "type = \"azure\"\nvault_url = \"{vault_url}\"\nauthority_host = \"{}\"\nca_file = \"{}\"\ntimeout = \"2s\"\n\
             credential = {{ type = \"client_secret\", tenant_id = \"{}\", client_id = \"{}\", client_secret_file = \"{}\" }}",
            self.double.authority_host(),
            self.double.ca_file().display(),
            self.tenant,
            self.client_id,
            secret_file.display()
        )
    }

    fn at(&self, name: &str, pairs: &[(&str, &str)]) -> Labels {
        let mut all = vec![("vaultbridge.path", name)];
        all.extend_from_slice(pairs);
        labels(Role::Ok, &all)
    }
}

impl Fixture for AzureFixture {
    fn kind(&self) -> &'static str {
        "azure"
    }

    fn table(&self, role: Role) -> Supported<String> {
        let vault = self.double.vault_url(VAULT);
        Ok(match role {
            Role::Ok => self.table_at(&vault, &self.secret_file),
            Role::Unauth => self.table_at(&vault, &self.wrong_file),
            Role::Denied => return Err("the double denies one secret to the ok app"),
            Role::Hung => {
                // The vault's own name, on a port that never answers.
                let hung = vault.replace(
                    &format!(":{}", self.double.tls_port()),
                    &format!(":{}", self.hole.port),
                );
                self.table_at(&hung, &self.secret_file)
            }
            Role::Throttled => return Err("the double throttles a secret of the ok provider"),
            Role::Lossy => return Err(NO_WRITES),
        })
    }

    fn env_form(&self) -> Vec<(String, String)> {
        vec![
            ("AZURE_KEYVAULT_URL".into(), self.double.vault_url(VAULT)),
            ("AZURE_TENANT_ID".into(), self.tenant.clone()),
            ("AZURE_CLIENT_ID".into(), self.client_id.clone()),
            ("AZURE_CLIENT_SECRET".into(), self.client_secret.clone()),
            ("AZURE_AUTHORITY_HOST".into(), self.double.authority_host()),
            // The standard way to add a CA for rustls' platform verifier.
            (
                "SSL_CERT_FILE".into(),
                self.double.ca_file().display().to_string(),
            ),
        ]
    }

    fn env_direct(&self) -> Supported<()> {
        Err(
            "the environment form trusts the double's CA through SSL_CERT_FILE, which the TLS \
             stack reads from the process environment (not settable here without unsafe): read \
             through the socket only",
        )
    }

    fn text(&self) -> Seed {
        Seed {
            labels: self.at(&self.names.text, &[]),
            value: self.text.as_bytes().to_vec(),
        }
    }

    fn json(&self) -> (Labels, String, Vec<u8>) {
        (
            self.at(&self.names.json, &[]),
            "password".into(),
            self.json_password.as_bytes().to_vec(),
        )
    }

    fn binary(&self) -> Seed {
        // Key Vault holds text: a binary file is stored base64-encoded.
        Seed {
            labels: self.at(&self.names.binary, &[("vaultbridge.decode", "base64")]),
            value: BINARY.to_vec(),
        }
    }

    fn versions(&self) -> Supported<[Seed; 2]> {
        Ok([
            Seed {
                labels: self.at(
                    &self.names.versioned,
                    &[("vaultbridge.version", &self.older_id)],
                ),
                value: self.older.as_bytes().to_vec(),
            },
            Seed {
                labels: self.at(&self.names.versioned, &[]),
                value: self.latest.as_bytes().to_vec(),
            },
        ])
    }

    fn missing(&self) -> Labels {
        self.at(&self.names.missing, &[])
    }

    fn denied(&self) -> Supported<Labels> {
        Ok(self.at(&self.names.denied, &[]))
    }

    fn throttled(&self) -> Supported<Seed> {
        Ok(Seed {
            labels: self.at(&self.names.throttled, &[]),
            value: self.text.as_bytes().to_vec(),
        })
    }

    fn throttle(&self, count: u32, retry_after_secs: u32) {
        self.double.put_secret(
            VAULT,
            &self.names.throttled,
            json!({"throttle": count, "retry_after": retry_after_secs}),
        );
    }

    fn throttle_seen(&self) -> usize {
        let key = format!("{VAULT}/{}", self.names.throttled);
        self.double.stats()["secret_gets"][&key]
            .as_u64()
            .unwrap_or(0) as usize
    }

    fn non_idempotent(&self) -> Supported<Labels> {
        Err(NO_WRITES)
    }

    fn never_logged(&self) -> Vec<Vec<u8>> {
        let mut all: Vec<Vec<u8>> = [
            &self.text,
            &self.json_password,
            &self.older,
            &self.latest,
            &self.denied_value,
            &self.client_secret,
            &self.wrong_secret,
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
        all.push(BINARY.to_vec());
        all
    }

    fn stop(&mut self) -> Supported<()> {
        self.double.stop_server();
        Ok(())
    }
}

const NO_WRITES: &str = "the azure provider makes one call, get secret, a read: it has no \
                         non-idempotent call";
