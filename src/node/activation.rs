//! Activation: claiming an epoch and opening the store (`activate_store`),
//! and the failover that makes a passive copy the store (the last copy of
//! the old active's share, the mount dial, the log prepared at the copy's
//! position, the redelivery the relay is asked for).

use super::*;
use logship::config::CommitMode;

pub(super) fn active_generation(store: &Store) -> u64 {
    let st = store.state();
    let current = st.generation.0;
    let logs = &store.paths().logs;
    let holds_records = shipper::log::read_header(&logs.join(shipper::format::CURRENT_FILE_NAME))
        .map(|h| h.hash_lsn < st.lsn)
        .unwrap_or(true);
    if holds_records {
        current
    } else {
        current.saturating_sub(1)
    }
}

/// How far before the last replayed record's time a redelivery starts
/// (the relay's and the old active's clocks may differ).
pub(super) const REDELIVERY_MARGIN: Duration = Duration::from_secs(300);

/// Where a node keeps the redelivery its last lossy activation asked for.
pub(super) const REDELIVERY_FILE: &str = "redelivery.json";

/// The most `redelivery.json` may hold.
const MAX_REDELIVERY_FILE: usize = 4096;

/// How long after a lossy activation a restart of the same node asks for
/// the redelivery again.
pub(super) const REDELIVERY_REPEAT: Duration = Duration::from_secs(3600);

/// The redelivery time a lossy activation of this node asked for, if it
/// was less than `REDELIVERY_REPEAT` ago.
pub(super) fn recent_redelivery(data_dir: &Path) -> Option<u64> {
    let path = data_dir.join(REDELIVERY_FILE);
    let bytes = shipper::state_file::read_file(&path, MAX_REDELIVERY_FILE)
        .ok()
        .flatten()?;
    match parse_redelivery(&bytes, witness::witness::now_us()) {
        Ok(since) => since,
        Err(why) => {
            tracing::warn!(file = %path.display(), reason = %why, "the redelivery request is not read");
            None
        }
    }
}

/// The redelivery time `redelivery.json` holds, if it was written less
/// than `REDELIVERY_REPEAT` before `now_us`.
pub fn parse_redelivery(
    bytes: &[u8],
    now_us: u64,
) -> Result<Option<u64>, shipper::state_file::StateFileError> {
    #[derive(serde::Deserialize)]
    struct Redelivery {
        at_us: u64,
        since_us: u64,
    }
    let r: Redelivery = shipper::state_file::parse(bytes, MAX_REDELIVERY_FILE)?;
    let age = now_us.saturating_sub(r.at_us);
    Ok((age < REDELIVERY_REPEAT.as_micros() as u64).then_some(r.since_us))
}

/// The commit time (µs) of the record at `lsn`, if the log still holds it.
pub(super) fn last_record_time(logs: &Path, lsn: Lsn) -> Option<u64> {
    if lsn.0 == 0 {
        return None;
    }
    let mut time = None;
    shipper::log::for_each_record(logs, None, Lsn(lsn.0 - 1), |l, rec| {
        if l == lsn {
            time = Some(rec.time_us);
        }
        Ok(())
    })
    .ok()?;
    time
}

/// Where the store will stand once open (its database's LSN, with what its
/// log holds past it), the log's epoch, and its current (or next) generation.
pub(super) fn log_position(paths: &shipper::store::StorePaths) -> Result<(Lsn, Epoch, Generation)> {
    let current = paths.logs.join(shipper::format::CURRENT_FILE_NAME);
    let conn = shipper::store::open_read_only(&paths.database)?;
    let (db_lsn, _) = shipper::apply::read_guard(&conn)?;
    drop(conn);
    // Where the store will stand once open: its recovery redoes what the
    // log holds past the database (a crash between the log and the
    // commit, or the old active's open segment after a failover).
    let mut lsn = db_lsn;
    if paths.logs.join(shipper::format::CURRENT_FILE_NAME).exists()
        || !shipper::log::list_sealed(&paths.logs)?.is_empty()
    {
        shipper::log::for_each_record(&paths.logs, None, db_lsn, |l, _| {
            lsn = lsn.max(l);
            Ok(())
        })?;
    }
    if let Ok(h) = shipper::log::read_header(&current) {
        let next = if shipper::log::current_has_frames(&paths.logs)? {
            h.generation.next()
        } else {
            h.generation
        };
        return Ok((lsn, h.epoch, next));
    }
    match shipper::log::list_sealed(&paths.logs)?.last() {
        Some((g, p)) => Ok((lsn, shipper::log::read_header(p)?.epoch, g.next())),
        None => Ok((lsn, Epoch(0), Generation(1))),
    }
}

/// Makes sure the copy's log directory can carry on as a store's log. A
/// log that reaches the database's LSN carries on (the store redoes what
/// it holds past it). A log that ends before it, or none, means the
/// database came from a seed taken past the copy's last sealed record (in a
/// segment the old active never sealed): its segments hold nothing the
/// database lacks, so they go, as truncation would take them, and a log
/// starts at the database's LSN.
pub(super) fn prepare_log(
    paths: &CopyPaths,
    state: &CopyState,
    next_generation: Generation,
    epoch: Epoch,
) -> Result<()> {
    std::fs::create_dir_all(&paths.logs)
        .with_context(|| format!("create {}", paths.logs.display()))?;
    for entry in
        std::fs::read_dir(&paths.logs).with_context(|| format!("list {}", paths.logs.display()))?
    {
        let p = entry?.path();
        if p.extension().is_some_and(|e| e == "part") {
            let _ = std::fs::remove_file(&p);
        }
    }
    let conn = shipper::store::open_read_only(&paths.database)?;
    let (lsn, db) = shipper::apply::read_guard(&conn)?;
    let schema = shipper::hash::schema_hash(&conn)?;
    drop(conn);
    let current = paths.logs.join(shipper::format::CURRENT_FILE_NAME);
    let sealed = shipper::log::list_sealed(&paths.logs)?;
    let current_has_records = current.exists() && shipper::log::current_has_frames(&paths.logs)?;
    let log_end = match sealed.last() {
        Some((_, p)) => Some(shipper::log::read_trailer(p)?.hash_lsn),
        None => None,
    };
    let plan = witness::core::log_plan(current_has_records, log_end.map(|l| l.0), lsn.0);
    if plan == witness::core::LogPlan::CarryOn {
        return Ok(());
    }
    let hash = state
        .replayed_hash
        .as_deref()
        .and_then(|h| u128::from_str_radix(h, 16).ok())
        .map(shipper::ContentHash)
        .context("the copy's content hash is unknown: reseed it before activating")?;
    if let Some(end) = log_end {
        tracing::info!(
            log_end = end.0,
            database = lsn.0,
            segments = sealed.len(),
            "the copy's log ends before its seeded database: its segments are dropped as truncation would drop them, and the log starts at the database's LSN"
        );
    }
    for (_, p) in &sealed {
        std::fs::remove_file(p).with_context(|| format!("remove {}", p.display()))?;
    }
    match std::fs::remove_file(&current) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("remove {}", current.display())),
    }
    shipper::log::LogWriter::create_at(&paths.logs, db, epoch, next_generation, lsn, hash, schema)?;
    Ok(())
}

impl Daemon<'_> {
    /// The block-mode feed of a store opened in `epoch`. Under synchronous
    /// commit it starts alone, recorded on the witness first (the copy may
    /// be anywhere), and is synchronous once the copy has caught up; going
    /// alone again is recorded the same way before it happens.
    fn feed_for(&self, epoch: Epoch) -> Result<shipper::block::Feed> {
        if self.cfg.cluster.commit != CommitMode::Remote {
            return Ok(shipper::block::Feed::new());
        }
        let spec = self.cfg.cluster.witness.as_deref().unwrap_or_default();
        let witness = Mutex::new(Witness::new(witness_share(self.cfg, spec)?));
        let node = self.name.clone();
        let record = move |w: &Witness, from: Lsn, why: &str| {
            w.write_alone(&witness::witness::Alone {
                version: witness::witness::ALONE_VERSION,
                epoch,
                node: node.clone(),
                from_lsn: from,
                reason: why.to_string(),
                at_us: witness::witness::now_us(),
            })
            .map_err(|e| e.to_string())
        };
        let why = "the store opens before its copy has confirmed anything";
        record(self.claims.witness()?, Lsn(0), why).map_err(|e| {
            anyhow::anyhow!("record on the witness that epoch {epoch} starts without its copy: {e}")
        })?;
        Ok(shipper::block::Feed::synchronous(
            shipper::block::Synchronous {
                timeout: self.cfg.cluster.sync_timeout,
                go_alone: Box::new(move |from, why| {
                    record(&witness.lock().expect("witness lock"), from, why)
                }),
            },
            Some((Lsn(0), why.to_string())),
        ))
    }

    /// Claims the next epoch and opens the store in it: the epoch, or why
    /// another node's claim came first.
    pub(super) fn activate_store(
        &mut self,
        reason: &str,
        next_generation: Option<Generation>,
    ) -> Result<Result<Epoch, String>> {
        // The history, read again while holding the vote: no one else can
        // claim meanwhile.
        let history = self.claims.history()?;
        let by_itself = !matches!(reason, "failover" | "forced" | "activate" | "move");
        if let Some(l) = history.last()
            && !witness::core::activation_stands(by_itself, Some(&l.node), &self.name)
        {
            return Ok(Err(format!(
                "node {} began epoch {} meanwhile",
                l.node, l.epoch
            )));
        }
        let paths = shipper::store::StorePaths::new(&self.node.data_dir);
        let (lsn, log_epoch, generation) = log_position(&paths)?;
        let epoch = witness::core::next_epoch(
            history.last().map(|l| l.epoch),
            log_epoch,
            self.m.known_epoch,
        );
        let rec = EpochRecord {
            version: Default::default(),
            epoch,
            node: self.name.clone(),
            start_lsn: lsn,
            start_generation: next_generation.unwrap_or(generation),
            reason: reason.to_string(),
            started_us: witness::witness::now_us(),
        };
        if !self.claims.claim(&rec)? {
            return Ok(Err(format!(
                "epoch {epoch} was claimed by another node first"
            )));
        }
        // Past two nodes: the active role is the `leader` key, under this
        // node's lease; the store takes writes only while that lease holds.
        if let Some(why) = self.take_leader(epoch)? {
            return Ok(Err(why));
        }
        let fence = Arc::new(Fence::new());
        if let Some(until) = self.fence_until() {
            fence.extend(until);
        }
        let feed = Arc::new(self.feed_for(epoch)?);
        let opts = StoreOptions {
            seal_after: self.cfg.cluster.seal_after,
            fence: Some(fence.clone()),
            epoch: Some(epoch),
            feed: Some(feed.clone()),
            ..Default::default()
        };
        let store = Arc::new(Store::open(&self.node.data_dir, opts).with_context(|| {
            format!(
                "open the store of node {} in {}",
                self.name,
                self.node.data_dir.display()
            )
        })?);
        let shutdown = Arc::new(AtomicBool::new(false));
        let ship_cfg = shipper::ship::ShipConfig {
            node: self.name.clone(),
            share: share_of(&self.name, self.node, self.cfg)?,
            // Truncation waits for every copy of the cluster.
            peers: self
                .cfg
                .nodes
                .iter()
                .filter(|(n, _)| **n != self.name)
                .map(|(n, nd)| Ok((n.clone(), share_of(n, nd, self.cfg)?)))
                .collect::<Result<_>>()?,
            retention: self.cfg.cluster.retention,
        };
        let ship = {
            let (store, shutdown) = (store.clone(), shutdown.clone());
            std::thread::Builder::new()
                .name("logship-ship".into())
                .spawn(move || {
                    if let Err(e) = shipper::ship::run(&store, &ship_cfg, &shutdown) {
                        tracing::error!(error = %e, "ship duties stopped");
                    }
                })?
        };
        if self.node.lmtp.is_some() {
            dumpster::mailbox::ensure_schema(&store).context("create the mailbox tables")?;
            if !matches!(reason, "failover" | "forced" | "activate") {
                // Nothing was lost now; but a lossy activation of this node
                // shortly before may not have reached the relay yet (it
                // hears of it when it connects): ask again. A redelivery
                // asked twice only brings duplicates, which are dropped.
                *self.mail.redeliver_since.lock().expect("since lock") =
                    recent_redelivery(&self.node.data_dir);
            }
            self.mail.epoch.store(epoch.0, Ordering::SeqCst);
            *self.mail.store.lock().expect("mail lock") = Some(store.clone());
        }
        *self.serving.lock().expect("serving lock") = Some(store.clone());
        // The copy status this node published while passive no longer
        // describes anything.
        if let Ok(share) = share_of(&self.name, self.node, self.cfg) {
            let _ = share.remove(replayer::daemon::PUBLISHED_STATUS);
        }
        tracing::info!(node = %self.name, epoch = %epoch, lsn = %lsn, reason, "active");
        crate::events::append(
            &self.node.data_dir,
            &self.name,
            "active",
            serde_json::json!({"epoch": epoch.0, "lsn": lsn.0, "reason": reason}),
        );
        *self.feeding.lock().expect("feeding lock") = Some((feed, store.state().database_id));
        self.duty = Duty::Active(ActiveDuty {
            store,
            fence,
            epoch,
            shutdown,
            ship,
        });
        Ok(Ok(epoch))
    }

    /// Becomes active from the passive copy: the last copy and replay of
    /// what the old active's share holds, the mount dial, a new epoch, the
    /// store. When it stays passive, why.
    pub(super) fn failover(&mut self, reason: &str, forced: bool) -> Result<super::Takeover> {
        use super::Takeover;
        let started = Instant::now();
        self.stop_duty();
        // Everything it can reach, lagged copy or not.
        let config = self.replay_config()?;
        let state = {
            let _lock = shipper::store::lock_data_dir(&self.node.data_dir)?;
            replayer::daemon::drain(&config, witness::core::DRAIN_BUDGET)
                .context("copy and replay what the old active's share holds")?
        };
        let paths = self.copy_paths();
        // The last logs: what the old active's open segment holds past the
        // sealed ones (it has been fenced by now: see `replayer::tail`).
        let (tail, tail_note, last_logs) = if state.failed.is_some() {
            (
                None,
                "not read (the copy is Failed)".to_string(),
                dial::LastLogs::Unread,
            )
        } else {
            self.read_tail(&config, &paths, &state)
        };
        // The sealed segments could not be listed either: the share is gone.
        let last_logs = if state.disconnected {
            dial::LastLogs::Unread
        } else {
            last_logs
        };
        // Under synchronous commit, confirmed: the old active acknowledged
        // nothing this copy had not reported durable, so holding all it
        // received is holding all that was acknowledged.
        let have = tail
            .as_ref()
            .map(|t| t.complete.0)
            .unwrap_or(state.replayed_lsn.0);
        let (last_logs, tail_note, confirmed) = match self.sync_confirmed(have) {
            Ok(note) => (dial::LastLogs::Copied, format!("{tail_note}; {note}"), true),
            Err(Some(why)) => (last_logs, format!("{tail_note}; {why}"), false),
            Err(None) => (last_logs, tail_note, false),
        };
        let replayed = match &tail {
            Some(t) => Position {
                lsn: t.complete,
                generation: t.generation,
            },
            None => Position {
                lsn: state.replayed_lsn,
                generation: state
                    .last_replayed
                    .map(|m| m.generation)
                    .unwrap_or_default(),
            },
        };
        // The old active's last position: its last heartbeat, or what its
        // block-mode stream said last, whichever is further.
        let streamed = self
            .received
            .lock()
            .expect("received lock")
            .active
            .map(|(g, _, lsn)| Position {
                lsn: Lsn(lsn),
                generation: Generation(g),
            });
        let known = match (self.m.active_position, streamed) {
            // Confirmed: whatever else the old active held durable, it
            // never acknowledged.
            _ if confirmed => Some(replayed),
            (Some(h), Some(s)) if s.lsn > h.lsn => Some(s),
            (None, s) => s,
            (h, _) => h,
        };
        let mut decision = dial::decide(self.cfg.cluster.mount_dial, replayed, known, last_logs);
        decision.missing_bytes = if confirmed {
            Some(0)
        } else {
            let r = self.received.lock().expect("received lock").clone();
            r.active.and_then(|_| r.queue_bytes())
        };
        decision.text = format!(
            "{}; in records: {}{}; the old active's open segment: {tail_note}",
            decision.text,
            match decision.missing_records {
                Some(n) if last_logs == dial::LastLogs::Unread => format!("at least {n} missing"),
                Some(n) => format!("{n} missing"),
                None => "unknown".into(),
            },
            match decision.missing_bytes {
                Some(b) => format!(", {b} byte(s) of log by block mode's count"),
                None => String::new(),
            }
        );
        tracing::info!(decision = %decision.text, allowed = decision.allowed, forced, "mount dial");
        self.dial = Some(decision.clone());
        if let Some(f) = &state.failed {
            return Ok(Takeover::Refused(format!("the copy is Failed: {f}")));
        }
        if !decision.allowed && !forced {
            return Ok(Takeover::Refused(format!(
                "not activated: {}; `logship activate --node {} --force` overrides",
                decision.text, self.name
            )));
        }
        // The copy becomes the store: the open segment's prefix is its
        // current segment, which the store's recovery replays.
        if let Some(t) = &tail {
            replayer::tail::install(&paths.logs, t)
                .context("install the old active's open segment")?;
        }
        let next_generation = state
            .last_replayed
            .map(|m| m.generation)
            .max(state.last_generated.map(|m| m.generation))
            .unwrap_or_default()
            .next();
        prepare_log(&paths, &state, next_generation, self.m.known_epoch)?;
        // What the old active committed after this copy's last record is
        // lost: the relay re-delivers what it delivered since that record's
        // time (less a margin for clock differences); unknown: everything.
        let since = last_record_time(&paths.logs, replayed.lsn)
            .map(|t| t.saturating_sub(REDELIVERY_MARGIN.as_micros() as u64))
            .unwrap_or(0);
        *self.mail.redeliver_since.lock().expect("since lock") = Some(since);
        // Kept on disk: if this node restarts before the relay has heard
        // the request, it asks again (see `activate_store`).
        let request = serde_json::json!({
            "version": shipper::FormatVersion::CURRENT,
            "since_us": since,
            "at_us": witness::witness::now_us(),
        });
        if let Err(e) = shipper::share::write_atomic(
            &self.node.data_dir.join(REDELIVERY_FILE),
            request.to_string().as_bytes(),
        ) {
            tracing::warn!(error = %e, "cannot keep the redelivery request on disk");
        }
        let kept = self.node.data_dir.join("copy.previous.json");
        std::fs::rename(&paths.state, &kept)
            .with_context(|| format!("retire {}", paths.state.display()))?;
        for f in [replayer::state::SUSPEND_FILE, replayer::state::RETRY_FILE] {
            let _ = std::fs::remove_file(self.node.data_dir.join(f));
        }
        let epoch = match self.activate_store(reason, None) {
            Ok(Ok(epoch)) => epoch,
            r => {
                // Put the copy back as it was: it stays passive.
                let _ = std::fs::rename(&kept, &paths.state);
                let _ = replayer::tail::remove(&paths.logs);
                return Ok(Takeover::NotActivated(r?.err().unwrap_or_default()));
            }
        };
        let ms = started.elapsed().as_millis() as u64;
        if reason != "move" {
            self.failovers += 1;
        }
        tracing::info!(node = %self.name, ms, "activation complete");
        crate::events::append(
            &self.node.data_dir,
            &self.name,
            if reason == "move" {
                "activated-by-move"
            } else {
                "failover"
            },
            serde_json::json!({"reason": reason, "forced": forced, "epoch": epoch.0, "dial": decision.text, "missing": decision.missing, "open_segment": tail_note, "lsn": replayed.lsn, "ms": ms}),
        );
        Ok(Takeover::Active(epoch))
    }

    /// Whether synchronous commit vouches that this copy, holding records
    /// up to `have`, holds every record the old active acknowledged: a
    /// note saying so, or why not (`None` when commit is not synchronous).
    fn sync_confirmed(&self, have: u64) -> std::result::Result<String, Option<String>> {
        if self.cfg.cluster.commit != CommitMode::Remote {
            return Err(None);
        }
        let acked = self.received.lock().expect("received lock").lsn;
        let latest = match self.claims.witness().and_then(|w| Ok(w.latest()?)) {
            Ok(Some(l)) if l.node == self.peer => l,
            Ok(_) => {
                return Err(Some(
                    "synchronous commit: the newest epoch is not the old active's".into(),
                ));
            }
            Err(e) => {
                return Err(Some(format!(
                    "synchronous commit unconfirmed: the witness cannot be read: {e}"
                )));
            }
        };
        match self
            .claims
            .witness()
            .and_then(|w| Ok(w.alone(latest.epoch)?))
        {
            Ok(None) if have >= acked => Ok(format!(
                "commit was synchronous and confirmed (epoch {} never went alone; this copy confirmed LSN {acked} and holds LSN {have})",
                latest.epoch
            )),
            Ok(None) => Err(Some(format!(
                "synchronous commit: this copy confirmed LSN {acked} but holds only LSN {have}"
            ))),
            Ok(Some(a)) => Err(Some(format!(
                "synchronous commit: epoch {} went on alone from LSN {} ({})",
                a.epoch, a.from_lsn, a.reason
            ))),
            Err(e) => Err(Some(format!("synchronous commit unconfirmed: {e}"))),
        }
    }

    /// Reads the old active's open segment for the last logs; what was
    /// found, and a note for the dial's decision and the event log.
    fn read_tail(
        &self,
        config: &replayer::ReplayConfig,
        paths: &CopyPaths,
        state: &CopyState,
    ) -> (Option<replayer::tail::OpenTail>, String, dial::LastLogs) {
        use dial::LastLogs::{Copied, Unread};
        let Some(db) = shipper::DatabaseId::parse(&state.database_id) else {
            return (
                None,
                "not read (the copy's database id is unknown)".into(),
                Unread,
            );
        };
        let read = match replayer::tail::read(&config.source, &paths.logs, db, state.replayed_lsn) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the old active's open segment");
                replayer::tail::TailRead::Absent(format!("could not be read: {e}"))
            }
        };
        let last_logs = if read.complete() { Copied } else { Unread };
        // The share could not give the open segment whole: what block mode
        // received stands in (it may lack what the old active acknowledged
        // after its last message, so the dial still counts it unread).
        if !read.complete() {
            let received = paths.data_dir.join(replayer::block::RECEIVED_DIR);
            match replayer::tail::read_received(&received, &paths.logs, db, state.replayed_lsn) {
                Ok(replayer::tail::TailRead::Copied(t)) => {
                    let why = match &read {
                        replayer::tail::TailRead::Absent(w)
                        | replayer::tail::TailRead::Unusable(w) => w.clone(),
                        _ => String::new(),
                    };
                    let note = format!(
                        "received by block mode to LSN {} ({} record(s) of generation {}); the share's: {why}",
                        t.complete, t.records, t.generation
                    );
                    return (Some(t), note, Unread);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot read what block mode received"),
            }
        }
        match read {
            replayer::tail::TailRead::Copied(t) => {
                let note = format!(
                    "copied to LSN {} ({} record(s) of generation {})",
                    t.complete, t.records, t.generation
                );
                (Some(t), note, last_logs)
            }
            replayer::tail::TailRead::Nothing(why) => {
                (None, format!("nothing added: {why}"), last_logs)
            }
            replayer::tail::TailRead::Absent(why) => (None, format!("not found: {why}"), last_logs),
            replayer::tail::TailRead::Unusable(why) => {
                tracing::warn!(reason = %why, "the old active's open segment cannot be taken");
                (None, format!("not taken: {why}"), last_logs)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use shipper::state_file::StateFileError;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        /// Whatever `redelivery.json` holds, it gives a time, nothing, or a
        /// reason; never a panic.
        #[test]
        fn any_bytes_in_redelivery_json_are_read_or_refused(bytes in proptest::collection::vec(any::<u8>(), 0..512), now in any::<u64>()) {
            let _ = parse_redelivery(&bytes, now);
        }

        /// A request is repeated for `REDELIVERY_REPEAT` after it was made, and not after.
        #[test]
        fn a_redelivery_request_is_repeated_for_an_hour(since in any::<u64>(), at in 0u64..u64::MAX / 2, age in 0u64..2 * 3_600_000_000) {
            let b = serde_json::json!({"version": 1, "since_us": since, "at_us": at}).to_string();
            let got = parse_redelivery(b.as_bytes(), at + age).unwrap();
            prop_assert_eq!(got, (age < REDELIVERY_REPEAT.as_micros() as u64).then_some(since));
        }
    }

    #[test]
    fn a_redelivery_request_of_a_newer_format_is_refused() {
        let b = br#"{"version": 2, "since_us": 1, "at_us": 1}"#;
        assert!(matches!(
            parse_redelivery(b, 2),
            Err(StateFileError::Newer { found: 2, .. })
        ));
        // Written before the field existed: version 1.
        assert_eq!(
            parse_redelivery(br#"{"since_us": 5, "at_us": 1}"#, 2),
            Ok(Some(5))
        );
    }
}
