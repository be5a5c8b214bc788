//! The role's duties and their start and stop: the replay daemon of a
//! passive copy, and an active's store with its fence and ship thread.

use super::*;

pub(super) struct ActiveDuty {
    pub(super) store: Arc<Store>,
    pub(super) fence: Arc<Fence>,
    pub(super) epoch: Epoch,
    pub(super) shutdown: Arc<AtomicBool>,
    pub(super) ship: JoinHandle<()>,
}

pub(super) struct PassiveDuty {
    pub(super) shutdown: Arc<AtomicBool>,
    /// Ends with why replay stopped, when it stopped by itself.
    pub(super) handle: JoinHandle<Option<String>>,
    /// Block mode's receiver, when it runs (stopped with `shutdown`).
    pub(super) receiver: Option<JoinHandle<()>>,
}

pub(super) enum Duty {
    /// Nothing runs: no copy yet, fenced, or between roles.
    Idle,
    Active(ActiveDuty),
    Passive(PassiveDuty),
}

impl Daemon<'_> {
    /// This node's copy of its peer's log: no status published, no lag
    /// (the passive duty adds them; a failover's drain takes everything).
    pub(super) fn replay_config(&self) -> Result<replayer::ReplayConfig> {
        let peer_node = self.cfg.node(&self.peer)?;
        Ok(replayer::ReplayConfig {
            node: self.name.clone(),
            data_dir: self.node.data_dir.clone(),
            source_node: self.peer.clone(),
            source: share_of(&self.peer, peer_node, self.cfg)?,
            own_share: None,
            poll: replayer::daemon::DEFAULT_POLL,
            epochs: self.epoch_starts.clone(),
            replay_lag: Duration::ZERO,
        })
    }

    pub(super) fn start_passive(&mut self) -> Result<()> {
        let lock = shipper::store::lock_data_dir(&self.node.data_dir)
            .with_context(|| format!("lock {}", self.node.data_dir.display()))?;
        let mut config = self.replay_config()?;
        config.own_share = match self.node.share {
            Some(_) => Some(share_of(&self.name, self.node, self.cfg)?),
            None => None,
        };
        config.replay_lag = self.node.replay_lag;
        let shutdown = Arc::new(AtomicBool::new(false));
        let stop = shutdown.clone();
        let stop_receiver = shutdown.clone();
        let handle = std::thread::Builder::new()
            .name("logship-replay".into())
            .spawn(move || {
                let _lock = lock;
                match replayer::run(&config, &stop) {
                    Ok(()) => None,
                    Err(e) => {
                        tracing::error!(error = %e, "replay stopped");
                        Some(format!("replay stopped: {e}"))
                    }
                }
            })?;
        let receiver = self.start_receiver(stop_receiver).unwrap_or_else(|e| {
            tracing::warn!(error = %format!("{e:#}"), "block mode cannot start; the copy takes sealed segments only");
            None
        });
        self.duty = Duty::Passive(PassiveDuty {
            shutdown,
            handle,
            receiver,
        });
        Ok(())
    }

    /// Why the passive duty's replay stopped by itself, if it did: the
    /// duty is then ended, to be started again by the machine.
    pub(super) fn replay_ended(&mut self) -> Option<String> {
        let Duty::Passive(p) = &self.duty else {
            return None;
        };
        if !p.handle.is_finished() {
            return None;
        }
        let Duty::Passive(p) = std::mem::replace(&mut self.duty, Duty::Idle) else {
            unreachable!("checked above");
        };
        p.shutdown.store(true, Ordering::Relaxed);
        if let Some(r) = p.receiver {
            let _ = r.join();
        }
        Some(match p.handle.join() {
            Ok(Some(why)) => why,
            Ok(None) => "replay stopped".to_string(),
            Err(_) => "replay panicked".to_string(),
        })
    }

    pub(super) fn stop_duty(&mut self) {
        match std::mem::replace(&mut self.duty, Duty::Idle) {
            Duty::Idle => {}
            Duty::Active(a) => {
                a.fence.revoke();
                *self.serving.lock().expect("serving lock") = None;
                *self.feeding.lock().expect("feeding lock") = None;
                *self.mail.store.lock().expect("mail lock") = None;
                a.shutdown.store(true, Ordering::Relaxed);
                let _ = a.ship.join();
                drop(a.store);
            }
            Duty::Passive(p) => {
                p.shutdown.store(true, Ordering::Relaxed);
                let _ = p.handle.join();
                if let Some(r) = p.receiver {
                    let _ = r.join();
                }
            }
        }
    }
}
