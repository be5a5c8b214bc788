//! A deterministic simulator of a two-node cluster with its witness. It
//! runs the node's real decision rules (`witness::core`), the heartbeat
//! link's real acceptance and lease rules (`PeerView::receive`,
//! `Freshness`) and the real timing (`Timing`), on a simulated clock and
//! network; what it models is only the I/O around them: datagrams, the
//! witness server's lock and epoch records, a store at the level of LSNs,
//! and a client writing to whichever node takes writes.
//!
//! Faults: datagrams delayed, lost, duplicated and reordered; one-way and
//! two-way partitions between the nodes, and between a node and the
//! witness; a node crashing at any moment and restarting later (or not);
//! the witness server down; a slow fsync; clock rates 10% apart.
//!
//! One seed decides a whole run. A failing run prints its seed and the
//! last events; `LOGSHIP_SIM_SEED=<n>` replays exactly that run, and
//! `LOGSHIP_SIM_SEEDS=<n>` sets how many seeds run (2,000 by default).
//!
//! Checked after every step:
//! - at most one node may acknowledge a write at any simulated instant, and
//!   no write is acknowledged in an epoch older than one already written in;
//! - the witness's epochs only grow, and so does every node's known epoch;
//! - liveness: once every fault is over, one node takes writes within the
//!   bound `quiet_bound` derives; after the active dies for good, the
//!   passive takes writes within `takeover_bound`.

mod common;

use common::Rng;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use shipper::{Epoch, Generation, Lsn};
use witness::Timing;
use witness::core::{self, LogPlan, Mutation};
use witness::dial::Position;
use witness::dial::{self, LastLogs, MountDial};
use witness::heartbeat::{Freshness, Heartbeat, PeerView, Role, SENT_RING};
use witness::machine::{Action, Holding, Input, LocalFacts, Machine, Settings, WitnessFacts};

/// Simulated time, in microseconds since the run began.
type T = u64;

const MS: T = 1_000;
const S: T = 1_000_000;
/// One simulation step.
const STEP: T = MS;
/// A witness server drops the lock of a crashed holder this fast (its TCP
/// connection is reset), and that of a holder cut off by a partition only
/// when TCP keepalive gives up.
const RELEASE_CRASHED: T = 5 * MS;
const RELEASE_CUT: T = 5 * S;
/// What the passive's last copy and replay take at takeover, at most.
const DRAIN: T = 50 * MS;

/// A datagram in flight.
#[derive(Clone, Debug)]
struct Packet {
    at: T,
    to: usize,
    hb: Heartbeat,
}

/// A fault window: `[from, until)` in simulated time.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Datagrams from node `from` to node `to` are lost.
    Cut {
        from: usize,
        to: usize,
        since: T,
        until: T,
    },
    /// Node `node` cannot reach the witness server.
    WitnessCut { node: usize, since: T, until: T },
    /// The witness server is down.
    WitnessDown { since: T, until: T },
    /// Node `node` is down (crashed at `since`; restarts at `until`).
    Crash { node: usize, since: T, until: T },
    /// Node `node`'s disk is full: its writes fail, and its store stops.
    DiskFull { node: usize, since: T, until: T },
    /// Node `node`'s fsyncs take `extra` longer.
    SlowDisk {
        node: usize,
        since: T,
        until: T,
        extra: T,
    },
}

impl Fault {
    fn window(&self) -> (T, T) {
        match *self {
            Fault::Cut { since, until, .. }
            | Fault::WitnessCut { since, until, .. }
            | Fault::WitnessDown { since, until }
            | Fault::Crash { since, until, .. }
            | Fault::DiskFull { since, until, .. }
            | Fault::SlowDisk { since, until, .. } => (since, until),
        }
    }
}

/// The store of a node: its last acknowledged LSN, the last LSN its
/// sealed segments hold, how many segments it sealed; `active` while it
/// takes writes.
#[derive(Clone, Debug, Default)]
struct Store {
    /// The last durable record (acknowledged or not: a write made durable
    /// after the fence ran out stays in the log, unacknowledged).
    lsn: u64,
    /// The last acknowledged record.
    acked: u64,
    /// Which epoch wrote which records: `(epoch, start)` covers the LSNs
    /// after `start` up to the next entry's start.
    timeline: Timeline,
    sealed: u64,
    seals: u64,
    /// When its first unsealed record was written (seal-after counts from it).
    unsealed_since: Option<T>,
    active: Option<Active>,
}

impl Store {
    /// Where its log stands, as its heartbeats say.
    fn position(&self) -> Position {
        Position {
            lsn: Lsn(self.lsn),
            generation: Generation(self.seals + u64::from(self.lsn > self.sealed)),
        }
    }
}

/// A passive copy: the LSN its database holds (`db`), the last LSN its
/// sealed segments reach (`log_end`, none when it holds none), and how
/// many of the source's segments it has.
#[derive(Clone, Debug, Default)]
struct Replica {
    db: u64,
    log_end: Option<u64>,
    seals: u64,
    /// Which epoch wrote the records it holds (up to `db`).
    timeline: Timeline,
}

/// Which epoch wrote which records: `(epoch, start)` entries, each covering
/// the LSNs after its start up to the next entry's start.
type Timeline = Vec<(Epoch, u64)>;

/// The epoch that wrote record `lsn` on `timeline`.
fn epoch_at(timeline: &Timeline, lsn: u64) -> Epoch {
    timeline
        .iter()
        .rev()
        .find(|(_, start)| *start < lsn)
        .map_or(Epoch(0), |(e, _)| *e)
}

/// `src`'s timeline up to record `end`.
fn clipped(src: &Timeline, end: u64) -> Timeline {
    src.iter()
        .filter(|(_, start)| *start < end)
        .copied()
        .collect()
}

/// A record of `epoch` at `lsn` is stale once a newer epoch began before
/// it (the replayer's `StaleEpoch`: a deposed active's record past the fork).
fn stale(epochs: &[(Epoch, usize, u64)], epoch: Epoch, lsn: u64) -> bool {
    epochs
        .iter()
        .any(|(e, _, start)| *e > epoch && *start < lsn)
}

/// `dst` up to record `from`, then `src`'s records after it up to `to`.
fn splice(dst: &Timeline, from: u64, src: &Timeline, to: u64) -> Timeline {
    let mut out = clipped(dst, from);
    for (k, (e, start)) in src.iter().enumerate() {
        let end = src.get(k + 1).map_or(u64::MAX, |(_, next)| *next);
        if *start < to && end > from {
            out.push((*e, (*start).max(from)));
        }
    }
    out
}

#[derive(Clone, Debug)]
struct Active {
    epoch: Epoch,
    fence_until: Option<Instant>,
    /// Why the store stopped by itself (a write failed: a full disk).
    stopped: Option<String>,
}

/// A write the store's writer has begun: durable at `at`, in `epoch`. It
/// outlives a fence (the writer finishes its fsync); a crash loses it.
#[derive(Clone, Copy, Debug)]
struct Inflight {
    at: T,
    epoch: Epoch,
}

/// One node: the daemon's state as the rules see it.
#[derive(Clone, Debug)]
struct Node {
    name: &'static str,
    up: bool,
    /// Clock rate in parts per thousand of simulated time.
    rate: u64,
    /// The local clock at the last restart.
    started: Instant,
    boot: u64,
    /// A passive copy; `None` with a store instead, or before its seed.
    copy: Option<Replica>,
    store: Option<Store>,
    /// The node's decisions: the daemon's own state machine.
    m: Machine,
    // The heartbeat link.
    seq: u64,
    sent: VecDeque<(u64, Instant)>,
    next_send: Instant,
    ack: u64,
    fresh: Freshness,
    view: PeerView,
    // The witness client.
    want: bool,
    held: bool,
    acquired_at: Option<Instant>,
    witness_until: Option<Instant>,
    witness_error: Option<String>,
    /// The newest epoch on the witness as last read, and whether the last
    /// request reached it.
    newest: Option<(Epoch, String)>,
    reachable: bool,
    next_witness: Instant,
    next_tick: Instant,
    /// A takeover under way: it finishes (claims and opens) at this time.
    taking_over: Option<T>,
    inflight: Option<Inflight>,
}

/// The witness server: the lock, and the epoch records.
#[derive(Clone, Debug, Default)]
struct WitnessServer {
    /// The lock's holder: a node, and the run (boot id) whose handle holds it.
    holder: Option<(usize, u64)>,
    /// When the server drops the holder's lock (it died or was cut off).
    release_at: Option<T>,
    epochs: Vec<(Epoch, usize, u64)>,
}

/// Node `i`'s state machine, as its daemon starts it at `now`.
fn machine(i: usize, timing: Timing, mutation: Mutation, now: Instant) -> Machine {
    Machine::new(
        Settings {
            me: ["alpha", "beta"][i].into(),
            peer: ["alpha", "beta"][1 - i].into(),
            timing,
            replay_lag: Duration::ZERO,
            mutation,
        },
        now,
    )
}

/// One run.
struct Sim {
    seed: u64,
    rng: Rng,
    t: T,
    base: Instant,
    timing: Timing,
    mutation: Mutation,
    nodes: [Node; 2],
    witness: WitnessServer,
    net: Vec<Packet>,
    faults: Vec<Fault>,
    /// Faults stop being started after this; the run ends at `end`.
    faults_until: T,
    end: T,
    /// Kill the active for good once the faults are over.
    kill_at_end: bool,
    killed: Option<(usize, T)>,
    /// Epoch of the newest acknowledged write, and of every node's acks.
    newest_acked: Epoch,
    acks: u64,
    /// The last events, for a failing run's report.
    trace: VecDeque<String>,
    /// A safety violation seen while writing.
    violation: Option<String>,
    /// When the active seals its segment after its first unsealed record.
    seal_after: T,
    /// The cluster's mount dial: `lossless` in one run of four (by seed,
    /// so that every other run is drawn as before).
    dial: MountDial,
    /// When beta is seeded (in the middle of alpha's current segment).
    seed_at: T,
    /// Takeovers that lost acknowledged writes the dial did not count.
    uncounted: u64,
    /// Takeovers the `lossless` dial refused.
    lossless_refusals: u64,
    /// When beta was seeded, and how long after that the active dies for
    /// good in this run (if it does).
    seeded: Option<T>,
    kill_after_seed: Option<T>,
    /// In the pinned gap's test only: when the active's disk fills for
    /// good, and whose it is once it has.
    disk_full_at: Option<T>,
    disk_full_for_good: Option<usize>,
    checked_disk: bool,
    /// The liveness checks ran (once each).
    checked_quiet: bool,
    checked_kill: bool,
    /// When the active was killed: the other node held a copy and had
    /// heard it as the active (else the dial, by design, waits for an
    /// operator: the loss cannot be bounded).
    survivor_qualifies: bool,
    // Counters for the long run's report.
    faults_injected: u64,
}

impl Sim {
    fn new(seed: u64, mutation: Mutation) -> Sim {
        let mut rng = Rng(seed);
        let timing = match rng.below(3) {
            0 => Timing {
                interval: Duration::from_millis(500),
                dead_after: Duration::from_secs(2),
            },
            1 => Timing {
                interval: Duration::from_millis(200),
                dead_after: Duration::from_secs(1),
            },
            _ => Timing {
                interval: Duration::from_millis(100),
                dead_after: Duration::from_millis(600),
            },
        };
        let base = Instant::now();
        // Rates within 10% of each other.
        let rates = [rng.range(1000, 1100), rng.range(1000, 1100)];
        let node = |i: usize, rng: &mut Rng| Node {
            name: ["alpha", "beta"][i],
            up: true,
            rate: rates[i],
            started: base,
            boot: rng.next() | 1,
            copy: None,
            store: (i == 0).then(Store::default),
            m: machine(i, timing, mutation, base),
            seq: 0,
            sent: VecDeque::new(),
            next_send: base,
            ack: 0,
            fresh: Freshness::default(),
            view: PeerView::default(),
            want: false,
            held: false,
            acquired_at: None,
            witness_until: None,
            witness_error: None,
            newest: None,
            reachable: false,
            next_witness: base,
            next_tick: base,
            taking_over: None,
            inflight: None,
        };
        let nodes = [node(0, &mut rng), node(1, &mut rng)];
        let faults_until = rng.range(5, 30) * S;
        let end = faults_until + 20 * S;
        let kill_at_end = rng.chance(300_000);
        let seal_after = rng.range(200, 10_000) * MS;
        let mut seed_at = rng.range(300, 5_000) * MS;
        let kill_after_seed = rng.chance(150_000).then(|| {
            // Seeded after a first seal, in the middle of the next segment.
            seed_at = seal_after + rng.range(100, seal_after / MS) * MS;
            rng.range(10, seal_after / MS) * MS
        });
        Sim {
            seed,
            rng,
            t: 0,
            base,
            timing,
            mutation,
            nodes,
            witness: WitnessServer::default(),
            net: Vec::new(),
            faults: Vec::new(),
            faults_until,
            end,
            kill_at_end,
            killed: None,
            newest_acked: Epoch(0),
            acks: 0,
            trace: VecDeque::new(),
            violation: None,
            seal_after,
            dial: if seed % 4 == 1 {
                MountDial::Lossless
            } else {
                MountDial::GoodAvailability
            },
            seed_at,
            uncounted: 0,
            lossless_refusals: 0,
            seeded: None,
            kill_after_seed,
            disk_full_at: None,
            disk_full_for_good: None,
            checked_disk: false,
            checked_quiet: false,
            checked_kill: false,
            survivor_qualifies: false,
            faults_injected: 0,
        }
    }

    fn note(&mut self, what: String) {
        if self.trace.len() == 60 {
            self.trace.pop_front();
        }
        self.trace
            .push_back(format!("{:>9.3}s {what}", self.t as f64 / 1e6));
    }

    /// Node `i`'s clock at simulated time `t`.
    fn local(&self, i: usize, t: T) -> Instant {
        self.base + Duration::from_micros(t * self.nodes[i].rate / 1000)
    }

    fn active(&self, f: impl Fn(&Fault) -> bool) -> bool {
        self.faults.iter().any(|x| {
            let (a, b) = x.window();
            a <= self.t && self.t < b && f(x)
        })
    }

    fn cut(&self, from: usize, to: usize) -> bool {
        self.active(|f| matches!(*f, Fault::Cut { from: a, to: b, .. } if a == from && b == to))
    }

    fn reaches_witness(&self, i: usize) -> bool {
        !self.active(|f| {
            matches!(*f, Fault::WitnessCut { node, .. } if node == i)
                || matches!(f, Fault::WitnessDown { .. })
        })
    }

    fn disk_full(&self, i: usize) -> bool {
        self.disk_full_for_good == Some(i)
            || self.active(|f| matches!(*f, Fault::DiskFull { node, .. } if node == i))
    }

    fn fsync(&mut self, i: usize) -> T {
        let slow: T = self
            .faults
            .iter()
            .filter_map(|f| match *f {
                Fault::SlowDisk {
                    node,
                    since,
                    until,
                    extra,
                } if node == i && since <= self.t && self.t < until => Some(extra),
                _ => None,
            })
            .sum();
        self.rng.range(100, 2_000) + slow
    }

    /// Starts a random fault now and then, until `faults_until`.
    fn inject(&mut self) {
        if self.t >= self.faults_until || !self.rng.chance(400) {
            return;
        }
        let since = self.t;
        // Mostly short faults: a lock dropped and a node restarted within
        // a lease are where the rules are tested hardest.
        let len = if self.rng.chance(500_000) {
            self.rng.range(10, 1_500) * MS
        } else {
            self.rng.range(50, 8_000) * MS
        };
        let until = (since + len).min(self.faults_until);
        let node = self.rng.below(2) as usize;
        let f = match self.rng.below(9) {
            0 => Fault::Cut {
                from: node,
                to: 1 - node,
                since,
                until,
            },
            1 => {
                self.faults.push(Fault::Cut {
                    from: node,
                    to: 1 - node,
                    since,
                    until,
                });
                Fault::Cut {
                    from: 1 - node,
                    to: node,
                    since,
                    until,
                }
            }
            2 => Fault::WitnessCut { node, since, until },
            3 => {
                // A server that stops drops every handle, and the lock.
                self.witness.holder = None;
                self.witness.release_at = None;
                Fault::WitnessDown { since, until }
            }
            4 | 5 => {
                if !self.nodes[node].up {
                    return;
                }
                self.crash(node);
                Fault::Crash { node, since, until }
            }
            6 => Fault::DiskFull { node, since, until },
            _ => Fault::SlowDisk {
                node,
                since,
                until,
                extra: self.rng.range(10 * MS, 5 * S),
            },
        };
        self.faults_injected += 1;
        self.note(format!("fault {f:?}"));
        self.faults.push(f);
    }

    fn crash(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        n.up = false;
        if let Some(s) = &mut n.store {
            s.active = None;
        }
        n.taking_over = None;
        n.inflight = None;
        n.held = false;
        if self.witness.holder.is_some_and(|(h, _)| h == i) {
            self.witness.release_at = Some(self.t + RELEASE_CRASHED);
        }
        self.note(format!("{} crashes", self.nodes[i].name));
    }

    fn restart(&mut self, i: usize) {
        let now = self.local(i, self.t);
        let boot = self.rng.next() | 1;
        let n = &mut self.nodes[i];
        n.up = true;
        n.started = now;
        n.boot = boot;
        n.m = machine(i, self.timing, self.mutation, now);
        // The witness client's cache dies with the process.
        n.newest = None;
        n.reachable = false;
        n.seq = 0;
        n.sent.clear();
        n.ack = 0;
        n.fresh = Freshness::default();
        n.view = PeerView::default();
        n.want = false;
        n.held = false;
        n.acquired_at = None;
        n.witness_until = None;
        n.next_send = now;
        n.next_witness = now;
        n.next_tick = now;
        self.note(format!("{} restarts", self.nodes[i].name));
    }

    fn step(&mut self) -> Result<(), String> {
        self.inject();
        // Restarts whose time came, and the end-of-run kill.
        for i in 0..2 {
            let restart = self.faults.iter().any(
                |f| matches!(*f, Fault::Crash { node, until, .. } if node == i && until == self.t),
            );
            if restart && !self.nodes[i].up && self.killed.is_none_or(|(k, _)| k != i) {
                self.restart(i);
            }
        }
        // The user's first scenario: seeded, then under seal-after of
        // writes, then the active dies for good.
        if let Some(at) = self.kill_after_seed
            && self.killed.is_none()
            && self.seeded.is_some_and(|s| self.t >= s + at)
        {
            if let Some(i) = (0..2).find(|&i| self.writer(i)) {
                self.crash(i);
                self.killed = Some((i, self.t));
                self.faults_until = self.faults_until.min(self.t);
                self.end_faults();
                self.survivor_qualifies = self.qualifies(1 - i);
                self.end = self.end.max(self.t + self.takeover_bound() + S);
                self.note(format!(
                    "{} dies for good after the seed",
                    self.nodes[i].name
                ));
            }
            self.kill_after_seed = None;
        }
        if let Some(at) = self.disk_full_at
            && self.disk_full_for_good.is_none()
            && self.t >= at
        {
            self.disk_full_for_good = (0..2).find(|&i| self.writer(i));
            self.disk_full_at = self.disk_full_for_good.map(|_| self.t);
            if let Some(i) = self.disk_full_for_good {
                self.note(format!("{}'s disk fills for good", self.nodes[i].name));
                self.end = self.end.max(self.t + self.takeover_bound() + 3 * S);
            }
        }
        if self.kill_at_end && self.killed.is_none() && self.t >= self.faults_until + 10 * S {
            if let Some(i) = (0..2).find(|&i| self.writer(i)) {
                self.crash(i);
                self.killed = Some((i, self.t));
                self.survivor_qualifies = self.qualifies(1 - i);
            } else {
                self.kill_at_end = false;
            }
        }
        // The witness server drops a dead or cut-off holder's lock (a run
        // that ended holds nothing, even once its node runs again).
        if let Some((h, boot)) = self.witness.holder {
            let cut_off =
                !self.reaches_witness(h) || !self.nodes[h].up || self.nodes[h].boot != boot;
            match self.witness.release_at {
                Some(at) if self.t >= at && cut_off => {
                    self.witness.holder = None;
                    self.witness.release_at = None;
                    self.note(format!("witness releases {}'s lock", self.nodes[h].name));
                }
                Some(_) if !cut_off => self.witness.release_at = None,
                None if cut_off => {
                    let dead = !self.nodes[h].up || self.nodes[h].boot != boot;
                    let after = if dead { RELEASE_CRASHED } else { RELEASE_CUT };
                    self.witness.release_at = Some(self.t + after);
                }
                _ => {}
            }
        }
        self.deliver();
        self.seed();
        for i in 0..2 {
            self.seal(i);
            if self.nodes[i].up {
                self.heartbeat(i);
                self.witness_client(i);
                self.tick(i)?;
                self.write(i);
            }
        }
        self.check()
    }

    /// Whether node `i` would acknowledge a write made durable now.
    fn writer(&self, i: usize) -> bool {
        let n = &self.nodes[i];
        n.up && n
            .store
            .as_ref()
            .and_then(|s| s.active.as_ref())
            .is_some_and(|a| {
                core::may_acknowledge(a.fence_until, self.local(i, self.t), Mutation::None)
            })
    }

    fn deliver(&mut self) {
        let now = self.t;
        let (due, rest): (Vec<Packet>, Vec<Packet>) = std::mem::take(&mut self.net)
            .into_iter()
            .partition(|p| p.at <= now);
        self.net = rest;
        for p in due {
            let i = p.to;
            if !self.nodes[i].up {
                continue;
            }
            let received = self.local(i, now);
            let timing = self.timing;
            let n = &mut self.nodes[i];
            if !n.fresh.admit(&p.hb) {
                continue;
            }
            let sent = n.sent.clone();
            n.ack = n.view.receive(p.hb, received, &sent, &timing);
        }
    }

    /// Sends node `i`'s heartbeat when due (what `update_heartbeat` puts in it).
    fn heartbeat(&mut self, i: usize) {
        let now = self.local(i, self.t);
        if now < self.nodes[i].next_send {
            return;
        }
        let n = &mut self.nodes[i];
        n.seq += 1;
        if n.sent.len() == SENT_RING {
            n.sent.pop_front();
        }
        n.sent.push_back((n.seq, now));
        n.next_send = now + self.timing.interval;
        let epoch = n.m.heartbeat_epoch();
        let position = match &n.store {
            Some(s) => s.position(),
            None => n.copy.as_ref().map_or(Position::default(), |c| Position {
                lsn: Lsn(c.db),
                generation: Generation(c.seals),
            }),
        };
        let hb = Heartbeat {
            node: n.name.into(),
            boot: n.boot,
            seq: n.seq,
            ack: n.ack,
            role: n.m.role,
            epoch,
            supports: n.m.supports(now),
            position,
            store_failed: n.m.says_store_failed(now),
            ..Default::default()
        };
        let to = 1 - i;
        // Loss, long delays and duplicates only while faults run.
        let faulty = self.t < self.faults_until;
        if self.cut(i, to) || (faulty && self.rng.chance(20_000)) {
            return;
        }
        let mut delay = self.rng.range(50, 20 * MS);
        if faulty && self.rng.chance(10_000) {
            delay += self.rng.range(100 * MS, 2 * S);
        }
        let copies = if faulty && self.rng.chance(10_000) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            self.net.push(Packet {
                at: self.t + delay,
                to,
                hb: hb.clone(),
            });
        }
    }

    /// Node `i`'s witness thread: seeks, confirms or releases the lock.
    fn witness_client(&mut self, i: usize) {
        let now = self.local(i, self.t);
        if now < self.nodes[i].next_witness {
            return;
        }
        let reach = self.reaches_witness(i);
        let lease = self.timing.witness_lease();
        let every = if self.nodes[i].want && !self.nodes[i].held {
            self.timing.confirm_every().min(Duration::from_millis(50))
        } else {
            self.timing.confirm_every()
        };
        self.nodes[i].next_witness = now + every;
        if !reach {
            self.nodes[i].witness_error = Some("witness unreachable".into());
            return;
        }
        self.nodes[i].witness_error = None;
        let ours = self.witness.holder == Some((i, self.nodes[i].boot));
        let n = &mut self.nodes[i];
        match (n.want, n.held) {
            (true, true) if ours => n.witness_until = Some(now + lease),
            (true, true) => {
                // The server dropped our lock: we learn it now.
                n.held = false;
                n.acquired_at = None;
            }
            (true, false) if self.witness.holder.is_none() => {
                self.witness.holder = Some((i, n.boot));
                self.witness.release_at = None;
                n.held = true;
                n.acquired_at = Some(now);
                n.witness_until = Some(now + lease);
                let name = n.name;
                self.note(format!("{name} takes the witness lock"));
            }
            (false, true) => {
                if ours {
                    self.witness.holder = None;
                }
                n.held = false;
                n.acquired_at = None;
            }
            _ => {}
        }
        if !self.nodes[i].held {
            self.nodes[i].witness_error = self
                .witness
                .holder
                .map(|(h, _)| format!("held by {}", ["alpha", "beta"][h]));
        }
    }

    fn tick(&mut self, i: usize) -> Result<(), String> {
        let now = self.local(i, self.t);
        if now < self.nodes[i].next_tick {
            return Ok(());
        }
        let tick =
            (self.timing.interval / 5).clamp(Duration::from_millis(10), Duration::from_millis(50));
        self.nodes[i].next_tick = now + tick;
        let before = self.nodes[i].m.known_epoch;
        if let Some(done) = self.nodes[i].taking_over {
            if self.t >= done {
                self.nodes[i].taking_over = None;
                self.finish_takeover(i);
            }
            return Ok(());
        }
        // What the daemon's loop feeds its machine at each turn: the
        // peer as the link heard it, the witness client's last answer,
        // what the node holds, then the timer.
        let peer = Input::Peer(self.nodes[i].view.clone());
        self.feed(i, peer);
        let w = self.witness_facts(i);
        self.feed(i, Input::Witness(w));
        let local = self.local_facts(i);
        self.feed(i, Input::Local(local));
        self.feed(i, Input::Timer);
        if self.nodes[i].m.known_epoch < before {
            return Err(format!("{}'s known epoch went back", self.nodes[i].name));
        }
        // The copy follows what the active sealed on its share (the model's
        // copier and replay).
        let peer_alive = self.nodes[i].view.alive_at(self.timing.dead_after, now);
        if self.nodes[i].copy.is_some()
            && self.nodes[i].taking_over.is_none()
            && let Some(hb) = &self.nodes[i].view.last
            && hb.role == Role::Active
            && peer_alive
            && self.share_reachable(i)
            && let Some(src) = self.nodes[1 - i].store.clone()
            && let Some(c) = &mut self.nodes[i].copy
            && src.sealed > c.db
        {
            // The replayer takes sealed records in order, and stops at a
            // deposed epoch's record past a newer epoch's start
            // (`StaleEpoch`).
            let mut upto = c.db;
            while upto < src.sealed
                && !stale(
                    &self.witness.epochs,
                    epoch_at(&src.timeline, upto + 1),
                    upto + 1,
                )
            {
                upto += 1;
            }
            c.timeline = splice(&c.timeline, c.db, &src.timeline, upto);
            c.db = upto;
            c.log_end = Some(c.log_end.unwrap_or(0).max(upto));
            if upto == src.sealed {
                c.seals = c.seals.max(src.seals);
            }
        }
        Ok(())
    }

    /// The witness client's last answer, as node `i`'s machine gets it;
    /// the history is read again whenever the witness can be reached.
    fn witness_facts(&mut self, i: usize) -> WitnessFacts {
        let reachable = self.reaches_witness(i);
        if reachable {
            self.nodes[i].newest = self
                .witness
                .epochs
                .last()
                .map(|(e, n, _)| (*e, self.nodes[*n].name.to_string()));
        }
        let n = &mut self.nodes[i];
        n.reachable = reachable;
        WitnessFacts {
            vote: core::Vote {
                held: n.held,
                acquired_at: n.acquired_at,
                error: n.witness_error.clone(),
            },
            until: n.witness_until.filter(|_| n.held),
            newest: n.newest.clone(),
            reachable,
        }
    }

    fn local_facts(&self, i: usize) -> LocalFacts {
        let n = &self.nodes[i];
        LocalFacts {
            holding: match (&n.store, &n.copy) {
                (Some(_), _) => Holding::Store,
                (None, Some(c)) => Holding::Copy { replayed: c.db },
                (None, None) => Holding::Nothing,
            },
            paused: None,
            store_stopped: n
                .store
                .as_ref()
                .and_then(|s| s.active.as_ref())
                .and_then(|a| a.stopped.clone()),
        }
    }

    /// Steps node `i`'s machine with one input and carries out what it
    /// asks, as the daemon does (an action's outcome is fed back in).
    fn feed(&mut self, i: usize, input: Input) {
        let now = self.local(i, self.t);
        let role = self.nodes[i].m.role;
        let actions = self.nodes[i].m.step(input, now);
        if self.nodes[i].m.role != role {
            self.note(format!(
                "{}: {} -> {} ({:?})",
                self.nodes[i].name,
                role.name(),
                self.nodes[i].m.role.name(),
                self.nodes[i].m.blocked
            ));
        }
        for a in actions {
            self.act(i, a);
        }
    }

    fn act(&mut self, i: usize, a: Action) {
        let now = self.local(i, self.t);
        match a {
            Action::WantVote(yes) => {
                if self.nodes[i].want != yes {
                    self.note(format!("{} wants the vote: {yes}", self.nodes[i].name));
                }
                self.nodes[i].want = yes;
            }
            Action::ExtendFence(until) => {
                if let Some(a) = self.nodes[i].store.as_mut().and_then(|s| s.active.as_mut()) {
                    a.fence_until = Some(a.fence_until.map_or(until, |f| f.max(until)));
                }
            }
            Action::CloseStore(stop) => {
                self.note(format!("{} stops: {stop:?}", self.nodes[i].name));
                if let Some(s) = &mut self.nodes[i].store {
                    s.active = None;
                }
            }
            Action::StartReplay | Action::StopDuty => {}
            Action::Announce => self.nodes[i].next_send = now,
            Action::Activate(reason) => {
                let lsn = self.nodes[i].store.as_ref().map(|s| s.lsn).unwrap_or(0);
                match self.claim_epoch(i, lsn) {
                    Some(e) => {
                        self.note(format!(
                            "{} activates ({}) in epoch {e}",
                            self.nodes[i].name,
                            reason.name()
                        ));
                        self.open(i, e);
                    }
                    None => self.feed(i, Input::NotActivated("witness unreachable".into())),
                }
            }
            Action::TakeOver { .. } => {
                self.note(format!("{} takes over", self.nodes[i].name));
                self.nodes[i].taking_over = Some(self.t + self.rng.range(MS, DRAIN));
            }
            // Read now; the machine hears the answer with the next turn's
            // witness input.
            Action::RefreshHistory => {
                self.witness_facts(i);
            }
            Action::Rejoin => {
                self.rejoin(i);
                let local = self.local_facts(i);
                self.feed(i, Input::Local(local));
            }
            Action::StartMove { .. }
            | Action::MoveWaits { .. }
            | Action::MoveRefused { .. }
            | Action::MoveFailed(_)
            | Action::MoveDone { .. }
            | Action::MoveTimedOut { .. } => {}
        }
    }

    /// The end of a takeover: the witness vote must still be ours, then
    /// claim the next epoch and open the copy as the store.
    fn finish_takeover(&mut self, i: usize) {
        if !self.nodes[i].held {
            self.feed(i, Input::NotActivated("the witness vote was lost".into()));
            return;
        }
        let Some(mut c) = self.nodes[i].copy.clone() else {
            self.feed(i, Input::NotActivated("no copy".into()));
            return;
        };
        // The last logs: what the old active's share still holds, its open
        // segment's valid prefix included (every acknowledged record is
        // durable there before it is acknowledged).
        if self.share_reachable(i)
            && let Some(src) = self.nodes[1 - i].store.clone()
            && src.lsn > c.db
        {
            c.timeline = splice(&c.timeline, c.db, &src.timeline, src.lsn);
            c.db = src.lsn;
            c.log_end = Some(src.lsn);
            c.seals = src.seals;
        }
        self.nodes[i].copy = Some(c.clone());
        let replayed = Position {
            lsn: Lsn(c.db),
            generation: Generation(c.seals),
        };
        let last_logs = if self.share_reachable(i) || self.mutation == Mutation::TrustLastHeartbeat
        {
            LastLogs::Copied
        } else {
            LastLogs::Unread
        };
        let decision = dial::decide(
            self.dial,
            replayed,
            self.nodes[i].m.active_position,
            last_logs,
        );
        if !decision.allowed {
            if self.dial == MountDial::Lossless {
                self.lossless_refusals += 1;
            }
            self.note(format!("{}: {}", self.nodes[i].name, decision.text));
            self.feed(i, Input::TakeoverRefused(decision.text));
            return;
        }
        // The copy's log must carry on as a store's log.
        let plan = if self.mutation == Mutation::OldLogPlan {
            // Before the fix: any log at all was taken to carry on.
            if c.log_end.is_some() {
                LogPlan::CarryOn
            } else {
                LogPlan::StartAtDatabase
            }
        } else {
            core::log_plan(false, c.log_end, c.db)
        };
        if plan == LogPlan::CarryOn && c.log_end.is_none_or(|end| end < c.db) {
            let why = format!(
                "{} cannot open its store: the database is at LSN {} but its log ends at {:?}",
                self.nodes[i].name, c.db, c.log_end
            );
            self.note(why.clone());
            self.feed(i, Input::NotActivated(why));
            return;
        }
        let lsn = c.db;
        if let Some(e) = self.claim_epoch(i, lsn) {
            // What the old active acknowledged past the copy is lost: the
            // dial must have counted it.
            let acked = self.nodes[1 - i].store.as_ref().map_or(0, |s| s.acked);
            if acked > lsn && self.dial == MountDial::Lossless {
                self.violation = Some(format!(
                    "{} activated under lossless without LSN {}..={acked} ({})",
                    self.nodes[i].name,
                    lsn + 1,
                    decision.text
                ));
            }
            if acked > lsn && decision.missing == 0 {
                self.uncounted += 1;
                let what = format!(
                    "{} lost LSN {}..={acked} that the dial did not count ({})",
                    self.nodes[i].name,
                    lsn + 1,
                    decision.text
                );
                self.note(what.clone());
                if self.mutation != Mutation::TrustLastHeartbeat {
                    self.violation = Some(what);
                }
            }
            self.note(format!(
                "{} is active in epoch {e} at LSN {lsn}",
                self.nodes[i].name
            ));
            self.nodes[i].copy = None;
            self.nodes[i].store = Some(Store {
                lsn,
                // What it holds that the old active acknowledged.
                acked: acked.min(lsn),
                timeline: c.timeline.clone(),
                sealed: lsn,
                seals: c.seals + 1,
                ..Default::default()
            });
            self.open(i, e);
        } else {
            self.feed(i, Input::NotActivated("witness unreachable".into()));
        }
    }

    /// Ends every fault still running (a crashed node restarts at the next
    /// step): from now on the network, the witness and the disks are well.
    fn end_faults(&mut self) {
        let next = self.t + STEP;
        // Datagrams held up by the faulty network arrive as a well one's.
        let well = self.t + 20 * MS;
        for p in &mut self.net {
            p.at = p.at.min(well);
        }
        for f in &mut self.faults {
            match f {
                Fault::Cut { until, .. }
                | Fault::WitnessCut { until, .. }
                | Fault::WitnessDown { until, .. }
                | Fault::Crash { until, .. }
                | Fault::DiskFull { until, .. }
                | Fault::SlowDisk { until, .. } => *until = (*until).min(next),
            }
        }
    }

    /// Whether node `i` is a passive copy that heard its peer as the active
    /// (the case the takeover bound is promised for).
    fn qualifies(&self, i: usize) -> bool {
        let n = &self.nodes[i];
        n.up && n.copy.is_some() && n.m.active_position.is_some() && !n.m.dial_refused
    }

    /// Whether node `i` can read its peer's share (over the link).
    fn share_reachable(&self, i: usize) -> bool {
        !self.cut(i, 1 - i) && !self.cut(1 - i, i)
    }

    /// Seeds beta's copy from alpha's store as it stands: the snapshot
    /// holds what alpha acknowledged, its log only what alpha sealed.
    fn seed(&mut self) {
        if self.t < self.seed_at || self.nodes[1].copy.is_some() || self.nodes[1].store.is_some() {
            return;
        }
        if !self.nodes[1].up || !self.share_reachable(1) {
            return;
        }
        let Some(src) = self.nodes[0].store.clone() else {
            return;
        };
        if src.active.is_none() {
            return;
        }
        self.nodes[1].copy = Some(Replica {
            db: src.lsn,
            log_end: (src.seals > 0).then_some(src.sealed),
            seals: src.seals,
            timeline: clipped(&src.timeline, src.lsn),
        });
        self.seeded = Some(self.t);
        self.note(format!(
            "beta seeded at LSN {} (sealed up to {})",
            src.lsn, src.sealed
        ));
    }

    /// Seals node `i`'s segment `seal_after` after its first unsealed record.
    fn seal(&mut self, i: usize) {
        let t = self.t;
        let after = self.seal_after;
        if let Some(s) = &mut self.nodes[i].store
            && s.unsealed_since.is_some_and(|u| t >= u + after)
        {
            s.sealed = s.lsn;
            s.seals += 1;
            s.unsealed_since = None;
        }
    }

    /// Claims `newest + 1` on the witness (an exclusive create).
    fn claim_epoch(&mut self, i: usize, start_lsn: u64) -> Option<Epoch> {
        if !self.reaches_witness(i) {
            return None;
        }
        let newest = self.witness.epochs.last().map(|e| e.0).unwrap_or(Epoch(0));
        let e = core::next_epoch(Some(newest), Epoch(0), self.nodes[i].m.known_epoch);
        self.witness.epochs.push((e, i, start_lsn));
        Some(e)
    }

    fn open(&mut self, i: usize, e: Epoch) {
        let n = &mut self.nodes[i];
        let until = n.witness_until.filter(|_| n.held);
        if let Some(s) = &mut n.store {
            s.timeline.push((e, s.lsn));
            s.active = Some(Active {
                epoch: e,
                fence_until: until,
                stopped: None,
            });
        }
        self.feed(
            i,
            Input::Activated {
                epoch: e,
                fence_until: until,
            },
        );
    }

    /// Undoes what is past the fork (`core::fork`, as the daemon's rejoin
    /// finds it) and follows the peer from there.
    fn rejoin(&mut self, i: usize) {
        let Some(store) = self.nodes[i].store.clone() else {
            return;
        };
        let own = store.lsn;
        let log_epoch = store.timeline.last().map_or(Epoch(0), |(e, _)| *e);
        let fork = if self.mutation == Mutation::ForkAtNewest {
            // The rule before: the start of the peer's newest epoch.
            self.witness
                .epochs
                .iter()
                .filter(|(_, n, _)| *n != i)
                .map(|(_, _, start)| *start)
                .next_back()
        } else {
            core::fork(
                self.witness
                    .epochs
                    .iter()
                    .map(|(e, n, start)| (*e, self.nodes[*n].name, *start)),
                log_epoch,
                self.nodes[i].name,
            )
        };
        let Some(fork) = fork.map(|f| f.min(own)) else {
            // The daemon waits for the witness's history.
            return;
        };
        let n = &mut self.nodes[i];
        n.store = None;
        n.copy = Some(Replica {
            db: fork,
            log_end: None,
            seals: 0,
            timeline: clipped(&store.timeline, fork),
        });
        let name = n.name;
        self.note(format!(
            "{name} rejoins as passive at LSN {fork} (it held {own})"
        ));
    }

    /// The client's writes on node `i`: checked against the fence before
    /// the write and again when it is durable (`may_acknowledge`; a fence
    /// revoked meanwhile has no lease left).
    fn write(&mut self, i: usize) {
        let now = self.local(i, self.t);
        let fence = |n: &Node, epoch: Epoch| {
            n.store
                .as_ref()
                .and_then(|s| s.active.as_ref())
                .filter(|a| a.epoch == epoch)
                .and_then(|a| a.fence_until)
        };
        match self.nodes[i].inflight {
            None => {
                let Some(a) = self.nodes[i].store.as_ref().and_then(|s| s.active.as_ref()) else {
                    return;
                };
                if a.fence_until.is_some_and(|f| now < f) && a.stopped.is_none() {
                    if self.disk_full(i) {
                        // The append fails: fatal for the store's writer.
                        if let Some(a) =
                            self.nodes[i].store.as_mut().and_then(|s| s.active.as_mut())
                        {
                            a.stopped = Some("disk full".into());
                        }
                        return;
                    }
                    let epoch = a.epoch;
                    let at = self.t + self.fsync(i);
                    self.nodes[i].inflight = Some(Inflight { at, epoch });
                }
            }
            Some(w) if self.t >= w.at => {
                self.nodes[i].inflight = None;
                let until = fence(&self.nodes[i], w.epoch);
                let t = self.t;
                // Durable either way: the record is in the log (while the
                // store still holds that epoch's log).
                let log = self.nodes[i]
                    .store
                    .as_mut()
                    .filter(|s| s.timeline.last().is_some_and(|(e, _)| *e == w.epoch));
                if let Some(s) = log {
                    s.lsn += 1;
                    s.unsealed_since.get_or_insert(t);
                    if core::may_acknowledge(until, now, self.mutation) {
                        s.acked = s.lsn;
                    }
                }
                if !core::may_acknowledge(until, now, self.mutation) {
                    return;
                }
                self.acks += 1;
                let name = self.nodes[i].name;
                if w.epoch < self.newest_acked {
                    self.note(format!("{name} acknowledges a write in epoch {}", w.epoch));
                    self.violation = Some(format!(
                        "{name} acknowledged a write in epoch {} after one in epoch {}",
                        w.epoch, self.newest_acked
                    ));
                }
                self.newest_acked = self.newest_acked.max(w.epoch);
            }
            Some(_) => {}
        }
    }
}

impl Sim {
    /// How long after the last fault one node takes writes, at most: a
    /// holder cut from the witness keeps its lock until the server's
    /// keepalive gives up; then the dead time, the takeover wait, the
    /// drain, and a few steps of the daemon; all on the slower clock.
    fn quiet_bound(&self) -> T {
        let t = &self.timing;
        let d =
            t.dead_after * 3 + t.takeover_wait() + Duration::from_micros(DRAIN) + t.interval * 2;
        RELEASE_CUT + d.as_micros() as T * 11 / 10
    }

    /// How long after the active dies for good the passive takes writes, at
    /// most: it seeks the vote after `suspect_after` of silence and takes
    /// it once the server dropped the dead holder's lock, waits out the
    /// lease, and writes once the active has also been silent `dead_after`;
    /// then the drain and a daemon step; on the slower clock.
    fn takeover_bound(&self) -> T {
        let t = &self.timing;
        let tick = (t.interval / 5).clamp(Duration::from_millis(10), Duration::from_millis(50));
        let vote =
            t.suspect_after() + Duration::from_micros(RELEASE_CRASHED) + Duration::from_millis(50);
        let ready = t.dead_after.max(vote + t.takeover_wait());
        let d = ready + Duration::from_micros(DRAIN) + tick * 2 + t.interval;
        d.as_micros() as T * 11 / 10
    }

    fn check(&mut self) -> Result<(), String> {
        if let Some(v) = self.violation.take() {
            return Err(v);
        }
        let writers: Vec<usize> = (0..2).filter(|&i| self.writer(i)).collect();
        if writers.len() > 1 {
            return Err("both nodes may acknowledge writes at the same instant".into());
        }
        // No copy holds a deposed epoch's record past a newer epoch's start.
        for n in &self.nodes {
            let Some(c) = &n.copy else { continue };
            for (k, (e, start)) in c.timeline.iter().enumerate() {
                let end = c.timeline.get(k + 1).map_or(c.db, |(_, next)| *next);
                if end > *start
                    && let Some((newer, _, fork)) = self
                        .witness
                        .epochs
                        .iter()
                        .find(|(x, _, fork)| x > e && *fork < end)
                {
                    return Err(format!(
                        "{}'s copy holds LSN {}..={end} of epoch {e}, past epoch {newer}'s start at LSN {fork}",
                        n.name,
                        (*fork).max(*start) + 1
                    ));
                }
            }
        }
        if self.witness.epochs.windows(2).any(|w| w[1].0 <= w[0].0) {
            return Err(format!(
                "the witness's epochs did not grow: {:?}",
                self.witness.epochs
            ));
        }
        let quiet = self.faults_until + self.quiet_bound();
        if !self.checked_quiet && self.t >= quiet && self.killed.is_none() {
            self.checked_quiet = true;
            if writers.is_empty() {
                return Err(format!(
                    "no node takes writes {:.1} s after the last fault",
                    self.quiet_bound() as f64 / 1e6
                ));
            }
        }
        if let (Some(n), Some(at)) = (self.disk_full_for_good, self.disk_full_at)
            && !self.checked_disk
            && self.t >= at + self.takeover_bound() + 2 * S
        {
            self.checked_disk = true;
            if writers != [1 - n] {
                return Err(format!(
                    "{} does not take writes {:.2} s after {}'s disk filled",
                    self.nodes[1 - n].name,
                    (self.takeover_bound() + 2 * S) as f64 / 1e6,
                    self.nodes[n].name
                ));
            }
        }
        if let Some((k, at)) = self.killed
            && !self.checked_kill
            && self.t >= at + self.takeover_bound()
        {
            self.checked_kill = true;
            // Under `lossless`, a survivor that may lack writes waits for
            // an operator, by design.
            let refused = self.dial == MountDial::Lossless && self.nodes[1 - k].m.dial_refused;
            if self.survivor_qualifies && !refused && writers != [1 - k] {
                return Err(format!(
                    "{} does not take writes {:.2} s after {} died",
                    self.nodes[1 - k].name,
                    self.takeover_bound() as f64 / 1e6,
                    self.nodes[k].name
                ));
            }
        }
        Ok(())
    }

    /// Runs to the end; the error names the seed and the last events.
    fn run(mut self) -> Result<Stats, String> {
        self.end = self
            .end
            .max(self.faults_until + self.quiet_bound() + 12 * S + self.takeover_bound());
        while self.t < self.end {
            if let Err(e) = self.step() {
                let trace: Vec<String> = self.trace.iter().cloned().collect();
                return Err(format!(
                    "seed {}: {e}\n(timing {:?}, rates {} and {}, mutation {:?}); the last events:\n{}",
                    self.seed,
                    self.timing,
                    self.nodes[0].rate,
                    self.nodes[1].rate,
                    self.mutation,
                    trace.join("\n")
                ));
            }
            self.t += STEP;
        }
        if !self.checked_quiet && self.killed.is_none() {
            return Err(format!(
                "seed {}: the quiet-phase check never ran",
                self.seed
            ));
        }
        if self.killed.is_some() && !self.checked_kill {
            return Err(format!("seed {}: the takeover check never ran", self.seed));
        }
        Ok(Stats {
            lossless_refusals: self.lossless_refusals,
            disk_checked: self.checked_disk,
            uncounted: self.uncounted,
            faults: self.faults_injected,
            seconds: self.end as f64 / 1e6,
            epochs: self.witness.epochs.len() as u64,
            acks: self.acks,
        })
    }
}

#[derive(Debug, Default)]
struct Stats {
    /// Takeovers the `lossless` dial refused (the loss was counted).
    lossless_refusals: u64,
    /// The disk-full liveness check ran in this run.
    disk_checked: bool,
    uncounted: u64,
    faults: u64,
    seconds: f64,
    epochs: u64,
    acks: u64,
}

fn seeds() -> (u64, u64) {
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    match env("LOGSHIP_SIM_SEED") {
        Some(one) => (one, 1),
        None => (
            env("LOGSHIP_SIM_FIRST").unwrap_or(1),
            env("LOGSHIP_SIM_SEEDS").unwrap_or(2000),
        ),
    }
}

#[test]
fn every_seed_keeps_one_writer_and_recovers() {
    let (first, count) = seeds();
    let mut total = Stats::default();
    let started = std::time::Instant::now();
    for seed in first..first + count {
        match Sim::new(seed, Mutation::None).run() {
            Ok(s) => {
                total.faults += s.faults;
                total.seconds += s.seconds;
                total.epochs += s.epochs;
                total.acks += s.acks;
                total.uncounted += s.uncounted;
                total.lossless_refusals += s.lossless_refusals;
            }
            Err(e) => {
                panic!("{e}\nreplay: LOGSHIP_SIM_SEED={seed} cargo test -p witness --test sim")
            }
        }
    }
    eprintln!(
        "{count} seeds from {first}: {} faults, {:.1} simulated hours, {} epochs, {} writes acknowledged, {} takeovers that lost writes the dial did not count, {} refused by lossless, in {:.1} s",
        total.faults,
        total.seconds / 3600.0,
        total.epochs,
        total.acks,
        total.uncounted,
        total.lossless_refusals,
        started.elapsed().as_secs_f64()
    );
    // The lossless runs reach the case they are there for.
    if count >= 2000 {
        assert!(
            total.lossless_refusals > 0,
            "no lossless run refused a takeover"
        );
    }
}

/// The simulator can fail: with the takeover wait removed, or the store's
/// second fence check skipped, it finds two writers within the CI budget.
#[test]
fn the_simulator_finds_two_writers_when_a_rule_is_removed() {
    for mutation in [Mutation::NoTakeoverWait, Mutation::NoFenceRecheck] {
        let found = (1..=2000u64).find_map(|seed| {
            Sim::new(seed, mutation).run().err().filter(|e| {
                e.contains("both nodes may acknowledge") || e.contains("after one in epoch")
            })
        });
        let e = found.unwrap_or_else(|| panic!("no seed found the bug of {mutation:?}"));
        eprintln!("{mutation:?}: {}", e.lines().next().unwrap_or_default());
        assert!(
            e.contains("both nodes may acknowledge") || e.contains("after one in epoch"),
            "{e}"
        );
    }
}

#[test]
fn a_run_is_decided_by_its_seed() {
    let a = Sim::new(42, Mutation::None).run().unwrap();
    let b = Sim::new(42, Mutation::None).run().unwrap();
    assert_eq!((a.faults, a.epochs, a.acks), (b.faults, b.epochs, b.acks));
}

/// The first bug of the cluster's own issue, kept as a regression seed:
/// with the log plan as it was, a copy seeded in the middle of a segment
/// that was never sealed could not open as the store, and the cluster had
/// no active for as long as anyone waited. The rule as it is now passes
/// the same seeds (`every_seed_keeps_one_writer_and_recovers`).
#[test]
fn a_copy_seeded_mid_segment_could_not_take_over_with_the_old_log_plan() {
    let found = (1..=2000u64).find_map(|seed| {
        Sim::new(seed, Mutation::OldLogPlan)
            .run()
            .err()
            .map(|e| (seed, e))
    });
    let (seed, e) = found.expect("a seed that reproduces the fresh copy's bug");
    eprintln!("OldLogPlan: {}", e.lines().next().unwrap_or_default());
    assert!(e.contains("cannot open its store"), "seed {seed}: {e}");
    assert!(Sim::new(seed, Mutation::None).run().is_ok());
}

/// Found by the simulator: when the old active's share cannot be read at
/// failover, the mount dial compared the copy against the old active's last
/// heartbeat, up to one interval old, so writes acknowledged after it were
/// lost and counted as nothing. The dial now counts at least one
/// generation missing whenever the last logs were not read
/// (`LastLogs::Unread`), so `lossless` refuses and every loss is counted;
/// every seed checks it. Trusting the last heartbeat instead loses writes
/// uncounted within a few hundred seeds.
#[test]
fn trusting_the_last_heartbeat_loses_writes_the_dial_does_not_count() {
    let uncounted: u64 = (1..=300u64)
        .filter_map(|seed| Sim::new(seed, Mutation::TrustLastHeartbeat).run().ok())
        .map(|s| s.uncounted)
        .sum();
    assert!(
        uncounted > 0,
        "the simulator no longer finds the loss this rule prevents"
    );
}

/// Seeds that once failed, each for a flaw since fixed (in the rules or in
/// the model): they must pass. 3 and 329: a restarted node's lock was never
/// released by the model's server (a dead run's handle); 2020: a dead
/// active's heartbeat, delayed past its death, reset the silence; 63594: an
/// active killed late in a run ended the run before the takeover check;
/// 21819: a restarted node kept the witness history its previous run had
/// read before its own claim, and rejoined behind its own epoch.
#[test]
fn seeds_that_once_failed_pass() {
    for seed in [3, 329, 2020, 21819, 63594] {
        if let Err(e) = Sim::new(seed, Mutation::None).run() {
            panic!("{e}");
        }
    }
}

/// Found by the simulator: an active whose disk fills for good stopped its
/// store, then, as a store holder on the newest timeline that held the
/// witness vote, activated again in a new epoch and stopped again, for as
/// long as the disk stayed full; its heartbeats went on, so the passive
/// never counted it silent and never took over. Now a node whose store
/// stops by itself gives the vote up and says so in its heartbeats
/// (`store_failed`), the passive counts it silent from then, and takes
/// over, as Exchange fails such a database over.
#[test]
fn an_active_whose_disk_fills_for_good_is_replaced_by_its_passive() {
    let mut checked = 0;
    for seed in 1..=200u64 {
        let mut sim = Sim::new(seed, Mutation::None);
        sim.kill_at_end = false;
        sim.kill_after_seed = None;
        sim.disk_full_at = Some(sim.faults_until + 10 * S);
        match sim.run() {
            Ok(stats) => checked += u32::from(stats.disk_checked),
            Err(e) => panic!("{e}"),
        }
    }
    // Runs where no node was active when the disk filled check nothing.
    assert!(
        checked >= 150,
        "only {checked} of 200 runs had a disk fill under an active"
    );
}

/// The fork invariant can fail: rewinding a rejoining node to the start of
/// its peer's *newest* epoch instead of the earliest one after its own
/// (`core::fork`) leaves records a deposed active made durable, never
/// acknowledged, in its copy past the fork.
#[test]
fn a_rejoin_to_the_wrong_fork_keeps_a_deposed_epochs_records() {
    let found = (1..=2000u64).find_map(|seed| {
        Sim::new(seed, Mutation::ForkAtNewest)
            .run()
            .err()
            .filter(|e| e.contains("past epoch"))
    });
    let e = found.expect("no seed found a copy past the fork");
    eprintln!("ForkAtNewest: {}", e.lines().next().unwrap_or_default());
}
