//! The node daemon past two nodes, arbitrated by etcd. Each turn reads the
//! etcd thread's last view, decides with `witness::dcs::decide` (stay
//! active, fence, acquire, follow, or wait), and carries the decision out
//! with the same steps as the two-node daemon: `activate_store` and
//! `failover` (which take `leader` once the epoch is claimed), `rejoin`,
//! and the replay duty, pointed at whichever node is active.
//!
//! The node publishes its member value (role, position, copy health,
//! preference) through the etcd thread; best-copy selection reads every
//! member's.

use super::*;
use etcd_link::{EtcdShared, EtcdView};
use moves::MoveReply;
use witness::dcs::MemberState;
use witness::dcs::{self, Decision, FenceReason, Leader, Lease, WaitReason};
use witness::keys::MemberValue;

/// How long a copy whose activation was refused (the mount dial, a Failed
/// copy) waits before it tries again.
const REFUSED_PAUSE: Duration = Duration::from_secs(5);

pub(super) struct EtcdMode {
    pub(super) shared: Arc<EtcdShared>,
    pub(super) ttl: Duration,
    /// When this node last created `leader`: a read sent before then
    /// cannot show it, and does not depose the node.
    pub(super) led_at: Option<Instant>,
    /// The lease `leader` was created under: the only one the store's
    /// fence counts (a lease granted since does not hold `leader`).
    pub(super) led_lease: Option<witness::etcd::LeaseId>,
    /// The last decision, said in the log when it changes.
    pub(super) said: Option<String>,
    /// Why the node waits or could not act, for status.
    pub(super) waiting: Option<String>,
    /// An activation refused then: not tried again before `REFUSED_PAUSE`.
    pub(super) refused_at: Option<Instant>,
    /// When the replay duty stopped by itself.
    pub(super) replay_stopped_at: Option<Instant>,
    /// When the member value was last handed to the etcd thread.
    pub(super) published_at: Option<Instant>,
    /// A planned move this node (the old active) has under way.
    pub(super) moving: Option<EtcdMove>,
    /// Since when the most preferred node has been a Healthy copy.
    pub(super) preferred_healthy_since: Option<Instant>,
    /// Failback: why it waits (status shows it), when it is on.
    pub(super) failback_note: Option<String>,
    /// An operator's `activate` under way.
    pub(super) activating: Option<Activating>,
}

/// `logship activate` past two nodes: this node takes the role when no node
/// holds it, whatever the ranking (a lagged copy only with `--play-down`).
pub(super) struct Activating {
    force: bool,
    until: Instant,
    reply: std::sync::mpsc::Sender<Result<String, String>>,
}

/// How long `activate` waits for the role.
const ACTIVATE_TIMEOUT: Duration = Duration::from_secs(15);

/// A planned move past two nodes, on the node that hands the role over.
pub(super) struct EtcdMove {
    to: String,
    lsn: Lsn,
    started: Instant,
    reply: MoveReply,
}

/// How long the target of a planned move has to take the role.
const MOVE_TIMEOUT: Duration = Duration::from_secs(30);

impl EtcdMode {
    pub(super) fn new(shared: Arc<EtcdShared>, ttl: Duration) -> EtcdMode {
        EtcdMode {
            shared,
            ttl,
            led_at: None,
            led_lease: None,
            said: None,
            waiting: None,
            refused_at: None,
            replay_stopped_at: None,
            published_at: None,
            moving: None,
            preferred_healthy_since: None,
            failback_note: None,
            activating: None,
        }
    }

    /// The node's lease as a decision counts it; an active (`led`)
    /// counts only the lease its `leader` is under.
    fn lease(&self, v: &EtcdView, led: bool) -> Lease {
        let ours = !led || (v.lease.is_some() && v.lease == self.led_lease);
        Lease {
            ttl: self.ttl,
            confirmed_sent: v.confirmed_sent.filter(|_| ours),
        }
    }
}

impl Daemon<'_> {
    fn etcd(&self) -> &EtcdMode {
        self.etcd.as_ref().expect("etcd mode")
    }

    fn etcd_mut(&mut self) -> &mut EtcdMode {
        self.etcd.as_mut().expect("etcd mode")
    }

    /// Until when the store may take writes: the witness vote's lease, or
    /// past two nodes the etcd lease (`Lease::valid_until`).
    pub(super) fn fence_until(&self) -> Option<Instant> {
        match &self.etcd {
            Some(e) => e.lease(&e.shared.view(), true).valid_until(),
            None => self.wit.view().until,
        }
    }

    /// Past two nodes: creates `leader` for this node in `epoch`, under its
    /// lease. Why not, when another node holds it (or the lease is not
    /// confirmed); nothing to do with the file-share witness.
    pub(super) fn take_leader(&mut self, epoch: Epoch) -> Result<Option<String>> {
        let (Some(e), Claims::Etcd(ledger)) = (&self.etcd, &self.claims) else {
            return Ok(None);
        };
        let v = e.shared.view();
        let Some(lease) = v
            .lease
            .filter(|_| e.lease(&v, false).valid_at(Instant::now()))
        else {
            return Ok(Some("this node's etcd lease is not confirmed".into()));
        };
        let sent = Instant::now();
        match ledger.take_leader(&self.name, epoch, lease) {
            Ok(true) => {}
            Ok(false) => {
                return Ok(Some(format!(
                    "another node holds the leader key (epoch {epoch} is left unused)"
                )));
            }
            Err(e) => {
                // Made or not, it must not outlive this failure.
                self.etcd()
                    .shared
                    .drop_lease("the create of the leader key failed without an answer");
                return Err(e).context("create the leader key in etcd");
            }
        }
        let m = self.etcd_mut();
        m.led_at = Some(sent);
        m.led_lease = Some(lease);
        Ok(None)
    }

    /// One turn past two nodes: the operator's requests, then the decision
    /// on etcd's last view, carried out.
    pub(super) fn tick_etcd(&mut self) -> Result<()> {
        let ev = self.etcd().shared.view();
        let read = ev.read.clone().unwrap_or_default();
        while let Ok(req) = self.requests.try_recv() {
            let r = match &req.op {
                Op::MoveCluster { to, comment } => {
                    let reply = MoveReply {
                        comment: comment.clone(),
                        reply: req.reply,
                    };
                    self.start_move(to, reply);
                    continue;
                }
                Op::Activate { force, play_down } => {
                    match self.activation_refused(*play_down, &read) {
                        Some(answer) => answer,
                        None => {
                            self.etcd_mut().activating = Some(Activating {
                                force: *force,
                                until: Instant::now() + ACTIVATE_TIMEOUT,
                                reply: req.reply,
                            });
                            continue;
                        }
                    }
                }
                op => self.handle(op).map_err(|e| format!("{e:#}")),
            };
            let _ = req.reply.send(r);
        }
        self.watch_move(&read);
        self.activation_timed_out();
        self.learn_epoch_starts(&read.history);
        let newest = read.history.last();
        if let Some(n) = newest {
            self.m.known_epoch = self.m.known_epoch.max(n.epoch);
        }
        let facts = self.local_facts();
        let active_in = match &self.duty {
            Duty::Active(a) => Some(a.epoch),
            _ => None,
        };
        // A store this node kept from an epoch another node has since
        // followed with a newer one: undo what is past the fork first.
        if active_in.is_none()
            && matches!(facts.holding, Holding::Store)
            && let Some(n) = newest.filter(|n| n.node != self.name)
        {
            self.peer = n.node.clone();
            let history = read.history.clone();
            self.rejoin(&history)?;
            self.m.role = Role::Passive;
            self.publish_member(&read);
            return Ok(());
        }
        // A read sent before this node took `leader` cannot show it.
        let leader = match (active_in, self.etcd().led_at, ev.read_sent) {
            (Some(epoch), Some(led), Some(sent)) if sent < led => Some(Leader {
                node: self.name.clone(),
                epoch,
            }),
            _ => read.leader.clone(),
        };
        // The active's last position, as the mount dial's "known" one
        // after it is gone (what the heartbeat gives two nodes). Its value
        // from before it took the role (its copy's position) is a lower
        // bound, as a heartbeat a moment old is.
        if let Some(l) = read.leader.as_ref().filter(|l| l.node != self.name)
            && let Some(m) = read.members.iter().find(|m| m.node == l.node)
        {
            self.m.active_position = Some(Position {
                lsn: m.received,
                generation: m.generation,
            });
        }
        let view = dcs::View {
            me: self.name.clone(),
            reachable: ev.reachable,
            lease: self.etcd().lease(&ev, active_in.is_some()),
            leader,
            members: read.members.iter().map(MemberValue::state).collect(),
            newest_epoch: newest.map(|n| n.epoch).unwrap_or_default(),
            active_in,
            // A lagged copy is chosen only when no other copy is left (and
            // its takeover, a play-down, still passes the mount dial).
            lagged_allowed: true,
            // An operator's activation hands the role to this node.
            handoff: match &self.etcd().activating {
                Some(_) => Some(self.name.clone()),
                None => read.handoff.as_ref().map(|h| h.to.clone()),
            },
        };
        // The LMTP endpoint names the active to a relay that reached a copy.
        let hint = view
            .leader
            .as_ref()
            .filter(|l| l.node != self.name)
            .and_then(|l| self.cfg.node(&l.node).ok())
            .and_then(|n| n.lmtp.clone());
        *self.mail.active_hint.lock().expect("hint lock") = hint;
        let now = Instant::now();
        let decision = dcs::decide(&view, now);
        self.say(&decision);
        match decision {
            Decision::StayActive { until } => {
                if let Duty::Active(a) = &self.duty {
                    a.fence.extend(until);
                }
                self.m.role = Role::Active;
                self.etcd_mut().waiting = None;
                self.consider_failback(&read);
            }
            Decision::Fence(why) => {
                let epoch = active_in.unwrap_or_default();
                let text = match &why {
                    FenceReason::LeaseLapsed => {
                        "its etcd lease was not confirmed within its TTL".to_string()
                    }
                    FenceReason::Deposed { by: Some(l) } => {
                        format!("node {} holds the leader key in epoch {}", l.node, l.epoch)
                    }
                    FenceReason::Deposed { by: None } => "the leader key is gone".to_string(),
                };
                tracing::warn!(epoch = %epoch, reason = %text, "fencing");
                crate::events::append(
                    &self.node.data_dir,
                    &self.name,
                    "fenced",
                    serde_json::json!({"epoch": epoch.0, "reason": text}),
                );
                self.stop_duty();
                self.m.role = Role::Fenced;
                self.etcd().shared.drop_lease("fenced");
                let m = self.etcd_mut();
                m.led_lease = None;
                m.waiting = Some(format!("fenced: {text}"));
            }
            Decision::Acquire { .. } => {
                let planned = read.handoff.as_ref().is_some_and(|h| h.to == self.name);
                self.acquire(&facts, planned)?
            }
            Decision::Follow(l) => self.follow(&l, &facts, &read.history)?,
            Decision::Wait(why) => {
                let text = match &why {
                    // Why is the status's warning ("etcd is unreachable:
                    // ..."); said once.
                    WaitReason::Unreachable => {
                        "waiting for etcd to answer (see the warning)".into()
                    }
                    WaitReason::NoLease => "this node's etcd lease is not confirmed".into(),
                    WaitReason::BetterCopy { node } => {
                        format!("no active; node {node} is the better copy to take the role")
                    }
                    WaitReason::NoAbleCopy => {
                        "no active, and no copy able to take the role (lagged copies wait for an operator)".into()
                    }
                    WaitReason::OwnStaleLeader => {
                        "the leader key names this node from an earlier run: waiting for its lease to lapse".into()
                    }
                    WaitReason::MoveTarget { node } => {
                        format!("a planned move hands the role to node {node}")
                    }
                };
                // (Not while this node's own move deletes `leader`: a read
                // from before the delete still shows it.)
                if why == WaitReason::OwnStaleLeader
                    && self.etcd().moving.is_none()
                    && ev.lease.is_some()
                    && read.leader_lease == ev.lease
                {
                    self.etcd().shared.drop_lease(
                        "the leader key names this node under this lease while it is not active",
                    );
                }
                self.etcd_mut().waiting = Some(text);
                // Meanwhile a copy goes on copying what the last active's
                // share holds: the more it has, the less is lost.
                if matches!(facts.holding, Holding::Copy { .. }) {
                    self.keep_replaying()?;
                }
            }
        }
        self.publish_member(&read);
        self.write_status(false);
        Ok(())
    }

    fn say(&mut self, d: &Decision) {
        let text = match d {
            Decision::StayActive { .. } => "active".to_string(),
            other => format!("{other:?}"),
        };
        if self.etcd().said.as_deref() != Some(&text) {
            tracing::info!(decision = %text, "etcd arbiter");
            self.etcd_mut().said = Some(text);
        }
    }

    /// This node is the best copy (or a planned move's target) and no node
    /// is active: it takes the role.
    fn acquire(&mut self, facts: &LocalFacts, planned: bool) -> Result<()> {
        if let Some(force) = self.etcd().activating.as_ref().map(|a| a.force) {
            return self.activate_by_operator(facts, force);
        }
        if self
            .etcd()
            .refused_at
            .is_some_and(|t| t.elapsed() < REFUSED_PAUSE)
        {
            return self.keep_replaying();
        }
        match facts.holding {
            Holding::Store => {
                let reason = if self.m.known_epoch == Epoch(0) {
                    "start"
                } else {
                    "restart"
                };
                match self.activate_store(reason, None)? {
                    Ok(epoch) => self.now_active(epoch),
                    Err(why) => self.not_activated(why),
                }
            }
            Holding::Copy { .. } => {
                if planned {
                    tracing::info!(old_active = %self.peer, "a planned move hands the role to this node");
                } else {
                    tracing::warn!(old_active = %self.peer, "no node is active and this copy is the best: taking the role");
                }
                // A move's target is not held to the dial: the old active
                // stopped taking writes before it handed over.
                let reason = if planned { "move" } else { "failover" };
                match self.failover(reason, planned)? {
                    Takeover::Active(epoch) => self.now_active(epoch),
                    Takeover::Refused(why) => {
                        self.etcd_mut().refused_at = Some(Instant::now());
                        self.not_activated(why);
                    }
                    Takeover::NotActivated(why) => self.not_activated(why),
                }
            }
            Holding::Nothing => {
                self.etcd_mut().waiting = Some("no copy to activate: seed it".into());
            }
        }
        Ok(())
    }

    fn now_active(&mut self, epoch: Epoch) {
        self.m.role = Role::Active;
        self.m.known_epoch = epoch;
        self.etcd_mut().waiting = None;
        self.write_status(true);
    }

    fn not_activated(&mut self, why: String) {
        tracing::warn!(reason = %why, "not activated");
        self.etcd_mut().waiting = Some(format!("not activated: {why}"));
    }

    /// Another node is active: copy from it.
    fn follow(
        &mut self,
        leader: &Leader,
        facts: &LocalFacts,
        history: &[EpochRecord],
    ) -> Result<()> {
        self.m.role = Role::Passive;
        match facts.holding {
            Holding::Nothing => {
                self.etcd_mut().waiting = Some(format!(
                    "no copy yet: seed it (`logship seed --node {} --from {}`)",
                    self.name, leader.node
                ));
                return Ok(());
            }
            // Its own store, in the newest epoch: the leader's epoch is
            // not recorded yet (read again next turn).
            Holding::Store => {
                self.etcd_mut().waiting = Some(format!(
                    "node {} holds the leader key; its epoch {} is not read yet",
                    leader.node, leader.epoch
                ));
                return Ok(());
            }
            Holding::Copy { .. } => {}
        }
        let following = matches!(self.duty, Duty::Passive(_)) && self.peer == leader.node;
        if !following {
            if self.peer != leader.node {
                tracing::info!(active = %leader.node, epoch = %leader.epoch, "following the active");
            }
            self.stop_duty();
            self.peer = leader.node.clone();
            self.undo_past_fork(history)?;
        }
        self.etcd_mut().waiting = None;
        self.keep_replaying()
    }

    /// Runs the replay duty from `self.peer` if it is not running (again a
    /// while after it stopped by itself).
    fn keep_replaying(&mut self) -> Result<()> {
        if let Some(why) = self.replay_ended() {
            tracing::warn!(reason = %why, "replay stopped; it starts again shortly");
            self.etcd_mut().replay_stopped_at = Some(Instant::now());
            self.etcd_mut().waiting = Some(why);
        }
        if matches!(self.duty, Duty::Passive(_))
            || self
                .etcd()
                .replay_stopped_at
                .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return Ok(());
        }
        if let Duty::Active(_) = self.duty {
            return Ok(());
        }
        self.start_passive()
    }

    /// What this node tells the others under `members/<node>`.
    fn publish_member(&mut self, read: &witness::keys::ClusterRead) {
        if self
            .etcd()
            .published_at
            .is_some_and(|t| t.elapsed() < self.cfg.cluster.heartbeat_interval / 2)
        {
            return;
        }
        self.etcd_mut().published_at = Some(Instant::now());
        let newest_owner = read.history.last().map(|r| r.node.as_str());
        let paused = self.paused().is_some();
        let mut m = MemberValue {
            version: shipper::FormatVersion::CURRENT,
            node: self.name.clone(),
            role: self.m.role,
            epoch: self.m.known_epoch,
            paused,
            lagged: !self.node.replay_lag.is_zero(),
            preference: self.node.activation_preference.unwrap_or(0),
            at_us: witness::witness::now_us(),
            ..Default::default()
        };
        match &self.duty {
            Duty::Active(a) => {
                m.epoch = a.epoch;
                m.received = a.store.state().lsn;
                m.replayed = m.received;
                m.generation = Generation(active_generation(&a.store));
                m.able = true;
            }
            _ => {
                let p = self.copy_paths();
                match (p.database.exists(), CopyState::load(&p).ok().flatten()) {
                    (true, Some(s)) => {
                        let st = replayer::status::status(
                            &self.name,
                            &p,
                            &s,
                            witness::witness::now_us(),
                        );
                        use replayer::status::SummaryCopyStatus as S;
                        m.able = !s.seeding
                            && !matches!(st.summary_copy_status, S::Failed | S::Suspended);
                        m.received = s.replayed_lsn;
                        m.replayed = s.replayed_lsn;
                        m.generation = s.last_replayed.map(|g| g.generation).unwrap_or_default();
                        m.copy_status = Some(format!("{:?}", st.summary_copy_status));
                        m.source = Some(s.source.clone());
                    }
                    (true, None) => {
                        // Its own store: able if no other node began a
                        // newer epoch since.
                        let paths = shipper::store::StorePaths::new(&self.node.data_dir);
                        if let Ok((lsn, _, _)) = log_position(&paths) {
                            m.received = lsn;
                            m.replayed = lsn;
                            m.able = newest_owner.is_none_or(|o| o == self.name);
                        }
                    }
                    (false, _) => m.copy_status = Some("NoCopy".into()),
                }
            }
        }
        self.etcd().shared.publish(m);
    }
}

impl Daemon<'_> {
    /// `move-cluster` on the active past two nodes: checks the target (or
    /// picks the best copy when none is named), records `handoff`, stops
    /// taking writes, closes the store and deletes `leader`; the target
    /// then drains this node's share and claims the next epoch. The answer
    /// goes when it holds `leader` (`watch_move`).
    fn start_move(&mut self, to: &str, reply: MoveReply) {
        let refuse = |reply: MoveReply, why: String| {
            tracing::warn!(reason = %why, "planned move refused");
            let _ = reply.reply.send(Err(why));
        };
        if self.etcd().moving.is_some() {
            return refuse(reply, "another move is waiting for its target".into());
        }
        let Duty::Active(a) = &self.duty else {
            return refuse(reply, format!("node {} is not active", self.name));
        };
        // Read now, not the etcd thread's last read: the copies' health
        // and positions as they are.
        let read = match &self.claims {
            Claims::Etcd(ledger) => match witness::keys::read(ledger.etcd()) {
                Ok(r) => r,
                Err(e) => {
                    return refuse(
                        reply,
                        format!("cannot read the cluster's keys in etcd: {e}"),
                    );
                }
            },
            Claims::Witness(_) => return refuse(reply, "not an etcd cluster".into()),
        };
        let (epoch, lsn) = (a.epoch, a.store.state().lsn);
        let others: Vec<&MemberValue> = read
            .members
            .iter()
            .filter(|m| m.node != self.name)
            .collect();
        let target = if to.is_empty() {
            let members: Vec<MemberState> = others.iter().map(|m| m.state()).collect();
            match witness::dcs::best_member(&members, false) {
                Some(node) => node,
                None => {
                    return refuse(
                        reply,
                        "no copy can take the role: none is alive, able, unpaused and not lagged"
                            .into(),
                    );
                }
            }
        } else {
            to.to_string()
        };
        let Some(m) = others.iter().find(|m| m.node == target) else {
            return refuse(
                reply,
                format!(
                    "node {target} is not a live member of the cluster (no members/{target} in etcd)"
                ),
            );
        };
        let why_not = if m.paused {
            Some("is paused".to_string())
        } else if m.lagged {
            Some("is a lagged copy (replay-lag)".into())
        } else if m.copy_status.as_deref() != Some("Healthy") {
            Some(format!(
                "is not a Healthy copy ({})",
                m.copy_status.as_deref().unwrap_or("no copy status")
            ))
        } else {
            None
        };
        if let Some(why) = why_not {
            return refuse(
                reply,
                format!("node {target} {why}: the role stays on {}", self.name),
            );
        }
        let Claims::Etcd(ledger) = &self.claims else {
            return refuse(reply, "not an etcd cluster".into());
        };
        let etcd = ledger.etcd();
        let Some(lease) = self.etcd.as_ref().and_then(|e| e.led_lease) else {
            return refuse(reply, "this node's lease is not confirmed".into());
        };
        let value = witness::keys::HandoffValue {
            version: shipper::FormatVersion::CURRENT,
            from: self.name.clone(),
            to: target.clone(),
            epoch,
            lsn,
            comment: reply.comment.clone(),
        };
        if let Err(e) = etcd.put(
            &etcd.key(witness::keys::HANDOFF),
            &value.to_bytes(),
            Some(lease),
        ) {
            return refuse(
                reply,
                format!(
                    "cannot record the move in etcd: {e}; the role stays on {}",
                    self.name
                ),
            );
        }
        tracing::info!(to = %target, lsn = %lsn, "planned move: this node stops taking writes and hands the role over");
        let started = Instant::now();
        self.stop_duty();
        self.m.role = Role::Passive;
        let Claims::Etcd(ledger) = &self.claims else {
            unreachable!("checked above");
        };
        let etcd = ledger.etcd();
        if let Err(e) = etcd.delete(&etcd.key(witness::keys::LEADER)) {
            tracing::warn!(error = %e, "cannot delete the leader key: the move waits for it to lapse");
            self.etcd()
                .shared
                .drop_lease("the leader key could not be deleted for a planned move");
        }
        self.etcd_mut().moving = Some(EtcdMove {
            to: target,
            lsn,
            started,
            reply,
        });
    }

    /// The old active's side of a move under way: answered once the target
    /// holds `leader`, or when it has not within `MOVE_TIMEOUT`.
    fn watch_move(&mut self, read: &witness::keys::ClusterRead) {
        let Some(mv) = &self.etcd().moving else {
            return;
        };
        let done = read.leader.as_ref().is_some_and(|l| l.node == mv.to);
        if !done && mv.started.elapsed() < MOVE_TIMEOUT {
            return;
        }
        let mv = self.etcd_mut().moving.take().expect("checked above");
        if let Claims::Etcd(ledger) = &self.claims {
            let etcd = ledger.etcd();
            if let Err(e) = etcd.delete(&etcd.key(witness::keys::HANDOFF)) {
                tracing::warn!(error = %e, "cannot delete the handoff key: it lapses with this node's lease");
                self.etcd()
                    .shared
                    .drop_lease("the handoff key could not be deleted");
            }
        }
        let ms = mv.started.elapsed().as_millis() as u64;
        let answer = if done {
            crate::events::append(
                &self.node.data_dir,
                &self.name,
                "move",
                serde_json::json!({"from": self.name, "to": mv.to, "comment": mv.reply.comment, "lsn": mv.lsn, "ms": ms}),
            );
            Ok(format!(
                "moved the active role from {} to {} in {ms} ms (LSN {}, nothing lost)\n",
                self.name, mv.to, mv.lsn
            ))
        } else {
            tracing::error!(to = %mv.to, "the planned move timed out; the best copy takes the role");
            Err(format!(
                "node {} did not take over within {}s; the best copy takes the role",
                mv.to,
                MOVE_TIMEOUT.as_secs()
            ))
        };
        let _ = mv.reply.reply.send(answer);
    }
}

/// The local time of day, in minutes since midnight: `LOGSHIP_LOCAL_TIME`
/// (`HH:MM`, for tests and drills of the failback window) when set.
fn local_minute() -> u16 {
    if let Some(t) = std::env::var("LOGSHIP_LOCAL_TIME")
        .ok()
        .and_then(|t| witness::failback::minute(&t).ok())
    {
        return t;
    }
    // SAFETY: localtime_r writes only into `tm`, which lives on this frame.
    unsafe {
        let now = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&now, &mut tm).is_null() {
            return 0;
        }
        (tm.tm_hour * 60 + tm.tm_min) as u16
    }
}

impl Daemon<'_> {
    /// The active's failback: when `[cluster] failback = "preferred"`, the
    /// role goes back to the most preferred node by a planned move once
    /// `witness::failback::decide` says so; status says why it waits.
    fn consider_failback(&mut self, read: &witness::keys::ClusterRead) {
        let c = &self.cfg.cluster;
        if c.failback != logship::config::Failback::Preferred || self.etcd().moving.is_some() {
            return;
        }
        let preferred = self
            .cfg
            .nodes
            .iter()
            .filter_map(|(n, nd)| nd.activation_preference.map(|p| (p, n)))
            .min()
            .map(|(_, n)| n.clone());
        let healthy = preferred.as_ref().is_some_and(|p| {
            read.members.iter().any(|m| {
                m.node == *p
                    && m.able
                    && !m.paused
                    && !m.lagged
                    && m.copy_status.as_deref() == Some("Healthy")
            })
        });
        let since = match (healthy, self.etcd().preferred_healthy_since) {
            (false, _) => None,
            (true, None) => Some(Instant::now()),
            (true, s) => s,
        };
        self.etcd_mut().preferred_healthy_since = since;
        let policy = witness::failback::Policy {
            window: c
                .failback_window
                .as_deref()
                .and_then(|w| witness::failback::Window::parse(w).ok()),
            after: c.failback_after,
        };
        let p = preferred.map(|node| witness::failback::Preferred {
            node,
            healthy_for: since.map(|s| s.elapsed()),
        });
        match witness::failback::decide(&policy, &self.name, p.as_ref(), local_minute()) {
            witness::failback::Decision::Home => self.etcd_mut().failback_note = None,
            witness::failback::Decision::Wait(why) => {
                if self.etcd().failback_note.as_deref() != Some(&why)
                    && !why.contains("Healthy for")
                {
                    tracing::info!(reason = %why, "failback");
                }
                self.etcd_mut().failback_note = Some(why);
            }
            witness::failback::Decision::Move { to, why } => {
                tracing::info!(to = %to, reason = %why, "failback: a planned move to the preferred node");
                crate::events::append(
                    &self.node.data_dir,
                    &self.name,
                    "failback",
                    serde_json::json!({"to": to, "reason": why}),
                );
                self.etcd_mut().failback_note = Some(format!("failback to {to}: {why}"));
                // Tried once: it must be Healthy for `failback-after` again
                // before another try.
                self.etcd_mut().preferred_healthy_since = None;
                // No operator waits on it: its answer goes to the log.
                let (tx, _) = std::sync::mpsc::channel();
                self.start_move(
                    &to,
                    MoveReply {
                        comment: format!("failback: {why}"),
                        reply: tx,
                    },
                );
            }
        }
    }
}

impl Daemon<'_> {
    /// The answer to `activate` when it cannot go ahead, or `None` when it
    /// may (the node then takes the role at its next turn).
    fn activation_refused(
        &self,
        play_down: bool,
        read: &witness::keys::ClusterRead,
    ) -> Option<Result<String, String>> {
        if matches!(self.duty, Duty::Active(_)) {
            return Some(Ok(format!("node {} is already active\n", self.name)));
        }
        if self.etcd().activating.is_some() {
            return Some(Err("another activation is under way".into()));
        }
        if let Some(l) = &read.leader {
            return Some(Err(format!(
                "node {} is active in epoch {}: `logship move-cluster --to {}` moves the role",
                l.node, l.epoch, self.name
            )));
        }
        if !self.node.replay_lag.is_zero() && !play_down {
            return Some(Err(format!(
                "node {} is a lagged copy (replay-lag {}): `--play-down` replays everything it holds before it activates",
                self.name,
                humantime::format_duration(self.node.replay_lag)
            )));
        }
        if matches!(self.local_facts().holding, Holding::Nothing) {
            return Some(Err(format!(
                "node {} holds no copy: seed it first",
                self.name
            )));
        }
        None
    }

    /// `activate`: this copy (played down, as every takeover drains all it
    /// can reach) takes the role; the mount dial holds unless `--force`.
    fn activate_by_operator(&mut self, facts: &LocalFacts, force: bool) -> Result<()> {
        let Some(a) = self.etcd_mut().activating.take() else {
            return Ok(());
        };
        let answer = match facts.holding {
            Holding::Store => match self.activate_store("activate", None)? {
                Ok(epoch) => {
                    self.now_active(epoch);
                    Ok(epoch)
                }
                Err(why) => Err(why),
            },
            Holding::Copy { .. } => {
                tracing::warn!(forced = force, "an operator activates this copy");
                match self.failover(if force { "forced" } else { "activate" }, force)? {
                    Takeover::Active(epoch) => {
                        self.now_active(epoch);
                        Ok(epoch)
                    }
                    Takeover::Refused(why) | Takeover::NotActivated(why) => Err(why),
                }
            }
            Holding::Nothing => Err("no copy to activate: seed it".into()),
        };
        let _ = a.reply.send(match answer {
            Ok(epoch) => Ok(format!("node {} is active in epoch {epoch}\n", self.name)),
            Err(why) => {
                self.not_activated(why.clone());
                Err(why)
            }
        });
        Ok(())
    }

    /// An activation that found no way to the role in time is answered.
    fn activation_timed_out(&mut self) {
        if self
            .etcd()
            .activating
            .as_ref()
            .is_some_and(|a| Instant::now() >= a.until)
        {
            let a = self.etcd_mut().activating.take().expect("checked above");
            let why = self.etcd().waiting.clone().unwrap_or_default();
            let _ = a.reply.send(Err(format!(
                "node {} did not take the role within {} s: {why}",
                self.name,
                ACTIVATE_TIMEOUT.as_secs()
            )));
        }
    }
}
