//! The decisions of a node in a cluster that etcd arbitrates (past two
//! nodes), as Patroni's HA loop makes them against its DCS: pure, on a
//! view the caller read from etcd and the time it read it at.
//!
//! The keys (under the cluster's prefix; FORMAT.md will give their bytes
//! once the node daemon writes them):
//! - `leader`: who is active, in which epoch. Created only if absent and
//!   attached to the active's lease, so it disappears when the active stops
//!   keeping that lease alive.
//! - `epochs/<16 hex>`: one per epoch, created only if absent: only one
//!   node can ever start a given epoch, as with the witness's epoch files.
//! - `members/<node>`: each node's role, position and copy health, attached
//!   to its own lease: a node whose lease lapsed is not alive.
//!
//! The lease argument, written once (`Lease::valid_until`): an active takes
//! writes only until `ttl × 9/10` after it *sent* the last keep-alive etcd
//! confirmed. etcd ends the lease no sooner than `ttl` after it *received*
//! that keep-alive, later than the send. With the active's clock up to 10%
//! slow, its 9/10 of the TTL is still less than the TTL, so it has stopped
//! writing before etcd deletes `leader` and any other node can create it.
//! No takeover wait is needed beyond that.

use std::time::{Duration, Instant};

use shipper::{Epoch, Lsn};

use crate::select::{self, Candidate};

/// The lease this node keeps alive in etcd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    pub ttl: Duration,
    /// When the last keep-alive etcd confirmed was sent (local clock).
    pub confirmed_sent: Option<Instant>,
}

impl Lease {
    /// Writes are allowed until then.
    pub fn valid_until(&self) -> Option<Instant> {
        self.confirmed_sent.map(|t| t + self.ttl * 9 / 10)
    }

    pub fn valid_at(&self, now: Instant) -> bool {
        self.valid_until().is_some_and(|t| t > now)
    }
}

/// The `leader` key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leader {
    pub node: String,
    pub epoch: Epoch,
}

/// What a node publishes under `members/<node>`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberState {
    pub node: String,
    /// The last record durable on its copy (or its store, when active).
    pub received: Lsn,
    pub replayed: Lsn,
    /// Seeded, neither Failed nor Suspended.
    pub able: bool,
    pub paused: bool,
    pub lagged: bool,
    pub preference: u32,
}

/// What a node read from etcd (and knows of itself) for one decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    pub me: String,
    /// Whether the last read reached etcd.
    pub reachable: bool,
    pub lease: Lease,
    pub leader: Option<Leader>,
    /// The live members (their keys exist), this node's own included.
    pub members: Vec<MemberState>,
    /// The newest epoch under `epochs/`.
    pub newest_epoch: Epoch,
    /// This node holds the store open as the active, in this epoch.
    pub active_in: Option<Epoch>,
    /// A lagged copy may take the role if it is the only one left
    /// (`activate --play-down`, or a dial that accepts the loss).
    pub lagged_allowed: bool,
    /// A planned move under way (`handoff`): the node it hands the role to.
    pub handoff: Option<String>,
}

/// Why an active stops taking writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FenceReason {
    /// The lease was not confirmed within its TTL (etcd unreachable, or slow).
    LeaseLapsed,
    /// `leader` names another node, or another epoch.
    Deposed { by: Option<Leader> },
}

/// Why a node does not take the role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WaitReason {
    /// etcd did not answer the last read.
    Unreachable,
    /// This node's own lease is not confirmed.
    NoLease,
    /// Another copy is better placed to take the role, and alive.
    BetterCopy { node: String },
    /// No copy may take the role (none able, or only lagged ones).
    NoAbleCopy,
    /// `leader` names this node, from an earlier run of it: it lapses with
    /// that run's lease.
    OwnStaleLeader,
    /// A planned move hands the role to another node, which is alive.
    MoveTarget { node: String },
}

/// What the node should do now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Go on taking writes, until then at the latest.
    StayActive {
        until: Instant,
    },
    /// Stop taking writes now.
    Fence(FenceReason),
    /// Create `leader` under this node's lease and claim `epoch`, then drain
    /// the old active's share and open the store.
    Acquire {
        epoch: Epoch,
    },
    /// Copy from the active.
    Follow(Leader),
    Wait(WaitReason),
}

/// The one decision rule of a node in an etcd cluster.
pub fn decide(view: &View, now: Instant) -> Decision {
    if let Some(epoch) = view.active_in {
        let Some(until) = view.lease.valid_until().filter(|t| *t > now) else {
            return Decision::Fence(FenceReason::LeaseLapsed);
        };
        return match &view.leader {
            Some(l) if l.node == view.me && l.epoch == epoch && view.reachable => {
                Decision::StayActive { until }
            }
            // Unreachable: the lease, confirmed until `until`, still holds.
            _ if !view.reachable => Decision::StayActive { until },
            other => Decision::Fence(FenceReason::Deposed { by: other.clone() }),
        };
    }
    if !view.reachable {
        return Decision::Wait(WaitReason::Unreachable);
    }
    match &view.leader {
        Some(l) if l.node == view.me => Decision::Wait(WaitReason::OwnStaleLeader),
        Some(l) => Decision::Follow(l.clone()),
        None => {
            if !view.lease.valid_at(now) {
                return Decision::Wait(WaitReason::NoLease);
            }
            // A planned move names its target: it takes the role whatever
            // the ranking, while it is alive.
            match &view.handoff {
                Some(to) if *to == view.me => {
                    return Decision::Acquire {
                        epoch: Epoch(view.newest_epoch.0 + 1),
                    };
                }
                Some(to) if view.members.iter().any(|m| m.node == *to) => {
                    return Decision::Wait(WaitReason::MoveTarget { node: to.clone() });
                }
                _ => {}
            }
            match select::best_copy(&candidates(view), view.lagged_allowed) {
                Some(best) if best.node == view.me => Decision::Acquire {
                    epoch: Epoch(view.newest_epoch.0 + 1),
                },
                Some(best) => Decision::Wait(WaitReason::BetterCopy {
                    node: best.node.clone(),
                }),
                None => Decision::Wait(WaitReason::NoAbleCopy),
            }
        }
    }
}

/// The members as best-copy candidates: every member with a key is alive.
fn candidates(view: &View) -> Vec<Candidate> {
    view.members.iter().map(MemberState::candidate).collect()
}

impl MemberState {
    /// The member as best-copy selection ranks it (its key exists: alive).
    pub fn candidate(&self) -> Candidate {
        Candidate {
            node: self.node.clone(),
            alive: true,
            paused: self.paused,
            able: self.able,
            lagged: self.lagged,
            received: self.received,
            replayed: self.replayed,
            preference: self.preference,
        }
    }
}

/// The best copy among `members` (lagged ones only when allowed).
pub fn best_member(members: &[MemberState], lagged_allowed: bool) -> Option<String> {
    let c: Vec<Candidate> = members.iter().map(MemberState::candidate).collect();
    select::best_copy(&c, lagged_allowed).map(|b| b.node.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TTL: Duration = Duration::from_secs(2);

    fn member(node: &str, lsn: u64, preference: u32) -> MemberState {
        MemberState {
            node: node.into(),
            received: Lsn(lsn),
            replayed: Lsn(lsn),
            able: true,
            preference,
            ..MemberState::default()
        }
    }

    fn view(me: &str, t0: Instant) -> View {
        View {
            me: me.into(),
            reachable: true,
            lease: Lease {
                ttl: TTL,
                confirmed_sent: Some(t0),
            },
            leader: None,
            members: vec![
                member("alpha", 100, 2),
                member("beta", 90, 1),
                member("gamma", 100, 3),
            ],
            newest_epoch: Epoch(4),
            active_in: None,
            lagged_allowed: false,
            handoff: None,
        }
    }

    #[test]
    fn the_active_stays_while_its_lease_is_confirmed_and_fences_when_it_lapses() {
        let t0 = Instant::now();
        let mut v = view("alpha", t0);
        v.active_in = Some(Epoch(4));
        v.leader = Some(Leader {
            node: "alpha".into(),
            epoch: Epoch(4),
        });
        let until = t0 + TTL * 9 / 10;
        assert_eq!(decide(&v, t0), Decision::StayActive { until });
        // etcd unreachable: the confirmed lease still counts, and no longer.
        v.reachable = false;
        assert_eq!(
            decide(&v, until - Duration::from_millis(1)),
            Decision::StayActive { until }
        );
        assert_eq!(decide(&v, until), Decision::Fence(FenceReason::LeaseLapsed));
        // A leader key of another node (or epoch) deposes it at once.
        v.reachable = true;
        v.leader = Some(Leader {
            node: "gamma".into(),
            epoch: Epoch(5),
        });
        assert!(matches!(
            decide(&v, t0),
            Decision::Fence(FenceReason::Deposed { .. })
        ));
        v.leader = None;
        assert_eq!(
            decide(&v, t0),
            Decision::Fence(FenceReason::Deposed { by: None })
        );
    }

    #[test]
    fn a_planned_move_hands_the_role_to_its_target_whatever_the_ranking() {
        let t0 = Instant::now();
        // beta is behind and not the most preferred, but the target.
        let mut v = view("beta", t0);
        v.handoff = Some("beta".into());
        assert_eq!(decide(&v, t0), Decision::Acquire { epoch: Epoch(5) });
        // The best copy waits for it.
        v.me = "alpha".into();
        assert_eq!(
            decide(&v, t0),
            Decision::Wait(WaitReason::MoveTarget {
                node: "beta".into()
            })
        );
        // A target that is gone no longer holds the others back.
        v.members.retain(|m| m.node != "beta");
        assert_eq!(decide(&v, t0), Decision::Acquire { epoch: Epoch(5) });
        // Nor does a handoff take a role someone holds.
        v.leader = Some(Leader {
            node: "gamma".into(),
            epoch: Epoch(5),
        });
        assert!(matches!(decide(&v, t0), Decision::Follow(_)));
    }

    #[test]
    fn without_a_leader_only_the_best_copy_acquires_the_next_epoch() {
        let t0 = Instant::now();
        // alpha and gamma are equally ahead; alpha is preferred (2 < 3).
        assert_eq!(
            decide(&view("alpha", t0), t0),
            Decision::Acquire { epoch: Epoch(5) }
        );
        assert_eq!(
            decide(&view("gamma", t0), t0),
            Decision::Wait(WaitReason::BetterCopy {
                node: "alpha".into()
            })
        );
        // beta is the most preferred, but behind: position wins.
        assert_eq!(
            decide(&view("beta", t0), t0),
            Decision::Wait(WaitReason::BetterCopy {
                node: "alpha".into()
            })
        );
        // Without a confirmed lease, nobody acquires.
        let mut v = view("alpha", t0);
        v.lease.confirmed_sent = None;
        assert_eq!(decide(&v, t0), Decision::Wait(WaitReason::NoLease));
        // etcd unreachable: wait.
        let mut v = view("alpha", t0);
        v.reachable = false;
        assert_eq!(decide(&v, t0), Decision::Wait(WaitReason::Unreachable));
    }

    #[test]
    fn with_a_leader_the_others_follow_and_a_stale_own_key_is_waited_out() {
        let t0 = Instant::now();
        let mut v = view("beta", t0);
        let l = Leader {
            node: "alpha".into(),
            epoch: Epoch(4),
        };
        v.leader = Some(l.clone());
        assert_eq!(decide(&v, t0), Decision::Follow(l));
        v.leader = Some(Leader {
            node: "beta".into(),
            epoch: Epoch(3),
        });
        assert_eq!(decide(&v, t0), Decision::Wait(WaitReason::OwnStaleLeader));
    }

    #[test]
    fn a_lagged_copy_acquires_only_when_allowed_and_alone() {
        let t0 = Instant::now();
        let mut v = view("beta", t0);
        v.members = vec![MemberState {
            lagged: true,
            ..member("beta", 90, 1)
        }];
        assert_eq!(decide(&v, t0), Decision::Wait(WaitReason::NoAbleCopy));
        v.lagged_allowed = true;
        assert_eq!(decide(&v, t0), Decision::Acquire { epoch: Epoch(5) });
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// Every node deciding on the same etcd view: at most one acquires,
        /// and it acquires the next epoch; an active never stays past its
        /// lease.
        #[test]
        fn at_most_one_node_acquires_from_one_view(
            lsns in proptest::collection::vec((0..4u64, 0..3u32, any::<bool>(), any::<bool>()), 1..6),
            reachable in any::<bool>(),
            leaderless in any::<bool>(),
            offset_ms in 0..3000u64,
        ) {
            let t0 = Instant::now();
            let members: Vec<MemberState> = lsns
                .iter()
                .enumerate()
                .map(|(i, (l, p, able, lagged))| MemberState {
                    able: *able,
                    lagged: *lagged,
                    ..member(&format!("n{i}"), *l, *p)
                })
                .collect();
            let now = t0 + Duration::from_millis(offset_ms);
            let mut acquirers = 0;
            for m in &members {
                let v = View {
                    me: m.node.clone(),
                    reachable,
                    lease: Lease { ttl: TTL, confirmed_sent: Some(t0) },
                    leader: (!leaderless).then(|| Leader { node: "n0".into(), epoch: Epoch(4) }),
                    members: members.clone(),
                    newest_epoch: Epoch(4),
                    active_in: None,
                    lagged_allowed: false,
                    handoff: None,
                };
                match decide(&v, now) {
                    Decision::Acquire { epoch } => {
                        acquirers += 1;
                        prop_assert_eq!(epoch, Epoch(5));
                        prop_assert!(leaderless && reachable && v.lease.valid_at(now));
                    }
                    Decision::StayActive { .. } | Decision::Fence(_) => {
                        prop_assert!(false, "not active, yet told to stay or fence");
                    }
                    _ => {}
                }
                let mut active = v.clone();
                active.active_in = Some(Epoch(4));
                if let Decision::StayActive { until } = decide(&active, now) {
                    prop_assert!(until > now && now < t0 + TTL);
                }
            }
            prop_assert!(acquirers <= 1);
        }
    }
}
