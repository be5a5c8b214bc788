//! The writer thread: group commit (one capture, one record, one
//! fdatasync and one SQLite COMMIT for a batch of callers), sealing, and
//! the replier that answers callers (after the copy confirms, under
//! synchronous commit).

use super::*;

/// How long the writer polls for the next request before it sleeps: a lone
/// caller sends its next transaction within microseconds of its answer,
/// and a sleeping thread's wake-up costs tens of them on a virtual machine.
pub(super) const WRITER_SPIN: Duration = Duration::from_micros(200);

/// The next message: polled for `WRITER_SPIN`, then waited for until
/// `deadline` (for ever without one).
pub(super) fn spin_then_recv(
    rx: &Receiver<Msg>,
    deadline: Option<Instant>,
) -> std::result::Result<Msg, RecvTimeoutError> {
    let until = Instant::now() + WRITER_SPIN;
    while Instant::now() < until.min(deadline.unwrap_or(until)) {
        match rx.try_recv() {
            Ok(m) => return Ok(m),
            Err(TryRecvError::Empty) => std::hint::spin_loop(),
            Err(TryRecvError::Disconnected) => return Err(RecvTimeoutError::Disconnected),
        }
    }
    match deadline {
        Some(d) => rx.recv_timeout(d.saturating_duration_since(Instant::now())),
        None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
    }
}

pub(super) struct Writer {
    /// Declared before `conn`: it is dropped first (it holds statements
    /// and the hook of the connection).
    pub(super) capture: Capture,
    /// Encodes the guard row's change, which the writer makes itself.
    pub(super) guard: IntUpdate,
    pub(super) conn: Connection,
    pub(super) log: LogWriter,
    pub(super) auth: Arc<AuthState>,
    pub(super) opts: StoreOptions,
    pub(super) shared: Arc<Shared>,
    pub(super) failpoint: FailPoint,
    /// Answers callers of large batches off the writer's path.
    pub(super) replier: Replier,
    /// Last committed LSN and its hashes.
    pub(super) lsn: Lsn,
    pub(super) hash: ContentHash,
    pub(super) schema_hash: SchemaHash,
    /// Set by `freeze`: every later transaction is refused with this reason.
    pub(super) frozen: Option<String>,
    /// Batches still to run with one job each: after a batch too large for
    /// one record, its jobs run again alone (each may fit).
    pub(super) solo: usize,
}

/// A thread that wakes callers, so that a batch of many callers does not
/// pay their wake-ups on the writer thread.
pub(super) struct Replier {
    pub(super) sender: Option<SyncSender<(Answers, Option<Confirm>)>>,
    pub(super) handle: Option<JoinHandle<()>>,
}

/// Answers that wait, under synchronous commit, until a copy holds `lsn`.
pub(super) struct Confirm {
    pub(super) feed: Arc<crate::block::Feed>,
    pub(super) lsn: Lsn,
}

/// Answers callers, once their record is confirmed when that is asked for:
/// a record the store stopped before confirming is answered as stopped.
pub(super) fn finish_all(answers: Answers, confirm: Option<Confirm>) {
    let unconfirmed = confirm.and_then(|c| c.feed.confirm(c.lsn).err());
    for (job, r) in answers {
        match (&unconfirmed, r) {
            (Some(why), Ok((_, true))) => job.finish(Err(Error::Stopped(why.clone()))),
            (_, r) => job.finish(r),
        }
    }
}

impl Replier {
    pub(super) fn start() -> std::io::Result<Replier> {
        let (sender, rx) = sync_channel::<(Answers, Option<Confirm>)>(64);
        let handle = std::thread::Builder::new()
            .name("logship-replier".into())
            .spawn(move || {
                for (batch, confirm) in rx {
                    finish_all(batch, confirm);
                }
            })?;
        Ok(Replier {
            sender: Some(sender),
            handle: Some(handle),
        })
    }

    /// Answers, after `confirm` when given (on the replier's thread, so
    /// that the writer goes on with the next batch meanwhile).
    pub(super) fn answer_confirmed(&self, answers: Answers, confirm: Option<Confirm>) {
        if confirm.is_none() {
            return self.answer(answers);
        }
        if let Some(s) = &self.sender
            && let Err(e) = s.send((answers, confirm))
        {
            let (answers, confirm) = e.0;
            finish_all(answers, confirm);
        }
    }

    pub(super) fn answer(&self, mut answers: Answers) {
        if answers.len() <= 1 {
            // One caller: answering it here is faster than a hand-off.
            for (job, r) in answers.drain(..) {
                job.finish(r);
            }
            return;
        }
        if let Some(s) = &self.sender
            && let Err(e) = s.send((answers, None))
        {
            finish_all(e.0.0, None);
        }
    }
}

impl Drop for Replier {
    fn drop(&mut self) {
        self.sender.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Block-mode senders end with the writer.
        if let Some(f) = &self.opts.feed {
            f.close();
        }
    }
}

impl Writer {
    pub(super) fn run(mut self, rx: Receiver<Msg>) {
        let mut deferred: Option<Msg> = None;
        let mut queue: VecDeque<Job> = VecDeque::new();
        loop {
            if queue.is_empty() {
                let msg = match deferred.take() {
                    Some(m) => m,
                    None => match spin_then_recv(&rx, self.seal_deadline()) {
                        Ok(m) => m,
                        Err(RecvTimeoutError::Timeout) => {
                            if let Err(e) = self.seal_if_due() {
                                return self.stop(e, rx, queue);
                            }
                            continue;
                        }
                        Err(RecvTimeoutError::Disconnected) => return,
                    },
                };
                match msg {
                    Msg::Tx(job) => queue.push_back(job),
                    Msg::Seal(reply) => {
                        let r = self.log.seal();
                        let failed = r.as_ref().err().map(|e| e.to_string());
                        self.publish();
                        let _ = reply.send(r);
                        if let Some(e) = failed {
                            return self.stop(Error::Stopped(e), rx, queue);
                        }
                        continue;
                    }
                    Msg::Check(reply) => {
                        let r = hash::full_scan(&self.conn).map(|scanned| ContentCheck {
                            lsn: self.lsn,
                            logged: self.hash,
                            scanned,
                        });
                        let _ = reply.send(r);
                        continue;
                    }
                    Msg::Freeze(reason, reply) => {
                        let r = self.log.seal().map(|_| self.lsn);
                        let failed = r.as_ref().err().map(|e| e.to_string());
                        self.publish();
                        self.frozen = Some(reason);
                        let _ = reply.send(r);
                        if let Some(e) = failed {
                            return self.stop(Error::Stopped(e), rx, queue);
                        }
                        continue;
                    }
                    Msg::Checkpoint(reply) => {
                        self.internal_mode();
                        let r = self
                            .conn
                            .query_row("PRAGMA wal_checkpoint(FULL)", [], |r| r.get::<_, i64>(0))
                            .map_err(|e| Error::sql("checkpoint", e))
                            .and_then(|busy| {
                                if busy != 0 {
                                    Err(Error::Stopped(
                                        "a reader kept the checkpoint from completing".into(),
                                    ))
                                } else {
                                    Ok(self.lsn)
                                }
                            });
                        let _ = reply.send(r);
                        continue;
                    }
                    Msg::Shutdown => return,
                }
            }
            // Gather what else is waiting, up to a batch.
            while deferred.is_none() && queue.len() < self.opts.max_batch.max(1) {
                match rx.try_recv() {
                    Ok(Msg::Tx(j)) => queue.push_back(j),
                    Ok(other) => deferred = Some(other),
                    Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => break,
                }
            }
            if let Some(reason) = self.fenced() {
                return self.stop(Error::Fenced(reason), rx, queue);
            }
            if let Some(reason) = &self.frozen {
                for job in queue.drain(..) {
                    job.finish(Err(Error::Fenced(reason.clone())));
                }
                continue;
            }
            let take = queue.len().min(self.opts.max_batch.max(1));
            let batch: VecDeque<Job> = queue.drain(..take).collect();
            match self.run_batch(batch) {
                Ok(rest) => {
                    for job in rest.into_iter().rev() {
                        queue.push_front(job);
                    }
                }
                Err(e) => return self.stop(e, rx, queue),
            }
            if let Err(e) = self.seal_if_due() {
                return self.stop(e, rx, queue);
            }
        }
    }

    /// Why writes are no longer allowed, if they are not.
    pub(super) fn fenced(&self) -> Option<String> {
        match &self.opts.fence {
            Some(f) if !f.allows() => Some("the quorum lease ran out".into()),
            _ => None,
        }
    }

    pub(super) fn seal_deadline(&self) -> Option<Instant> {
        self.log.oldest_unsealed().map(|t| t + self.opts.seal_after)
    }

    pub(super) fn seal_if_due(&mut self) -> Result<()> {
        if self.seal_deadline().is_some_and(|d| d <= Instant::now()) {
            self.log.seal()?;
            self.publish();
        }
        Ok(())
    }

    pub(super) fn publish(&self) {
        let mut s = self.shared.state.lock().expect("state lock");
        s.lsn = self.lsn;
        s.hash = self.hash;
        s.schema_hash = self.schema_hash;
        s.generation = self.log.end().generation;
        s.epoch = self.log.end().epoch;
    }

    /// A fatal error: answer everything queued with it and exit. The
    /// SQLite transaction, if any, is rolled back when the connection
    /// closes; what the log holds durably is redone at the next open.
    pub(super) fn stop(self, e: Error, rx: Receiver<Msg>, queue: VecDeque<Job>) {
        let fenced = matches!(e, Error::Fenced(_));
        let reason = e.to_string();
        if fenced {
            tracing::warn!(error = %reason, "store writer stopped");
        } else {
            tracing::error!(error = %reason, "store writer stopped; reopen the store to recover");
        }
        *self.shared.stopped.lock().expect("stopped lock") = Some(reason.clone());
        drop(self);
        let err = || {
            if fenced {
                Error::Fenced(reason.clone())
            } else {
                Error::Stopped(reason.clone())
            }
        };
        for job in queue {
            job.finish(Err(err()));
        }
        while let Ok(m) = rx.try_recv() {
            match m {
                Msg::Tx(job) => job.finish(Err(err())),
                Msg::Seal(r) => {
                    let _ = r.send(Err(err()));
                }
                Msg::Check(r) => {
                    let _ = r.send(Err(err()));
                }
                Msg::Checkpoint(r) => {
                    let _ = r.send(Err(err()));
                }
                Msg::Freeze(_, r) => {
                    let _ = r.send(Err(err()));
                }
                Msg::Shutdown => {}
            }
        }
    }

    pub(super) fn internal_mode(&self) {
        self.auth.mode.store(MODE_INTERNAL, Ordering::SeqCst);
    }

    /// Runs an internal statement (prepared once, cached).
    pub(super) fn internal(&self, sql: &str) -> Result<()> {
        self.auth.mode.store(MODE_INTERNAL, Ordering::SeqCst);
        self.conn
            .prepare_cached(sql)
            .and_then(|mut s| s.execute([]).map(|_| ()))
            .map_err(|e| Error::sql(sql.to_string(), e))
    }

    /// Runs one group commit: every job in its own savepoint, all sharing
    /// one capture, one record, one fdatasync and one SQLite COMMIT. An
    /// `Err` is fatal for the writer.
    /// Returns the jobs that did not fit (they wait for the next batch).
    pub(super) fn run_batch(&mut self, mut jobs: VecDeque<Job>) -> Result<VecDeque<Job>> {
        'batch: loop {
            self.internal("BEGIN IMMEDIATE")?;
            self.capture.start();
            let mut capture = BatchCapture {
                parts: Vec::new(),
                ddl: false,
            };
            // Jobs whose closure succeeded, and those that failed (answered
            // after the batch, like the others, to keep one path).
            let mut ran: Vec<(Job, Ran)> = Vec::new();
            while let Some(mut job) = jobs.pop_front() {
                self.internal(&format!("SAVEPOINT {SAVEPOINT}"))?;
                let parts_before = capture.parts.len();
                let mut tx = Tx {
                    conn: &self.conn,
                    auth: &self.auth,
                    capture: &mut self.capture,
                    batch: &mut capture,
                    first: ran.is_empty(),
                    requeue: false,
                    poisoned: None,
                    schema_version: None,
                };
                self.auth.mode.store(MODE_USER, Ordering::SeqCst);
                let closure_ok = job.run(&mut tx);
                self.auth.mode.store(MODE_INTERNAL, Ordering::SeqCst);
                self.auth.deadline_ns.store(0, Ordering::Relaxed);
                if let Some(v) = tx.schema_version
                    && tx.poisoned.is_none()
                    && !self.conn.is_autocommit()
                    && schema_version(&self.conn)? != v
                {
                    tx.poisoned = Some(
                        "a savepoint rollback undid a schema change of this transaction; \
                         run the schema change without rolling it back"
                            .into(),
                    );
                }
                let requeue = tx.requeue;
                let outcome = match (closure_ok, tx.poisoned.take()) {
                    (_, Some(what)) => Ran::Refused(Error::Refused { what }),
                    (true, None) => Ran::Ok,
                    (false, None) => Ran::Failed,
                };
                let ok = matches!(outcome, Ran::Ok);
                // Close this job's savepoint. If the SQLite transaction is no
                // longer the writer's (a statement such as INSERT OR ROLLBACK
                // ended it), the batch is broken.
                let closed = if self.conn.is_autocommit() {
                    Err(())
                } else if ok && !requeue {
                    self.internal(&format!("RELEASE {SAVEPOINT}"))
                        .map_err(|_| ())
                } else {
                    self.internal(&format!("ROLLBACK TO {SAVEPOINT}"))
                        .and_then(|()| self.internal(&format!("RELEASE {SAVEPOINT}")))
                        .map_err(|_| ())
                };
                if closed.is_err() {
                    // The work of every earlier job of this batch is gone with
                    // the transaction: run those again.
                    if !self.conn.is_autocommit() {
                        self.internal("ROLLBACK")?;
                    }
                    if capture.ddl {
                        self.capture.schema_changed();
                    }
                    drop(capture);
                    let culprit_error = if ok {
                        Err(Error::Aborted(
                            "a statement rolled back the whole transaction".into(),
                        ))
                    } else {
                        Ok((self.lsn, false))
                    };
                    self.shared.counters.batches.fetch_add(1, Ordering::Relaxed);
                    job.finish(culprit_error);
                    self.run_again(ran, &mut jobs);
                    continue 'batch;
                }
                if requeue {
                    // A schema change that must run first in its own batch.
                    capture.parts.truncate(parts_before);
                    jobs.push_front(job);
                    break;
                }
                if !ok && capture.ddl && ran.is_empty() {
                    // The failed job was the batch's schema change: its DDL
                    // and parts are rolled back with it.
                    capture.parts.clear();
                    capture.ddl = false;
                    self.capture.schema_changed();
                    self.capture.start();
                }
                let was_ddl = capture.ddl;
                ran.push((job, outcome));
                if was_ddl {
                    // Nothing shares a record with a schema change.
                    break;
                }
                if self.solo > 0 {
                    self.solo -= 1;
                    break;
                }
            }
            let capture_ddl = capture.ddl;
            let built = self.build_record(capture);
            let (record, fail_all) = match built {
                Ok(r) => (r, None),
                Err(e) => (None, Some(e)),
            };
            if let Some(e) = fail_all {
                // The batch's record could not be built (too large, ...):
                // nothing of it is committed.
                self.internal("ROLLBACK")?;
                if capture_ddl {
                    self.capture.schema_changed();
                }
                let oks = ran.iter().filter(|(_, r)| matches!(r, Ran::Ok)).count();
                if matches!(e, Error::TooLarge { .. }) && oks > 1 {
                    // Together too large, each perhaps not: run them again,
                    // one per record.
                    self.solo = oks;
                    self.run_again(ran, &mut jobs);
                    continue 'batch;
                }
                let reason = e.to_string();
                let answers = ran
                    .into_iter()
                    .map(|(j, ran)| match ran {
                        Ran::Failed => (j, Ok((self.lsn, false))),
                        Ran::Refused(e) => (j, Err(e)),
                        Ran::Ok => (j, Err(Error::Aborted(reason.clone()))),
                    })
                    .collect();
                self.replier.answer(answers);
                return Ok(jobs);
            }
            self.commit_batch(ran, record)?;
            return Ok(jobs);
        }
    }

    /// After a batch was rolled back: the jobs that succeeded go back to
    /// the front of the queue, in order, to run again; the others are
    /// answered (a job that failed on its own: its answer is its error).
    pub(super) fn run_again(&self, ran: Vec<(Job, Ran)>, jobs: &mut VecDeque<Job>) {
        let mut again = Vec::new();
        for (j, ran) in ran {
            match ran {
                Ran::Ok => again.push(j),
                Ran::Failed => j.finish(Ok((self.lsn, false))),
                Ran::Refused(e) => j.finish(Err(e)),
            }
        }
        for j in again.into_iter().rev() {
            jobs.push_front(j);
        }
    }

    /// Finishes a batch's capture: changeset, guard row, hash. `None` when
    /// the batch changed nothing (then the guard row is left alone).
    #[allow(clippy::type_complexity)] // a private tuple, built and consumed once
    pub(super) fn build_record(
        &mut self,
        mut capture: BatchCapture,
    ) -> Result<Option<(Lsn, RecordKind, Vec<u8>, ContentHash, SchemaHash)>> {
        let lsn = self.lsn.next();
        let captured = self.capture.changeset();
        self.capture.stop();
        let mut cs = captured?;
        let (new_hash, changes) = hash::apply_changeset_counting(self.hash, &cs)?;
        if changes == 0 && !capture.ddl {
            // A read-only (or net-zero) batch: no record.
            return Ok(None);
        }
        // The guard row moves in the same transaction, and its change goes
        // into the changeset as the session extension would write it: a
        // copy that skips or repeats a record conflicts on it.
        self.internal_mode();
        let moved = self
            .conn
            .prepare_cached(&format!(
                "UPDATE {GUARD_TABLE} SET lsn = ?1 WHERE id = 1 AND lsn = ?2"
            ))
            .and_then(|mut s| s.execute([lsn.0 as i64, self.lsn.0 as i64]))
            .map_err(|e| Error::sql("update the guard row", e))?;
        if moved != 1 {
            return Err(Error::Stopped(format!(
                "the guard row of {GUARD_TABLE} is missing or not at LSN {} ({moved} rows updated)",
                self.lsn
            )));
        }
        self.guard
            .append(&mut cs, 1, self.lsn.0 as i64, lsn.0 as i64);
        let size = cs.len()
            + capture
                .parts
                .iter()
                .map(|p| match p {
                    DdlPart::Sql(s) => s.len(),
                    DdlPart::Changeset(c) => c.len(),
                })
                .sum::<usize>();
        if size > self.opts.max_transaction_bytes {
            return Err(Error::TooLarge {
                size,
                max: self.opts.max_transaction_bytes,
            });
        }
        let (body, new_hash, new_schema) = if capture.ddl {
            let mut parts = std::mem::take(&mut capture.parts);
            if !cs.is_empty() {
                parts.push(DdlPart::Changeset(cs));
            }
            let schema = hash::schema_hash(&self.conn)?;
            // Schema changes can add or drop cells wholesale: rescan.
            let h = hash::full_scan(&self.conn)?;
            (
                Body::Ddl {
                    schema_hash: schema,
                    parts,
                },
                h,
                schema,
            )
        } else {
            (Body::Changeset(cs), new_hash, self.schema_hash)
        };
        let record = Record {
            time_us: now_us(),
            hash: new_hash,
            body,
        };
        let kind = record.kind();
        let mut payload = Vec::with_capacity(size + 64);
        record.encode(&mut payload);
        let max = self
            .opts
            .max_transaction_bytes
            .min(crate::format::MAX_RECORD_SIZE);
        if payload.len() > max {
            return Err(Error::TooLarge {
                size: payload.len(),
                max,
            });
        }
        Ok(Some((lsn, kind, payload, new_hash, new_schema)))
    }

    pub(super) fn commit_batch(
        &mut self,
        ran: Vec<(Job, Ran)>,
        record: Option<(Lsn, RecordKind, Vec<u8>, ContentHash, SchemaHash)>,
    ) -> Result<()> {
        let c = &self.shared.counters;
        if let Some((lsn, kind, payload, h, s)) = &record {
            self.log.append(*kind, *lsn, payload, *h, *s)?;
            self.log.write()?;
            self.failpoint.hit(FailPoint::AfterAppend);
            if self.opts.fsync {
                let t = Instant::now();
                self.log.sync()?;
                c.fsync.observe(t.elapsed());
            }
            self.failpoint.hit(FailPoint::AfterFsync);
            c.syncs.fetch_add(1, Ordering::Relaxed);
            c.records.fetch_add(1, Ordering::Relaxed);
        }
        c.batches.fetch_add(1, Ordering::Relaxed);
        let logged = record.is_some();
        let commit = self.internal("COMMIT");
        // The record is durable: it is committed whether or not SQLite's
        // COMMIT succeeded (recovery redoes it). Answer accordingly.
        if let Some((lsn, _, _, h, s)) = record {
            self.lsn = lsn;
            self.hash = h;
            self.schema_hash = s;
        }
        self.publish();
        let lsn = self.lsn;
        // Acknowledge only under a valid lease: past it, the peer may have
        // taken over without this record.
        let fenced = if logged { self.fenced() } else { None };
        let answers = ran
            .into_iter()
            .map(|(j, ran)| match ran {
                Ran::Ok if fenced.is_some() => (
                    j,
                    Err(Error::Fenced(format!(
                        "the lease ran out before LSN {lsn} was acknowledged"
                    ))),
                ),
                Ran::Ok => (j, Ok((lsn, logged))),
                Ran::Failed => (j, Ok((lsn, false))),
                Ran::Refused(e) => (j, Err(e)),
            })
            .collect();
        let confirm = match &self.opts.feed {
            Some(feed) if logged && feed.is_synchronous() => Some(Confirm {
                feed: feed.clone(),
                lsn,
            }),
            _ => None,
        };
        self.replier.answer_confirmed(answers, confirm);
        commit?;
        match fenced {
            Some(reason) => Err(Error::Fenced(reason)),
            None => Ok(()),
        }
    }
}
