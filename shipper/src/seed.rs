//! Seeding: the active takes a consistent online snapshot of its database
//! with SQLite's backup API (one read transaction, so it never restarts
//! under concurrent commits) and publishes it on its share with the LSN it
//! holds and the content hash the log records there; the passive copies it,
//! checks it by a full scan, and installs it as its copy.
//!
//! The exchange goes through the shares only: the passive writes a request
//! on its own share, the active answers on its own share. Neither writes to
//! the other's share.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::types::{ContentHash, Lsn};

/// On the passive's share: "please seed me".
pub const REQUEST_FILE: &str = "seed-request.json";

/// The snapshot's name on the active's share, for the node it is meant for.
pub fn snapshot_name(node: &str) -> String {
    format!("seed-{node}.db")
}

/// The description that goes with the snapshot.
pub fn manifest_name(node: &str) -> String {
    format!("seed-{node}.json")
}

/// A passive's request for a seed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeedRequest {
    /// The file's format version (FORMAT.md, "State files").
    #[serde(default)]
    pub version: crate::FormatVersion,
    /// Who asks.
    pub node: String,
    /// Random id, echoed in the manifest, so that an old snapshot is never taken for a new one.
    pub id: String,
}

/// What the active says about a snapshot it published.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeedManifest {
    /// The file's format version (FORMAT.md, "State files").
    #[serde(default)]
    pub version: crate::FormatVersion,
    pub id: String,
    pub database_id: String,
    /// The LSN the snapshot holds.
    pub lsn: u64,
    /// The content hash the log records at `lsn` (hex).
    pub hash: String,
    pub size: u64,
}

/// Writes a consistent snapshot of the database at `source` to `dest` and
/// returns the LSN it holds.
pub fn snapshot(source: &Path, dest: &Path) -> Result<Lsn> {
    let _ = std::fs::remove_file(dest);
    let src = Connection::open_with_flags(
        source,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| Error::sql(format!("open {} for a snapshot", source.display()), e))?;
    src.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(|e| Error::sql("set busy timeout", e))?;
    let mut dst =
        Connection::open(dest).map_err(|e| Error::sql(format!("create {}", dest.display()), e))?;
    {
        let backup = rusqlite::backup::Backup::new(&src, &mut dst)
            .map_err(|e| Error::sql("start the snapshot", e))?;
        // All pages in one step: one read transaction, a consistent snapshot
        // that concurrent commits cannot restart.
        loop {
            match backup
                .step(-1)
                .map_err(|e| Error::sql("copy the snapshot", e))?
            {
                rusqlite::backup::StepResult::Done => break,
                rusqlite::backup::StepResult::Busy | rusqlite::backup::StepResult::Locked => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                _ => {}
            }
        }
    }
    let (lsn, _) = crate::apply::read_guard(&dst)?;
    dst.execute_batch("PRAGMA journal_mode = DELETE")
        .map_err(|e| Error::sql("finish the snapshot", e))?;
    drop(dst);
    let f = std::fs::File::open(dest).map_err(|e| Error::io("open", dest, e))?;
    f.sync_all().map_err(|e| Error::io("fsync", dest, e))?;
    Ok(lsn)
}

/// Checks a copied snapshot: its guard LSN and a full scan against the manifest.
pub fn verify(path: &Path, manifest: &SeedManifest) -> Result<()> {
    let conn = crate::store::open_read_only(path)?;
    conn.execute_batch("BEGIN")
        .map_err(|e| Error::sql("begin", e))?;
    let (lsn, id) = crate::apply::read_guard(&conn)?;
    let scanned = crate::hash::full_scan(&conn)?;
    conn.execute_batch("COMMIT")
        .map_err(|e| Error::sql("commit", e))?;
    let mismatch = |what: String| Error::SeedMismatch {
        path: path.to_path_buf(),
        what,
    };
    if id.to_string() != manifest.database_id {
        return Err(mismatch(format!(
            "the snapshot is of database {id}, the manifest says {}",
            manifest.database_id
        )));
    }
    if lsn.0 != manifest.lsn {
        return Err(mismatch(format!(
            "the snapshot holds LSN {lsn}, the manifest says {}",
            manifest.lsn
        )));
    }
    let expected = ContentHash(u128::from_str_radix(&manifest.hash, 16).map_err(|_| {
        mismatch(format!(
            "the manifest's hash {:?} is not hex",
            manifest.hash
        ))
    })?);
    if scanned != expected {
        return Err(mismatch(format!(
            "the snapshot's content hash {scanned} differs from the log's {expected} at LSN {lsn}"
        )));
    }
    Ok(())
}
