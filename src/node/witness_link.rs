//! The node's witness thread: it holds or seeks the witness vote as the
//! decisions ask, proves the vote held (its lease), reads the epoch
//! history, and names a witness it cannot reach. I/O only; what the vote
//! means is `witness::core`'s.

use super::*;

/// What the witness thread knows and does.
#[derive(Clone, Debug, Default)]
pub(super) struct WitnessView {
    pub(super) held: bool,
    /// When the current holding began (the start of the winning request).
    pub(super) acquired_at: Option<Instant>,
    /// The witness vote's lease end.
    pub(super) until: Option<Instant>,
    pub(super) reachable: bool,
    pub(super) error: Option<String>,
    pub(super) history: Vec<EpochRecord>,
}

#[derive(Debug, Default)]
pub(super) struct WitnessShared {
    pub(super) want: AtomicBool,
    pub(super) view: Mutex<WitnessView>,
    /// Wakes the witness thread when `want` changes.
    pub(super) nudged: Mutex<bool>,
    pub(super) wake: std::sync::Condvar,
}

impl WitnessShared {
    pub(super) fn view(&self) -> WitnessView {
        self.view.lock().expect("witness view").clone()
    }

    /// Asks for the witness vote (or gives it up), acting at once.
    pub(super) fn want(&self, want: bool) {
        if self.want.swap(want, Ordering::SeqCst) != want {
            *self.nudged.lock().expect("nudge lock") = true;
            self.wake.notify_all();
        }
    }

    /// A history read outside the witness thread (newer than its own
    /// read, or not taken).
    pub(super) fn offer_history(&self, history: Vec<EpochRecord>) {
        let mut v = self.view.lock().expect("witness view");
        if history.len() > v.history.len() {
            v.history = history;
        }
    }

    pub(super) fn sleep(&self, d: Duration) {
        let mut n = self.nudged.lock().expect("nudge lock");
        if !*n {
            n = self.wake.wait_timeout(n, d).expect("nudge lock").0;
        }
        *n = false;
    }
}

/// Holds or seeks the witness vote as asked, proves it held, and reads the
/// epoch history.
pub(super) fn witness_thread(
    mut w: Witness,
    shared: Arc<WitnessShared>,
    timing: Timing,
    shutdown: Arc<AtomicBool>,
) {
    let mut history_at: Option<Instant> = None;
    let mut reported = WitnessReport::default();
    while !shutdown.load(Ordering::Relaxed) {
        let want = shared.want.load(Ordering::SeqCst);
        let started = Instant::now();
        let mut error = match w.share() {
            shipper::share::Share::Dir(p) if !p.is_dir() => Some(format!(
                "the witness directory {} does not exist (or is not a directory)",
                p.display()
            )),
            _ => None,
        };
        if want {
            if w.holds() {
                match w.confirm() {
                    Ok(()) => {
                        let mut v = shared.view.lock().expect("witness view");
                        v.until = Some(started + timing.witness_lease());
                        v.reachable = true;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "lost the witness lock");
                        error = error.or(Some(e.to_string()));
                    }
                }
            } else {
                match w.acquire() {
                    Ok(true) => {
                        tracing::info!(witness = %w.share().display(), "holding the witness vote");
                        let mut v = shared.view.lock().expect("witness view");
                        v.acquired_at = Some(started);
                        v.until = Some(started + timing.witness_lease());
                        v.reachable = true;
                    }
                    Ok(false) => {}
                    Err(e) => error = error.or(Some(e.to_string())),
                }
            }
        } else if w.holds() {
            w.release();
        }
        if history_at.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            history_at = Some(Instant::now());
            match w.history() {
                Ok(h) => {
                    let mut v = shared.view.lock().expect("witness view");
                    v.history = h;
                }
                Err(e) => error = error.or(Some(e.to_string())),
            }
        }
        reported.note(&w.share().display(), error.as_deref());
        {
            let mut v = shared.view.lock().expect("witness view");
            v.held = w.holds();
            if !v.held {
                v.acquired_at = None;
            }
            v.reachable = error.is_none();
            v.error = error;
        }
        // Seeking the vote: try often, it may be handed over any moment.
        let every = if want && !w.holds() {
            timing.confirm_every().min(Duration::from_millis(50))
        } else {
            timing.confirm_every()
        };
        let spent = started.elapsed();
        if spent < every {
            shared.sleep(every - spent);
        }
    }
}

/// What the log last said of the witness: an ERROR when it cannot be
/// reached (at start, on every change to unreachable, on a new reason at
/// most every 30 s), an INFO when it can be again.
#[derive(Default)]
pub(super) struct WitnessReport {
    pub(super) error: Option<(String, Instant)>,
}

impl WitnessReport {
    pub(super) fn note(&mut self, witness: &str, error: Option<&str>) {
        match (error, &self.error) {
            (Some(e), Some((last, at))) if e == last || at.elapsed() < Duration::from_secs(30) => {}
            (Some(e), _) => {
                tracing::error!(%witness, error = %e, "the witness cannot be reached: this node has no witness vote");
                self.error = Some((e.to_string(), Instant::now()));
            }
            (None, Some(_)) => {
                tracing::info!(%witness, "the witness can be reached again");
                self.error = None;
            }
            (None, None) => {}
        }
    }
}

pub(super) fn witness_share(cfg: &Config, spec: &str) -> Result<shipper::share::Share> {
    let opts = shipper::share::SmbOptions {
        password_file: cfg.cluster.password_file.clone(),
        file_only: false,
        encrypt: shipper::share::Encrypt::Preferred,
        timeout: Some(cfg.cluster.smb_timeout),
    };
    shipper::share::Share::open(spec, &opts).with_context(|| format!("the witness {spec}"))
}

/// The generation holding an active's last record: its current one when
/// that holds records, else the one before.
/// The witness vote as the pure rules take it.
/// The witness thread's last answer, as the machine takes it in.
pub(super) fn witness_facts(wv: &WitnessView) -> witness::machine::WitnessFacts {
    witness::machine::WitnessFacts {
        vote: witness::core::Vote {
            held: wv.held,
            acquired_at: wv.acquired_at,
            error: wv.error.clone(),
        },
        until: wv.until.filter(|_| wv.held),
        newest: wv.history.last().map(|r| (r.epoch, r.node.clone())),
        reachable: wv.reachable,
    }
}
