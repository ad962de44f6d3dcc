//! PEM files for a backend's HTTPS client: a CA bundle (`ca_file`) and, for
//! vault, a client certificate and key. One reader and one error format for
//! every backend: the key, the file, what is wrong. Never the file's
//! content: a key file is a secret, and a wrong file may be one too.

use std::io::Read;
use std::path::Path;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
#[cfg(feature = "vault")]
use rustls_pki_types::{
    PrivateKeyDer,
    pem::{self, SectionKind},
};

use crate::ConfigError;

/// A CA bundle or a certificate chain is a few KiB; a bigger file is the
/// wrong file, and is not read into memory whole.
const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// The certificates of the PEM bundle at `path` (the setting `key`).
pub(crate) fn ca_certificates(
    path: &Path,
    key: &str,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let pem = read_pem(path, key)?;
    certificates(&pem, path, key)
}

/// [`ca_certificates`] for a reqwest client (azure).
#[cfg(feature = "azure")]
pub(crate) fn ca_bundle(path: &Path, key: &str) -> Result<Vec<reqwest::Certificate>, ConfigError> {
    ca_certificates(path, key)?
        .iter()
        .map(|der| {
            reqwest::Certificate::from_der(der)
                .map_err(|_| problem(key, path, "a certificate in it cannot be used"))
        })
        .collect()
}

/// A client certificate chain and its private key.
#[cfg(feature = "vault")]
pub(crate) type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// The client certificate (chain) at `cert` and its private key at
/// `private`, each with its setting's key, as one TLS identity.
#[cfg(feature = "vault")]
pub(crate) fn identity(
    (cert, cert_key): (&Path, &str),
    (private, private_key): (&Path, &str),
) -> Result<Identity, ConfigError> {
    use secrecy::zeroize::Zeroizing;

    let mut pem = Zeroizing::new(read_pem(cert, cert_key)?);
    certificates(&pem, cert, cert_key)?;
    let key_pem = Zeroizing::new(read_pem(private, private_key)?);
    let has_key = [
        "PRIVATE KEY-----",
        "RSA PRIVATE KEY-----",
        "EC PRIVATE KEY-----",
    ]
    .iter()
    .any(|label| contains(&key_pem, format!("-----BEGIN {label}").as_bytes()));
    if !has_key {
        return Err(problem(
            private_key,
            private,
            "no private key in it (no BEGIN PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY block)",
        ));
    }
    pem.push(b'\n');
    pem.extend_from_slice(&key_pem);
    // Both files as one: every block a certificate or a private key (the
    // last key wins), as reqwest read them before us.
    let unusable = || {
        problem(
            cert_key,
            cert,
            &format!(
                "and {}: not a usable certificate and private key (a block is damaged, or is neither, e.g. a PUBLIC KEY)",
                private.display()
            ),
        )
    };
    let mut reader = &pem[..];
    let (mut certs, mut key) = (Vec::new(), None);
    while let Some((kind, der)) = pem::from_buf(&mut reader).map_err(|_| unusable())? {
        match kind {
            SectionKind::Certificate => certs.push(CertificateDer::from(der)),
            SectionKind::PrivateKey => key = Some(PrivateKeyDer::Pkcs8(der.into())),
            SectionKind::RsaPrivateKey => key = Some(PrivateKeyDer::Pkcs1(der.into())),
            SectionKind::EcPrivateKey => key = Some(PrivateKeyDer::Sec1(der.into())),
            _ => return Err(unusable()),
        }
    }
    match key {
        Some(key) if !certs.is_empty() => Ok((certs, key)),
        _ => Err(unusable()),
    }
}

/// `path`: `what`, under `key`: the one shape of every error here.
fn problem(key: &str, path: &Path, what: &str) -> ConfigError {
    ConfigError::new(key, format!("{}: {what}", path.display()))
}

/// The file, at most [`MAX_PEM_BYTES`] of it, and PEM at first sight.
fn read_pem(path: &Path, key: &str) -> Result<Vec<u8>, ConfigError> {
    let io = |err: std::io::Error| problem(key, path, &err.to_string());
    let file = std::fs::File::open(path).map_err(io)?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(problem(
            key,
            path,
            "larger than 1 MiB: not a PEM certificate or key file",
        ));
    }
    if !contains(&bytes, b"-----BEGIN ") {
        return Err(problem(
            key,
            path,
            "not PEM (no -----BEGIN line; a DER file converts with openssl x509 -inform der)",
        ));
    }
    Ok(bytes)
}

fn certificates(
    pem: &[u8],
    path: &Path,
    key: &str,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| {
            problem(
                key,
                path,
                "not PEM: a block is damaged (bad base64, or no matching -----END line)",
            )
        })?;
    if certs.is_empty() {
        return Err(problem(
            key,
            path,
            "no certificate in it (no BEGIN CERTIFICATE block)",
        ));
    }
    Ok(certs)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A self-signed P-256 certificate and its key, made for these tests
    /// only (`openssl req -x509 -newkey ec ...`): they protect nothing.
    pub(crate) const CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBjTCCATOgAwIBAgIUM5w8Zh7wlMHzf5IHBjHJ5srQEHMwCgYIKoZIzj0EAwIw
GzEZMBcGA1UEAwwQdmF1bHRicmlkZ2UtdGVzdDAgFw0yNjEyMDIxODE1MzlaGA8y
MTI2MTEwODE4MTUzOVowGzEZMBcGA1UEAwwQdmF1bHRicmlkZ2UtdGVzdDBZMBMG
ByqGSM49AgEGCCqGSM49AwEHA0IABA4//1K3AxdEpuSRko88gdcYoF09aSUWZJGL
DtN5iE8p2HFVgRMCVp8/AlXCl9RAMGJnmXblGvjPb8NymeOD0sajUzBRMB0GA1Ud
DgQWBBRsomEyQh/tf/tM2FNAJJ1rqwkb9zAfBgNVHSMEGDAWgBRsomEyQh/tf/tM
2FNAJJ1rqwkb9zAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0gAMEUCIBDU
hfgdzxs/TU3YF9vWxVYnLEac2zDZcQZ+GtZism+jAiEAupiloQF2JCQb/iF9u7kq
3vnRflODxLBBciGq1Z+AhSs=
-----END CERTIFICATE-----
";
    pub(crate) const KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgrTIu40K1VdQYz8Xc
kw3k/B0jSmFE1pDAzHT9DRsaOWihRANCAAQOP/9StwMXRKbkkZKPPIHXGKBdPWkl
FmSRiw7TeYhPKdhxVYETAlafPwJVwpfUQDBiZ5l25Rr4z2/Dcpnjg9LG
-----END PRIVATE KEY-----
";

    /// Files for the tests, in a folder dropped with the returned guard.
    pub(crate) fn files(
        contents: &[(&str, &[u8])],
    ) -> (tempfile::TempDir, Vec<std::path::PathBuf>) {
        let dir = tempfile::tempdir().unwrap();
        let paths = contents
            .iter()
            .map(|(name, bytes)| {
                let path = dir.path().join(name);
                std::fs::write(&path, bytes).unwrap();
                path
            })
            .collect();
        (dir, paths)
    }

    /// The message of `ca_bundle`'s error, checked to be one line naming
    /// the key and the file.
    fn ca_error(path: &Path) -> String {
        let err = ca_certificates(path, "providers.p.ca_file").unwrap_err();
        assert_eq!(err.key, "providers.p.ca_file");
        let shown = err.to_string();
        assert!(
            shown.starts_with(&format!("providers.p.ca_file: {}: ", path.display())),
            "{shown}"
        );
        assert!(!shown.contains('\n'), "{shown}");
        err.message
    }

    #[test]
    fn reads_a_bundle_and_says_what_is_wrong_with_a_bad_one() {
        let two = format!("{CERT}\n{CERT}");
        let mut big = CERT.as_bytes().to_vec();
        big.resize(MAX_PEM_BYTES as usize + 1, b'\n');
        let (_dir, paths) = files(&[
            ("ca.pem", CERT.as_bytes()),
            ("two.pem", two.as_bytes()),
            ("der.crt", b"\x30\x82\x01\x8d\x30\x82"),
            ("key.pem", KEY.as_bytes()),
            ("damaged.pem", b"-----BEGIN CERTIFICATE-----\nnot base64!\n"),
            ("big.pem", &big),
        ]);
        assert_eq!(ca_certificates(&paths[0], "k").unwrap().len(), 1);
        assert_eq!(ca_certificates(&paths[1], "k").unwrap().len(), 2);
        assert!(ca_error(&paths[2]).ends_with(
            ": not PEM (no -----BEGIN line; a DER file converts with openssl x509 -inform der)"
        ));
        // A key where a CA belongs: named, never quoted.
        let message = ca_error(&paths[3]);
        assert!(message.ends_with(": no certificate in it (no BEGIN CERTIFICATE block)"));
        assert!(!message.contains("MIGHAgEA"), "{message}");
        assert!(ca_error(&paths[4]).contains(": not PEM: a block is damaged"));
        assert!(
            ca_error(&paths[5]).ends_with(": larger than 1 MiB: not a PEM certificate or key file")
        );
        let missing = paths[0].with_file_name("missing.pem");
        assert!(ca_error(&missing).contains("No such file"));
        let folder = paths[0].parent().unwrap();
        assert!(ca_error(folder).contains("directory"));
    }

    #[cfg(feature = "vault")]
    #[test]
    fn reads_a_client_identity_naming_the_file_at_fault() {
        let (_dir, paths) = files(&[
            ("cert.pem", CERT.as_bytes()),
            ("key.pem", KEY.as_bytes()),
            (
                "public.pem",
                b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
            ),
        ]);
        let (cert, key, public) = (&paths[0], &paths[1], &paths[2]);
        let pair = |c: &Path, k: &Path| {
            identity(
                (c, "providers.p.client_cert"),
                (k, "providers.p.client_key"),
            )
        };
        assert!(pair(cert, key).is_ok());
        // The key file given as the certificate.
        let err = pair(key, key).unwrap_err();
        assert_eq!(err.key, "providers.p.client_cert");
        assert!(err.message.contains("no certificate in it"), "{err}");
        // The certificate given as the key.
        let err = pair(cert, cert).unwrap_err();
        assert_eq!(err.key, "providers.p.client_key");
        assert!(err.message.contains("no private key in it"), "{err}");
        // A key file with a block that is neither a certificate nor a key.
        let mixed = format!("{}{KEY}", std::fs::read_to_string(public).unwrap());
        std::fs::write(public, mixed).unwrap();
        let err = pair(cert, public).unwrap_err();
        assert_eq!(err.key, "providers.p.client_cert");
        assert!(
            err.message
                .contains("not a usable certificate and private key"),
            "{err}"
        );
        assert!(!err.message.contains("MIGHAgEA"), "{err}");
    }
}
