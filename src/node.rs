//! `logship node`: the cluster daemon. One process per node runs the role
//! the cluster gives it: active (the store, its control socket and the ship
//! duties, under a quorum fence) or passive (the replay daemon). It
//! heartbeats the peer, holds or seeks the witness vote, takes a new epoch on
//! every activation, fences itself when it loses quorum, fails over when
//! the active is gone and the mount dial allows, and rejoins as passive
//! when the peer took over.
//!
//! The decisions (timing, leases, dial) are the `witness` crate's; this
//! module turns them into starting and stopping duties. It publishes what it
//! does in `<data-dir>/node.json`, which `logship status` reads.

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

/// Present while the node is paused (it holds the operator's reason).
pub const PAUSED_FILE: &str = "paused";

/// What the witness thread knows and does.
#[derive(Clone, Debug, Default)]
struct WitnessView {
    held: bool,
    /// When the current holding began (the start of the winning request).
    acquired_at: Option<Instant>,
    /// The witness vote's lease end.
    until: Option<Instant>,
    reachable: bool,
    error: Option<String>,
    history: Vec<EpochRecord>,
}

#[derive(Debug, Default)]
struct WitnessShared {
    want: AtomicBool,
    view: Mutex<WitnessView>,
    /// Wakes the witness thread when `want` changes.
    nudged: Mutex<bool>,
    wake: std::sync::Condvar,
}

impl WitnessShared {
    fn view(&self) -> WitnessView {
        self.view.lock().expect("witness view").clone()
    }

    /// Asks for the witness vote (or gives it up), acting at once.
    fn want(&self, want: bool) {
        if self.want.swap(want, Ordering::SeqCst) != want {
            *self.nudged.lock().expect("nudge lock") = true;
            self.wake.notify_all();
        }
    }

    fn sleep(&self, d: Duration) {
        let mut n = self.nudged.lock().expect("nudge lock");
        if !*n {
            n = self.wake.wait_timeout(n, d).expect("nudge lock").0;
        }
        *n = false;
    }
}

/// Holds or seeks the witness vote as asked, proves it held, and reads the
/// epoch history.
fn witness_thread(
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
struct WitnessReport {
    error: Option<(String, Instant)>,
}

impl WitnessReport {
    fn note(&mut self, witness: &str, error: Option<&str>) {
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

/// A request from the control socket, with where to answer.
struct Request {
    op: Op,
    reply: Sender<Result<String, String>>,
}

struct ActiveDuty {
    store: Arc<Store>,
    fence: Arc<Fence>,
    epoch: Epoch,
    shutdown: Arc<AtomicBool>,
    ship: JoinHandle<()>,
}

/// A planned move in progress on the active.
struct Moving {
    to: String,
    comment: String,
    lsn: Lsn,
    epoch: Epoch,
    started: Instant,
    /// The store is closed and the witness vote given up.
    released: bool,
    reply: Option<Sender<Result<String, String>>>,
    /// What the move waited for before it started, and how long.
    waited: Option<(String, Duration)>,
}

/// A `move-cluster` request whose target is not ready yet, in a way that
/// passes by itself (`MoveRefusal::passes_soon`): checked again each step
/// until it passes or `MOVE_WAIT` runs out.
struct PendingMove {
    to: String,
    comment: String,
    reply: Sender<Result<String, String>>,
    since: Instant,
    /// The last refusal waited for.
    waiting_for: Option<String>,
}

/// How long `move-cluster` waits for a target that will be ready soon (a
/// copy that has just started, queues that drain) before it refuses.
const MOVE_WAIT: Duration = Duration::from_secs(10);

/// How long a planned move may take before it is called off.
const MOVE_TIMEOUT: Duration = Duration::from_secs(30);

struct PassiveDuty {
    shutdown: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

enum Duty {
    /// Nothing runs: no copy yet, fenced, or between roles.
    Idle,
    Active(ActiveDuty),
    Passive(PassiveDuty),
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

/// Binds the node's LMTP address and serves it from a thread of its own
/// (a current-thread runtime: the store's writer does the heavy work).
fn start_lmtp(name: &str, addr: &str, mail: Arc<dumpster::lmtp::NodeMail>) -> Result<()> {
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("listen for LMTP on {addr} (node {name}'s `lmtp`)"))?;
    listener.set_nonblocking(true)?;
    let hostname = name.to_string();
    std::thread::Builder::new()
        .name("logship-lmtp".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("start the LMTP runtime");
            rt.block_on(async move {
                let listener =
                    tokio::net::TcpListener::from_std(listener).expect("a bound listener converts");
                dumpster::lmtp::run(listener, mail, dumpster::protocol::Limits::node(), hostname)
                    .await;
            });
        })?;
    tracing::info!(node = %name, lmtp = %addr, "LMTP endpoint listening");
    Ok(())
}

/// The node's admin endpoint: `/metrics` (Prometheus) and `/status` (JSON).
fn serve_admin(
    name: &str,
    node: &Node,
    addr: &str,
    snapshot: Arc<Mutex<Option<NodeStatus>>>,
    serving: Arc<Mutex<Option<Arc<Store>>>>,
) -> Result<()> {
    let (n, data_dir) = (name.to_string(), node.data_dir.clone());
    let snap = snapshot.clone();
    let metrics = Arc::new(move || {
        let st = snap
            .lock()
            .expect("snapshot lock")
            .clone()
            .unwrap_or_default();
        let l = format!("node=\"{n}\"");
        let mut e = crate::metrics::Exposition::default();
        let roles = [Role::Starting, Role::Passive, Role::Active, Role::Fenced];
        let samples: Vec<(String, f64)> = roles
            .iter()
            .map(|r| {
                (
                    format!("{l},role=\"{}\"", r.name()),
                    f64::from(u8::from(st.role == *r)),
                )
            })
            .collect();
        let samples: Vec<(&str, f64)> = samples.iter().map(|(a, b)| (a.as_str(), *b)).collect();
        e.metric(
            "logship_role",
            "gauge",
            "1 for the node's current role",
            &samples,
        );
        e.gauge(
            "logship_epoch",
            "The epoch the node is active in, or the newest it knows",
            &l,
            st.epoch as f64,
        );
        e.gauge(
            "logship_quorum_votes",
            "Votes this node holds (itself, the peer, the witness)",
            &l,
            f64::from(st.quorum.votes),
        );
        e.gauge(
            "logship_witness_reachable",
            "1 when the witness answers",
            &l,
            f64::from(u8::from(st.witness_reachable)),
        );
        e.gauge(
            "logship_lsn",
            "The node's LSN (active) or replayed LSN (passive)",
            &l,
            st.lsn as f64,
        );
        e.counter(
            "logship_failovers_total",
            "Activations after the peer failed, since the daemon started",
            &l,
            st.failovers as f64,
        );
        e.counter(
            "logship_mail_stored_total",
            "Recipients stored over LMTP since the daemon started",
            &l,
            st.mail_stored as f64,
        );
        e.counter(
            "logship_mail_duplicates_total",
            "Recipients dropped as duplicates since the daemon started",
            &l,
            st.mail_duplicates as f64,
        );
        let paths = CopyPaths::new(&data_dir);
        if let Ok(Some(state)) = CopyState::load(&paths) {
            let c = replayer::status::status(&n, &paths, &state, witness::witness::now_us());
            e.gauge(
                "logship_copy_queue_length",
                "Generations generated but not yet inspected",
                &l,
                c.copy_queue_length as f64,
            );
            e.gauge(
                "logship_replay_queue_length",
                "Generations inspected but not yet replayed",
                &l,
                c.replay_queue_length as f64,
            );
            e.gauge(
                "logship_inspection_failures",
                "Failed inspections of the next segment so far",
                &l,
                f64::from(c.inspection_failures),
            );
        }
        if let Some(store) = serving.lock().expect("serving lock").clone() {
            e.histogram(
                "logship_fsync_seconds",
                "Latency of the log's fdatasync per group commit",
                &l,
                &store.fsync_latency(),
            );
        }
        e.histogram(
            "logship_replay_lag_seconds",
            "From a segment's seal on the active to its replay here",
            &l,
            &replayer::REPLAY_LAG.snapshot(),
        );
        e.counter(
            "logship_copied_bytes_total",
            "Bytes of segments copied from the active's share",
            &l,
            replayer::BYTES_COPIED.load(Ordering::Relaxed) as f64,
        );
        e.finish()
    });
    let status = Arc::new(move || {
        let st = snapshot
            .lock()
            .expect("snapshot lock")
            .clone()
            .unwrap_or_default();
        (
            "application/json".to_string(),
            serde_json::to_string_pretty(&st).expect("status serialises"),
        )
    });
    crate::metrics::serve(addr, metrics, status)?;
    tracing::info!(node = %name, admin = %addr, "admin endpoint listening (/metrics, /status)");
    Ok(())
}

/// A thread that writes each status it is handed to the node's share.
fn status_publisher(share: shipper::share::Share) -> Result<std::sync::mpsc::SyncSender<Vec<u8>>> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(1);
    std::thread::Builder::new()
        .name("logship-status".into())
        .spawn(move || {
            let mut failing = false;
            for json in rx {
                match share.write_atomic(PUBLISHED_NODE_STATUS, &json) {
                    Ok(()) => failing = false,
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!(share = %share.display(), error = %e, "cannot publish the node status");
                    }
                    Err(_) => {}
                }
            }
        })?;
    Ok(tx)
}

fn witness_share(cfg: &Config, spec: &str) -> Result<shipper::share::Share> {
    let opts = shipper::share::SmbOptions {
        password_file: cfg.cluster.password_file.clone(),
        encrypt: shipper::share::Encrypt::Preferred,
        timeout: Some(cfg.cluster.smb_timeout),
    };
    shipper::share::Share::open(spec, &opts).with_context(|| format!("the witness {spec}"))
}

/// The control socket: statements go to the store while active; cluster
/// requests go to the daemon's loop.
fn serve_control(
    name: &str,
    peer: &str,
    node: &Node,
    serving: Arc<Mutex<Option<Arc<Store>>>>,
    requests: Sender<Request>,
) -> Result<()> {
    let (name, peer) = (name.to_string(), peer.to_string());
    let requests = Mutex::new(requests);
    crate::control::serve(
        &node.data_dir,
        Arc::new(
            move |op: &Op, out: &mut dyn FnMut(&[u8]) -> std::io::Result<()>| match op {
                Op::Sql { .. } | Op::Seal | Op::Check => {
                    let store = serving.lock().expect("serving lock").clone();
                    match store {
                        Some(s) => crate::control::run_op(&s, op, out),
                        None => bail!(
                            "node {name} is not active: send writes to the active node (normally {peer}; see `logship status`)"
                        ),
                    }
                }
                Op::Activate { .. } | Op::Pause { .. } | Op::MoveCluster { .. } => {
                    let (reply, answer) = channel();
                    requests
                        .lock()
                        .expect("requests lock")
                        .send(Request {
                            op: op.clone(),
                            reply,
                        })
                        .map_err(|_| anyhow::anyhow!("the node daemon is stopping"))?;
                    match answer.recv_timeout(Duration::from_secs(120)) {
                        Ok(Ok(text)) => {
                            out(text.as_bytes())?;
                            Ok(true)
                        }
                        Ok(Err(e)) => bail!("{e}"),
                        Err(_) => bail!("no answer from the node daemon"),
                    }
                }
            },
        ),
        &SHUTDOWN,
    )
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

    fn handle(&mut self, op: &Op, peer: &PeerView) -> Result<String> {
        match op {
            Op::Pause { paused: true } => {
                std::fs::write(
                    self.node.data_dir.join(PAUSED_FILE),
                    "paused by an operator",
                )?;
                Ok(format!(
                    "node {} is paused: it will not become active\n",
                    self.name
                ))
            }
            Op::Pause { paused: false } => {
                let _ = std::fs::remove_file(self.node.data_dir.join(PAUSED_FILE));
                Ok(format!("node {} is online\n", self.name))
            }
            Op::Activate { force, play_down } => {
                if matches!(self.duty, Duty::Active(_)) {
                    return Ok(format!("node {} is already active\n", self.name));
                }
                if !self.node.replay_lag.is_zero() && !play_down {
                    bail!(
                        "node {} is a lagged copy (replay-lag {}): `logship activate --play-down` replays everything it holds, then activates",
                        self.name,
                        humantime::format_duration(self.node.replay_lag)
                    );
                }
                if let Some(why) = self.paused() {
                    bail!("node {} is paused ({why}): resume it first", self.name);
                }
                if peer.alive(self.timing.dead_after)
                    && peer.last.as_ref().is_some_and(|h| h.role == Role::Active)
                {
                    bail!(
                        "node {} is active and answering: use `logship move-cluster` for a planned move",
                        self.peer
                    );
                }
                if !self.has_copy() {
                    bail!("node {} holds no usable copy to activate", self.name);
                }
                // Take the witness vote, then wait out the old holder's lease.
                self.wit.want(true);
                let deadline = Instant::now() + self.timing.dead_after * 4;
                let acquired = loop {
                    let v = self.wit.view();
                    if let Some(at) = v.acquired_at.filter(|_| v.held) {
                        break at;
                    }
                    if Instant::now() > deadline {
                        bail!(
                            "cannot take the witness vote ({}): is the witness reachable, and is {} still holding it?",
                            v.error.unwrap_or_else(|| "held by the other node".into()),
                            self.peer
                        );
                    }
                    std::thread::sleep(Duration::from_millis(20));
                };
                let wait = witness::core::takeover_at(acquired, &self.timing)
                    .saturating_duration_since(Instant::now());
                std::thread::sleep(wait);
                let took = self.failover(if *force { "forced" } else { "activate" }, *force)?;
                if took {
                    Ok(format!(
                        "node {} is active in epoch {}\n",
                        self.name, self.known_epoch
                    ))
                } else {
                    bail!(
                        "{}",
                        self.blocked
                            .clone()
                            .unwrap_or_else(|| "activation did not happen".into())
                    )
                }
            }
            _ => bail!("not a cluster request"),
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

    /// The peer began a newer epoch while this node held the store: undo
    /// what this node wrote past the point where that epoch began (the
    /// fork), then follow the peer as a passive copy. When undoing is
    /// impossible, the database is set aside and the copy is reseeded.
    fn rejoin(&mut self, history: &[EpochRecord]) -> Result<()> {
        let paths = shipper::store::StorePaths::new(&self.node.data_dir);
        let (lsn, log_epoch, _) = log_position(&paths)?;
        let Some(fork) = history
            .iter()
            .filter(|r| r.epoch > log_epoch && r.node != self.name)
            .map(|r| r.start_lsn)
            .min()
        else {
            self.blocked = Some("waiting for the witness's epoch history".into());
            return Ok(());
        };
        tracing::warn!(node = %self.name, lsn = %lsn, fork = %fork, "rejoining as passive after another node became active");
        let (to, hash) = match shipper::rewind::rewind(&self.node.data_dir, fork) {
            Ok(r) => {
                if r.records > 0 {
                    self.blocked = Some(format!(
                        "rewound {} transaction(s) past LSN {}: see {}",
                        r.records,
                        r.to,
                        r.report.display()
                    ));
                } else {
                    self.blocked = None;
                }
                (r.to, r.hash)
            }
            Err(e) => return self.reseed_after(&e.to_string()),
        };
        let conn = shipper::store::open_read_only(&paths.database)?;
        let (_, db) = shipper::apply::read_guard(&conn)?;
        drop(conn);
        let state = CopyState {
            source: self.peer.clone(),
            database_id: db.to_string(),
            replayed_lsn: to.0,
            replayed_hash: Some(hash.to_string()),
            ..Default::default()
        };
        state.save(&self.copy_paths())?;
        tracing::info!(node = %self.name, lsn = %to, source = %self.peer, "rejoined as a passive copy");
        crate::events::append(
            &self.node.data_dir,
            &self.name,
            "rejoin",
            serde_json::json!({"from_lsn": lsn.0, "fork": fork.0, "rewound": lsn.0 - to.0, "source": self.peer}),
        );
        Ok(())
    }

    /// Rewinding was impossible: the database is set aside (for an
    /// operator) and the copy is seeded again from the active.
    fn reseed_after(&mut self, why: &str) -> Result<()> {
        tracing::error!(reason = %why, "cannot rewind; reseeding from the active");
        let aside = self
            .node
            .data_dir
            .join(shipper::rewind::REWOUND_DIR)
            .join(format!("store-{}", witness::witness::now_us()));
        std::fs::create_dir_all(&aside)?;
        let paths = shipper::store::StorePaths::new(&self.node.data_dir);
        for suffix in ["", "-wal", "-shm"] {
            let name = format!("{}{suffix}", shipper::store::DATABASE_FILE);
            let p = self.node.data_dir.join(&name);
            if p.exists() {
                std::fs::rename(&p, aside.join(&name))?;
            }
        }
        if paths.logs.exists() {
            std::fs::rename(&paths.logs, aside.join(shipper::store::LOG_DIR))?;
        }
        self.blocked = Some(format!(
            "rewind impossible ({why}); the old database is in {}; reseeding",
            aside.display()
        ));
        crate::events::append(
            &self.node.data_dir,
            &self.name,
            "reseed",
            serde_json::json!({"reason": why, "old_database": aside.display().to_string(), "source": self.peer}),
        );
        self.write_status(true);
        crate::daemons::seed(
            &self.name,
            self.node,
            self.cfg,
            Some(&self.peer),
            true,
            Duration::from_secs(300),
        )
        .context("reseed after an impossible rewind")?;
        self.blocked = None;
        Ok(())
    }

    /// Claims the next epoch and opens the store in it.
    fn activate_store(&mut self, reason: &str, next_generation: Option<Generation>) -> Result<()> {
        // The history, read again while holding the vote: no one else can
        // claim meanwhile.
        let history = self.claims.history().context("read the witness's epochs")?;
        let by_itself = !matches!(reason, "failover" | "forced" | "activate" | "move");
        if let Some(l) = history.last()
            && !witness::core::activation_stands(by_itself, Some(&l.node), &self.name)
        {
            self.blocked = Some(format!("node {} began epoch {} meanwhile", l.node, l.epoch));
            return Ok(());
        }
        let paths = shipper::store::StorePaths::new(&self.node.data_dir);
        let (lsn, log_epoch, generation) = log_position(&paths)?;
        let epoch = witness::core::next_epoch(history.last().map(|l| l.epoch), log_epoch, self.known_epoch);
        let rec = EpochRecord {
            epoch,
            node: self.name.clone(),
            start_lsn: lsn,
            start_generation: next_generation.unwrap_or(generation),
            reason: reason.to_string(),
            started_us: witness::witness::now_us(),
        };
        if !self
            .claims
            .claim(&rec)
            .context("claim an epoch on the witness")?
        {
            self.blocked = Some(format!("epoch {epoch} was claimed by another node first"));
            return Ok(());
        }
        self.known_epoch = epoch;
        let fence = Arc::new(Fence::new());
        if let Some(until) = self.wit.view().until {
            fence.extend(until);
        }
        let opts = StoreOptions {
            seal_after: self.cfg.cluster.seal_after,
            fence: Some(fence.clone()),
            epoch: Some(epoch),
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
            peers: vec![(
                self.peer.clone(),
                share_of(&self.peer, self.cfg.node(&self.peer)?, self.cfg)?,
            )],
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
        self.duty = Duty::Active(ActiveDuty {
            store,
            fence,
            epoch,
            shutdown,
            ship,
        });
        self.role = Role::Active;
        self.blocked = None;
        self.link.poke();
        self.write_status(true);
        Ok(())
    }

    // ---- planned move ----

    /// Checks, as Move-ClusteredMailboxServer does, then stops intake and
    /// seals: the move goes on in `tick_moving`.
    /// Starts the pending move `p` if its checks pass; keeps it pending
    /// while what refuses it passes by itself and `MOVE_WAIT` lasts;
    /// otherwise answers the refusal (saying what it waited for).
    fn try_move(&mut self, p: PendingMove, peer: &PeerView, wv: &WitnessView) {
        let waited = p.since.elapsed();
        match self.start_move(&p.to, &p.comment, peer, wv) {
            Ok(()) => {
                if let Some(m) = self.moving.as_mut() {
                    m.reply = Some(p.reply);
                    m.waited = p.waiting_for.map(|w| (w, waited));
                }
            }
            Err(e) => {
                let refusal = e.downcast_ref::<witness::moves::MoveRefusal>();
                if let Some(r) = refusal.filter(|r| r.passes_soon())
                    && waited < MOVE_WAIT
                {
                    if p.waiting_for.is_none() {
                        tracing::info!(to = %p.to, reason = %r, "move-cluster waits for its target");
                    }
                    self.pending_move = Some(PendingMove {
                        waiting_for: Some(r.to_string()),
                        ..p
                    });
                    return;
                }
                let mut text = format!("{e:#}");
                if refusal.is_some_and(|r| r.passes_soon()) {
                    text.push_str(&format!(" (waited {} s for it)", waited.as_secs()));
                }
                let _ = p.reply.send(Err(text));
            }
        }
    }

    fn start_move(
        &mut self,
        to: &str,
        comment: &str,
        peer: &PeerView,
        wv: &WitnessView,
    ) -> Result<()> {
        let Duty::Active(a) = &self.duty else {
            bail!(
                "node {} is not active: run move-cluster where the active node runs",
                self.name
            );
        };
        let view = witness::moves::MoveView {
            me: &self.name,
            peer: &self.peer,
            moving: self.moving.is_some(),
            peer_heartbeat: peer
                .last
                .as_ref()
                .filter(|_| peer.alive(self.timing.dead_after)),
            witness: if wv.reachable && wv.held {
                Ok(())
            } else {
                Err(wv
                    .error
                    .clone()
                    .unwrap_or_else(|| "this node does not hold its vote".into()))
            },
        };
        witness::moves::check(to, &view)?;
        let started = Instant::now();
        *self.serving.lock().expect("serving lock") = None;
        *self.mail.store.lock().expect("mail lock") = None;
        let lsn = a
            .store
            .freeze(&format!("node {} is moving to {to}", self.name))?;
        tracing::info!(to, lsn = %lsn, comment, "planned move: intake stopped and sealed");
        self.moving = Some(Moving {
            to: to.to_string(),
            comment: comment.to_string(),
            lsn,
            epoch: a.epoch,
            started,
            released: false,
            reply: None,
            waited: None,
        });
        self.link.poke();
        Ok(())
    }

    /// The active's side of a move: once the target has replayed the last
    /// LSN, close the store and give up the witness vote; once the target is
    /// active in a newer epoch, the move is done (this node then rejoins).
    fn tick_moving(&mut self, peer: &PeerView) -> Result<()> {
        use witness::core::MovingStep;
        let m = self.moving.as_mut().expect("moving");
        let hb = peer
            .last
            .as_ref()
            .filter(|_| peer.alive(self.timing.dead_after));
        let step = witness::core::moving_step(
            m.lsn.0,
            m.epoch,
            m.released,
            hb,
            m.started.elapsed(),
            MOVE_TIMEOUT,
        );
        if step == MovingStep::Release {
            m.released = true;
            self.stop_duty();
            self.wit.want(false);
            self.role = Role::Starting;
            self.link.poke();
        }
        if step == MovingStep::Done {
            let m = self.moving.take().expect("moving");
            let ms = m.started.elapsed().as_millis() as u64;
            crate::events::append(
                &self.node.data_dir,
                &self.name,
                "move",
                serde_json::json!({"from": self.name, "to": m.to, "comment": m.comment, "lsn": m.lsn.0, "ms": ms}),
            );
            if let Some(r) = m.reply {
                let waited = m
                    .waited
                    .map(|(what, d)| {
                        format!(
                            "it first waited {} ms for its target: {what}\n",
                            d.as_millis()
                        )
                    })
                    .unwrap_or_default();
                let _ = r.send(Ok(format!(
                    "moved the active role from {} to {} in {ms} ms (LSN {}, nothing lost)\n{waited}",
                    self.name, m.to, m.lsn
                )));
            }
            self.role = Role::Fenced;
            return Ok(());
        }
        if step == MovingStep::TimedOut {
            let m = self.moving.take().expect("moving");
            tracing::error!(to = %m.to, "the planned move timed out; this node takes writes again");
            if let Some(r) = m.reply {
                let _ = r.send(Err(format!(
                    "node {} did not take over within {}s; {} stays active",
                    m.to,
                    MOVE_TIMEOUT.as_secs(),
                    self.name
                )));
            }
            // Closing the frozen store lets the next steps activate it again
            // in a new epoch.
            self.stop_duty();
        }
        self.update_heartbeat(peer);
        self.write_status(false);
        Ok(())
    }

    fn handoff_to_me(&self, peer: &PeerView) -> bool {
        peer.alive(self.timing.dead_after)
            && peer
                .last
                .as_ref()
                .and_then(|h| h.handoff.as_ref())
                .is_some_and(|h| h.to == self.name)
            && self.has_copy()
    }

    /// The target's side of a move: report progress at once; once the
    /// active has closed its store and this copy holds its last LSN, take
    /// the witness vote and become active.
    fn tick_target(&mut self, peer: &PeerView, wv: &WitnessView) -> Result<()> {
        if !matches!(self.duty, Duty::Passive(_)) {
            self.start_passive()?;
        }
        self.role = Role::Passive;
        let hb = peer.last.as_ref().expect("handoff_to_me checked");
        let handoff = hb.handoff.as_ref().expect("handoff_to_me checked");
        let lsn = CopyState::load(&self.copy_paths())?
            .map(|s| s.replayed_lsn)
            .unwrap_or(0);
        match witness::core::target_step(lsn, handoff.lsn, hb.role == Role::Active, wv.held) {
            witness::core::TargetStep::CatchUp => {}
            witness::core::TargetStep::SeekVote => self.wit.want(true),
            witness::core::TargetStep::TakeOver => {
                self.wit.want(true);
                self.failover("move", true)?;
                self.link.poke();
            }
        }
        Ok(())
    }

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

    fn start_passive(&mut self) -> Result<()> {
        let lock = shipper::store::lock_data_dir(&self.node.data_dir)
            .with_context(|| format!("lock {}", self.node.data_dir.display()))?;
        let peer_node = self.cfg.node(&self.peer)?;
        let config = replayer::ReplayConfig {
            node: self.name.clone(),
            data_dir: self.node.data_dir.clone(),
            source_node: self.peer.clone(),
            source: share_of(&self.peer, peer_node, self.cfg)?,
            own_share: match self.node.share {
                Some(_) => Some(share_of(&self.name, self.node, self.cfg)?),
                None => None,
            },
            poll: replayer::daemon::DEFAULT_POLL,
            epochs: self.epoch_starts.clone(),
            replay_lag: self.node.replay_lag,
        };
        let shutdown = Arc::new(AtomicBool::new(false));
        let stop = shutdown.clone();
        let handle = std::thread::Builder::new()
            .name("logship-replay".into())
            .spawn(move || {
                let _lock = lock;
                if let Err(e) = replayer::run(&config, &stop) {
                    tracing::error!(error = %e, "replay stopped");
                }
            })?;
        self.duty = Duty::Passive(PassiveDuty { shutdown, handle });
        Ok(())
    }

    /// Becomes active from the passive copy: the last copy and replay of
    /// what the old active's share holds, the mount dial, a new epoch, the
    /// store. False when it stayed passive (the reason is in `blocked`).
    fn failover(&mut self, reason: &str, forced: bool) -> Result<bool> {
        let started = Instant::now();
        self.stop_duty();
        let peer_node = self.cfg.node(&self.peer)?;
        let config = replayer::ReplayConfig {
            node: self.name.clone(),
            data_dir: self.node.data_dir.clone(),
            source_node: self.peer.clone(),
            source: share_of(&self.peer, peer_node, self.cfg)?,
            own_share: None,
            poll: replayer::daemon::DEFAULT_POLL,
            epochs: self.epoch_starts.clone(),
            // Everything it can reach, lagged copy or not.
            replay_lag: Duration::ZERO,
        };
        let state = {
            let _lock = shipper::store::lock_data_dir(&self.node.data_dir)?;
            replayer::daemon::drain(&config, witness::core::DRAIN_BUDGET)
                .context("copy and replay what the old active's share holds")?
        };
        let replayed = Position {
            lsn: state.replayed_lsn,
            generation: state.last_replayed.map(|m| m.generation).unwrap_or(0),
        };
        let decision = dial::decide(self.cfg.cluster.mount_dial, replayed, self.active_position);
        tracing::info!(decision = %decision.text, allowed = decision.allowed, forced, "mount dial");
        self.dial = Some(decision.clone());
        if let Some(f) = &state.failed {
            self.blocked = Some(format!("the copy is Failed: {f}"));
            self.wit.want(false);
            self.dial_refused = true;
            self.start_passive()?;
            return Ok(false);
        }
        if !decision.allowed && !forced {
            self.blocked = Some(format!(
                "not activated: {}; `logship activate --node {} --force` overrides",
                decision.text, self.name
            ));
            self.dial_refused = true;
            self.wit.want(false);
            self.start_passive()?;
            return Ok(false);
        }
        // The copy becomes the store.
        let paths = self.copy_paths();
        let next_generation = Generation(
            state
                .last_replayed
                .map(|m| m.generation)
                .max(state.last_generated.map(|m| m.generation))
                .unwrap_or(0)
                + 1,
        );
        prepare_log(&paths, &state, next_generation, self.known_epoch)?;
        // What the old active committed after this copy's last record is
        // lost: the relay re-delivers what it delivered since that record's
        // time (less a margin for clock differences); unknown: everything.
        let since = last_record_time(&paths.logs, Lsn(state.replayed_lsn))
            .map(|t| t.saturating_sub(REDELIVERY_MARGIN.as_micros() as u64))
            .unwrap_or(0);
        *self.mail.redeliver_since.lock().expect("since lock") = Some(since);
        // Kept on disk: if this node restarts before the relay has heard
        // the request, it asks again (see `activate_store`).
        let request = serde_json::json!({"since_us": since, "at_us": witness::witness::now_us()});
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
        if let Err(e) = self.activate_store(reason, None) {
            // Put the copy back as it was: it stays passive.
            let _ = std::fs::rename(&kept, &paths.state);
            return Err(e);
        }
        if !matches!(self.duty, Duty::Active(_)) {
            let _ = std::fs::rename(&kept, &paths.state);
            self.start_passive()?;
            return Ok(false);
        }
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
            serde_json::json!({"reason": reason, "forced": forced, "epoch": self.known_epoch.0, "dial": decision.text, "missing": decision.missing, "ms": ms}),
        );
        Ok(true)
    }

    fn stop_duty(&mut self) {
        match std::mem::replace(&mut self.duty, Duty::Idle) {
            Duty::Idle => {}
            Duty::Active(a) => {
                a.fence.revoke();
                *self.serving.lock().expect("serving lock") = None;
                *self.mail.store.lock().expect("mail lock") = None;
                a.shutdown.store(true, Ordering::Relaxed);
                let _ = a.ship.join();
                drop(a.store);
            }
            Duty::Passive(p) => {
                p.shutdown.store(true, Ordering::Relaxed);
                let _ = p.handle.join();
            }
        }
    }

    // ---- heartbeat and status ----

    fn update_heartbeat(&mut self, peer: &PeerView) {
        let peer_active = peer.alive(self.timing.dead_after)
            && peer.last.as_ref().is_some_and(|h| h.role == Role::Active);
        let hint = if peer_active {
            self.cfg.node(&self.peer).ok().and_then(|n| n.lmtp.clone())
        } else {
            None
        };
        *self.mail.active_hint.lock().expect("hint lock") = hint;
        let moving = self.moving.as_ref().map(|m| witness::heartbeat::Handoff {
            to: m.to.clone(),
            lsn: m.lsn.0,
            comment: m.comment.clone(),
        });
        let target = self.handoff_to_me(peer);
        let mut hb = self.link.ours.lock().expect("ours lock");
        hb.handoff = moving;
        let changed = hb.role != self.role;
        let copy_before = hb.copy.take();
        hb.role = self.role;
        hb.paused = self.paused().is_some();
        hb.supports = None;
        match &self.duty {
            Duty::Active(a) => {
                let st = a.store.state();
                hb.epoch = a.epoch;
                hb.position = Position {
                    lsn: st.lsn.0,
                    generation: active_generation(&a.store),
                };
            }
            _ => {
                hb.epoch = self.known_epoch;
                let paths = self.copy_paths();
                if let Ok(Some(state)) = CopyState::load(&paths) {
                    let seen = (state.inspection_failures, state.failed.clone());
                    if seen != self.inspection_seen {
                        if state.inspection_failures > self.inspection_seen.0 {
                            crate::events::append(
                                &self.node.data_dir,
                                &self.name,
                                "inspection-failure",
                                serde_json::json!({"failures": state.inspection_failures, "error": state.error}),
                            );
                        }
                        if let Some(f) = &state.failed
                            && self.inspection_seen.1.as_ref() != Some(f)
                        {
                            crate::events::append(
                                &self.node.data_dir,
                                &self.name,
                                "copy-failed",
                                serde_json::json!({ "error": f }),
                            );
                        }
                        self.inspection_seen = seen;
                    }
                    hb.position = Position {
                        lsn: state.replayed_lsn,
                        generation: state.last_replayed.map(|m| m.generation).unwrap_or(0),
                    };
                    let st = replayer::status::status(&self.name, &paths, &state, 0);
                    hb.copy = Some(CopyBrief {
                        summary: format!("{:?}", st.summary_copy_status),
                        copy_queue: st.copy_queue_length,
                        replay_queue: st.replay_queue_length,
                    });
                }
                hb.supports = witness::core::support(
                    self.role,
                    self.wit.want.load(Ordering::SeqCst),
                    self.known_epoch,
                    peer.last.as_ref(),
                    peer.alive(self.timing.dead_after),
                );
            }
        }
        let position = hb.position;
        // A copy's health changing is told at once: the active's move
        // checks read it from the last heartbeat.
        let changed = changed || hb.copy != copy_before;
        drop(hb);
        if changed || (target && self.announced != Some(position)) {
            self.link.poke();
        }
        self.announced = Some(position);
    }

    fn status(&self) -> NodeStatus {
        let peer = self.link.peer();
        let wv = self.wit.view();
        let now = Instant::now();
        let (peer_vote, lsn) = match &self.duty {
            Duty::Active(a) => (
                peer.lease.is_some_and(|(e, t)| e == a.epoch && t > now),
                a.store.state().lsn.0,
            ),
            _ => (
                peer.alive(self.timing.dead_after),
                CopyState::load(&self.copy_paths())
                    .ok()
                    .flatten()
                    .map(|s| s.replayed_lsn)
                    .unwrap_or(0),
            ),
        };
        let witness_vote = wv.held && wv.until.is_some_and(|t| t > now);
        let active_node = match &self.duty {
            Duty::Active(_) => Some(self.name.clone()),
            _ => match &peer.last {
                Some(h) if h.role == Role::Active && peer.alive(self.timing.dead_after) => {
                    Some(self.peer.clone())
                }
                _ => None,
            },
        };
        let mut warnings = Vec::new();
        if !wv.reachable {
            warnings.push(format!(
                "the witness is unreachable: {}",
                wv.error.clone().unwrap_or_default()
            ));
        }
        if let Some(p) = &peer.problem {
            warnings.push(p.clone());
        }
        if !peer.alive(self.timing.dead_after) {
            warnings.push(format!("no heartbeat from {}", self.peer));
        }
        if !self.link.authenticated {
            warnings.push("heartbeats are not authenticated: set [cluster] key-file".into());
            if self.node.lmtp.is_some() {
                warnings.push(
                    "the LMTP endpoint takes mail from anyone (no relay proof): set [cluster] key-file"
                        .into(),
                );
            }
        }
        NodeStatus {
            node: self.name.clone(),
            role: self.role,
            epoch: match &self.duty {
                Duty::Active(a) => a.epoch.0,
                _ => self.known_epoch.0,
            },
            active_node,
            node_state: if self.paused().is_some() {
                "paused".into()
            } else {
                "online".into()
            },
            quorum: Quorum {
                node: true,
                peer: peer_vote,
                witness: witness_vote,
                votes: 1 + peer_vote as u8 + witness_vote as u8,
            },
            witness: self.claims.share().display(),
            witness_reachable: wv.reachable,
            blocked: self.blocked.clone(),
            dial: self.dial.clone(),
            warnings,
            peer: peer.last.as_ref().map(|h| PeerSummary {
                node: h.node.clone(),
                role: h.role,
                paused: h.paused,
                epoch: h.epoch.0,
                lsn: h.position.lsn,
                copy: h.copy.as_ref().map(|c| c.summary.clone()),
                // Rounded, so that the status file changes only when it matters.
                heard_ms_ago: peer
                    .heard_at
                    .map(|t| t.elapsed().as_millis() as u64 / 1000 * 1000),
            }),
            failovers: self.failovers,
            mail_stored: self.mail.stored.load(Ordering::Relaxed),
            mail_duplicates: self.mail.duplicates.load(Ordering::Relaxed),
            lsn,
            pid: std::process::id(),
            updated_us: 0,
        }
    }

    fn write_status(&mut self, force: bool) {
        let st = self.status();
        *self.snapshot.lock().expect("snapshot lock") = Some(st.clone());
        // The node's side of a redelivery: what it stored and dropped.
        if let Some((prev, _)) = &self.status_written
            && prev.mail_duplicates != st.mail_duplicates
            && self
                .mail_logged
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(5))
        {
            self.mail_logged = Some(Instant::now());
            tracing::info!(
                stored = st.mail_stored,
                duplicates = st.mail_duplicates,
                "mail since this daemon started: newly stored, dropped as duplicates"
            );
        }
        if !force
            && let Some((prev, at)) = &self.status_written
            && *prev == st
            && at.elapsed() < Duration::from_secs(1)
        {
            return;
        }
        let mut out = st.clone();
        out.updated_us = witness::witness::now_us();
        let path = self.node.data_dir.join(NODE_STATUS_FILE);
        let json = serde_json::to_vec_pretty(&out).expect("status serialises");
        if let Err(e) = shipper::share::write_atomic(&path, &json) {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the node status");
        }
        if let Some(p) = &self.publish {
            // Full: the publisher is behind; the next status will do.
            let _ = p.try_send(json);
        }
        self.status_written = Some((st, Instant::now()));
    }
}

/// The generation holding an active's last record: its current one when
/// that holds records, else the one before.
/// The witness vote as the pure rules take it.
fn vote(wv: &WitnessView) -> witness::core::Vote {
    witness::core::Vote {
        held: wv.held,
        acquired_at: wv.acquired_at,
        error: wv.error.clone(),
    }
}

fn active_generation(store: &Store) -> u64 {
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
const REDELIVERY_MARGIN: Duration = Duration::from_secs(300);
/// Where a node keeps the redelivery its last lossy activation asked for.
const REDELIVERY_FILE: &str = "redelivery.json";
/// How long after a lossy activation a restart of the same node asks for
/// the redelivery again.
const REDELIVERY_REPEAT: Duration = Duration::from_secs(3600);

/// The redelivery time a lossy activation of this node asked for, if it
/// was less than `REDELIVERY_REPEAT` ago.
fn recent_redelivery(data_dir: &Path) -> Option<u64> {
    let bytes = std::fs::read(data_dir.join(REDELIVERY_FILE)).ok()?;
    if bytes.len() > 4096 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let at = v["at_us"].as_u64()?;
    let age = witness::witness::now_us().saturating_sub(at);
    (age < REDELIVERY_REPEAT.as_micros() as u64).then(|| v["since_us"].as_u64())?
}

/// The commit time (µs) of the record at `lsn`, if the log still holds it.
fn last_record_time(logs: &Path, lsn: Lsn) -> Option<u64> {
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

/// The database's LSN, the log's epoch and its current (or next) generation.
fn log_position(paths: &shipper::store::StorePaths) -> Result<(Lsn, Epoch, Generation)> {
    let current = paths.logs.join(shipper::format::CURRENT_FILE_NAME);
    let conn = shipper::store::open_read_only(&paths.database)?;
    let (lsn, _) = shipper::apply::read_guard(&conn)?;
    drop(conn);
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
fn prepare_log(
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
    if current.exists() && shipper::log::current_has_frames(&paths.logs)? {
        return Ok(());
    }
    let log_end = match sealed.last() {
        Some((_, p)) => Some(shipper::log::read_trailer(p)?.hash_lsn),
        None => None,
    };
    if log_end.is_some_and(|end| end >= lsn) {
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
