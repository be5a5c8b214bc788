//! What the node daemon publishes about itself (`NodeStatus`), computed
//! from the same state the decisions read.

use super::*;

/// How long status shows a step that failed.
const STEP_FAILED_SHOWN: Duration = Duration::from_secs(10);

impl Daemon<'_> {
    pub(super) fn status(&self) -> NodeStatus {
        let peer = self.peer_view();
        let wv = self.wit.view();
        let now = Instant::now();
        let (peer_vote, lsn) = match &self.duty {
            Duty::Active(a) => (
                peer.lease.is_some_and(|(e, t)| e == a.epoch && t > now),
                a.store.state().lsn.0,
            ),
            _ => (
                peer.alive(self.m.settings.timing.dead_after),
                CopyState::load(&self.copy_paths())
                    .ok()
                    .flatten()
                    .map(|s| s.replayed_lsn.0)
                    .unwrap_or(0),
            ),
        };
        let etcd = self.etcd.as_ref().map(|e| e.shared.view());
        // Past two nodes the arbiter's vote is the node's etcd lease.
        let witness_vote = match &etcd {
            Some(_) => self.fence_until().is_some_and(|t| t > now),
            None => wv.held && wv.until.is_some_and(|t| t > now),
        };
        let leader = etcd
            .as_ref()
            .and_then(|v| v.read.as_ref())
            .and_then(|r| r.leader.as_ref());
        let active_node = match &self.duty {
            Duty::Active(_) => Some(self.name.clone()),
            _ if etcd.is_some() => leader.map(|l| l.node.clone()),
            _ => match &peer.last {
                Some(h)
                    if h.role == Role::Active && peer.alive(self.m.settings.timing.dead_after) =>
                {
                    Some(self.peer.clone())
                }
                _ => None,
            },
        };
        // Block mode on a passive: what its receiver has (and, when it
        // could not start one, why, shown as `block_mode`).
        let receiving = matches!(&self.duty, Duty::Passive(p) if p.receiver.is_some());
        let received = match &self.duty {
            Duty::Passive(_) => Some(self.received.lock().expect("received lock").clone()),
            _ => None,
        };
        let stream = received.as_ref().filter(|_| receiving);
        let mut warnings = Vec::new();
        match &etcd {
            Some(v) if !v.reachable => warnings.push(match &v.error {
                Some(e) => format!("etcd is unreachable: {e}"),
                None => "etcd has not answered yet".into(),
            }),
            Some(v) => warnings.extend(v.read.iter().flat_map(|r| r.problems.clone())),
            None if !wv.reachable => warnings.push(match &wv.error {
                Some(e) => format!("the witness is unreachable: {e}"),
                None => "the witness has not answered yet".into(),
            }),
            None => {}
        }
        if let Some((e, at)) = &self.step_failed
            && at.elapsed() < STEP_FAILED_SHOWN
        {
            warnings.push(format!("a step failed (retried): {e}"));
        }
        if let Some(p) = &peer.problem {
            warnings.push(p.clone());
        }
        if self.link.is_some() && !peer.alive(self.m.settings.timing.dead_after) {
            warnings.push(format!("no heartbeat from {}", self.peer));
        }
        if self.link.as_ref().is_some_and(|l| !l.authenticated) {
            warnings.push("heartbeats are not authenticated: set [cluster] key-file".into());
            if self.node.lmtp.is_some() {
                warnings.push(
                    "the LMTP endpoint takes mail from anyone (no relay proof): set [cluster] key-file"
                        .into(),
                );
            }
        }
        NodeStatus {
            version: Default::default(),
            node: self.name.clone(),
            role: self.m.role,
            epoch: match &self.duty {
                Duty::Active(a) => a.epoch,
                _ => self.m.known_epoch,
            },
            active_node,
            node_state: if self.paused().is_some() {
                "paused".into()
            } else {
                "online".into()
            },
            quorum: Quorum {
                node: true,
                peer: peer_vote,
                witness: witness_vote,
                votes: 1 + peer_vote as u8 + witness_vote as u8,
            },
            witness: self.claims.display(),
            witness_reachable: etcd.as_ref().map_or(wv.reachable, |v| v.reachable),
            blocked: match &self.etcd {
                Some(e) => e.waiting.clone(),
                None => self.m.blocked.as_ref().map(|b| b.to_string()),
            },
            dial: self.dial.clone(),
            move_check: match &self.etcd {
                Some(e) => e.failback_note.clone(),
                None => self.move_check(),
            },
            warnings,
            peer: peer.last.as_ref().map(|h| PeerSummary {
                node: h.node.clone(),
                role: h.role,
                paused: h.paused,
                epoch: h.epoch,
                lsn: h.position.lsn,
                copy: h.copy.as_ref().map(|c| c.summary.clone()),
                // Rounded, so that the status file changes only when it matters.
                heard_ms_ago: peer
                    .heard_at
                    .map(|t| t.elapsed().as_millis() as u64 / 1000 * 1000),
            }),
            failovers: self.failovers,
            mail_stored: self.mail.stored.load(Ordering::Relaxed),
            mail_duplicates: self.mail.duplicates.load(Ordering::Relaxed),
            lsn: shipper::Lsn(lsn),
            last_received_lsn: stream.map(|r| shipper::Lsn(r.lsn)),
            last_received_time: stream
                .and_then(|r| r.time_us)
                .map(replayer::status::fmt_time),
            copy_queue_records: stream.and_then(|r| r.queue_records()),
            copy_queue_bytes: stream.and_then(|r| r.queue_bytes()),
            block_mode: match (&self.duty, &received) {
                (Duty::Passive(_), Some(r)) if r.connected => Some(
                    if r.encrypted {
                        "receiving, encrypted"
                    } else {
                        "receiving"
                    }
                    .into(),
                ),
                (Duty::Passive(_), Some(r)) if receiving => {
                    Some(r.error.clone().unwrap_or_else(|| "connecting".into()))
                }
                (Duty::Passive(_), Some(r)) => {
                    Some(r.error.clone().unwrap_or_else(|| "off".into()))
                }
                (Duty::Active(_), _) => match &self.block_off {
                    Some(why) => Some(why.clone()),
                    None => self.node.block_addr().map(|a| format!("serving on {a}")),
                },
                _ => None,
            },
            commit: self.commit_note(),
            copies: etcd
                .as_ref()
                .and_then(|v| v.read.as_ref())
                .map(copy_lines)
                .unwrap_or_default(),
            pid: std::process::id(),
            updated_us: 0,
        }
    }

    pub(super) fn write_status(&mut self, force: bool) {
        let st = self.status();
        *self.snapshot.lock().expect("snapshot lock") = Some(st.clone());
        // The node's side of a redelivery: what it stored and dropped.
        if let Some((prev, _)) = &self.status_written
            && prev.mail_duplicates != st.mail_duplicates
            && self
                .mail_logged
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(5))
        {
            self.mail_logged = Some(Instant::now());
            tracing::info!(
                stored = st.mail_stored,
                duplicates = st.mail_duplicates,
                "mail since this daemon started: newly stored, dropped as duplicates"
            );
        }
        if !force
            && let Some((prev, at)) = &self.status_written
            && *prev == st
            && at.elapsed() < Duration::from_secs(1)
        {
            return;
        }
        let mut out = st.clone();
        out.updated_us = witness::witness::now_us();
        let path = self.node.data_dir.join(NODE_STATUS_FILE);
        let json = serde_json::to_vec_pretty(&out).expect("status serialises");
        if let Err(e) = shipper::share::write_atomic(&path, &json) {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the node status");
        }
        if let Some(p) = &self.publish {
            // Full: the publisher is behind; the next status will do.
            let _ = p.try_send(json);
        }
        self.status_written = Some((st, Instant::now()));
    }
}

/// Every member as etcd has it, with how far each is behind the active.
fn copy_lines(read: &witness::keys::ClusterRead) -> Vec<crate::node_status::CopyLine> {
    let active = read
        .leader
        .as_ref()
        .and_then(|l| read.members.iter().find(|m| m.node == l.node))
        .map(|m| m.received);
    read.members
        .iter()
        .map(|m| crate::node_status::CopyLine {
            node: m.node.clone(),
            role: m.role,
            copy_status: m.copy_status.clone(),
            received: m.received,
            replayed: m.replayed,
            behind: active.map(|a| a.0.saturating_sub(m.replayed.0)),
            preference: m.preference,
            paused: m.paused,
            lagged: m.lagged,
        })
        .collect()
}
