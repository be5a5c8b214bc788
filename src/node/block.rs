//! Block mode's I/O on the node: the listener that serves the open store's
//! feed to the copy while this node is active, and the receiver that runs
//! beside a passive copy's replay (`shipper::block`, `replayer::block`).

use super::*;
use shipper::DatabaseId;
use shipper::block::{self, Feed};

/// What the listener serves: the open store's feed and database, while
/// this node is active.
pub(super) type Feeding = Arc<Mutex<Option<(Arc<Feed>, DatabaseId)>>>;

/// Why block mode cannot run for copies of `active`, if it cannot: a
/// share that is encrypted needs a stream that is, and that needs the
/// cluster key.
pub(super) fn refused(cfg: &Config, active: &str, active_node: &Node) -> Option<String> {
    (active_node.share_encrypted() && cfg.cluster.key_file.is_none()).then(|| {
        format!(
            "block mode is off: node {active}'s share is encrypted, and without [cluster] key-file its stream could not be"
        )
    })
}

/// Listens on `addr` and serves each copy that connects from `feeding`;
/// a node that is not active refuses, saying so.
pub(super) fn start_listener(
    name: &str,
    addr: &str,
    key: Option<Arc<[u8]>>,
    feeding: Feeding,
    stop: Arc<AtomicBool>,
) -> Result<JoinHandle<()>> {
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("listen for block mode on {addr} (TCP)"))?;
    listener
        .set_nonblocking(true)
        .with_context(|| format!("block-mode listener on {addr}"))?;
    tracing::info!(node = %name, addr = %addr, "block-mode endpoint listening");
    let name = name.to_string();
    Ok(std::thread::Builder::new()
        .name("logship-block".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let (stream, from) = match listener.accept() {
                    Ok(c) => c,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "block-mode accept failed");
                        std::thread::sleep(Duration::from_millis(200));
                        continue;
                    }
                };
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_nodelay(true);
                let (key, feeding, stop, name) =
                    (key.clone(), feeding.clone(), stop.clone(), name.clone());
                let _ = std::thread::Builder::new()
                    .name("logship-block-send".into())
                    .spawn(move || {
                        let peer = from.to_string();
                        let serving = feeding.lock().expect("feeding lock").clone();
                        let r = match serving {
                            Some((feed, db)) => {
                                block::serve(stream, &peer, &feed, db, key.as_deref(), &stop)
                            }
                            None => block::refuse(
                                stream,
                                &peer,
                                key.as_deref(),
                                &format!("node {name} is not active"),
                            ),
                        };
                        match r {
                            Ok(()) => tracing::debug!(peer = %peer, "block-mode stream ended"),
                            Err(e @ block::BlockError::BadKey { .. }) => {
                                tracing::warn!(error = %e, "block-mode stream refused")
                            }
                            Err(e) => tracing::info!(error = %e, "block-mode stream ended"),
                        }
                    });
            }
        })?)
}

impl Daemon<'_> {
    /// Synchronous commit's changes, as they happen: an event for each, and
    /// the witness's record of going alone removed once the copy caught up.
    pub(super) fn watch_sync(&mut self) {
        use shipper::block::SyncStatus;
        let (status, epoch) = match &self.duty {
            Duty::Active(a) => match self.feeding.lock().expect("feeding lock").as_ref() {
                Some((feed, _)) => (feed.sync_status(), a.epoch),
                None => return,
            },
            _ => {
                self.sync_seen = None;
                return;
            }
        };
        if self.sync_seen.as_ref().map(|(s, _)| s) == Some(&status) {
            return;
        }
        let recorded = self.sync_seen.as_ref().is_none_or(|(_, r)| *r);
        let still_recorded = match &status {
            SyncStatus::Synchronous if recorded => {
                match self
                    .claims
                    .witness()
                    .and_then(|w| Ok(w.remove_alone(epoch)?))
                {
                    Ok(()) => false,
                    Err(e) => {
                        // Kept until it can be removed: a failover then
                        // counts on less than it could, never on more.
                        tracing::warn!(error = %e, "cannot remove the record of going alone from the witness; retrying");
                        return;
                    }
                }
            }
            SyncStatus::Synchronous | SyncStatus::Off => false,
            SyncStatus::Alone { .. } => true,
        };
        match &status {
            SyncStatus::Synchronous => crate::events::append(
                &self.node.data_dir,
                &self.name,
                "commit-synchronous",
                serde_json::json!({"epoch": epoch.0, "reason": "the copy confirms every record"}),
            ),
            SyncStatus::Alone { from, why } => crate::events::append(
                &self.node.data_dir,
                &self.name,
                "commit-alone",
                serde_json::json!({"epoch": epoch.0, "from_lsn": from.0, "reason": why}),
            ),
            SyncStatus::Off => {}
        }
        self.sync_seen = Some((status, still_recorded));
    }

    /// How transactions are acknowledged, for status.
    pub(super) fn commit_note(&self) -> Option<String> {
        use shipper::block::SyncStatus;
        if self.cfg.cluster.commit != logship::config::CommitMode::Remote {
            return None;
        }
        Some(match self.sync_seen.as_ref().map(|(s, _)| s) {
            Some(SyncStatus::Synchronous) => "remote: synchronous".into(),
            Some(SyncStatus::Alone { from, why }) => {
                format!("remote: alone since LSN {from}: {why}")
            }
            _ => "remote".into(),
        })
    }

    /// The receiver for the passive copy of the peer's log, if block mode
    /// runs for it: its thread, sharing the passive duty's `stop`.
    pub(super) fn start_receiver(&self, stop: Arc<AtomicBool>) -> Result<Option<JoinHandle<()>>> {
        *self.received.lock().expect("received lock") = Default::default();
        let peer_node = self.cfg.node(&self.peer)?;
        let off = |why: String| {
            self.received.lock().expect("received lock").error = Some(why);
            Ok(None)
        };
        let Some(addr) = peer_node.block_addr() else {
            return off(format!(
                "off: node {} has no block (nor heartbeat) address",
                self.peer
            ));
        };
        if let Some(why) = refused(self.cfg, &self.peer, peer_node) {
            return off(why);
        }
        let paths = self.copy_paths();
        let Some(db) = CopyState::load(&paths)
            .ok()
            .flatten()
            .and_then(|s| DatabaseId::parse(&s.database_id))
        else {
            return off("off: the copy's database is not known yet".into());
        };
        let cfg = replayer::block::ReceiverConfig {
            node: self.name.clone(),
            active: self.peer.clone(),
            addr: addr.to_string(),
            key: self.key.as_deref().map(<[u8]>::to_vec),
            database_id: db,
            paths,
        };
        let received = self.received.clone();
        Ok(Some(
            std::thread::Builder::new()
                .name("logship-receive".into())
                .spawn(move || replayer::block::run(&cfg, &received, &stop))?,
        ))
    }
}
