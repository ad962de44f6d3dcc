//! The `aws` backend's fixture: a real `moto_server` with credential checks
//! on, an IAM user that may read (`reader`) and one that may not
//! (`nobody`), and a relay that answers Secrets Manager's 429.

use std::collections::BTreeMap;
use std::sync::Arc;

use secrecy::SecretString;
use tokio::runtime::Runtime;
use vaultbridge::config::Config;
use vaultbridge::resolve::Resolver;
use vaultbridge_providers::ProviderConfig;
use vaultbridge_providers::aws::AwsProvider;

use super::{Fixture, Labels, Role, Seed, Supported, labels};
use crate::moto::{Moto, xml_field};
use crate::proxy::{BlackHole, ThrottleProxy};

const REGION: &str = "us-east-1";
const TEXT: &str = "conf-aws-text-1e55";
const JSON_PASSWORD: &str = "conf-aws-json-pw-7a03";
const BINARY: &[u8] = b"\x00\xff\xfeconf-aws-binary-\x80\x03";
const OLDER: &str = "conf-aws-version-one-2b90";
const LATEST: &str = "conf-aws-version-two-2b91";
/// An access key id moto has never issued (the shape of a real one).
const WRONG_ID: &str = "AKIACONFORMANCE0WRNG";
const WRONG_SECRET: &str = "conf-aws-wrong-secret-key-0d5e";
/// The AWS calls below before moto starts checking credentials.
const SETUP_CALLS: u32 = 10;

pub struct AwsFixture {
    moto: Moto,
    /// (access key id, secret key) by profile name.
    keys: BTreeMap<&'static str, (String, String)>,
    older_id: String,
    dir: tempfile::TempDir,
    hole: BlackHole,
    throttle: ThrottleProxy,
}

impl AwsFixture {
    pub fn start() -> AwsFixture {
        let moto = Moto::start_with_auth(SETUP_CALLS);
        // 5 IAM calls.
        let (reader, nobody) = moto.reader_and_nobody();
        // 5 Secrets Manager calls.
        moto.create_string(REGION, "conf/text", TEXT);
        moto.create_string(
            REGION,
            "conf/json",
            &format!(r#"{{"user":"app","password":"{JSON_PASSWORD}"}}"#),
        );
        moto.create_binary(REGION, "conf/binary", BINARY);
        let older = moto.create_string(REGION, "conf/versioned", OLDER);
        moto.put_string(REGION, "conf/versioned", LATEST, &[]);
        // Checks are on from here: moto's default key is refused.
        let refused = moto.secrets_as("test", REGION, "ListSecrets", &serde_json::json!({}));
        assert_eq!(
            refused.status, 403,
            "moto checks credentials: {}",
            refused.body
        );

        let pair = |xml: &str| {
            (
                xml_field(xml, "AccessKeyId"),
                xml_field(xml, "SecretAccessKey"),
            )
        };
        let keys = BTreeMap::from([
            ("reader", pair(&reader)),
            ("nobody", pair(&nobody)),
            ("wrong", (WRONG_ID.to_string(), WRONG_SECRET.to_string())),
        ]);
        let dir = tempfile::tempdir().expect("tempdir");
        let mut credentials = String::new();
        for (profile, (id, secret)) in &keys {
            credentials.push_str(&format!(
                "[{profile}]\naws_access_key_id = {id}\naws_secret_access_key = {secret}\n\n"
            ));
        }
        std::fs::write(dir.path().join("credentials"), credentials).expect("write credentials");
        std::fs::write(dir.path().join("config"), "").expect("write config");
        let throttle = ThrottleProxy::start(
            &moto.endpoint,
            "\"conf/text\"",
            &[("x-amzn-ErrorType", "ThrottlingException")],
            r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#,
        );
        AwsFixture {
            moto,
            keys,
            older_id: older.version_id,
            dir,
            hole: BlackHole::start(),
            throttle,
        }
    }

    fn table_at(&self, endpoint: &str, profile: &str) -> String {
        format!(
            "type = \"aws\"\nregion = \"{REGION}\"\nendpoint_url = \"{endpoint}\"\nprofile = \"{profile}\"\ntimeout = \"2s\""
        )
    }
}

impl Fixture for AwsFixture {
    fn kind(&self) -> &'static str {
        "aws"
    }

    fn table(&self, role: Role) -> Supported<String> {
        let moto = &self.moto.endpoint;
        Ok(match role {
            Role::Ok => self.table_at(moto, "reader"),
            Role::Unauth => self.table_at(moto, "wrong"),
            Role::Denied => self.table_at(moto, "nobody"),
            Role::Hung => self.table_at(&format!("http://127.0.0.1:{}", self.hole.port), "reader"),
            Role::Throttled => self.table_at(&self.throttle.addr, "reader"),
            Role::Lossy => return Err(NO_WRITES),
        })
    }

    fn process_env(&self) -> Vec<(String, String)> {
        let file = |name: &str| self.dir.path().join(name).display().to_string();
        vec![
            ("AWS_SHARED_CREDENTIALS_FILE".into(), file("credentials")),
            ("AWS_CONFIG_FILE".into(), file("config")),
            ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
        ]
    }

    fn env_form(&self) -> Vec<(String, String)> {
        let (id, secret) = &self.keys["reader"];
        vec![
            ("AWS_REGION".into(), REGION.into()),
            ("AWS_ENDPOINT_URL".into(), self.moto.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID".into(), id.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), secret.clone()),
            ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
        ]
    }

    fn env_direct(&self) -> Supported<()> {
        Err(
            "the AWS SDK reads the endpoint and credentials of the environment form from the \
             process environment itself, which this process cannot set (edition 2024: set_var \
             is unsafe, and unsafe_code is forbidden): read through the socket only",
        )
    }

    /// The same tables, each with its profile's keys given to the SDK
    /// directly (a profile would be looked up in this process's environment).
    fn direct(&self, rt: &Runtime, config: &Config) -> Resolver {
        let mut providers = BTreeMap::new();
        for (name, entry) in &config.providers {
            let ProviderConfig::Aws(aws) = &entry.backend else {
                panic!("not an aws provider: {name}");
            };
            let profile = aws.profile.as_deref().unwrap_or("reader");
            let (id, secret) = &self.keys[profile];
            let mut aws = aws.clone();
            aws.profile = None;
            let provider = rt
                .block_on(AwsProvider::with_static_credentials(
                    &aws,
                    &format!("providers.{name}"),
                    id,
                    &SecretString::from(secret.clone()),
                ))
                .expect("build the aws provider");
            let provider: Arc<dyn vaultbridge_providers::Provider> = Arc::new(provider);
            providers.insert(name.clone(), (provider, entry.tuning));
        }
        Resolver::new(providers, config.default_provider.clone(), config.cache)
    }

    fn text(&self) -> Seed {
        Seed {
            labels: labels(Role::Ok, &[("vaultbridge.path", "conf/text")]),
            value: TEXT.as_bytes().to_vec(),
        }
    }

    fn json(&self) -> (Labels, String, Vec<u8>) {
        (
            labels(Role::Ok, &[("vaultbridge.path", "conf/json")]),
            "password".into(),
            JSON_PASSWORD.as_bytes().to_vec(),
        )
    }

    fn binary(&self) -> Seed {
        // SecretBinary: the raw bytes, no decoding.
        Seed {
            labels: labels(Role::Ok, &[("vaultbridge.path", "conf/binary")]),
            value: BINARY.to_vec(),
        }
    }

    fn versions(&self) -> Supported<[Seed; 2]> {
        let at = |version: Option<&str>, value: &str| {
            let mut pairs = vec![("vaultbridge.path", "conf/versioned")];
            pairs.extend(version.map(|v| ("vaultbridge.version", v)));
            Seed {
                labels: labels(Role::Ok, &pairs),
                value: value.as_bytes().to_vec(),
            }
        };
        Ok([at(Some(&self.older_id), OLDER), at(None, LATEST)])
    }

    fn missing(&self) -> Labels {
        labels(Role::Ok, &[("vaultbridge.path", "conf/no-such-secret")])
    }

    fn denied(&self) -> Supported<Labels> {
        // moto's IAM checks actions, not resources: a user without the
        // permission is denied every path.
        Ok(labels(Role::Denied, &[("vaultbridge.path", "conf/text")]))
    }

    fn throttle_relay(&self) -> Option<&ThrottleProxy> {
        Some(&self.throttle)
    }

    fn non_idempotent(&self) -> Supported<Labels> {
        Err(NO_WRITES)
    }

    fn never_logged(&self) -> Vec<Vec<u8>> {
        let mut all: Vec<Vec<u8>> = [TEXT, JSON_PASSWORD, OLDER, LATEST]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
        all.push(BINARY.to_vec());
        for (id, secret) in self.keys.values() {
            all.push(id.as_bytes().to_vec());
            all.push(secret.as_bytes().to_vec());
        }
        all
    }

    fn stop(&mut self) -> Supported<()> {
        self.moto.stop();
        Ok(())
    }
}

const NO_WRITES: &str = "the aws provider makes one call, GetSecretValue, a read: it has no \
                         non-idempotent call";
