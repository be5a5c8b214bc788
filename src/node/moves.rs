//! A planned move, on both sides: the active waits for its target and
//! hands over; the target catches up and takes over. The checks are
//! `witness::moves`'s and the steps `witness::machine`'s; this is their
//! I/O: stopping intake, and answering the operator.

use super::*;
use witness::machine::MOVE_WAIT;

/// The operator waiting on a planned move, and the move's comment.
pub(super) struct MoveReply {
    pub(super) comment: String,
    pub(super) reply: Sender<Result<String, String>>,
}

impl Daemon<'_> {
    /// For an active's status: whether `move-cluster --to <peer>` would go
    /// now, from the same state and checks as the move itself.
    pub(super) fn move_check(&self) -> Option<String> {
        let r = self.m.move_check(Instant::now())?;
        Some(match r {
            Ok(()) => format!("move-cluster --to {}: ready", self.peer),
            Err(r) if r.passes_soon() => format!(
                "move-cluster --to {}: would wait (up to {} s) for: {r}",
                self.peer,
                MOVE_WAIT.as_secs()
            ),
            Err(r) => format!("move-cluster --to {}: refused now: {r}", self.peer),
        })
    }

    fn answer_move(&mut self, answer: Result<String, String>) {
        if let Some(r) = self.move_reply.take() {
            let _ = r.reply.send(answer);
        }
    }

    /// The move's actions.
    pub(super) fn act_move(&mut self, action: Action) -> Result<()> {
        match action {
            Action::StartMove { to } => {
                let frozen = self.freeze(&to).map_err(|e| format!("{e:#}"));
                self.feed(Input::Frozen(frozen))?;
            }
            Action::MoveWaits { to, refusal } => {
                tracing::info!(to = %to, reason = %refusal, "move-cluster waits for its target");
            }
            Action::MoveRefused { refusal, waited } => {
                let mut text = refusal.to_string();
                if let Some(w) = waited {
                    text.push_str(&format!(" (waited {} s for it)", w.as_secs()));
                }
                self.answer_move(Err(text));
            }
            Action::MoveFailed(why) => self.answer_move(Err(why)),
            Action::MoveDone {
                to,
                lsn,
                took,
                waited,
            } => {
                let ms = took.as_millis() as u64;
                let comment = self
                    .move_reply
                    .as_ref()
                    .map(|r| r.comment.clone())
                    .unwrap_or_default();
                crate::events::append(
                    &self.node.data_dir,
                    &self.name,
                    "move",
                    serde_json::json!({"from": self.name, "to": to, "comment": comment, "lsn": lsn, "ms": ms}),
                );
                let waited = waited
                    .map(|(what, d)| {
                        format!(
                            "it first waited {} ms for its target: {what}\n",
                            d.as_millis()
                        )
                    })
                    .unwrap_or_default();
                let text = format!(
                    "moved the active role from {} to {to} in {ms} ms (LSN {lsn}, nothing lost)\n{waited}",
                    self.name
                );
                self.answer_move(Ok(text));
            }
            Action::MoveTimedOut { to } => {
                tracing::error!(to = %to, "the planned move timed out; this node takes writes again");
                self.answer_move(Err(format!(
                    "node {to} did not take over within {}s; {} stays active",
                    witness::machine::MOVE_TIMEOUT.as_secs(),
                    self.name
                )));
            }
            // `act` hands only a move's actions here.
            _ => {}
        }
        Ok(())
    }

    /// Stops intake and seals, as Move-ClusteredMailboxServer does: the LSN
    /// the target must reach.
    fn freeze(&mut self, to: &str) -> Result<u64> {
        let Duty::Active(a) = &self.duty else {
            bail!("node {} is not active", self.name);
        };
        let comment = self
            .move_reply
            .as_ref()
            .map(|r| r.comment.clone())
            .unwrap_or_default();
        *self.serving.lock().expect("serving lock") = None;
        *self.mail.store.lock().expect("mail lock") = None;
        let lsn = a
            .store
            .freeze(&format!("node {} is moving to {to}", self.name))?;
        tracing::info!(to, lsn = %lsn, comment, "planned move: intake stopped and sealed");
        Ok(lsn.0)
    }
}
