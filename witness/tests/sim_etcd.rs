//! A deterministic simulator of a cluster of N nodes that etcd arbitrates.
//! It runs the node's real decision rule (`witness::dcs::decide`) and the
//! real lease argument (`Lease::valid_until`) on a simulated clock; what it
//! models is the I/O around them, as the node daemon does it: a thread
//! that grants and keeps alive the node's lease, publishes its member value
//! and reads the cluster's keys; an acquisition that drains, claims the
//! next epoch (a create only one node wins) and then creates `leader`
//! under its lease; an active that writes only while its fence (the lease
//! `leader` is attached to) holds; copies that follow the active.
//!
//! etcd is modelled as what it is to its clients: linearizable, with
//! leases that expire a TTL after the last keep-alive *reached* it and take
//! their keys with them; while it has no quorum it answers nothing and
//! expires nothing, and when it has one again every lease gets a whole TTL
//! (as a new etcd leader's lessor does).
//!
//! Faults: a node crashing and restarting; a node cut off from etcd
//! (requests lost), or slow to it (up to 1.5 s a way); etcd without quorum
//! for a while; node clocks up to 9% slow or 10% fast.
//!
//! One seed decides a whole run; `LOGSHIP_SIM_SEED=<n>` replays it and
//! `LOGSHIP_SIM_SEEDS=<n>` sets how many run per cluster size. Checked
//! after every step: at most one node may write at any instant; no two
//! nodes are ever active in one epoch; writes go to epochs in the order
//! time goes; and once the faults are over, a node takes writes within
//! `QUIET_BOUND`.

mod common;

use common::Rng;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use shipper::{Epoch, Lsn};
use witness::dcs::{self, Decision, Leader, Lease, MemberState, View};

type T = u64;
const MS: T = 1_000;
const S: T = 1_000_000;
const STEP: T = MS;
const TTL: Duration = Duration::from_secs(2);
/// The daemon's read and publish interval, and its decision tick.
const INTERVAL: T = 200 * MS;
const TICK: T = 10 * MS;
/// A request not answered in this long failed.
const TIMEOUT: T = 500 * MS;
/// A failover's last copy of the old active's share.
const DRAIN: T = 50 * MS;
/// The faults end here; the run goes on quietly until `END`.
const FAULTS_END: T = 40 * S;
const END: T = 50 * S;
/// Once quiet, a node takes writes within: a lease lapsing (TTL), a new
/// one granted and published, a read, the drain, the claim and `leader`
/// (each request at most 50 ms a way when quiet), with slack.
const QUIET_BOUND: T = 4 * S;

/// A rule broken on purpose, to show the simulator catches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mutation {
    None,
    /// The naive lease: valid for its whole TTL after the keep-alive's
    /// answer came back (not 9/10 of it after it was sent).
    ReplyTime,
    /// A fenced active keeps its lease alive, and with it `leader`.
    KeepLease,
}

#[derive(Clone, Debug)]
enum Req {
    Grant,
    KeepAlive(u64),
    Revoke(u64),
    Put(MemberState, u64),
    Read,
    Claim(Epoch),
    Leader(Epoch, u64),
}

#[derive(Clone, Debug)]
enum Reply {
    Granted(u64),
    Kept(bool),
    Done,
    Snapshot(Snapshot),
    Won(bool),
    Failed,
}

#[derive(Clone, Debug, Default)]
struct Snapshot {
    leader: Option<Leader>,
    /// The lease `leader` is attached to.
    leader_lease: Option<u64>,
    members: Vec<MemberState>,
    newest: Epoch,
}

#[derive(Clone, Debug)]
struct InFlight {
    req: Req,
    /// Real time it was sent.
    sent: T,
    /// Local time it was sent.
    sent_local: Instant,
    arrive: T,
    back: T,
    applied: Option<Reply>,
    lost: bool,
}

#[derive(Clone, Debug, Default)]
struct Etcd {
    up: bool,
    next_lease: u64,
    /// Lease id to real expiry.
    leases: BTreeMap<u64, T>,
    leader: Option<(Leader, u64)>,
    members: BTreeMap<String, (MemberState, u64)>,
    epochs: BTreeMap<Epoch, String>,
}

impl Etcd {
    fn expire(&mut self, now: T) {
        if !self.up {
            return;
        }
        let dead: Vec<u64> = self
            .leases
            .iter()
            .filter(|(_, e)| **e <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in dead {
            self.drop_lease(id);
        }
    }

    fn drop_lease(&mut self, id: u64) {
        self.leases.remove(&id);
        if self.leader.as_ref().is_some_and(|(_, l)| *l == id) {
            self.leader = None;
        }
        self.members.retain(|_, (_, l)| *l != id);
    }

    fn apply(&mut self, node: &str, req: &Req, now: T) -> Reply {
        match req {
            Req::Grant => {
                self.next_lease += 1;
                self.leases
                    .insert(self.next_lease, now + TTL.as_micros() as T);
                Reply::Granted(self.next_lease)
            }
            Req::KeepAlive(id) => match self.leases.get_mut(id) {
                Some(e) => {
                    *e = now + TTL.as_micros() as T;
                    Reply::Kept(true)
                }
                None => Reply::Kept(false),
            },
            Req::Revoke(id) => {
                self.drop_lease(*id);
                Reply::Done
            }
            Req::Put(m, id) => {
                if self.leases.contains_key(id) {
                    self.members.insert(node.to_string(), (m.clone(), *id));
                }
                Reply::Done
            }
            Req::Read => Reply::Snapshot(Snapshot {
                leader: self.leader.as_ref().map(|(l, _)| l.clone()),
                leader_lease: self.leader.as_ref().map(|(_, id)| *id),
                members: self.members.values().map(|(m, _)| m.clone()).collect(),
                newest: self.epochs.keys().last().copied().unwrap_or_default(),
            }),
            Req::Claim(e) => {
                let won = !self.epochs.contains_key(e);
                if won {
                    self.epochs.insert(*e, node.to_string());
                }
                Reply::Won(won)
            }
            Req::Leader(e, id) => {
                let won = self.leader.is_none() && self.leases.contains_key(id);
                if won {
                    self.leader = Some((
                        Leader {
                            node: node.to_string(),
                            epoch: *e,
                        },
                        *id,
                    ));
                }
                Reply::Won(won)
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Acq {
    Draining { until: T },
    Claiming,
    Leading(Epoch),
}

#[derive(Clone, Debug)]
struct Node {
    name: String,
    preference: u32,
    /// Clock rate, per mille of real time.
    rate: u64,
    up: bool,
    /// Cut off from etcd, and the extra delay each way.
    cut: bool,
    slow: T,
    lease: Option<u64>,
    confirmed_sent: Option<Instant>,
    kept_at: Option<Instant>,
    read: Option<Snapshot>,
    read_sent: Option<Instant>,
    reachable: bool,
    inflight: Vec<InFlight>,
    next_interval: T,
    next_tick: T,
    active: Option<(Epoch, u64)>,
    acq: Option<Acq>,
    led_at: Option<Instant>,
    /// The last LSN it holds (its store's, or its copy's).
    lsn: u64,
    /// The lease `leader` was created under.
    led_lease: Option<u64>,
    /// The store's fence: writes are taken until then (local clock).
    fence: Option<Instant>,
}

struct Sim {
    rng: Rng,
    t: T,
    base: Instant,
    etcd: Etcd,
    nodes: Vec<Node>,
    mutation: Mutation,
    /// Which node was active in each epoch.
    actives: BTreeMap<Epoch, String>,
    /// The epoch of the last write, and the writes.
    last_write: Option<(T, Epoch)>,
    writes: u64,
    faults: u64,
    quiet_writer_at: Option<T>,
    violation: Option<String>,
    log: Vec<String>,
}

impl Sim {
    fn new(seed: u64, n: usize, mutation: Mutation) -> Sim {
        let mut rng = Rng(seed);
        let nodes = (0..n)
            .map(|i| Node {
                name: format!("n{i}"),
                preference: rng.range(0, n as u64) as u32,
                rate: rng.range(910, 1100),
                up: true,
                cut: false,
                slow: 0,
                lease: None,
                confirmed_sent: None,
                kept_at: None,
                read: None,
                read_sent: None,
                reachable: false,
                inflight: Vec::new(),
                next_interval: rng.below(INTERVAL),
                next_tick: 0,
                active: None,
                acq: None,
                led_at: None,
                lsn: 0,
                led_lease: None,
                fence: None,
            })
            .collect();
        Sim {
            rng,
            t: 0,
            base: Instant::now(),
            etcd: Etcd {
                up: true,
                ..Etcd::default()
            },
            nodes,
            mutation,
            actives: BTreeMap::new(),
            last_write: None,
            writes: 0,
            faults: 0,
            quiet_writer_at: None,
            violation: None,
            log: Vec::new(),
        }
    }

    fn local(&self, i: usize) -> Instant {
        self.base + Duration::from_micros(self.t * self.nodes[i].rate / 1000)
    }

    fn note(&mut self, s: String) {
        self.log
            .push(format!("{:>9.3}s {s}", self.t as f64 / S as f64));
        if self.log.len() > 60 {
            self.log.remove(0);
        }
    }

    fn send(&mut self, i: usize, req: Req) {
        let a = self.rng.range(MS / 2, 50 * MS) + self.nodes[i].slow;
        let b = self.rng.range(MS / 2, 50 * MS) + self.nodes[i].slow;
        let sent_local = self.local(i);
        let lost = self.nodes[i].cut || self.rng.chance(2_000);
        self.nodes[i].inflight.push(InFlight {
            req,
            sent: self.t,
            sent_local,
            arrive: self.t + a,
            back: self.t + a + b,
            applied: None,
            lost,
        });
    }

    fn pending(&self, i: usize, f: impl Fn(&Req) -> bool) -> bool {
        self.nodes[i].inflight.iter().any(|r| f(&r.req))
    }

    fn faults(&mut self) {
        if self.t >= FAULTS_END {
            if self.t == FAULTS_END {
                for i in 0..self.nodes.len() {
                    let n = &mut self.nodes[i];
                    n.cut = false;
                    n.slow = 0;
                    if !n.up {
                        self.restart(i);
                    }
                }
                if !self.etcd.up {
                    self.etcd_back();
                }
            }
            return;
        }
        let n = self.nodes.len();
        if self.rng.chance(300) {
            let i = self.rng.below(n as u64) as usize;
            if self.nodes[i].up {
                self.faults += 1;
                self.note(format!("{} crashes", self.nodes[i].name));
                let nd = &mut self.nodes[i];
                nd.up = false;
                nd.inflight.clear();
            } else {
                self.restart(i);
            }
        }
        if self.rng.chance(if self.nodes.iter().any(|n| n.cut) {
            1_000
        } else {
            300
        }) {
            let i = self.rng.below(n as u64) as usize;
            self.faults += 1;
            let nd = &mut self.nodes[i];
            nd.cut = !nd.cut;
            let s = format!(
                "{} {} etcd",
                nd.name,
                if nd.cut { "cut from" } else { "reaches" }
            );
            self.note(s);
        }
        if self.rng.chance(100) {
            let i = self.rng.below(n as u64) as usize;
            self.faults += 1;
            let slow = if self.nodes[i].slow > 0 {
                0
            } else {
                self.rng.range(100 * MS, 1500 * MS)
            };
            self.nodes[i].slow = slow;
            let s = format!("{} slow to etcd by {} ms", self.nodes[i].name, slow / MS);
            self.note(s);
        }
        if self.rng.chance(300) {
            // The daemon's loop stalls (a long step, no CPU); its etcd
            // thread goes on.
            let i = self.rng.below(n as u64) as usize;
            self.faults += 1;
            let d = self.rng.range(100 * MS, 1500 * MS);
            self.nodes[i].next_tick = self.t + d;
            let s = format!("{} stalls {} ms", self.nodes[i].name, d / MS);
            self.note(s);
        }
        if self.rng.chance(40) {
            self.faults += 1;
            if self.etcd.up {
                self.etcd.up = false;
                self.note("etcd loses quorum".into());
            } else {
                self.etcd_back();
            }
        }
    }

    fn etcd_back(&mut self) {
        self.etcd.up = true;
        let t = self.t;
        for e in self.etcd.leases.values_mut() {
            *e = t + TTL.as_micros() as T;
        }
        self.note("etcd has quorum again: every lease renewed".into());
    }

    fn restart(&mut self, i: usize) {
        self.faults += 1;
        let lsn = self.nodes[i].lsn;
        let nd = &mut self.nodes[i];
        // A new process: nothing but what it holds on disk.
        *nd = Node {
            up: true,
            lease: None,
            confirmed_sent: None,
            kept_at: None,
            read: None,
            read_sent: None,
            reachable: false,
            inflight: Vec::new(),
            active: None,
            acq: None,
            led_at: None,
            led_lease: None,
            fence: None,
            lsn,
            ..nd.clone()
        };
        self.note(format!("{} restarts", self.nodes[i].name));
    }

    /// Requests reaching etcd and replies reaching nodes.
    fn network(&mut self) {
        self.etcd.expire(self.t);
        for i in 0..self.nodes.len() {
            if !self.nodes[i].up {
                continue;
            }
            let name = self.nodes[i].name.clone();
            let t = self.t;
            for r in &mut self.nodes[i].inflight {
                if r.applied.is_none() && !r.lost && r.arrive <= t {
                    r.applied = Some(if self.etcd.up {
                        self.etcd.apply(&name, &r.req, t)
                    } else {
                        Reply::Failed
                    });
                }
            }
            let mut done = Vec::new();
            self.nodes[i].inflight.retain(|r| {
                let answered = !r.lost && r.back <= t && r.back <= r.sent + TIMEOUT;
                let timed_out = t >= r.sent + TIMEOUT && !answered;
                if answered || timed_out {
                    done.push(r.clone());
                    false
                } else {
                    true
                }
            });
            for r in done {
                let reply = if r.lost || r.back > r.sent + TIMEOUT {
                    Reply::Failed
                } else {
                    r.applied.clone().unwrap_or(Reply::Failed)
                };
                self.on_reply(i, r.req, r.sent_local, reply);
            }
        }
    }

    fn on_reply(&mut self, i: usize, req: Req, sent: Instant, reply: Reply) {
        let confirmed = match self.mutation {
            Mutation::ReplyTime => self.local(i),
            _ => sent,
        };
        let nd = &mut self.nodes[i];
        nd.reachable = !matches!(reply, Reply::Failed);
        match (req, reply) {
            (Req::Grant, Reply::Granted(id)) => {
                nd.lease = Some(id);
                nd.confirmed_sent = Some(confirmed);
                nd.kept_at = Some(sent);
            }
            (Req::KeepAlive(id), Reply::Kept(true)) if nd.lease == Some(id) => {
                nd.confirmed_sent = Some(confirmed);
            }
            (Req::KeepAlive(id), Reply::Kept(false)) if nd.lease == Some(id) => {
                nd.lease = None;
                nd.confirmed_sent = None;
            }
            (Req::Read, Reply::Snapshot(s)) => {
                nd.read = Some(s);
                nd.read_sent = Some(sent);
            }
            (Req::Claim(e), Reply::Won(true)) if nd.acq == Some(Acq::Claiming) => {
                nd.acq = Some(Acq::Leading(e));
                if let Some(id) = nd.lease {
                    self.send(i, Req::Leader(e, id));
                } else {
                    nd.acq = None;
                }
            }
            (Req::Leader(e, id), Reply::Won(true)) if nd.acq == Some(Acq::Leading(e)) => {
                nd.acq = None;
                nd.led_at = Some(sent);
                nd.led_lease = Some(id);
                nd.active = Some((e, nd.lsn));
                let name = nd.name.clone();
                self.nodes[i].fence = self.lease_of(i).valid_until();
                if let Some(other) = self.actives.insert(e, name.clone()) {
                    self.violation = Some(format!("{other} and {name} both active in epoch {e}"));
                }
                self.note(format!("{name} active in epoch {e}"));
            }
            // Whether `leader` was made is unknown: the lease it would be
            // under is dropped, so that it lapses if it was.
            (Req::Leader(_, id), Reply::Failed) => {
                nd.acq = None;
                if nd.lease == Some(id) {
                    self.drop_lease(i);
                }
            }
            (Req::Claim(_) | Req::Leader(..), _) => nd.acq = None,
            _ => {}
        }
    }

    fn node_step(&mut self, i: usize) {
        if !self.nodes[i].up {
            return;
        }
        let now = self.local(i);
        // The etcd thread.
        if self.nodes[i].lease.is_none() {
            if !self.pending(i, |r| matches!(r, Req::Grant)) {
                self.send(i, Req::Grant);
            }
        } else if self.nodes[i].kept_at.is_none_or(|k| now >= k + TTL / 4)
            && !self.pending(i, |r| matches!(r, Req::KeepAlive(_)))
        {
            let id = self.nodes[i].lease.unwrap();
            self.nodes[i].kept_at = Some(now);
            self.send(i, Req::KeepAlive(id));
        }
        if self.t >= self.nodes[i].next_interval {
            self.nodes[i].next_interval = self.t + INTERVAL * 1000 / self.nodes[i].rate;
            if let Some(id) = self.nodes[i].lease {
                let m = self.member(i);
                self.send(i, Req::Put(m, id));
            }
            if !self.pending(i, |r| matches!(r, Req::Read)) {
                self.send(i, Req::Read);
            }
        }
        // Copies follow the active while it runs.
        if self.nodes[i].active.is_none()
            && let Some(l) = self.nodes[i].read.as_ref().and_then(|r| r.leader.clone())
            && let Some(a) = self.nodes.iter().find(|n| n.name == l.node && n.up)
            && let Some((_, lsn)) = a.active
            && self.rng.chance(50_000)
        {
            self.nodes[i].lsn = self.nodes[i].lsn.max(lsn);
        }
        if let Some(Acq::Draining { until }) = self.nodes[i].acq
            && self.t >= until
        {
            self.nodes[i].acq = Some(Acq::Claiming);
            let e = Epoch(self.nodes[i].read.as_ref().map(|r| r.newest.0).unwrap_or(0) + 1);
            self.send(i, Req::Claim(e));
        }
        if self.t < self.nodes[i].next_tick {
            return;
        }
        self.nodes[i].next_tick = self.t + TICK;
        let d = dcs::decide(&self.view(i), now);
        match d {
            Decision::StayActive { until } => {
                let nd = &mut self.nodes[i];
                nd.fence = nd.fence.max(Some(until));
            }
            Decision::Fence(why) => {
                let nd = &mut self.nodes[i];
                let s = format!("{} fences: {why:?}", nd.name);
                nd.active = None;
                nd.led_lease = None;
                nd.fence = None;
                self.note(s);
                // The lease `leader` is under is dropped, so that it lapses.
                if self.mutation != Mutation::KeepLease {
                    self.drop_lease(i);
                }
            }
            // (Not while its own `leader` create is under way: the daemon
            // makes it in the loop's thread, so no decision comes between.)
            Decision::Wait(dcs::WaitReason::OwnStaleLeader)
                if self.mutation != Mutation::KeepLease
                    && self.nodes[i].acq.is_none()
                    && self.nodes[i].lease.is_some()
                    && self.nodes[i].read.as_ref().and_then(|r| r.leader_lease)
                        == self.nodes[i].lease =>
            {
                self.drop_lease(i);
            }
            Decision::Acquire { .. } if self.nodes[i].acq.is_none() => {
                self.nodes[i].acq = Some(Acq::Draining {
                    until: self.t + DRAIN,
                });
            }
            _ => {}
        }
    }

    /// Revokes the node's lease and forgets it (the etcd thread grants
    /// another).
    fn drop_lease(&mut self, i: usize) {
        let nd = &mut self.nodes[i];
        if let Some(id) = nd.lease.take() {
            nd.confirmed_sent = None;
            self.send(i, Req::Revoke(id));
        }
    }

    fn lease_of(&self, i: usize) -> Lease {
        let nd = &self.nodes[i];
        // An active counts only the lease `leader` is attached to.
        let ours = nd.active.is_none() || (nd.lease.is_some() && nd.lease == nd.led_lease);
        Lease {
            ttl: match self.mutation {
                Mutation::ReplyTime => TTL * 10 / 9,
                _ => TTL,
            },
            confirmed_sent: nd.confirmed_sent.filter(|_| ours),
        }
    }

    fn view(&self, i: usize) -> View {
        let nd = &self.nodes[i];
        let read = nd.read.clone().unwrap_or_default();
        let leader = match (nd.active, nd.led_at, nd.read_sent) {
            (Some((e, _)), Some(led), Some(sent)) if sent < led => Some(Leader {
                node: nd.name.clone(),
                epoch: e,
            }),
            (Some((e, _)), Some(_), None) => Some(Leader {
                node: nd.name.clone(),
                epoch: e,
            }),
            _ => read.leader.clone(),
        };
        View {
            me: nd.name.clone(),
            reachable: nd.reachable,
            lease: self.lease_of(i),
            leader,
            members: read.members,
            newest_epoch: read.newest,
            active_in: nd.active.map(|(e, _)| e),
            lagged_allowed: false,
            handoff: None,
        }
    }

    fn member(&self, i: usize) -> MemberState {
        let nd = &self.nodes[i];
        MemberState {
            node: nd.name.clone(),
            received: Lsn(nd.lsn),
            replayed: Lsn(nd.lsn),
            able: true,
            paused: false,
            lagged: false,
            preference: nd.preference,
        }
    }

    /// Whether node `i` may write now: active, and its fence holds.
    fn writable(&self, i: usize) -> bool {
        let nd = &self.nodes[i];
        nd.up && nd.active.is_some() && nd.fence.is_some_and(|u| u > self.local(i))
    }

    fn check(&mut self) -> Result<(), String> {
        if let Some(v) = self.violation.take() {
            return Err(v);
        }
        let writers: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.writable(*i))
            .collect();
        if writers.len() > 1 {
            let names: Vec<&str> = writers
                .iter()
                .map(|i| self.nodes[*i].name.as_str())
                .collect();
            return Err(format!("two writers at once: {names:?}"));
        }
        if let Some(&w) = writers.first() {
            let (e, _) = self.nodes[w].active.unwrap();
            if let Some((_, last)) = self.last_write
                && e < last
            {
                return Err(format!(
                    "{} writes in epoch {e} after epoch {last} was written in",
                    self.nodes[w].name
                ));
            }
            if self.rng.chance(100_000) {
                self.writes += 1;
                self.last_write = Some((self.t, e));
                let nd = &mut self.nodes[w];
                nd.lsn += 1;
                nd.active = Some((e, nd.lsn));
            }
            if self.t >= FAULTS_END && self.quiet_writer_at.is_none() {
                self.quiet_writer_at = Some(self.t);
            }
        }
        if self.t >= FAULTS_END + QUIET_BOUND && self.quiet_writer_at.is_none() {
            return Err(format!(
                "no node takes writes {} s after the faults ended",
                QUIET_BOUND / S
            ));
        }
        Ok(())
    }

    fn run(mut self) -> Result<(u64, u64), String> {
        while self.t < END {
            self.faults();
            self.network();
            for i in 0..self.nodes.len() {
                self.node_step(i);
            }
            if let Err(e) = self.check() {
                return Err(format!("{e}\nlast events:\n{}", self.log.join("\n")));
            }
            self.t += STEP;
        }
        Ok((self.faults, self.writes))
    }
}

fn seeds() -> (u64, u64) {
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    match env("LOGSHIP_SIM_SEED") {
        Some(one) => (one, 1),
        None => (1, env("LOGSHIP_SIM_SEEDS").unwrap_or(300)),
    }
}

fn run_all(n: usize) {
    let (first, count) = seeds();
    let (mut faults, mut writes) = (0, 0);
    for seed in first..first + count {
        match Sim::new(seed, n, Mutation::None).run() {
            Ok((f, w)) => {
                faults += f;
                writes += w;
            }
            Err(e) => panic!(
                "N = {n}, seed {seed}: {e}\nreplay: LOGSHIP_SIM_SEED={seed} cargo test -p witness --test sim_etcd"
            ),
        }
    }
    eprintln!("N = {n}: {count} seeds, {faults} faults, {writes} writes");
    assert!(writes > 0 && faults > 0);
}

#[test]
fn three_nodes_keep_one_writer_and_recover() {
    run_all(3);
}

#[test]
fn five_nodes_keep_one_writer_and_recover() {
    run_all(5);
}

/// The simulator can fail: with the naive lease (its whole TTL after the
/// keep-alive's answer), it finds two writers.
#[test]
fn the_simulator_finds_two_writers_with_the_naive_lease() {
    let found = (1..=400u64).find_map(|seed| {
        Sim::new(seed, 3, Mutation::ReplyTime)
            .run()
            .err()
            .map(|e| format!("seed {seed}: {e}"))
    });
    assert!(
        found.as_deref().is_some_and(|e| e.contains("two writers")),
        "{found:?}"
    );
}

/// And without the fenced active dropping its lease, `leader` outlives the
/// fence (etcd renews every lease when it regains quorum) and no node ever
/// takes the role again.
#[test]
fn the_simulator_finds_a_stuck_cluster_when_a_fenced_active_keeps_its_lease() {
    let found = (1..=400u64).find_map(|seed| Sim::new(seed, 3, Mutation::KeepLease).run().err());
    assert!(
        found
            .as_deref()
            .is_some_and(|e| e.contains("no node takes writes")),
        "{found:?}"
    );
}
