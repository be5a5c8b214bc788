//! What a passive copy remembers between runs (`<data-dir>/copy.json`,
//! written atomically by the replay daemon only), and the operator's control
//! files beside it: `suspended` (holds the reason) and `retry` (asks a
//! Failed copy to try again). Commands write control files; only the daemon
//! writes the state, so the two never race.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use shipper::{Error, Generation, Lsn, Result};

pub const STATE_FILE: &str = "copy.json";
pub const SUSPEND_FILE: &str = "suspended";
pub const RETRY_FILE: &str = "retry";
/// The largest state file read (it is a few hundred bytes).
const MAX_STATE_BYTES: u64 = 64 * 1024;

/// A generation and when it reached a watermark (µs since the Unix epoch).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    pub generation: Generation,
    pub time_us: u64,
}

/// The persistent state of one passive copy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CopyState {
    /// The file's format version (FORMAT.md, "State files").
    #[serde(default = "shipper::FormatVersion::first")]
    pub version: shipper::FormatVersion,
    /// The node this copy pulls from.
    pub source: String,
    /// The database this copy belongs to (hex id).
    pub database_id: String,
    /// The newest sealed generation seen on the source share.
    pub last_generated: Option<Mark>,
    pub last_copied: Option<Mark>,
    pub last_inspected: Option<Mark>,
    pub last_replayed: Option<Mark>,
    /// Set when the copy stopped and needs an operator (divergence,
    /// persistent corruption): the message names generation, offset, LSN.
    pub failed: Option<String>,
    /// Set while a transient fault pauses the copy (unreachable share, full
    /// disk); it clears itself when the fault does.
    pub error: Option<String>,
    /// Failed inspections of the next segment so far (reset when one passes).
    pub inspection_failures: u32,
    /// True while the share cannot be reached.
    pub disconnected: bool,
    /// True while a seed is in progress.
    pub seeding: bool,
    /// True once the daemon has started and not yet inspected a segment.
    pub initializing: bool,
    /// The LSN the copy holds and the content hash the log records there.
    pub replayed_lsn: Lsn,
    pub replayed_hash: Option<String>,
    /// When the daemon last wrote this state (µs since the Unix epoch).
    pub updated_us: u64,
}

/// Paths of a copy's files inside a node's data directory.
#[derive(Clone, Debug)]
pub struct CopyPaths {
    pub data_dir: PathBuf,
    pub database: PathBuf,
    pub logs: PathBuf,
    pub state: PathBuf,
    pub suspend: PathBuf,
    pub retry: PathBuf,
}

impl CopyPaths {
    pub fn new(data_dir: &Path) -> CopyPaths {
        CopyPaths {
            data_dir: data_dir.to_path_buf(),
            database: data_dir.join(shipper::store::DATABASE_FILE),
            logs: data_dir.join(shipper::store::LOG_DIR),
            state: data_dir.join(STATE_FILE),
            suspend: data_dir.join(SUSPEND_FILE),
            retry: data_dir.join(RETRY_FILE),
        }
    }
}

impl CopyState {
    /// Loads the state; `Ok(None)` when the node holds no passive copy.
    pub fn load(paths: &CopyPaths) -> Result<Option<CopyState>> {
        let bytes = match std::fs::metadata(&paths.state) {
            Ok(m) if m.len() > MAX_STATE_BYTES => {
                return Err(Error::TooLarge {
                    size: m.len() as usize,
                    max: MAX_STATE_BYTES as usize,
                });
            }
            Ok(_) => std::fs::read(&paths.state).map_err(|e| Error::io("read", &paths.state, e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("stat", &paths.state, e)),
        };
        let state: CopyState = shipper::state_file::parse(&bytes, MAX_STATE_BYTES as usize)
            .map_err(|why| Error::BadStateFile {
                path: paths.state.clone(),
                why,
            })?;
        Ok(Some(state))
    }

    /// Writes the state atomically.
    pub fn save(&self, paths: &CopyPaths) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(self).expect("the state serialises");
        shipper::share::write_atomic(&paths.state, &bytes)
    }
}

/// The reason the copy is suspended, if it is.
pub fn suspended(paths: &CopyPaths) -> Option<String> {
    std::fs::read(&paths.suspend).ok().map(|b| {
        String::from_utf8_lossy(&b[..b.len().min(4096)])
            .trim()
            .to_string()
    })
}

/// Suspends the copy (idempotent, as Suspend-StorageGroupCopy is).
pub fn suspend(paths: &CopyPaths, reason: &str) -> Result<()> {
    shipper::share::write_atomic(&paths.suspend, reason.as_bytes())
}

/// Resumes a suspended copy, and asks a Failed one to try again.
pub fn resume(paths: &CopyPaths) -> Result<()> {
    match std::fs::remove_file(&paths.suspend) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("delete", &paths.suspend, e)),
    }
    shipper::share::write_atomic(&paths.retry, b"retry")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Whatever `copy.json` holds, loading it gives a state or names the
        /// file; it never panics.
        #[test]
        fn any_bytes_in_copy_json_load_or_are_refused_by_name(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let dir = tempfile::tempdir().unwrap();
            let paths = CopyPaths::new(dir.path());
            std::fs::write(&paths.state, &bytes).unwrap();
            match CopyState::load(&paths) {
                Ok(_) => {}
                Err(Error::BadStateFile { path, .. }) => prop_assert_eq!(path, paths.state.clone()),
                Err(e) => prop_assert!(false, "unexpected error {e:?}"),
            }
        }
    }

    #[test]
    fn a_copy_json_of_a_newer_format_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let paths = CopyPaths::new(dir.path());
        std::fs::write(&paths.state, br#"{"version": 2, "source": "alpha"}"#).unwrap();
        let e = CopyState::load(&paths).unwrap_err().to_string();
        assert!(
            e.contains("format version 2") && e.contains("copy.json"),
            "{e}"
        );
        // Written before the field existed: version 1.
        std::fs::write(&paths.state, br#"{"source": "alpha"}"#).unwrap();
        let st = CopyState::load(&paths).unwrap().unwrap();
        assert_eq!(st.version, shipper::FormatVersion(1));
    }

    /// The newtypes change nothing on disk: an LSN and a generation are
    /// plain numbers in `copy.json`, as before they were typed.
    #[test]
    fn typed_positions_are_plain_numbers_in_copy_json() {
        let st = CopyState {
            last_replayed: Some(Mark {
                generation: Generation(10),
                time_us: 7,
            }),
            replayed_lsn: Lsn(1234),
            ..CopyState::default()
        };
        let v: serde_json::Value = serde_json::to_value(&st).unwrap();
        assert_eq!(v["replayed_lsn"], 1234);
        assert_eq!(v["last_replayed"]["generation"], 10);
        let old = br#"{"source": "alpha", "replayed_lsn": 99, "last_copied": {"generation": 3, "time_us": 1}}"#;
        let back: CopyState = serde_json::from_slice(old).unwrap();
        assert_eq!(back.replayed_lsn, Lsn(99));
        assert_eq!(back.last_copied.unwrap().generation, Generation(3));
    }

    #[test]
    fn a_damaged_copy_json_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let paths = CopyPaths::new(dir.path());
        std::fs::write(&paths.state, b"{\"source\": 3").unwrap();
        let e = CopyState::load(&paths).unwrap_err();
        assert!(e.to_string().contains("copy.json"), "{e}");
        assert!(matches!(e, Error::BadStateFile { .. }), "{e:?}");
    }
}
