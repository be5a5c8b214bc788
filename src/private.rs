//! Files a daemon creates are private to its user: the process umask that
//! makes them so, and the start-up warning for a data directory that is open
//! to its group or to others.
//!
//! The data directories hold the database, its log, the relay's queue and
//! the mail itself (`rewound/*.txt`). Peers read a node's files through smbd,
//! which runs as the same user, so owner-only files are still shared.

use std::path::Path;

/// The umask every `logship` process runs under: no permission for group or
/// others on anything it creates (directories 0700, files 0600), whatever
/// umask it was started with. SQLite gives its -wal and -shm files the mode
/// of the database file.
pub const UMASK: libc::mode_t = 0o077;

/// Sets the process umask to [`UMASK`]; call first thing in `main`, before
/// any thread starts or any file is made.
pub fn restrict_umask() {
    // SAFETY: umask(2) only sets the process's file mode creation mask; it
    // cannot fail and touches no memory.
    unsafe {
        libc::umask(UMASK);
    }
}

/// The permission bits a directory grants its group or others, if any
/// (`None` when it is private or cannot be read).
pub fn open_bits(dir: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir).ok()?.permissions().mode();
    (mode & 0o077 != 0).then_some(mode & 0o7777)
}

/// Logs a WARN for each of `dirs` that exists and is open to its group or
/// to others, naming the path and its mode. `what` says whose directory it
/// is ("node alpha's data directory").
pub fn warn_if_open(what: &str, dirs: &[&Path]) {
    for dir in dirs {
        if let Some(mode) = open_bits(dir) {
            tracing::warn!(
                path = %dir.display(),
                mode = %format!("{mode:04o}"),
                "{what} is open to its group or others (mode {mode:04o}): it holds the store and mail; `chmod go= {}` makes it private",
                dir.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn open_directories_are_told_from_private_ones() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("data");
        std::fs::create_dir(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(open_bits(&p), None);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o750)).unwrap();
        assert_eq!(open_bits(&p), Some(0o750));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o701)).unwrap();
        assert_eq!(open_bits(&p), Some(0o701));
        assert_eq!(open_bits(&d.path().join("missing")), None);
    }
}
