//! A planned move, on both sides: the active waits for its target and
//! hands over; the target catches up and takes over. The checks are
//! `witness::moves`'s and the steps `witness::core`'s; this is their I/O.

use super::*;

/// A planned move in progress on the active.
pub(super) struct Moving {
    pub(super) to: String,
    pub(super) comment: String,
    pub(super) lsn: Lsn,
    pub(super) epoch: Epoch,
    pub(super) started: Instant,
    /// The store is closed and the witness vote given up.
    pub(super) released: bool,
    pub(super) reply: Option<Sender<Result<String, String>>>,
    /// What the move waited for before it started, and how long.
    pub(super) waited: Option<(String, Duration)>,
}

/// A `move-cluster` request whose target is not ready yet, in a way that
/// passes by itself (`MoveRefusal::passes_soon`): checked again each step
/// until it passes or `MOVE_WAIT` runs out.
pub(super) struct PendingMove {
    pub(super) to: String,
    pub(super) comment: String,
    pub(super) reply: Sender<Result<String, String>>,
    pub(super) since: Instant,
    /// The last refusal waited for.
    pub(super) waiting_for: Option<String>,
}

/// How long `move-cluster` waits for a target that will be ready soon (a
/// copy that has just started, queues that drain) before it refuses.
pub(super) const MOVE_WAIT: Duration = Duration::from_secs(10);

/// How long a planned move may take before it is called off.
pub(super) const MOVE_TIMEOUT: Duration = Duration::from_secs(30);

impl Daemon<'_> {
    /// What the move's checks read: the one view that `move-cluster` and
    /// the active's status (`move_check`) are both computed from.
    pub(super) fn move_view<'v>(
        &'v self,
        peer: &'v PeerView,
        wv: &WitnessView,
    ) -> witness::moves::MoveView<'v> {
        witness::moves::MoveView {
            me: &self.name,
            peer: &self.peer,
            moving: self.moving.is_some(),
            peer_heartbeat: peer
                .last
                .as_ref()
                .filter(|_| peer.alive(self.timing.dead_after)),
            witness: if wv.reachable && wv.held {
                Ok(())
            } else {
                Err(wv
                    .error
                    .clone()
                    .unwrap_or_else(|| "this node does not hold its vote".into()))
            },
        }
    }

    /// For an active's status: whether `move-cluster --to <peer>` would go
    /// now, from the same view and checks as the move itself.
    pub(super) fn move_check(&self, peer: &PeerView, wv: &WitnessView) -> Option<String> {
        if !matches!(self.duty, Duty::Active(_)) {
            return None;
        }
        Some(
            match witness::moves::check(&self.peer, &self.move_view(peer, wv)) {
                Ok(()) => format!("move-cluster --to {}: ready", self.peer),
                Err(r) if r.passes_soon() => format!(
                    "move-cluster --to {}: would wait (up to {} s) for: {r}",
                    self.peer,
                    MOVE_WAIT.as_secs()
                ),
                Err(r) => format!("move-cluster --to {}: refused now: {r}", self.peer),
            },
        )
    }

    /// Checks, as Move-ClusteredMailboxServer does, then stops intake and
    /// seals: the move goes on in `tick_moving`.
    /// Starts the pending move `p` if its checks pass; keeps it pending
    /// while what refuses it passes by itself and `MOVE_WAIT` lasts;
    /// otherwise answers the refusal (saying what it waited for).
    pub(super) fn try_move(&mut self, p: PendingMove, peer: &PeerView, wv: &WitnessView) {
        let waited = p.since.elapsed();
        match self.start_move(&p.to, &p.comment, peer, wv) {
            Ok(()) => {
                if let Some(m) = self.moving.as_mut() {
                    m.reply = Some(p.reply);
                    m.waited = p.waiting_for.map(|w| (w, waited));
                }
            }
            Err(e) => {
                let refusal = e.downcast_ref::<witness::moves::MoveRefusal>();
                if let Some(r) = refusal.filter(|r| r.passes_soon())
                    && waited < MOVE_WAIT
                {
                    if p.waiting_for.is_none() {
                        tracing::info!(to = %p.to, reason = %r, "move-cluster waits for its target");
                    }
                    self.pending_move = Some(PendingMove {
                        waiting_for: Some(r.to_string()),
                        ..p
                    });
                    return;
                }
                let mut text = format!("{e:#}");
                if refusal.is_some_and(|r| r.passes_soon()) {
                    text.push_str(&format!(" (waited {} s for it)", waited.as_secs()));
                }
                let _ = p.reply.send(Err(text));
            }
        }
    }

    pub(super) fn start_move(
        &mut self,
        to: &str,
        comment: &str,
        peer: &PeerView,
        wv: &WitnessView,
    ) -> Result<()> {
        let Duty::Active(a) = &self.duty else {
            bail!(
                "node {} is not active: run move-cluster where the active node runs",
                self.name
            );
        };
        witness::moves::check(to, &self.move_view(peer, wv))?;
        let started = Instant::now();
        *self.serving.lock().expect("serving lock") = None;
        *self.mail.store.lock().expect("mail lock") = None;
        let lsn = a
            .store
            .freeze(&format!("node {} is moving to {to}", self.name))?;
        tracing::info!(to, lsn = %lsn, comment, "planned move: intake stopped and sealed");
        self.moving = Some(Moving {
            to: to.to_string(),
            comment: comment.to_string(),
            lsn,
            epoch: a.epoch,
            started,
            released: false,
            reply: None,
            waited: None,
        });
        self.link.poke();
        Ok(())
    }

    /// The active's side of a move: once the target has replayed the last
    /// LSN, close the store and give up the witness vote; once the target is
    /// active in a newer epoch, the move is done (this node then rejoins).
    pub(super) fn tick_moving(&mut self, peer: &PeerView) -> Result<()> {
        use witness::core::MovingStep;
        let m = self.moving.as_mut().expect("moving");
        let hb = peer
            .last
            .as_ref()
            .filter(|_| peer.alive(self.timing.dead_after));
        let step = witness::core::moving_step(
            m.lsn.0,
            m.epoch,
            m.released,
            hb,
            m.started.elapsed(),
            MOVE_TIMEOUT,
        );
        if step == MovingStep::Release {
            m.released = true;
            self.stop_duty();
            self.wit.want(false);
            self.role = Role::Starting;
            self.link.poke();
        }
        if step == MovingStep::Done {
            let m = self.moving.take().expect("moving");
            let ms = m.started.elapsed().as_millis() as u64;
            crate::events::append(
                &self.node.data_dir,
                &self.name,
                "move",
                serde_json::json!({"from": self.name, "to": m.to, "comment": m.comment, "lsn": m.lsn.0, "ms": ms}),
            );
            if let Some(r) = m.reply {
                let waited = m
                    .waited
                    .map(|(what, d)| {
                        format!(
                            "it first waited {} ms for its target: {what}\n",
                            d.as_millis()
                        )
                    })
                    .unwrap_or_default();
                let _ = r.send(Ok(format!(
                    "moved the active role from {} to {} in {ms} ms (LSN {}, nothing lost)\n{waited}",
                    self.name, m.to, m.lsn
                )));
            }
            self.role = Role::Fenced;
            return Ok(());
        }
        if step == MovingStep::TimedOut {
            let m = self.moving.take().expect("moving");
            tracing::error!(to = %m.to, "the planned move timed out; this node takes writes again");
            if let Some(r) = m.reply {
                let _ = r.send(Err(format!(
                    "node {} did not take over within {}s; {} stays active",
                    m.to,
                    MOVE_TIMEOUT.as_secs(),
                    self.name
                )));
            }
            // Closing the frozen store lets the next steps activate it again
            // in a new epoch.
            self.stop_duty();
        }
        self.update_heartbeat(peer);
        self.write_status(false);
        Ok(())
    }

    pub(super) fn handoff_to_me(&self, peer: &PeerView) -> bool {
        peer.alive(self.timing.dead_after)
            && peer
                .last
                .as_ref()
                .and_then(|h| h.handoff.as_ref())
                .is_some_and(|h| h.to == self.name)
            && self.has_copy()
    }

    /// The target's side of a move: report progress at once; once the
    /// active has closed its store and this copy holds its last LSN, take
    /// the witness vote and become active.
    pub(super) fn tick_target(&mut self, peer: &PeerView, wv: &WitnessView) -> Result<()> {
        if !matches!(self.duty, Duty::Passive(_)) {
            self.start_passive()?;
        }
        self.role = Role::Passive;
        let hb = peer.last.as_ref().expect("handoff_to_me checked");
        let handoff = hb.handoff.as_ref().expect("handoff_to_me checked");
        let lsn = CopyState::load(&self.copy_paths())?
            .map(|s| s.replayed_lsn)
            .unwrap_or(0);
        match witness::core::target_step(lsn, handoff.lsn, hb.role == Role::Active, wv.held) {
            witness::core::TargetStep::CatchUp => {}
            witness::core::TargetStep::SeekVote => self.wit.want(true),
            witness::core::TargetStep::TakeOver => {
                self.wit.want(true);
                self.failover("move", true)?;
                self.link.poke();
            }
        }
        Ok(())
    }
}
