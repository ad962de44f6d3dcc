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
