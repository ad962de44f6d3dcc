//! Credential files (tokens, ids, passwords, JWTs, key files): read whole,
//! bounded, and wiped after use.

use std::io::Read;
use std::path::Path;

use secrecy::zeroize::Zeroizing;

/// A credential file is a few KiB: a bigger file is the wrong file and is
/// not read into memory whole.
pub(crate) const MAX_BYTES: usize = 64 * 1024;

/// The file's bytes, read into one buffer made once at its largest size
/// (no reallocation leaves a copy of the credential behind) and wiped when
/// dropped. A file over [`MAX_BYTES`] is an error; the message never quotes
/// the content.
pub(crate) fn read(path: &Path) -> std::io::Result<Zeroizing<Vec<u8>>> {
    let limit = MAX_BYTES + 1;
    let mut bytes = Zeroizing::new(Vec::with_capacity(limit));
    std::fs::File::open(path)?
        .take(limit as u64)
        .read_to_end(&mut bytes)?;
    if bytes.len() > MAX_BYTES {
        return Err(std::io::Error::other(format!(
            "larger than {} KiB: not a credential file",
            MAX_BYTES / 1024
        )));
    }
    Ok(bytes)
}

/// [`read`], as text: a file that is not UTF-8 is an error (which does not
/// quote it). The text is the same buffer, wiped when dropped.
pub(crate) fn read_text(path: &Path) -> std::io::Result<Zeroizing<String>> {
    let mut bytes = read(path)?;
    match String::from_utf8(std::mem::take(&mut *bytes)) {
        Ok(text) => Ok(Zeroizing::new(text)),
        Err(err) => {
            drop(Zeroizing::new(err.into_bytes()));
            Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "not UTF-8 text",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_read_up_to_the_bound_and_never_quoted_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("credential");
        std::fs::write(&file, "t".repeat(MAX_BYTES)).unwrap();
        assert_eq!(read_text(&file).unwrap().len(), MAX_BYTES);
        // One byte more, an endless device, bytes that are not UTF-8.
        std::fs::write(&file, "t".repeat(MAX_BYTES + 1)).unwrap();
        let err = read_text(&file).unwrap_err().to_string();
        assert_eq!(err, "larger than 64 KiB: not a credential file");
        let err = read_text(Path::new("/dev/zero")).unwrap_err().to_string();
        assert_eq!(err, "larger than 64 KiB: not a credential file");
        std::fs::write(&file, b"s3cr3t\xff").unwrap();
        let err = read_text(&file).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        assert_eq!(err.to_string(), "not UTF-8 text");
    }
}
