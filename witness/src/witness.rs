//! The file-share witness: a directory (local or `smb://`) that holds the
//! witness vote and the history of epochs.
//!
//! - `witness.lock`: the vote. Whoever holds it (an flock in a directory, a
//!   create-new + delete-on-close handle over SMB) has the witness's vote.
//!   The server drops it when the holder dies.
//! - `epoch-<16 hex digits>.json`: one file per epoch, made with an exclusive
//!   create, so only one node can ever start a given epoch. It records who
//!   started it and where its log begins (LSN and generation): what a
//!   returning node needs to find the point where it diverged.

use serde::{Deserialize, Serialize};
use shipper::share::{Share, ShareLock};
use shipper::state_file::StateFileError;
use shipper::{Epoch, Generation, Lsn};

/// Why the witness could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    /// The witness's share failed (unreachable, refused, an I/O error).
    #[error(transparent)]
    Share(#[from] shipper::Error),
    /// An epoch file listed a moment ago was gone when read.
    #[error("epoch file {path} vanished while the witness was read")]
    Vanished { path: String },
    /// An epoch file that cannot be read as one.
    #[error("epoch file {path} is not valid: {why}")]
    BadEpochFile { path: String, why: StateFileError },
    /// An epoch file whose record names another epoch than its name.
    #[error("epoch file {path} says it is epoch {says}")]
    WrongEpoch { path: String, says: Epoch },
    /// An `alone-` file that cannot be read as one.
    #[error("alone file {path} is not valid: {why}")]
    BadAloneFile { path: String, why: StateFileError },
    /// The vote was to be confirmed, but this node does not hold it.
    #[error("the witness vote ({path}) is not held by this node")]
    NotHeld { path: String },
}

pub type Result<T, E = WitnessError> = std::result::Result<T, E>;

/// The witness vote's lock file.
pub const LOCK_FILE: &str = "witness.lock";
const EPOCH_PREFIX: &str = "epoch-";
const EPOCH_SUFFIX: &str = ".json";
/// The largest epoch file read.
const MAX_EPOCH_FILE: u64 = 64 * 1024;

/// One epoch: who started it, why, and where its log begins.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// The file's format version (FORMAT.md, "State files").
    #[serde(default = "shipper::FormatVersion::first")]
    pub version: shipper::FormatVersion,
    pub epoch: Epoch,
    /// The node that became active.
    pub node: String,
    /// The last LSN the new active held when it started: its records in
    /// this epoch come after it. A returning node that holds more diverged.
    pub start_lsn: Lsn,
    /// The first generation written in this epoch.
    pub start_generation: Generation,
    /// start (first activation or restart), failover, move or forced.
    pub reason: String,
    /// Wall-clock time of the activation (µs since the Unix epoch), for people.
    pub started_us: u64,
}

/// The file name of an epoch's record.
pub fn epoch_file_name(e: Epoch) -> String {
    format!("{EPOCH_PREFIX}{:016x}{EPOCH_SUFFIX}", e.0)
}

fn parse_epoch_file_name(name: &str) -> Option<Epoch> {
    let hex = name
        .strip_prefix(EPOCH_PREFIX)?
        .strip_suffix(EPOCH_SUFFIX)?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok().map(Epoch)
}

const ALONE_PREFIX: &str = "alone-";

/// The file that says an epoch's active acknowledged without its copy's
/// confirmation (`commit = "remote"` gone alone).
pub fn alone_file_name(e: Epoch) -> String {
    format!("{ALONE_PREFIX}{:016x}{EPOCH_SUFFIX}", e.0)
}

/// The format version of an `alone-<epoch>.json` file.
pub const ALONE_VERSION: u32 = 1;

/// What `alone-<epoch>.json` holds: written by an active with synchronous
/// commit before it acknowledges anything its copy has not confirmed, and
/// removed once the copy has caught up again. While it exists, a failover
/// cannot count on the copy holding every acknowledged record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alone {
    pub version: u32,
    pub epoch: Epoch,
    pub node: String,
    /// The first record that may be acknowledged unconfirmed.
    pub from_lsn: Lsn,
    /// Why (the copy silent, or behind).
    pub reason: String,
    pub at_us: u64,
}

/// Microseconds since the Unix epoch.
pub use shipper::types::now_us;

/// The witness directory, and the vote while this node holds it.
#[derive(Debug)]
pub struct Witness {
    share: Share,
    lock: Option<ShareLock>,
}

impl Witness {
    pub fn new(share: Share) -> Witness {
        Witness { share, lock: None }
    }

    pub fn share(&self) -> &Share {
        &self.share
    }

    /// Every epoch recorded, oldest first.
    pub fn history(&self) -> Result<Vec<EpochRecord>> {
        let mut out = Vec::new();
        for name in self.share.list()? {
            let Some(epoch) = parse_epoch_file_name(&name) else {
                continue;
            };
            let path = || format!("{}/{name}", self.share.display());
            let bytes = self
                .share
                .read(&name, MAX_EPOCH_FILE)?
                .ok_or_else(|| WitnessError::Vanished { path: path() })?;
            let rec: EpochRecord = shipper::state_file::parse(&bytes, MAX_EPOCH_FILE as usize)
                .map_err(|why| WitnessError::BadEpochFile { path: path(), why })?;
            if rec.epoch != epoch {
                return Err(WitnessError::WrongEpoch {
                    path: path(),
                    says: rec.epoch,
                });
            }
            out.push(rec);
        }
        out.sort_by_key(|r| r.epoch);
        Ok(out)
    }

    /// The newest epoch, if any was ever started.
    pub fn latest(&self) -> Result<Option<EpochRecord>> {
        Ok(self.history()?.pop())
    }

    /// Starts `rec.epoch`; false when that epoch already exists (someone
    /// else won it). Only the holder of the vote should call this.
    pub fn claim(&self, rec: &EpochRecord) -> Result<bool> {
        let bytes = serde_json::to_vec_pretty(rec).expect("epoch records serialise");
        Ok(self.share.create_new(&epoch_file_name(rec.epoch), &bytes)?)
    }

    /// Records that `alone.epoch`'s active goes on without its copy's
    /// confirmation (made durable before it returns).
    pub fn write_alone(&self, alone: &Alone) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(alone).expect("alone records serialise");
        Ok(self
            .share
            .write_atomic(&alone_file_name(alone.epoch), &bytes)?)
    }

    /// The copy confirms again: the record of going alone is removed.
    pub fn remove_alone(&self, epoch: Epoch) -> Result<()> {
        Ok(self.share.remove(&alone_file_name(epoch))?)
    }

    /// Whether `epoch`'s active went on alone (and since when). A file of
    /// a newer format version is refused, never guessed at.
    pub fn alone(&self, epoch: Epoch) -> Result<Option<Alone>> {
        let name = alone_file_name(epoch);
        let Some(bytes) = self.share.read(&name, MAX_EPOCH_FILE)? else {
            return Ok(None);
        };
        let path = || format!("{}/{name}", self.share.display());
        let alone: Alone = shipper::state_file::parse(&bytes, MAX_EPOCH_FILE as usize)
            .map_err(|why| WitnessError::BadAloneFile { path: path(), why })?;
        if alone.version != ALONE_VERSION {
            let why = StateFileError::Fields(format!(
                "format version {} is not one this build reads ({ALONE_VERSION})",
                alone.version
            ));
            return Err(WitnessError::BadAloneFile { path: path(), why });
        }
        Ok(Some(alone))
    }

    /// True while this node holds the vote (as last known; see `confirm`).
    pub fn holds(&self) -> bool {
        self.lock.is_some()
    }

    /// Takes the vote if no one holds it. True when this node holds it.
    pub fn acquire(&mut self) -> Result<bool> {
        if self.lock.is_some() {
            return Ok(true);
        }
        self.lock = self.share.try_lock(LOCK_FILE)?;
        Ok(self.lock.is_some())
    }

    /// Proves the vote is still held; drops it (and says so) when not.
    pub fn confirm(&mut self) -> Result<()> {
        let Some(lock) = &self.lock else {
            return Err(WitnessError::NotHeld {
                path: format!("{}/{LOCK_FILE}", self.share.display()),
            });
        };
        if let Err(e) = lock.confirm() {
            self.lock = None;
            return Err(e.into());
        }
        Ok(())
    }

    /// Gives the vote back.
    pub fn release(&mut self) {
        self.lock = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        /// Whatever an epoch file or an `alone-` file holds, reading the
        /// witness gives records or an error naming the file; never a panic.
        #[test]
        fn any_bytes_in_witness_files_read_or_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join(epoch_file_name(Epoch(3))), &bytes).unwrap();
            std::fs::write(dir.path().join(alone_file_name(Epoch(3))), &bytes).unwrap();
            let w = Witness::new(Share::Dir(dir.path().to_path_buf()));
            if let Err(e) = w.history() {
                prop_assert!(e.to_string().contains("epoch-0000000000000003.json"), "{}", e);
            }
            if let Err(e) = w.alone(Epoch(3)) {
                prop_assert!(e.to_string().contains("alone-0000000000000003.json"), "{}", e);
            }
        }
    }

    #[test]
    fn an_epoch_file_of_a_newer_version_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let w = Witness::new(Share::Dir(dir.path().to_path_buf()));
        let mut r = rec(2, "alpha");
        assert!(w.claim(&r).unwrap());
        assert_eq!(w.history().unwrap(), vec![r.clone()]);
        r.epoch = Epoch(3);
        r.version = shipper::FormatVersion(2);
        assert!(w.claim(&r).unwrap());
        let e = w.history().unwrap_err().to_string();
        assert!(
            e.contains("format version 2") && e.contains("epoch-0000000000000003.json"),
            "{e}"
        );
    }

    #[test]
    fn an_alone_file_of_a_newer_version_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let w = Witness::new(Share::Dir(dir.path().to_path_buf()));
        let a = Alone {
            version: ALONE_VERSION,
            epoch: Epoch(4),
            node: "alpha".into(),
            from_lsn: Lsn(7),
            reason: "test".into(),
            at_us: 1,
        };
        w.write_alone(&a).unwrap();
        assert_eq!(w.alone(Epoch(4)).unwrap(), Some(a.clone()));
        assert_eq!(w.alone(Epoch(5)).unwrap(), None);
        let newer = serde_json::json!({"version": 2, "epoch": 4});
        std::fs::write(
            dir.path().join(alone_file_name(Epoch(4))),
            newer.to_string(),
        )
        .unwrap();
        let e = w.alone(Epoch(4)).unwrap_err().to_string();
        assert!(
            e.contains("format version 2") && e.contains("alone-"),
            "{e}"
        );
        w.remove_alone(Epoch(4)).unwrap();
        assert_eq!(w.alone(Epoch(4)).unwrap(), None);
    }

    fn rec(epoch: u64, node: &str) -> EpochRecord {
        EpochRecord {
            version: Default::default(),
            epoch: Epoch(epoch),
            node: node.into(),
            start_lsn: Lsn(10 * epoch),
            start_generation: Generation(epoch),
            reason: "test".into(),
            started_us: now_us(),
        }
    }

    #[test]
    fn an_epoch_is_won_once_and_the_history_is_ordered() {
        let tmp = tempfile::tempdir().unwrap();
        let a = Witness::new(Share::Dir(tmp.path().to_path_buf()));
        let b = Witness::new(Share::Dir(tmp.path().to_path_buf()));
        assert_eq!(a.latest().unwrap(), None);
        assert!(a.claim(&rec(2, "alpha")).unwrap());
        assert!(!b.claim(&rec(2, "beta")).unwrap());
        assert!(b.claim(&rec(3, "beta")).unwrap());
        let h = a.history().unwrap();
        assert_eq!(
            h,
            vec![rec(2, "alpha"), rec(3, "beta")]
                .into_iter()
                .map(|mut r| {
                    r.started_us = h.iter().find(|x| x.epoch == r.epoch).unwrap().started_us;
                    r
                })
                .collect::<Vec<_>>()
        );
        assert_eq!(b.latest().unwrap().unwrap().node, "beta");
    }

    #[test]
    fn a_damaged_epoch_file_is_an_error_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(epoch_file_name(Epoch(4))), b"{not json").unwrap();
        let w = Witness::new(Share::Dir(tmp.path().to_path_buf()));
        let e = w.history().unwrap_err().to_string();
        assert!(e.contains("epoch-0000000000000004.json"), "{e}");
    }

    #[test]
    fn the_vote_is_held_by_one_at_a_time() {
        let tmp = tempfile::tempdir().unwrap();
        let mut a = Witness::new(Share::Dir(tmp.path().to_path_buf()));
        let mut b = Witness::new(Share::Dir(tmp.path().to_path_buf()));
        assert!(a.acquire().unwrap());
        a.confirm().unwrap();
        assert!(!b.acquire().unwrap());
        a.release();
        assert!(a.confirm().is_err());
        assert!(b.acquire().unwrap());
        b.confirm().unwrap();
    }
}
