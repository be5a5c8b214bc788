//! Best-copy selection, as a DAG's active manager does it: when the active
//! is gone (or a planned move names no target), which copy takes the role.
//!
//! Among the copies that are alive, not paused and able (seeded, neither
//! Failed nor Suspended), and not lagged: the highest received position
//! wins, then the highest replayed one; a tie goes to the most preferred
//! node (`[nodes.X] activation-preference`, 1 first; unset comes after
//! every set one), then to the node name, so that every node computing
//! the choice from the same view gets the same answer. A lagged copy
//! (`replay-lag`) is chosen only when no other copy is left and the caller
//! allows it (`activate --play-down`, or a dial that accepts the loss).
//!
//! A copy that is not the choice waits: `may_take` is false for it while a
//! better copy is alive and able.

use std::cmp::Reverse;

use shipper::Lsn;

/// One copy as the deciding node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub node: String,
    /// Heard within `dead-after`.
    pub alive: bool,
    pub paused: bool,
    /// Seeded, and neither Failed nor Suspended.
    pub able: bool,
    /// Replays behind on purpose (`replay-lag`).
    pub lagged: bool,
    /// The last record durable on the copy (block mode's received
    /// position, or the replayed one without it).
    pub received: Lsn,
    pub replayed: Lsn,
    /// `activation-preference`: 1 is the most preferred; 0 is unset.
    pub preference: u32,
}

impl Candidate {
    fn eligible(&self) -> bool {
        self.alive && !self.paused && self.able
    }

    /// Bigger is better.
    fn rank(&self) -> (Lsn, Lsn, Reverse<u32>, Reverse<&str>) {
        let preference = if self.preference == 0 {
            u32::MAX
        } else {
            self.preference
        };
        (
            self.received.max(self.replayed),
            self.replayed,
            Reverse(preference),
            Reverse(self.node.as_str()),
        )
    }
}

/// The copy that should take the role, if any may.
pub fn best_copy(candidates: &[Candidate], lagged_allowed: bool) -> Option<&Candidate> {
    let best = |lagged: bool| {
        candidates
            .iter()
            .filter(|c| c.eligible() && c.lagged == lagged)
            .max_by(|a, b| a.rank().cmp(&b.rank()))
    };
    best(false).or_else(|| if lagged_allowed { best(true) } else { None })
}

/// Whether `me` may take the role now: it is the best copy.
pub fn may_take(me: &str, candidates: &[Candidate], lagged_allowed: bool) -> bool {
    best_copy(candidates, lagged_allowed).is_some_and(|c| c.node == me)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn c(node: &str, received: u64, replayed: u64, preference: u32) -> Candidate {
        Candidate {
            node: node.into(),
            alive: true,
            paused: false,
            able: true,
            lagged: false,
            received: Lsn(received),
            replayed: Lsn(replayed),
            preference,
        }
    }

    #[test]
    fn position_beats_preference_and_preference_breaks_ties() {
        // The preferred node is behind: the one ahead wins.
        let v = [c("beta", 90, 90, 1), c("gamma", 100, 95, 2)];
        assert_eq!(best_copy(&v, false).unwrap().node, "gamma");
        // Received first, then replayed.
        let v = [c("beta", 100, 99, 2), c("gamma", 100, 95, 1)];
        assert_eq!(best_copy(&v, false).unwrap().node, "beta");
        // Equal positions: the most preferred; unset comes last.
        let v = [
            c("beta", 100, 100, 0),
            c("gamma", 100, 100, 3),
            c("delta", 100, 100, 2),
        ];
        assert_eq!(best_copy(&v, false).unwrap().node, "delta");
        // Equal in everything: the name decides, the same on every node.
        let v = [c("gamma", 100, 100, 0), c("beta", 100, 100, 0)];
        assert_eq!(best_copy(&v, false).unwrap().node, "beta");
        assert!(may_take("beta", &v, false) && !may_take("gamma", &v, false));
    }

    #[test]
    fn dead_paused_unable_and_lagged_copies_wait() {
        let mut ahead = c("beta", 200, 200, 1);
        let behind = c("gamma", 100, 100, 2);
        for change in [
            |x: &mut Candidate| x.alive = false,
            |x: &mut Candidate| x.paused = true,
            |x: &mut Candidate| x.able = false,
            |x: &mut Candidate| x.lagged = true,
        ] {
            let mut a = ahead.clone();
            change(&mut a);
            assert_eq!(
                best_copy(&[a.clone(), behind.clone()], true).unwrap().node,
                "gamma"
            );
        }
        // A lagged copy alone: only when allowed.
        ahead.lagged = true;
        assert_eq!(best_copy(std::slice::from_ref(&ahead), false), None);
        assert_eq!(
            best_copy(std::slice::from_ref(&ahead), true).unwrap().node,
            "beta"
        );
        assert!(!may_take("beta", std::slice::from_ref(&ahead), false));
    }

    fn candidate() -> impl Strategy<Value = Candidate> {
        (0..6usize, any::<[bool; 4]>(), 0..5u64, 0..5u64, 0..4u32).prop_map(
            |(n, [alive, paused, able, lagged], r, p, pref)| Candidate {
                node: format!("n{n}"),
                alive,
                paused,
                able,
                lagged,
                received: Lsn(r.max(p)),
                replayed: Lsn(p),
                preference: pref,
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// The choice is eligible; no eligible unlagged copy is ahead of it;
        /// it does not depend on the order of the view; at most one copy
        /// may take the role.
        #[test]
        fn the_choice_is_the_best_able_copy_whatever_the_order(
            mut v in proptest::collection::vec(candidate(), 0..6),
            allowed in any::<bool>(),
            rot in 0..6usize,
        ) {
            v.sort_by(|a, b| a.node.cmp(&b.node));
            v.dedup_by(|a, b| a.node == b.node);
            let choice = best_copy(&v, allowed).cloned();
            if let Some(ch) = &choice {
                prop_assert!(ch.eligible());
                prop_assert!(allowed || !ch.lagged);
                for o in v.iter().filter(|o| o.eligible() && !o.lagged) {
                    prop_assert!(!ch.lagged, "a lagged copy chosen over {:?}", o);
                    prop_assert!(o.rank() <= ch.rank());
                }
            } else {
                prop_assert!(v.iter().all(|o| !o.eligible() || (o.lagged && !allowed)));
            }
            let n = v.len().max(1);
            v.rotate_left(rot % n);
            prop_assert_eq!(best_copy(&v, allowed).cloned(), choice);
            let takers = v.iter().filter(|o| may_take(&o.node, &v, allowed)).count();
            prop_assert!(takers <= 1);
        }
    }
}
