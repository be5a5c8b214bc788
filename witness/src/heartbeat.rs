//! Heartbeats between the two nodes: one small JSON datagram (UDP) every
//! `heartbeat-interval` each way. Each says who the sender is and what it
//! does (role, epoch, log position, copy health), acknowledges the last
//! heartbeat it received, and (from a passive) lends its vote to the active.
//! A datagram from another cluster, or from a node whose configuration
//! differs (its hash), is refused and reported, never counted.
//!
//! With a cluster key (`[cluster] key-file`), each datagram ends with an
//! HMAC-SHA256 of its JSON under the key, and one without a valid code is
//! refused: nobody without the key can lend a vote or fake a position. A
//! replayed genuine heartbeat is ignored: each carries a random id of its
//! sender's run and a sequence number, and only a newer number of the
//! current run, or a run never seen before, counts.
//!
//! A refused datagram is logged at most once per [`WARN_EVERY`] for each kind
//! of refusal and sender, with the count of those not logged meanwhile, so a
//! stream of bad datagrams cannot flood the log.

use std::collections::{HashMap, VecDeque};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use shipper::Epoch;

use crate::dial::Position;
use crate::quorum::Timing;

/// The largest heartbeat accepted (they are a few hundred bytes).
pub const MAX_DATAGRAM: usize = 4096;
/// Bytes of the authentication code at the end of a keyed heartbeat.
pub const MAC_LEN: usize = 32;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// The authentication code of `json` under `key`.
fn mac(key: &[u8], json: &[u8]) -> HmacSha256 {
    use hmac::{KeyInit, Mac};
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    m.update(json);
    m
}
/// Why a datagram is not a heartbeat this node counts.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("a datagram larger than {MAX_DATAGRAM} bytes ({len} bytes)")]
    TooLarge { len: usize },
    #[error("a heartbeat without an authentication code ({len} bytes)")]
    NoCode { len: usize },
    #[error(
        "a heartbeat whose authentication code does not match our cluster key (is [cluster] key-file the same key on both nodes?)"
    )]
    BadCode,
    #[error("an authenticated heartbeat, and this node has no cluster key ([cluster] key-file)")]
    KeyedButNoKey,
    #[error("not a heartbeat: {reason}")]
    NotAHeartbeat { reason: String },
    #[error("a heartbeat from cluster {cluster:?}, not {ours:?}")]
    OtherCluster { cluster: String, ours: String },
    #[error("a heartbeat of {why}")]
    NewerVersion { why: String },
    #[error("a heartbeat from node {node:?}, expected {expected:?}")]
    OtherNode { node: String, expected: String },
    #[error(
        "node {node} runs a different configuration (hash {hash}, ours {ours}): both nodes must use the same file"
    )]
    OtherConfig {
        node: String,
        hash: String,
        ours: String,
    },
}

impl Refusal {
    /// The kind of fault, whatever its details: what warnings are limited by.
    pub fn kind(&self) -> &'static str {
        match self {
            Refusal::TooLarge { .. } => "too-large",
            Refusal::NoCode { .. } => "no-code",
            Refusal::BadCode => "bad-code",
            Refusal::KeyedButNoKey => "keyed-but-no-key",
            Refusal::NotAHeartbeat { .. } => "not-a-heartbeat",
            Refusal::OtherCluster { .. } => "other-cluster",
            Refusal::NewerVersion { .. } => "newer-version",
            Refusal::OtherNode { .. } => "other-node",
            Refusal::OtherConfig { .. } => "other-config",
        }
    }
}

/// At most one warning per kind of refusal and sender in this time.
pub const WARN_EVERY: Duration = Duration::from_secs(10);
/// At most this many refusal warnings in all per [`WARN_EVERY`], whatever
/// the senders (a UDP source address is easily forged).
pub const WARN_BUDGET: u32 = 16;
/// Senders and kinds remembered for limiting.
const WARN_KEYS: usize = 64;

/// Decides which refusals are logged: one per kind and sender per window,
/// and no more than [`WARN_BUDGET`] per window in all. Time is given, so
/// that tests can run it on a fake clock.
#[derive(Debug)]
pub struct WarnLimiter {
    every: Duration,
    budget: u32,
    /// (kind, sender) -> (when last logged, refusals not logged since).
    seen: HashMap<(&'static str, SocketAddr), (Instant, u64)>,
    window: Option<Instant>,
    logged_in_window: u32,
    /// Refusals not logged that no remembered sender accounts for.
    unattributed: u64,
}

impl WarnLimiter {
    pub fn new(every: Duration, budget: u32) -> WarnLimiter {
        WarnLimiter {
            every,
            budget,
            seen: HashMap::new(),
            window: None,
            logged_in_window: 0,
            unattributed: 0,
        }
    }

    /// A refusal of `kind` from `from` at `now`: `Some(n)` to log it, where
    /// `n` refusals were not logged since the last warning it stands for
    /// (of this kind and sender, plus those no sender accounts for); `None`
    /// to count it and stay quiet.
    pub fn admit(&mut self, kind: &'static str, from: SocketAddr, now: Instant) -> Option<u64> {
        if self
            .window
            .is_none_or(|w| now.saturating_duration_since(w) >= self.every)
        {
            self.window = Some(now);
            self.logged_in_window = 0;
        }
        let key = (kind, from);
        let due = match self.seen.get(&key) {
            Some((last, _)) => now.saturating_duration_since(*last) >= self.every,
            None => true,
        };
        if !due || self.logged_in_window >= self.budget {
            match self.seen.get_mut(&key) {
                Some((_, n)) => *n += 1,
                None => self.unattributed += 1,
            }
            return None;
        }
        if !self.seen.contains_key(&key) && self.seen.len() >= WARN_KEYS {
            // Forget whom the window has passed for; if none, the oldest.
            let every = self.every;
            let before = self.seen.len();
            self.seen
                .retain(|_, (last, n)| now.saturating_duration_since(*last) < every || *n > 0);
            if self.seen.len() == before
                && let Some(oldest) = self
                    .seen
                    .iter()
                    .min_by_key(|(_, (t, _))| *t)
                    .map(|(k, _)| *k)
                && let Some((_, n)) = self.seen.remove(&oldest)
            {
                self.unattributed += n;
            }
        }
        self.logged_in_window += 1;
        let suppressed = self.seen.insert(key, (now, 0)).map_or(0, |(_, n)| n)
            + std::mem::take(&mut self.unattributed);
        Some(suppressed)
    }
}

/// How many sent heartbeats are remembered for acknowledgements.
pub const SENT_RING: usize = 256;
/// How many of the peer's earlier runs (boot ids) are remembered, so that
/// their heartbeats, replayed, are refused.
const RETIRED_BOOTS: usize = 64;

/// A random id for this run of the heartbeat link.
fn new_boot() -> u64 {
    use std::io::Read;
    let mut b = [0u8; 8];
    let random = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    match random {
        Ok(()) => u64::from_le_bytes(b).max(1),
        // Unique enough for telling runs apart without a key.
        Err(_) => (crate::witness::now_us() ^ u64::from(std::process::id()) << 40).max(1),
    }
}

/// What was last heard of the peer's runs: a heartbeat counts only if it is
/// newer than the last one of the same run, or of a run never seen before.
#[derive(Clone, Debug, Default)]
pub struct Freshness {
    boot: Option<u64>,
    seq: u64,
    retired: VecDeque<u64>,
}

impl Freshness {
    /// Whether `hb` is fresh; if so, it becomes the last one heard.
    pub fn admit(&mut self, hb: &Heartbeat) -> bool {
        if hb.boot == 0 {
            // A sender without run ids: as heartbeats always were.
            return true;
        }
        let fresh = match self.boot {
            Some(b) if b == hb.boot => hb.seq > self.seq,
            _ => !self.retired.contains(&hb.boot),
        };
        if fresh {
            if let Some(old) = self.boot.filter(|b| *b != hb.boot) {
                if self.retired.len() == RETIRED_BOOTS {
                    self.retired.pop_front();
                }
                self.retired.push_back(old);
            }
            self.boot = Some(hb.boot);
            self.seq = hb.seq;
        }
        fresh
    }
}

/// What a node is doing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Starting, or between roles.
    #[default]
    Starting,
    /// Replaying the active's log.
    Passive,
    /// Taking writes in its epoch.
    Active,
    /// Was active, lost quorum and stopped taking writes.
    Fenced,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Starting => "starting",
            Role::Passive => "passive",
            Role::Active => "active",
            Role::Fenced => "fenced",
        }
    }
}

/// A passive copy's health, as `move-cluster` checks it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyBrief {
    pub summary: String,
    pub copy_queue: u64,
    pub replay_queue: u64,
}

/// An active handing its role over (planned move): it has stopped intake
/// and sealed; `to` takes over once it has replayed `lsn`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handoff {
    pub to: String,
    pub lsn: shipper::Lsn,
    pub comment: String,
}

/// One heartbeat.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The datagram's format version (FORMAT.md, "Heartbeat datagram").
    #[serde(default = "shipper::FormatVersion::first")]
    pub version: shipper::FormatVersion,
    pub cluster: String,
    pub node: String,
    /// Random for each run of the sender: with `seq`, what tells a fresh
    /// heartbeat from a replayed or late one (0: a sender without it).
    #[serde(default)]
    pub boot: u64,
    /// Hash of the configuration file: both nodes must run the same one.
    pub config_hash: String,
    pub seq: u64,
    /// The last sequence number received from the peer (0: none yet).
    pub ack: u64,
    pub role: Role,
    pub paused: bool,
    /// The active's epoch, or the newest epoch this node knows.
    pub epoch: Epoch,
    /// From a passive: "you may be active in this epoch" (its vote).
    pub supports: Option<Epoch>,
    /// The log position: an active's last LSN and the generation holding it,
    /// a passive's replayed LSN and generation.
    pub position: Position,
    pub copy: Option<CopyBrief>,
    pub handoff: Option<Handoff>,
    /// The sender's store stopped by itself (a failed write or fsync) and
    /// it leaves the witness vote to this node: count it silent.
    #[serde(default)]
    pub store_failed: bool,
}

/// What this node knows of its peer.
#[derive(Clone, Debug, Default)]
pub struct PeerView {
    pub last: Option<Heartbeat>,
    pub heard_at: Option<Instant>,
    /// The peer's vote: the epoch it supports and until when.
    pub lease: Option<(Epoch, Instant)>,
    /// Why the last datagram was refused (foreign cluster, other config).
    pub problem: Option<String>,
}

impl PeerView {
    /// Takes in a fresh heartbeat from the peer, received at `received`:
    /// it becomes the last one heard, and its support (if any) lends the
    /// peer's vote as a lease from when *we sent* the heartbeat it
    /// acknowledges (`sent`: our recent heartbeats' numbers and send
    /// times), so a delayed datagram cannot stretch it. Returns the number
    /// to acknowledge (the latest received; a restarted peer counts from 1
    /// again, under a new boot id).
    pub fn receive(
        &mut self,
        hb: Heartbeat,
        received: Instant,
        sent: &VecDeque<(u64, Instant)>,
        timing: &Timing,
    ) -> u64 {
        if let Some(epoch) = hb.supports
            && let Some((_, at)) = sent.iter().find(|(s, _)| *s == hb.ack)
        {
            let until = *at + timing.peer_lease();
            self.lease = match self.lease {
                Some((e, t)) if e == epoch && t > until => Some((e, t)),
                _ => Some((epoch, until)),
            };
        }
        if hb.supports.is_none() {
            self.lease = None;
        }
        let ack = hb.seq;
        self.last = Some(hb);
        self.heard_at = Some(received);
        self.problem = None;
        ack
    }

    /// True when the peer was heard within `within`.
    pub fn alive(&self, within: Duration) -> bool {
        self.alive_at(within, Instant::now())
    }

    /// True when the peer was heard within `within` before `now`.
    pub fn alive_at(&self, within: Duration, now: Instant) -> bool {
        self.heard_at
            .is_some_and(|t| now.saturating_duration_since(t) < within)
    }
}

/// Where and as whom to heartbeat.
#[derive(Clone, Debug)]
pub struct LinkConfig {
    pub bind: SocketAddr,
    pub peer: SocketAddr,
    pub cluster: String,
    pub node: String,
    pub peer_node: String,
    pub config_hash: String,
    pub timing: Timing,
    /// The cluster key: heartbeats are authenticated when it is set.
    pub key: Option<Arc<[u8]>>,
}

impl LinkConfig {
    /// The datagram for `hb`: its JSON, then its code when keyed.
    pub fn seal(&self, hb: &Heartbeat) -> Vec<u8> {
        use hmac::Mac;
        let mut out = serde_json::to_vec(hb).expect("heartbeats serialise");
        if let Some(key) = &self.key {
            let code = mac(key, &out).finalize().into_bytes();
            out.extend_from_slice(&code);
        }
        out
    }

    /// The heartbeat in `bytes`, checked: size, authentication code,
    /// cluster, node, configuration.
    pub fn open(&self, bytes: &[u8]) -> Result<Heartbeat, Refusal> {
        use hmac::Mac;
        if bytes.len() > MAX_DATAGRAM {
            return Err(Refusal::TooLarge { len: bytes.len() });
        }
        let json = match &self.key {
            Some(key) => {
                let Some(split) = bytes.len().checked_sub(MAC_LEN) else {
                    return Err(Refusal::NoCode { len: bytes.len() });
                };
                let (json, code) = bytes.split_at(split);
                mac(key, json)
                    .verify_slice(code)
                    .map_err(|_| Refusal::BadCode)?;
                json
            }
            None => bytes,
        };
        let hb: Heartbeat = match serde_json::from_slice(json) {
            Ok(hb) => hb,
            Err(e) => {
                let keyed = self.key.is_none()
                    && bytes.len() > MAC_LEN
                    && serde_json::from_slice::<Heartbeat>(&bytes[..bytes.len() - MAC_LEN]).is_ok();
                return Err(if keyed {
                    Refusal::KeyedButNoKey
                } else {
                    Refusal::NotAHeartbeat {
                        reason: e.to_string(),
                    }
                });
            }
        };
        if let Some(why) = hb.version.refusal() {
            return Err(Refusal::NewerVersion { why });
        }
        if hb.cluster != self.cluster {
            return Err(Refusal::OtherCluster {
                cluster: hb.cluster,
                ours: self.cluster.clone(),
            });
        }
        if hb.node != self.peer_node {
            return Err(Refusal::OtherNode {
                node: hb.node,
                expected: self.peer_node.clone(),
            });
        }
        if hb.config_hash != self.config_hash {
            return Err(Refusal::OtherConfig {
                node: hb.node,
                hash: hb.config_hash,
                ours: self.config_hash.clone(),
            });
        }
        Ok(hb)
    }
}

/// The running heartbeat link: what we send, what we heard.
#[derive(Debug)]
pub struct Link {
    pub ours: Mutex<Heartbeat>,
    pub view: Mutex<PeerView>,
    socket: UdpSocket,
    local: SocketAddr,
    /// Whether heartbeats carry and need the cluster key's code.
    pub authenticated: bool,
}

impl Link {
    /// Binds the heartbeat address and starts the thread that sends and
    /// receives until `shutdown` is set.
    pub fn start(
        cfg: LinkConfig,
        shutdown: Arc<AtomicBool>,
    ) -> std::io::Result<(Arc<Link>, JoinHandle<()>)> {
        let socket = UdpSocket::bind(cfg.bind)?;
        let local = socket.local_addr()?;
        let link = Arc::new(Link {
            ours: Mutex::new(Heartbeat {
                cluster: cfg.cluster.clone(),
                node: cfg.node.clone(),
                boot: new_boot(),
                config_hash: cfg.config_hash.clone(),
                ..Default::default()
            }),
            view: Mutex::new(PeerView::default()),
            socket: socket.try_clone()?,
            local,
            authenticated: cfg.key.is_some(),
        });
        let l = link.clone();
        let h = std::thread::Builder::new()
            .name("logship-heartbeat".into())
            .spawn(move || l.run(socket, cfg, shutdown))?;
        Ok((link, h))
    }

    /// Sends a heartbeat now rather than at the next interval (a role
    /// change the peer should learn at once).
    pub fn poke(&self) {
        let _ = self.socket.send_to(&[], self.local);
    }

    /// A copy of what the peer last said, and when.
    pub fn peer(&self) -> PeerView {
        self.view.lock().expect("view lock").clone()
    }

    fn run(&self, socket: UdpSocket, cfg: LinkConfig, shutdown: Arc<AtomicBool>) {
        let mut seq = 0u64;
        let mut sent: VecDeque<(u64, Instant)> = VecDeque::with_capacity(SENT_RING);
        let mut next_send = Instant::now();
        let mut buf = vec![0u8; MAX_DATAGRAM + 1];
        let mut last_send_error: Option<String> = None;
        let mut freshness = Freshness::default();
        let mut warnings = WarnLimiter::new(WARN_EVERY, WARN_BUDGET);
        while !shutdown.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now >= next_send {
                seq += 1;
                let msg = {
                    let mut ours = self.ours.lock().expect("ours lock");
                    ours.seq = seq;
                    cfg.seal(&ours)
                };
                if sent.len() == SENT_RING {
                    sent.pop_front();
                }
                sent.push_back((seq, Instant::now()));
                match socket.send_to(&msg, cfg.peer) {
                    Ok(_) => last_send_error = None,
                    Err(e) => {
                        let e = e.to_string();
                        if last_send_error.as_ref() != Some(&e) {
                            tracing::debug!(peer = %cfg.peer, error = %e, "heartbeat not sent");
                        }
                        last_send_error = Some(e);
                    }
                }
                next_send = Instant::now() + cfg.timing.interval;
            }
            let wait = next_send
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1));
            let _ = socket.set_read_timeout(Some(wait));
            let (n, from) = match socket.recv_from(&mut buf) {
                Ok(r) => r,
                Err(_) => continue,
            };
            if from == self.local && n == 0 {
                next_send = Instant::now();
                continue;
            }
            let received = Instant::now();
            match cfg.open(&buf[..n]) {
                Ok(hb) if !freshness.admit(&hb) => {
                    // Replayed, or overtaken by a newer one: it says nothing new.
                    tracing::debug!(from = %from, boot = hb.boot, seq = hb.seq, "stale heartbeat ignored");
                }
                Ok(hb) => {
                    tracing::trace!(from = %hb.node, seq = hb.seq, role = hb.role.name(), epoch = %hb.epoch, "heartbeat");
                    let mut view = self.view.lock().expect("view lock");
                    let ack = view.receive(hb, received, &sent, &cfg.timing);
                    self.ours.lock().expect("ours lock").ack = ack;
                }
                Err(refusal) => {
                    let problem = refusal.to_string();
                    match warnings.admit(refusal.kind(), from, received) {
                        Some(0) => tracing::warn!(from = %from, %problem, "heartbeat refused"),
                        Some(suppressed) => tracing::warn!(
                            from = %from,
                            %problem,
                            suppressed,
                            "heartbeat refused ({suppressed} more refusals not logged since the last warning)"
                        ),
                        None => {}
                    }
                    self.view.lock().expect("view lock").problem = Some(problem);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(
        bind: SocketAddr,
        peer: SocketAddr,
        node: &str,
        peer_node: &str,
        hash: &str,
    ) -> LinkConfig {
        LinkConfig {
            bind,
            peer,
            cluster: "c".into(),
            node: node.into(),
            peer_node: peer_node.into(),
            config_hash: hash.into(),
            timing: Timing {
                interval: Duration::from_millis(20),
                dead_after: Duration::from_millis(200),
            },
            key: None,
        }
    }

    fn keyed(mut c: LinkConfig, key: &str) -> LinkConfig {
        c.key = Some(key.as_bytes().into());
        c
    }

    fn free_addr() -> SocketAddr {
        UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    }

    fn wait(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_supporting_peer_lends_a_lease_anchored_at_our_send_time() {
        let (a_addr, b_addr) = (free_addr(), free_addr());
        let stop = Arc::new(AtomicBool::new(false));
        let (a, ha) = Link::start(cfg(a_addr, b_addr, "a", "b", "h"), stop.clone()).unwrap();
        let (b, hb) = Link::start(cfg(b_addr, a_addr, "b", "a", "h"), stop.clone()).unwrap();
        a.ours.lock().unwrap().role = Role::Active;
        a.ours.lock().unwrap().epoch = Epoch(3);
        wait("b hears a", || {
            b.peer().last.is_some_and(|h| h.role == Role::Active)
        });
        assert!(a.peer().lease.is_none());
        b.ours.lock().unwrap().supports = Some(Epoch(3));
        b.poke();
        wait("a holds b's vote", || a.peer().lease.is_some());
        let (e, until) = a.peer().lease.unwrap();
        assert_eq!(e, Epoch(3));
        assert!(until <= Instant::now() + Duration::from_millis(180));
        // Withdrawn at once.
        b.ours.lock().unwrap().supports = None;
        b.poke();
        wait("a loses b's vote", || a.peer().lease.is_none());
        stop.store(true, Ordering::Relaxed);
        ha.join().unwrap();
        hb.join().unwrap();
    }

    #[test]
    fn a_restarted_active_still_earns_the_peers_vote() {
        let (a_addr, b_addr) = (free_addr(), free_addr());
        let stop_b = Arc::new(AtomicBool::new(false));
        let (b, hb) = Link::start(cfg(b_addr, a_addr, "b", "a", "h"), stop_b.clone()).unwrap();
        b.ours.lock().unwrap().supports = Some(Epoch(3));
        for round in 0..2 {
            let stop_a = Arc::new(AtomicBool::new(false));
            let (a, ha) = Link::start(cfg(a_addr, b_addr, "a", "b", "h"), stop_a.clone()).unwrap();
            a.ours.lock().unwrap().role = Role::Active;
            let started = Instant::now();
            wait("a holds b's vote", || a.peer().lease.is_some());
            if round == 0 {
                // Far enough that the new "a" would need seconds to count
                // back up to it, if b kept acknowledging the old numbers.
                wait("a to count past 250", || a.ours.lock().unwrap().seq > 250);
            } else {
                assert!(
                    started.elapsed() < Duration::from_secs(2),
                    "{:?}",
                    started.elapsed()
                );
            }
            stop_a.store(true, Ordering::Relaxed);
            ha.join().unwrap();
        }
        stop_b.store(true, Ordering::Relaxed);
        hb.join().unwrap();
    }

    #[test]
    fn a_peer_with_another_configuration_is_refused_and_named() {
        let (a_addr, b_addr) = (free_addr(), free_addr());
        let stop = Arc::new(AtomicBool::new(false));
        let (a, ha) = Link::start(cfg(a_addr, b_addr, "a", "b", "h1"), stop.clone()).unwrap();
        let (_b, hb) = Link::start(cfg(b_addr, a_addr, "b", "a", "h2"), stop.clone()).unwrap();
        wait("a refuses b", || a.peer().problem.is_some());
        let p = a.peer();
        assert!(p.last.is_none() && p.heard_at.is_none());
        assert!(p.problem.unwrap().contains("different configuration"));
        stop.store(true, Ordering::Relaxed);
        ha.join().unwrap();
        hb.join().unwrap();
    }

    #[test]
    fn a_heartbeat_of_a_newer_format_is_refused_not_guessed_at() {
        let (a_addr, b_addr) = (free_addr(), free_addr());
        let a_cfg = cfg(a_addr, b_addr, "a", "b", "h");
        let b_cfg = cfg(b_addr, a_addr, "b", "a", "h");
        let mut hb = Heartbeat {
            cluster: "c".into(),
            node: "b".into(),
            config_hash: "h".into(),
            ..Default::default()
        };
        assert!(a_cfg.open(&b_cfg.seal(&hb)).is_ok());
        hb.version = shipper::FormatVersion(2);
        let e = a_cfg.open(&b_cfg.seal(&hb)).unwrap_err();
        assert!(matches!(e, Refusal::NewerVersion { .. }), "{e:?}");
        assert!(e.to_string().contains("format version 2"), "{e}");
        // A heartbeat of a build that wrote no version is version 1.
        let mut v = serde_json::to_value(&hb).unwrap();
        v.as_object_mut().unwrap().remove("version");
        let old = serde_json::to_vec(&v).unwrap();
        assert_eq!(a_cfg.open(&old).unwrap().version, shipper::FormatVersion(1));
    }

    #[test]
    fn with_a_cluster_key_only_heartbeats_under_that_key_count() {
        let (a_addr, b_addr) = (free_addr(), free_addr());
        let a_cfg = keyed(
            cfg(a_addr, b_addr, "a", "b", "h"),
            "the cluster key, 32 bytes long..",
        );
        // The datagram carries its code; a flipped byte, another key, no
        // code or no key at all are each refused, and say so.
        let hb = Heartbeat {
            cluster: "c".into(),
            node: "b".into(),
            config_hash: "h".into(),
            seq: 7,
            supports: Some(Epoch(3)),
            ..Default::default()
        };
        let b_cfg = keyed(
            cfg(b_addr, a_addr, "b", "a", "h"),
            "the cluster key, 32 bytes long..",
        );
        let good = b_cfg.seal(&hb);
        assert_eq!(a_cfg.open(&good).unwrap(), hb);
        // A changed value that keeps the JSON valid: only the code tells.
        let at = good.windows(7).position(|w| w == b"\"seq\":7").unwrap() + 6;
        let mut altered = good.clone();
        altered[at] = b'8';
        assert!(
            a_cfg
                .open(&altered)
                .unwrap_err()
                .to_string()
                .contains("does not match our cluster key")
        );
        let other = keyed(
            cfg(b_addr, a_addr, "b", "a", "h"),
            "another key, also long enough",
        );
        assert!(
            a_cfg
                .open(&other.seal(&hb))
                .unwrap_err()
                .to_string()
                .contains("does not match")
        );
        let plain = cfg(b_addr, a_addr, "b", "a", "h").seal(&hb);
        assert!(
            a_cfg
                .open(&plain)
                .unwrap_err()
                .to_string()
                .contains("authentication code")
        );
        assert!(
            a_cfg
                .open(b"{}")
                .unwrap_err()
                .to_string()
                .contains("without an authentication code")
        );
        let keyless = cfg(a_addr, b_addr, "a", "b", "h");
        assert!(
            keyless
                .open(&good)
                .unwrap_err()
                .to_string()
                .contains("no cluster key")
        );

        // Over the wire: a forger without the key lends no vote.
        let stop = Arc::new(AtomicBool::new(false));
        let (a, ha) = Link::start(a_cfg, stop.clone()).unwrap();
        a.ours.lock().unwrap().role = Role::Active;
        let forger = UdpSocket::bind(b_addr).unwrap();
        for ack in 1..40 {
            let fake = Heartbeat { ack, ..hb.clone() };
            forger.send_to(&plain_seal(&fake), a_addr).unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
        wait("a refuses the forgeries", || a.peer().problem.is_some());
        assert!(a.peer().lease.is_none() && a.peer().last.is_none());
        drop(forger);
        // The real peer, with the key, is heard and lends its vote.
        let (b, hb_thread) = Link::start(b_cfg, stop.clone()).unwrap();
        b.ours.lock().unwrap().supports = Some(Epoch(0));
        wait("a holds b's vote", || a.peer().lease.is_some());
        stop.store(true, Ordering::Relaxed);
        ha.join().unwrap();
        hb_thread.join().unwrap();
    }

    fn plain_seal(hb: &Heartbeat) -> Vec<u8> {
        serde_json::to_vec(hb).unwrap()
    }

    #[test]
    fn replayed_or_overtaken_heartbeats_are_ignored_even_with_a_valid_code() {
        let (a_addr, b_addr) = (free_addr(), free_addr());
        let key = "the cluster key, 32 bytes long..";
        let stop = Arc::new(AtomicBool::new(false));
        // A long lease, so that only a heartbeat can end it in this test.
        let mut a_cfg = keyed(cfg(a_addr, b_addr, "a", "b", "h"), key);
        a_cfg.timing.dead_after = Duration::from_secs(60);
        let (a, ha) = Link::start(a_cfg, stop.clone()).unwrap();
        a.ours.lock().unwrap().role = Role::Active;
        // Genuine datagrams of b, as captured on the wire. A vote with an
        // unknown `ack` neither grants nor withdraws the lease: a marker
        // that shows the datagrams before it were processed.
        let b_cfg = keyed(cfg(b_addr, a_addr, "b", "a", "h"), key);
        let wire = UdpSocket::bind(b_addr).unwrap();
        let send = |boot: u64, seq: u64, supports: Option<Epoch>, valid_ack: bool| {
            let ack = if valid_ack {
                a.ours.lock().unwrap().seq
            } else {
                u64::MAX
            };
            let hb = Heartbeat {
                cluster: "c".into(),
                node: "b".into(),
                config_hash: "h".into(),
                boot,
                seq,
                ack,
                supports,
                ..Default::default()
            };
            wire.send_to(&b_cfg.seal(&hb), a_addr).unwrap();
        };
        let heard = |boot: u64, seq: u64| {
            wait("a hears it", || {
                a.peer()
                    .last
                    .is_some_and(|h| h.boot == boot && h.seq == seq)
            })
        };
        wait("a has sent", || a.ours.lock().unwrap().seq > 0);
        send(7, 10, Some(Epoch(0)), true);
        heard(7, 10);
        assert!(a.peer().lease.is_some());
        // Older heartbeats of the same run, replayed: they withdraw nothing.
        send(7, 9, None, true);
        send(7, 10, None, true);
        send(7, 11, Some(Epoch(0)), false);
        heard(7, 11);
        assert!(a.peer().lease.is_some(), "a replay withdrew the vote");
        // b restarts: its new run counts from 1 and is heard.
        send(8, 1, Some(Epoch(0)), true);
        heard(8, 1);
        // The old run's heartbeats, replayed later, are refused.
        send(7, 500, None, true);
        send(8, 2, Some(Epoch(0)), false);
        heard(8, 2);
        assert!(
            a.peer().lease.is_some(),
            "an old run's heartbeat withdrew the vote"
        );
        // A genuine newer one does withdraw it.
        send(8, 3, None, true);
        wait("the vote withdrawn", || a.peer().lease.is_none());
        stop.store(true, Ordering::Relaxed);
        ha.join().unwrap();
    }

    #[test]
    fn refusals_of_two_alternating_kinds_are_logged_once_per_window_with_counts() {
        let every = Duration::from_secs(10);
        let mut w = WarnLimiter::new(every, WARN_BUDGET);
        let peer: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        let other: SocketAddr = "127.0.0.2:7000".parse().unwrap();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // 1000 datagrams, two kinds alternating, 5 ms apart (5 s in all):
        // one warning for each kind, the first of its kind.
        let mut logged = Vec::new();
        for i in 0..1000u64 {
            let kind = if i % 2 == 0 {
                "bad-code"
            } else {
                "other-config"
            };
            if let Some(n) = w.admit(kind, peer, at(i * 5)) {
                logged.push((i, kind, n));
            }
        }
        assert_eq!(logged, vec![(0, "bad-code", 0), (1, "other-config", 0)]);
        // Another sender is its own.
        assert_eq!(w.admit("bad-code", other, at(5000)), Some(0));
        // Still inside the window: quiet.
        assert_eq!(w.admit("bad-code", peer, at(9_999)), None);
        // Past it: the next of each kind is logged with what was not.
        assert_eq!(w.admit("bad-code", peer, at(10_000)), Some(500));
        // (other-config was first logged at 5 ms.)
        assert_eq!(w.admit("other-config", peer, at(10_004)), None);
        assert_eq!(w.admit("other-config", peer, at(10_005)), Some(500));
        assert_eq!(w.admit("other-config", peer, at(10_006)), None);
        assert_eq!(w.admit("other-config", peer, at(20_005)), Some(1));
    }

    #[test]
    fn refusals_from_many_forged_senders_are_logged_within_the_budget() {
        let every = Duration::from_secs(10);
        let mut w = WarnLimiter::new(every, WARN_BUDGET);
        let t0 = Instant::now();
        let mut logged = 0;
        for i in 0..5000u32 {
            let from = SocketAddr::from(([127, 0, (i >> 8) as u8, i as u8], 9));
            if w.admit(
                "not-a-heartbeat",
                from,
                t0 + Duration::from_micros(u64::from(i)),
            )
            .is_some()
            {
                logged += 1;
            }
        }
        assert_eq!(logged, WARN_BUDGET);
        assert!(w.seen.len() <= WARN_KEYS);
        // The next window logs again, and counts what was not logged.
        let from = SocketAddr::from(([127, 1, 0, 0], 9));
        let n = w.admit("not-a-heartbeat", from, t0 + every).unwrap();
        assert_eq!(n, 5000 - u64::from(WARN_BUDGET));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        const KEY: &str = "the cluster key, 32 bytes long..";

        fn configs() -> (LinkConfig, LinkConfig) {
            let (a, b) = (
                "127.0.0.1:1".parse().unwrap(),
                "127.0.0.1:2".parse().unwrap(),
            );
            (
                cfg(a, b, "a", "b", "h"),
                keyed(cfg(a, b, "a", "b", "h"), KEY),
            )
        }

        fn sender(key: bool) -> LinkConfig {
            let c = cfg(
                "127.0.0.1:2".parse().unwrap(),
                "127.0.0.1:1".parse().unwrap(),
                "b",
                "a",
                "h",
            );
            if key { keyed(c, KEY) } else { c }
        }

        fn heartbeat() -> impl Strategy<Value = Heartbeat> {
            (
                any::<(u64, u64, u64, bool, u64)>(),
                prop_oneof![
                    Just(Role::Starting),
                    Just(Role::Passive),
                    Just(Role::Active),
                    Just(Role::Fenced)
                ],
                proptest::option::of(any::<u64>()),
                any::<(u64, u64)>(),
                proptest::option::of((".{0,12}", any::<(u64, u64)>())),
                proptest::option::of((".{0,8}", any::<u64>(), ".{0,12}")),
            )
                .prop_map(
                    |(
                        (boot, seq, ack, paused, epoch),
                        role,
                        supports,
                        (lsn, generation),
                        copy,
                        handoff,
                    )| {
                        Heartbeat {
                            version: Default::default(),
                            cluster: "c".into(),
                            node: "b".into(),
                            boot,
                            config_hash: "h".into(),
                            seq,
                            ack,
                            role,
                            paused,
                            epoch: Epoch(epoch),
                            supports: supports.map(Epoch),
                            position: Position {
                                lsn: shipper::Lsn(lsn),
                                generation: shipper::Generation(generation),
                            },
                            copy: copy.map(|(summary, (copy_queue, replay_queue))| CopyBrief {
                                summary,
                                copy_queue,
                                replay_queue,
                            }),
                            handoff: handoff.map(|(to, lsn, comment)| Handoff {
                                to,
                                lsn: shipper::Lsn(lsn),
                                comment,
                            }),
                            store_failed: paused && seq % 2 == 0,
                        }
                    },
                )
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

            /// Any bytes: no panic; under a key, only what was sealed opens.
            #[test]
            fn the_decoder_takes_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..5000)) {
                let (plain, keyed) = configs();
                let _ = plain.open(&bytes);
                if let Ok(hb) = keyed.open(&bytes) {
                    prop_assert_eq!(sender(true).seal(&hb), bytes);
                }
            }

            /// JSON-shaped bytes reach the parser and the field checks.
            #[test]
            fn the_decoder_takes_any_json_like_text(text in r#"\{("[a-z_]{1,12}":("[a-z]{0,4}"|[0-9]{1,20}|null|true|\{\}),?){0,14}\}"#) {
                let (plain, _) = configs();
                let _ = plain.open(text.as_bytes());
            }

            /// What is sealed opens as itself; under a key, any changed,
            /// cut or extended datagram is refused.
            #[test]
            fn sealed_heartbeats_open_as_themselves_and_altered_ones_do_not(
                hb in heartbeat(),
                at in any::<proptest::sample::Index>(),
                flip in 1u8..=255,
                cut in any::<proptest::sample::Index>(),
                extra in proptest::collection::vec(any::<u8>(), 1..8),
            ) {
                let (plain, keyed) = configs();
                prop_assert_eq!(plain.open(&sender(false).seal(&hb)), Ok(hb.clone()));
                let sealed = sender(true).seal(&hb);
                prop_assert_eq!(keyed.open(&sealed), Ok(hb.clone()));
                let mut altered = sealed.clone();
                altered[at.index(sealed.len())] ^= flip;
                prop_assert!(keyed.open(&altered).is_err());
                let short = &sealed[..cut.index(sealed.len())];
                prop_assert!(keyed.open(short).is_err());
                let mut long = sealed.clone();
                long.extend_from_slice(&extra);
                prop_assert!(keyed.open(&long).is_err());
            }
        }
    }
}
