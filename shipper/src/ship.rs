//! The active's shipping duties, run by `logship ship` beside the store
//! (which seals full and idle segments itself): publishing sealed segments
//! on the node's share when the share is not the log directory itself,
//! answering seed requests with snapshots, and truncating the log.
//!
//! Truncation (as CCR does it): a sealed segment is deleted only when every
//! passive copy reports that it replayed it, no copy is suspended, and it is
//! older than the configured retention. A passive reports by publishing
//! `copy-status.json` on its own share; the active only reads it. A copy
//! whose report cannot be read holds truncation back: when in doubt, keep.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::format;
use crate::seed::{self, SeedManifest, SeedRequest};
use crate::share::Share;
use crate::store::Store;

/// The status file a passive publishes on its share (see the replayer).
pub const COPY_STATUS_FILE: &str = "copy-status.json";
/// What the ship loop says about itself, in the node's data directory.
pub const SHIP_STATUS_FILE: &str = "ship-status.json";

/// The ship loop's status: written when truncation is held back or
/// resumes, and at least once a second while the loop runs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShipStatus {
    /// The file's format version (FORMAT.md, "State files").
    #[serde(default = "crate::FormatVersion::first")]
    pub version: crate::FormatVersion,
    /// Turns of the loop completed since the daemon started.
    pub turns: u64,
    /// Why replayed sealed segments are kept; `None` while truncation runs.
    pub truncation_held: Option<String>,
    pub pid: u32,
    /// When this was written, microseconds since the Unix epoch.
    pub updated_us: u64,
}

impl ShipStatus {
    /// The status in `data_dir`, if a ship loop ever wrote one there.
    pub fn load(data_dir: &Path) -> Option<ShipStatus> {
        let path = data_dir.join(SHIP_STATUS_FILE);
        let bytes = crate::state_file::read_file(&path, MAX_SMALL_FILE as usize).ok()??;
        crate::state_file::parse(&bytes, MAX_SMALL_FILE as usize).ok()
    }
}

/// How often the ship loop runs.
pub const TICK: Duration = Duration::from_millis(200);
/// Largest status or request file read from a peer.
const MAX_SMALL_FILE: u64 = 1 << 20;

/// The fields of a passive's published status that truncation needs.
#[derive(Clone, Debug, Deserialize)]
pub struct CopyReport {
    /// The file's format version (FORMAT.md, "State files").
    #[serde(default = "crate::FormatVersion::first")]
    pub version: crate::FormatVersion,
    pub node: String,
    /// The database the copy holds; a report about another database (an
    /// old one, before a re-initialisation) counts for nothing.
    #[serde(default)]
    pub database_id: Option<String>,
    pub summary_copy_status: String,
    pub last_log_replayed: Option<crate::Generation>,
    pub suspend_comment: Option<String>,
}

#[derive(Clone, Debug)]
pub struct ShipConfig {
    pub node: String,
    /// Where peers read this node's segments.
    pub share: Share,
    /// The passive nodes: name and share.
    pub peers: Vec<(String, Share)>,
    /// Sealed segments younger than this are kept even when replayed.
    pub retention: Duration,
}

/// Runs the ship loop until `shutdown` is set.
pub fn run(store: &Store, cfg: &ShipConfig, shutdown: &AtomicBool) -> Result<()> {
    let logs = store.paths().logs.clone();
    let publish_needed = match &cfg.share {
        Share::Dir(d) => std::fs::canonicalize(d).ok() != std::fs::canonicalize(&logs).ok(),
        // An SMB share is how peers reach this node's log directory (the
        // server exports it): nothing to copy.
        Share::Smb(_) => false,
    };
    let mut held_reason: Option<String> = None;
    let status_path = store.paths().data_dir.join(SHIP_STATUS_FILE);
    let mut status = ShipStatus {
        pid: std::process::id(),
        ..Default::default()
    };
    // The status as last written, and when.
    let mut written: Option<(Option<String>, Instant)> = None;
    let mut status_failed = false;
    let mut published: Option<crate::Generation> = None;
    // After a failed snapshot, wait before the next (each one reads the
    // whole database).
    let mut seed_retry_at: std::collections::HashMap<String, Instant> = Default::default();
    tracing::info!(node = %cfg.node, share = %cfg.share.display(), "ship daemon started");
    while !shutdown.load(Ordering::Relaxed) {
        let started = Instant::now();
        if publish_needed {
            match publish(&logs, &cfg.share, published) {
                Ok(p) => published = p,
                Err(e) => {
                    tracing::warn!(share = %cfg.share.display(), error = %e, "cannot publish sealed segments; retrying")
                }
            }
        }
        for (peer, share) in &cfg.peers {
            if seed_retry_at.get(peer).is_some_and(|t| Instant::now() < *t) {
                continue;
            }
            if let Err(e) = serve_seed(store, &cfg.share, peer, share) {
                tracing::warn!(peer = %peer, error = %e, "seed request failed; retrying in 10 s");
                seed_retry_at.insert(peer.clone(), Instant::now() + Duration::from_secs(10));
            }
        }
        match truncation_limit(cfg, &store.state().database_id.to_string()) {
            Ok(limit) => {
                if held_reason.take().is_some() {
                    tracing::info!("log truncation resumes");
                }
                status.truncation_held = match truncate(
                    store,
                    &logs,
                    &cfg.share,
                    publish_needed,
                    limit,
                    cfg.retention,
                ) {
                    Ok(()) => None,
                    Err(e) => {
                        tracing::warn!(error = %e, "truncation failed; retrying");
                        Some(format!("truncation failed: {e}"))
                    }
                };
            }
            Err(why) => {
                if held_reason.as_deref() != Some(why.as_str()) {
                    tracing::info!(reason = %why, "log truncation held back");
                    held_reason = Some(why.clone());
                }
                status.truncation_held = Some(why);
            }
        }
        status.turns += 1;
        let due = written.as_ref().is_none_or(|(held, at)| {
            *held != status.truncation_held || at.elapsed() >= Duration::from_secs(1)
        });
        if due {
            status.updated_us = crate::log::now_us();
            let json = serde_json::to_vec_pretty(&status).expect("status serialises");
            match crate::share::write_atomic(&status_path, &json) {
                Ok(()) => status_failed = false,
                Err(e) if !status_failed => {
                    status_failed = true;
                    tracing::warn!(error = %e, "cannot write the ship status");
                }
                Err(_) => {}
            }
            written = Some((status.truncation_held.clone(), Instant::now()));
        }
        let spent = started.elapsed();
        if spent < TICK {
            std::thread::sleep(TICK - spent);
        }
    }
    Ok(())
}

/// The newest generation every copy has replayed, or why nothing may go.
pub fn truncation_limit(cfg: &ShipConfig, database_id: &str) -> std::result::Result<u64, String> {
    let mut limit = u64::MAX;
    for (peer, share) in &cfg.peers {
        let report = match share.read(COPY_STATUS_FILE, MAX_SMALL_FILE) {
            Ok(Some(b)) => crate::state_file::parse::<CopyReport>(&b, MAX_SMALL_FILE as usize)
                .map_err(|e| format!("the status of copy {peer} is unreadable: {e}"))?,
            Ok(None) => {
                return Err(format!(
                    "copy {peer} has published no status (not seeded yet? `logship seed --node {peer}`)"
                ));
            }
            // Its share's directory is not there at all: never seeded.
            Err(crate::Error::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return Err(format!(
                    "copy {peer} has no share yet (not seeded? `logship seed --node {peer}`)"
                ));
            }
            Err(e) => return Err(format!("cannot read the status of copy {peer}: {e}")),
        };
        if report.node != *peer || report.database_id.as_deref() != Some(database_id) {
            return Err(format!(
                "the status on {peer}'s share is not about {peer}'s copy of this database"
            ));
        }
        if report.suspend_comment.is_some() || report.summary_copy_status == "Suspended" {
            let why = report
                .suspend_comment
                .map(|c| format!(" ({c})"))
                .unwrap_or_default();
            return Err(format!("copy {peer} is suspended{why}"));
        }
        match report.last_log_replayed {
            Some(g) => limit = limit.min(g.0),
            None => return Err(format!("copy {peer} has replayed nothing yet")),
        }
    }
    if cfg.peers.is_empty() {
        return Err("no passive copy is configured".into());
    }
    Ok(limit)
}

fn truncate(
    store: &Store,
    logs: &std::path::Path,
    share: &Share,
    separate: bool,
    limit: u64,
    retention: Duration,
) -> Result<()> {
    // The store's SQLite may hold recent commits only in its page cache
    // (synchronous=NORMAL): make them durable before deleting the log that
    // would redo them, and delete only what that covers.
    let mut durable = None;
    for (g, path) in crate::log::list_sealed(logs)? {
        if g.0 > limit {
            break;
        }
        let age = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .unwrap_or_default();
        if age < retention {
            continue;
        }
        let durable_lsn = match durable {
            Some(l) => l,
            None => {
                let l = store.checkpoint()?;
                durable = Some(l);
                l
            }
        };
        if crate::log::read_trailer(&path)?.last_lsn > durable_lsn {
            break;
        }
        if separate {
            // Under either spelling: a build before lower-case names may
            // have published it.
            for case in [format::NameCase::Lower, format::NameCase::Upper] {
                share.remove(&format::segment_file_name_in(g, case))?;
            }
        }
        std::fs::remove_file(&path).map_err(|e| Error::io("truncate the log: delete", &path, e))?;
        tracing::info!(generation = %g, "truncated: every copy has replayed it");
    }
    Ok(())
}

/// Copies sealed segments newer than `published` to a share that is not the
/// log directory itself.
fn publish(
    logs: &std::path::Path,
    share: &Share,
    published: Option<crate::Generation>,
) -> Result<Option<crate::Generation>> {
    let mut last = published;
    for (g, path) in crate::log::list_sealed(logs)? {
        if last.is_some_and(|p| g <= p) {
            continue;
        }
        let name = format::segment_file_name(g);
        let legacy = format::segment_file_name_in(g, format::NameCase::Upper);
        if !share.exists(&name)? && (legacy == name || !share.exists(&legacy)?) {
            let bytes = std::fs::read(&path).map_err(|e| Error::io("read", &path, e))?;
            share.write_atomic(&name, &bytes)?;
        }
        last = Some(g);
    }
    Ok(last)
}

/// Answers `peer`'s seed request, if it has one, with a snapshot on our share;
/// removes the snapshot once the request is gone.
fn serve_seed(store: &Store, own: &Share, peer: &str, peer_share: &Share) -> Result<()> {
    let request = match peer_share.read(seed::REQUEST_FILE, MAX_SMALL_FILE) {
        Ok(Some(b)) => match SeedRequest::parse(&b) {
            Ok(r) => Some(r),
            Err(why) => {
                tracing::warn!(peer = %peer, file = seed::REQUEST_FILE, reason = %why, "seed request not answered");
                None
            }
        },
        Ok(None) => None,
        Err(_) => return Ok(()), // unreachable peer: nothing to serve
    };
    let manifest_name = seed::manifest_name(peer);
    let Some(request) = request.filter(|r| r.node == peer) else {
        // Nothing asked: remove an old answer (cheap when there is none).
        own.remove(&manifest_name)?;
        own.remove(&seed::snapshot_name(peer))?;
        return Ok(());
    };
    if let Some(b) = own.read(&manifest_name, MAX_SMALL_FILE)?
        && SeedManifest::parse(&b).is_ok_and(|m| m.id == request.id)
    {
        return Ok(()); // already answered
    }
    tracing::info!(peer = %peer, "taking a snapshot to seed {peer}");
    let local: PathBuf = store.paths().data_dir.join(format!("seed-{peer}.snapshot"));
    let lsn = seed::snapshot(&store.paths().database, &local)?;
    let hash = crate::log::hash_at(&store.paths().logs, lsn)?.ok_or_else(|| Error::MissingLog {
        dir: store.paths().logs.clone(),
        after: lsn,
        first: lsn,
    })?;
    let size = std::fs::metadata(&local)
        .map_err(|e| Error::io("stat", &local, e))?
        .len();
    own.upload(&local, &seed::snapshot_name(peer))?;
    let _ = std::fs::remove_file(&local);
    let manifest = SeedManifest {
        version: Default::default(),
        id: request.id,
        database_id: store.state().database_id.to_string(),
        lsn,
        hash: hash.to_string(),
        size,
    };
    own.write_atomic(
        &manifest_name,
        &serde_json::to_vec_pretty(&manifest).expect("serialises"),
    )?;
    tracing::info!(peer = %peer, lsn = %lsn, bytes = size, "snapshot published for {peer}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        /// Whatever a peer's `copy-status.json` or our `ship-status.json`
        /// hold, reading them gives a reason or a status; never a panic,
        /// and never a truncation limit from a report that does not parse.
        #[test]
        fn any_bytes_in_status_files_are_read_or_refused(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join(SHIP_STATUS_FILE), &bytes).unwrap();
            let _ = ShipStatus::load(dir.path());
            let peer = dir.path().join("beta");
            std::fs::create_dir_all(&peer).unwrap();
            std::fs::write(peer.join(COPY_STATUS_FILE), &bytes).unwrap();
            let cfg = ShipConfig {
                node: "alpha".into(),
                share: Share::Dir(dir.path().join("alpha")),
                peers: vec![("beta".into(), Share::Dir(peer))],
                retention: Duration::ZERO,
            };
            if serde_json::from_slice::<CopyReport>(&bytes).is_err() {
                prop_assert!(truncation_limit(&cfg, "db").is_err());
            }
        }
    }

    #[test]
    fn a_copy_status_of_a_newer_format_holds_truncation_back_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let peer = dir.path().join("beta");
        std::fs::create_dir_all(&peer).unwrap();
        let report = serde_json::json!({
            "version": 2, "node": "beta", "database_id": "db",
            "summary_copy_status": "Healthy", "last_log_replayed": 5,
            "suspend_comment": null
        });
        std::fs::write(peer.join(COPY_STATUS_FILE), report.to_string()).unwrap();
        let cfg = ShipConfig {
            node: "alpha".into(),
            share: Share::Dir(dir.path().join("alpha")),
            peers: vec![("beta".into(), Share::Dir(peer))],
            retention: Duration::ZERO,
        };
        let why = truncation_limit(&cfg, "db").unwrap_err();
        assert!(why.contains("format version 2"), "{why}");
    }

    #[test]
    fn a_copy_never_seeded_holds_truncation_back_and_names_the_step() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = |peer: std::path::PathBuf| ShipConfig {
            node: "alpha".into(),
            share: Share::Dir(dir.path().join("alpha")),
            peers: vec![("beta".into(), Share::Dir(peer))],
            retention: Duration::ZERO,
        };
        // No share directory at all, then an empty one.
        let peer = dir.path().join("beta");
        let why = truncation_limit(&cfg(peer.clone()), "db").unwrap_err();
        assert!(
            why.contains("copy beta has no share yet") && why.contains("logship seed --node beta"),
            "{why}"
        );
        std::fs::create_dir_all(&peer).unwrap();
        let why = truncation_limit(&cfg(peer), "db").unwrap_err();
        assert!(
            why.contains("published no status") && why.contains("logship seed --node beta"),
            "{why}"
        );
    }
}
