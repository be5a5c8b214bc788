//! The node's decisions as one deterministic state machine:
//! `Machine::step(input, now) -> actions`.
//!
//! The machine holds everything a node decides from: what it last heard
//! of its peer, the witness's last answer, what it holds on disk, and what
//! it decided before (its role and duty, the newest epoch it knows, a
//! refused failover, a planned move). Each input updates that state and the
//! machine decides again; the answer is a list of actions for the caller to
//! carry out (claim an epoch and open the store, take over, fence, start
//! replay, rejoin, seek the witness vote, send a heartbeat now). Inputs that
//! report the outcome of an action (`Activated`, `TakeoverRefused`,
//! `Frozen`) come back the same way.
//!
//! No threads, sockets, files or clocks: durations come from `now`. The
//! node daemon (package `logship`, `src/node.rs`) turns actions into I/O and
//! I/O into inputs; the cluster simulator (`tests/sim.rs` of this crate)
//! runs this same machine under a simulated clock and network.
//!
//! The rules it applies are `core`'s (each written once); ARCHITECTURE.md
//! ("The cluster protocol") has them as a table of state × input.

use std::fmt;
use std::time::{Duration, Instant};

use shipper::Epoch;

use crate::core::{
    self, ActivateReason, ActiveStep, HolderStep, HolderView, MovingStep, Mutation, PassiveStep,
    PassiveView, TargetStep, Vote,
};
use crate::dial::Position;
use crate::heartbeat::{Heartbeat, PeerView, Role};
use crate::moves::{self, MoveRefusal, MoveView};
use crate::quorum::Timing;

/// How long `move-cluster` waits for a target that will be ready soon (a
/// copy that has just started, queues that drain) before it refuses.
pub const MOVE_WAIT: Duration = Duration::from_secs(10);

/// How long a planned move may take before it is called off.
pub const MOVE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long after the copy's replay stopped (or could not start) it is
/// started again.
pub const REPLAY_RETRY: Duration = Duration::from_secs(1);

/// What a node holds on disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Holding {
    /// Nothing usable yet (no seed, or a seed under way).
    #[default]
    Nothing,
    /// A passive copy, replayed up to this LSN.
    Copy { replayed: u64 },
    /// The store itself (it was active, or is).
    Store,
}

/// The witness's last answer, as the node's witness client keeps it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WitnessFacts {
    pub vote: Vote,
    /// The witness lease's end, while the lock is held.
    pub until: Option<Instant>,
    /// The newest epoch on the witness and the node that owns it, as last
    /// read (kept while the witness is unreachable).
    pub newest: Option<(Epoch, String)>,
    /// The last request reached the witness.
    pub reachable: bool,
}

/// What the node finds on its own disk and in its own processes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalFacts {
    pub holding: Holding,
    /// An operator paused the node, and why.
    pub paused: Option<String>,
    /// The active store stopped by itself (a failed write or fsync).
    pub store_stopped: Option<String>,
}

/// What happens to a node, as the machine hears of it.
#[derive(Clone, Debug)]
pub enum Input {
    /// A heartbeat heard: the link's view of the peer after taking it in.
    Peer(PeerView),
    /// A witness answer.
    Witness(WitnessFacts),
    /// A copy or store event: what the node holds changed, or was read again.
    Local(LocalFacts),
    /// The outcome of `Activate` or `TakeOver`: the store is open and
    /// takes writes in `epoch`, its fence allowing them until `fence_until`.
    Activated {
        epoch: Epoch,
        fence_until: Option<Instant>,
    },
    /// The outcome of `Activate` or `TakeOver`: it did not happen (another
    /// node claimed first, an I/O error); the machine decides again at its
    /// next input.
    NotActivated(String),
    /// The outcome of `TakeOver`: the mount dial or a Failed copy refused
    /// it. The node stays passive until the active is heard again or an
    /// operator forces an activation.
    TakeoverRefused(String),
    /// An operator asks for a planned move to `to` (`move-cluster`).
    Move { to: String },
    /// The outcome of `StartMove`: intake stopped and the store sealed at
    /// `lsn`; or why it could not be.
    Frozen(Result<u64, String>),
    /// The outcome of `StartReplay`, or later news of it: the copy's replay
    /// could not start (its data directory still locked by a seed that is
    /// finishing), or it stopped by itself. It is started again after
    /// `REPLAY_RETRY`.
    ReplayStopped(String),
    /// Time passed.
    Timer,
}

/// Why an active stops taking writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stop {
    /// A newer epoch exists: rejoin as passive.
    SteppedDown { newer: Epoch },
    /// Neither the peer's vote nor the witness's holds.
    LostQuorum,
    /// The store stopped by itself.
    StoreFailed(String),
    /// A planned move's target holds the last LSN: hand over.
    Released,
}

/// What the machine asks of the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Seek (or keep) the witness vote, or give it up.
    WantVote(bool),
    /// The active's fence may allow writes until then.
    ExtendFence(Instant),
    /// Stop taking writes: revoke the fence and close the store.
    CloseStore(Stop),
    /// Run the passive copy's replay (if it does not run yet).
    StartReplay,
    /// Stop whatever duty runs (no copy to replay).
    StopDuty,
    /// Claim the next epoch and open this node's own store.
    Activate(ActivateReason),
    /// Copy what the old active's share still holds, decide the mount dial,
    /// claim the next epoch and open the copy as the store. `planned`: a
    /// move's target (no dial: nothing is missing).
    TakeOver { planned: bool },
    /// Read the witness's epoch history now (the peer says it is active in
    /// an epoch not read yet); the answer comes as the next `Witness` input.
    RefreshHistory,
    /// Undo what is past the fork, and follow the newer epoch's node.
    Rejoin,
    /// Send a heartbeat now (the role or a move's progress changed).
    Announce,
    /// A planned move's checks passed: stop intake and seal.
    StartMove { to: String },
    /// A planned move waits for its target (first time only).
    MoveWaits { to: String, refusal: MoveRefusal },
    /// A planned move is refused (after waiting, if it waited).
    MoveRefused {
        refusal: MoveRefusal,
        waited: Option<Duration>,
    },
    /// A planned move could not stop intake.
    MoveFailed(String),
    /// A planned move is done: the target is active in a newer epoch.
    MoveDone {
        to: String,
        lsn: u64,
        took: Duration,
        waited: Option<(MoveRefusal, Duration)>,
    },
    /// The target did not take over in time: this node takes writes again.
    MoveTimedOut { to: String },
}

/// Why a node is not doing what an operator would expect of it: what
/// `status` shows. One variant per reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Blocked {
    /// No copy yet: seed it.
    NoCopy {
        node: String,
    },
    Paused(String),
    /// A lagged copy: activated only by an operator.
    Lagged {
        node: String,
        peer: String,
        lag: Duration,
    },
    /// The active is silent, but the witness vote is not ours.
    NoVote {
        peer: String,
        why: String,
    },
    /// A store holder seeks the witness vote.
    WaitingForVote,
    /// The witness could never be read.
    WitnessUnreadable(String),
    /// The peer says it is active; its epoch is not on the witness yet.
    PeerEpochUnconfirmed {
        peer: String,
    },
    /// The witness's history as last read is older than an epoch this
    /// node knows of: nothing is decided on it until it is read again.
    HistoryBehind {
        read: Epoch,
        known: Epoch,
    },
    /// This node was active and a newer epoch began elsewhere.
    SteppedDown {
        newer: Epoch,
    },
    LostQuorum,
    /// The store stopped by itself; the node leaves the vote to its peer
    /// until `retry_in` has passed.
    StoreFailed {
        why: String,
    },
    /// The mount dial (or a Failed copy) refused a failover.
    TakeoverRefused(String),
    /// An activation did not happen.
    NotActivated(String),
    /// A rejoin's report (what it rewound, or why it cannot yet).
    Rejoin(String),
    /// The node's last step failed (an I/O error, named).
    StepFailed(String),
}

impl fmt::Display for Blocked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Blocked::NoCopy { node } => {
                write!(f, "no copy yet: seed it with `logship seed --node {node}`")
            }
            Blocked::Paused(why) => write!(f, "paused: {why}"),
            Blocked::Lagged { node, peer, lag } => write!(
                f,
                "{peer} is silent, but this is a lagged copy (replay-lag {}): it is not activated automatically; `logship activate --node {node} --play-down` replays everything, then activates",
                humantime::format_duration(*lag)
            ),
            Blocked::NoVote { peer, why } => write!(
                f,
                "{peer} is silent, but the witness vote is not ours ({why})"
            ),
            Blocked::WaitingForVote => write!(f, "waiting for the witness vote"),
            Blocked::WitnessUnreadable(why) => write!(f, "cannot read the witness: {why}"),
            Blocked::PeerEpochUnconfirmed { peer } => write!(
                f,
                "node {peer} is active: waiting for its epoch on the witness to rejoin as passive"
            ),
            Blocked::HistoryBehind { read, known } => write!(
                f,
                "the witness's history as last read ends at epoch {read}, but this node knows epoch {known}: reading it again"
            ),
            Blocked::SteppedDown { newer } => write!(
                f,
                "epoch {newer} began on another node while this node was active: it must rejoin as passive"
            ),
            Blocked::LostQuorum => write!(f, "lost quorum: stopped taking writes"),
            Blocked::StoreFailed { why } => write!(
                f,
                "the store stopped: {why}; the witness vote is left to the peer for a while, then the store is tried again"
            ),
            Blocked::TakeoverRefused(why)
            | Blocked::NotActivated(why)
            | Blocked::Rejoin(why)
            | Blocked::StepFailed(why) => f.write_str(why),
        }
    }
}

/// What the node is running.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Duty {
    #[default]
    Idle,
    /// The passive copy's replay.
    Replay,
    /// The store, taking writes in `epoch` while the fence allows.
    Active {
        epoch: Epoch,
        fence_until: Option<Instant>,
    },
}

/// A planned move on the active that hands over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Moving {
    pub to: String,
    pub lsn: u64,
    pub epoch: Epoch,
    pub started: Instant,
    /// The store is closed and the witness vote given up.
    pub released: bool,
    pub waited: Option<(MoveRefusal, Duration)>,
}

/// A `move-cluster` request whose target is not ready yet, in a way that
/// passes by itself: checked again at each step until `MOVE_WAIT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingMove {
    pub to: String,
    pub since: Instant,
    pub waiting_for: Option<MoveRefusal>,
}

/// What does not change during a node's run.
#[derive(Clone, Debug)]
pub struct Settings {
    pub me: String,
    pub peer: String,
    pub timing: Timing,
    /// A lagged copy's `replay-lag` (zero: not lagged).
    pub replay_lag: Duration,
    /// Always `Mutation::None` outside the simulator's own tests.
    pub mutation: Mutation,
}

/// One node's decisions.
#[derive(Clone, Debug)]
pub struct Machine {
    pub settings: Settings,
    /// When this run of the node began (its silence clock's origin).
    pub started: Instant,
    // What it heard.
    pub peer: PeerView,
    /// When the peer was last heard saying anything but that its store
    /// failed: the passive's silence counts from here.
    pub peer_live_at: Option<Instant>,
    pub witness: WitnessFacts,
    pub local: LocalFacts,
    // What it decided.
    pub role: Role,
    pub duty: Duty,
    pub known_epoch: Epoch,
    pub want_vote: bool,
    /// The mount dial refused a failover; cleared when the active is heard.
    pub dial_refused: bool,
    /// The old active's last position, from its heartbeats (for the dial).
    pub active_position: Option<Position>,
    /// A takeover or activation asked for and not answered yet.
    pub activating: bool,
    /// When this node's store last stopped by itself, and why.
    pub store_failed: Option<(Instant, String)>,
    /// The copy's replay stopped: not started again before this.
    pub replay_retry_at: Option<Instant>,
    pub moving: Option<Moving>,
    pub pending_move: Option<PendingMove>,
    pub blocked: Option<Blocked>,
}

impl Machine {
    pub fn new(settings: Settings, now: Instant) -> Machine {
        Machine {
            settings,
            started: now,
            peer: PeerView::default(),
            peer_live_at: None,
            witness: WitnessFacts::default(),
            local: LocalFacts::default(),
            role: Role::Starting,
            duty: Duty::Idle,
            known_epoch: Epoch(0),
            want_vote: false,
            dial_refused: false,
            active_position: None,
            activating: false,
            store_failed: None,
            replay_retry_at: None,
            moving: None,
            pending_move: None,
            blocked: None,
        }
    }

    fn t(&self) -> &Timing {
        &self.settings.timing
    }

    /// The peer was heard within `dead_after`.
    pub fn peer_alive(&self, now: Instant) -> bool {
        self.peer.alive_at(self.t().dead_after, now)
    }

    /// The peer's last heartbeat, if it is alive.
    pub fn live_peer(&self, now: Instant) -> Option<&Heartbeat> {
        self.peer.last.as_ref().filter(|_| self.peer_alive(now))
    }

    fn peer_active(&self, now: Instant) -> bool {
        self.live_peer(now).is_some_and(|h| h.role == Role::Active)
    }

    /// How long a node whose store stopped by itself leaves the witness
    /// vote to its peer before it tries its store again: long enough for a
    /// passive to count it silent and take the vote.
    pub fn store_failed_backoff(&self) -> Duration {
        self.t().dead_after * 2 + self.t().takeover_wait()
    }

    /// Takes in one input and says what to do. What the node hears (the
    /// peer, the witness, its disk) and the outcomes of its actions update
    /// its state; each turn of the node's loop (`Timer`) decides on all of
    /// it at once, so no decision is made on half of what changed.
    pub fn step(&mut self, input: Input, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        match input {
            Input::Peer(v) => {
                if v.heard_at != self.peer.heard_at
                    && v.last.as_ref().is_some_and(|h| !h.store_failed)
                {
                    self.peer_live_at = v.heard_at;
                }
                self.peer = v;
            }
            Input::Witness(w) => {
                if let (Some((old, _)), Some((new, _))) = (&self.witness.newest, &w.newest)
                    && new < old
                {
                    // An older read answered late: keep the newer one.
                    let newest = self.witness.newest.clone();
                    self.witness = WitnessFacts { newest, ..w };
                } else {
                    self.witness = w;
                }
            }
            Input::Local(l) => self.local = l,
            Input::Activated { epoch, fence_until } => {
                self.activating = false;
                self.known_epoch = self.known_epoch.max(epoch);
                self.duty = Duty::Active { epoch, fence_until };
                self.local.holding = Holding::Store;
                self.local.store_stopped = None;
                self.role = Role::Active;
                self.blocked = None;
                out.push(Action::Announce);
            }
            Input::NotActivated(why) => {
                self.activating = false;
                // Whatever ran was stopped for the attempt: start it again.
                self.duty = Duty::Idle;
                self.blocked = Some(Blocked::NotActivated(why));
            }
            Input::ReplayStopped(why) => {
                if self.duty == Duty::Replay {
                    self.duty = Duty::Idle;
                }
                self.replay_retry_at = Some(now + REPLAY_RETRY);
                self.blocked = Some(Blocked::StepFailed(why));
            }
            Input::TakeoverRefused(why) => {
                self.activating = false;
                self.duty = Duty::Idle;
                self.dial_refused = true;
                self.blocked = Some(Blocked::TakeoverRefused(why));
                out.push(Action::WantVote(false));
                self.want_vote = false;
            }
            Input::Move { to } => {
                if self.pending_move.is_some() {
                    out.push(Action::MoveRefused {
                        refusal: MoveRefusal::InProgress,
                        waited: None,
                    });
                } else {
                    self.pending_move = Some(PendingMove {
                        to,
                        since: now,
                        waiting_for: None,
                    });
                }
            }
            Input::Frozen(r) => {
                let p = self.pending_move.take();
                match (r, &self.duty, p) {
                    (Ok(lsn), Duty::Active { epoch, .. }, Some(p)) => {
                        self.moving = Some(Moving {
                            to: p.to,
                            lsn,
                            epoch: *epoch,
                            started: now,
                            released: false,
                            waited: p.waiting_for.map(|w| (w, now - p.since)),
                        });
                        out.push(Action::Announce);
                    }
                    (Ok(_), _, _) => out.push(Action::MoveFailed(
                        "the node stopped being active while it sealed".into(),
                    )),
                    (Err(e), _, _) => out.push(Action::MoveFailed(e)),
                }
            }
            Input::Timer => self.decide(now, &mut out),
        }
        out
    }

    fn learn(&mut self, now: Instant) {
        if let Some((e, _)) = &self.witness.newest {
            self.known_epoch = self.known_epoch.max(*e);
        }
        if let Some(hb) = &self.peer.last {
            self.known_epoch = self.known_epoch.max(hb.epoch);
        }
        if let Some(hb) = self.live_peer(now)
            && hb.role == Role::Active
        {
            self.active_position = Some(hb.position);
            self.dial_refused = false;
            if matches!(self.blocked, Some(Blocked::TakeoverRefused(_))) {
                self.blocked = None;
            }
        }
    }

    fn decide(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.learn(now);
        if self.activating {
            return;
        }
        if self.pending_move.is_some() && self.moving.is_none() {
            self.try_move(now, out);
        }
        if self.moving.is_some() {
            self.decide_moving(now, out);
            return;
        }
        if matches!(self.duty, Duty::Active { .. }) {
            self.decide_active(now, out);
        } else if self.handoff_to_me(now).is_some() {
            self.decide_target(now, out);
        } else if self.local.holding == Holding::Store {
            self.decide_holder(now, out);
        } else {
            self.decide_passive(now, out);
        }
    }

    fn want(&mut self, yes: bool, out: &mut Vec<Action>) {
        self.want_vote = yes;
        out.push(Action::WantVote(yes));
    }

    fn set_role(&mut self, role: Role, out: &mut Vec<Action>) {
        if self.role != role {
            self.role = role;
            out.push(Action::Announce);
        }
    }

    // ---- active ----

    fn decide_active(&mut self, now: Instant, out: &mut Vec<Action>) {
        let Duty::Active { epoch, fence_until } = self.duty.clone() else {
            return;
        };
        self.want(true, out);
        let mut view = core::ActiveView {
            epoch,
            known_epoch: self.known_epoch,
            peer_lease: self.peer.lease,
            witness_until: self.witness.until.filter(|_| self.witness.vote.held),
            fence_allows: true,
            store_stopped: self.local.store_stopped.clone(),
        };
        let mut fence = fence_until;
        if let Some(until) = core::leases(&view).until() {
            fence = Some(fence.map_or(until, |f| f.max(until)));
            out.push(Action::ExtendFence(until));
        }
        self.duty = Duty::Active {
            epoch,
            fence_until: fence,
        };
        view.fence_allows = fence.is_some_and(|f| now < f);
        let (stop, blocked) = match core::active_step(&view, now) {
            ActiveStep::Serve { .. } => return,
            ActiveStep::StepDown { newer } => {
                (Stop::SteppedDown { newer }, Blocked::SteppedDown { newer })
            }
            ActiveStep::Fence => (Stop::LostQuorum, Blocked::LostQuorum),
            ActiveStep::StoreStopped(why) => {
                self.store_failed = Some((now, why.clone()));
                // The vote goes to the peer, which may take over.
                self.want(false, out);
                (Stop::StoreFailed(why.clone()), Blocked::StoreFailed { why })
            }
        };
        out.push(Action::CloseStore(stop));
        self.duty = Duty::Idle;
        self.blocked = Some(blocked);
        self.set_role(Role::Fenced, out);
    }

    // ---- store holder ----

    fn decide_holder(&mut self, now: Instant, out: &mut Vec<Action>) {
        let failed = self
            .store_failed
            .as_ref()
            .filter(|(at, _)| now.saturating_duration_since(*at) < self.store_failed_backoff())
            .map(|(_, why)| why.clone());
        let view = HolderView {
            me: self.settings.me.clone(),
            newest_owner: self.witness.newest.as_ref().map(|(_, n)| n.clone()),
            newest_epoch: self.witness.newest.as_ref().map(|(e, _)| *e),
            known_epoch: self.known_epoch,
            peer_active: self.peer_active(now),
            witness_unreadable: (self.witness.newest.is_none()
                && !self.witness.reachable
                && self.witness.vote.error.is_some())
            .then(|| self.witness.vote.error.clone().unwrap_or_default()),
            paused: self.local.paused.clone(),
            store_failed: failed,
            vote: self.witness.vote.clone(),
            mutation: self.settings.mutation,
        };
        let step = core::holder_step(&view, self.t(), now);
        self.want(step.wants_vote(), out);
        if !matches!(step, HolderStep::Activate(_) | HolderStep::WaitLease) {
            self.set_role(Role::Fenced, out);
        }
        match step {
            HolderStep::Rejoin => out.push(Action::Rejoin),
            HolderStep::ConfirmPeerEpoch => {
                self.blocked = Some(Blocked::PeerEpochUnconfirmed {
                    peer: self.settings.peer.clone(),
                });
                out.push(Action::RefreshHistory);
            }
            HolderStep::HistoryBehind { read, known } => {
                self.blocked = Some(Blocked::HistoryBehind { read, known });
                out.push(Action::RefreshHistory);
            }
            HolderStep::WitnessUnreadable(why) => {
                self.blocked = Some(Blocked::WitnessUnreadable(why))
            }
            HolderStep::Paused(why) => self.blocked = Some(Blocked::Paused(why)),
            HolderStep::StoreFailed(why) => self.blocked = Some(Blocked::StoreFailed { why }),
            HolderStep::NoVote => self.blocked = Some(Blocked::WaitingForVote),
            HolderStep::WaitLease => {}
            HolderStep::Activate(reason) => {
                self.activating = true;
                out.push(Action::Activate(reason));
            }
        }
    }

    // ---- passive ----

    fn decide_passive(&mut self, now: Instant, out: &mut Vec<Action>) {
        let view = PassiveView {
            has_copy: matches!(self.local.holding, Holding::Copy { .. }),
            peer_heard_at: self.peer_live_at,
            started: self.started,
            paused: self.local.paused.clone(),
            dial_refused: self.dial_refused,
            lagged: !self.settings.replay_lag.is_zero(),
            vote: self.witness.vote.clone(),
            mutation: self.settings.mutation,
        };
        let step = core::passive_step(&view, self.t(), now);
        self.want(step.wants_vote(), out);
        self.set_role(Role::Passive, out);
        if step == PassiveStep::NoCopy {
            if self.duty != Duty::Idle {
                self.duty = Duty::Idle;
                out.push(Action::StopDuty);
            }
            self.blocked = Some(Blocked::NoCopy {
                node: self.settings.me.clone(),
            });
            return;
        }
        self.start_replay(now, out);
        match step {
            PassiveStep::NoCopy | PassiveStep::SeekVote | PassiveStep::WaitLease => {}
            // What the refused failover said stays shown.
            PassiveStep::DialRefused => {}
            PassiveStep::Follow => {
                if !self.dial_refused {
                    self.blocked = None;
                }
            }
            PassiveStep::Paused(why) => self.blocked = Some(Blocked::Paused(why)),
            PassiveStep::Lagged => {
                self.blocked = Some(Blocked::Lagged {
                    node: self.settings.me.clone(),
                    peer: self.settings.peer.clone(),
                    lag: self.settings.replay_lag,
                })
            }
            PassiveStep::NoVote(why) => {
                self.blocked = Some(Blocked::NoVote {
                    peer: self.settings.peer.clone(),
                    why,
                })
            }
            PassiveStep::TakeOver => {
                self.activating = true;
                out.push(Action::TakeOver { planned: false });
            }
        }
    }

    fn start_replay(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.replay_retry_at.is_some_and(|t| now < t) {
            return;
        }
        if self.duty != Duty::Replay {
            self.duty = Duty::Replay;
            out.push(Action::StartReplay);
        }
    }

    // ---- planned move ----

    /// The move a live peer hands to this node, if this node holds a copy.
    pub fn handoff_to_me(&self, now: Instant) -> Option<u64> {
        let h = self.live_peer(now)?.handoff.as_ref()?;
        (h.to == self.settings.me && matches!(self.local.holding, Holding::Copy { .. }))
            .then_some(h.lsn.0)
    }

    fn decide_target(&mut self, now: Instant, out: &mut Vec<Action>) {
        let Some(lsn) = self.handoff_to_me(now) else {
            return;
        };
        self.start_replay(now, out);
        self.set_role(Role::Passive, out);
        let replayed = match self.local.holding {
            Holding::Copy { replayed } => replayed,
            _ => 0,
        };
        match core::target_step(replayed, lsn, self.peer_active(now), self.witness.vote.held) {
            TargetStep::CatchUp => {}
            TargetStep::SeekVote => self.want(true, out),
            TargetStep::TakeOver => {
                self.want(true, out);
                self.activating = true;
                out.push(Action::TakeOver { planned: true });
            }
        }
    }

    /// The one view that `move-cluster` and the active's status
    /// (`move_check`) are both computed from.
    pub fn move_view(&self, now: Instant) -> MoveView<'_> {
        MoveView {
            me: &self.settings.me,
            peer: &self.settings.peer,
            moving: self.moving.is_some(),
            peer_heartbeat: self.live_peer(now),
            witness: if self.witness.reachable && self.witness.vote.held {
                Ok(())
            } else {
                Err(self
                    .witness
                    .vote
                    .error
                    .clone()
                    .unwrap_or_else(|| "this node does not hold its vote".into()))
            },
        }
    }

    /// For an active's status: whether `move-cluster --to <peer>` would go
    /// now (`None` when this node is not active).
    pub fn move_check(&self, now: Instant) -> Option<Result<(), MoveRefusal>> {
        matches!(self.duty, Duty::Active { .. })
            .then(|| moves::check(&self.settings.peer, &self.move_view(now)))
    }

    fn try_move(&mut self, now: Instant, out: &mut Vec<Action>) {
        let Some(p) = self.pending_move.clone() else {
            return;
        };
        let waited = now.saturating_duration_since(p.since);
        let r = if matches!(self.duty, Duty::Active { .. }) {
            moves::check(&p.to, &self.move_view(now))
        } else {
            Err(MoveRefusal::NotActive {
                me: self.settings.me.clone(),
            })
        };
        match r {
            Ok(()) => out.push(Action::StartMove { to: p.to }),
            Err(r) if r.passes_soon() && waited < MOVE_WAIT => {
                if p.waiting_for.is_none() {
                    out.push(Action::MoveWaits {
                        to: p.to.clone(),
                        refusal: r.clone(),
                    });
                }
                self.pending_move = Some(PendingMove {
                    waiting_for: Some(r),
                    ..p
                });
            }
            Err(r) => {
                let waited = r.passes_soon().then_some(waited);
                self.pending_move = None;
                out.push(Action::MoveRefused { refusal: r, waited });
            }
        }
    }

    fn decide_moving(&mut self, now: Instant, out: &mut Vec<Action>) {
        let Some(m) = self.moving.clone() else {
            return;
        };
        let step = core::moving_step(
            m.lsn,
            m.epoch,
            m.released,
            self.live_peer(now),
            now.saturating_duration_since(m.started),
            MOVE_TIMEOUT,
        );
        match step {
            MovingStep::Wait => {}
            MovingStep::Release => {
                if let Some(m) = &mut self.moving {
                    m.released = true;
                }
                out.push(Action::CloseStore(Stop::Released));
                self.duty = Duty::Idle;
                self.want(false, out);
                self.role = Role::Starting;
                out.push(Action::Announce);
            }
            MovingStep::Done => {
                self.moving = None;
                out.push(Action::MoveDone {
                    to: m.to,
                    lsn: m.lsn,
                    took: now.saturating_duration_since(m.started),
                    waited: m.waited,
                });
                self.set_role(Role::Fenced, out);
            }
            MovingStep::TimedOut => {
                self.moving = None;
                out.push(Action::MoveTimedOut { to: m.to });
                // Closing the frozen store lets the next steps activate it
                // again in a new epoch.
                if !m.released {
                    out.push(Action::CloseStore(Stop::Released));
                    self.duty = Duty::Idle;
                }
            }
        }
    }

    // ---- what the node says ----

    /// The vote this node lends its peer in its heartbeats.
    pub fn supports(&self, now: Instant) -> Option<Epoch> {
        core::support(
            self.role,
            self.want_vote,
            self.known_epoch,
            self.peer.last.as_ref(),
            self.peer_alive(now),
        )
    }

    /// The epoch its heartbeats carry: the one it is active in, else the
    /// newest it knows.
    pub fn heartbeat_epoch(&self) -> Epoch {
        match &self.duty {
            Duty::Active { epoch, .. } => *epoch,
            _ => self.known_epoch,
        }
    }

    /// Its heartbeats say its store failed (the peer then counts it silent).
    pub fn says_store_failed(&self, now: Instant) -> bool {
        self.duty == Duty::Idle
            && self.local.holding == Holding::Store
            && self.store_failed.as_ref().is_some_and(|(at, _)| {
                now.saturating_duration_since(*at) < self.store_failed_backoff()
            })
    }

    /// Whether an operator's `activate` may go: the refusals, in the order
    /// an operator fixes them.
    pub fn may_activate(&self, play_down: bool, now: Instant) -> Result<(), ActivateRefusal> {
        let me = self.settings.me.clone();
        if matches!(self.duty, Duty::Active { .. }) {
            return Err(ActivateRefusal::AlreadyActive { node: me });
        }
        if !self.settings.replay_lag.is_zero() && !play_down {
            return Err(ActivateRefusal::Lagged {
                node: me,
                lag: self.settings.replay_lag,
            });
        }
        if let Some(why) = &self.local.paused {
            return Err(ActivateRefusal::Paused {
                node: me,
                why: why.clone(),
            });
        }
        if self.peer_active(now) {
            return Err(ActivateRefusal::PeerActive {
                peer: self.settings.peer.clone(),
            });
        }
        if !matches!(self.local.holding, Holding::Copy { .. }) {
            return Err(ActivateRefusal::NoCopy { node: me });
        }
        Ok(())
    }
}

/// Why an operator's `activate` is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ActivateRefusal {
    #[error("node {node} is already active")]
    AlreadyActive { node: String },
    #[error(
        "node {node} is a lagged copy (replay-lag {}): `logship activate --play-down` replays everything it holds, then activates",
        humantime::format_duration(*lag)
    )]
    Lagged { node: String, lag: Duration },
    #[error("node {node} is paused ({why}): resume it first")]
    Paused { node: String, why: String },
    #[error("node {peer} is active and answering: use `logship move-cluster` for a planned move")]
    PeerActive { peer: String },
    #[error("node {node} holds no usable copy to activate")]
    NoCopy { node: String },
}

#[cfg(test)]
mod tests {
    //! One test per row of ARCHITECTURE.md's table ("The decisions as a
    //! table"), on the machine as the daemon runs it, with a fake clock.

    use super::*;
    use crate::heartbeat::{CopyBrief, Handoff};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn timing() -> Timing {
        Timing {
            interval: ms(200),
            dead_after: ms(1000),
        }
    }

    fn machine(t0: Instant, holding: Holding) -> Machine {
        let mut m = Machine::new(
            Settings {
                me: "beta".into(),
                peer: "alpha".into(),
                timing: timing(),
                replay_lag: Duration::ZERO,
                mutation: Mutation::None,
            },
            t0,
        );
        m.step(
            Input::Local(LocalFacts {
                holding,
                ..Default::default()
            }),
            t0,
        );
        m
    }

    fn hb(role: Role, epoch: u64) -> Heartbeat {
        Heartbeat {
            node: "alpha".into(),
            role,
            epoch: Epoch(epoch),
            position: Position {
                lsn: shipper::Lsn(10),
                generation: shipper::Generation(2),
            },
            ..Default::default()
        }
    }

    fn hear(m: &mut Machine, h: Heartbeat, at: Instant) {
        let lease = m.peer.lease;
        m.step(
            Input::Peer(PeerView {
                last: Some(h),
                heard_at: Some(at),
                lease,
                problem: None,
            }),
            at,
        );
    }

    fn witness(m: &mut Machine, held_since: Option<Instant>, newest: Option<(u64, &str)>) {
        let w = WitnessFacts {
            vote: Vote {
                held: held_since.is_some(),
                acquired_at: held_since,
                error: None,
            },
            until: held_since.map(|t| t + timing().witness_lease()),
            newest: newest.map(|(e, n)| (Epoch(e), n.to_string())),
            reachable: true,
        };
        let now = held_since.unwrap_or(m.started);
        m.step(Input::Witness(w), now);
    }

    fn has(actions: &[Action], a: &Action) -> bool {
        actions.contains(a)
    }

    fn takes_over(actions: &[Action]) -> bool {
        actions
            .iter()
            .any(|a| matches!(a, Action::TakeOver { .. } | Action::Activate(_)))
    }

    // ---- passive ----

    #[test]
    fn passive_without_a_copy_stops_replay_and_says_seed_it() {
        let t0 = Instant::now();
        let mut m = machine(t0, Holding::Copy { replayed: 5 });
        assert!(has(&m.step(Input::Timer, t0), &Action::StartReplay));
        m.step(Input::Local(LocalFacts::default()), t0);
        let a = m.step(Input::Timer, t0 + ms(10));
        assert!(has(&a, &Action::StopDuty) && has(&a, &Action::WantVote(false)));
        assert!(matches!(m.blocked, Some(Blocked::NoCopy { .. })));
        assert!(
            m.blocked
                .as_ref()
                .unwrap()
                .to_string()
                .contains("logship seed --node beta")
        );
    }

    #[test]
    fn a_replay_that_could_not_start_is_started_again_after_a_pause() {
        let t0 = Instant::now();
        let mut m = machine(t0, Holding::Copy { replayed: 5 });
        hear(&mut m, hb(Role::Active, 3), t0);
        assert!(has(&m.step(Input::Timer, t0), &Action::StartReplay));
        // The seed that wrote the copy still held its data directory.
        m.step(Input::ReplayStopped("locked by pid 7".into()), t0 + ms(10));
        assert_eq!(m.duty, Duty::Idle);
        assert_eq!(
            m.blocked,
            Some(Blocked::StepFailed("locked by pid 7".into()))
        );
        let a = m.step(Input::Timer, t0 + ms(20));
        assert!(!has(&a, &Action::StartReplay), "{a:?}");
        let a = m.step(Input::Timer, t0 + ms(10) + REPLAY_RETRY);
        assert!(has(&a, &Action::StartReplay), "{a:?}");
        assert_eq!(m.duty, Duty::Replay);
    }
    #[test]
    fn passive_that_hears_the_active_replays_and_lends_it_the_vote() {
        let t0 = Instant::now();
        let mut m = machine(t0, Holding::Copy { replayed: 5 });
        hear(&mut m, hb(Role::Active, 3), t0);
        let a = m.step(Input::Timer, t0 + ms(100));
        assert!(has(&a, &Action::StartReplay) && has(&a, &Action::WantVote(false)));
        assert_eq!(m.role, Role::Passive);
        assert_eq!(m.supports(t0 + ms(100)), Some(Epoch(3)));
        assert_eq!(m.active_position.map(|p| p.lsn), Some(shipper::Lsn(10)));
    }

    #[test]
    fn paused_dial_refused_or_lagged_passives_never_seek_the_vote() {
        let t0 = Instant::now();
        let late = t0 + ms(5000);
        let mut paused = machine(t0, Holding::Copy { replayed: 5 });
        paused.step(
            Input::Local(LocalFacts {
                holding: Holding::Copy { replayed: 5 },
                paused: Some("maintenance".into()),
                store_stopped: None,
            }),
            t0,
        );
        let a = paused.step(Input::Timer, late);
        assert!(has(&a, &Action::WantVote(false)) && !takes_over(&a));
        assert_eq!(paused.blocked, Some(Blocked::Paused("maintenance".into())));

        let mut refused = machine(t0, Holding::Copy { replayed: 5 });
        refused.step(Input::TakeoverRefused("dial".into()), t0);
        let a = refused.step(Input::Timer, late);
        assert!(has(&a, &Action::WantVote(false)) && !takes_over(&a));
        // Hearing the active again clears the refusal.
        hear(&mut refused, hb(Role::Active, 3), late);
        refused.step(Input::Timer, late);
        assert!(!refused.dial_refused && refused.blocked.is_none());

        let mut lagged = machine(t0, Holding::Copy { replayed: 5 });
        lagged.settings.replay_lag = Duration::from_secs(3600);
        let a = lagged.step(Input::Timer, late);
        assert!(has(&a, &Action::WantVote(false)) && !takes_over(&a));
        assert!(
            lagged
                .blocked
                .as_ref()
                .unwrap()
                .to_string()
                .contains("--play-down")
        );
    }

    #[test]
    fn passive_seeks_the_vote_once_suspicious_and_withdraws_its_own() {
        let t0 = Instant::now();
        let mut m = machine(t0, Holding::Copy { replayed: 5 });
        hear(&mut m, hb(Role::Active, 3), t0);
        // Past suspect (400 ms), before dead-after (1 s).
        let a = m.step(Input::Timer, t0 + ms(500));
        assert!(has(&a, &Action::WantVote(true)) && !takes_over(&a));
        assert_eq!(m.supports(t0 + ms(500)), None);
    }

    #[test]
    fn passive_takes_over_only_with_the_vote_held_past_the_wait() {
        let t0 = Instant::now();
        let mut m = machine(t0, Holding::Copy { replayed: 5 });
        hear(&mut m, hb(Role::Active, 3), t0);
        // Dead, but the vote is another's.
        let a = m.step(Input::Timer, t0 + ms(1100));
        assert!(!takes_over(&a));
        assert!(matches!(m.blocked, Some(Blocked::NoVote { .. })));
        // The vote taken at 1.1 s: the wait is 570 ms.
        let took = t0 + ms(1100);
        witness(&mut m, Some(took), Some((3, "alpha")));
        assert!(!takes_over(&m.step(Input::Timer, took + ms(500))));
        let a = m.step(Input::Timer, took + ms(600));
        assert!(has(&a, &Action::TakeOver { planned: false }));
        // Nothing more is decided until the takeover's outcome comes back.
        assert!(m.step(Input::Timer, took + ms(700)).is_empty());
        let a = m.step(
            Input::Activated {
                epoch: Epoch(4),
                fence_until: Some(took + ms(1000)),
            },
            took + ms(700),
        );
        assert!(has(&a, &Action::Announce));
        assert_eq!((m.role, m.known_epoch), (Role::Active, Epoch(4)));
    }

    #[test]
    fn a_takeover_that_did_not_happen_is_tried_again_and_replay_restarts() {
        let t0 = Instant::now();
        let mut m = machine(t0, Holding::Copy { replayed: 5 });
        hear(&mut m, hb(Role::Active, 3), t0);
        witness(&mut m, Some(t0 + ms(500)), Some((3, "alpha")));
        assert!(takes_over(&m.step(Input::Timer, t0 + ms(1200))));
        m.step(Input::NotActivated("claimed first".into()), t0 + ms(1300));
        assert_eq!(
            m.blocked,
            Some(Blocked::NotActivated("claimed first".into()))
        );
        let a = m.step(Input::Timer, t0 + ms(1400));
        assert!(has(&a, &Action::StartReplay) && takes_over(&a));
    }

    #[test]
    fn a_peer_whose_store_failed_counts_as_silent() {
        let t0 = Instant::now();
        let mut m = machine(t0, Holding::Copy { replayed: 5 });
        hear(&mut m, hb(Role::Active, 3), t0);
        // It keeps talking, but says its store failed.
        let failed = Heartbeat {
            store_failed: true,
            ..hb(Role::Fenced, 3)
        };
        for k in 1..=6 {
            hear(&mut m, failed.clone(), t0 + ms(200 * k));
        }
        witness(&mut m, Some(t0 + ms(500)), Some((3, "alpha")));
        let a = m.step(Input::Timer, t0 + ms(1200));
        assert!(has(&a, &Action::TakeOver { planned: false }), "{a:?}");
    }

    // ---- store holder ----

    fn holder(t0: Instant) -> Machine {
        let mut m = machine(t0, Holding::Store);
        m.known_epoch = Epoch(3);
        m
    }

    #[test]
    fn a_holder_behind_another_nodes_newer_epoch_rejoins() {
        let t0 = Instant::now();
        let mut m = holder(t0);
        witness(&mut m, None, Some((4, "alpha")));
        let a = m.step(Input::Timer, t0);
        assert!(has(&a, &Action::Rejoin) && has(&a, &Action::WantVote(false)));
        assert_eq!(m.role, Role::Fenced);
    }

    #[test]
    fn a_holder_decides_nothing_on_a_history_older_than_an_epoch_it_knows() {
        let t0 = Instant::now();
        let mut m = holder(t0);
        m.known_epoch = Epoch(5);
        witness(&mut m, None, Some((4, "alpha")));
        let a = m.step(Input::Timer, t0);
        assert!(has(&a, &Action::RefreshHistory) && !has(&a, &Action::Rejoin));
        assert_eq!(
            m.blocked,
            Some(Blocked::HistoryBehind {
                read: Epoch(4),
                known: Epoch(5)
            })
        );
        // An older read answered late does not replace a newer one.
        witness(&mut m, None, Some((5, "beta")));
        witness(&mut m, None, Some((4, "alpha")));
        assert_eq!(m.witness.newest, Some((Epoch(5), "beta".into())));
    }

    #[test]
    fn a_holder_that_hears_an_active_peer_reads_the_witness_again() {
        let t0 = Instant::now();
        let mut m = holder(t0);
        witness(&mut m, None, Some((3, "beta")));
        hear(&mut m, hb(Role::Active, 3), t0);
        let a = m.step(Input::Timer, t0);
        assert!(has(&a, &Action::RefreshHistory) && !takes_over(&a));
        assert!(matches!(
            m.blocked,
            Some(Blocked::PeerEpochUnconfirmed { .. })
        ));
    }

    #[test]
    fn a_holder_waits_on_an_unreadable_witness_or_a_pause() {
        let t0 = Instant::now();
        let mut m = holder(t0);
        m.step(
            Input::Witness(WitnessFacts {
                vote: Vote {
                    error: Some("no such share".into()),
                    ..Default::default()
                },
                ..Default::default()
            }),
            t0,
        );
        let a = m.step(Input::Timer, t0);
        assert!(!takes_over(&a) && has(&a, &Action::WantVote(false)));
        assert_eq!(
            m.blocked,
            Some(Blocked::WitnessUnreadable("no such share".into()))
        );
        let mut p = holder(t0);
        p.step(
            Input::Local(LocalFacts {
                holding: Holding::Store,
                paused: Some("p".into()),
                store_stopped: None,
            }),
            t0,
        );
        let a = p.step(Input::Timer, t0);
        assert!(!takes_over(&a) && has(&a, &Action::WantVote(false)));
    }

    #[test]
    fn a_holder_seeks_the_vote_waits_it_out_then_activates_again() {
        let t0 = Instant::now();
        let mut m = holder(t0);
        witness(&mut m, None, Some((3, "beta")));
        let a = m.step(Input::Timer, t0);
        assert!(has(&a, &Action::WantVote(true)) && !takes_over(&a));
        assert_eq!(m.blocked, Some(Blocked::WaitingForVote));
        witness(&mut m, Some(t0 + ms(100)), Some((3, "beta")));
        assert!(!takes_over(&m.step(Input::Timer, t0 + ms(600))));
        let a = m.step(Input::Timer, t0 + ms(700));
        assert!(has(&a, &Action::Activate(ActivateReason::Restart)));
        // The cluster's first start.
        let mut first = machine(t0, Holding::Store);
        witness(&mut first, Some(t0), None);
        let a = first.step(Input::Timer, t0 + ms(600));
        assert!(has(&a, &Action::Activate(ActivateReason::Start)));
    }

    // ---- active ----

    fn active(t0: Instant) -> Machine {
        let mut m = holder(t0);
        witness(&mut m, Some(t0), Some((4, "beta")));
        m.step(
            Input::Activated {
                epoch: Epoch(4),
                fence_until: Some(t0 + ms(500)),
            },
            t0,
        );
        m
    }

    #[test]
    fn an_active_extends_its_fence_to_the_later_lease_and_keeps_the_vote() {
        let t0 = Instant::now();
        let mut m = active(t0);
        let a = m.step(Input::Timer, t0 + ms(100));
        assert!(has(&a, &Action::WantVote(true)));
        assert!(has(&a, &Action::ExtendFence(t0 + ms(500))));
        assert_eq!(m.role, Role::Active);
        assert_eq!(m.move_check(t0 + ms(100)).map(|r| r.is_err()), Some(true));
    }

    #[test]
    fn an_active_steps_down_before_a_newer_epoch() {
        let t0 = Instant::now();
        let mut m = active(t0);
        hear(&mut m, hb(Role::Active, 5), t0 + ms(100));
        let a = m.step(Input::Timer, t0 + ms(100));
        assert!(has(
            &a,
            &Action::CloseStore(Stop::SteppedDown { newer: Epoch(5) })
        ));
        assert_eq!((m.role, &m.duty), (Role::Fenced, &Duty::Idle));
    }

    #[test]
    fn an_active_without_a_lease_fences() {
        let t0 = Instant::now();
        let mut m = active(t0);
        // The witness lease (500 ms) ran out, no peer vote.
        let a = m.step(Input::Timer, t0 + ms(600));
        assert!(has(&a, &Action::CloseStore(Stop::LostQuorum)));
        assert_eq!(m.blocked, Some(Blocked::LostQuorum));
    }

    #[test]
    fn an_active_whose_store_fails_gives_the_vote_up_for_a_while() {
        let t0 = Instant::now();
        let mut m = active(t0);
        m.step(
            Input::Local(LocalFacts {
                holding: Holding::Store,
                paused: None,
                store_stopped: Some("disk full".into()),
            }),
            t0,
        );
        let a = m.step(Input::Timer, t0 + ms(100));
        assert!(has(
            &a,
            &Action::CloseStore(Stop::StoreFailed("disk full".into()))
        ));
        assert!(has(&a, &Action::WantVote(false)));
        assert!(m.says_store_failed(t0 + ms(100)));
        m.step(
            Input::Local(LocalFacts {
                holding: Holding::Store,
                ..Default::default()
            }),
            t0,
        );
        let a = m.step(Input::Timer, t0 + ms(200));
        assert!(has(&a, &Action::WantVote(false)) && !takes_over(&a));
        // After the backoff it seeks the vote again (the disk may be freed).
        let later = t0 + ms(100) + m.store_failed_backoff();
        let a = m.step(Input::Timer, later);
        assert!(has(&a, &Action::WantVote(true)));
        assert!(!m.says_store_failed(later));
    }

    // ---- planned move ----

    fn healthy_passive(summary: &str) -> Heartbeat {
        Heartbeat {
            copy: Some(CopyBrief {
                summary: summary.into(),
                copy_queue: 0,
                replay_queue: 0,
            }),
            ..hb(Role::Passive, 4)
        }
    }

    #[test]
    fn a_move_waits_for_what_passes_by_itself_and_status_says_the_same() {
        let t0 = Instant::now();
        let mut m = active(t0);
        hear(&mut m, healthy_passive("Initializing"), t0);
        let check = m.move_check(t0).expect("active");
        assert!(check.as_ref().is_err_and(|r| r.passes_soon()));
        m.step(Input::Move { to: "alpha".into() }, t0);
        let a = m.step(Input::Timer, t0);
        assert!(a.iter().any(
            |x| matches!(x, Action::MoveWaits { refusal, .. } if Err(refusal) == check.as_ref())
        ));
        // Still Initializing after MOVE_WAIT: refused, saying it waited.
        hear(&mut m, healthy_passive("Initializing"), t0 + MOVE_WAIT);
        let a = m.step(Input::Timer, t0 + MOVE_WAIT);
        assert!(a.iter().any(|x| matches!(
            x,
            Action::MoveRefused {
                waited: Some(_),
                ..
            }
        )));
        assert!(m.pending_move.is_none());
    }

    #[test]
    fn a_move_that_fails_a_check_is_refused_at_once() {
        let t0 = Instant::now();
        let mut m = active(t0);
        hear(
            &mut m,
            Heartbeat {
                paused: true,
                ..healthy_passive("Healthy")
            },
            t0,
        );
        m.step(Input::Move { to: "alpha".into() }, t0);
        let a = m.step(Input::Timer, t0);
        assert!(a.iter().any(|x| matches!(
            x,
            Action::MoveRefused {
                refusal: MoveRefusal::Paused { .. },
                waited: None
            }
        )));
        // Not active: refused too.
        let mut p = machine(t0, Holding::Copy { replayed: 1 });
        p.step(Input::Move { to: "alpha".into() }, t0);
        let a = p.step(Input::Timer, t0);
        assert!(a.iter().any(|x| matches!(
            x,
            Action::MoveRefused {
                refusal: MoveRefusal::NotActive { .. },
                ..
            }
        )));
    }

    #[test]
    fn a_move_freezes_releases_once_the_target_holds_the_lsn_and_ends_when_it_is_active() {
        let t0 = Instant::now();
        let mut m = active(t0);
        hear(&mut m, healthy_passive("Healthy"), t0);
        m.step(Input::Move { to: "alpha".into() }, t0);
        let a = m.step(Input::Timer, t0);
        assert!(has(&a, &Action::StartMove { to: "alpha".into() }));
        let a = m.step(Input::Frozen(Ok(10)), t0);
        assert!(has(&a, &Action::Announce));
        let behind = Heartbeat {
            position: Position {
                lsn: shipper::Lsn(9),
                generation: shipper::Generation(2),
            },
            ..healthy_passive("Healthy")
        };
        hear(&mut m, behind, t0 + ms(50));
        assert!(m.step(Input::Timer, t0 + ms(50)).is_empty());
        hear(&mut m, healthy_passive("Healthy"), t0 + ms(100));
        let a = m.step(Input::Timer, t0 + ms(100));
        assert!(has(&a, &Action::CloseStore(Stop::Released)) && has(&a, &Action::WantVote(false)));
        hear(&mut m, hb(Role::Active, 5), t0 + ms(200));
        let a = m.step(Input::Timer, t0 + ms(200));
        assert!(
            a.iter()
                .any(|x| matches!(x, Action::MoveDone { lsn: 10, .. }))
        );
        assert!(m.moving.is_none());
    }

    #[test]
    fn a_move_whose_target_never_takes_over_times_out_and_the_store_reopens() {
        let t0 = Instant::now();
        let mut m = active(t0);
        hear(&mut m, healthy_passive("Healthy"), t0);
        m.step(Input::Move { to: "alpha".into() }, t0);
        m.step(Input::Timer, t0);
        m.step(Input::Frozen(Ok(10)), t0);
        let late = t0 + MOVE_TIMEOUT + ms(1);
        let a = m.step(Input::Timer, late);
        assert!(has(&a, &Action::MoveTimedOut { to: "alpha".into() }));
        assert!(has(&a, &Action::CloseStore(Stop::Released)));
        assert_eq!(m.duty, Duty::Idle);
    }

    #[test]
    fn a_moves_target_catches_up_takes_the_vote_then_takes_over() {
        let t0 = Instant::now();
        let mut m = machine(t0, Holding::Copy { replayed: 8 });
        let handing = Heartbeat {
            handoff: Some(Handoff {
                to: "beta".into(),
                lsn: shipper::Lsn(10),
                comment: String::new(),
            }),
            ..hb(Role::Active, 4)
        };
        hear(&mut m, handing.clone(), t0);
        let a = m.step(Input::Timer, t0);
        assert!(!takes_over(&a) && !has(&a, &Action::WantVote(true)));
        m.step(
            Input::Local(LocalFacts {
                holding: Holding::Copy { replayed: 10 },
                ..Default::default()
            }),
            t0,
        );
        // The old active closed its store: it says Starting.
        hear(
            &mut m,
            Heartbeat {
                role: Role::Starting,
                ..handing
            },
            t0 + ms(50),
        );
        let a = m.step(Input::Timer, t0 + ms(50));
        assert!(has(&a, &Action::WantVote(true)) && !takes_over(&a));
        witness(&mut m, Some(t0 + ms(60)), Some((4, "alpha")));
        let a = m.step(Input::Timer, t0 + ms(70));
        assert!(has(&a, &Action::TakeOver { planned: true }));
    }

    #[test]
    fn an_operators_activation_is_refused_with_its_reason() {
        let t0 = Instant::now();
        let mut m = machine(t0, Holding::Copy { replayed: 1 });
        hear(&mut m, hb(Role::Active, 3), t0);
        assert!(matches!(
            m.may_activate(false, t0),
            Err(ActivateRefusal::PeerActive { .. })
        ));
        assert!(m.may_activate(false, t0 + ms(2000)).is_ok());
        let none = machine(t0, Holding::Nothing);
        assert!(matches!(
            none.may_activate(false, t0),
            Err(ActivateRefusal::NoCopy { .. })
        ));
        assert!(matches!(
            active(t0).may_activate(false, t0),
            Err(ActivateRefusal::AlreadyActive { .. })
        ));
    }
}
