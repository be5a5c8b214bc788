//! The replay daemon (`logship replay`): one loop that copies the next
//! sealed segment from the active's share, inspects it, moves it into the
//! copy's log directory, replays what is complete, and keeps the copy's
//! state and published status current. It probes for the next generation's
//! file name instead of listing the share on every turn, and sleeps a short
//! poll interval only when there was nothing to do, so a sealed segment is
//! replayed well under a second after it appears without burning CPU.
//!
//! Faults are sorted in two kinds. Permanent ones (divergence, a segment
//! still corrupt after three copies, a gap, a schema mismatch) make the copy
//! `Failed` until an operator resumes it. Transient ones (an unreachable
//! share, a full disk) pause it with the error shown and clear themselves.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shipper::format;
use shipper::share::Share;
use shipper::{Epoch, Generation};

use crate::error::{Error, Result};

use crate::copier;
use crate::inspector::{self, Inspected};
use crate::replay::Replayer;
use crate::state::{self, CopyPaths, CopyState, Mark};
use crate::status;

/// Default for `ReplayConfig::poll`.
pub const DEFAULT_POLL: Duration = Duration::from_millis(100);
/// Copies of one segment before it is declared irrecoverable (Exchange: 3).
pub const INSPECTION_TRIES: u32 = 3;
/// Segments copied per turn before replay runs.
pub const COPY_BATCH: usize = 64;
/// Most segments asked for at once by a copy that is behind.
pub const MAX_WINDOW: usize = COPY_BATCH;
/// Connections (and threads) that copy and inspect a window in parallel.
pub const LANES: usize = 3;
/// Replayed segments kept in the copy's log directory.
pub const KEEP_REPLAYED: u64 = 8;
/// Name of the status file a passive publishes on its own share.
pub const PUBLISHED_STATUS: &str = "copy-status.json";
/// Pause before copying a segment again after it failed inspection
/// (times the number of failures so far): a segment damaged in transit is
/// often fine on the next copy, one damaged at the source may be rewritten.
pub const RETRY_DELAY: Duration = Duration::from_millis(700);
/// Longest pause after repeated transient faults.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often the state is rewritten while nothing changes (liveness).
const REFRESH: Duration = Duration::from_secs(2);
/// How often the share is listed (for the generated watermark and gaps).
const LIST_EVERY: Duration = Duration::from_secs(1);

/// What the daemon needs to know.
#[derive(Clone, Debug)]
pub struct ReplayConfig {
    /// This node's name.
    pub node: String,
    pub data_dir: PathBuf,
    /// The node the copy pulls from, and its share.
    pub source_node: String,
    pub source: Share,
    /// Where this node publishes its copy status for the active.
    pub own_share: Option<Share>,
    pub poll: Duration,
    /// Where each epoch began, as the cluster's witness records it (empty
    /// outside a cluster). A segment written in an older epoch at or past
    /// the start of a newer one comes from a deposed active: refused.
    pub epochs: Arc<Mutex<Vec<EpochStart>>>,
    /// Replay a segment only this long after it was sealed (0: at once).
    pub replay_lag: Duration,
}

/// The first generation of an epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EpochStart {
    pub epoch: Epoch,
    pub start_generation: Generation,
}

/// Refuses a segment of `epoch` at `generation` when a newer epoch had
/// already begun at or before that generation.
pub fn check_epoch(
    starts: &[EpochStart],
    generation: Generation,
    epoch: Epoch,
) -> std::result::Result<(), EpochStart> {
    match starts
        .iter()
        .find(|s| s.epoch > epoch && s.start_generation <= generation)
    {
        Some(s) => Err(*s),
        None => Ok(()),
    }
}

pub(crate) use shipper::types::now_us;

fn mark(g: Generation) -> Option<Mark> {
    Some(Mark {
        generation: g,
        time_us: now_us(),
    })
}

/// True for faults that need an operator (the copy is `Failed`).
fn permanent(e: &Error) -> bool {
    match e {
        Error::StaleEpoch { .. } => true,
        Error::Core(e) => permanent_core(e),
    }
}

/// True for the core's faults that need an operator.
fn permanent_core(e: &shipper::Error) -> bool {
    use shipper::Error as Core;
    matches!(
        e,
        Core::Conflict { .. }
            | Core::SchemaMismatch { .. }
            | Core::Corrupt { .. }
            | Core::MissingLog { .. }
    )
}

struct Daemon<'a> {
    cfg: &'a ReplayConfig,
    paths: CopyPaths,
    state: CopyState,
    saved: CopyState,
    saved_at: Instant,
    replayer: Replayer,
    prev: Option<Inspected>,
    next: Option<Generation>,
    attempts: u32,
    /// After a failed inspection, the next copy waits until then.
    retry_at: Option<Instant>,
    listed_at: Option<Instant>,
    /// How the source spells segment names (an older build's active: upper
    /// case), learnt from its listing.
    source_case: format::NameCase,
    backoff: Duration,
    /// Segments to ask for on the next copy (see `copy_available`).
    window: usize,
    /// Whether the last window came back whole.
    window_full: bool,
}

/// Runs the replay daemon until `shutdown` is set.
pub fn run(cfg: &ReplayConfig, shutdown: &AtomicBool) -> Result<()> {
    let mut d = Daemon::start(cfg)?;
    while !shutdown.load(Ordering::Relaxed) {
        let worked = d.turn()?;
        d.publish(false)?;
        if !worked {
            std::thread::sleep(d.backoff);
        }
    }
    d.publish(true)?;
    tracing::info!(node = %cfg.node, "replay daemon stopped");
    Ok(())
}

/// Copies, inspects and replays everything the source share holds now, for
/// at most `budget`: the last step of a failover. Returns the copy's state.
pub fn drain(cfg: &ReplayConfig, budget: Duration) -> Result<CopyState> {
    let deadline = Instant::now() + budget;
    let mut d = Daemon::start(cfg)?;
    d.listed_at = None;
    while Instant::now() < deadline {
        if !d.turn()? {
            break;
        }
    }
    d.publish(true)?;
    Ok(d.state.clone())
}

impl<'a> Daemon<'a> {
    fn start(cfg: &'a ReplayConfig) -> Result<Daemon<'a>> {
        let paths = CopyPaths::new(&cfg.data_dir);
        let replayer = Replayer::open(&paths.database)?;
        let mut state = CopyState::load(&paths)?.unwrap_or_default();
        state.source = cfg.source_node.clone();
        state.database_id = replayer.database_id().to_string();
        state.initializing = true;
        // The daemon holds the data directory's lock: no seed can be running.
        state.seeding = false;
        state.disconnected = false;
        state.error = None;
        state.replayed_lsn = replayer.lsn()?;
        std::fs::create_dir_all(&paths.logs)
            .map_err(|e| shipper::Error::io("create", &paths.logs, e))?;
        // Copies a crash interrupted (`.part`) are of no use: they go.
        let entries = std::fs::read_dir(&paths.logs)
            .map_err(|e| shipper::Error::io("list", &paths.logs, e))?;
        for entry in entries.flatten() {
            if entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.ends_with(shipper::share::TEMP_SUFFIX))
            {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        // Re-inspect what the log directory holds: segments copied before a
        // crash may not have reached the disk whole. The first that fails is
        // deleted with everything after it; they are copied again.
        let mut prev: Option<Inspected> = None;
        let mut next = None;
        let db = replayer.database_id();
        let mut last_good = None;
        let mut bad = false;
        for (g, path) in shipper::log::list_sealed(&paths.logs)? {
            if !bad {
                match inspector::inspect(&path, g, db, prev.as_ref()) {
                    Ok(ins) => {
                        prev = Some(ins);
                        next = Some(g.next());
                        last_good = Some(g);
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(generation = %g, error = %e, "a copied segment is damaged; copying it again");
                        bad = true;
                    }
                }
            }
            std::fs::remove_file(&path)
                .map_err(|e| shipper::Error::io("delete damaged segment", &path, e))?;
        }
        if bad
            || state
                .last_inspected
                .is_some_and(|m| Some(m.generation) != last_good)
        {
            state.last_inspected = last_good.and_then(mark);
        }
        let mut d = Daemon {
            cfg,
            saved: CopyState::default(),
            saved_at: Instant::now(),
            paths,
            state,
            replayer,
            prev,
            next,
            attempts: 0,
            retry_at: None,
            listed_at: None,
            source_case: format::NameCase::Lower,
            backoff: cfg.poll,
            window: 1,
            window_full: false,
        };
        tracing::info!(node = %cfg.node, source = %cfg.source_node, share = %cfg.source.display(), lsn = %d.state.replayed_lsn, "replay daemon started");
        d.publish(true)?;
        Ok(d)
    }
}

impl Daemon<'_> {
    /// One turn of the loop; true when something was done (no pause needed).
    fn turn(&mut self) -> Result<bool> {
        if self.paths.retry.exists() {
            let _ = std::fs::remove_file(&self.paths.retry);
            if self.state.failed.take().is_some() {
                tracing::info!("retrying a failed copy at the operator's request");
            }
            self.attempts = 0;
        }
        if state::suspended(&self.paths).is_some() || self.state.failed.is_some() {
            self.backoff = self.cfg.poll;
            return Ok(false);
        }
        // Copy what the share has; whatever was copied before a fault is
        // still replayed below.
        let mut copy_fault = None;
        let copied = match self.copy_available() {
            Ok(c) => {
                if self.state.disconnected {
                    tracing::info!(share = %self.cfg.source.display(), "share reachable again");
                }
                self.state.disconnected = false;
                c
            }
            Err((_, e)) if permanent(&e) => return self.fail(e),
            Err((c, e)) => {
                copy_fault = Some(e);
                c
            }
        };
        let cutoff = (!self.cfg.replay_lag.is_zero())
            .then(|| now_us().saturating_sub(self.cfg.replay_lag.as_micros() as u64));
        let replayed = match self.replayer.replay_sealed_before(&self.paths.logs, cutoff) {
            Ok(p) => {
                if let Some(g) = p.replayed
                    && self.state.last_replayed.map(|m| m.generation) != Some(g)
                {
                    self.state.last_replayed = mark(g);
                }
                if p.records > 0 {
                    self.state.replayed_lsn = p.lsn;
                    self.state.replayed_hash = p.hash.map(|h| h.to_string());
                    tracing::debug!(records = p.records, lsn = %p.lsn, "replayed");
                }
                if copy_fault.is_none() {
                    self.state.error = None;
                }
                p.records > 0
            }
            Err(e) if permanent_core(&e) => return self.fail(e.into()),
            Err(e) => {
                if self.state.error.is_none() {
                    tracing::warn!(error = %e, "replay paused; it resumes by itself when the cause is gone");
                }
                self.state.error = Some(format!("replay paused: {e}"));
                self.back_off();
                return Ok(false);
            }
        };
        if let Some(e) = copy_fault {
            // The share, or our own disk?
            if self.cfg.source.reachable() {
                if self.state.error.is_none() {
                    tracing::warn!(error = %e, "copying paused; it resumes by itself when the cause is gone");
                }
                self.state.disconnected = false;
                self.state.error = Some(format!("copy paused: {e}"));
            } else {
                if !self.state.disconnected {
                    tracing::warn!(share = %self.cfg.source.display(), error = %e, "cannot reach the source share; retrying");
                }
                self.state.disconnected = true;
                self.state.error = Some(e.to_string());
            }
            self.back_off();
            return Ok(replayed);
        }
        self.backoff = self.cfg.poll;
        if !copied && !replayed && self.state.last_inspected.is_some() {
            self.state.initializing = false;
        }
        if let Err(e) = self.trim() {
            tracing::warn!(error = %e, "cannot delete replayed segments; retrying");
        }
        Ok(copied || replayed)
    }

    fn back_off(&mut self) {
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    fn fail(&mut self, e: Error) -> Result<bool> {
        tracing::error!(error = %e, "copy failed; fix the cause, then `logship resume` (or reseed)");
        self.state.failed = Some(e.to_string());
        Ok(false)
    }

    /// Copies and inspects what the share has, up to a batch. The copies
    /// are not fsynced: what must survive a crash is the copy's database
    /// (committed with synchronous=FULL before a generation is reported
    /// replayed); a segment damaged by a crash is found by the re-inspection
    /// at start and copied again, and the active keeps every segment until
    /// the copy reports it replayed.
    ///
    /// A copy that keeps finding the next generations asks for several at
    /// once (a window that doubles up to `MAX_WINDOW` once two windows in a
    /// row came back whole, and falls back to one when a segment was
    /// missing), copied and inspected on `LANES` connections in parallel; a
    /// copy that is current asks for one at a time, as before.
    fn copy_available(&mut self) -> std::result::Result<bool, (bool, Error)> {
        let mut any = false;
        let mut budget = COPY_BATCH;
        while budget > 0 {
            match self.copy_window(budget) {
                Ok((n, true)) => {
                    any |= n > 0;
                    budget = budget.saturating_sub(n.max(1));
                }
                Ok((n, false)) => return Ok(any || n > 0),
                Err((n, e)) => return Err((any || n > 0, e)),
            }
        }
        Ok(any)
    }

    /// Copies and inspects the next generations (a window) if the share has
    /// them. Returns how many were accepted and whether all asked for were.
    fn copy_window(&mut self, budget: usize) -> std::result::Result<(usize, bool), (usize, Error)> {
        if self.retry_at.is_some_and(|t| Instant::now() < t) {
            return Ok((0, false));
        }
        let db = self.replayer.database_id();
        let next = match self.next {
            Some(g) => g,
            None => match self
                .replayer
                .lsn()
                .and_then(|lsn| copier::start_generation(&self.cfg.source, lsn))
            {
                Ok(Some(g)) => {
                    self.next = Some(g);
                    g
                }
                Ok(None) => return Ok((0, false)),
                Err(e) => return Err((0, e.into())),
            },
        };
        let want = self.window.min(budget).max(1);
        let lanes = if want > 1 { LANES } else { 1 };
        let (cfg, logs) = (self.cfg, self.paths.logs.clone());
        let mut accepted = 0;
        let mut outcome = Ok(true);
        let case = self.source_case;
        copier::copy_window(
            &cfg.source,
            &logs,
            next,
            want,
            db,
            lanes,
            case,
            &mut |g, f| {
                if !matches!(outcome, Ok(true)) {
                    // Past the first refusal: drop what was copied ahead.
                    if let Ok(Some(f)) = f {
                        let _ = std::fs::remove_file(&f.path);
                    }
                    return false;
                }
                outcome = self.accept(g, g == next, f);
                accepted += usize::from(matches!(outcome, Ok(true)));
                matches!(outcome, Ok(true))
            },
        );
        let all = accepted == want;
        // A copy that is current takes one segment a turn, then finds the
        // next missing: it stays at one (no lanes). Two full windows in a
        // row mean it is behind: double.
        self.window = match (all, self.window_full) {
            (true, true) => (want * 2).min(MAX_WINDOW),
            _ => 1.max(want * usize::from(all)),
        };
        self.window_full = all;
        match outcome {
            Ok(_) => Ok((accepted, all)),
            Err(e) => Err((accepted, e)),
        }
    }

    /// Takes in generation `g` as the copier brought it (or did not):
    /// checks it follows the previous one and belongs to a current epoch,
    /// then moves it to its generation name. `Ok(false)` when the share does
    /// not hold it yet, or when it failed inspection and will be copied
    /// again.
    fn accept(
        &mut self,
        g: Generation,
        first: bool,
        fetched: shipper::Result<Option<copier::Fetched>>,
    ) -> Result<bool> {
        let Some(fetched) = fetched? else {
            // Only a fresh miss can tell a gap: a later job's answer may be
            // older than the segments sealed since (the next window asks
            // again, from this generation).
            if first {
                self.check_for_gap(g)?;
            }
            return Ok(false);
        };
        let path = fetched.path;
        self.state.last_copied = mark(g);
        if self.state.last_generated.is_none_or(|m| m.generation < g) {
            self.state.last_generated = mark(g);
        }
        let inspected = fetched
            .inspected
            .and_then(|ins| inspector::follows(&path, &ins, self.prev.as_ref()).map(|()| ins))
            .map_err(Error::Core)
            .and_then(|ins| {
                let starts = self.cfg.epochs.lock().expect("epochs lock").clone();
                match check_epoch(&starts, g, ins.header.epoch) {
                    Ok(()) => Ok(ins),
                    Err(newer) => Err(Error::StaleEpoch {
                        generation: g,
                        epoch: ins.header.epoch,
                        newer: newer.epoch,
                        newer_start: newer.start_generation,
                    }),
                }
            });
        match inspected {
            Err(e @ Error::StaleEpoch { .. }) => {
                let _ = std::fs::remove_file(&path);
                Err(e)
            }
            Ok(ins) => {
                let dest = self.paths.logs.join(format::segment_file_name(g));
                // Not fsynced (see `copy_available`).
                std::fs::rename(&path, &dest)
                    .map_err(|e| shipper::Error::io("move inspected segment", &path, e))?;
                self.state.last_inspected = mark(g);
                self.prev = Some(ins);
                self.next = Some(g.next());
                self.attempts = 0;
                self.state.inspection_failures = 0;
                self.retry_at = None;
                Ok(true)
            }
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                self.attempts += 1;
                self.state.inspection_failures = self.attempts;
                self.retry_at = Some(Instant::now() + RETRY_DELAY * self.attempts);
                if self.attempts >= INSPECTION_TRIES {
                    tracing::error!(generation = %g, tries = self.attempts, error = %e, "segment failed inspection");
                    return Err(e);
                }
                tracing::warn!(generation = %g, attempt = self.attempts, error = %e, "segment failed inspection; copying it again");
                Ok(false)
            }
        }
    }

    /// The share lacks `next`: fine if nothing newer exists (it will come),
    /// a gap if a newer generation does.
    fn check_for_gap(&mut self, next: Generation) -> Result<()> {
        if self.listed_at.is_some_and(|t| t.elapsed() < LIST_EVERY) {
            return Ok(());
        }
        self.listed_at = Some(Instant::now());
        let listed = copier::sealed_segments(&self.cfg.source)?;
        // The spelling the source writes now: that of `next`, else of its
        // newest segment (an active upgraded from upper-case names).
        if let Some((_, case)) = listed.iter().find(|(g, _)| *g == next).or(listed.last())
            && *case != self.source_case
        {
            tracing::info!(share = %self.cfg.source.display(), spelling = ?case, "the source spells segment names another way: following it");
            self.source_case = *case;
        }
        let gens: Vec<Generation> = listed.iter().map(|(g, _)| *g).collect();
        if gens.contains(&next) {
            // Sealed since it was asked for: no gap, the next turn takes it.
            return Ok(());
        }
        if let Some(newest) = gens.last() {
            if self
                .state
                .last_generated
                .is_none_or(|m| m.generation < *newest)
            {
                self.state.last_generated = mark(*newest);
            }
            if *newest > next {
                // A newer generation exists but not `next`. If the copy does
                // not need `next` (its records are all in the copy: truncated
                // after we replayed it, but our file of it was lost), start
                // again where the copy's LSN says. Only records the copy
                // lacks make it a gap.
                let lsn = self.replayer.lsn()?;
                // A share that no longer reaches back to the copy's LSN is
                // this same gap: name the generation that is missing.
                let start = match copier::start_generation(&self.cfg.source, lsn) {
                    Err(shipper::Error::MissingLog { .. }) => None,
                    r => r?,
                };
                match start {
                    Some(g) if g > next => {
                        tracing::info!(missing = %next, from = %g, lsn = %lsn, "the copy does not need the missing generation; continuing from the one that holds its next record");
                        self.next = Some(g);
                        self.prev = None;
                        return Ok(());
                    }
                    _ => {
                        return Err(shipper::Error::Corrupt {
                            path: PathBuf::from(self.cfg.source.display())
                                .join(format::segment_file_name(next)),
                            generation: next,
                            offset: 0,
                            reason: format::Reason::GenerationGap {
                                prev: Generation(next.0 - 1),
                                found: gens.iter().copied().find(|g| *g > next).unwrap_or(*newest),
                            },
                        }
                        .into());
                    }
                }
            }
        }
        Ok(())
    }

    /// Deletes replayed segments beyond the few kept for inspection and failover.
    fn trim(&mut self) -> Result<()> {
        let Some(replayed) = self.state.last_replayed else {
            return Ok(());
        };
        for (g, path) in shipper::log::list_sealed(&self.paths.logs)? {
            if g.0 + KEEP_REPLAYED <= replayed.generation.0 {
                std::fs::remove_file(&path)
                    .map_err(|e| shipper::Error::io("delete replayed segment", &path, e))?;
            }
        }
        Ok(())
    }

    /// Saves the state when it changed (or to show liveness), and publishes
    /// the status on the node's own share.
    fn publish(&mut self, force: bool) -> Result<()> {
        let mut comparable = self.state.clone();
        comparable.updated_us = self.saved.updated_us;
        if !force && comparable == self.saved && self.saved_at.elapsed() < REFRESH {
            return Ok(());
        }
        self.state.updated_us = now_us();
        if let Err(e) = self.state.save(&self.paths) {
            // A full disk must not stop the daemon: keep going, say so.
            tracing::warn!(error = %e, "cannot save the copy state; retrying");
            self.state
                .error
                .get_or_insert_with(|| format!("cannot save the copy state: {e}"));
            return Ok(());
        }
        self.saved = self.state.clone();
        self.saved_at = Instant::now();
        if let Some(share) = &self.cfg.own_share {
            let st = status::status(&self.cfg.node, &self.paths, &self.state, now_us());
            let json = serde_json::to_vec_pretty(&st).expect("status serialises");
            if let Err(e) = share.write_atomic(PUBLISHED_STATUS, &json) {
                tracing::warn!(share = %share.display(), error = %e, "cannot publish the copy status");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_segment_of_an_older_epoch_past_a_newer_epochs_start_is_refused() {
        let starts = [
            EpochStart {
                epoch: Epoch(2),
                start_generation: Generation(1),
            },
            EpochStart {
                epoch: Epoch(3),
                start_generation: Generation(10),
            },
        ];
        assert!(check_epoch(&starts, Generation(9), Epoch(2)).is_ok());
        assert!(check_epoch(&starts, Generation(10), Epoch(3)).is_ok());
        assert_eq!(
            check_epoch(&starts, Generation(10), Epoch(2)),
            Err(starts[1])
        );
        assert!(check_epoch(&starts, Generation(12), Epoch(1)).is_err());
        assert!(check_epoch(&[], Generation(12), Epoch(1)).is_ok());
    }
}
