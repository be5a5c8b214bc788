//! The operator's requests that reach the node daemon through its control
//! socket: pause, resume, activate.

use super::*;

impl Daemon<'_> {
    pub(super) fn handle(&mut self, op: &Op) -> Result<String> {
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
                use witness::machine::ActivateRefusal;
                match self.m.may_activate(*play_down, Instant::now()) {
                    Ok(()) => {}
                    Err(ActivateRefusal::AlreadyActive { node }) => {
                        return Ok(format!("node {node} is already active\n"));
                    }
                    Err(r) => return Err(r.into()),
                }
                // Take the witness vote, then wait out the old holder's lease.
                self.wit.want(true);
                let deadline = Instant::now() + self.m.settings.timing.dead_after * 4;
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
                let wait = witness::core::takeover_at(acquired, &self.m.settings.timing)
                    .saturating_duration_since(Instant::now());
                std::thread::sleep(wait);
                let r = self.failover(if *force { "forced" } else { "activate" }, *force);
                self.takeover_outcome(r)?;
                match &self.duty {
                    Duty::Active(a) => Ok(format!(
                        "node {} is active in epoch {}\n",
                        self.name, a.epoch
                    )),
                    _ => bail!(
                        "{}",
                        self.m
                            .blocked
                            .as_ref()
                            .map(|b| b.to_string())
                            .unwrap_or_else(|| "activation did not happen".into())
                    ),
                }
            }
            _ => bail!("not a cluster request"),
        }
    }
}
