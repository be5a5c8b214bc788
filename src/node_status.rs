//! What a node daemon publishes about itself (`node.json` beside its data,
//! `node-status.json` on its share): its role, epoch, votes, what blocks it,
//! its peer as it last heard it. Written by `node`, read by `status` and
//! `copy` on any machine; this module holds only the type and its files.

use std::path::Path;

use serde::{Deserialize, Serialize};
use shipper::{Epoch, Lsn};
use witness::{DialDecision, Role};

/// The node's published state, beside its data.
pub const NODE_STATUS_FILE: &str = "node.json";
/// The same, on the node's own share, for `status` on other machines.
pub const PUBLISHED_NODE_STATUS: &str = "node-status.json";

/// The votes a node sees.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quorum {
    /// This node's own vote (always, while it runs).
    pub node: bool,
    /// The peer's vote: heard within the dead time (for an active: a
    /// supporting heartbeat whose lease still runs).
    pub peer: bool,
    /// The witness's vote: this node holds the witness lock.
    pub witness: bool,
    pub votes: u8,
}

/// What this node last heard from its peer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerSummary {
    pub node: String,
    pub role: Role,
    pub paused: bool,
    pub epoch: Epoch,
    /// The peer's log position: an active's last LSN, a passive's replayed LSN.
    pub lsn: Lsn,
    /// The peer's copy status, when it is a passive.
    pub copy: Option<String>,
    pub heard_ms_ago: Option<u64>,
}

/// One member of a cluster past two nodes, as etcd has it (`members/<node>`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyLine {
    pub node: String,
    pub role: Role,
    /// Healthy, Initializing, Failed, Suspended…; none on the active.
    pub copy_status: Option<String>,
    pub received: Lsn,
    pub replayed: Lsn,
    /// Records behind the active, when one is known.
    pub behind: Option<u64>,
    /// `activation-preference`; 0 when unset.
    pub preference: u32,
    pub paused: bool,
    pub lagged: bool,
}

/// What `<data-dir>/node.json` holds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The file's format version (FORMAT.md, "State files").
    #[serde(default = "shipper::FormatVersion::first")]
    pub version: shipper::FormatVersion,
    pub node: String,
    pub role: Role,
    /// The epoch this node is active in, or the newest it knows.
    pub epoch: Epoch,
    pub active_node: Option<String>,
    /// online or paused (`logship status` shows offline when the daemon is gone).
    pub node_state: String,
    pub quorum: Quorum,
    pub witness: String,
    pub witness_reachable: bool,
    /// Why this node does not become active although it could be asked to.
    pub blocked: Option<String>,
    /// The last mount-dial decision of a failover.
    pub dial: Option<DialDecision>,
    /// An active's answer to "may the role move to the peer now?", from the
    /// same view and checks as `move-cluster` (`witness::moves`).
    #[serde(default)]
    pub move_check: Option<String>,
    pub warnings: Vec<String>,
    pub peer: Option<PeerSummary>,
    /// Mail delivered over LMTP since the daemon started: recipients newly
    /// stored, and dropped as duplicates (a redelivery shows up here).
    pub mail_stored: u64,
    pub mail_duplicates: u64,
    /// Activations of this node after its peer failed (failover, activate)
    /// since the daemon started.
    pub failovers: u64,
    pub lsn: Lsn,
    /// Block mode, on a passive: the last record received and durable
    /// here (ahead of replay), and when (RFC 3339).
    #[serde(default)]
    pub last_received_lsn: Option<Lsn>,
    #[serde(default)]
    pub last_received_time: Option<String>,
    /// Records, and bytes of log, the active holds durable that this copy
    /// has not received (the copy queue, beside its length in generations).
    #[serde(default)]
    pub copy_queue_records: Option<u64>,
    #[serde(default)]
    pub copy_queue_bytes: Option<u64>,
    /// The block-mode stream: up (and whether encrypted), or why not.
    #[serde(default)]
    pub block_mode: Option<String>,
    /// With `commit = "remote"`, on the active: synchronous, or alone
    /// since which record and why.
    #[serde(default)]
    pub commit: Option<String>,
    /// Past two nodes: every member as this node last read it from etcd.
    #[serde(default)]
    pub copies: Vec<CopyLine>,
    pub pid: u32,
    pub updated_us: u64,
}

/// The most `node.json` may hold.
pub const MAX_NODE_STATUS: usize = 1 << 20;

impl NodeStatus {
    pub fn load(data_dir: &Path) -> Option<NodeStatus> {
        let p = data_dir.join(NODE_STATUS_FILE);
        let bytes = shipper::state_file::read_file(&p, MAX_NODE_STATUS).ok()??;
        Self::parse(&bytes).ok()
    }

    /// Reads `node.json` or `node-status.json`.
    pub fn parse(bytes: &[u8]) -> Result<NodeStatus, shipper::state_file::StateFileError> {
        shipper::state_file::parse(bytes, MAX_NODE_STATUS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        /// Whatever `node.json` holds, loading it gives a status or none;
        /// never a panic.
        #[test]
        fn any_bytes_in_node_json_load_or_are_ignored(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join(NODE_STATUS_FILE), &bytes).unwrap();
            let _ = NodeStatus::load(dir.path());
        }
    }

    #[test]
    fn a_node_json_of_a_newer_format_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut v = serde_json::to_value(NodeStatus::default()).unwrap();
        std::fs::write(dir.path().join(NODE_STATUS_FILE), v.to_string()).unwrap();
        assert!(NodeStatus::load(dir.path()).is_some());
        v["version"] = 2.into();
        std::fs::write(dir.path().join(NODE_STATUS_FILE), v.to_string()).unwrap();
        assert!(NodeStatus::load(dir.path()).is_none());
    }
}
