//! Quorum leases: whether a node may take writes now, and how long a node
//! that wants to take over must wait so that the old active has surely
//! stopped. Every duration is measured on the local monotonic clock, so a
//! wall-clock jump changes nothing; the only assumption is that the two
//! nodes' clocks run at nearly the same rate (the margins allow 10%).
//!
//! Three votes: the two nodes and the witness. An active counts itself and:
//! - the peer's vote, lent by a heartbeat that supports this epoch. It lasts
//!   `peer_lease` from when *we sent* the heartbeat the peer acknowledged, so a
//!   delayed message cannot stretch it; the peer declares us dead only
//!   `dead_after` after it *received* that heartbeat, later than the lease ends.
//! - the witness's vote: the lock, proven held by a request that the
//!   witness server answered. It lasts `witness_lease` from when the
//!   request was sent. A node that takes the lock afterwards waits
//!   `takeover_wait` (longer) before writing.

use std::time::{Duration, Instant};

/// The cluster's timing, from `heartbeat-interval` and `dead-after`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    pub interval: Duration,
    pub dead_after: Duration,
}

impl Timing {
    /// How long a supporting heartbeat keeps the peer's vote (90% of
    /// `dead_after`, counted from our send time).
    pub fn peer_lease(&self) -> Duration {
        self.dead_after * 9 / 10
    }

    /// How long a confirmed witness lock keeps the witness's vote.
    pub fn witness_lease(&self) -> Duration {
        self.dead_after / 2
    }

    /// How often the holder proves it still holds the witness lock.
    pub fn confirm_every(&self) -> Duration {
        (self.interval / 2).min(self.witness_lease() / 3)
    }

    /// Silence after which a passive starts trying the witness lock (it
    /// takes over only after `dead_after`, and after `takeover_wait`).
    pub fn suspect_after(&self) -> Duration {
        (self.interval * 2).min(self.dead_after)
    }

    /// How long a node that took the witness lock waits before writing:
    /// the previous holder's witness lease, with a margin for clock rates.
    pub fn takeover_wait(&self) -> Duration {
        self.witness_lease() * 11 / 10 + Duration::from_millis(20)
    }
}

/// The votes an active holds, as lease ends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Leases {
    pub peer_until: Option<Instant>,
    pub witness_until: Option<Instant>,
}

impl Leases {
    /// Writes are allowed until then (itself plus one other vote).
    pub fn until(&self) -> Option<Instant> {
        match (self.peer_until, self.witness_until) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// Which votes are held at `now`: (peer, witness).
    pub fn votes(&self, now: Instant) -> (bool, bool) {
        (
            self.peer_until.is_some_and(|t| t > now),
            self.witness_until.is_some_and(|t| t > now),
        )
    }

    /// True while the node holds a majority.
    pub fn quorate(&self, now: Instant) -> bool {
        self.until().is_some_and(|t| t > now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peer_lease_ends_before_the_peer_may_declare_us_dead() {
        for ms in [200u64, 500, 2000, 10_000] {
            let t = Timing {
                interval: Duration::from_millis(ms / 4),
                dead_after: Duration::from_millis(ms),
            };
            // Even with our clock 10% slow relative to the peer's.
            assert!(t.peer_lease() * 11 / 10 <= t.dead_after);
            assert!(t.takeover_wait() * 10 / 11 > t.witness_lease());
            assert!(t.confirm_every() * 2 < t.witness_lease());
            assert!(t.suspect_after() <= t.dead_after);
        }
    }

    #[test]
    fn a_node_is_quorate_while_either_lease_runs() {
        let now = Instant::now();
        let s = Duration::from_secs(1);
        let mut l = Leases::default();
        assert!(!l.quorate(now));
        l.peer_until = Some(now + s);
        assert!(l.quorate(now));
        assert_eq!(l.votes(now), (true, false));
        l.witness_until = Some(now + 2 * s);
        assert_eq!(l.until(), Some(now + 2 * s));
        assert!(l.quorate(now + s + s / 2));
        assert_eq!(l.votes(now + s + s / 2), (false, true));
        assert!(!l.quorate(now + 3 * s));
    }
}
