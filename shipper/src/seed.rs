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

use crate::state_file::StateFileError;
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
    #[serde(default = "crate::FormatVersion::first")]
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
    #[serde(default = "crate::FormatVersion::first")]
    pub version: crate::FormatVersion,
    pub id: String,
    pub database_id: String,
    /// The LSN the snapshot holds.
    pub lsn: Lsn,
    /// The content hash the log records at `lsn` (hex).
    pub hash: String,
    pub size: u64,
}

/// The most a seed request or manifest may hold.
pub const MAX_SEED_FILE: usize = 64 * 1024;

impl SeedRequest {
    /// Reads a request from a peer's share (`seed-request.json`).
    pub fn parse(bytes: &[u8]) -> std::result::Result<SeedRequest, StateFileError> {
        crate::state_file::parse(bytes, MAX_SEED_FILE)
    }
}

impl SeedManifest {
    /// Reads a manifest from the active's share (`seed-<node>.json`).
    pub fn parse(bytes: &[u8]) -> std::result::Result<SeedManifest, StateFileError> {
        crate::state_file::parse(bytes, MAX_SEED_FILE)
    }
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
    if lsn != manifest.lsn {
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        /// Whatever a peer's share holds under the seed files' names, reading
        /// them gives a request or manifest or a reason; never a panic.
        #[test]
        fn any_bytes_in_a_seed_request_or_manifest_are_read_or_refused(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = SeedRequest::parse(&bytes);
            let _ = SeedManifest::parse(&bytes);
        }

        #[test]
        fn a_written_request_and_manifest_read_back(node in "[a-z]{1,12}", id in "[0-9a-f]{1,32}", lsn in any::<u64>(), size in any::<u64>()) {
            let r = SeedRequest { version: crate::FormatVersion::CURRENT, node, id: id.clone() };
            prop_assert_eq!(SeedRequest::parse(&serde_json::to_vec(&r).unwrap()).unwrap(), r);
            let m = SeedManifest {
                version: crate::FormatVersion::CURRENT,
                id,
                database_id: "d".repeat(32),
                lsn: Lsn(lsn),
                hash: format!("{:032x}", lsn),
                size,
            };
            prop_assert_eq!(SeedManifest::parse(&serde_json::to_vec(&m).unwrap()).unwrap(), m);
        }
    }

    #[test]
    fn a_seed_file_of_a_newer_format_is_refused_by_its_version() {
        let e = SeedRequest::parse(br#"{"version": 2, "node": "beta", "id": "x"}"#).unwrap_err();
        assert!(matches!(e, StateFileError::Newer { found: 2, .. }), "{e:?}");
        let e = SeedManifest::parse(br#"{"version": 3}"#).unwrap_err();
        assert!(e.to_string().contains("format version 3"), "{e}");
        let e = SeedManifest::parse(&vec![b' '; MAX_SEED_FILE + 1]).unwrap_err();
        assert!(matches!(e, StateFileError::TooLarge { .. }), "{e:?}");
    }
}
