//! The node's role decisions, pure: given what a node knows now (its peer's
//! last heartbeat, the witness vote, its own store or copy) and the time on
//! its own monotonic clock, what it does next. No threads, sockets, files
//! or clocks in here: the node daemon (`src/node.rs`) turns these steps
//! into I/O, and the cluster simulator (`tests/sim.rs` of this crate) runs
//! the very same functions under a simulated clock and network.
//!
//! Each rule is written once: when a passive may take over
//! (`passive_step`), when a node that holds the store may activate again
//! (`holder_step`), when an active must stop (`active_step`), and the
//! takeover wait after taking the witness vote (`lease_ran_out`). The lease
//! arithmetic is `quorum::Timing`'s; the move pre-checks are `moves`'s.
//!
//! The argument that these rules never let two nodes write at once is in
//! ARCHITECTURE.md ("The cluster protocol"), against the table of states
//! and inputs there.

use std::time::Instant;

use crate::heartbeat::{Heartbeat, Role};
use crate::quorum::{Leases, Timing};
use shipper::Epoch;

/// How long a failover may spend copying and replaying what the old
/// active's share still holds.
pub const DRAIN_BUDGET: std::time::Duration = std::time::Duration::from_secs(15);

/// A deliberate bug, for the simulator's test that it can find one. The
/// daemon always passes `Mutation::None`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mutation {
    #[default]
    None,
    /// Take over as soon as the witness vote is held, without waiting out
    /// the previous holder's lease.
    NoTakeoverWait,
    /// Acknowledge a write whose lease ran out while it was made durable
    /// (the store's second fence check, skipped).
    NoFenceRecheck,
    /// Carry a copy's log on whenever it has one, as before a seed taken
    /// past the last sealed record could be activated (`log_plan`).
    OldLogPlan,
    /// Let the mount dial trust the old active's last heartbeat when its
    /// share could not be read (`dial::LastLogs::Copied` always).
    TrustLastHeartbeat,
    /// Rewind a rejoining node to the start of the *newest* epoch of its
    /// peer rather than the earliest one after its own (`fork`).
    ForkAtNewest,
}

/// The witness vote as a node sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Vote {
    /// This node holds the witness lock now.
    pub held: bool,
    /// When the current holding began (the start of the winning request).
    pub acquired_at: Option<Instant>,
    /// Why the witness could not be used, if it could not.
    pub error: Option<String>,
}

/// True once a node that took the witness vote at `acquired_at` may
/// write: the previous holder's witness lease has run out by then, even
/// with clock rates 10% apart (`Timing::takeover_wait`).
pub fn lease_ran_out(acquired_at: Instant, t: &Timing, now: Instant, m: Mutation) -> bool {
    m == Mutation::NoTakeoverWait || now >= takeover_at(acquired_at, t)
}

/// When a node that took the witness vote at `acquired_at` may write.
pub fn takeover_at(acquired_at: Instant, t: &Timing) -> Instant {
    acquired_at + t.takeover_wait()
}

/// What a passive copy knows.
#[derive(Clone, Debug)]
pub struct PassiveView {
    /// The node holds a usable copy (seeded).
    pub has_copy: bool,
    /// When the peer was last heard (any role), if ever since this daemon
    /// started; `started` counts instead when it never was.
    pub peer_heard_at: Option<Instant>,
    pub started: Instant,
    /// An operator paused the node.
    pub paused: Option<String>,
    /// The mount dial refused a failover and nothing has changed since.
    pub dial_refused: bool,
    /// A lagged copy (`replay-lag`): never activated by itself.
    pub lagged: bool,
    pub vote: Vote,
    pub mutation: Mutation,
}

/// A passive copy's next step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PassiveStep {
    /// No copy yet: nothing runs; an operator seeds it.
    NoCopy,
    /// The active is heard: follow it, lend it this node's vote.
    Follow,
    /// An operator paused the node: follow, never activate.
    Paused(String),
    /// The dial refused a failover: stay passive until the active is heard
    /// again or an operator forces one.
    DialRefused,
    /// A lagged copy: activated only by an operator (`--play-down`).
    Lagged,
    /// The active has been silent a while: seek the witness vote early.
    SeekVote,
    /// The active is dead to us, but the witness vote is not ours.
    NoVote(String),
    /// The vote is ours: wait out the previous holder's lease.
    WaitLease,
    /// Take over: copy the last logs, decide the dial, claim an epoch.
    TakeOver,
}

impl PassiveStep {
    /// Whether the node seeks (or keeps) the witness vote in this step.
    pub fn wants_vote(&self) -> bool {
        matches!(
            self,
            PassiveStep::SeekVote
                | PassiveStep::NoVote(_)
                | PassiveStep::WaitLease
                | PassiveStep::TakeOver
        )
    }
}

/// The takeover rule: a passive takes over when (a) the active has been
/// silent for `dead_after`, (b) it holds the witness vote and (c) the
/// previous holder's lease has run out since it took it.
pub fn passive_step(v: &PassiveView, t: &Timing, now: Instant) -> PassiveStep {
    if !v.has_copy {
        return PassiveStep::NoCopy;
    }
    let silent = now.saturating_duration_since(v.peer_heard_at.unwrap_or(v.started));
    if silent < t.suspect_after() {
        return PassiveStep::Follow;
    }
    if let Some(why) = &v.paused {
        return PassiveStep::Paused(why.clone());
    }
    if v.dial_refused {
        return PassiveStep::DialRefused;
    }
    if v.lagged {
        return PassiveStep::Lagged;
    }
    if silent < t.dead_after {
        return PassiveStep::SeekVote;
    }
    let Some(acquired) = v.vote.acquired_at.filter(|_| v.vote.held) else {
        return PassiveStep::NoVote(
            v.vote
                .error
                .clone()
                .unwrap_or_else(|| "held by another".into()),
        );
    };
    if !lease_ran_out(acquired, t, now, v.mutation) {
        return PassiveStep::WaitLease;
    }
    PassiveStep::TakeOver
}

/// What a node that holds the store (not a copy) and is not active knows:
/// it was active before (fenced, restarted, or a first start).
#[derive(Clone, Debug)]
pub struct HolderView {
    /// The node's name, and the newest epoch's owner on the witness (none
    /// yet: a first start).
    pub me: String,
    pub newest_owner: Option<String>,
    /// The newest epoch on the witness as last read.
    pub newest_epoch: Option<Epoch>,
    /// The newest epoch this node knows of (0: none).
    pub known_epoch: Epoch,
    /// The peer is heard and says it is active.
    pub peer_active: bool,
    /// The witness could never be read (no history, an error).
    pub witness_unreadable: Option<String>,
    pub paused: Option<String>,
    /// Its store stopped by itself a moment ago (a failed write): it leaves
    /// the witness vote to its peer for a while.
    pub store_failed: Option<String>,
    pub vote: Vote,
    pub mutation: Mutation,
}

/// Why a node activates its own store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActivateReason {
    /// The cluster's first epoch.
    Start,
    /// Again after fencing or a restart, on the newest timeline.
    Restart,
}

impl ActivateReason {
    pub fn name(self) -> &'static str {
        match self {
            ActivateReason::Start => "start",
            ActivateReason::Restart => "restart",
        }
    }
}

/// A store holder's next step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HolderStep {
    /// Another node began a newer epoch: undo what is past the fork and
    /// follow it as a passive copy.
    Rejoin,
    /// The peer says it is active, but the witness's history does not show
    /// its epoch yet: read the history now, then rejoin.
    ConfirmPeerEpoch,
    /// The witness's history as last read is older than an epoch this node
    /// knows of (its own claim, a peer's heartbeat): read it again before
    /// deciding on it.
    HistoryBehind {
        read: Epoch,
        known: Epoch,
    },
    /// The witness cannot be read: wait (nothing to activate without it).
    WitnessUnreadable(String),
    Paused(String),
    /// The store stopped by itself: give the vote up, so that the peer may
    /// take over, and try again later.
    StoreFailed(String),
    /// Seeking the witness vote.
    NoVote,
    /// The vote is ours: wait out the previous holder's lease.
    WaitLease,
    /// Claim the next epoch and open the store.
    Activate(ActivateReason),
}

impl HolderStep {
    pub fn wants_vote(&self) -> bool {
        matches!(
            self,
            HolderStep::NoVote | HolderStep::WaitLease | HolderStep::Activate(_)
        )
    }
}

/// The store holder's rule: it may activate again only while it is on the
/// newest timeline (no other node owns the newest epoch), the peer is not
/// active, and it holds the witness vote past the previous holder's lease.
pub fn holder_step(v: &HolderView, t: &Timing, now: Instant) -> HolderStep {
    if let Some(read) = v.newest_epoch
        && read < v.known_epoch
    {
        return HolderStep::HistoryBehind {
            read,
            known: v.known_epoch,
        };
    }
    let ours = v.newest_owner.as_deref().is_none_or(|o| o == v.me);
    if !ours {
        return HolderStep::Rejoin;
    }
    if v.peer_active {
        return HolderStep::ConfirmPeerEpoch;
    }
    if let Some(why) = &v.witness_unreadable {
        return HolderStep::WitnessUnreadable(why.clone());
    }
    if let Some(why) = &v.paused {
        return HolderStep::Paused(why.clone());
    }
    if let Some(why) = &v.store_failed {
        return HolderStep::StoreFailed(why.clone());
    }
    let Some(acquired) = v.vote.acquired_at.filter(|_| v.vote.held) else {
        return HolderStep::NoVote;
    };
    if !lease_ran_out(acquired, t, now, v.mutation) {
        return HolderStep::WaitLease;
    }
    HolderStep::Activate(if v.known_epoch == Epoch(0) {
        ActivateReason::Start
    } else {
        ActivateReason::Restart
    })
}

/// What an active node knows.
#[derive(Clone, Debug)]
pub struct ActiveView {
    /// The epoch it is active in, and the newest it knows of.
    pub epoch: Epoch,
    pub known_epoch: Epoch,
    /// The peer's vote: the epoch its heartbeats support, and until when
    /// (from our send time of the heartbeat it acknowledged).
    pub peer_lease: Option<(Epoch, Instant)>,
    /// The witness vote's lease end, while the lock is held.
    pub witness_until: Option<Instant>,
    /// The store's fence still allows writes (its lease has not run out).
    pub fence_allows: bool,
    /// The store stopped by itself (a failed fsync, a fenced write).
    pub store_stopped: Option<String>,
}

/// An active node's next step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ActiveStep {
    /// Keep serving; the fence may be extended to `until`.
    Serve { until: Option<Instant> },
    /// A newer epoch exists: stop, and rejoin as passive.
    StepDown { newer: Epoch },
    /// Neither the peer's nor the witness's vote holds: fence.
    Fence,
    /// The store stopped: close it.
    StoreStopped(String),
}

/// The active's rule: it writes only under a majority (itself and one more
/// vote, each a lease), and only while no newer epoch exists.
pub fn active_step(v: &ActiveView, now: Instant) -> ActiveStep {
    let leases = leases(v);
    if v.known_epoch > v.epoch {
        return ActiveStep::StepDown {
            newer: v.known_epoch,
        };
    }
    if !leases.quorate(now) || !v.fence_allows {
        return ActiveStep::Fence;
    }
    if let Some(why) = &v.store_stopped {
        return ActiveStep::StoreStopped(why.clone());
    }
    ActiveStep::Serve {
        until: leases.until(),
    }
}

/// The votes an active holds in its own epoch, as lease ends.
pub fn leases(v: &ActiveView) -> Leases {
    Leases {
        peer_until: v.peer_lease.filter(|(e, _)| *e == v.epoch).map(|(_, t)| t),
        witness_until: v.witness_until,
    }
}

/// The epoch an activation claims: one past the newest it knows of, from
/// the witness's history, its own log, and what it heard.
pub fn next_epoch(history_newest: Option<Epoch>, log_epoch: Epoch, known: Epoch) -> Epoch {
    Epoch(
        history_newest
            .unwrap_or(Epoch(0))
            .0
            .max(log_epoch.0)
            .max(known.0)
            + 1,
    )
}

/// An activation that the node decided on by itself (`start`, `restart`)
/// is called off when another node began a newer epoch meanwhile (read
/// again while holding the witness vote); a failover, a move or an
/// operator's activation go on (they already follow from the peer's
/// silence, or are asked for).
pub fn activation_stands(by_itself: bool, newest_owner: Option<&str>, me: &str) -> bool {
    !by_itself || newest_owner.is_none_or(|o| o == me)
}

/// Where a planned move stands, on the active that hands over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MovingStep {
    /// The target has not replayed the last LSN yet: keep waiting.
    Wait,
    /// The target holds the last LSN: close the store, give up the
    /// witness vote (once).
    Release,
    /// The target is active in a newer epoch: the move is done.
    Done,
    /// The target did not take over in time: take writes again.
    TimedOut,
}

/// The active's side of a move that froze the store at `lsn` in `epoch`,
/// from the target's last heartbeat (if alive).
pub fn moving_step(
    lsn: u64,
    epoch: Epoch,
    released: bool,
    target: Option<&Heartbeat>,
    elapsed: std::time::Duration,
    timeout: std::time::Duration,
) -> MovingStep {
    if target.is_some_and(|h| h.role == Role::Active && h.epoch > epoch) {
        return MovingStep::Done;
    }
    if elapsed > timeout {
        return MovingStep::TimedOut;
    }
    if !released && target.is_some_and(|h| h.position.lsn.0 >= lsn) {
        return MovingStep::Release;
    }
    MovingStep::Wait
}

/// Where a planned move stands on its target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetStep {
    /// Replay up to the handed-over LSN first (or the old active still
    /// says it is active).
    CatchUp,
    /// Caught up: take the witness vote.
    SeekVote,
    /// The vote is ours: activate, without the takeover wait (the old
    /// active closed its store before it let the vote go).
    TakeOver,
}

pub fn target_step(
    replayed: u64,
    handoff_lsn: u64,
    peer_active: bool,
    vote_held: bool,
) -> TargetStep {
    if replayed < handoff_lsn || peer_active {
        return TargetStep::CatchUp;
    }
    if !vote_held {
        return TargetStep::SeekVote;
    }
    TargetStep::TakeOver
}

/// Where a node that held the store must rewind to before it follows
/// another node's newer epoch: the earliest start among the epochs begun
/// after its own log's epoch by other nodes (`history`: epoch, owner,
/// start LSN). Every record it wrote past that point is off the timeline,
/// whichever of those epochs came first. `None`: no such epoch (yet).
pub fn fork<'a>(
    history: impl IntoIterator<Item = (Epoch, &'a str, u64)>,
    log_epoch: Epoch,
    me: &str,
) -> Option<u64> {
    history
        .into_iter()
        .filter(|(e, node, _)| *e > log_epoch && *node != me)
        .map(|(_, _, start)| start)
        .min()
}

/// What a copy's log needs before the copy can open as the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogPlan {
    /// The log reaches the database's LSN: it carries on (the store redoes
    /// what it holds past the database).
    CarryOn,
    /// The log ends before the database (a seed taken past the copy's last
    /// sealed record, in a segment never sealed) or there is none: drop its
    /// segments, as truncation would, and start a log at the database's
    /// LSN.
    StartAtDatabase,
}

/// `current_has_records`: the copy's current segment holds records;
/// `sealed_end`: the last LSN its sealed segments reach, if any; `db`: the
/// LSN its database holds.
pub fn log_plan(current_has_records: bool, sealed_end: Option<u64>, db: u64) -> LogPlan {
    if current_has_records || sealed_end.is_some_and(|end| end >= db) {
        LogPlan::CarryOn
    } else {
        LogPlan::StartAtDatabase
    }
}

/// The vote a passive lends its peer in its heartbeats (`supports`): only
/// to a peer it hears, that says it is active in the newest epoch this
/// node knows, and only while this node is passive and not itself seeking
/// the witness vote (a node that may take over must not also keep the old
/// active writing).
pub fn support(
    role: Role,
    seeking_vote: bool,
    known_epoch: Epoch,
    peer: Option<&Heartbeat>,
    peer_alive: bool,
) -> Option<Epoch> {
    let p = peer?;
    (role == Role::Passive
        && !seeking_vote
        && peer_alive
        && p.role == Role::Active
        && p.epoch >= known_epoch)
        .then_some(p.epoch)
}

/// Whether a write made durable at `durable_at`, begun under a fence that
/// allowed writes until `fence_until`, may be acknowledged: only if the
/// lease still held when it became durable (the store's second check).
pub fn may_acknowledge(fence_until: Option<Instant>, durable_at: Instant, m: Mutation) -> bool {
    m == Mutation::NoFenceRecheck || fence_until.is_some_and(|u| durable_at < u)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn timing() -> Timing {
        Timing {
            interval: Duration::from_millis(500),
            dead_after: Duration::from_secs(2),
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn passive(t0: Instant) -> PassiveView {
        PassiveView {
            has_copy: true,
            peer_heard_at: Some(t0),
            started: t0,
            paused: None,
            dial_refused: false,
            lagged: false,
            vote: Vote::default(),
            mutation: Mutation::None,
        }
    }

    fn held(at: Instant) -> Vote {
        Vote {
            held: true,
            acquired_at: Some(at),
            error: None,
        }
    }

    #[test]
    fn a_passive_follows_suspects_seeks_the_vote_and_takes_over_only_after_the_lease() {
        let t = timing();
        let t0 = Instant::now();
        let mut v = passive(t0);
        assert_eq!(passive_step(&v, &t, t0 + ms(900)), PassiveStep::Follow);
        // Silent for 2 × interval: seek the vote, not yet dead.
        assert_eq!(passive_step(&v, &t, t0 + ms(1000)), PassiveStep::SeekVote);
        assert!(PassiveStep::SeekVote.wants_vote() && !PassiveStep::Follow.wants_vote());
        // Dead, vote held by the active.
        v.vote.error = Some("held by alpha".into());
        assert_eq!(
            passive_step(&v, &t, t0 + ms(2000)),
            PassiveStep::NoVote("held by alpha".into())
        );
        // The vote taken at 1.5 s: the wait is 1.1 × 1 s + 20 ms.
        v.vote = held(t0 + ms(1500));
        assert_eq!(passive_step(&v, &t, t0 + ms(2000)), PassiveStep::WaitLease);
        assert_eq!(passive_step(&v, &t, t0 + ms(2619)), PassiveStep::WaitLease);
        assert_eq!(passive_step(&v, &t, t0 + ms(2620)), PassiveStep::TakeOver);
        // Held, but taken only now: dead time alone is not enough.
        v.vote = held(t0 + ms(5000));
        assert_eq!(passive_step(&v, &t, t0 + ms(5000)), PassiveStep::WaitLease);
    }

    #[test]
    fn a_passive_that_never_heard_the_active_counts_from_its_start() {
        let t = timing();
        let t0 = Instant::now();
        let v = PassiveView {
            peer_heard_at: None,
            vote: held(t0),
            ..passive(t0)
        };
        assert_eq!(passive_step(&v, &t, t0 + ms(500)), PassiveStep::Follow);
        assert_eq!(passive_step(&v, &t, t0 + ms(3000)), PassiveStep::TakeOver);
    }

    #[test]
    fn what_keeps_a_passive_passive_is_named_and_never_seeks_the_vote() {
        let t = timing();
        let t0 = Instant::now();
        let late = t0 + ms(10_000);
        let base = PassiveView {
            vote: held(t0),
            ..passive(t0)
        };
        let cases = [
            (
                PassiveView {
                    has_copy: false,
                    ..base.clone()
                },
                PassiveStep::NoCopy,
            ),
            (
                PassiveView {
                    paused: Some("maintenance".into()),
                    ..base.clone()
                },
                PassiveStep::Paused("maintenance".into()),
            ),
            (
                PassiveView {
                    dial_refused: true,
                    ..base.clone()
                },
                PassiveStep::DialRefused,
            ),
            (
                PassiveView {
                    lagged: true,
                    ..base.clone()
                },
                PassiveStep::Lagged,
            ),
        ];
        for (v, want) in cases {
            let got = passive_step(&v, &t, late);
            assert_eq!(got, want);
            assert!(!got.wants_vote(), "{got:?}");
        }
        // Even paused, a node with no copy says so first.
        let v = PassiveView {
            has_copy: false,
            paused: Some("x".into()),
            ..base
        };
        assert_eq!(passive_step(&v, &t, late), PassiveStep::NoCopy);
    }

    #[test]
    fn without_the_takeover_wait_a_fresh_vote_is_enough_and_that_is_the_bug() {
        let t = timing();
        let t0 = Instant::now();
        let v = PassiveView {
            vote: held(t0 + ms(3000)),
            mutation: Mutation::NoTakeoverWait,
            ..passive(t0)
        };
        assert_eq!(passive_step(&v, &t, t0 + ms(3000)), PassiveStep::TakeOver);
    }

    fn holder(t0: Instant) -> HolderView {
        HolderView {
            me: "alpha".into(),
            newest_owner: Some("alpha".into()),
            newest_epoch: Some(Epoch(3)),
            known_epoch: Epoch(3),
            peer_active: false,
            witness_unreadable: None,
            paused: None,
            store_failed: None,
            vote: held(t0),
            mutation: Mutation::None,
        }
    }

    #[test]
    fn a_store_holder_activates_again_only_on_the_newest_timeline_with_the_vote() {
        let t = timing();
        let t0 = Instant::now();
        let later = t0 + ms(5000);
        assert_eq!(
            holder_step(&holder(t0), &t, later),
            HolderStep::Activate(ActivateReason::Restart)
        );
        let first = HolderView {
            newest_owner: None,
            known_epoch: Epoch(0),
            ..holder(t0)
        };
        assert_eq!(
            holder_step(&first, &t, later),
            HolderStep::Activate(ActivateReason::Start)
        );
        let cases = [
            (
                HolderView {
                    newest_owner: Some("beta".into()),
                    ..holder(t0)
                },
                HolderStep::Rejoin,
            ),
            (
                HolderView {
                    peer_active: true,
                    ..holder(t0)
                },
                HolderStep::ConfirmPeerEpoch,
            ),
            (
                HolderView {
                    witness_unreadable: Some("no such share".into()),
                    ..holder(t0)
                },
                HolderStep::WitnessUnreadable("no such share".into()),
            ),
            (
                HolderView {
                    paused: Some("p".into()),
                    ..holder(t0)
                },
                HolderStep::Paused("p".into()),
            ),
            (
                HolderView {
                    vote: Vote::default(),
                    ..holder(t0)
                },
                HolderStep::NoVote,
            ),
            (
                HolderView {
                    store_failed: Some("disk full".into()),
                    ..holder(t0)
                },
                HolderStep::StoreFailed("disk full".into()),
            ),
            // Its own claim (or the peer's heartbeat) is newer than the
            // history as read: nothing is decided on that history, not
            // even a rejoin.
            (
                HolderView {
                    known_epoch: Epoch(5),
                    newest_owner: Some("beta".into()),
                    ..holder(t0)
                },
                HolderStep::HistoryBehind {
                    read: Epoch(3),
                    known: Epoch(5),
                },
            ),
        ];
        for (v, want) in cases {
            assert_eq!(holder_step(&v, &t, later), want);
        }
        // The vote just taken: wait out the lease.
        assert_eq!(
            holder_step(&holder(later), &t, later + ms(100)),
            HolderStep::WaitLease
        );
        assert!(HolderStep::WaitLease.wants_vote() && !HolderStep::Rejoin.wants_vote());
    }

    fn active(t0: Instant) -> ActiveView {
        ActiveView {
            epoch: Epoch(4),
            known_epoch: Epoch(4),
            peer_lease: Some((Epoch(4), t0 + ms(1800))),
            witness_until: Some(t0 + ms(1000)),
            fence_allows: true,
            store_stopped: None,
        }
    }

    #[test]
    fn an_active_serves_under_either_lease_and_fences_when_both_ran_out() {
        let t0 = Instant::now();
        let v = active(t0);
        assert_eq!(
            active_step(&v, t0 + ms(100)),
            ActiveStep::Serve {
                until: Some(t0 + ms(1800))
            }
        );
        // Only the witness's vote: still quorate until it ends.
        let w = ActiveView {
            peer_lease: None,
            ..v.clone()
        };
        assert_eq!(
            active_step(&w, t0 + ms(999)),
            ActiveStep::Serve {
                until: Some(t0 + ms(1000))
            }
        );
        assert_eq!(active_step(&w, t0 + ms(1000)), ActiveStep::Fence);
        // A peer supporting an older epoch lends no vote.
        let old = ActiveView {
            peer_lease: Some((Epoch(3), t0 + ms(5000))),
            witness_until: None,
            ..v.clone()
        };
        assert_eq!(active_step(&old, t0), ActiveStep::Fence);
        // A newer epoch wins over everything.
        let newer = ActiveView {
            known_epoch: Epoch(5),
            ..v.clone()
        };
        assert_eq!(
            active_step(&newer, t0),
            ActiveStep::StepDown { newer: Epoch(5) }
        );
        let fenced = ActiveView {
            fence_allows: false,
            ..v.clone()
        };
        assert_eq!(active_step(&fenced, t0), ActiveStep::Fence);
        let stopped = ActiveView {
            store_stopped: Some("fsync failed".into()),
            ..v
        };
        assert_eq!(
            active_step(&stopped, t0),
            ActiveStep::StoreStopped("fsync failed".into())
        );
    }

    #[test]
    fn a_passive_lends_its_vote_only_to_an_active_in_the_newest_epoch() {
        let active = Heartbeat {
            role: Role::Active,
            epoch: Epoch(4),
            ..Default::default()
        };
        let s = |role, seeking, known, peer: Option<&Heartbeat>, alive| {
            support(role, seeking, Epoch(known), peer, alive)
        };
        assert_eq!(
            s(Role::Passive, false, 4, Some(&active), true),
            Some(Epoch(4))
        );
        assert_eq!(s(Role::Passive, false, 5, Some(&active), true), None);
        assert_eq!(s(Role::Passive, true, 4, Some(&active), true), None);
        assert_eq!(s(Role::Passive, false, 4, Some(&active), false), None);
        assert_eq!(s(Role::Fenced, false, 4, Some(&active), true), None);
        assert_eq!(s(Role::Passive, false, 4, None, true), None);
        let passive = Heartbeat {
            role: Role::Passive,
            ..active.clone()
        };
        assert_eq!(s(Role::Passive, false, 4, Some(&passive), true), None);
    }

    #[test]
    fn an_activation_claims_one_past_the_newest_epoch_it_knows() {
        assert_eq!(next_epoch(None, Epoch(0), Epoch(0)), Epoch(1));
        assert_eq!(next_epoch(Some(Epoch(4)), Epoch(2), Epoch(3)), Epoch(5));
        assert_eq!(next_epoch(Some(Epoch(4)), Epoch(6), Epoch(3)), Epoch(7));
        assert_eq!(next_epoch(Some(Epoch(4)), Epoch(2), Epoch(9)), Epoch(10));
        assert!(activation_stands(true, None, "a"));
        assert!(activation_stands(true, Some("a"), "a"));
        assert!(!activation_stands(true, Some("b"), "a"));
        assert!(activation_stands(false, Some("b"), "a"));
    }

    #[test]
    fn a_move_releases_once_the_target_holds_the_lsn_and_ends_when_it_is_active() {
        let s = Duration::from_secs(1);
        let hb = |role, epoch, lsn| Heartbeat {
            role,
            epoch: Epoch(epoch),
            position: crate::dial::Position {
                lsn: shipper::Lsn(lsn),
                generation: shipper::Generation(0),
            },
            ..Default::default()
        };
        let behind = hb(Role::Passive, 3, 99);
        let there = hb(Role::Passive, 3, 100);
        let active = hb(Role::Active, 4, 100);
        let step = |released, t: Option<&Heartbeat>, secs| {
            moving_step(100, Epoch(3), released, t, s * secs, s * 30)
        };
        assert_eq!(step(false, Some(&behind), 1), MovingStep::Wait);
        assert_eq!(step(false, None, 1), MovingStep::Wait);
        assert_eq!(step(false, Some(&there), 1), MovingStep::Release);
        assert_eq!(step(true, Some(&there), 1), MovingStep::Wait);
        assert_eq!(step(true, Some(&active), 1), MovingStep::Done);
        assert_eq!(step(true, Some(&there), 31), MovingStep::TimedOut);
        // An active target in the same epoch is the old one: not done.
        assert_eq!(
            step(true, Some(&hb(Role::Active, 3, 100)), 1),
            MovingStep::Wait
        );
        assert_eq!(target_step(99, 100, false, true), TargetStep::CatchUp);
        assert_eq!(target_step(100, 100, true, true), TargetStep::CatchUp);
        assert_eq!(target_step(100, 100, false, false), TargetStep::SeekVote);
        assert_eq!(target_step(101, 100, false, true), TargetStep::TakeOver);
    }

    #[test]
    fn a_rejoin_rewinds_to_the_earliest_epoch_begun_after_its_own_by_another() {
        let h = [
            (Epoch(1), "alpha", 0),
            (Epoch(2), "beta", 100),
            (Epoch(3), "beta", 150),
        ];
        // alpha's log is in epoch 1: beta's epoch 2 began at 100.
        assert_eq!(fork(h, Epoch(1), "alpha"), Some(100));
        // Its own epochs never count, and none newer: nothing to rewind to.
        assert_eq!(fork(h, Epoch(3), "alpha"), None);
        assert_eq!(fork([(Epoch(1), "alpha", 0)], Epoch(0), "alpha"), None);
    }

    #[test]
    fn a_copy_seeded_past_its_last_sealed_record_starts_its_log_at_the_database() {
        assert_eq!(log_plan(false, Some(10), 10), LogPlan::CarryOn);
        assert_eq!(log_plan(false, Some(12), 10), LogPlan::CarryOn);
        assert_eq!(log_plan(true, Some(1), 10), LogPlan::CarryOn);
        // The seed landed in a segment never sealed: the bug of a fresh copy.
        assert_eq!(log_plan(false, Some(1), 2), LogPlan::StartAtDatabase);
        assert_eq!(log_plan(false, None, 2), LogPlan::StartAtDatabase);
    }

    #[test]
    fn a_write_is_acknowledged_only_if_it_was_durable_within_the_lease() {
        let t0 = Instant::now();
        let until = Some(t0 + ms(100));
        assert!(may_acknowledge(until, t0 + ms(99), Mutation::None));
        assert!(!may_acknowledge(until, t0 + ms(100), Mutation::None));
        assert!(!may_acknowledge(None, t0, Mutation::None));
        assert!(may_acknowledge(
            until,
            t0 + ms(500),
            Mutation::NoFenceRecheck
        ));
    }
}
