//! Block mode (Exchange 2010's continuous replication block mode): the
//! active's open segment, sent to its copies as it becomes durable.
//!
//! This module owns three things:
//! - `Feed`, the active's durable open segment as the log writer publishes
//!   it after each `fdatasync` (and the previous segment with its trailer,
//!   so that a copy that was behind at a seal gets its end);
//! - the wire: the handshake, its authentication with the cluster key, the
//!   encryption of the session, and the messages (FORMAT.md, "Block mode
//!   stream");
//! - `serve`, the active's side of one copy's connection.
//!
//! The copy's side (receiving, making durable, acknowledging) is in the
//! `replayer` crate. Bytes travel at the offsets they have in the segment,
//! so the copy's received file is a byte-for-byte prefix of the segment.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use ring::{aead, hkdf, hmac, rand::SecureRandom};

use crate::format::{SEGMENT_SIZE, TRAILER_OFFSET, TRAILER_SIZE};
use crate::{DatabaseId, Generation, Lsn};

/// The stream's magic and version (FORMAT.md, "Block mode stream").
pub const MAGIC: [u8; 8] = *b"LSBLOCK\0";
pub const VERSION: u16 = 1;
/// The largest data a message carries.
pub const MAX_CHUNK: usize = 256 * 1024;
/// The largest message body accepted (a chunk and its fields, and the tag).
pub const MAX_MESSAGE: usize = MAX_CHUNK + 64;
/// The longest node name in a hello.
pub const MAX_NAME: usize = 64;
/// An idle active says where it is this often, so that a copy knows the
/// stream is alive and how far behind it is.
pub const KEEPALIVE: Duration = Duration::from_secs(1);

/// Failures of the block-mode stream, each naming what it was about.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("block-mode stream with {peer}: {op}: {source}")]
    Io {
        peer: String,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("block-mode stream with {peer}: not a logship block-mode stream (bad magic)")]
    BadMagic { peer: String },
    #[error(
        "block-mode stream with {peer}: version {found} is not one this build reads ({VERSION})"
    )]
    Version { peer: String, found: u16 },
    #[error("block-mode stream with {peer}: the peer's cluster key does not match ours")]
    BadKey { peer: String },
    #[error(
        "block-mode stream with {peer}: one side has a cluster key and the other none; set the same `key-file` on both"
    )]
    KeyMismatch { peer: String },
    #[error("block-mode stream with {peer}: a message of {len} bytes is over the limit of {max}")]
    TooLong {
        peer: String,
        len: usize,
        max: usize,
    },
    #[error(
        "block-mode stream with {peer}: a message failed authentication (tampered with, or out of order)"
    )]
    Tampered { peer: String },
    #[error("block-mode stream with {peer}: malformed {what}")]
    Malformed { peer: String, what: &'static str },
    #[error("block-mode stream with {peer}: declined: {why}")]
    Declined { peer: String, why: String },
}

pub type BlockResult<T> = std::result::Result<T, BlockError>;

// ---- the feed ----

/// The previous segment, kept after its seal for a copy that had not
/// received its end.
#[derive(Debug)]
struct SealedTail {
    generation: Generation,
    bytes: Vec<u8>,
    lsn: Lsn,
    trailer: Vec<u8>,
}

#[derive(Debug, Default)]
struct FeedState {
    version: u64,
    /// The current segment (none before the writer starts).
    generation: Option<Generation>,
    /// Its durable prefix, header included.
    bytes: Vec<u8>,
    /// The last complete record made durable.
    lsn: Lsn,
    prev: Option<SealedTail>,
    /// The best durable position a copy reported.
    acked: Option<(Generation, u32, Lsn)>,
    closed: bool,
    /// Synchronous commit gone alone: from which record, and why.
    alone: Option<(Lsn, String)>,
}

/// Records that the active goes on alone from a record, and why; returns
/// once that is durable where a failover will look.
pub type GoAlone = Box<dyn Fn(Lsn, &str) -> Result<(), String> + Send + Sync>;

/// Synchronous commit (`commit = "remote"`): how long to wait for the
/// copy, and how to record, where a failover will look, that the active
/// goes on without it. The hook returns once that record is durable.
pub struct Synchronous {
    pub timeout: Duration,
    pub go_alone: GoAlone,
}

impl std::fmt::Debug for Synchronous {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Synchronous")
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Where synchronous commit stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncStatus {
    /// Not asked for.
    Off,
    /// Every acknowledgement waits for the copy.
    Synchronous,
    /// Acknowledging without the copy's confirmation from this record on,
    /// and why; synchronous again once the copy has caught up.
    Alone { from: Lsn, why: String },
}

/// The active's durable open segment, published by its log writer and read
/// by the block-mode senders. Cheap: a copy of each durable byte, once.
#[derive(Debug, Default)]
pub struct Feed {
    state: Mutex<FeedState>,
    changed: Condvar,
    sync: Option<Synchronous>,
}

/// What a sender sends next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Bytes at `offset` of `generation`; `lsn` is the last complete record
    /// durable once they are (0 when more bytes follow at once).
    Data {
        generation: Generation,
        offset: u32,
        lsn: Lsn,
        bytes: Vec<u8>,
    },
    /// `generation` is sealed with this trailer.
    Sealed {
        generation: Generation,
        trailer: Vec<u8>,
    },
    /// Nothing new since `version`.
    Idle {
        generation: Generation,
        offset: u32,
        lsn: Lsn,
    },
    /// The feed is closed: the store stopped.
    Closed,
}

impl Feed {
    pub fn new() -> Feed {
        Feed::default()
    }

    /// A feed whose store acknowledges a record only once a copy reports it
    /// durable. `alone`: it starts without the copy (already recorded by
    /// the caller), until the copy catches up.
    pub fn synchronous(sync: Synchronous, alone: Option<(Lsn, String)>) -> Feed {
        Feed {
            state: Mutex::new(FeedState {
                alone,
                ..Default::default()
            }),
            changed: Condvar::new(),
            sync: Some(sync),
        }
    }

    pub fn sync_status(&self) -> SyncStatus {
        if self.sync.is_none() {
            return SyncStatus::Off;
        }
        match &self.state.lock().expect("feed lock").alone {
            None => SyncStatus::Synchronous,
            Some((from, why)) => SyncStatus::Alone {
                from: *from,
                why: why.clone(),
            },
        }
    }

    /// Whether the store's answers wait for the copy now (synchronous, and
    /// not gone alone).
    pub fn waits(&self) -> bool {
        self.sync.is_some() && self.state.lock().expect("feed lock").alone.is_none()
    }

    /// Whether acknowledgements wait for the copy at all.
    pub fn is_synchronous(&self) -> bool {
        self.sync.is_some()
    }

    /// Waits until a copy holds `lsn` durable, or the active goes on alone
    /// (after the timeout, once that is recorded). An error when the store
    /// stopped first: the record is durable here, its fate unknown.
    pub fn confirm(&self, lsn: Lsn) -> Result<(), String> {
        let Some(sync) = &self.sync else {
            return Ok(());
        };
        let mut deadline = Instant::now() + sync.timeout;
        let mut s = self.state.lock().expect("feed lock");
        loop {
            if s.acked.is_some_and(|a| a.2 >= lsn) || s.alone.is_some() {
                return Ok(());
            }
            if s.closed {
                return Err(format!(
                    "the store stopped before the copy confirmed LSN {lsn}"
                ));
            }
            let now = Instant::now();
            if now < deadline {
                s = self
                    .changed
                    .wait_timeout(s, deadline - now)
                    .expect("feed lock")
                    .0;
                continue;
            }
            let why = match s.acked {
                None => format!("no copy confirmed anything within {:?}", sync.timeout),
                Some(a) => format!(
                    "the copy confirmed LSN {} but not {lsn} within {:?}",
                    a.2, sync.timeout
                ),
            };
            drop(s);
            match (sync.go_alone)(lsn, &why) {
                Ok(()) => {
                    tracing::warn!(lsn = %lsn, reason = %why, "synchronous commit: going on alone until the copy catches up");
                    self.update(|s| s.alone = Some((lsn, why)));
                    return Ok(());
                }
                Err(e) => {
                    tracing::error!(lsn = %lsn, error = %e, "synchronous commit: cannot record going alone; waiting for the copy");
                    deadline = Instant::now() + sync.timeout;
                    s = self.state.lock().expect("feed lock");
                }
            }
        }
    }
    fn update(&self, f: impl FnOnce(&mut FeedState)) {
        let mut s = self.state.lock().expect("feed lock");
        f(&mut s);
        s.version += 1;
        drop(s);
        self.changed.notify_all();
    }

    /// A segment starts, `durable` being its bytes already on disk.
    pub fn start_segment(&self, generation: Generation, durable: &[u8], lsn: Lsn) {
        self.update(|s| {
            s.generation = Some(generation);
            s.bytes.clear();
            s.bytes.extend_from_slice(durable);
            s.lsn = lsn;
        });
    }

    /// Bytes at `offset` of the current segment are durable, and with them
    /// the records up to `lsn`.
    pub fn durable(&self, offset: usize, bytes: &[u8], lsn: Lsn) {
        self.update(|s| {
            s.bytes.truncate(offset);
            s.bytes.resize(offset, 0);
            s.bytes.extend_from_slice(bytes);
            s.lsn = lsn;
        });
    }

    /// The current segment is sealed with `trailer`.
    pub fn sealed(&self, trailer: &[u8]) {
        self.update(|s| {
            if let Some(g) = s.generation.take() {
                s.prev = Some(SealedTail {
                    generation: g,
                    bytes: std::mem::take(&mut s.bytes),
                    lsn: s.lsn,
                    trailer: trailer.to_vec(),
                });
            }
        });
    }

    /// The store stopped: senders end.
    pub fn close(&self) {
        self.update(|s| s.closed = true);
    }

    /// A copy holds `generation` up to `offset`, durable, and the records
    /// to `lsn`.
    pub fn ack(&self, generation: Generation, offset: u32, lsn: Lsn) {
        self.update(|s| {
            // Only a position in what this feed sent counts (a copy's
            // files of another timeline do not), and no further than it.
            let ours = s.generation == Some(generation)
                || s.prev.as_ref().is_some_and(|p| p.generation == generation);
            let lsn = lsn.min(s.lsn);
            if ours && s.acked.is_none_or(|a| (generation, offset) > (a.0, a.1)) {
                s.acked = Some((generation, offset, lsn));
            }
            // Caught up: acknowledgements wait for the copy again.
            if s.alone.is_some() && s.acked.is_some_and(|a| a.2 >= s.lsn) {
                tracing::info!(lsn = %s.lsn, "synchronous commit: the copy caught up");
                s.alone = None;
            }
        });
    }

    /// The last complete record a copy reported durable.
    pub fn acked_lsn(&self) -> Option<Lsn> {
        self.state.lock().expect("feed lock").acked.map(|a| a.2)
    }

    /// What follows `(generation, offset)` for a copy that holds that much,
    /// waiting up to `wait` for something new.
    pub fn next(&self, generation: Generation, offset: u32, wait: Duration) -> Next {
        let deadline = Instant::now() + wait;
        let mut s = self.state.lock().expect("feed lock");
        loop {
            if s.closed {
                return Next::Closed;
            }
            if let Some(p) = &s.prev
                && p.generation == generation
            {
                if (offset as usize) < p.bytes.len() {
                    let end = p.bytes.len().min(offset as usize + MAX_CHUNK);
                    return Next::Data {
                        generation,
                        offset,
                        lsn: if end == p.bytes.len() { p.lsn } else { Lsn(0) },
                        bytes: p.bytes[offset as usize..end].to_vec(),
                    };
                }
                if (offset as usize) < SEGMENT_SIZE {
                    return Next::Sealed {
                        generation,
                        trailer: p.trailer.clone(),
                    };
                }
            }
            if let Some(g) = s.generation {
                // A copy at another generation starts this one from its
                // beginning (older segments come from the share).
                let from = if g == generation { offset as usize } else { 0 };
                if from < s.bytes.len() {
                    let end = s.bytes.len().min(from + MAX_CHUNK);
                    return Next::Data {
                        generation: g,
                        offset: from as u32,
                        lsn: if end == s.bytes.len() { s.lsn } else { Lsn(0) },
                        bytes: s.bytes[from..end].to_vec(),
                    };
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Next::Idle {
                    generation: s.generation.unwrap_or(generation),
                    offset: s.bytes.len() as u32,
                    lsn: s.lsn,
                };
            }
            s = self
                .changed
                .wait_timeout(s, deadline - now)
                .expect("feed lock")
                .0;
        }
    }
}

// ---- the wire ----

/// Message types (FORMAT.md).
const T_DATA: u8 = 1;
const T_SEALED: u8 = 2;
const T_WHERE: u8 = 3;
const T_ACK: u8 = 4;
const T_REFUSE: u8 = 5;
/// Data the active waits for (synchronous commit): acknowledge at once.
const T_DATA_WAITED: u8 = 6;

/// One message of the stream, either way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Active → copy: bytes at `offset` of `generation`; the records to
    /// `lsn` are durable on the active. `waited`: the active's answers wait
    /// for their acknowledgement (synchronous commit); otherwise the copy
    /// may gather a few before its fdatasync.
    Data {
        generation: Generation,
        offset: u32,
        lsn: Lsn,
        bytes: Vec<u8>,
        waited: bool,
    },
    /// Active → copy: `generation` is sealed with this trailer.
    Sealed {
        generation: Generation,
        trailer: Vec<u8>,
    },
    /// Active → copy: where the active's durable log ends (sent when idle).
    /// Copy → active, first message: where the copy's received log ends.
    Where {
        generation: Generation,
        offset: u32,
        lsn: Lsn,
    },
    /// Copy → active: durable here up to `offset` of `generation`.
    Ack {
        generation: Generation,
        offset: u32,
        lsn: Lsn,
    },
    /// Active → copy: the stream is refused, and why.
    Refuse(String),
}

fn put_pos(out: &mut Vec<u8>, g: Generation, offset: u32, lsn: Lsn) {
    out.extend_from_slice(&g.0.to_le_bytes());
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&lsn.0.to_le_bytes());
}

impl Message {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Message::Data {
                generation,
                offset,
                lsn,
                bytes,
                waited,
            } => {
                out.push(if *waited { T_DATA_WAITED } else { T_DATA });
                put_pos(&mut out, *generation, *offset, *lsn);
                out.extend_from_slice(bytes);
            }
            Message::Sealed {
                generation,
                trailer,
            } => {
                out.push(T_SEALED);
                out.extend_from_slice(&generation.0.to_le_bytes());
                out.extend_from_slice(trailer);
            }
            Message::Where {
                generation,
                offset,
                lsn,
            } => {
                out.push(T_WHERE);
                put_pos(&mut out, *generation, *offset, *lsn);
            }
            Message::Ack {
                generation,
                offset,
                lsn,
            } => {
                out.push(T_ACK);
                put_pos(&mut out, *generation, *offset, *lsn);
            }
            Message::Refuse(why) => {
                out.push(T_REFUSE);
                out.extend_from_slice(&why.as_bytes()[..why.len().min(1024)]);
            }
        }
        out
    }

    /// Decodes a message body; `None` when it is malformed. Offsets and
    /// lengths are checked against the segment's size.
    pub fn decode(body: &[u8]) -> Option<Message> {
        let (&t, rest) = body.split_first()?;
        let pos = |b: &[u8]| -> Option<(Generation, u32, Lsn)> {
            let g = u64::from_le_bytes(b.get(0..8)?.try_into().ok()?);
            let o = u32::from_le_bytes(b.get(8..12)?.try_into().ok()?);
            let l = u64::from_le_bytes(b.get(12..20)?.try_into().ok()?);
            (o as usize <= SEGMENT_SIZE).then_some((Generation(g), o, Lsn(l)))
        };
        Some(match t {
            T_DATA | T_DATA_WAITED => {
                let (generation, offset, lsn) = pos(rest)?;
                let bytes = rest.get(20..)?.to_vec();
                if bytes.len() > MAX_CHUNK || offset as usize + bytes.len() > TRAILER_OFFSET {
                    return None;
                }
                Message::Data {
                    generation,
                    offset,
                    lsn,
                    bytes,
                    waited: t == T_DATA_WAITED,
                }
            }
            T_SEALED => {
                let g = u64::from_le_bytes(rest.get(0..8)?.try_into().ok()?);
                let trailer = rest.get(8..)?.to_vec();
                if trailer.len() != TRAILER_SIZE {
                    return None;
                }
                Message::Sealed {
                    generation: Generation(g),
                    trailer,
                }
            }
            T_WHERE | T_ACK => {
                let (generation, offset, lsn) = pos(rest)?;
                if rest.len() != 20 {
                    return None;
                }
                if t == T_WHERE {
                    Message::Where {
                        generation,
                        offset,
                        lsn,
                    }
                } else {
                    Message::Ack {
                        generation,
                        offset,
                        lsn,
                    }
                }
            }
            T_REFUSE => Message::Refuse(String::from_utf8_lossy(rest).into_owned()),
            _ => return None,
        })
    }
}

/// The copy's hello: who it is, which database it holds, its nonce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    pub node: String,
    pub database_id: DatabaseId,
    pub nonce: [u8; 16],
}

const HELLO_FIXED: usize = 8 + 2 + 2 + 16 + 16 + 1;

impl Hello {
    pub fn encode(&self) -> Vec<u8> {
        let name = &self.node.as_bytes()[..self.node.len().min(MAX_NAME)];
        let mut out = Vec::with_capacity(HELLO_FIXED + name.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&self.database_id.0);
        out.extend_from_slice(&self.nonce);
        out.push(name.len() as u8);
        out.extend_from_slice(name);
        out
    }
}

/// The active's welcome: whether the session is keyed (then encrypted and
/// authenticated), its nonce, and its proof of the key.
const WELCOME_LEN: usize = 8 + 2 + 2 + 16 + 32;
const FLAG_KEYED: u16 = 1;

/// One side of an established stream: framed messages, sealed with
/// ChaCha20-Poly1305 when the cluster has a key.
pub struct Conn {
    stream: TcpStream,
    peer: String,
    seal: Option<(aead::LessSafeKey, u64)>,
    open: Option<(aead::LessSafeKey, u64)>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("peer", &self.peer)
            .field("encrypted", &self.seal.is_some())
            .finish()
    }
}

fn io<'a>(peer: &'a str, op: &'static str) -> impl FnOnce(std::io::Error) -> BlockError + 'a {
    move |source| BlockError::Io {
        peer: peer.to_string(),
        op,
        source,
    }
}

fn random16() -> [u8; 16] {
    let mut n = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut n)
        .expect("the system's random generator works");
    n
}

fn proof(key: &[u8], who: &[u8], hello: &[u8], nonce_a: &[u8]) -> hmac::Tag {
    let k = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut ctx = hmac::Context::with_key(&k);
    ctx.update(b"logship block ");
    ctx.update(who);
    ctx.update(hello);
    ctx.update(nonce_a);
    ctx.sign()
}

fn verify_proof(key: &[u8], who: &[u8], hello: &[u8], nonce_a: &[u8], tag: &[u8]) -> bool {
    let k = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut msg = b"logship block ".to_vec();
    msg.extend_from_slice(who);
    msg.extend_from_slice(hello);
    msg.extend_from_slice(nonce_a);
    hmac::verify(&k, &msg, tag).is_ok()
}

struct KeyLen;
impl hkdf::KeyType for KeyLen {
    fn len(&self) -> usize {
        32
    }
}

fn session_key(key: &[u8], hello: &[u8], nonce_a: &[u8], way: &[u8]) -> aead::LessSafeKey {
    let mut salt = hello.to_vec();
    salt.extend_from_slice(nonce_a);
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &salt).extract(key);
    let info = [b"logship block ".as_slice(), way];
    let okm = prk
        .expand(&info, KeyLen)
        .expect("32 bytes from HKDF-SHA256");
    let mut k = [0u8; 32];
    okm.fill(&mut k).expect("32 bytes");
    aead::LessSafeKey::new(
        aead::UnboundKey::new(&aead::CHACHA20_POLY1305, &k).expect("a 32-byte key"),
    )
}

fn nonce(counter: u64) -> aead::Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    aead::Nonce::assume_unique_for_key(n)
}

impl Conn {
    fn keyed(
        stream: TcpStream,
        peer: &str,
        key: Option<(&[u8], &[u8], &[u8])>,
        active: bool,
    ) -> Conn {
        let (seal, open) = match key {
            Some((k, hello, nonce_a)) => {
                let a2c = session_key(k, hello, nonce_a, b"active to copy");
                let c2a = session_key(k, hello, nonce_a, b"copy to active");
                if active {
                    (Some((a2c, 0)), Some((c2a, 0)))
                } else {
                    (Some((c2a, 0)), Some((a2c, 0)))
                }
            }
            None => (None, None),
        };
        Conn {
            stream,
            peer: peer.to_string(),
            seal,
            open,
        }
    }

    pub fn encrypted(&self) -> bool {
        self.seal.is_some()
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    pub fn send(&mut self, m: &Message) -> BlockResult<()> {
        let mut body = m.encode();
        if let Some((k, n)) = &mut self.seal {
            k.seal_in_place_append_tag(nonce(*n), aead::Aad::empty(), &mut body)
                .map_err(|_| BlockError::Tampered {
                    peer: self.peer.clone(),
                })?;
            *n += 1;
        }
        let mut frame = Vec::with_capacity(4 + body.len());
        frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
        frame.extend_from_slice(&body);
        self.stream
            .write_all(&frame)
            .map_err(io(&self.peer, "send"))
    }

    /// The next message. A read timeout on the socket comes back as
    /// `Ok(None)` when nothing of a message had arrived.
    pub fn recv(&mut self) -> BlockResult<Option<Message>> {
        let mut len = [0u8; 4];
        match self.stream.read(&mut len[..1]) {
            Ok(0) => {
                return Err(BlockError::Io {
                    peer: self.peer.clone(),
                    op: "receive",
                    source: std::io::ErrorKind::UnexpectedEof.into(),
                });
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(io(&self.peer, "receive")(e)),
        }
        self.read_full(&mut len[1..])?;
        let n = u32::from_le_bytes(len) as usize;
        if n > MAX_MESSAGE {
            return Err(BlockError::TooLong {
                peer: self.peer.clone(),
                len: n,
                max: MAX_MESSAGE,
            });
        }
        let mut body = vec![0u8; n];
        self.read_full(&mut body)?;
        let plain: &[u8] = match &mut self.open {
            Some((k, c)) => {
                let p = k
                    .open_in_place(nonce(*c), aead::Aad::empty(), &mut body)
                    .map_err(|_| BlockError::Tampered {
                        peer: self.peer.clone(),
                    })?;
                *c += 1;
                p
            }
            None => &body,
        };
        Message::decode(plain)
            .map(Some)
            .ok_or_else(|| BlockError::Malformed {
                peer: self.peer.clone(),
                what: "message",
            })
    }

    /// Reads all of `buf`, waiting through read timeouts (a message once
    /// begun is read whole).
    fn read_full(&mut self, mut buf: &mut [u8]) -> BlockResult<()> {
        let started = Instant::now();
        while !buf.is_empty() {
            match self.stream.read(buf) {
                Ok(0) => {
                    return Err(BlockError::Io {
                        peer: self.peer.clone(),
                        op: "receive",
                        source: std::io::ErrorKind::UnexpectedEof.into(),
                    });
                }
                Ok(n) => buf = &mut buf[n..],
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) && started.elapsed() < Duration::from_secs(10) => {}
                Err(e) => return Err(io(&self.peer, "receive")(e)),
            }
        }
        Ok(())
    }
}

fn read_exact(stream: &mut TcpStream, buf: &mut [u8], peer: &str) -> BlockResult<()> {
    stream.read_exact(buf).map_err(io(peer, "handshake"))
}

/// The copy's side of the handshake on a connected `stream`.
pub fn connect(
    mut stream: TcpStream,
    peer: &str,
    hello: &Hello,
    key: Option<&[u8]>,
) -> BlockResult<Conn> {
    let h = hello.encode();
    stream.write_all(&h).map_err(io(peer, "send hello"))?;
    let mut w = [0u8; WELCOME_LEN];
    read_exact(&mut stream, &mut w, peer)?;
    if w[..8] != MAGIC {
        return Err(BlockError::BadMagic {
            peer: peer.to_string(),
        });
    }
    let version = u16::from_le_bytes([w[8], w[9]]);
    if version != VERSION {
        return Err(BlockError::Version {
            peer: peer.to_string(),
            found: version,
        });
    }
    let keyed = u16::from_le_bytes([w[10], w[11]]) & FLAG_KEYED != 0;
    let nonce_a = &w[12..28];
    match (keyed, key) {
        (true, Some(k)) => {
            if !verify_proof(k, b"active", &h, nonce_a, &w[28..60]) {
                return Err(BlockError::BadKey {
                    peer: peer.to_string(),
                });
            }
            let tag = proof(k, b"copy", &h, nonce_a);
            stream
                .write_all(tag.as_ref())
                .map_err(io(peer, "send proof"))?;
            Ok(Conn::keyed(stream, peer, Some((k, &h, nonce_a)), false))
        }
        (false, None) => Ok(Conn::keyed(stream, peer, None, false)),
        _ => Err(BlockError::KeyMismatch {
            peer: peer.to_string(),
        }),
    }
}

/// The active's side of the handshake on an accepted `stream`: the hello
/// read and checked, the copy's proof of the key verified.
pub fn accept(mut stream: TcpStream, peer: &str, key: Option<&[u8]>) -> BlockResult<(Conn, Hello)> {
    let mut fixed = [0u8; HELLO_FIXED];
    read_exact(&mut stream, &mut fixed, peer)?;
    if fixed[..8] != MAGIC {
        return Err(BlockError::BadMagic {
            peer: peer.to_string(),
        });
    }
    let version = u16::from_le_bytes([fixed[8], fixed[9]]);
    if version != VERSION {
        return Err(BlockError::Version {
            peer: peer.to_string(),
            found: version,
        });
    }
    let name_len = fixed[HELLO_FIXED - 1] as usize;
    if name_len > MAX_NAME {
        return Err(BlockError::Malformed {
            peer: peer.to_string(),
            what: "hello (node name too long)",
        });
    }
    let mut name = vec![0u8; name_len];
    read_exact(&mut stream, &mut name, peer)?;
    let hello = Hello {
        node: String::from_utf8_lossy(&name).into_owned(),
        database_id: DatabaseId(fixed[12..28].try_into().expect("16 bytes")),
        nonce: fixed[28..44].try_into().expect("16 bytes"),
    };
    let mut h = fixed.to_vec();
    h.extend_from_slice(&name);
    let nonce_a = random16();
    let mut w = Vec::with_capacity(WELCOME_LEN);
    w.extend_from_slice(&MAGIC);
    w.extend_from_slice(&VERSION.to_le_bytes());
    w.extend_from_slice(&(if key.is_some() { FLAG_KEYED } else { 0 }).to_le_bytes());
    w.extend_from_slice(&nonce_a);
    match key {
        Some(k) => w.extend_from_slice(proof(k, b"active", &h, &nonce_a).as_ref()),
        None => w.extend_from_slice(&[0u8; 32]),
    }
    stream.write_all(&w).map_err(io(peer, "send welcome"))?;
    match key {
        Some(k) => {
            let mut tag = [0u8; 32];
            read_exact(&mut stream, &mut tag, peer)?;
            if !verify_proof(k, b"copy", &h, &nonce_a, &tag) {
                return Err(BlockError::BadKey {
                    peer: peer.to_string(),
                });
            }
            Ok((
                Conn::keyed(stream, peer, Some((k, &h, &nonce_a)), true),
                hello,
            ))
        }
        None => Ok((Conn::keyed(stream, peer, None, true), hello)),
    }
}

/// Answers a copy's hello with a refusal, and why (a node that is not
/// active has nothing to stream).
pub fn refuse(stream: TcpStream, peer: &str, key: Option<&[u8]>, why: &str) -> BlockResult<()> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(io(peer, "set timeout"))?;
    let (mut conn, _) = accept(stream, peer, key)?;
    conn.send(&Message::Refuse(why.to_string()))
}

/// A fresh nonce for a hello.
pub fn hello_nonce() -> [u8; 16] {
    random16()
}

/// Serves one copy on an accepted connection until it goes, the feed
/// closes, or `stop` is set: the copy's position first, then every durable
/// byte past it, and its acknowledgements into the feed.
pub fn serve(
    stream: TcpStream,
    peer: &str,
    feed: &Feed,
    database_id: DatabaseId,
    key: Option<&[u8]>,
    stop: &AtomicBool,
) -> BlockResult<()> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(io(peer, "set timeout"))?;
    let (mut conn, hello) = accept(stream, peer, key)?;
    if hello.database_id != database_id {
        let why = format!(
            "node {} holds database {}, this store is {}",
            hello.node, hello.database_id, database_id
        );
        let _ = conn.send(&Message::Refuse(why.clone()));
        return Err(BlockError::Declined {
            peer: peer.to_string(),
            why,
        });
    }
    let (mut generation, mut offset) = match conn.recv()? {
        Some(Message::Where {
            generation, offset, ..
        }) => (generation, offset),
        _ => {
            return Err(BlockError::Malformed {
                peer: peer.to_string(),
                what: "first message (expected the copy's position)",
            });
        }
    };
    // Acknowledgements are read on their own thread.
    let mut reader = Conn {
        stream: conn.stream.try_clone().map_err(io(peer, "clone socket"))?,
        peer: peer.to_string(),
        seal: None,
        open: conn.open.take(),
    };
    reader
        .stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(io(peer, "set timeout"))?;
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let acks = scope.spawn(|| -> BlockResult<()> {
            while !done.load(Ordering::Relaxed) && !stop.load(Ordering::Relaxed) {
                match reader.recv()? {
                    Some(Message::Ack {
                        generation,
                        offset,
                        lsn,
                    }) => feed.ack(generation, offset, lsn),
                    Some(_) => {
                        return Err(BlockError::Malformed {
                            peer: reader.peer.clone(),
                            what: "message from a copy (expected an acknowledgement)",
                        });
                    }
                    None => {}
                }
            }
            Ok(())
        });
        let sent = (|| -> BlockResult<()> {
            while !stop.load(Ordering::Relaxed) && !acks.is_finished() {
                match feed.next(generation, offset, KEEPALIVE) {
                    Next::Closed => return Ok(()),
                    Next::Data {
                        generation: g,
                        offset: o,
                        lsn,
                        bytes,
                    } => {
                        generation = g;
                        offset = o + bytes.len() as u32;
                        conn.send(&Message::Data {
                            generation: g,
                            offset: o,
                            lsn,
                            bytes,
                            waited: feed.waits(),
                        })?;
                    }
                    Next::Sealed {
                        generation: g,
                        trailer,
                    } => {
                        offset = SEGMENT_SIZE as u32;
                        conn.send(&Message::Sealed {
                            generation: g,
                            trailer,
                        })?;
                    }
                    Next::Idle {
                        generation: g,
                        offset: o,
                        lsn,
                    } => conn.send(&Message::Where {
                        generation: g,
                        offset: o,
                        lsn,
                    })?,
                }
            }
            Ok(())
        })();
        done.store(true, Ordering::Relaxed);
        let _ = conn.stream.shutdown(std::net::Shutdown::Both);
        let acked = acks.join().unwrap_or(Ok(()));
        sent.and(acked)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn messages_round_trip_and_bad_lengths_are_refused() {
        let ms = [
            Message::Data {
                generation: Generation(3),
                offset: 128,
                lsn: Lsn(9),
                bytes: vec![1, 2, 3],
                waited: false,
            },
            Message::Data {
                generation: Generation(3),
                offset: 131,
                lsn: Lsn(10),
                bytes: vec![4],
                waited: true,
            },
            Message::Sealed {
                generation: Generation(3),
                trailer: vec![7; TRAILER_SIZE],
            },
            Message::Where {
                generation: Generation(4),
                offset: 128,
                lsn: Lsn(9),
            },
            Message::Ack {
                generation: Generation(4),
                offset: 300,
                lsn: Lsn(10),
            },
            Message::Refuse("no".into()),
        ];
        for m in ms {
            assert_eq!(Message::decode(&m.encode()), Some(m));
        }
        // Data past the trailer, a short trailer, an offset past the segment.
        let mut past = Message::Data {
            generation: Generation(1),
            offset: (TRAILER_OFFSET - 2) as u32,
            lsn: Lsn(1),
            bytes: vec![0; 3],
            waited: false,
        }
        .encode();
        assert_eq!(Message::decode(&past), None);
        past.truncate(5);
        assert_eq!(Message::decode(&past), None);
        let mut short = vec![T_SEALED];
        short.extend_from_slice(&1u64.to_le_bytes());
        short.extend_from_slice(&[0; 10]);
        assert_eq!(Message::decode(&short), None);
        let mut far = vec![T_ACK];
        put_pos(&mut far, Generation(1), SEGMENT_SIZE as u32 + 1, Lsn(1));
        assert_eq!(Message::decode(&far), None);
        assert_eq!(Message::decode(&[99]), None);
        assert_eq!(Message::decode(&[]), None);
    }

    #[test]
    fn the_feed_gives_each_copy_what_follows_its_position() {
        let f = Feed::new();
        f.start_segment(Generation(2), &[1; 128], Lsn(4));
        f.durable(128, &[2; 10], Lsn(5));
        let n = f.next(Generation(2), 128, Duration::ZERO);
        assert_eq!(
            n,
            Next::Data {
                generation: Generation(2),
                offset: 128,
                lsn: Lsn(5),
                bytes: vec![2; 10]
            }
        );
        // A copy of an older generation starts the current one whole.
        match f.next(Generation(1), 500, Duration::ZERO) {
            Next::Data { offset, bytes, .. } => assert_eq!((offset, bytes.len()), (0, 138)),
            n => panic!("{n:?}"),
        }
        assert!(matches!(
            f.next(Generation(2), 138, Duration::ZERO),
            Next::Idle { offset: 138, .. }
        ));
        // The seal: a copy of generation 2 gets its end, then its trailer.
        f.durable(138, &[3; 5], Lsn(6));
        f.sealed(&[9; TRAILER_SIZE]);
        f.start_segment(Generation(3), &[1; 128], Lsn(6));
        match f.next(Generation(2), 138, Duration::ZERO) {
            Next::Data { bytes, lsn, .. } => assert_eq!((bytes, lsn), (vec![3; 5], Lsn(6))),
            n => panic!("{n:?}"),
        }
        assert!(matches!(
            f.next(Generation(2), 143, Duration::ZERO),
            Next::Sealed { .. }
        ));
        assert!(matches!(
            f.next(Generation(2), SEGMENT_SIZE as u32, Duration::ZERO),
            Next::Data {
                generation: Generation(3),
                offset: 0,
                ..
            }
        ));
        f.close();
        assert_eq!(f.next(Generation(3), 128, Duration::ZERO), Next::Closed);
    }

    fn pair(
        key_a: Option<&'static [u8]>,
        key_c: Option<&'static [u8]>,
    ) -> (BlockResult<Conn>, BlockResult<(Conn, Hello)>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            accept(s, "copy", key_a)
        });
        let s = TcpStream::connect(addr).unwrap();
        let hello = Hello {
            node: "beta".into(),
            database_id: DatabaseId([5; 16]),
            nonce: hello_nonce(),
        };
        let c = connect(s, "active", &hello, key_c);
        (c, t.join().unwrap())
    }

    #[test]
    fn a_keyed_stream_is_encrypted_both_ways_and_a_wrong_key_is_refused() {
        let (c, a) = pair(Some(b"0123456789abcdef"), Some(b"0123456789abcdef"));
        let (mut c, (mut a, hello)) = (c.unwrap(), a.unwrap());
        assert_eq!(hello.node, "beta");
        assert!(c.encrypted() && a.encrypted());
        let m = Message::Data {
            generation: Generation(1),
            offset: 128,
            lsn: Lsn(2),
            bytes: b"secret record".to_vec(),
            waited: true,
        };
        a.send(&m).unwrap();
        a.send(&m).unwrap();
        assert_eq!(c.recv().unwrap(), Some(m.clone()));
        assert_eq!(c.recv().unwrap(), Some(m));
        c.send(&Message::Ack {
            generation: Generation(1),
            offset: 141,
            lsn: Lsn(2),
        })
        .unwrap();
        assert!(matches!(a.recv().unwrap(), Some(Message::Ack { .. })));

        let (c, a) = pair(Some(b"0123456789abcdef"), Some(b"another key 0123"));
        assert!(matches!(c, Err(BlockError::BadKey { .. })), "{c:?}");
        assert!(a.is_err());
        let (c, _) = pair(Some(b"0123456789abcdef"), None);
        assert!(matches!(c, Err(BlockError::KeyMismatch { .. })), "{c:?}");
    }

    #[test]
    fn a_tampered_message_is_refused() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let key: &'static [u8] = b"0123456789abcdef";
        let t = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let (mut a, _) = accept(s, "copy", Some(key)).unwrap();
            // A frame with a flipped byte, written under the session.
            let mut body = Message::Refuse("x".into()).encode();
            let (k, n) = a.seal.as_mut().unwrap();
            k.seal_in_place_append_tag(nonce(*n), aead::Aad::empty(), &mut body)
                .unwrap();
            body[0] ^= 1;
            let mut frame = (body.len() as u32).to_le_bytes().to_vec();
            frame.extend_from_slice(&body);
            a.stream.write_all(&frame).unwrap();
            a
        });
        let s = TcpStream::connect(addr).unwrap();
        let hello = Hello {
            node: "beta".into(),
            database_id: DatabaseId([5; 16]),
            nonce: hello_nonce(),
        };
        let mut c = connect(s, "active", &hello, Some(key)).unwrap();
        assert!(matches!(c.recv(), Err(BlockError::Tampered { .. })));
        drop(t.join().unwrap());
    }
}
