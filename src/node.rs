//! `logship node`: the cluster daemon. One process per node runs the role
//! the cluster gives it: active (the store, its control socket and the ship
//! duties, under a quorum fence) or passive (the replay daemon). It
//! heartbeats the peer, holds or seeks the witness vote, takes a new epoch on
//! every activation, fences itself when it loses quorum, fails over when
//! the active is gone and the mount dial allows, and rejoins as passive
//! when the peer took over.
//!
//! It decides nothing itself: each step gathers what the node knows into a
//! view for `witness::core` (and `witness::moves`, `witness::dial`) and
//! carries out the answer. This file holds the daemon's state and its loop;
//! the I/O of each kind of step lives beside it: `activation` (claim an
//! epoch, open the store, fail over), `rejoin`, `moves`, `ops` (the
//! operator's requests), `heartbeat` (what the node says), `witness_link`
//! (the witness thread), `endpoints` (LMTP, control socket, admin) and
//! `status` (`node.json`, which `logship status` reads).

use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use logship::config::{Config, Node};
use replayer::daemon::EpochStart;
use replayer::state::{CopyPaths, CopyState};

use shipper::{Epoch, Fence, Generation, Lsn, Store, StoreOptions};
use witness::dial::{self, DialDecision, Position};
use witness::heartbeat::{CopyBrief, Link, LinkConfig, PeerView};
use witness::{EpochRecord, Role, Timing, Witness};

use crate::control::Op;
use crate::daemon::{SHUTDOWN, install_shutdown_handler, warn_open_dirs};
use crate::node_status::{
    NODE_STATUS_FILE, NodeStatus, PUBLISHED_NODE_STATUS, PeerSummary, Quorum,
};
use crate::shares::share_of;

mod activation;
mod duty;
mod endpoints;
mod heartbeat;
mod moves;
mod ops;
mod rejoin;
mod status;
mod witness_link;

use activation::{active_generation, log_position};
use duty::{ActiveDuty, Duty};
use endpoints::{serve_admin, serve_control, start_lmtp, status_publisher};
use moves::{Moving, PendingMove};
use witness_link::{WitnessShared, WitnessView, vote, witness_share, witness_thread};

/// Present while the node is paused (it holds the operator's reason).
pub const PAUSED_FILE: &str = "paused";

/// A request from the control socket, with where to answer.
struct Request {
    op: Op,
    reply: Sender<Result<String, String>>,
}

struct Daemon<'a> {
    name: String,
    peer: String,
    node: &'a Node,
    cfg: &'a Config,
    timing: Timing,
    link: Arc<Link>,
    wit: Arc<WitnessShared>,
    /// The witness, for claiming epochs (its own connection).
    claims: Witness,
    duty: Duty,
    role: Role,
    /// The newest epoch known, and where each began.
    known_epoch: Epoch,
    epoch_starts: Arc<Mutex<Vec<EpochStart>>>,
    /// The store the control socket serves while active.
    serving: Arc<Mutex<Option<Arc<Store>>>>,
    requests: Receiver<Request>,
    blocked: Option<String>,
    /// Set when the dial refused a failover: no new attempt until the peer
    /// is heard again or an operator forces one.
    dial_refused: bool,
    dial: Option<DialDecision>,
    /// The old active's last position (from its heartbeats).
    active_position: Option<Position>,
    started: Instant,
    pending_move: Option<PendingMove>,
    status_written: Option<(NodeStatus, Instant)>,
    moving: Option<Moving>,
    /// The position last announced, to announce progress at once during a move.
    announced: Option<Position>,
    /// When the mail counts were last logged (during a redelivery).
    mail_logged: Option<Instant>,
    failovers: u64,
    /// The copy's inspection failures and failure text last seen, to log
    /// each new one as an event.
    inspection_seen: (u32, Option<String>),
    /// The last status, for the admin endpoint.
    snapshot: Arc<Mutex<Option<NodeStatus>>>,
    /// The LMTP endpoint's view of this node (the store while active).
    mail: Arc<dumpster::lmtp::NodeMail>,
    /// Hands the status to the thread that publishes it on the node's share
    /// (a slow share must not hold up the daemon's loop).
    publish: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
}

/// Runs the node daemon until SIGTERM or SIGINT.
pub fn run(name: &str, node: &Node, cfg: &Config) -> Result<ExitCode> {
    warn_open_dirs(name, node);
    let peers: Vec<&String> = cfg.nodes.keys().filter(|n| n.as_str() != name).collect();
    let [peer] = peers.as_slice() else {
        bail!(
            "a cluster has two nodes; the config has {}",
            cfg.nodes.len()
        );
    };
    let peer = (*peer).clone();
    let peer_node = cfg.node(&peer)?;
    let witness_spec = cfg.cluster.witness.as_deref().context(
        "cluster.witness is not set: a cluster needs a witness directory (a path or an smb:// URL) to break ties",
    )?;
    let parse_addr = |n: &str, node: &Node| -> Result<std::net::SocketAddr> {
        let a = node
            .heartbeat
            .as_deref()
            .with_context(|| format!("node {n} has no `heartbeat` address in the config"))?;
        use std::net::ToSocketAddrs;
        a.to_socket_addrs()
            .with_context(|| format!("node {n}'s heartbeat address {a:?}"))?
            .next()
            .with_context(|| format!("node {n}'s heartbeat address {a:?} resolves to nothing"))
    };
    let bind = parse_addr(name, node)?;
    let peer_addr = parse_addr(&peer, peer_node)?;
    let timing = Timing {
        interval: cfg.cluster.heartbeat_interval,
        dead_after: cfg.cluster.dead_after,
    };
    let key: Option<Arc<[u8]>> = match &cfg.cluster.key_file {
        Some(f) => Some(shipper::secret::cluster_key(f)?.into()),
        None => {
            tracing::warn!(
                "heartbeats are not authenticated: anyone who can reach the heartbeat port can speak for the peer; set [cluster] key-file (the same owner-only file on both nodes)"
            );
            None
        }
    };
    std::fs::create_dir_all(&node.data_dir)
        .with_context(|| format!("create {}", node.data_dir.display()))?;
    // Held for the daemon's life: no other process opens this node's store,
    // even while the daemon is between roles.
    // (A command checking whether a daemon runs holds it for an instant.)
    let lock_path = node.data_dir.join(crate::control::NODE_LOCK_FILE);
    let mut tries = 0;
    let _node_lock = loop {
        match shipper::store::lock_file(&lock_path, &node.data_dir) {
            Err(shipper::Error::Locked { .. }) if tries < 50 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            r => break r,
        }
    }
    .map_err(|e| match e {
        shipper::Error::Locked { pid, .. } => anyhow::anyhow!(
            "another `logship node` (pid {pid}) runs node {name} on {}",
            node.data_dir.display()
        ),
        e => e.into(),
    })?;
    install_shutdown_handler();
    let stop = Arc::new(AtomicBool::new(false));
    let (link, link_thread) = Link::start(
        LinkConfig {
            bind,
            peer: peer_addr,
            cluster: cfg.cluster.name.clone(),
            node: name.to_string(),
            peer_node: peer.clone(),
            config_hash: cfg.source_hash.clone(),
            timing,
            key: key.clone(),
        },
        stop.clone(),
    )
    .with_context(|| format!("listen for heartbeats on {bind}"))?;
    let witness_share = || witness_share(cfg, witness_spec);
    let wit = Arc::new(WitnessShared::default());
    let witness_thread = {
        let w = Witness::new(witness_share()?);
        let (wit, stop) = (wit.clone(), stop.clone());
        std::thread::Builder::new()
            .name("logship-witness".into())
            .spawn(move || witness_thread(w, wit, timing, stop))?
    };
    let mail = Arc::new(dumpster::lmtp::NodeMail {
        domains: cfg
            .dumpster
            .as_ref()
            .map(|d| d.accepted_domains.clone())
            .unwrap_or_default(),
        node: name.to_string(),
        secret: key
            .as_deref()
            .map(dumpster::lmtp::LmtpSecret::from_cluster_key),
        ..Default::default()
    });
    if node.lmtp.is_some() && key.is_none() {
        tracing::warn!(
            "the LMTP endpoint takes mail from anyone who can reach it, past the relay and its dumpster; set [cluster] key-file (the relay then proves it holds the key)"
        );
    }
    if let Some(addr) = &node.lmtp {
        start_lmtp(name, addr, mail.clone())?;
    }
    let snapshot: Arc<Mutex<Option<NodeStatus>>> = Default::default();
    let serving: Arc<Mutex<Option<Arc<Store>>>> = Default::default();
    if let Some(addr) = &node.admin {
        serve_admin(name, node, addr, snapshot.clone(), serving.clone())?;
    }
    let (req_tx, requests) = channel::<Request>();
    serve_control(name, &peer, node, serving.clone(), req_tx)?;
    let mut d = Daemon {
        name: name.to_string(),
        peer,
        node,
        cfg,
        timing,
        link,
        wit,
        claims: Witness::new(witness_share()?),
        duty: Duty::Idle,
        role: Role::Starting,
        known_epoch: Epoch(0),
        epoch_starts: Default::default(),
        serving,
        requests,
        blocked: None,
        dial_refused: false,
        dial: None,
        active_position: None,
        started: Instant::now(),
        status_written: None,
        moving: None,
        pending_move: None,
        announced: None,
        mail_logged: None,
        failovers: 0,
        inspection_seen: (0, None),
        snapshot: snapshot.clone(),
        mail: mail.clone(),
        publish: match node.share {
            Some(_) => Some(status_publisher(share_of(name, node, cfg)?)?),
            None => None,
        },
    };
    tracing::info!(node = %name, peer = %d.peer, witness = %witness_spec, "node daemon started");
    let tick = (timing.interval / 5).clamp(Duration::from_millis(10), Duration::from_millis(50));
    while !SHUTDOWN.load(Ordering::Relaxed) {
        if let Err(e) = d.tick() {
            tracing::error!(error = %format!("{e:#}"), "node step failed; retrying");
            d.blocked = Some(format!("{e:#}"));
            std::thread::sleep(Duration::from_millis(500));
        }
        std::thread::sleep(tick);
    }
    tracing::info!(node = %name, "node daemon stopping");
    d.stop_duty();
    d.role = Role::Starting;
    d.write_status(true);
    stop.store(true, Ordering::Relaxed);
    let _ = link_thread.join();
    let _ = witness_thread.join();
    Ok(ExitCode::SUCCESS)
}

impl Daemon<'_> {
    fn copy_paths(&self) -> CopyPaths {
        CopyPaths::new(&self.node.data_dir)
    }

    fn has_copy(&self) -> bool {
        let p = self.copy_paths();
        p.state.exists()
            && p.database.exists()
            && CopyState::load(&p)
                .ok()
                .flatten()
                .is_some_and(|s| !s.seeding)
    }

    fn has_store(&self) -> bool {
        let p = self.copy_paths();
        p.database.exists() && !p.state.exists()
    }

    fn paused(&self) -> Option<String> {
        std::fs::read_to_string(self.node.data_dir.join(PAUSED_FILE)).ok()
    }

    fn latest(&self, wv: &WitnessView) -> Option<EpochRecord> {
        wv.history.last().cloned()
    }

    fn tick(&mut self) -> Result<()> {
        let peer = self.link.peer();
        let wv = self.wit.view();
        self.learn_epochs(&peer, &wv);
        if let Some(hb) = &peer.last
            && hb.role == Role::Active
            && peer.alive(self.timing.dead_after)
        {
            self.active_position = Some(hb.position);
            self.dial_refused = false;
        }
        while let Ok(req) = self.requests.try_recv() {
            if let Op::MoveCluster { to, comment } = &req.op {
                if self.pending_move.is_some() {
                    let _ = req
                        .reply
                        .send(Err("another move is waiting for its target".into()));
                    continue;
                }
                self.pending_move = Some(PendingMove {
                    to: to.clone(),
                    comment: comment.clone(),
                    reply: req.reply,
                    since: Instant::now(),
                    waiting_for: None,
                });
                continue;
            }
            let r = self.handle(&req.op, &peer).map_err(|e| format!("{e:#}"));
            let _ = req.reply.send(r);
        }
        // A request may have changed the role or taken the witness vote:
        // decide on what holds now.
        let (peer, wv) = (self.link.peer(), self.wit.view());
        if let Some(p) = self.pending_move.take() {
            self.try_move(p, &peer, &wv);
        }
        if self.moving.is_some() {
            return self.tick_moving(&peer);
        }
        match self.duty {
            Duty::Active(_) => self.tick_active(&peer, &wv)?,
            _ if self.handoff_to_me(&peer) => self.tick_target(&peer, &wv)?,
            _ if self.has_store() => self.tick_store_holder(&peer, &wv)?,
            _ => self.tick_passive(&peer, &wv)?,
        }
        self.update_heartbeat(&peer);
        self.write_status(false);
        Ok(())
    }

    fn learn_epochs(&mut self, peer: &PeerView, wv: &WitnessView) {
        if let Some(l) = wv.history.last() {
            self.known_epoch = self.known_epoch.max(l.epoch);
        }
        if let Some(hb) = &peer.last {
            self.known_epoch = self.known_epoch.max(hb.epoch);
        }
        let starts: Vec<EpochStart> = wv
            .history
            .iter()
            .map(|r| EpochStart {
                epoch: r.epoch,
                start_generation: r.start_generation,
            })
            .collect();
        let mut cur = self.epoch_starts.lock().expect("epochs lock");
        if starts.len() > cur.len() {
            *cur = starts;
        }
    }

    // ---- active ----

    fn tick_active(&mut self, peer: &PeerView, wv: &WitnessView) -> Result<()> {
        use witness::core::ActiveStep;
        let Duty::Active(a) = &self.duty else {
            return Ok(());
        };
        self.wit.want(true);
        let mut view = witness::core::ActiveView {
            epoch: a.epoch,
            known_epoch: self.known_epoch,
            peer_lease: peer.lease,
            witness_until: wv.until.filter(|_| wv.held),
            fence_allows: true,
            store_stopped: None,
        };
        if let Some(until) = witness::core::leases(&view).until() {
            a.fence.extend(until);
        }
        view.fence_allows = a.fence.allows();
        view.store_stopped = a.store.stopped();
        match witness::core::active_step(&view, Instant::now()) {
            ActiveStep::Serve { .. } => {}
            ActiveStep::StepDown { newer } => {
                tracing::warn!(epoch = %a.epoch, newer = %newer, "a newer epoch exists: stepping down");
                self.stop_duty();
                self.role = Role::Fenced;
                self.blocked = Some(format!(
                    "epoch {newer} began on another node while this node was active: it must rejoin as passive"
                ));
            }
            ActiveStep::Fence => {
                a.fence.revoke();
                tracing::warn!(epoch = %a.epoch, "lost quorum (no heartbeat support from the peer, no witness vote): fencing");
                crate::events::append(
                    &self.node.data_dir,
                    &self.name,
                    "fenced",
                    serde_json::json!({"epoch": a.epoch.0, "reason": "lost quorum"}),
                );
                self.stop_duty();
                self.role = Role::Fenced;
                self.blocked = Some("lost quorum: stopped taking writes".into());
            }
            ActiveStep::StoreStopped(why) => {
                tracing::error!(reason = %why, "the store stopped");
                self.stop_duty();
                self.role = Role::Fenced;
                self.blocked = Some(format!("the store stopped: {why}"));
            }
        }
        Ok(())
    }

    /// This node holds the store (not a copy) and is not active: it was
    /// active before (fenced, restarted). It may activate again only while
    /// it is on the newest timeline: no other node began a newer epoch.
    fn tick_store_holder(&mut self, peer: &PeerView, wv: &WitnessView) -> Result<()> {
        use witness::core::HolderStep;
        let view = witness::core::HolderView {
            me: self.name.clone(),
            newest_owner: self.latest(wv).map(|l| l.node),
            known_epoch: self.known_epoch,
            peer_active: peer.alive(self.timing.dead_after)
                && peer.last.as_ref().is_some_and(|h| h.role == Role::Active),
            witness_unreadable: (wv.error.is_some() && wv.history.is_empty() && !wv.reachable)
                .then(|| wv.error.clone().unwrap_or_default()),
            paused: self.paused(),
            vote: vote(wv),
            mutation: witness::core::Mutation::None,
        };
        let step = witness::core::holder_step(&view, &self.timing, Instant::now());
        self.wit.want(step.wants_vote());
        match step {
            HolderStep::Rejoin => {
                self.role = Role::Fenced;
                return self.rejoin(&wv.history);
            }
            HolderStep::ConfirmPeerEpoch => {
                self.role = Role::Fenced;
                // The peer says it is active: read the witness now rather
                // than at its next refresh, to rejoin at once.
                let history = self.claims.history().context("read the witness's epochs")?;
                if history.last().is_some_and(|l| l.node != self.name) {
                    return self.rejoin(&history);
                }
                self.blocked = Some(format!(
                    "node {} is active: waiting for its epoch on the witness to rejoin as passive",
                    self.peer
                ));
            }
            HolderStep::WitnessUnreadable(why) => {
                self.blocked = Some(format!("cannot read the witness: {why}"));
            }
            HolderStep::Paused(why) => self.blocked = Some(format!("paused: {why}")),
            HolderStep::NoVote => self.blocked = Some("waiting for the witness vote".into()),
            HolderStep::WaitLease => {}
            HolderStep::Activate(reason) => return self.activate_store(reason.name(), None),
        }
        Ok(())
    }

    // ---- planned move ----

    // ---- passive ----

    fn tick_passive(&mut self, peer: &PeerView, wv: &WitnessView) -> Result<()> {
        use witness::core::PassiveStep;
        let view = witness::core::PassiveView {
            has_copy: self.has_copy(),
            peer_heard_at: peer.heard_at,
            started: self.started,
            paused: self.paused(),
            dial_refused: self.dial_refused,
            lagged: !self.node.replay_lag.is_zero(),
            vote: vote(wv),
            mutation: witness::core::Mutation::None,
        };
        let step = witness::core::passive_step(&view, &self.timing, Instant::now());
        self.wit.want(step.wants_vote());
        self.role = Role::Passive;
        if step == PassiveStep::NoCopy {
            self.stop_duty();
            self.blocked = Some(format!(
                "no copy yet: seed it with `logship seed --node {}`",
                self.name
            ));
            return Ok(());
        }
        if !matches!(self.duty, Duty::Passive(_)) {
            self.start_passive()?;
        }
        match step {
            PassiveStep::NoCopy | PassiveStep::SeekVote | PassiveStep::WaitLease => {}
            // What the refused failover said stays shown.
            PassiveStep::DialRefused => {}
            PassiveStep::Follow => {
                if !self.dial_refused {
                    self.blocked = None;
                }
            }
            PassiveStep::Paused(why) => self.blocked = Some(format!("paused: {why}")),
            PassiveStep::Lagged => {
                self.blocked = Some(format!(
                    "{} is silent, but this is a lagged copy (replay-lag {}): it is not activated automatically; `logship activate --node {} --play-down` replays everything, then activates",
                    self.peer,
                    humantime::format_duration(self.node.replay_lag),
                    self.name
                ));
            }
            PassiveStep::NoVote(why) => {
                self.blocked = Some(format!(
                    "{} is silent, but the witness vote is not ours ({why})",
                    self.peer
                ));
            }
            PassiveStep::TakeOver => {
                let silent = peer.heard_at.unwrap_or(self.started).elapsed();
                tracing::warn!(peer = %self.peer, silent_ms = silent.as_millis() as u64, "the active is gone: failing over");
                self.failover("failover", false)?;
            }
        }
        Ok(())
    }

    // ---- heartbeat and status ----
}
