//! Copy status with the names Exchange administrators know
//! (`Get-StorageGroupCopyStatus`): the summary, the copy and replay queue
//! lengths, and the four watermarks (generated, copied, inspected,
//! replayed) with their times. `CQL = generated − inspected`,
//! `RQL = inspected − replayed`.

use serde::{Deserialize, Serialize};

use crate::state::{CopyPaths, CopyState, Mark};
use shipper::{Generation, Lsn};

/// How long without a state update before the daemon is reported as not running.
pub const STALE_AFTER_US: u64 = 15_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SummaryCopyStatus {
    Healthy,
    Initializing,
    Seeding,
    Suspended,
    Failed,
    Disconnected,
}

impl std::fmt::Display for SummaryCopyStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

/// One copy's status, as `logship status --json` prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyStatus {
    /// The file's format version (FORMAT.md, "State files").
    #[serde(default = "shipper::FormatVersion::first")]
    pub version: shipper::FormatVersion,
    pub node: String,
    pub source: String,
    /// The database the copy holds (the active ignores reports about another).
    #[serde(default)]
    pub database_id: String,
    pub summary_copy_status: SummaryCopyStatus,
    pub copy_queue_length: u64,
    pub replay_queue_length: u64,
    pub last_log_generated: Option<Generation>,
    pub last_log_generated_time: Option<String>,
    pub last_log_copied: Option<Generation>,
    pub last_log_copied_time: Option<String>,
    pub last_log_inspected: Option<Generation>,
    pub last_log_inspected_time: Option<String>,
    pub last_log_replayed: Option<Generation>,
    pub last_log_replayed_time: Option<String>,
    pub last_replayed_lsn: Lsn,
    pub content_hash: Option<String>,
    pub suspend_comment: Option<String>,
    /// Failed inspections of the next segment so far (it is copied again up to 3 times).
    pub inspection_failures: u32,
    pub error: Option<String>,
    pub database_path: String,
    /// False when the replay daemon has not updated the state recently.
    pub daemon_running: bool,
}

fn generation(m: &Option<Mark>) -> Option<Generation> {
    m.map(|m| m.generation)
}

fn time(m: &Option<Mark>) -> Option<String> {
    m.map(|m| fmt_time(m.time_us))
}

pub fn fmt_time(us: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_micros(us);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The status of the copy kept in `paths`, from its state and control files.
pub fn status(node: &str, paths: &CopyPaths, state: &CopyState, now_us: u64) -> CopyStatus {
    let suspend_comment = crate::state::suspended(paths);
    let daemon_running = now_us.saturating_sub(state.updated_us) < STALE_AFTER_US;
    let summary = if state.seeding {
        SummaryCopyStatus::Seeding
    } else if state.failed.is_some() {
        SummaryCopyStatus::Failed
    } else if suspend_comment.is_some() {
        SummaryCopyStatus::Suspended
    } else if state.disconnected {
        SummaryCopyStatus::Disconnected
    } else if state.error.is_some() {
        SummaryCopyStatus::Failed
    } else if state.initializing || state.last_log_inspected_is_none() {
        SummaryCopyStatus::Initializing
    } else {
        SummaryCopyStatus::Healthy
    };
    let g = generation(&state.last_generated).unwrap_or_default().0;
    let i = generation(&state.last_inspected).unwrap_or_default().0;
    let r = generation(&state.last_replayed).unwrap_or_default().0;
    CopyStatus {
        version: Default::default(),
        node: node.to_string(),
        source: state.source.clone(),
        database_id: state.database_id.clone(),
        summary_copy_status: summary,
        copy_queue_length: g.saturating_sub(i),
        replay_queue_length: i.saturating_sub(r),
        last_log_generated: generation(&state.last_generated),
        last_log_generated_time: time(&state.last_generated),
        last_log_copied: generation(&state.last_copied),
        last_log_copied_time: time(&state.last_copied),
        last_log_inspected: generation(&state.last_inspected),
        last_log_inspected_time: time(&state.last_inspected),
        last_log_replayed: generation(&state.last_replayed),
        last_log_replayed_time: time(&state.last_replayed),
        last_replayed_lsn: state.replayed_lsn,
        content_hash: state.replayed_hash.clone(),
        suspend_comment,
        inspection_failures: state.inspection_failures,
        error: state.failed.clone().or_else(|| state.error.clone()),
        database_path: paths.database.display().to_string(),
        daemon_running,
    }
}

impl CopyState {
    fn last_log_inspected_is_none(&self) -> bool {
        self.last_inspected.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(fmt_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(fmt_time(1_795_317_401_000_000), "2026-11-22T03:16:41Z");
    }
}
