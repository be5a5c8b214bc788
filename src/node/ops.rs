//! The operator's requests that reach the node daemon through its control
//! socket: pause, resume, activate.

use super::*;

impl Daemon<'_> {
    pub(super) fn handle(&mut self, op: &Op, peer: &PeerView) -> Result<String> {
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
}
