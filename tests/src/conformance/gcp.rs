//! The `gcp` backend's fixture: the Secret Manager test double, a service
//! account key file, and a key file for the same account signed with
//! another key (Google then refuses the token). The double itself denies a
//! secret to the account, throttles one (429 + Retry-After) and counts the
//! reads that reached it.

use serde_json::json;

use super::{Fixture, Labels, Role, Seed, Supported, labels};
use crate::gcp_double::GcpDouble;
use crate::proxy::BlackHole;

const BINARY: &[u8] = b"\x00\xff\xfeconf-gcp-binary-\x80\x04";

pub struct GcpFixture {
    double: GcpDouble,
    project: String,
    number: u64,
    key_file: std::path::PathBuf,
    wrong_key_file: std::path::PathBuf,
    private_keys: Vec<String>,
    names: Names,
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

impl GcpFixture {
    pub fn start() -> GcpFixture {
        let double = GcpDouble::start();
        let project = GcpDouble::unique("conf-project");
        let number = 500_000 + u64::from(std::process::id());
        double.add_project(&project, number);
        let account = double.add_service_account(&GcpDouble::unique("conf-sa"), &project);
        let other = double.add_service_account(&GcpDouble::unique("conf-other"), &project);
        // The ok account's email with the other account's key: a token
        // Google refuses (its signature does not match the account's key).
        let mut wrong: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&account.key_file).unwrap()).unwrap();
        wrong["private_key"] = json!(other.private_key);
        let wrong_key_file = double.dir().join(format!("{project}-wrong.json"));
        std::fs::write(&wrong_key_file, wrong.to_string()).unwrap();

        let name = GcpDouble::unique;
        let names = Names {
            text: name("conf-text"),
            json: name("conf-json"),
            binary: name("conf-binary"),
            versioned: name("conf-versioned"),
            denied: name("conf-denied"),
            throttled: name("conf-throttled"),
            missing: name("conf-missing"),
        };
        let text = name("conf-gcp-text");
        let json_password = name("conf-gcp-json-pw");
        let older = name("conf-gcp-version-one");
        let latest = name("conf-gcp-version-two");
        let denied_value = name("conf-gcp-denied");
        let add = |secret: &str, value: &[u8]| double.add_version(&project, None, secret, value);
        add(&names.text, text.as_bytes());
        add(&names.throttled, text.as_bytes());
        add(
            &names.json,
            json!({"user": "app", "password": json_password})
                .to_string()
                .as_bytes(),
        );
        // Secret Manager stores bytes: a binary is a binary.
        add(&names.binary, BINARY);
        add(&names.versioned, older.as_bytes());
        add(&names.versioned, latest.as_bytes());
        add(&names.denied, denied_value.as_bytes());
        double.put_secret(
            &project,
            None,
            &names.denied,
            json!({"accessors": ["someone-else@example.iam.gserviceaccount.com"]}),
        );
        GcpFixture {
            double,
            project,
            number,
            key_file: account.key_file,
            wrong_key_file,
            private_keys: vec![account.private_key, other.private_key],
            names,
            text,
            json_password,
            older,
            latest,
            denied_value,
            hole: BlackHole::start(),
        }
    }

    fn table_at(&self, endpoint: &str, key_file: &std::path::Path) -> String {
        format!(
            "type = \"gcp\"\nproject = \"{}\"\nendpoint = \"{endpoint}\"\ntimeout = \"2s\"\n\
             credential = {{ type = \"service_account_key\", key_file = \"{}\" }}",
            self.project,
            key_file.display()
        )
    }

    fn at(&self, name: &str, pairs: &[(&str, &str)]) -> Labels {
        let mut all = vec![("vaultbridge.path", name)];
        all.extend_from_slice(pairs);
        labels(Role::Ok, &all)
    }
}

impl Fixture for GcpFixture {
    fn kind(&self) -> &'static str {
        "gcp"
    }

    fn table(&self, role: Role) -> Supported<String> {
        let endpoint = self.double.url();
        Ok(match role {
            Role::Ok => self.table_at(&endpoint, &self.key_file),
            Role::Unauth => self.table_at(&endpoint, &self.wrong_key_file),
            Role::Denied => return Err("the double denies one secret to the ok service account"),
            Role::Hung => self.table_at(
                &format!("http://127.0.0.1:{}", self.hole.port),
                &self.key_file,
            ),
            Role::Throttled => return Err("the double throttles a secret of the ok provider"),
            Role::Lossy => return Err(NO_WRITES),
        })
    }

    fn env_form(&self) -> Vec<(String, String)> {
        vec![
            ("GOOGLE_CLOUD_PROJECT".into(), self.project.clone()),
            (
                "GOOGLE_APPLICATION_CREDENTIALS".into(),
                self.key_file.display().to_string(),
            ),
            ("VAULTBRIDGE_GCP_ENDPOINT".into(), self.double.url()),
        ]
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
        Seed {
            labels: self.at(&self.names.binary, &[]),
            value: BINARY.to_vec(),
        }
    }

    fn versions(&self) -> Supported<[Seed; 2]> {
        Ok([
            Seed {
                labels: self.at(&self.names.versioned, &[("vaultbridge.version", "1")]),
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
            &self.project,
            None,
            &self.names.throttled,
            json!({"throttle": count, "retry_after": retry_after_secs}),
        );
    }

    fn throttle_seen(&self) -> usize {
        self.double
            .accesses(self.number, None, &self.names.throttled) as usize
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
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
        // A private key's body (its PEM lines are base64 of the key).
        for key in &self.private_keys {
            if let Some(line) = key.lines().nth(2) {
                all.push(line.as_bytes().to_vec());
            }
        }
        all.push(BINARY.to_vec());
        all
    }

    fn stop(&mut self) -> Supported<()> {
        self.double.stop_server();
        Ok(())
    }
}

const NO_WRITES: &str = "the gcp provider makes one call, access a secret version, a read: it \
                         has no non-idempotent call";
