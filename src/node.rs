//! `logship node`: the cluster daemon. One process per node runs the role
//! the cluster gives it: active (the store, its control socket and the ship
//! duties, under a quorum fence) or passive (the replay daemon). It
//! heartbeats the peer, holds or seeks the witness vote, takes a new epoch on
//! every activation, fences itself when it loses quorum, fails over when
//! the active is gone and the mount dial allows, and rejoins as passive
//! when the peer took over.
//!
//! It decides nothing itself: the decisions are `witness::machine`'s state
//! machine. Each turn of the loop feeds it what the node heard (the peer
//! from the heartbeat link, the witness thread's last answer, what the
//! node holds on disk) and a timer, and carries out the actions it answers
//! (`act`), feeding each one's outcome back. This file holds the daemon's
//! state, its loop and that wiring;
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
mod block;
mod claims;
mod duty;
mod endpoints;
mod etcd_link;
mod etcd_mode;
mod heartbeat;
mod moves;
mod ops;
mod rejoin;
mod status;
mod witness_link;

use activation::{active_generation, log_position};
use claims::Claims;
use duty::{ActiveDuty, Duty};
use endpoints::{serve_admin, serve_control, start_lmtp, start_search_indexer, status_publisher};
use moves::MoveReply;
use witness::machine::{Action, Blocked, Holding, Input, LocalFacts, Machine, Settings, Stop};
use witness_link::{WitnessShared, witness_facts, witness_share, witness_thread};

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
    /// The heartbeat link to the peer (two nodes; none past two).
    link: Option<Arc<Link>>,
    wit: Arc<WitnessShared>,
    /// Where epochs are claimed: the witness (its own connection), or etcd.
    claims: Claims,
    /// Past two nodes: the etcd arbiter's view and what the node did on it.
    etcd: Option<etcd_mode::EtcdMode>,
    duty: Duty,
    /// The node's decisions, and what they are made from.
    m: Machine,
    /// Where each epoch began (for the replay of a passive copy).
    epoch_starts: Arc<Mutex<Vec<EpochStart>>>,
    /// The store the control socket serves while active.
    serving: Arc<Mutex<Option<Arc<Store>>>>,
    requests: Receiver<Request>,
    /// The mount dial's last decision.
    dial: Option<DialDecision>,
    status_written: Option<(NodeStatus, Instant)>,
    /// The operator waiting on a planned move (pending or under way).
    move_reply: Option<MoveReply>,
    /// The last step that failed, and when (status shows it a while, as
    /// the steps between failures overwrite the blocked reason).
    step_failed: Option<(String, Instant)>,
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
    /// The cluster key, when there is one.
    key: Option<Arc<[u8]>>,
    /// Block mode: what the listener serves while active, and what the
    /// receiver has while passive.
    feeding: block::Feeding,
    received: Arc<Mutex<replayer::block::Received>>,
    /// Synchronous commit as last seen, and whether the witness holds the
    /// record of going alone.
    sync_seen: Option<(shipper::block::SyncStatus, bool)>,
    /// Why this node serves no block-mode stream, when its listener could
    /// not start.
    block_off: Option<String>,
}

/// Runs the node daemon until SIGTERM or SIGINT.
pub fn run(name: &str, node: &Node, cfg: &Config) -> Result<ExitCode> {
    warn_open_dirs(name, node);
    let arbiter = match &cfg.cluster.arbiter {
        Some(a) => Some(witness::etcd::ArbiterUrl::parse(a).map_err(|e| {
            logship::exit::error(
                logship::exit::Class::Config,
                format!("cluster.arbiter: {e}"),
            )
        })?),
        None => None,
    };
    if arbiter.is_some() && cfg.cluster.commit == logship::config::CommitMode::Remote {
        return Err(logship::exit::error(
            logship::exit::Class::Config,
            "commit = \"remote\" (synchronous commit) needs the file-share witness in this build; with an etcd arbiter set commit = \"local\"".to_string(),
        ));
    }
    let others: Vec<&String> = cfg.nodes.keys().filter(|n| n.as_str() != name).collect();
    let peer = match (others.as_slice(), &arbiter) {
        ([peer], None) => (*peer).clone(),
        (_, None) => bail!(
            "a cluster has two nodes; the config has {} (past two, set [cluster] arbiter to etcd)",
            cfg.nodes.len()
        ),
        ([], Some(_)) => bail!("node {name} is the only node in the config"),
        // Past two nodes: the node it copies from is whichever is active;
        // until it knows, the one its copy last came from.
        ([first, ..], Some(_)) => CopyState::load(&CopyPaths::new(&node.data_dir))
            .ok()
            .flatten()
            .map(|s| s.source)
            .filter(|s| cfg.nodes.contains_key(s) && s != name)
            .unwrap_or_else(|| (*first).clone()),
    };
    // Each node ships to its own share and copies from its peers': a node
    // without one could never serve or follow. Said now, not in a loop.
    for (n, nd) in &cfg.nodes {
        if nd.share.is_none() {
            bail!(
                "node {n} has no `share` in the config: set [nodes.{n}] share to the directory or smb:// URL where its peers read its segments"
            );
        }
    }
    let witness_spec = match &arbiter {
        Some(_) => None,
        None => Some(cfg.cluster.witness.as_deref().context(
            "cluster.witness is not set: a cluster needs a witness directory (a path or an smb:// URL) to break ties",
        )?),
    };
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
    let timing = Timing {
        interval: cfg.cluster.heartbeat_interval,
        dead_after: cfg.cluster.dead_after,
    };
    let key: Option<Arc<[u8]>> = match &cfg.cluster.key_file {
        Some(f) => Some(shipper::secret::cluster_key(f)?.into()),
        None if arbiter.is_some() => None,
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
    let wit = Arc::new(WitnessShared::default());
    let mut threads = Vec::new();
    let (link, claims, etcd) = match (&arbiter, witness_spec) {
        (Some(url), _) => {
            // Past two nodes: etcd, through its own thread.
            let ttl = etcd_link::lease_ttl(cfg.cluster.dead_after);
            let timeout = (ttl / 4).max(Duration::from_millis(200));
            let shared = Arc::new(etcd_link::EtcdShared::default());
            let thread = {
                let (etcd, me) = (
                    witness::etcd::Etcd::new(url.clone(), timeout),
                    name.to_string(),
                );
                let (shared, stop) = (shared.clone(), stop.clone());
                let interval = cfg.cluster.heartbeat_interval.min(ttl / 4);
                std::thread::Builder::new()
                    .name("logship-etcd".into())
                    .spawn(move || etcd_link::etcd_thread(etcd, me, shared, ttl, interval, stop))?
            };
            threads.push(thread);
            let ledger = witness::keys::Ledger::new(witness::etcd::Etcd::new(url.clone(), timeout));
            (
                None,
                Claims::Etcd(ledger),
                Some(etcd_mode::EtcdMode::new(shared, ttl)),
            )
        }
        (None, Some(spec)) => {
            let peer_node = cfg.node(&peer)?;
            let bind = parse_addr(name, node)?;
            let (link, link_thread) = Link::start(
                LinkConfig {
                    bind,
                    peer: parse_addr(&peer, peer_node)?,
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
            threads.push(link_thread);
            let w = Witness::new(witness_share(cfg, spec)?);
            let (wit, stop) = (wit.clone(), stop.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("logship-witness".into())
                    .spawn(move || witness_thread(w, wit, timing, stop))?,
            );
            (
                Some(link),
                Claims::Witness(Witness::new(witness_share(cfg, spec)?)),
                None,
            )
        }
        (None, None) => unreachable!("a witness without an arbiter was required above"),
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
        start_search_indexer(mail.clone())?;
    }
    let snapshot: Arc<Mutex<Option<NodeStatus>>> = Default::default();
    let serving: Arc<Mutex<Option<Arc<Store>>>> = Default::default();
    if let Some(addr) = &node.admin {
        serve_admin(name, node, addr, snapshot.clone(), serving.clone())?;
    }
    if let Some(addr) = &node.http {
        let users = match &cfg.cluster.http_users {
            Some(f) => Some(Arc::new(crate::http_api::Users::load(f)?)),
            None => {
                tracing::warn!(http = %addr, "SQL over HTTP takes requests from anyone who can reach it; set [cluster] http-users");
                None
            }
        };
        let tls = match (&node.http_cert, &node.http_key) {
            (Some(cert), Some(key)) => Some(
                crate::http_api::Tls::load(cert, key, cfg.cluster.http_ca.as_deref())
                    .with_context(|| format!("TLS for SQL over HTTP on node {name}"))?,
            ),
            _ => None,
        };
        crate::http_api::serve(
            addr,
            crate::http_api::Api {
                node: name.to_string(),
                data_dir: node.data_dir.clone(),
                serving: serving.clone(),
                snapshot: snapshot.clone(),
                peers: cfg
                    .nodes
                    .iter()
                    .filter_map(|(n, nd)| {
                        nd.http.clone().map(|addr| crate::http_api::Peer {
                            name: n.clone(),
                            addr,
                            tls: nd.http_cert.is_some(),
                        })
                    })
                    .collect(),
                tls,
                forwarder: Default::default(),
                users,
                timeout: cfg.cluster.http_timeout,
            },
            // It serves as long as the process lives.
            Arc::new(AtomicBool::new(false)),
        )?;
    }
    let feeding: block::Feeding = Default::default();
    // Block mode's listener. Its address defaults to the heartbeat's, over
    // TCP: when that port is another program's, the node runs without block
    // mode and says so; an address set in the config must be had.
    let mut block_off = None;
    let block_thread = match node.block_addr() {
        Some(addr) => {
            match block::start_listener(name, addr, key.clone(), feeding.clone(), stop.clone()) {
                Ok(t) => Some(t),
                Err(e) if node.block.is_none() => {
                    let why = format!(
                        "off: {e:#}; set [nodes.{name}] block to a free address (or \"off\")"
                    );
                    tracing::warn!(reason = %why, "block mode");
                    block_off = Some(why);
                    None
                }
                Err(e) => return Err(e),
            }
        }
        None => None,
    };
    let (req_tx, requests) = channel::<Request>();
    serve_control(name, &peer, node, serving.clone(), req_tx)?;
    let mut d = Daemon {
        name: name.to_string(),
        peer: peer.clone(),
        node,
        cfg,
        link,
        wit,
        claims,
        etcd,
        duty: Duty::Idle,
        m: Machine::new(
            Settings {
                me: name.to_string(),
                peer,
                timing,
                replay_lag: node.replay_lag,
                mutation: witness::core::Mutation::None,
            },
            Instant::now(),
        ),
        epoch_starts: Default::default(),
        serving,
        requests,
        dial: None,
        status_written: None,
        move_reply: None,
        step_failed: None,
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
        key,
        feeding,
        received: Default::default(),
        sync_seen: None,
        block_off,
    };
    match (&cfg.cluster.arbiter, witness_spec) {
        (Some(a), _) => {
            tracing::info!(node = %name, arbiter = %a, nodes = cfg.nodes.len(), "node daemon started")
        }
        (None, w) => {
            tracing::info!(node = %name, peer = %d.peer, witness = %w.unwrap_or_default(), "node daemon started")
        }
    }
    let tick = (timing.interval / 5).clamp(Duration::from_millis(10), Duration::from_millis(50));
    while !SHUTDOWN.load(Ordering::Relaxed) {
        if let Err(e) = d.tick() {
            tracing::error!(error = %format!("{e:#}"), "node step failed; retrying");
            d.m.blocked = Some(Blocked::StepFailed(format!("{e:#}")));
            d.step_failed = Some((format!("{e:#}"), Instant::now()));
            d.write_status(false);
            std::thread::sleep(Duration::from_millis(500));
        }
        std::thread::sleep(tick);
    }
    tracing::info!(node = %name, "node daemon stopping");
    d.stop_duty();
    d.m.role = Role::Starting;
    d.write_status(true);
    // The etcd thread revokes the node's lease as it stops: the store is
    // closed by now.
    stop.store(true, Ordering::Relaxed);
    for t in threads.into_iter().chain(block_thread) {
        let _ = t.join();
    }
    Ok(ExitCode::SUCCESS)
}

impl Daemon<'_> {
    /// What the heartbeat link knows of the peer (nothing past two nodes).
    fn peer_view(&self) -> PeerView {
        self.link.as_ref().map(|l| l.peer()).unwrap_or_default()
    }

    fn copy_paths(&self) -> CopyPaths {
        CopyPaths::new(&self.node.data_dir)
    }

    fn paused(&self) -> Option<String> {
        std::fs::read_to_string(self.node.data_dir.join(PAUSED_FILE)).ok()
    }

    /// What the node holds: its own store (a database and no copy state),
    /// a seeded copy, or nothing usable yet (a seed under way counts as
    /// nothing).
    fn local_facts(&self) -> LocalFacts {
        let p = self.copy_paths();
        let holding = match (p.database.exists(), p.state.exists()) {
            (true, false) => Holding::Store,
            (true, true) => match CopyState::load(&p).ok().flatten() {
                Some(s) if !s.seeding => Holding::Copy {
                    replayed: s.replayed_lsn.0,
                },
                _ => Holding::Nothing,
            },
            (false, _) => Holding::Nothing,
        };
        LocalFacts {
            holding,
            paused: self.paused(),
            store_stopped: match &self.duty {
                Duty::Active(a) => a.store.stopped(),
                _ => None,
            },
        }
    }

    /// One turn: the operator's requests, then what the node heard, then
    /// the timer; each input's actions carried out.
    fn tick(&mut self) -> Result<()> {
        if self.etcd.is_some() {
            return self.tick_etcd();
        }
        // Before the requests: an operator's activation replays with them.
        self.learn_epoch_starts(&self.wit.view().history);
        while let Ok(req) = self.requests.try_recv() {
            if let Op::MoveCluster { to, comment } = &req.op {
                if self.move_reply.is_some() {
                    let _ = req
                        .reply
                        .send(Err("another move is waiting for its target".into()));
                    continue;
                }
                self.move_reply = Some(MoveReply {
                    comment: comment.clone(),
                    reply: req.reply,
                });
                self.feed(Input::Move { to: to.clone() })?;
                continue;
            }
            let r = self.handle(&req.op).map_err(|e| format!("{e:#}"));
            let _ = req.reply.send(r);
        }
        // A request may have changed the role or taken the witness vote:
        // what is fed is read after them.
        let peer = self.peer_view();
        self.feed(Input::Peer(peer.clone()))?;
        self.feed(Input::Witness(witness_facts(&self.wit.view())))?;
        self.feed(Input::Local(self.local_facts()))?;
        if let Some(why) = self.replay_ended() {
            self.feed(Input::ReplayStopped(why))?;
        }
        self.feed(Input::Timer)?;
        self.watch_sync();
        self.update_heartbeat(&peer);
        self.write_status(false);
        Ok(())
    }

    /// Steps the machine with `input` and carries out its actions.
    fn feed(&mut self, input: Input) -> Result<()> {
        let actions = self.m.step(input, Instant::now());
        for a in actions {
            self.act(a)?;
        }
        Ok(())
    }

    fn act(&mut self, action: Action) -> Result<()> {
        match action {
            Action::WantVote(yes) => self.wit.want(yes),
            Action::ExtendFence(until) => {
                if let Duty::Active(a) = &self.duty {
                    a.fence.extend(until);
                }
            }
            Action::CloseStore(stop) => self.close_store(stop),
            Action::StartReplay => {
                if !matches!(self.duty, Duty::Passive(_)) {
                    self.stop_duty();
                    if let Err(e) = self.start_passive() {
                        let why = format!("{e:#}");
                        tracing::warn!(error = %why, "cannot start replay yet; retrying");
                        self.feed(Input::ReplayStopped(why))?;
                    }
                }
            }
            Action::StopDuty => self.stop_duty(),
            Action::Announce => {
                if let Some(l) = &self.link {
                    l.poke()
                }
            }
            Action::Activate(reason) => {
                let r = self.activate_store(reason.name(), None);
                self.activation_outcome(r)?;
            }
            Action::TakeOver { planned } => {
                let silent = self.m.peer_live_at.unwrap_or(self.m.started).elapsed();
                if !planned {
                    tracing::warn!(peer = %self.peer, silent_ms = silent.as_millis() as u64, "the active is gone: failing over");
                }
                // A move's target is not held to the dial: the old active
                // froze its store at the LSN this copy holds.
                let r = self.failover(if planned { "move" } else { "failover" }, planned);
                self.takeover_outcome(r)?;
            }
            Action::RefreshHistory => {
                // The peer says it is active: read the witness now rather
                // than at its next refresh.
                let history = self.claims.history()?;
                self.wit.offer_history(history);
            }
            Action::Rejoin => {
                let history = self.wit.view().history;
                self.rejoin(&history)?;
            }
            a @ (Action::StartMove { .. }
            | Action::MoveWaits { .. }
            | Action::MoveRefused { .. }
            | Action::MoveFailed(_)
            | Action::MoveDone { .. }
            | Action::MoveTimedOut { .. }) => self.act_move(a)?,
        }
        Ok(())
    }

    /// Feeds an activation's outcome back to the machine.
    fn activation_outcome(&mut self, r: Result<Result<Epoch, String>>) -> Result<()> {
        match r {
            Ok(Ok(epoch)) => self.activated(epoch),
            Ok(Err(why)) => self.feed(Input::NotActivated(why)),
            Err(e) => {
                self.feed(Input::NotActivated(format!("{e:#}")))?;
                Err(e)
            }
        }
    }

    fn activated(&mut self, epoch: Epoch) -> Result<()> {
        let fence_until = match &self.duty {
            Duty::Active(a) => a.fence.until(),
            _ => None,
        };
        self.feed(Input::Activated { epoch, fence_until })?;
        self.write_status(true);
        Ok(())
    }

    /// Feeds a takeover's outcome back to the machine.
    fn takeover_outcome(&mut self, r: Result<Takeover>) -> Result<()> {
        match r {
            Ok(Takeover::Active(epoch)) => self.activated(epoch),
            // The machine starts the copy's replay again at its next turn.
            Ok(Takeover::Refused(why)) => self.feed(Input::TakeoverRefused(why)),
            Ok(Takeover::NotActivated(why)) => self.feed(Input::NotActivated(why)),
            Err(e) => {
                self.feed(Input::NotActivated(format!("{e:#}")))?;
                Err(e)
            }
        }
    }

    /// An active stops taking writes: why, said in the log and the events.
    fn close_store(&mut self, stop: Stop) {
        let epoch = self.m.heartbeat_epoch();
        if let Duty::Active(a) = &self.duty {
            a.fence.revoke();
        }
        match &stop {
            Stop::SteppedDown { newer } => {
                tracing::warn!(epoch = %epoch, newer = %newer, "a newer epoch exists: stepping down");
            }
            Stop::LostQuorum => {
                tracing::warn!(epoch = %epoch, "lost quorum (no heartbeat support from the peer, no witness vote): fencing");
                crate::events::append(
                    &self.node.data_dir,
                    &self.name,
                    "fenced",
                    serde_json::json!({"epoch": epoch.0, "reason": "lost quorum"}),
                );
            }
            Stop::StoreFailed(why) => {
                tracing::error!(reason = %why, "the store stopped; the witness vote is left to the peer");
                crate::events::append(
                    &self.node.data_dir,
                    &self.name,
                    "store-failed",
                    serde_json::json!({"epoch": epoch.0, "error": why}),
                );
            }
            Stop::Released => {}
        }
        self.stop_duty();
    }

    /// Where each epoch began, for the replay of a passive copy (from
    /// the witness, or past two nodes from etcd).
    fn learn_epoch_starts(&self, history: &[EpochRecord]) {
        let starts: Vec<EpochStart> = history
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
}

/// How a takeover ended.
enum Takeover {
    /// Active in this epoch.
    Active(Epoch),
    /// The mount dial (or a Failed copy) refused it.
    Refused(String),
    /// It did not happen (another node claimed first).
    NotActivated(String),
}
