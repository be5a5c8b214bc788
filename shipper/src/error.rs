//! The one error type of the `shipper` crate. Context lives in fields (path,
//! generation, offset, LSN, table), not in formatted strings, so callers can
//! match on it and operators read a message that names what is wrong.

use std::path::PathBuf;

use crate::format::Reason;
use crate::types::{DatabaseId, Epoch, Generation, Lsn};

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

    /// A segment from a deposed active: written in `epoch` at a generation
    /// where the newer epoch `newer` had already begun.
    #[error(
        "segment generation {generation} was written in epoch {epoch}, but epoch {newer} began at generation {newer_start}: it comes from a deposed active and is not replayed"
    )]
    StaleEpoch {
        generation: Generation,
        epoch: Epoch,
        newer: Epoch,
        newer_start: Generation,
    },

    /// A segment or copy belongs to another database.
    #[error("{}: belongs to database {found}, expected {expected}", path.display())]
    ForeignDatabase {
        path: PathBuf,
        expected: DatabaseId,
        found: DatabaseId,
    },

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
