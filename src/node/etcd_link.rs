//! The node's etcd thread, past two nodes: it keeps the node's lease alive
//! (granting a new one when it lapsed), publishes the node's member value
//! under that lease, and reads the cluster's keys, so that the daemon's loop
//! decides on a fresh view without ever waiting on etcd itself. I/O only;
//! what the lease and the keys mean is `witness::dcs`'s.

use super::*;
use witness::etcd::{Etcd, LeaseId};
use witness::keys::{ClusterRead, MemberValue};

/// What the etcd thread knows.
#[derive(Clone, Debug, Default)]
pub(super) struct EtcdView {
    pub(super) lease: Option<LeaseId>,
    /// When the last keep-alive (or grant) etcd confirmed was sent.
    pub(super) confirmed_sent: Option<Instant>,
    /// The last read of the cluster's keys, and when it was sent.
    pub(super) read: Option<ClusterRead>,
    pub(super) read_sent: Option<Instant>,
    /// Whether the last request reached etcd.
    pub(super) reachable: bool,
    pub(super) error: Option<String>,
}

#[derive(Debug, Default)]
pub(super) struct EtcdShared {
    pub(super) view: Mutex<EtcdView>,
    /// What to publish under `members/<node>`.
    pub(super) member: Mutex<Option<MemberValue>>,
    /// Asks the thread to revoke the lease and grant another (see
    /// `drop_lease`).
    pub(super) drop: AtomicBool,
}

impl EtcdShared {
    pub(super) fn view(&self) -> EtcdView {
        self.view.lock().expect("etcd view").clone()
    }

    pub(super) fn publish(&self, m: MemberValue) {
        *self.member.lock().expect("member lock") = Some(m);
    }

    /// The node gives up its lease, and with it `leader` if that is under
    /// it: after a fence, after a `leader` create whose outcome is unknown,
    /// or when `leader` names this node while it is not active. Kept alive,
    /// that lease would keep `leader` forever (etcd renews every lease when
    /// it regains quorum), and no node could take the role.
    pub(super) fn drop_lease(&self, why: &str) {
        tracing::info!(reason = why, "giving up this node's etcd lease");
        self.drop.store(true, Ordering::SeqCst);
    }
}

/// The lease's TTL: `dead-after` in whole seconds, at least 2 (etcd's
/// shortest with its default election timeout).
pub(super) fn lease_ttl(dead_after: Duration) -> Duration {
    Duration::from_secs(dead_after.as_secs_f64().ceil().max(2.0) as u64)
}

/// Runs until `shutdown`, then revokes the lease: the node's keys (and
/// `leader`, if it holds it) go at once, so another node need not wait
/// for the TTL.
pub(super) fn etcd_thread(
    etcd: Etcd,
    me: String,
    shared: Arc<EtcdShared>,
    ttl: Duration,
    interval: Duration,
    shutdown: Arc<AtomicBool>,
) {
    let member_key = etcd.key(&format!("{}{me}", witness::keys::MEMBERS));
    let mut kept_at: Option<Instant> = None;
    let mut published: Option<(MemberValue, Instant)> = None;
    let mut reported: Option<String> = None;
    while !shutdown.load(Ordering::Relaxed) {
        let mut v = shared.view();
        let mut error = None;
        if shared.drop.swap(false, Ordering::SeqCst)
            && let Some(id) = v.lease.take()
        {
            v.confirmed_sent = None;
            if let Err(e) = etcd.revoke(id) {
                tracing::warn!(lease = id.0, error = %e, "cannot revoke the lease given up: it lapses with its TTL");
            }
            // Said at once: the daemon must not count it any more.
            *shared.view.lock().expect("etcd view") = v.clone();
        }
        // The lease: kept alive four times a TTL, granted anew once lapsed.
        match v.lease {
            None => {
                let sent = Instant::now();
                match etcd.grant(ttl) {
                    Ok(id) => {
                        v.lease = Some(id);
                        v.confirmed_sent = Some(sent);
                        kept_at = Some(sent);
                        published = None;
                    }
                    Err(e) => error = Some(format!("grant a lease: {e}")),
                }
            }
            Some(id) if kept_at.is_none_or(|t| t.elapsed() >= ttl / 4) => {
                let sent = Instant::now();
                kept_at = Some(sent);
                match etcd.keep_alive(id) {
                    Ok(Some(_)) => v.confirmed_sent = Some(sent),
                    Ok(None) => {
                        tracing::warn!(
                            lease = id.0,
                            "the node's etcd lease lapsed: granting another"
                        );
                        v.lease = None;
                        v.confirmed_sent = None;
                    }
                    Err(e) => error = Some(format!("keep the lease alive: {e}")),
                }
            }
            Some(_) => {}
        }
        // The member value, when it changed (or a new lease needs it).
        let want = shared.member.lock().expect("member lock").clone();
        if let (Some(id), Some(m)) = (v.lease, want) {
            let stale = match &published {
                Some((p, at)) => {
                    p.role != m.role
                        || p.epoch != m.epoch
                        || p.received != m.received
                        || p.replayed != m.replayed
                        || p.able != m.able
                        || p.paused != m.paused
                        || p.copy_status != m.copy_status
                        || p.source != m.source
                        || at.elapsed() >= Duration::from_secs(10)
                }
                None => true,
            };
            if stale && error.is_none() {
                match etcd.put(&member_key, &m.to_bytes(), Some(id)) {
                    Ok(()) => published = Some((m, Instant::now())),
                    Err(e) => error = Some(format!("publish {member_key}: {e}")),
                }
            }
        }
        if error.is_none() {
            let sent = Instant::now();
            match witness::keys::read(&etcd) {
                Ok(r) => {
                    v.read = Some(r);
                    v.read_sent = Some(sent);
                }
                Err(e) => error = Some(format!("read the cluster's keys: {e}")),
            }
        }
        v.reachable = error.is_none();
        if error != reported {
            match &error {
                Some(e) => tracing::warn!(error = %e, "etcd"),
                None if reported.is_some() => tracing::info!("etcd answers again"),
                None => {}
            }
            reported = error.clone();
        }
        v.error = error;
        *shared.view.lock().expect("etcd view") = v;
        std::thread::sleep(interval);
    }
    if let Some(id) = shared.view().lease
        && let Err(e) = etcd.revoke(id)
    {
        tracing::warn!(error = %e, "cannot revoke the node's etcd lease: its keys lapse with its TTL");
    }
}
