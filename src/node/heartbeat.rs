//! What the node says in its heartbeats: its role, epoch and position,
//! its copy's health, the vote it lends (`witness::core::support`), a move
//! it hands over; and the events its copy's inspection raises.

use super::*;

impl Daemon<'_> {
    pub(super) fn update_heartbeat(&mut self, peer: &PeerView) {
        let peer_active = peer.alive(self.m.settings.timing.dead_after)
            && peer.last.as_ref().is_some_and(|h| h.role == Role::Active);
        let hint = if peer_active {
            self.cfg.node(&self.peer).ok().and_then(|n| n.lmtp.clone())
        } else {
            None
        };
        *self.mail.active_hint.lock().expect("hint lock") = hint;
        let now = Instant::now();
        let moving = self.m.moving.as_ref().map(|m| witness::heartbeat::Handoff {
            to: m.to.clone(),
            lsn: shipper::Lsn(m.lsn),
            comment: self
                .move_reply
                .as_ref()
                .map(|r| r.comment.clone())
                .unwrap_or_default(),
        });
        let target = self.m.handoff_to_me(now).is_some();
        let Some(link) = self.link.clone() else {
            return;
        };
        let mut hb = link.ours.lock().expect("ours lock");
        hb.handoff = moving;
        let store_failed = self.m.says_store_failed(now);
        let changed = hb.role != self.m.role || hb.store_failed != store_failed;
        let copy_before = hb.copy.take();
        hb.role = self.m.role;
        hb.paused = self.paused().is_some();
        hb.store_failed = store_failed;
        hb.supports = None;
        match &self.duty {
            Duty::Active(a) => {
                let st = a.store.state();
                hb.epoch = a.epoch;
                hb.position = Position {
                    lsn: st.lsn,
                    generation: shipper::Generation(active_generation(&a.store)),
                };
            }
            _ => {
                hb.epoch = self.m.heartbeat_epoch();
                let paths = self.copy_paths();
                if let Ok(Some(state)) = CopyState::load(&paths) {
                    let seen = (state.inspection_failures, state.failed.clone());
                    if seen != self.inspection_seen {
                        if state.inspection_failures > self.inspection_seen.0 {
                            crate::events::append(
                                &self.node.data_dir,
                                &self.name,
                                "inspection-failure",
                                serde_json::json!({"failures": state.inspection_failures, "error": state.error}),
                            );
                        }
                        if let Some(f) = &state.failed
                            && self.inspection_seen.1.as_ref() != Some(f)
                        {
                            crate::events::append(
                                &self.node.data_dir,
                                &self.name,
                                "copy-failed",
                                serde_json::json!({ "error": f }),
                            );
                        }
                        self.inspection_seen = seen;
                    }
                    hb.position = Position {
                        lsn: state.replayed_lsn,
                        generation: state
                            .last_replayed
                            .map(|m| m.generation)
                            .unwrap_or_default(),
                    };
                    let st = replayer::status::status(&self.name, &paths, &state, 0);
                    hb.copy = Some(CopyBrief {
                        summary: format!("{:?}", st.summary_copy_status),
                        copy_queue: st.copy_queue_length,
                        replay_queue: st.replay_queue_length,
                    });
                }
                hb.supports = self.m.supports(now);
            }
        }
        let position = hb.position;
        // A copy's health changing is told at once: the active's move
        // checks read it from the last heartbeat.
        let changed = changed || hb.copy != copy_before;
        drop(hb);
        if changed || (target && self.announced != Some(position)) {
            link.poke();
        }
        self.announced = Some(position);
    }
}
