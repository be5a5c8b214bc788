//! The one error type of the `shipper` crate. Context lives in fields (path,
//! generation, offset, LSN, table), not in formatted strings, so callers can
//! match on it and operators read a message that names what is wrong.

use std::path::PathBuf;

use crate::format::Reason;
use crate::types::{Generation, Lsn};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A segment (or the log as a whole) holds a byte that fails verification.
    /// Never skipped, never a panic.
    #[error("corrupt log segment {}: generation {generation}, offset {offset}: {reason}", path.display())]
    Corrupt {
        path: PathBuf,
        generation: Generation,
        offset: u64,
        reason: Reason,
    },

    /// An operating-system call on a file failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },

    /// SQLite returned an error while doing `op`.
    #[error("{op}: {source}")]
    Sql {
        op: String,
        #[source]
        source: rusqlite::Error,
    },

    /// A table that the session extension cannot replicate faithfully.
    #[error("table {table:?} cannot be replicated: {reason}")]
    Unreplicable { table: String, reason: String },

    /// SQL inside a store transaction tried to do something the store does
    /// itself or forbids (BEGIN/COMMIT/SAVEPOINT, ATTACH, DDL outside `ddl`).
    #[error("statement refused inside a logged transaction: {what}")]
    Refused { what: String },

    /// The caller's closure gave up; the transaction was rolled back and
    /// nothing was logged.
    #[error("transaction aborted: {0}")]
    Aborted(String),

    /// A statement ended the whole SQLite transaction (e.g. `INSERT OR
    /// ROLLBACK`), which also discarded other callers' work in the same group
    /// commit. Nothing of the batch was logged; the caller may retry.
    #[error("the group-commit batch was rolled back by a statement; nothing was logged, retry")]
    BatchAborted,

    /// A transaction's changes are larger than the store accepts.
    #[error("transaction too large: {size} bytes of changes, the limit is {max}")]
    TooLarge { size: usize, max: usize },

    /// The store's writer stopped after a fatal error (failed fsync, failed
    /// commit after a durable append). Reopen the store to recover.
    #[error("the store has stopped after a fatal error: {0}")]
    Stopped(String),

    /// The node lost its quorum lease: the store takes no more writes, and
    /// what it was writing when the lease ran out was not acknowledged (it is
    /// durable here, and rolled back if the peer took over without it).
    #[error("this node lost quorum and stopped taking writes (fenced): {0}")]
    Fenced(String),

    /// The database holds a transaction the durable log does not: the WAL
    /// rule was broken (the log was deleted or replaced).
    #[error("database {} is at LSN {db} but its log ends at LSN {log}: the log is missing records", path.display())]
    DatabaseAhead { path: PathBuf, db: Lsn, log: Lsn },

    /// Replaying a record found the target in a state the record does not
    /// start from: the copies diverged. Nothing of that record was applied.
    #[error("divergence at LSN {lsn}: {conflict} on table {table:?}{}", if detail.is_empty() { String::new() } else { format!(" ({detail})") })]
    Conflict {
        lsn: Lsn,
        table: String,
        conflict: String,
        detail: String,
    },

    /// The replica's schema differs from the one the record was written for.
    #[error(
        "schema mismatch at LSN {lsn}: the record expects schema {expected}, the database has {found}"
    )]
    SchemaMismatch {
        lsn: Lsn,
        expected: crate::types::SchemaHash,
        found: crate::types::SchemaHash,
    },

    /// The log no longer holds the records after `after` (truncated, or the
    /// database is older than the log).
    #[error("log {} holds no records after LSN {after}: its oldest segment starts after LSN {first}", dir.display())]
    MissingLog {
        dir: PathBuf,
        after: Lsn,
        first: Lsn,
    },

    /// Another process has the store open for writing.
    #[error("{} is locked by another logship process (pid {pid})", path.display())]
    Locked { path: PathBuf, pid: String },

    /// No store was initialised at this path.
    #[error("no logship database at {} (run `logship init` first)", path.display())]
    NotInitialized { path: PathBuf },

    /// `init` found an existing store.
    #[error("{} already holds a logship database", path.display())]
    AlreadyInitialized { path: PathBuf },

    /// A secret file (SMB password, cluster key) that is not safe or not
    /// usable, and why.
    #[error("{what} {}: {problem}", path.display())]
    SecretFile {
        what: &'static str,
        path: PathBuf,
        problem: SecretProblem,
    },

    /// An `smb://` share with no password configured.
    #[error(
        "an smb:// share needs a password: set LOGSHIP_SMB_PASSWORD or `password-file` in [cluster]"
    )]
    NoSmbPassword,

    /// A share URL that does not parse.
    #[error("share URL {url:?}: {why} (expected smb://[user@]host[:port]/share[/path])")]
    BadShareUrl { url: String, why: &'static str },

    /// A seed snapshot that does not match its manifest.
    #[error("seed snapshot {} does not match its manifest: {what}", path.display())]
    SeedMismatch { path: PathBuf, what: String },

    /// A rewind that would have to undo a schema change.
    #[error("cannot rewind past LSN {lsn}: it is a schema change, which a changeset cannot undo")]
    RewindPastSchemaChange { lsn: Lsn },

    /// A rewind whose result does not check out (nothing was committed).
    #[error("the rewind of {} to LSN {to} does not check out, so it was rolled back: {what}", path.display())]
    RewindCheck {
        path: PathBuf,
        to: Lsn,
        what: String,
    },

    /// The guard row is not what logship writes.
    #[error("the guard row of {} is damaged: {what}", path.display())]
    BadGuard { path: PathBuf, what: String },

    /// A state file another logship process wrote that does not parse, or
    /// of a format version this build does not read.
    #[error("state file {} is not valid: {why}", path.display())]
    BadStateFile {
        path: PathBuf,
        why: crate::state_file::StateFileError,
    },

    /// The store was asked to open a passive copy for writing.
    #[error("{} holds a passive copy ({marker}): it takes changes only by replay; write on the active", path.display())]
    PassiveCopy { path: PathBuf, marker: &'static str },

    /// The store was asked to start an epoch older than its log's.
    #[error("cannot start epoch {epoch}: the log of {} is already in epoch {current}", path.display())]
    EpochBehind {
        path: PathBuf,
        epoch: crate::types::Epoch,
        current: crate::types::Epoch,
    },
}

/// What is wrong with a secret file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretProblem {
    NotAFile,
    /// Group or others may read it: its mode.
    Readable {
        mode: u32,
    },
    /// Another user owns it.
    Owner {
        uid: u32,
        me: u32,
    },
    /// Larger than a secret (bytes).
    TooLarge {
        len: u64,
    },
    /// A cluster key shorter than 16 bytes.
    KeyTooShort {
        len: usize,
    },
}

impl std::fmt::Display for SecretProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretProblem::NotAFile => f.write_str("is not a regular file"),
            SecretProblem::Readable { mode } => write!(
                f,
                "is readable by others (mode {mode:o}); make it owner-only (chmod 600)"
            ),
            SecretProblem::Owner { uid, me } => {
                write!(f, "belongs to uid {uid}, not to this user ({me})")
            }
            SecretProblem::TooLarge { len } => write!(f, "is {len} bytes: not a secret file"),
            SecretProblem::KeyTooShort { len } => write!(
                f,
                "holds {len} bytes on its first line; use at least 16 (e.g. `head -c 32 /dev/urandom | base64`)"
            ),
        }
    }
}

impl Error {
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            op,
            source,
        }
    }

    pub fn sql(op: impl Into<String>, source: rusqlite::Error) -> Error {
        Error::Sql {
            op: op.into(),
            source,
        }
    }
}

impl From<rusqlite::Error> for Error {
    fn from(source: rusqlite::Error) -> Error {
        Error::Sql {
            op: "sql".into(),
            source,
        }
    }
}
