//! Secrets kept in files: the SMB password and the cluster key. A secret
//! file must belong to the user that reads it and be readable by nobody
//! else; otherwise it is refused with a message that says how to fix it.
//! Secrets never come from the command line and are never logged.

use std::path::Path;

use crate::error::{Error, Result, SecretProblem};

fn secret(what: &'static str, path: &Path, problem: SecretProblem) -> Error {
    Error::SecretFile {
        what,
        path: path.to_path_buf(),
        problem,
    }
}

/// The text of the secret file `file` (`what` names it in errors: "password
/// file", "cluster key file"), after checking it is owner-only.
pub fn read_private(file: &Path, what: &'static str) -> Result<String> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    // Opened first and checked on the handle, so that what is checked is
    // what is read; non-blocking, so that a FIFO cannot hang the open.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(file)
        .map_err(|e| Error::io("open secret file", file, e))?;
    let meta = f
        .metadata()
        .map_err(|e| Error::io("stat secret file", file, e))?;
    if !meta.is_file() {
        return Err(secret(what, file, SecretProblem::NotAFile));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(secret(
            what,
            file,
            SecretProblem::Readable {
                mode: meta.mode() & 0o777,
            },
        ));
    }
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(secret(
            what,
            file,
            SecretProblem::Owner {
                uid: meta.uid(),
                me,
            },
        ));
    }
    // A secret is small: refuse to read a large file by mistake.
    if meta.len() > 64 * 1024 {
        return Err(secret(
            what,
            file,
            SecretProblem::TooLarge { len: meta.len() },
        ));
    }
    let mut text = String::new();
    f.take(64 * 1024)
        .read_to_string(&mut text)
        .map_err(|e| Error::io("read secret file", file, e))?;
    Ok(text)
}

/// The cluster key from `file`: its first line, at least 16 bytes long.
pub fn cluster_key(file: &Path) -> Result<Vec<u8>> {
    let text = read_private(file, "cluster key file")?;
    let key = text.lines().next().unwrap_or("").trim();
    if key.len() < 16 {
        return Err(secret(
            "cluster key file",
            file,
            SecretProblem::KeyTooShort { len: key.len() },
        ));
    }
    Ok(key.as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_key_file_must_be_owner_only_and_long_enough() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("key");
        std::fs::write(&f, "0123456789abcdef0123\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = cluster_key(&f).unwrap_err().to_string();
        assert!(
            e.contains("readable by others") && e.contains("chmod 600"),
            "{e}"
        );
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(cluster_key(&f).unwrap(), b"0123456789abcdef0123");
        std::fs::write(&f, "short\n").unwrap();
        let e = cluster_key(&f).unwrap_err().to_string();
        assert!(e.contains("at least 16"), "{e}");
        let e = cluster_key(&dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing"), "{e}");
    }
}
