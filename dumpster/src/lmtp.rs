//! The node's LMTP endpoint: while the node is active, each message is one
//! store transaction (so concurrent deliveries share fsyncs through group
//! commit) and each recipient is answered only once the message is durable.
//! While passive, it answers 451 and names the active node's LMTP address,
//! which the relay follows.
//!
//! With a cluster key, only a relay that proves it holds the key
//! (CRAM-MD5 under `LmtpSecret`) may hand over mail: a message injected
//! past the relay would bypass the dumpster and its redelivery. The relay's
//! identity of each message (MAIL's ENVID) is what duplicates are dropped
//! by; a message without one is stored as it comes.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use shipper::Store;
use tokio::net::TcpListener;

use crate::mailbox::{self, Outcome};
use crate::message::message_id;
use crate::protocol::{self, Envelope, Handler, Limits, Mode, Reply};

/// The shared secret of CRAM-MD5 between the relay and a node: derived from
/// the cluster key (HMAC-SHA256 under a fixed label, in hex), so that the
/// key itself is never used with MD5 and never crosses the wire. Prints as
/// `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct LmtpSecret(Vec<u8>);

impl LmtpSecret {
    pub fn from_cluster_key(key: &[u8]) -> LmtpSecret {
        use hmac::{KeyInit, Mac};
        let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key)
            .expect("HMAC takes a key of any length");
        mac.update(b"logship lmtp cram-md5 v1");
        LmtpSecret(crate::message::hex(&mac.finalize().into_bytes()).into_bytes())
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for LmtpSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LmtpSecret(***)")
    }
}

/// What the node tells its LMTP endpoint.
#[derive(Debug, Default)]
pub struct NodeMail {
    /// The store while this node is active.
    pub store: Mutex<Option<Arc<Store>>>,
    /// Where the active node takes mail, when it is not this one.
    pub active_hint: Mutex<Option<String>>,
    /// Recipient domains accepted (empty: any).
    pub domains: Vec<String>,
    /// This node's name, for replies.
    pub node: String,
    /// What a relay must prove it holds (`None`: no cluster key, anyone
    /// who reaches the port may deliver; status warns).
    pub secret: Option<LmtpSecret>,
    /// The epoch this node is active in (0: not active), and the time from
    /// which it asks the relay to redeliver (µs; after a lossy failover).
    pub epoch: std::sync::atomic::AtomicU64,
    pub redeliver_since: Mutex<Option<u64>>,
    /// Deliveries since the node started: recipients stored, and dropped
    /// as duplicates.
    pub stored: std::sync::atomic::AtomicU64,
    pub duplicates: std::sync::atomic::AtomicU64,
}

impl NodeMail {
    /// The store while this node takes mail (active).
    pub fn store(&self) -> Option<Arc<Store>> {
        self.store.lock().expect("store lock").clone()
    }

    /// The reply of a node that cannot take mail now.
    pub fn passive_reply(&self) -> Reply {
        let hint = self.active_hint.lock().expect("hint lock").clone();
        Reply::new(
            451,
            [4, 3, 2],
            match hint {
                Some(a) => format!("node {} is not active; active={a}", self.node),
                None => format!(
                    "node {} is not active; the active node is unknown",
                    self.node
                ),
            },
        )
    }
}

fn domain_ok(domains: &[String], addr: &str) -> bool {
    domains.is_empty()
        || addr
            .rsplit_once('@')
            .is_some_and(|(_, d)| domains.iter().any(|x| x.eq_ignore_ascii_case(d)))
}

impl Handler for Arc<NodeMail> {
    fn banner(&self) -> String {
        use std::sync::atomic::Ordering;
        let epoch = self.epoch.load(Ordering::SeqCst);
        if epoch == 0 || self.store().is_none() {
            return String::new();
        }
        match *self.redeliver_since.lock().expect("since lock") {
            Some(since) => format!(" epoch={epoch} redeliver-since={since}"),
            None => format!(" epoch={epoch}"),
        }
    }

    fn auth_secret(&self) -> Option<Vec<u8>> {
        self.secret.as_ref().map(|s| s.bytes().to_vec())
    }

    fn mail(&self, _from: &str) -> Option<Reply> {
        if self.store().is_none() {
            return Some(self.passive_reply());
        }
        None
    }

    fn rcpt(&self, to: &str) -> Option<Reply> {
        if !domain_ok(&self.domains, to) {
            return Some(Reply::new(
                550,
                [5, 1, 2],
                format!("{to}: not a domain of this store"),
            ));
        }
        None
    }

    async fn data(&self, env: Envelope, data: Vec<u8>) -> Vec<Reply> {
        let n = env.rcpts.len();
        let Some(store) = self.store() else {
            return vec![self.passive_reply(); n];
        };
        let Some(id) = message_id(&data) else {
            return vec![
                Reply::new(
                    550,
                    [5, 6, 0],
                    "no Message-ID: submit through the relay, which assigns one"
                );
                n
            ];
        };
        // Each recipient's row holds the whole message: recipients go in
        // groups whose transaction stays well within a record's limit.
        let per_group =
            (shipper::store::DEFAULT_MAX_TRANSACTION_BYTES / 2 / data.len().max(1)).max(1);
        let data = Arc::new(data);
        let mut results = Vec::with_capacity(n);
        for group in env.rcpts.chunks(per_group) {
            let delivery = env.envid.as_deref();
            match mailbox::deliver(&store, &env.from, group, &id, delivery, data.clone()).await {
                Ok(outcomes) => results.extend(outcomes.into_iter().map(Ok)),
                Err(e) => {
                    tracing::warn!(error = %e, message_id = %id, "delivery not stored");
                    let e = e.to_string();
                    results.extend(group.iter().map(|_| Err(e.clone())));
                }
            }
        }
        results
            .into_iter()
            .zip(&env.rcpts)
            .map(|(o, r)| match o {
                Ok(o) => self.reply(o, r),
                Err(e) => Reply::new(451, [4, 3, 0], format!("not stored, try again: {e}")),
            })
            .collect()
    }
}

impl NodeMail {
    /// The reply for recipient `r`: never an echo of the message's own
    /// text (its Message-ID may hold anything).
    fn reply(&self, o: Outcome, r: &str) -> Reply {
        match o {
            Outcome::Stored => {
                self.stored
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Reply::new(250, [2, 1, 5], format!("<{r}> stored"))
            }
            Outcome::Duplicate => {
                self.duplicates
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Reply::new(
                    250,
                    [2, 1, 5],
                    format!("<{r}> already has this delivery: duplicate dropped"),
                )
            }
            Outcome::MessageIdTaken => Reply::new(
                550,
                [5, 7, 0],
                format!(
                    "<{r}> already has another message with this Message-ID, and this mailbox database (made before deliveries had identities of their own) keeps one per Message-ID"
                ),
            ),
        }
    }
}

/// Accepts LMTP connections on `listener` for ever.
pub async fn run(listener: TcpListener, mail: Arc<NodeMail>, limits: Limits, hostname: String) {
    let sessions = limits.sessions();
    loop {
        let (stream, peer): (_, SocketAddr) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "LMTP accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        tracing::trace!(peer = %peer, "LMTP connection");
        protocol::spawn_session(
            &sessions,
            stream,
            peer,
            Mode::Lmtp,
            hostname.clone(),
            limits.clone(),
            mail.clone(),
        );
    }
}
