//! The keys of a cluster that etcd arbitrates, and what each holds: the
//! bytes other nodes read (FORMAT.md, "etcd keys"). Every value is JSON
//! with a `version` first, read through `shipper::state_file`, so that a
//! value of a newer format is refused by name, never guessed at.
//!
//! Under `/<prefix>/`:
//! - `leader`: `LeaderValue`, attached to the active's lease.
//! - `epochs/<16 hex>`: an `EpochRecord` (the witness's epoch file, the
//!   same bytes), created only if absent and never attached to a lease.
//! - `members/<node>`: `MemberValue`, attached to that node's lease.
//!
//! `read` takes all of them in one range read, so a decision is made on
//! one revision of the cluster; `Ledger` claims epochs and reads their
//! history, as `Witness` does on a file share.

use serde::{Deserialize, Serialize};
use shipper::state_file::StateFileError;
use shipper::{Epoch, Generation, Lsn};

use crate::dcs::{Leader, MemberState};
use crate::etcd::{Etcd, EtcdError, LeaseId};
use crate::heartbeat::Role;
use crate::witness::EpochRecord;

pub const LEADER: &str = "leader";
pub const HANDOFF: &str = "handoff";
pub const MEMBERS: &str = "members/";
pub const EPOCHS: &str = "epochs/";

/// The largest value read from any key.
pub const MAX_VALUE: usize = 64 * 1024;

/// Why the cluster's keys could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    /// A value that cannot be read as what its key holds.
    #[error("etcd key {key} is not valid: {why}")]
    BadValue { key: String, why: StateFileError },
    /// An epoch record under another epoch's key.
    #[error("etcd key {key} says it is epoch {says}")]
    WrongEpoch { key: String, says: Epoch },
}

pub type Result<T, E = KeyError> = std::result::Result<T, E>;

/// `epochs/<16 hex>`, the same digits as the witness's epoch files.
pub fn epoch_key(e: Epoch) -> String {
    format!("{EPOCHS}{:016X}", e.0)
}

fn parse_epoch_key(rel: &str) -> Option<Epoch> {
    let hex = rel.strip_prefix(EPOCHS)?;
    (hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| u64::from_str_radix(hex, 16).ok().map(Epoch))
        .flatten()
}

/// What `leader` holds: the active and the epoch it claimed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderValue {
    #[serde(default = "shipper::FormatVersion::first")]
    pub version: shipper::FormatVersion,
    pub node: String,
    pub epoch: Epoch,
}

impl LeaderValue {
    pub fn new(node: &str, epoch: Epoch) -> LeaderValue {
        LeaderValue {
            version: shipper::FormatVersion::CURRENT,
            node: node.to_string(),
            epoch,
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("leader values serialise")
    }
}

/// What `handoff` holds while a planned move is under way: the active
/// stopped taking writes at `lsn` and hands the role to `to`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoffValue {
    #[serde(default = "shipper::FormatVersion::first")]
    pub version: shipper::FormatVersion,
    pub from: String,
    pub to: String,
    pub epoch: Epoch,
    pub lsn: Lsn,
    #[serde(default)]
    pub comment: String,
}

impl HandoffValue {
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("handoff values serialise")
    }
}

/// What `members/<node>` holds: a node's role, its copy's position and
/// health, and its activation preference, as best-copy selection reads them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberValue {
    #[serde(default = "shipper::FormatVersion::first")]
    pub version: shipper::FormatVersion,
    pub node: String,
    pub role: Role,
    /// The epoch it is active in, or the newest it knows.
    pub epoch: Epoch,
    /// The active's last LSN; a copy's last durable record.
    pub received: Lsn,
    pub replayed: Lsn,
    /// The generation `received` is in (an active: its open segment's, or
    /// the last sealed one when the open one holds nothing).
    #[serde(default)]
    pub generation: Generation,
    /// Seeded, neither Failed nor Suspended (an active: its store is open).
    pub able: bool,
    pub paused: bool,
    pub lagged: bool,
    /// `activation-preference`; 0 when unset.
    pub preference: u32,
    /// The copy's status word (Healthy, Initializing, Failed, Suspended…),
    /// for `status`; none on an active.
    #[serde(default)]
    pub copy_status: Option<String>,
    /// The node it copies from.
    #[serde(default)]
    pub source: Option<String>,
    /// When it was written (µs since the Unix epoch, the writer's clock).
    pub at_us: u64,
}

impl MemberValue {
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("member values serialise")
    }

    /// The member as best-copy selection sees it.
    pub fn state(&self) -> MemberState {
        MemberState {
            node: self.node.clone(),
            received: self.received,
            replayed: self.replayed,
            able: self.able,
            paused: self.paused,
            lagged: self.lagged,
            preference: self.preference,
        }
    }
}

/// The cluster as one range read found it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterRead {
    pub leader: Option<Leader>,
    /// The lease `leader` is attached to.
    pub leader_lease: Option<LeaseId>,
    /// A planned move under way.
    pub handoff: Option<HandoffValue>,
    pub members: Vec<MemberValue>,
    /// Every epoch, oldest first.
    pub history: Vec<EpochRecord>,
    /// Member values that could not be read, each with why: such a member
    /// counts as absent (it cannot be chosen), and status says so.
    pub problems: Vec<String>,
}

/// Reads every key of the cluster at once.
pub fn read(etcd: &Etcd) -> Result<ClusterRead> {
    let root = etcd.key("");
    let mut out = ClusterRead::default();
    for kv in etcd.range(&root)? {
        let (key, value) = (kv.key, kv.value);
        let rel = &key[root.len().min(key.len())..];
        if rel == LEADER {
            out.leader_lease = kv.lease;
            let v: LeaderValue = shipper::state_file::parse(&value, MAX_VALUE)
                .map_err(|why| KeyError::BadValue { key, why })?;
            out.leader = Some(Leader {
                node: v.node,
                epoch: v.epoch,
            });
        } else if rel == HANDOFF {
            // A damaged one is no move: the election goes on by rank.
            match shipper::state_file::parse::<HandoffValue>(&value, MAX_VALUE) {
                Ok(h) => out.handoff = Some(h),
                Err(why) => out.problems.push(format!("etcd key {key}: {why}")),
            }
        } else if let Some(epoch) = parse_epoch_key(rel) {
            let rec: EpochRecord =
                shipper::state_file::parse(&value, MAX_VALUE).map_err(|why| {
                    KeyError::BadValue {
                        key: key.clone(),
                        why,
                    }
                })?;
            if rec.epoch != epoch {
                return Err(KeyError::WrongEpoch {
                    key,
                    says: rec.epoch,
                });
            }
            out.history.push(rec);
        } else if let Some(node) = rel.strip_prefix(MEMBERS) {
            match shipper::state_file::parse::<MemberValue>(&value, MAX_VALUE) {
                Ok(m) if m.node == node => out.members.push(m),
                Ok(m) => out
                    .problems
                    .push(format!("etcd key {key} speaks for node {}", m.node)),
                Err(why) => out.problems.push(format!("etcd key {key}: {why}")),
            }
        }
    }
    out.history.sort_by_key(|r| r.epoch);
    Ok(out)
}

/// The epochs of an etcd cluster: claimed by a create only one node can
/// win, read back oldest first.
#[derive(Debug)]
pub struct Ledger {
    etcd: Etcd,
}

impl Ledger {
    pub fn new(etcd: Etcd) -> Ledger {
        Ledger { etcd }
    }

    pub fn etcd(&self) -> &Etcd {
        &self.etcd
    }

    /// Every epoch recorded, oldest first.
    pub fn history(&self) -> Result<Vec<EpochRecord>> {
        Ok(read(&self.etcd)?.history)
    }

    pub fn latest(&self) -> Result<Option<EpochRecord>> {
        Ok(self.history()?.pop())
    }

    /// Starts `rec.epoch`; false when that epoch already exists.
    pub fn claim(&self, rec: &EpochRecord) -> Result<bool> {
        let bytes = serde_json::to_vec_pretty(rec).expect("epoch records serialise");
        Ok(self
            .etcd
            .create(&self.etcd.key(&epoch_key(rec.epoch)), &bytes, None)?)
    }

    /// Creates `leader` for `node` in `epoch`, under `lease`: false when
    /// another node holds it.
    pub fn take_leader(&self, node: &str, epoch: Epoch, lease: LeaseId) -> Result<bool> {
        let v = LeaderValue::new(node, epoch);
        Ok(self
            .etcd
            .create(&self.etcd.key(LEADER), &v.to_bytes(), Some(lease))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn epoch_keys_round_trip_and_others_are_not_epochs() {
        assert_eq!(epoch_key(Epoch(10)), "epochs/000000000000000A");
        assert_eq!(parse_epoch_key(&epoch_key(Epoch(10))), Some(Epoch(10)));
        for bad in ["epochs/", "epochs/12", "epochs/00000000000000zz", "leader"] {
            assert_eq!(parse_epoch_key(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_member_value_of_a_newer_format_is_refused() {
        let v = br#"{"version": 99, "node": "a"}"#;
        assert!(matches!(
            shipper::state_file::parse::<MemberValue>(v, MAX_VALUE),
            Err(StateFileError::Newer { found: 99, .. })
        ));
    }

    proptest! {
        /// Whatever bytes a key holds, they are read or refused; never a panic.
        #[test]
        fn any_bytes_are_read_or_refused(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = shipper::state_file::parse::<MemberValue>(&bytes, MAX_VALUE);
            let _ = shipper::state_file::parse::<LeaderValue>(&bytes, MAX_VALUE);
        }

        #[test]
        fn member_values_round_trip(received in any::<u64>(), replayed in any::<u64>(), preference in 0u32..17, able in any::<bool>()) {
            let m = MemberValue {
                version: shipper::FormatVersion::CURRENT,
                node: "gamma".into(),
                received: Lsn(received),
                replayed: Lsn(replayed),
                preference,
                able,
                ..MemberValue::default()
            };
            let back: MemberValue = shipper::state_file::parse(&m.to_bytes(), MAX_VALUE).unwrap();
            prop_assert_eq!(back, m);
        }
    }
}
