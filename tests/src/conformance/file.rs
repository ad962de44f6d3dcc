//! The `file` backend's fixture: a directory of files.

use super::{Fixture, Labels, Role, Seed, Supported, labels};

const TEXT: &[u8] = b"conf-file-text-5d02";
const JSON_PASSWORD: &str = "conf-file-json-pw-91b7";
const BINARY: &[u8] = b"\x00\xff\xfeconf-file-binary-\x80\x01";
const OUTSIDE: &[u8] = b"conf-file-outside-the-root-3c4a";

pub struct FileFixture {
    root: tempfile::TempDir,
    /// Holds a file outside the root that a symlink in it points to.
    _outside: tempfile::TempDir,
}

impl FileFixture {
    pub fn start() -> FileFixture {
        let root = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        let conf = root.path().join("conf");
        std::fs::create_dir(&conf).expect("mkdir");
        std::fs::write(conf.join("text"), TEXT).expect("write");
        std::fs::write(
            conf.join("json"),
            format!(r#"{{"user":"app","password":"{JSON_PASSWORD}"}}"#),
        )
        .expect("write");
        std::fs::write(conf.join("binary"), BINARY).expect("write");
        std::fs::write(outside.path().join("secret"), OUTSIDE).expect("write");
        std::os::unix::fs::symlink(outside.path().join("secret"), conf.join("elsewhere"))
            .expect("symlink");
        FileFixture {
            root,
            _outside: outside,
        }
    }
}

impl Fixture for FileFixture {
    fn kind(&self) -> &'static str {
        "file"
    }

    fn table(&self, role: Role) -> Supported<String> {
        match role {
            Role::Ok => Ok(format!(
                "type = \"file\"\nroot = \"{}\"",
                self.root.path().display()
            )),
            Role::Unauth | Role::Denied => {
                Err("a directory takes no credentials (the plugin's own file permissions apply)")
            }
            Role::Hung => Err("a local directory has no server that can hang"),
            Role::Throttled => Err("a local directory has no server that can throttle"),
            Role::Lossy => Err("the file backend only reads: it has no non-idempotent call"),
        }
    }

    fn env_form(&self) -> Vec<(String, String)> {
        vec![(
            "VAULTBRIDGE_FILE_DIR".into(),
            self.root.path().display().to_string(),
        )]
    }

    fn text(&self) -> Seed {
        Seed {
            labels: labels(Role::Ok, &[("vaultbridge.path", "conf/text")]),
            value: TEXT.to_vec(),
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
        Seed {
            labels: labels(Role::Ok, &[("vaultbridge.path", "conf/binary")]),
            value: BINARY.to_vec(),
        }
    }

    fn versions(&self) -> Supported<[Seed; 2]> {
        Err("files have no versions: a version label is refused (docs/providers/file.md)")
    }

    fn missing(&self) -> Labels {
        labels(Role::Ok, &[("vaultbridge.path", "conf/no-such-file")])
    }

    fn denied(&self) -> Supported<Labels> {
        // A symlink that leads outside the root: refused, never read. (The
        // tests run as root, so file permissions cannot deny a path.)
        Ok(labels(Role::Ok, &[("vaultbridge.path", "conf/elsewhere")]))
    }

    fn throttled(&self) -> Supported<Seed> {
        Err("a local directory has no server that can throttle")
    }

    fn non_idempotent(&self) -> Supported<Labels> {
        Err("the file backend only reads: it has no non-idempotent call")
    }

    fn never_logged(&self) -> Vec<Vec<u8>> {
        vec![
            TEXT.to_vec(),
            JSON_PASSWORD.as_bytes().to_vec(),
            BINARY.to_vec(),
            OUTSIDE.to_vec(),
        ]
    }

    fn stop(&mut self) -> Supported<()> {
        Err("a directory has no server to stop (a missing file is not_found)")
    }
}
