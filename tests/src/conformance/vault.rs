//! The `vault` backend's fixture: a real OpenBao dev server, a token whose
//! policy reads `secret/conf/*` only, a relay that throttles and one that
//! loses the answers of logical writes.

use base64::Engine as _;

use super::{Fixture, Labels, Role, Seed, Supported, labels};
use crate::openbao::OpenBao;
use crate::proxy::{BlackHole, LossyProxy, ThrottleProxy};

const TEXT: &str = "conf-vault-text-77e1";
const JSON_PASSWORD: &str = "conf-vault-json-pw-0b9c";
const BINARY: &[u8] = b"\x00\xff\xfeconf-vault-binary-\x80\x02";
const OLDER: &str = "conf-vault-version-one-4410";
const LATEST: &str = "conf-vault-version-two-4411";
const DENIED: &str = "conf-vault-denied-value-a3f0";
/// Distinctive, so that the log check would find it.
const BAD_TOKEN: &str = "hvs.conformance-refused-token-6e21";
/// A logical write that returns data and changes nothing (random bytes).
const WRITE_PATH: &str = "sys/tools/random/16";

pub struct VaultFixture {
    bao: OpenBao,
    token: String,
    token_file: std::path::PathBuf,
    bad_token_file: std::path::PathBuf,
    hole: BlackHole,
    throttle: ThrottleProxy,
    lossy: LossyProxy,
}

impl VaultFixture {
    pub fn start() -> VaultFixture {
        let bao = OpenBao::start();
        bao.bao_stdin(
            &["policy", "write", "conformance", "-"],
            r#"path "secret/data/conf/*" { capabilities = ["read"] }
               path "secret/metadata/conf/*" { capabilities = ["read"] }
               path "sys/tools/random/*" { capabilities = ["update"] }"#,
        );
        let token = bao
            .bao(&["token", "create", "-policy=conformance", "-field=token"])
            .trim()
            .to_string();
        let token_file = bao.file("token", token.as_bytes());
        let bad_token_file = bao.file("bad-token", BAD_TOKEN.as_bytes());
        let b64 = base64::engine::general_purpose::STANDARD.encode(BINARY);
        for (path, pairs) in [
            ("secret/conf/text", vec![format!("value={TEXT}")]),
            (
                "secret/conf/json",
                vec!["user=app".into(), format!("password={JSON_PASSWORD}")],
            ),
            ("secret/conf/binary", vec![format!("data={b64}")]),
            ("secret/conf/versioned", vec![format!("value={OLDER}")]),
            ("secret/conf/versioned", vec![format!("value={LATEST}")]),
            ("secret/denied/db", vec![format!("value={DENIED}")]),
        ] {
            let mut args = vec!["kv", "put", path];
            args.extend(pairs.iter().map(String::as_str));
            bao.bao(&args);
        }
        let throttle = ThrottleProxy::start(
            &bao.addr,
            "/v1/secret/data/conf/text",
            &[],
            r#"{"errors":["request path \"secret/data/conf/text\": rate limit quota exceeded"]}"#,
        );
        let lossy = LossyProxy::start(&bao.addr, "sys/tools/random");
        VaultFixture {
            bao,
            token,
            token_file,
            bad_token_file,
            hole: BlackHole::start(),
            throttle,
            lossy,
        }
    }

    fn table_at(&self, address: &str, token_file: &std::path::Path, extra: &str) -> String {
        format!(
            "type = \"vault\"\naddress = \"{address}\"\ntimeout = \"2s\"\nauth = {{ method = \"token\", token_file = \"{}\" }}\n{extra}",
            token_file.display()
        )
    }
}

impl Fixture for VaultFixture {
    fn kind(&self) -> &'static str {
        "vault"
    }

    fn table(&self, role: Role) -> Supported<String> {
        let good = &self.token_file;
        Ok(match role {
            Role::Ok => self.table_at(&self.bao.addr, good, ""),
            Role::Unauth => self.table_at(&self.bao.addr, &self.bad_token_file, ""),
            Role::Denied => return Err("the ok token's policy denies a path"),
            Role::Hung => self.table_at(&format!("http://127.0.0.1:{}", self.hole.port), good, ""),
            Role::Throttled => self.table_at(&self.throttle.addr, good, ""),
            Role::Lossy => self.table_at(
                &self.lossy.addr,
                good,
                "logical_write_prefixes = [\"sys/tools/random/\"]",
            ),
        })
    }

    fn env_form(&self) -> Vec<(String, String)> {
        vec![
            ("VAULT_ADDR".into(), self.bao.addr.clone()),
            ("VAULT_TOKEN".into(), self.token.clone()),
        ]
    }

    fn text(&self) -> Seed {
        Seed {
            labels: labels(
                Role::Ok,
                &[
                    ("vaultbridge.path", "conf/text"),
                    ("vaultbridge.field", "value"),
                ],
            ),
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
        // KV holds text: a binary is stored base64-encoded.
        Seed {
            labels: labels(
                Role::Ok,
                &[
                    ("vaultbridge.path", "conf/binary"),
                    ("vaultbridge.field", "data"),
                    ("vaultbridge.decode", "base64"),
                ],
            ),
            value: BINARY.to_vec(),
        }
    }

    fn versions(&self) -> Supported<[Seed; 2]> {
        let at = |version: Option<&str>, value: &str| {
            let mut pairs = vec![
                ("vaultbridge.path", "conf/versioned"),
                ("vaultbridge.field", "value"),
            ];
            pairs.extend(version.map(|v| ("vaultbridge.version", v)));
            Seed {
                labels: labels(Role::Ok, &pairs),
                value: value.as_bytes().to_vec(),
            }
        };
        Ok([at(Some("1"), OLDER), at(None, LATEST)])
    }

    fn missing(&self) -> Labels {
        labels(Role::Ok, &[("vaultbridge.path", "conf/no-such-secret")])
    }

    fn denied(&self) -> Supported<Labels> {
        Ok(labels(Role::Ok, &[("vaultbridge.path", "denied/db")]))
    }

    fn throttle_relay(&self) -> Option<&ThrottleProxy> {
        Some(&self.throttle)
    }

    fn non_idempotent(&self) -> Supported<Labels> {
        Ok(labels(Role::Lossy, &[("vaultbridge.path", WRITE_PATH)]))
    }

    fn non_idempotent_seen(&self) -> usize {
        self.bao.audit_count(WRITE_PATH)
    }

    fn never_logged(&self) -> Vec<Vec<u8>> {
        let b64 = base64::engine::general_purpose::STANDARD.encode(BINARY);
        [
            TEXT,
            JSON_PASSWORD,
            OLDER,
            LATEST,
            DENIED,
            BAD_TOKEN,
            &self.token,
            &b64,
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .chain([BINARY.to_vec()])
        .collect()
    }

    fn stop(&mut self) -> Supported<()> {
        self.bao.kill();
        Ok(())
    }
}
