//! The planned move's pre-checks (`move-cluster`), written once: whether
//! the active may hand its role to its peer now, from what the peer's last
//! heartbeat says and whether the active holds the witness vote. Pure: the
//! caller passes what it knows, the answer is a typed refusal or none.
//!
//! Some refusals pass by themselves within seconds (a copy that has just
//! started says `Initializing` until a turn of its replay finds nothing to
//! do; a queue drains); `MoveRefusal::passes_soon` tells them apart, so that
//! the active waits for them a bounded time instead of refusing a move that
//! status, read a moment later, shows as possible.

use crate::heartbeat::{CopyBrief, Heartbeat, Role};

/// `move-cluster` refuses a target whose copy queue is longer.
pub const MAX_COPY_QUEUE: u64 = 10;
/// `move-cluster` refuses a target whose replay queue is longer.
pub const MAX_REPLAY_QUEUE: u64 = 50;

/// Why the active role cannot move to `to` now.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MoveRefusal {
    #[error("node {me} is not active: run move-cluster where the active node runs")]
    NotActive { me: String },
    #[error("node {to} is already active")]
    AlreadyActive { to: String },
    #[error("node {to:?} is not this cluster's other node ({peer})")]
    NotThePeer { to: String, peer: String },
    #[error("a move is already in progress")]
    InProgress,
    #[error("node {to} is not answering heartbeats")]
    Silent { to: String },
    #[error("node {to} is paused: `logship resume-node --node {to}` first")]
    Paused { to: String },
    #[error("node {to} is {role}, not a passive copy")]
    NotPassive { to: String, role: &'static str },
    #[error("node {to} reports no copy status")]
    NoCopyStatus { to: String },
    #[error("the copy on {to} is {summary}, not Healthy")]
    NotHealthy { to: String, summary: String },
    #[error("the copy queue on {to} is {len} (at most {MAX_COPY_QUEUE})")]
    CopyQueue { to: String, len: u64 },
    #[error("the replay queue on {to} is {len} (at most {MAX_REPLAY_QUEUE})")]
    ReplayQueue { to: String, len: u64 },
    #[error("the witness is not reachable: {why}")]
    NoWitnessVote { why: String },
}

impl MoveRefusal {
    /// True for a state a healthy target leaves by itself within seconds:
    /// worth waiting for rather than refusing at once.
    pub fn passes_soon(&self) -> bool {
        match self {
            MoveRefusal::NoCopyStatus { .. }
            | MoveRefusal::CopyQueue { .. }
            | MoveRefusal::ReplayQueue { .. } => true,
            MoveRefusal::NotHealthy { summary, .. } => summary == "Initializing",
            _ => false,
        }
    }
}

/// What the active knows when asked to move to `to`.
#[derive(Clone, Debug)]
pub struct MoveView<'a> {
    pub me: &'a str,
    pub peer: &'a str,
    /// A move already under way.
    pub moving: bool,
    /// The peer's last heartbeat, if it is alive.
    pub peer_heartbeat: Option<&'a Heartbeat>,
    /// Whether this node holds the witness vote, and why not.
    pub witness: Result<(), String>,
}

/// The checks, in the order an operator fixes them: `Ok` when the move may
/// start now.
pub fn check(to: &str, v: &MoveView<'_>) -> Result<(), MoveRefusal> {
    let to_s = || to.to_string();
    if to == v.me {
        return Err(MoveRefusal::AlreadyActive { to: to_s() });
    }
    if to != v.peer {
        return Err(MoveRefusal::NotThePeer {
            to: to_s(),
            peer: v.peer.to_string(),
        });
    }
    if v.moving {
        return Err(MoveRefusal::InProgress);
    }
    let Some(hb) = v.peer_heartbeat else {
        return Err(MoveRefusal::Silent { to: to_s() });
    };
    if hb.paused {
        return Err(MoveRefusal::Paused { to: to_s() });
    }
    if hb.role != Role::Passive {
        return Err(MoveRefusal::NotPassive {
            to: to_s(),
            role: hb.role.name(),
        });
    }
    let Some(CopyBrief {
        summary,
        copy_queue,
        replay_queue,
    }) = &hb.copy
    else {
        return Err(MoveRefusal::NoCopyStatus { to: to_s() });
    };
    if summary != "Healthy" {
        return Err(MoveRefusal::NotHealthy {
            to: to_s(),
            summary: summary.clone(),
        });
    }
    if *copy_queue > MAX_COPY_QUEUE {
        return Err(MoveRefusal::CopyQueue {
            to: to_s(),
            len: *copy_queue,
        });
    }
    if *replay_queue > MAX_REPLAY_QUEUE {
        return Err(MoveRefusal::ReplayQueue {
            to: to_s(),
            len: *replay_queue,
        });
    }
    if let Err(why) = &v.witness {
        return Err(MoveRefusal::NoWitnessVote { why: why.clone() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passive(summary: &str, copy_queue: u64, replay_queue: u64) -> Heartbeat {
        Heartbeat {
            role: Role::Passive,
            copy: Some(CopyBrief {
                summary: summary.into(),
                copy_queue,
                replay_queue,
            }),
            ..Default::default()
        }
    }

    fn view<'a>(hb: Option<&'a Heartbeat>) -> MoveView<'a> {
        MoveView {
            me: "alpha",
            peer: "beta",
            moving: false,
            peer_heartbeat: hb,
            witness: Ok(()),
        }
    }

    #[test]
    fn a_healthy_passive_peer_with_short_queues_may_take_the_role() {
        let hb = passive("Healthy", MAX_COPY_QUEUE, MAX_REPLAY_QUEUE);
        assert_eq!(check("beta", &view(Some(&hb))), Ok(()));
    }

    #[test]
    fn each_check_refuses_with_its_own_reason_and_says_whether_to_wait() {
        let healthy = passive("Healthy", 0, 0);
        // (target, a move under way, the peer's heartbeat, the witness,
        // whether to wait, what the refusal says)
        type Case = (
            &'static str,
            bool,
            Option<Heartbeat>,
            Result<(), String>,
            bool,
            &'static str,
        );
        let cases: Vec<Case> = vec![
            (
                "alpha",
                false,
                Some(healthy.clone()),
                Ok(()),
                false,
                "already active",
            ),
            (
                "gamma",
                false,
                Some(healthy.clone()),
                Ok(()),
                false,
                "not this cluster's other node",
            ),
            (
                "beta",
                true,
                Some(healthy.clone()),
                Ok(()),
                false,
                "in progress",
            ),
            ("beta", false, None, Ok(()), false, "not answering"),
            (
                "beta",
                false,
                Some(Heartbeat {
                    paused: true,
                    ..healthy.clone()
                }),
                Ok(()),
                false,
                "paused",
            ),
            (
                "beta",
                false,
                Some(Heartbeat {
                    role: Role::Active,
                    ..healthy.clone()
                }),
                Ok(()),
                false,
                "not a passive copy",
            ),
            (
                "beta",
                false,
                Some(Heartbeat {
                    copy: None,
                    ..healthy.clone()
                }),
                Ok(()),
                true,
                "no copy status",
            ),
            (
                "beta",
                false,
                Some(passive("Initializing", 0, 0)),
                Ok(()),
                true,
                "Initializing, not Healthy",
            ),
            (
                "beta",
                false,
                Some(passive("Suspended", 0, 0)),
                Ok(()),
                false,
                "Suspended, not Healthy",
            ),
            (
                "beta",
                false,
                Some(passive("Failed", 0, 0)),
                Ok(()),
                false,
                "Failed, not Healthy",
            ),
            (
                "beta",
                false,
                Some(passive("Healthy", MAX_COPY_QUEUE + 1, 0)),
                Ok(()),
                true,
                "copy queue",
            ),
            (
                "beta",
                false,
                Some(passive("Healthy", 0, MAX_REPLAY_QUEUE + 1)),
                Ok(()),
                true,
                "replay queue",
            ),
            (
                "beta",
                false,
                Some(healthy.clone()),
                Err("held by another".into()),
                false,
                "held by another",
            ),
        ];
        for (to, moving, hb, witness, soon, text) in cases {
            let v = MoveView {
                moving,
                peer_heartbeat: hb.as_ref(),
                witness,
                ..view(None)
            };
            let r = check(to, &v).expect_err(text);
            assert!(r.to_string().contains(text), "{r} / {text}");
            assert_eq!(r.passes_soon(), soon, "{r}");
        }
    }
}
