//! `logship dumpster`, the relay: SMTP in (accepted only for configured
//! recipient domains, and acknowledged only once durable in the queue),
//! LMTP out to whichever node is active (following a passive node's 451
//! hint, retrying with backoff through a failover), delivered messages kept
//! in the dumpster for `max-age` and `max-size`, and redelivery: when a node
//! greets it in an epoch it has not seen and asks for redelivery since a
//! time (a lossy failover), every message delivered since then is queued
//! again; the node drops the duplicates.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use crate::lmtp::LmtpSecret;
use crate::lmtp_client::{Client, ClientError, Outcome, SendError};
use crate::message::{message_id, with_message_id};
use crate::protocol::{self, Envelope, Handler, Limits, Mode, Reply};
use crate::queue::{Attempt, Queue, QueueStats, Queued, Redelivery};

/// The relay's database and status, in its data directory.
pub const QUEUE_FILE: &str = "relay.db";
pub const STATUS_FILE: &str = "relay.json";
/// Defaults for `max-age` and `max-size` (see the README for why).
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
pub const DEFAULT_MAX_SIZE: u64 = 64 << 20;
/// Mail delivered more recently than this is never evicted for size: a
/// lossy failover asks for what was delivered since the copy's last record
/// less 5 minutes, and a copy is normally well under a second behind.
pub const SIZE_EVICTION_FLOOR: Duration = Duration::from_secs(15 * 60);
/// Prefix of the last error of a message the node refused for good: it is
/// kept in the queue (parked) and tried again every `PARK_RETRY`.
pub const PARKED: &str = "parked: ";
pub const PARK_RETRY: Duration = Duration::from_secs(3600);
/// A message is parked after this many attempts in a row failed because
/// of it (`queue::Attempt::strike`), as Exchange moves a message that
/// crashed its transport twice to the poison queue: one bad message must
/// never hold up the rest or crash-loop the relay.
pub const POISON_STRIKES: u32 = 3;
/// Names the queued message being delivered, so that a relay that dies
/// during a delivery counts a strike against it when it starts again.
pub const INFLIGHT_FILE: &str = "relay.inflight";
/// How often an idle relay greets the active again (see `run`).
const IDLE_PROBE: Duration = Duration::from_secs(5);
/// Longest wait between attempts of a queued message.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct RelayConfig {
    pub smtp: SocketAddr,
    pub data_dir: PathBuf,
    pub accepted_domains: Vec<String>,
    /// The nodes' names and LMTP addresses, in the order to try them.
    pub nodes: Vec<(String, String)>,
    pub max_age: Duration,
    pub max_size: u64,
    pub limits: Limits,
    pub hostname: String,
    /// The proof a node asks of the relay (from the cluster key); `None`
    /// without a key.
    pub lmtp_secret: Option<LmtpSecret>,
}

/// What `relay.json` holds.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct RelayStatus {
    /// The file's format version (FORMAT.md, "State files").
    #[serde(default = "shipper::FormatVersion::first")]
    pub version: shipper::FormatVersion,
    pub smtp: String,
    pub queue_length: u64,
    /// Of the queue: refused by the node for good, kept, retried hourly.
    #[serde(default)]
    pub parked: u64,
    pub dumpster_messages: u64,
    pub dumpster_bytes: u64,
    pub dumpster_oldest: Option<String>,
    /// The node the relay delivers to now.
    pub delivering_to: Option<String>,
    pub last_redelivery: Option<serde_json::Value>,
    pub accepted: u64,
    pub pid: u32,
    pub updated_us: u64,
}

/// The most `relay.json` may hold.
pub const MAX_STATUS_FILE: usize = 64 * 1024;

impl RelayStatus {
    /// Reads `relay.json` as `logship status` does.
    pub fn parse(bytes: &[u8]) -> Result<RelayStatus, shipper::state_file::StateFileError> {
        shipper::state_file::parse(bytes, MAX_STATUS_FILE)
    }
}

pub use shipper::types::now_us;

fn rfc3339(us: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_micros(us)).to_string()
}

/// Wakes the delivery loop when a message is queued.
#[derive(Debug, Default)]
struct Wake {
    flag: Mutex<bool>,
    cv: Condvar,
}

impl Wake {
    fn wake(&self) {
        *self.flag.lock().expect("wake lock") = true;
        self.cv.notify_all();
    }

    fn wait(&self, d: Duration) {
        let mut f = self.flag.lock().expect("wake lock");
        if !*f {
            f = self.cv.wait_timeout(f, d).expect("wake lock").0;
        }
        *f = false;
    }
}

struct Smtp {
    queue: Arc<Queue>,
    domains: Vec<String>,
    hostname: String,
    wake: Arc<Wake>,
    seq: AtomicU64,
    /// Random for each run of the relay (in the Message-IDs it assigns).
    run: u64,
    accepted: Arc<AtomicU64>,
}

impl Handler for Arc<Smtp> {
    fn postmaster_domain(&self) -> Option<String> {
        self.domains.first().cloned()
    }

    fn mail(&self, _from: &str) -> Option<Reply> {
        None
    }

    fn rcpt(&self, to: &str) -> Option<Reply> {
        let ok = to
            .rsplit_once('@')
            .is_some_and(|(_, d)| self.domains.iter().any(|x| x.eq_ignore_ascii_case(d)));
        (!ok).then(|| {
            Reply::new(
                550,
                [5, 7, 1],
                format!("{to}: relaying denied (not an accepted domain)"),
            )
        })
    }

    async fn data(&self, env: Envelope, data: Vec<u8>) -> Vec<Reply> {
        let now = now_us();
        let (id, raw) = match message_id(&data) {
            Some(id) => (id, data),
            None => {
                // Time, a random id of this run and a counter: unique even
                // across restarts and a clock stepped back.
                let id = format!(
                    "{now}.{:x}.{}@{}",
                    self.run,
                    self.seq.fetch_add(1, Ordering::Relaxed),
                    self.hostname
                );
                let raw = with_message_id(&data, &id);
                (id, raw)
            }
        };
        let queue = self.queue.clone();
        let rcpts = env.rcpts.clone();
        let from = env.from.clone();
        let r = tokio::task::spawn_blocking(move || {
            let envid = delivery_id(&from, &raw);
            queue
                .accept(&envid, &id, &from, &rcpts, &raw, now)
                .map(|_| envid)
        })
        .await;
        match r {
            Ok(Ok(envid)) => {
                self.accepted.fetch_add(1, Ordering::Relaxed);
                self.wake.wake();
                // Never the client's Message-ID: a reply is ours, one line.
                vec![Reply::new(250, [2, 0, 0], format!("queued as {envid}"))]
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot queue a message");
                vec![Reply::new(
                    451,
                    [4, 3, 0],
                    "cannot queue the message now; try again",
                )]
            }
            Err(e) => vec![Reply::new(451, [4, 3, 0], format!("internal error: {e}"))],
        }
    }
}

/// The identity of an accepted message, which the node deduplicates on
/// (with the recipient): SHA-256 of the envelope sender and the message as
/// queued, in hex. Two different messages never share one, however their
/// Message-IDs compare; the same message sent again (same sender, same
/// bytes: a client that did not see the relay's 250) has the same one, and
/// so has every redelivery of it from the dumpster.
pub fn delivery_id(sender: &str, raw: &[u8]) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"logship delivery v1\0");
    h.update((sender.len() as u64).to_le_bytes());
    h.update(sender.as_bytes());
    h.update(raw);
    crate::message::hex(&h.finalize())
}

/// Parses a node's greeting: `... epoch=N redeliver-since=US`.
fn greeting_fields(g: &str) -> (Option<u64>, Option<u64>) {
    let field = |k: &str| {
        g.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .and_then(|v| v.parse().ok())
    };
    (field("epoch="), field("redeliver-since="))
}

/// A passive node's hint: `active=host:port`.
fn hint(reply: &Reply) -> Option<String> {
    reply
        .text
        .split_whitespace()
        .find_map(|w| w.strip_prefix("active="))
        .map(String::from)
}

fn backoff(attempts: u32) -> Duration {
    (Duration::from_millis(100) * 2u32.saturating_pow(attempts.min(8))).min(MAX_BACKOFF)
}

struct Deliverer {
    cfg: RelayConfig,
    queue: Arc<Queue>,
    rt: tokio::runtime::Runtime,
    client: Option<(String, Client)>,
    /// The node believed active.
    target: Option<String>,
}

impl Deliverer {
    /// Connects to the active node (the last one known, then each in
    /// turn); notes its epoch and redelivers when it asks.
    fn connect(&mut self) -> Option<()> {
        if self.client.is_some() {
            return Some(());
        }
        let mut order: Vec<String> = self.target.iter().cloned().collect();
        order.extend(self.cfg.nodes.iter().map(|(_, a)| a.clone()));
        for addr in order {
            let secret = self.cfg.lmtp_secret.as_ref().map(|s| s.bytes());
            let c = self.rt.block_on(Client::connect_with(
                &addr,
                Duration::from_secs(2),
                "LHLO",
                secret,
            ));
            let c = match c {
                Ok(c) => c,
                Err(e @ ClientError::Auth { .. }) => {
                    tracing::error!(error = %e, "the node does not take mail from this relay");
                    continue;
                }
                Err(_) => continue,
            };
            let node = c
                .greeting
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_string();
            self.learn(&node, &c.greeting);
            self.target = Some(addr.clone());
            self.client = Some((addr, c));
            return Some(());
        }
        None
    }

    /// Notes the epoch a node announces (greeting or MAIL reply); the
    /// first time it is seen with a redelivery time, queues again what was
    /// delivered since then.
    fn learn(&self, node: &str, text: &str) {
        let (Some(e), since) = greeting_fields(text) else {
            return;
        };
        let reason = format!("node {node} became active in epoch {e}");
        match self.queue.note_epoch(e, node, since, &reason, now_us()) {
            Ok(Some(r)) => tracing::warn!(
                node = %node, epoch = e, since = %rfc3339(r.since_us), requeued = r.requeued,
                "redelivering what was delivered since before the failover"
            ),
            Ok(None) => {}
            // Not noted either: the next greeting tries again.
            Err(err) => {
                tracing::error!(error = %err, "cannot note the node's epoch and start its redelivery")
            }
        }
    }

    /// Delivers `m` over the open client; what to record.
    fn deliver(&mut self, m: &Queued) -> Attempt {
        let now = now_us();
        let retry = |attempts: u32| now + backoff(attempts).as_micros() as u64;
        let Some((addr, client)) = self.client.as_mut() else {
            return Attempt {
                pending: m.pending.clone(),
                error: Some("no node reachable".into()),
                next_us: retry(m.attempts),
                ..Default::default()
            };
        };
        let addr = addr.clone();
        let node = client
            .greeting
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_string();
        let r = self
            .rt
            .block_on(client.send(&addr, &m.sender, &m.pending, Some(&m.envid), &m.raw));
        let r = r.map(|(outcome, mail_text)| {
            self.learn(&node, &mail_text);
            outcome
        });
        match r {
            Err(SendError { error, body_sent }) => {
                self.client = None;
                self.target = None;
                // A reply that is not one, or a connection lost once the
                // message was on its way, may be this message's doing.
                let strike = body_sent || matches!(error, ClientError::Protocol { .. });
                failed(m, error.to_string(), strike, now)
            }
            Ok(Outcome::Refused(reply)) => {
                if reply.code / 100 == 4 {
                    // A node that cannot take mail now (passive, fenced):
                    // reconnect, so that the next greeting (and its epoch)
                    // is read afresh, to the hinted node if there is one.
                    self.target = hint(&reply);
                    self.client = None;
                }
                let error = Some(format!("{} {}", reply.code, reply.text));
                if reply.code / 100 == 5 {
                    // Accepted here, refused there: a configuration that
                    // differs, most likely. Kept, never dropped.
                    tracing::error!(message_id = %m.message_id, reply = %reply.text, "message refused by the node; parked, tried again every hour until the cause is fixed");
                    return parked(m, format!("{} {}", reply.code, reply.text), now);
                }
                if reply.code / 100 == 4 && self.target.is_some() && m.attempts < 2 {
                    // Sent to the wrong node: try the hinted one at once
                    // (once: two nodes naming each other for a moment must
                    // not make a tight loop).
                    return Attempt {
                        pending: m.pending.clone(),
                        error,
                        next_us: now,
                        ..Default::default()
                    };
                }
                Attempt {
                    pending: m.pending.clone(),
                    error,
                    next_us: retry(m.attempts),
                    ..Default::default()
                }
            }
            Ok(Outcome::PerRecipient(replies)) => {
                let mut a = Attempt {
                    next_us: retry(m.attempts),
                    ..Default::default()
                };
                let (mut parked, mut deferred) = (false, false);
                for (rcpt, reply) in m.pending.iter().zip(&replies) {
                    match reply.code / 100 {
                        2 if reply.text.contains("duplicate") => a.duplicates += 1,
                        2 => a.stored += 1,
                        5 => {
                            tracing::error!(message_id = %m.message_id, rcpt = %rcpt, reply = %reply.text, "recipient refused by the node; parked, tried again every hour until the cause is fixed");
                            parked = true;
                            a.error =
                                Some(format!("{PARKED}{rcpt}: {} {}", reply.code, reply.text));
                            a.pending.push(rcpt.clone());
                        }
                        _ => {
                            deferred = true;
                            if reply.code / 100 == 4 {
                                self.target = hint(reply);
                                self.client = None;
                                if self.target.is_some() && m.attempts < 2 {
                                    a.next_us = now;
                                }
                            }
                            a.error = Some(format!("{rcpt}: {} {}", reply.code, reply.text));
                            a.pending.push(rcpt.clone());
                        }
                    }
                }
                if parked && !deferred {
                    // Only parked recipients left: the hourly retry.
                    a.next_us = now + PARK_RETRY.as_micros() as u64;
                }
                a
            }
        }
    }
}

/// The attempt that parks `m`: kept, with its reason, tried again every
/// `PARK_RETRY`.
fn parked(m: &Queued, reason: String, now: u64) -> Attempt {
    Attempt {
        pending: m.pending.clone(),
        error: Some(format!("{PARKED}{reason}")),
        next_us: now + PARK_RETRY.as_micros() as u64,
        ..Default::default()
    }
}

/// The attempt that records a failure of `m`: retried with backoff, or,
/// when it is the message's `POISON_STRIKES`th strike in a row, parked with
/// its reason.
fn failed(m: &Queued, error: String, strike: bool, now: u64) -> Attempt {
    let strikes = if strike { m.strikes + 1 } else { 0 };
    if strikes >= POISON_STRIKES {
        tracing::error!(
            envid = %m.envid, message_id = %m.message_id, error = %error, strikes,
            "message parked: its deliveries keep failing in a way it may cause; tried again every hour"
        );
        return Attempt {
            strike,
            ..parked(
                m,
                format!("{strikes} attempts in a row failed: {error}"),
                now,
            )
        };
    }
    Attempt {
        pending: m.pending.clone(),
        error: Some(error),
        next_us: now + backoff(m.attempts).as_micros() as u64,
        strike,
        ..Default::default()
    }
}

/// The text of a caught panic.
fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// `relay.inflight`: the row id of the message being delivered (8 bytes,
/// little-endian; 0 or a shorter file: none). Written without fsync: it
/// matters only when the relay *process* dies, and then the page cache
/// still has it.
#[derive(Debug)]
struct Inflight {
    file: Option<std::fs::File>,
}

impl Inflight {
    /// Opens the marker; returns the message a previous run was delivering
    /// when it stopped, if any.
    fn open(dir: &std::path::Path) -> (Inflight, Option<i64>) {
        use std::io::Read;
        let path = dir.join(INFLIGHT_FILE);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path);
        let mut file = match file {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot keep the in-flight marker: a message that crashes the relay will not be parked");
                return (Inflight { file: None }, None);
            }
        };
        let mut b = [0u8; 8];
        let was = file
            .read_exact(&mut b)
            .ok()
            .map(|()| i64::from_le_bytes(b))
            .filter(|id| *id > 0);
        let mut me = Inflight { file: Some(file) };
        me.set(0);
        (me, was)
    }

    fn set(&mut self, id: i64) {
        use std::os::unix::fs::FileExt;
        if let Some(f) = &self.file
            && let Err(e) = f.write_all_at(&id.to_le_bytes(), 0)
        {
            tracing::warn!(error = %e, "cannot write the in-flight marker");
            self.file = None;
        }
    }
}

/// Runs the relay until `shutdown` is set.
pub fn run(cfg: RelayConfig, shutdown: &AtomicBool) -> std::io::Result<()> {
    std::fs::create_dir_all(&cfg.data_dir)?;
    let queue = Arc::new(Queue::open(&cfg.data_dir.join(QUEUE_FILE))?);
    let wake = Arc::new(Wake::default());
    let accepted = Arc::new(AtomicU64::new(0));
    let listener = std::net::TcpListener::bind(cfg.smtp)?;
    listener.set_nonblocking(true)?;
    let smtp = Arc::new(Smtp {
        queue: queue.clone(),
        domains: cfg.accepted_domains.clone(),
        hostname: cfg.hostname.clone(),
        wake: wake.clone(),
        seq: AtomicU64::new(0),
        run: {
            use std::io::Read;
            let mut b = [0u8; 8];
            std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
            u64::from_le_bytes(b) >> 16
        },
        accepted: accepted.clone(),
    });
    {
        let (limits, hostname) = (cfg.limits.clone(), cfg.hostname.clone());
        std::thread::Builder::new()
            .name("logship-smtp".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("start the SMTP runtime");
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)
                        .expect("a bound listener converts");
                    let sessions = limits.sessions();
                    loop {
                        let Ok((stream, peer)) = listener.accept().await else {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        };
                        protocol::spawn_session(
                            &sessions,
                            stream,
                            peer,
                            Mode::Smtp,
                            hostname.clone(),
                            limits.clone(),
                            smtp.clone(),
                        );
                    }
                });
            })?;
    }
    tracing::info!(smtp = %cfg.smtp, domains = ?cfg.accepted_domains, "relay listening");
    let (mut inflight, was) = Inflight::open(&cfg.data_dir);
    if let Some(id) = was {
        let why = "the relay stopped while delivering it";
        let until = now_us() + PARK_RETRY.as_micros() as u64;
        match queue.strike(id, why, POISON_STRIKES, until) {
            Ok(Some((envid, n))) => tracing::warn!(
                envid = %envid, strikes = n,
                "the relay stopped while delivering this message; counted against it (parked at {POISON_STRIKES})"
            ),
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, "cannot count a strike against the message in flight")
            }
        }
    }
    // The boundary of a failure: one delivery attempt (`deliver_due`
    // catches its panic and counts it against the message); anything else
    // that panics restarts the delivery loop. SMTP intake runs on its own
    // thread and runtime and goes on either way.
    loop {
        let turn = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            deliver_loop(&cfg, &queue, &wake, &accepted, &mut inflight, shutdown)
        }));
        match turn {
            Ok(r) => return r,
            Err(p) => {
                tracing::error!(
                    panic = %panic_text(p.as_ref()),
                    "the delivery loop panicked; it starts again in 1 s (SMTP intake goes on)"
                );
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

/// Delivers what is due until `shutdown` is set.
fn deliver_loop(
    cfg: &RelayConfig,
    queue: &Arc<Queue>,
    wake: &Wake,
    accepted: &AtomicU64,
    inflight: &mut Inflight,
    shutdown: &AtomicBool,
) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut d = Deliverer {
        cfg: cfg.clone(),
        queue: queue.clone(),
        rt,
        client: None,
        target: None,
    };
    // The redelivery whose end is still to be reported.
    let mut reported: Option<i64> = queue.last_redelivery().ok().flatten().map(|r| r.id);
    let mut evicted_at = Instant::now() - Duration::from_secs(60);
    let mut status_at = Instant::now() - Duration::from_secs(60);
    let mut probed_at = Instant::now();
    while !shutdown.load(Ordering::Relaxed) {
        if evicted_at.elapsed() >= Duration::from_secs(10) {
            evicted_at = Instant::now();
            match queue.evict(
                now_us(),
                cfg.max_age.as_micros() as u64,
                cfg.max_size,
                SIZE_EVICTION_FLOOR.as_micros() as u64,
            ) {
                Ok(n) if n > 0 => tracing::info!(evicted = n, "dumpster trimmed"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot trim the dumpster"),
            }
        }
        if status_at.elapsed() >= Duration::from_millis(500) {
            status_at = Instant::now();
            if let Ok(Some(r)) = queue.last_redelivery()
                && reported != Some(r.id)
                && queue.redelivery_pending(r.id).is_ok_and(|n| n == 0)
            {
                reported = Some(r.id);
                tracing::info!(
                    reason = %r.reason, requeued = r.requeued, stored = r.stored, duplicates = r.duplicates,
                    "redelivery done: re-delivered, newly stored, dropped as duplicates"
                );
            }
            write_status(
                cfg,
                queue,
                d.target.clone(),
                accepted.load(Ordering::Relaxed),
            );
        }
        let due = match queue.due(now_us(), 64) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the queue");
                wake.wait(Duration::from_secs(1));
                continue;
            }
        };
        if due.is_empty() {
            if probed_at.elapsed() >= IDLE_PROBE {
                // Idle, yet a failover may have happened: greet the active
                // afresh, so that its epoch (and any redelivery it asks
                // for) is heard now rather than with the next message.
                probed_at = Instant::now();
                if let Some((_, c)) = d.client.take() {
                    d.rt.block_on(c.quit());
                }
                let _ = d.connect();
            }
            let next = queue
                .next_due_us()
                .ok()
                .flatten()
                .map(|t| Duration::from_micros(t.saturating_sub(now_us())))
                .unwrap_or(Duration::from_secs(1));
            wake.wait(next.clamp(Duration::from_millis(1), Duration::from_millis(500)));
            continue;
        }
        probed_at = Instant::now();
        let connected = d.connect().is_some();
        for m in &due {
            inflight.set(m.id);
            let a = deliver_caught(&mut d, m);
            if let Err(e) = queue.attempted(m, &a, now_us()) {
                tracing::error!(error = %e, "cannot record a delivery");
            }
            inflight.set(0);
            if !connected || d.client.is_none() {
                break;
            }
        }
        if !connected {
            // Nobody answers: wait a little before trying the nodes again.
            wake.wait(Duration::from_millis(100));
        }
    }
    write_status(
        cfg,
        queue,
        d.target.clone(),
        accepted.load(Ordering::Relaxed),
    );
    Ok(())
}

/// One delivery attempt of `m`, a panic in it caught and counted against
/// the message (the connection, in an unknown state, is dropped).
fn deliver_caught(d: &mut Deliverer, m: &Queued) -> Attempt {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| d.deliver(m))) {
        Ok(a) => a,
        Err(p) => {
            d.client = None;
            d.target = None;
            let text = panic_text(p.as_ref());
            tracing::error!(envid = %m.envid, panic = %text, "a delivery panicked");
            failed(m, format!("the delivery panicked: {text}"), true, now_us())
        }
    }
}

fn write_status(cfg: &RelayConfig, queue: &Queue, target: Option<String>, accepted: u64) {
    let stats = queue.stats().unwrap_or_else(|_| QueueStats::default());
    let last: Option<Redelivery> = queue.last_redelivery().ok().flatten();
    let st = RelayStatus {
        version: shipper::FormatVersion::CURRENT,
        smtp: cfg.smtp.to_string(),
        queue_length: stats.queue_length,
        parked: stats.parked,
        dumpster_messages: stats.dumpster_messages,
        dumpster_bytes: stats.dumpster_bytes,
        dumpster_oldest: stats.dumpster_oldest_us.map(rfc3339),
        delivering_to: target,
        last_redelivery: last.map(|r| {
            serde_json::json!({
                "at": rfc3339(r.at_us),
                "since": rfc3339(r.since_us),
                "reason": r.reason,
                "requeued": r.requeued,
                "stored": r.stored,
                "duplicates": r.duplicates,
            })
        }),
        accepted,
        pid: std::process::id(),
        updated_us: now_us(),
    };
    let path = cfg.data_dir.join(STATUS_FILE);
    let json = serde_json::to_vec_pretty(&st).expect("status serialises");
    if let Err(e) = shipper::share::write_atomic(&path, &json) {
        tracing::warn!(path = %path.display(), error = %e, "cannot write the relay status");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greetings_and_hints_parse() {
        assert_eq!(
            greeting_fields("beta LMTP logship epoch=7 redeliver-since=123"),
            (Some(7), Some(123))
        );
        assert_eq!(greeting_fields("dovecot ready"), (None, None));
        let r = Reply::new(
            451,
            [4, 3, 2],
            "node beta is not active; active=127.0.0.1:2401",
        );
        assert_eq!(hint(&r).as_deref(), Some("127.0.0.1:2401"));
        assert!(backoff(0) < backoff(3) && backoff(30) == MAX_BACKOFF);
    }

    #[test]
    fn delivery_ids_tell_messages_apart_by_sender_and_bytes() {
        let a = delivery_id("s@x", b"Message-ID: <m@x>\r\n\r\nbody\r\n");
        assert_eq!(a.len(), 64);
        assert_eq!(a, delivery_id("s@x", b"Message-ID: <m@x>\r\n\r\nbody\r\n"));
        assert_ne!(a, delivery_id("t@x", b"Message-ID: <m@x>\r\n\r\nbody\r\n"));
        assert_ne!(a, delivery_id("s@x", b"Message-ID: <m@x>\r\n\r\nbody!\r\n"));
        // The sender's length is hashed: no sliding of bytes between the two.
        assert_ne!(delivery_id("ab", b"c"), delivery_id("a", b"bc"));
    }

    #[test]
    fn the_third_strike_in_a_row_parks_and_other_failures_reset() {
        let m = Queued {
            id: 1,
            envid: "e".into(),
            message_id: "m".into(),
            sender: "s".into(),
            pending: vec!["a@x".into()],
            raw: vec![],
            attempts: 5,
            redelivery: None,
            strikes: 1,
        };
        let a = failed(&m, "bad reply".into(), true, 0);
        assert!(a.strike && !a.error.as_deref().unwrap().starts_with(PARKED));
        let m2 = Queued {
            strikes: 2,
            ..m.clone()
        };
        let a = failed(&m2, "bad reply".into(), true, 0);
        assert!(
            a.error
                .as_deref()
                .unwrap()
                .starts_with("parked: 3 attempts in a row failed")
        );
        assert_eq!(a.next_us, PARK_RETRY.as_micros() as u64);
        // A node that is down is not the message's fault.
        let a = failed(&m2, "connection refused".into(), false, 0);
        assert!(!a.strike && !a.error.as_deref().unwrap().starts_with(PARKED));
    }

    proptest::proptest! {
        /// Whatever a node says in its greeting or its 451, reading the
        /// epoch, the redelivery time and the hint never panics.
        #[test]
        fn greetings_and_hints_are_read_from_any_text(t in ".{0,80}") {
            let _ = greeting_fields(&t);
            let _ = hint(&Reply::new(451, [4, 3, 2], t));
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]
        /// Whatever `relay.json` holds, `logship status` reads a status or a
        /// reason; never a panic.
        #[test]
        fn any_bytes_in_relay_json_are_read_or_refused(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = RelayStatus::parse(&bytes);
        }
    }

    #[test]
    fn relay_json_reads_back_and_a_newer_one_is_refused() {
        let st = RelayStatus {
            version: shipper::FormatVersion::CURRENT,
            smtp: "127.0.0.1:25".into(),
            queue_length: 3,
            ..RelayStatus::default()
        };
        let back = RelayStatus::parse(&serde_json::to_vec(&st).unwrap()).unwrap();
        assert_eq!(back.queue_length, 3);
        let e = RelayStatus::parse(br#"{"version": 2, "smtp": "x"}"#).unwrap_err();
        assert!(e.to_string().contains("format version 2"), "{e}");
    }
}
