//! The SMTP and LMTP server side, one session engine for both (smtp-proto
//! parses; this module keeps the state, the limits and the replies).
//!
//! What it does, per RFC 5321 / 2033 and what real clients send
//! (../shared/notes/smtp-lmtp.md): pipelining (replies are flushed when the
//! input is used up), SIZE checked at MAIL and while DATA arrives (552, the
//! session goes on), a cap on recipients (452), our own cap on command line
//! length (one 500 per overlong line), bare LF in a message normalised to
//! CRLF, BDAT refused and its chunk skipped, an idle timeout and a shorter
//! one before the first MAIL (421). In LMTP mode LHLO is the greeting and
//! there is one reply per accepted recipient after the data; EHLO and HELO
//! get 500, as Dovecot answers.
//!
//! Every port faces a hostile client, so: every reply is one line (the
//! text is sanitised and bounded in `Reply::write`); the DATA of all the
//! sessions of a listener shares one memory budget (`Budget`, 452 when it
//! is spent); a source address holds at most `Limits::max_per_source`
//! sessions; `<postmaster>` is taken (RFC 5321 §4.5.1); a SIZE that does not
//! fit is refused rather than wrapped; an address that is not UTF-8 is
//! refused rather than stored lossily; and when the handler has a secret,
//! the client must authenticate with CRAM-MD5 (RFC 2195) before MAIL.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use smtp_proto::Request;
use smtp_proto::request::receiver::{DataReceiver, DummyDataReceiver};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::message::{bare_lfs, normalize_counted};

/// SMTP (the relay) or LMTP (a node).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Smtp,
    Lmtp,
}

/// The memory all the sessions of one listener may hold in DATA at once.
pub const DATA_BUDGET: usize = 128 << 20;
/// The budget is taken and given back in chunks of this many bytes.
pub const BUDGET_CHUNK: usize = 64 << 10;
/// Sessions one source address may hold at once.
pub const MAX_PER_SOURCE: usize = 16;
/// From connect until a MAIL command is accepted.
pub const BEFORE_MAIL: Duration = Duration::from_secs(30);
/// Longest reply text (bytes); longer text is cut at a char boundary.
pub const MAX_REPLY_TEXT: usize = 512;
/// Longest AUTH response line (the client's base64 after a 334).
pub const MAX_AUTH_LINE: usize = 1024;
/// Failed AUTH attempts after which the session is closed (421).
pub const MAX_AUTH_FAILURES: u32 = 3;
/// Bytes read from the client at once.
const READ_BUF: usize = 64 << 10;
/// Replies are written out once this many bytes are pending, so that a
/// client pipelining thousands of commands does not grow the buffer.
const OUT_FLUSH: usize = 16 << 10;

/// Bounds on what a client may send.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest message (advertised as SIZE).
    pub max_message: usize,
    /// Longest command line, CRLF included.
    pub max_line: usize,
    pub max_recipients: usize,
    /// A silent client is dropped after this (421).
    pub idle: Duration,
    /// Sessions at once; one more is answered 421 and closed.
    pub max_sessions: usize,
    /// Sessions at once from one source address; one more gets 421.
    pub max_per_source: usize,
    /// A session is closed after this, however busy: `idle` bounds each
    /// read, this bounds a client that trickles bytes.
    pub max_session: Duration,
    /// A session that has not had a MAIL command accepted this long after
    /// it connected is closed (421): idle connections cannot hold slots.
    pub before_mail: Duration,
    /// Bytes of DATA all the sessions of a listener may hold at once.
    pub data_budget: usize,
}

/// What the sessions of one listener share: the session slots, the count
/// per source address, and the DATA memory budget.
#[derive(Clone, Debug)]
pub struct Sessions {
    slots: Arc<Semaphore>,
    per_source: Arc<Mutex<HashMap<IpAddr, usize>>>,
    budget: Budget,
}

impl Sessions {
    pub fn new(limits: &Limits) -> Sessions {
        Sessions {
            slots: Arc::new(Semaphore::new(limits.max_sessions)),
            per_source: Arc::default(),
            budget: Budget::new(limits.data_budget),
        }
    }

    /// A place for one more session from `ip`, if it has fewer than `max`.
    fn source(&self, ip: IpAddr, max: usize) -> Option<SourceGuard> {
        let mut m = self.per_source.lock().expect("per-source lock");
        let n = m.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(SourceGuard {
            map: self.per_source.clone(),
            ip,
        })
    }
}

/// One session of a source address, given back when dropped.
struct SourceGuard {
    map: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl Drop for SourceGuard {
    fn drop(&mut self) {
        let mut m = self.map.lock().expect("per-source lock");
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// The memory for DATA shared by the sessions of one listener, counted in
/// `BUDGET_CHUNK`s: a message's buffer is reserved before it grows and
/// given back when the handler has returned or the session ends.
#[derive(Clone, Debug)]
pub struct Budget {
    chunks: Arc<Semaphore>,
    total: usize,
}

impl Budget {
    /// A budget of `bytes` (rounded down to whole chunks, at least one).
    pub fn new(bytes: usize) -> Budget {
        let n = (bytes / BUDGET_CHUNK).clamp(1, Semaphore::MAX_PERMITS);
        Budget {
            chunks: Arc::new(Semaphore::new(n)),
            total: n * BUDGET_CHUNK,
        }
    }

    /// The budget's size in bytes.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Bytes not reserved now.
    pub fn available(&self) -> usize {
        self.chunks.available_permits() * BUDGET_CHUNK
    }

    /// Raises `held` to at least `bytes`; false (and `held` unchanged) when
    /// the budget cannot cover it.
    fn grow(&self, held: &mut Option<OwnedSemaphorePermit>, bytes: usize) -> bool {
        let have = held.as_ref().map_or(0, |p| p.num_permits());
        let want = bytes.div_ceil(BUDGET_CHUNK);
        if want <= have {
            return true;
        }
        let Ok(more) = u32::try_from(want - have) else {
            return false;
        };
        match self.chunks.clone().try_acquire_many_owned(more) {
            Ok(p) => {
                match held {
                    Some(h) => h.merge(p),
                    None => *held = Some(p),
                }
                true
            }
            Err(_) => false,
        }
    }
}

impl Limits {
    /// What the sessions of one listener with these limits share.
    pub fn sessions(&self) -> Sessions {
        Sessions::new(self)
    }
}

/// Serves `stream` from `peer` if its source address and the listener
/// both have a session free (held until it ends), else answers 421 and
/// closes: memory stays bounded however many connect, and one address
/// cannot take every session.
pub fn spawn_session<H: Handler + Send + Sync + 'static>(
    sessions: &Sessions,
    stream: TcpStream,
    peer: SocketAddr,
    mode: Mode,
    hostname: String,
    limits: Limits,
    handler: H,
) {
    let refuse = |mut stream: TcpStream, text: &'static [u8]| {
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(2), stream.write_all(text)).await;
        });
    };
    let Some(source) = sessions.source(peer.ip(), limits.max_per_source) else {
        tracing::debug!(peer = %peer, "too many sessions from one address");
        return refuse(stream, b"421 4.7.0 too many sessions from your address\r\n");
    };
    let Ok(permit) = sessions.slots.clone().try_acquire_owned() else {
        return refuse(stream, b"421 4.3.2 too many sessions, try again later\r\n");
    };
    let budget = sessions.budget.clone();
    tokio::spawn(async move {
        let (_permit, _source) = (permit, source);
        let _ = stream.set_nodelay(true);
        let session = serve(stream, mode, &hostname, &limits, &budget, &handler);
        match tokio::time::timeout(limits.max_session, session).await {
            Ok(Err(e)) => tracing::debug!(error = %e, "session ended"),
            Ok(Ok(())) => {}
            Err(_) => tracing::info!(
                limit = ?limits.max_session,
                "session closed at its time limit"
            ),
        }
    });
}

/// What a node's LMTP endpoint takes beyond a relay's message limit: the
/// headers a relay may add (a Message-ID), so that a message a relay
/// accepted is never refused for its size afterwards.
pub const NODE_HEADROOM: usize = 1 << 20;

impl Limits {
    /// The default limits with `NODE_HEADROOM` more for the message.
    pub fn node() -> Limits {
        let d = Limits::default();
        Limits {
            max_message: d.max_message + NODE_HEADROOM,
            ..d
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message: 25 << 20,
            max_line: 4096,
            max_recipients: 100,
            idle: Duration::from_secs(300),
            max_sessions: 256,
            max_per_source: MAX_PER_SOURCE,
            max_session: Duration::from_secs(3600),
            before_mail: BEFORE_MAIL,
            data_budget: DATA_BUDGET,
        }
    }
}

/// One reply line: code, enhanced status code, text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub esc: [u8; 3],
    pub text: String,
}

/// `text` fit for one reply line: control characters (CR and LF among
/// them) become `?`, and it is cut to `MAX_REPLY_TEXT` bytes at a char
/// boundary.
pub fn sanitize(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_REPLY_TEXT));
    for c in text.chars() {
        let c = if c.is_control() || c == '\u{2028}' || c == '\u{2029}' {
            '?'
        } else {
            c
        };
        if out.len() + c.len_utf8() > MAX_REPLY_TEXT {
            break;
        }
        out.push(c);
    }
    out
}

impl Reply {
    pub fn new(code: u16, esc: [u8; 3], text: impl Into<String>) -> Reply {
        Reply {
            code,
            esc,
            text: text.into(),
        }
    }

    pub fn ok(text: impl Into<String>) -> Reply {
        Reply::new(250, [2, 0, 0], text)
    }

    /// Appends the reply as exactly one line, whatever its text holds (see
    /// `sanitize`). A code outside 200..=599 is written as 451 with the
    /// code in the text.
    pub fn write(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        let (code, text) = if (200..=599).contains(&self.code) {
            (self.code, sanitize(&self.text))
        } else {
            (
                451,
                sanitize(&format!("(reply code {}) {}", self.code, self.text)),
            )
        };
        let [a, b, c] = self.esc;
        let line = if self.esc == [0, 0, 0] {
            write!(out, "{code} {text}\r\n")
        } else {
            write!(out, "{code} {a}.{b}.{c} {text}\r\n")
        };
        line.expect("writing to a Vec cannot fail");
    }
}

/// The envelope of one message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Envelope {
    pub from: String,
    pub rcpts: Vec<String>,
    /// MAIL's `ENVID=` (RFC 3461), xtext-decoded: the relay names each
    /// message it delivers, and a node recognises a redelivery by it.
    pub envid: Option<String>,
}

/// What the server asks of the relay or the node.
pub trait Handler: Send + Sync + 'static {
    /// Words added to the 220 greeting (a node says its epoch there).
    fn banner(&self) -> String {
        String::new()
    }
    /// The domain `RCPT TO:<postmaster>` stands for (RFC 5321 §4.5.1): it
    /// becomes `postmaster@<domain>` and is checked as any recipient.
    /// `None`: it is refused (550).
    fn postmaster_domain(&self) -> Option<String> {
        None
    }
    /// `Some(secret)`: clients must authenticate with CRAM-MD5 keyed with
    /// it before MAIL (a node takes mail only from a relay that holds the
    /// cluster key).
    fn auth_secret(&self) -> Option<Vec<u8>> {
        None
    }
    /// `Some(reply)` refuses the sender (e.g. a passive node: 451).
    fn mail(&self, from: &str) -> Option<Reply>;
    /// `Some(reply)` refuses the recipient (e.g. a foreign domain: 550).
    fn rcpt(&self, to: &str) -> Option<Reply>;
    /// Takes a whole message: in LMTP mode one reply per recipient, in
    /// SMTP mode exactly one. A 2xx reply promises the message is durable.
    fn data(&self, env: Envelope, data: Vec<u8>) -> impl Future<Output = Vec<Reply>> + Send;
}

/// HMAC-MD5 keyed with `secret` over `challenge` (RFC 2195).
fn cram_md5_digest(secret: &[u8]) -> hmac::Hmac<md5::Md5> {
    use hmac::KeyInit;
    hmac::Hmac::<md5::Md5>::new_from_slice(secret).expect("HMAC takes keys of any length")
}

/// The line a client sends after `334 <challenge in base64>`: base64 of
/// `user SP hex(HMAC-MD5(secret, challenge))`, `challenge` decoded.
pub fn cram_md5_response(secret: &[u8], challenge: &str, user: &str) -> String {
    use base64::Engine;
    use hmac::Mac;
    let mut mac = cram_md5_digest(secret);
    mac.update(challenge.as_bytes());
    let hex = crate::message::hex(&mac.finalize().into_bytes());
    base64::engine::general_purpose::STANDARD.encode(format!("{user} {hex}"))
}

/// Checks a client's CRAM-MD5 response line (in constant time for the
/// digest); the user it names when right.
fn cram_md5_check(secret: &[u8], challenge: &str, line: &[u8]) -> Result<String, AuthError> {
    use base64::Engine;
    use hmac::Mac;
    let text = std::str::from_utf8(line)
        .ok()
        .map(str::trim)
        .ok_or(AuthError::Decode)?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|_| AuthError::Decode)?;
    let decoded = String::from_utf8(decoded).map_err(|_| AuthError::Decode)?;
    let (user, hex) = decoded.rsplit_once(' ').ok_or(AuthError::Wrong)?;
    let digest = unhex(hex).ok_or(AuthError::Wrong)?;
    let mut mac = cram_md5_digest(secret);
    mac.update(challenge.as_bytes());
    mac.verify_slice(&digest).map_err(|_| AuthError::Wrong)?;
    Ok(user.to_string())
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() != 32 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[derive(Debug)]
enum AuthError {
    /// Not base64 (of UTF-8).
    Decode,
    /// Not `user SP digest`, or the digest is wrong.
    Wrong,
}

/// A CRAM-MD5 challenge: `<random.seconds@hostname>`.
fn challenge(hostname: &str) -> std::io::Result<String> {
    use std::io::Read;
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    let random = crate::message::hex(&b);
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Ok(format!("<{random}.{secs}@{hostname}>"))
}

/// Why a message read to its end is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    /// Over `Limits::max_message` (552).
    TooBig,
    /// The listener's DATA budget could not cover it (452).
    NoMemory,
}

enum State {
    /// Reading a command line.
    Command,
    /// A command line over the limit, answered: skip to its end.
    SkipLine,
    /// After `334 <challenge>`: reading the client's response line.
    Auth {
        challenge: String,
        secret: Vec<u8>,
    },
    Data(DataReceiver),
    /// The message is refused: read it to its end, keep nothing.
    Discard(DummyDataReceiver, Refusal),
    /// A BDAT chunk we did not offer to take: skip its bytes.
    SkipChunk(DummyDataReceiver),
}

/// smtp-proto's `DataReceiver` starts as if no CRLF had been seen, so a
/// message whose first line is "." (an empty message: `DATA\r\n.\r\n`) is
/// not recognised. The CRLF that ended the DATA command counts.
fn data_receiver() -> DataReceiver {
    let mut r = DataReceiver::new();
    r.ingest(&mut b"\r\n".iter(), &mut Vec::new());
    r
}

/// What one session keeps between reads.
struct Session<'a, H> {
    mode: Mode,
    hostname: &'a str,
    limits: &'a Limits,
    budget: &'a Budget,
    handler: &'a H,
    env: Option<Envelope>,
    /// The message being read, and the budget it holds.
    data: Vec<u8>,
    held: Option<OwnedSemaphorePermit>,
    /// The command (or AUTH response) line read so far.
    line: Vec<u8>,
    authenticated: bool,
    auth_failures: u32,
    /// Whether a MAIL command was accepted (ends the `before_mail` wait).
    mailed: bool,
}

/// Serves one connection until QUIT, EOF, a timeout, or too many failed
/// AUTH attempts. `budget` is shared by the listener's sessions.
pub async fn serve<S, H>(
    mut io: S,
    mode: Mode,
    hostname: &str,
    limits: &Limits,
    budget: &Budget,
    handler: &H,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: Handler,
{
    let started = Instant::now();
    let mut out = Vec::with_capacity(4096);
    let proto = if mode == Mode::Lmtp { "LMTP" } else { "ESMTP" };
    Reply::new(
        220,
        [0, 0, 0],
        format!("{hostname} {proto} logship{}", handler.banner()),
    )
    .write(&mut out);
    let mut s = Session {
        mode,
        hostname,
        limits,
        budget,
        handler,
        env: None,
        data: Vec::new(),
        held: None,
        line: Vec::new(),
        authenticated: false,
        auth_failures: 0,
        mailed: false,
    };
    let mut state = State::Command;
    let mut buf = vec![0u8; READ_BUF];
    loop {
        if !out.is_empty() {
            send(&mut io, &mut out, limits.idle).await?;
        }
        let before_mail = (!s.mailed).then(|| limits.before_mail.saturating_sub(started.elapsed()));
        let wait = before_mail.map_or(limits.idle, |b| b.min(limits.idle));
        let n = match tokio::time::timeout(wait, io.read(&mut buf)).await {
            Err(_) => {
                let why = if before_mail.is_some_and(|b| b < limits.idle) {
                    "no mail transaction in time"
                } else {
                    "idle too long"
                };
                Reply::new(421, [4, 4, 2], format!("{hostname} {why}, closing")).write(&mut out);
                let _ = send(&mut io, &mut out, limits.idle).await;
                return Ok(());
            }
            Ok(Ok(0)) => return Ok(()),
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(e),
        };
        let mut rest: &[u8] = &buf[..n];
        loop {
            if out.len() >= OUT_FLUSH {
                send(&mut io, &mut out, limits.idle).await?;
            }
            match &mut state {
                State::SkipLine => match memchr(rest) {
                    Some(p) => {
                        rest = &rest[p + 1..];
                        state = State::Command;
                    }
                    None => break,
                },
                State::Command | State::Auth { .. } => {
                    let max = if matches!(state, State::Command) {
                        limits.max_line
                    } else {
                        MAX_AUTH_LINE
                    };
                    let line = match take_line(&mut s.line, &mut rest, max) {
                        Line::Whole(line) => line,
                        Line::More => break,
                        Line::TooLong { ended } => {
                            let auth = matches!(state, State::Auth { .. });
                            state = if ended {
                                State::Command
                            } else {
                                State::SkipLine
                            };
                            if !auth {
                                Reply::new(500, [5, 5, 2], "line too long").write(&mut out);
                            } else if s.auth_failed(&mut out) {
                                return finish(&mut io, &mut out, limits).await;
                            }
                            continue;
                        }
                    };
                    if let State::Auth { challenge, secret } = &state {
                        let (challenge, secret) = (challenge.clone(), secret.clone());
                        state = State::Command;
                        if s.auth_response(&secret, &challenge, &line, &mut out) {
                            return finish(&mut io, &mut out, limits).await;
                        }
                        continue;
                    }
                    match s.command(&line, &mut out) {
                        Next::Command => {}
                        Next::Data => {
                            s.data = Vec::new();
                            state = State::Data(data_receiver());
                        }
                        Next::Auth { challenge, secret } => {
                            state = State::Auth { challenge, secret }
                        }
                        Next::SkipChunk(n) => {
                            state = State::SkipChunk(DummyDataReceiver::new_bdat(n));
                        }
                        Next::Quit => return finish(&mut io, &mut out, limits).await,
                    }
                }
                State::Data(rx) => {
                    // The buffer never grows past what the budget covers:
                    // room for this whole read is reserved first.
                    if !s.room_for(rest.len()) {
                        let d = DummyDataReceiver::new_data(rx);
                        s.release();
                        state = State::Discard(d, Refusal::NoMemory);
                        continue;
                    }
                    let mut iter = rest.iter();
                    let done = rx.ingest(&mut iter, &mut s.data);
                    rest = iter.as_slice();
                    if done {
                        state = State::Command;
                        // What the client sent so far is answered first.
                        send(&mut io, &mut out, limits.idle).await?;
                        s.message(&mut out).await;
                    } else if s.data.len() > limits.max_message {
                        let d = DummyDataReceiver::new_data(rx);
                        s.release();
                        state = State::Discard(d, Refusal::TooBig);
                    } else {
                        break;
                    }
                }
                State::Discard(rx, why) => {
                    let mut iter = rest.iter();
                    let done = rx.ingest(&mut iter);
                    rest = iter.as_slice();
                    if done {
                        let e = s.env.take().unwrap_or_default();
                        s.refuse(*why, &e, &mut out);
                        state = State::Command;
                    } else {
                        break;
                    }
                }
                State::SkipChunk(rx) => {
                    let mut iter = rest.iter();
                    let done = rx.ingest(&mut iter);
                    rest = iter.as_slice();
                    if done {
                        state = State::Command;
                    } else {
                        break;
                    }
                }
            }
        }
    }
}

/// Writes what is pending (bounded in time: a client that does not read
/// its replies is dropped).
async fn send<S: AsyncWrite + Unpin>(
    io: &mut S,
    out: &mut Vec<u8>,
    limit: Duration,
) -> std::io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    match tokio::time::timeout(limit, io.write_all(out)).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client does not read its replies",
            ));
        }
    }
    out.clear();
    Ok(())
}

/// Sends the last replies and ends the session.
async fn finish<S: AsyncWrite + Unpin>(
    io: &mut S,
    out: &mut Vec<u8>,
    limits: &Limits,
) -> std::io::Result<()> {
    send(io, out, limits.idle).await?;
    let _ = io.shutdown().await;
    Ok(())
}

fn memchr(b: &[u8]) -> Option<usize> {
    b.iter().position(|c| *c == b'\n')
}

/// What `take_line` found.
enum Line {
    /// A whole line, LF included.
    Whole(Vec<u8>),
    /// All the input is taken, the line goes on.
    More,
    /// The line is longer than allowed: forgotten, and the input taken up
    /// to its end (`ended`) or as far as it was read.
    TooLong { ended: bool },
}

/// Moves bytes from `rest` into `line` up to and including a LF. `line`
/// never holds more than `max` bytes.
fn take_line(line: &mut Vec<u8>, rest: &mut &[u8], max: usize) -> Line {
    let room = (max + 1).saturating_sub(line.len());
    let window = &rest[..rest.len().min(room)];
    match memchr(window) {
        Some(p) => {
            let whole = line.len() + p < max;
            if whole {
                line.extend_from_slice(&rest[..=p]);
            }
            *rest = &rest[p + 1..];
            if whole {
                Line::Whole(std::mem::take(line))
            } else {
                line.clear();
                Line::TooLong { ended: true }
            }
        }
        None if line.len() + window.len() > max => {
            *rest = &rest[window.len()..];
            line.clear();
            Line::TooLong { ended: false }
        }
        None => {
            line.extend_from_slice(window);
            *rest = &rest[window.len()..];
            Line::More
        }
    }
}

/// The raw bytes of the path in a MAIL or RCPT line: between the first `<`
/// and the `>` after it.
fn raw_path(line: &[u8]) -> Option<&[u8]> {
    let start = line.iter().position(|b| *b == b'<')? + 1;
    let len = line[start..].iter().position(|b| *b == b'>')?;
    Some(&line[start..start + len])
}

/// The value of MAIL's SIZE parameter read from the raw line, where
/// smtp-proto wraps a value too large for a usize round to a small one:
/// `Some(None)` when it does not fit in a u64.
fn raw_size(line: &[u8]) -> Option<Option<u64>> {
    let params = &line[line.iter().position(|b| *b == b'>')? + 1..];
    let word = params
        .split(|b| b.is_ascii_whitespace())
        .find(|w| w.len() >= 5 && w[..5].eq_ignore_ascii_case(b"SIZE="))?;
    let digits = &word[5..];
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        std::str::from_utf8(digits)
            .ok()
            .and_then(|d| d.parse::<u64>().ok()),
    )
}

enum Next {
    Command,
    Data,
    Auth { challenge: String, secret: Vec<u8> },
    SkipChunk(usize),
    Quit,
}

impl<H: Handler> Session<'_, H> {
    /// Makes room for `more` bytes of DATA within the budget: the buffer
    /// grows in steps (up to the message limit), reserved before it grows;
    /// false when the budget cannot cover even what is needed.
    fn room_for(&mut self, more: usize) -> bool {
        let need = self.data.len() + more;
        if need <= self.data.capacity() {
            return true;
        }
        // A quarter more (within 64 KiB..4 MiB) each time: few copies, and
        // one large message does not take the budget from the small ones.
        let cap = self.data.capacity();
        let step = (cap / 4).clamp(BUDGET_CHUNK, 4 << 20);
        let ceiling = self.limits.max_message + READ_BUF;
        let target = need
            .max((cap + step).min(ceiling))
            .next_multiple_of(BUDGET_CHUNK);
        let target = if self.budget.grow(&mut self.held, target) {
            target
        } else {
            let exact = need.next_multiple_of(BUDGET_CHUNK);
            if !self.budget.grow(&mut self.held, exact) {
                return false;
            }
            exact
        };
        self.data.reserve_exact(target - self.data.len());
        true
    }

    /// Gives back the message buffer and its budget.
    fn release(&mut self) {
        self.data = Vec::new();
        self.held = None;
    }

    /// The message read to its end: normalised, checked, handed over.
    async fn message(&mut self, out: &mut Vec<u8>) {
        let e = self.env.take().unwrap_or_default();
        let data = std::mem::take(&mut self.data);
        // Normalising copies the message when it has bare LFs: the copy is
        // reserved too.
        let bare = bare_lfs(&data);
        let stored = data.len() + bare;
        if stored > self.limits.max_message {
            self.release();
            return self.refuse(Refusal::TooBig, &e, out);
        }
        if bare > 0 {
            let held = self.held.as_ref().map_or(0, |p| p.num_permits()) * BUDGET_CHUNK;
            if !self.budget.grow(&mut self.held, held + stored) {
                self.release();
                return self.refuse(Refusal::NoMemory, &e, out);
            }
        }
        let message = normalize_counted(data, bare);
        let count = if self.mode == Mode::Lmtp {
            e.rcpts.len()
        } else {
            1
        };
        let mut replies = self.handler.data(e, message).await;
        // The budget is given back once the handler is done with it.
        self.release();
        replies.resize(
            count,
            Reply::new(451, [4, 3, 0], "no reply for this recipient"),
        );
        for r in &replies {
            r.write(out);
        }
    }

    /// 552 or 452 for the message (per recipient in LMTP).
    fn refuse(&self, why: Refusal, env: &Envelope, out: &mut Vec<u8>) {
        let count = if self.mode == Mode::Lmtp {
            env.rcpts.len()
        } else {
            1
        };
        let r = match why {
            Refusal::TooBig => Reply::new(
                552,
                [5, 3, 4],
                format!("message larger than {} bytes", self.limits.max_message),
            ),
            Refusal::NoMemory => Reply::new(
                452,
                [4, 3, 1],
                "insufficient system storage, try again later",
            ),
        };
        for _ in 0..count {
            r.write(out);
        }
    }

    /// A failed AUTH: 535, or 421 at the last allowed failure (true: close).
    fn auth_failed(&mut self, out: &mut Vec<u8>) -> bool {
        self.auth_failures += 1;
        if self.auth_failures >= MAX_AUTH_FAILURES {
            Reply::new(
                421,
                [4, 7, 0],
                format!(
                    "{} too many authentication failures, closing",
                    self.hostname
                ),
            )
            .write(out);
            return true;
        }
        Reply::new(535, [5, 7, 8], "authentication failed").write(out);
        false
    }

    /// The client's line after `334`; true when the session must close.
    fn auth_response(
        &mut self,
        secret: &[u8],
        challenge: &str,
        line: &[u8],
        out: &mut Vec<u8>,
    ) -> bool {
        let text = line.strip_suffix(b"\n").unwrap_or(line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if text == b"*" {
            Reply::new(501, [5, 7, 0], "authentication cancelled").write(out);
            return false;
        }
        match cram_md5_check(secret, challenge, text) {
            Ok(user) => {
                tracing::debug!(user = %user.escape_debug(), "authenticated (CRAM-MD5)");
                self.authenticated = true;
                Reply::new(235, [2, 7, 0], "authenticated").write(out);
                false
            }
            Err(AuthError::Decode) if self.auth_failures + 1 < MAX_AUTH_FAILURES => {
                self.auth_failures += 1;
                Reply::new(501, [5, 5, 2], "the response is not base64").write(out);
                false
            }
            Err(_) => self.auth_failed(out),
        }
    }

    /// One whole command line.
    fn command(&mut self, line: &[u8], out: &mut Vec<u8>) -> Next {
        // smtp-proto wants a domain in every path: `<postmaster>` is made
        // `<postmaster@domain>` first (RFC 5321 §4.5.1).
        let rewritten;
        let line = match postmaster(line) {
            Some(range) if self.env.is_some() => {
                let Some(domain) = self.handler.postmaster_domain() else {
                    Reply::new(550, [5, 1, 1], "no postmaster here").write(out);
                    return Next::Command;
                };
                let mut l = line[..range.start].to_vec();
                l.extend_from_slice(format!("postmaster@{domain}").as_bytes());
                l.extend_from_slice(&line[range.end..]);
                rewritten = l;
                &rewritten[..]
            }
            _ => line,
        };
        let req = match Request::parse(&mut line.iter()) {
            Ok(r) => r.into_owned(),
            Err(smtp_proto::Error::InvalidParameter { param: "SIZE" })
                if raw_size(line) == Some(None) =>
            {
                too_big(self.limits).write(out);
                return Next::Command;
            }
            Err(e) => {
                syntax_error(e).write(out);
                return Next::Command;
            }
        };
        let (mode, hostname, limits, handler) =
            (self.mode, self.hostname, self.limits, self.handler);
        let env = &mut self.env;
        match req {
            Request::Ehlo { .. } | Request::Helo { .. } if mode == Mode::Lmtp => {
                Reply::new(500, [5, 5, 1], "this is an LMTP server: LHLO").write(out);
            }
            Request::Lhlo { .. } if mode == Mode::Smtp => {
                Reply::new(500, [5, 5, 1], "this is an SMTP server: EHLO").write(out);
            }
            Request::Ehlo { .. } | Request::Lhlo { .. } => {
                *env = None;
                // Written here: smtp-proto's EhloResponse greets LHLO as EHLO.
                let mut caps = vec![
                    sanitize(hostname),
                    "PIPELINING".into(),
                    "8BITMIME".into(),
                    "SMTPUTF8".into(),
                    "ENHANCEDSTATUSCODES".into(),
                ];
                if mode == Mode::Lmtp {
                    caps.push("DSN".into());
                }
                if handler.auth_secret().is_some() {
                    caps.push("AUTH CRAM-MD5".into());
                }
                caps.push(format!("SIZE {}", limits.max_message));
                let last = caps.len() - 1;
                for (i, c) in caps.iter().enumerate() {
                    let sep = if i == last { ' ' } else { '-' };
                    out.extend_from_slice(format!("250{sep}{c}\r\n").as_bytes());
                }
            }
            Request::Helo { .. } => {
                *env = None;
                Reply::new(250, [2, 0, 0], hostname).write(out);
            }
            Request::Auth {
                mechanism,
                initial_response,
            } => {
                let Some(secret) = handler.auth_secret() else {
                    Reply::new(503, [5, 5, 1], "AUTH is not offered").write(out);
                    return Next::Command;
                };
                if self.authenticated {
                    Reply::new(503, [5, 5, 1], "already authenticated").write(out);
                } else if env.is_some() {
                    Reply::new(503, [5, 5, 1], "AUTH within a mail transaction").write(out);
                } else if mechanism != smtp_proto::AUTH_CRAM_MD5 {
                    Reply::new(504, [5, 5, 4], "mechanism not supported: use CRAM-MD5").write(out);
                } else if !initial_response.is_empty() {
                    Reply::new(501, [5, 5, 4], "CRAM-MD5 takes no initial response").write(out);
                } else {
                    match challenge(hostname) {
                        Ok(challenge) => {
                            use base64::Engine;
                            let b64 = base64::engine::general_purpose::STANDARD.encode(&challenge);
                            Reply::new(334, [0, 0, 0], b64).write(out);
                            return Next::Auth { challenge, secret };
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "no randomness for a challenge");
                            Reply::new(454, [4, 7, 0], "temporary authentication failure")
                                .write(out);
                        }
                    }
                }
            }
            Request::Mail { from } => {
                let size = raw_size(line);
                if handler.auth_secret().is_some() && !self.authenticated {
                    Reply::new(530, [5, 7, 0], "authentication required").write(out);
                } else if env.is_some() {
                    Reply::new(503, [5, 5, 1], "MAIL already given (RSET first)").write(out);
                } else if raw_path(line).is_some_and(|p| std::str::from_utf8(p).is_err()) {
                    not_utf8(553, [5, 1, 7]).write(out);
                } else if std::str::from_utf8(line).is_err() {
                    Reply::new(501, [5, 5, 4], "parameters are not valid UTF-8").write(out);
                } else if from.flags & smtp_proto::MAIL_BODY_BINARYMIME != 0 {
                    Reply::new(504, [5, 5, 4], "BODY=BINARYMIME is not offered").write(out);
                } else if from.size > limits.max_message
                    || size.is_some_and(|s| s.is_none_or(|s| s > limits.max_message as u64))
                {
                    too_big(limits).write(out);
                } else if !from.address.is_empty() && !plain_address(&from.address) {
                    not_plain(&from.address).write(out);
                } else if let Some(r) = handler.mail(&from.address) {
                    r.write(out);
                } else {
                    *env = Some(Envelope {
                        from: from.address,
                        rcpts: Vec::new(),
                        envid: from.env_id,
                    });
                    self.mailed = true;
                    // An active node repeats its epoch here: the client may
                    // have connected (and been greeted) just before it
                    // became active.
                    Reply::new(250, [2, 1, 0], format!("sender ok{}", handler.banner())).write(out);
                }
            }
            Request::Rcpt { to } => {
                let address = to.address;
                let Some(e) = env else {
                    Reply::new(503, [5, 5, 1], "MAIL first").write(out);
                    return Next::Command;
                };
                if address.is_empty() {
                    Reply::new(501, [5, 1, 3], "an empty recipient address").write(out);
                    return Next::Command;
                }
                if e.rcpts.len() >= limits.max_recipients {
                    Reply::new(452, [4, 5, 3], "too many recipients").write(out);
                    return Next::Command;
                }
                if raw_path(line).is_some_and(|p| std::str::from_utf8(p).is_err()) {
                    not_utf8(553, [5, 1, 3]).write(out);
                    return Next::Command;
                }
                if !plain_address(&address) {
                    not_plain(&address).write(out);
                } else if let Some(r) = handler.rcpt(&address) {
                    r.write(out);
                } else {
                    e.rcpts.push(address);
                    Reply::new(250, [2, 1, 5], "recipient ok").write(out);
                }
            }
            Request::Data => match env {
                Some(e) if !e.rcpts.is_empty() => {
                    Reply::new(354, [0, 0, 0], "send the message, end with <CRLF>.<CRLF>")
                        .write(out);
                    return Next::Data;
                }
                Some(_) => Reply::new(554, [5, 5, 1], "no valid recipients").write(out),
                None => Reply::new(503, [5, 5, 1], "MAIL first").write(out),
            },
            Request::Bdat { chunk_size, .. } => {
                Reply::new(503, [5, 5, 1], "CHUNKING is not offered; use DATA").write(out);
                *env = None;
                return Next::SkipChunk(chunk_size);
            }
            Request::Rset => {
                *env = None;
                Reply::new(250, [2, 0, 0], "reset").write(out);
            }
            Request::Noop { .. } => Reply::new(250, [2, 0, 0], "ok").write(out),
            Request::Vrfy { .. } => {
                Reply::new(252, [2, 5, 2], "cannot verify; send and see").write(out)
            }
            Request::Quit => {
                Reply::new(221, [2, 0, 0], format!("{hostname} closing")).write(out);
                return Next::Quit;
            }
            Request::StartTls => Reply::new(454, [4, 7, 0], "TLS not available").write(out),
            other => {
                Reply::new(502, [5, 5, 1], format!("{} not implemented", other.name())).write(out)
            }
        }
        Next::Command
    }
}

fn syntax_error(e: smtp_proto::Error) -> Reply {
    use smtp_proto::Error::*;
    match e {
        UnknownCommand => Reply::new(500, [5, 5, 1], "unknown command"),
        InvalidSenderAddress => Reply::new(501, [5, 1, 7], "bad sender address"),
        InvalidRecipientAddress => Reply::new(501, [5, 1, 3], "bad recipient address"),
        SyntaxError { syntax } => Reply::new(501, [5, 5, 4], format!("syntax: {syntax}")),
        InvalidParameter { param } => Reply::new(501, [5, 5, 4], format!("bad parameter {param}")),
        UnsupportedParameter { param } => {
            Reply::new(504, [5, 5, 4], format!("parameter {param} not supported"))
        }
        ResponseTooLong => Reply::new(500, [5, 5, 2], "line too long"),
        NeedsMoreData { .. } => Reply::new(500, [5, 5, 2], "incomplete command"),
        other => Reply::new(500, [5, 5, 2], format!("{other:?}")),
    }
}

fn too_big(limits: &Limits) -> Reply {
    Reply::new(
        552,
        [5, 3, 4],
        format!("message larger than {} bytes", limits.max_message),
    )
}

/// Where `postmaster` (any case, no domain) is in a `RCPT TO:<postmaster>`
/// line.
fn postmaster(line: &[u8]) -> Option<std::ops::Range<usize>> {
    if line.len() < 8 || !line[..8].eq_ignore_ascii_case(b"RCPT TO:") {
        return None;
    }
    let path = raw_path(line)?;
    if !path.eq_ignore_ascii_case(b"postmaster") {
        return None;
    }
    let start = path.as_ptr() as usize - line.as_ptr() as usize;
    Some(start..start + path.len())
}

fn not_utf8(code: u16, esc: [u8; 3]) -> Reply {
    Reply::new(code, esc, "the address is not valid UTF-8")
}

/// True when `addr` can be written back in an envelope as it is: its
/// local part is a dot-atom (RFC 5321), UTF-8 allowed. The parser has
/// already removed the quotes of a quoted local part (`"a b"@x` arrives
/// as `a b@x`), so such an address could not be relayed faithfully: it is
/// refused before the message is accepted rather than dropped after.
pub fn plain_address(addr: &str) -> bool {
    let Some((local, domain)) = addr.rsplit_once('@') else {
        return false;
    };
    let atext =
        |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii();
    !local.is_empty()
        && !domain.is_empty()
        && local
            .split('.')
            .all(|atom| !atom.is_empty() && atom.chars().all(atext))
}

fn not_plain(addr: &str) -> Reply {
    Reply::new(
        553,
        [5, 1, 3],
        format!(
            "{:?}: only plain addresses (a dot-atom local part, no quotes) are taken",
            addr.chars().take(100).collect::<String>()
        ),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// Accepts everything to example.com and records what it was given.
    #[derive(Debug, Default)]
    struct Recorder {
        got: Mutex<Vec<(Envelope, Vec<u8>)>>,
        secret: Option<Vec<u8>>,
        postmaster: Option<String>,
        /// The text of the reply to DATA (else "stored").
        reply: Option<String>,
    }

    impl Recorder {
        fn keyed(secret: &[u8]) -> Arc<Recorder> {
            Arc::new(Recorder {
                secret: Some(secret.to_vec()),
                ..Default::default()
            })
        }
    }

    impl Handler for Arc<Recorder> {
        fn postmaster_domain(&self) -> Option<String> {
            self.postmaster.clone()
        }
        fn auth_secret(&self) -> Option<Vec<u8>> {
            self.secret.clone()
        }
        fn mail(&self, _from: &str) -> Option<Reply> {
            None
        }
        fn rcpt(&self, to: &str) -> Option<Reply> {
            // The address echoed raw, as the probe found a handler might.
            (!to.ends_with("@example.com"))
                .then(|| Reply::new(550, [5, 1, 2], format!("{to}: not here\r\nfake\rbare\n")))
        }
        async fn data(&self, env: Envelope, data: Vec<u8>) -> Vec<Reply> {
            let n = env.rcpts.len();
            self.got.lock().unwrap().push((env, data));
            let text = self.reply.clone().unwrap_or_else(|| "stored".into());
            vec![Reply::ok(text); n]
        }
    }

    /// Every byte the server wrote is reply lines: `\d{3}[ -]text\r\n`,
    /// no CR or LF inside a line; the number of lines.
    fn well_formed(out: &[u8]) -> Result<usize, String> {
        let mut n = 0;
        let mut rest = out;
        while !rest.is_empty() {
            let end = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or_else(|| format!("unterminated: {:?}", String::from_utf8_lossy(rest)))?;
            let line = &rest[..end];
            let ok = line.len() >= 4
                && line[..3].iter().all(u8::is_ascii_digit)
                && (line[3] == b' ' || line[3] == b'-')
                && !line.iter().any(|b| *b == b'\r' || *b == b'\n');
            if !ok {
                return Err(format!("malformed: {:?}", String::from_utf8_lossy(line)));
            }
            n += 1;
            rest = &rest[end + 2..];
        }
        Ok(n)
    }

    /// A client driving a session step by step (for AUTH, whose challenge
    /// must be read before answering).
    struct Peer {
        rd: tokio::io::BufReader<tokio::io::ReadHalf<tokio::io::DuplexStream>>,
        wr: tokio::io::WriteHalf<tokio::io::DuplexStream>,
        server: tokio::task::JoinHandle<std::io::Result<()>>,
    }

    impl Peer {
        fn start(mode: Mode, limits: Limits, budget: Budget, h: Arc<Recorder>) -> Peer {
            let (c, s) = tokio::io::duplex(1 << 16);
            let server =
                tokio::spawn(async move { serve(s, mode, "test", &limits, &budget, &h).await });
            let (rd, wr) = tokio::io::split(c);
            Peer {
                rd: tokio::io::BufReader::new(rd),
                wr,
                server,
            }
        }

        /// Sends `line` (CRLF added).
        async fn send(&mut self, line: &str) {
            self.wr.write_all(line.as_bytes()).await.unwrap();
            self.wr.write_all(b"\r\n").await.unwrap();
        }

        /// The next whole reply (all its lines); empty at EOF.
        async fn reply(&mut self) -> String {
            use tokio::io::AsyncBufReadExt;
            let mut all = String::new();
            loop {
                let mut l = String::new();
                let read = tokio::time::timeout(Duration::from_secs(10), self.rd.read_line(&mut l));
                if read.await.expect("a reply in time").unwrap() == 0 {
                    return all;
                }
                all.push_str(&l);
                if l.as_bytes().get(3) != Some(&b'-') {
                    return all;
                }
            }
        }

        async fn says(&mut self, line: &str) -> String {
            self.send(line).await;
            self.reply().await
        }
    }

    /// Runs one session in `mode` with `limits`, sends `input` in the given
    /// pieces, and returns everything the server said.
    async fn session(mode: Mode, limits: Limits, pieces: &[&[u8]]) -> (String, Arc<Recorder>) {
        let rec = Arc::new(Recorder::default());
        let out = session_with(mode, limits, pieces, &rec).await;
        (String::from_utf8_lossy(&out).into_owned(), rec)
    }

    /// The same with a given handler; the raw bytes the server wrote.
    async fn session_with<H: Handler>(
        mode: Mode,
        limits: Limits,
        pieces: &[&[u8]],
        handler: &H,
    ) -> Vec<u8> {
        let budget = Budget::new(limits.data_budget);
        session_in(mode, limits, pieces, handler, &budget).await
    }

    async fn session_in<H: Handler>(
        mode: Mode,
        limits: Limits,
        pieces: &[&[u8]],
        handler: &H,
        budget: &Budget,
    ) -> Vec<u8> {
        let (mut c, s) = tokio::io::duplex(4096);
        let server = serve(s, mode, "test", &limits, budget, handler);
        let client = async move {
            let (mut rd, mut wr) = tokio::io::split(&mut c);
            let write = async {
                for p in pieces {
                    if wr.write_all(p).await.is_err() {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
                let _ = wr.shutdown().await;
            };
            let mut out = Vec::new();
            let read = rd.read_to_end(&mut out);
            let (_, r) = tokio::join!(write, read);
            r.unwrap();
            out
        };
        let (r, out) = tokio::join!(server, client);
        r.unwrap();
        out
    }

    fn codes(out: &str) -> Vec<u16> {
        out.lines()
            .filter(|l| l.len() >= 4 && l.as_bytes()[3] == b' ')
            .map(|l| l[..3].parse().unwrap())
            .collect()
    }

    #[tokio::test]
    async fn lmtp_answers_each_recipient_and_pipelined_commands_in_order() {
        let input: &[u8] = b"LHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@example.com>\r\nRCPT TO:<z@else.org>\r\nRCPT TO:<c@example.com>\r\nDATA\r\nSubject: t\r\n\r\n..dot\r\n.\r\nQUIT\r\n";
        let (out, rec) = session(Mode::Lmtp, Limits::default(), &[input]).await;
        assert_eq!(
            codes(&out),
            vec![220, 250, 250, 250, 550, 250, 354, 250, 250, 221],
            "{out}"
        );
        let got = rec.got.lock().unwrap();
        assert_eq!(got[0].0.rcpts, vec!["b@example.com", "c@example.com"]);
        assert_eq!(got[0].1, b"Subject: t\r\n\r\n.dot\r\n");
    }

    #[tokio::test]
    async fn bad_input_is_refused_and_the_session_goes_on() {
        let long = format!("NOOP {}\r\n", "x".repeat(5000));
        let input = [
            b"EHLO c\r\nFROBNICATE\r\nRCPT TO:<b@example.com>\r\n".as_slice(),
            long.as_bytes(),
            b"MAIL FROM:<a@x> SIZE=999999999\r\nMAIL FROM:<a@x>\r\nRCPT TO:<>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n".as_slice(),
            // Bare LF line ends are normalised; the empty-first-line bug is avoided.
            b"Subject: lf\nbody\n\r\n.\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n.\r\nQUIT\r\n".as_slice(),
        ];
        let (out, rec) = session(Mode::Smtp, Limits::default(), &input).await;
        assert_eq!(
            codes(&out),
            vec![
                220, 250, 500, 503, 500, 552, 250, 501, 250, 354, 250, 250, 250, 354, 250, 221
            ],
            "{out}"
        );
        let got = rec.got.lock().unwrap();
        assert_eq!(got[0].1, b"Subject: lf\r\nbody\r\n\r\n");
        assert_eq!(got[1].1, b"");
    }

    #[tokio::test]
    async fn an_oversize_message_is_read_to_its_end_and_refused_per_recipient() {
        let limits = Limits {
            max_message: 100,
            ..Default::default()
        };
        let body = format!("Subject: big\r\n\r\n{}\r\n.\r\n", "y".repeat(300));
        let input = [
            b"LHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@example.com>\r\nRCPT TO:<c@example.com>\r\nDATA\r\n".as_slice(),
            body.as_bytes(),
            b"NOOP\r\nQUIT\r\n".as_slice(),
        ];
        let (out, rec) = session(Mode::Lmtp, limits, &input).await;
        assert_eq!(
            codes(&out),
            vec![220, 250, 250, 250, 250, 354, 552, 552, 250, 221],
            "{out}"
        );
        assert!(rec.got.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn the_size_limit_counts_the_message_as_stored_with_crlf_line_ends() {
        let limits = Limits {
            max_message: 100,
            ..Default::default()
        };
        // 91 bytes as sent, 105 once each bare LF is CRLF.
        let body = format!("{}abcde\r\n.\r\n", "abcde\n".repeat(14));
        assert!(body.len() <= 100);
        let input = [
            b"EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n".as_slice(),
            body.as_bytes(),
            b"QUIT\r\n".as_slice(),
        ];
        let (out, rec) = session(Mode::Smtp, limits, &input).await;
        assert_eq!(
            codes(&out),
            vec![220, 250, 250, 250, 354, 552, 221],
            "{out}"
        );
        assert!(rec.got.lock().unwrap().is_empty());
        // The node takes a relay's limit and room for what a relay adds.
        assert!(Limits::node().max_message > Limits::default().max_message);
    }

    #[tokio::test]
    async fn a_client_gone_mid_data_leaves_nothing_and_bdat_is_skipped() {
        let (_, rec) = session(
            Mode::Smtp,
            Limits::default(),
            &[b"EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@example.com>\r\nDATA\r\nSubject: half\r\n"],
        )
        .await;
        assert!(rec.got.lock().unwrap().is_empty());
        let (out, rec) = session(
            Mode::Smtp,
            Limits::default(),
            &[b"EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@example.com>\r\nBDAT 12 LAST\r\nQUIT\r\nQUIT\r\nNOOP\r\nQUIT\r\n"],
        )
        .await;
        // The 12 bytes after BDAT ("QUIT\r\nQUIT\r\n") are skipped, not obeyed.
        assert_eq!(
            codes(&out),
            vec![220, 250, 250, 250, 503, 250, 221],
            "{out}"
        );
        assert!(rec.got.lock().unwrap().is_empty());
    }

    #[test]
    fn only_plain_addresses_are_taken() {
        for ok in [
            "a@example.com",
            "a.b+c@example.com",
            "Ünïcode@example.com",
            "x!#$%&'*/=?^_`{|}~-@d",
        ] {
            assert!(plain_address(ok), "{ok}");
        }
        for bad in [
            "a b@example.com",
            "a\"b@example.com",
            "a@evil.com@example.com",
            ".a@x",
            "a.@x",
            "a..b@x",
            "a>b@x",
            "a@",
            "@x",
            "nodomain",
            "a,b@x",
            "a(b)@x",
        ] {
            assert!(!plain_address(bad), "{bad}");
        }
    }

    /// An SMTP listener on loopback under `limits`, each connection a
    /// session as the real listeners run them.
    async fn listen(limits: Limits) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let rec = Arc::new(Recorder::default());
        let sessions = limits.sessions();
        tokio::spawn(async move {
            loop {
                let (stream, peer) = listener.accept().await.unwrap();
                spawn_session(
                    &sessions,
                    stream,
                    peer,
                    Mode::Smtp,
                    "test".into(),
                    limits.clone(),
                    rec.clone(),
                );
            }
        });
        addr
    }

    #[tokio::test]
    async fn sessions_beyond_the_limit_are_answered_421_and_closed() {
        let addr = listen(Limits {
            max_sessions: 2,
            ..Default::default()
        })
        .await;
        let greet = |mut c: TcpStream| async move {
            let mut buf = vec![0u8; 256];
            let n = c.read(&mut buf).await.unwrap();
            (c, String::from_utf8_lossy(&buf[..n]).into_owned())
        };
        let (a, ga) = greet(TcpStream::connect(addr).await.unwrap()).await;
        let (b, gb) = greet(TcpStream::connect(addr).await.unwrap()).await;
        assert!(ga.starts_with("220") && gb.starts_with("220"), "{ga} {gb}");
        let (mut c, gc) = greet(TcpStream::connect(addr).await.unwrap()).await;
        assert!(gc.starts_with("421"), "{gc}");
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "closed after 421");
        // A slot freed is a slot again.
        drop(a);
        drop(b);
        let mut ok = false;
        for _ in 0..100 {
            let (_d, gd) = greet(TcpStream::connect(addr).await.unwrap()).await;
            if gd.starts_with("220") {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(ok, "no slot after the sessions ended");
    }

    #[tokio::test]
    async fn a_session_is_closed_at_its_time_limit_however_busy() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = Limits {
            max_session: Duration::from_millis(300),
            ..Default::default()
        };
        let rec = Arc::new(Recorder::default());
        let sessions = limits.sessions();
        tokio::spawn(async move {
            let (stream, peer) = listener.accept().await.unwrap();
            spawn_session(
                &sessions,
                stream,
                peer,
                Mode::Smtp,
                "test".into(),
                limits,
                rec,
            );
        });
        let mut c = TcpStream::connect(addr).await.unwrap();
        let started = std::time::Instant::now();
        // A NOOP every 50 ms: never idle, but the session still ends.
        let mut buf = vec![0u8; 512];
        loop {
            if c.write_all(b"NOOP\r\n").await.is_err() {
                break;
            }
            match tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(_)) => {}
                Err(_) => panic!("no answer and not closed"),
            }
            assert!(started.elapsed() < Duration::from_secs(5), "never closed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(started.elapsed() >= Duration::from_millis(250));
    }

    fn b64(s: &str) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn unb64(s: &str) -> String {
        use base64::Engine;
        let d = base64::engine::general_purpose::STANDARD
            .decode(s.trim())
            .unwrap();
        String::from_utf8(d).unwrap()
    }

    /// Starts AUTH CRAM-MD5 and returns the challenge.
    async fn challenge_of(p: &mut Peer) -> String {
        let r = p.says("AUTH CRAM-MD5").await;
        assert!(r.starts_with("334 "), "{r}");
        unb64(&r[4..])
    }

    #[test]
    fn the_cram_md5_response_is_rfc_2195s_example() {
        // RFC 2195 §2: user tim, secret tanstaaftanstaaf.
        let c = "<1896.697170952@postoffice.reston.mci.net>";
        let r = cram_md5_response(b"tanstaaftanstaaf", c, "tim");
        assert_eq!(r, "dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw");
        assert_eq!(
            cram_md5_check(b"tanstaaftanstaaf", c, r.as_bytes()).unwrap(),
            "tim"
        );
        assert!(cram_md5_check(b"other", c, r.as_bytes()).is_err());
    }

    #[tokio::test]
    async fn a_keyed_handler_takes_mail_only_after_cram_md5() {
        let key = b"cluster key";
        let rec = Recorder::keyed(key);
        let limits = Limits::default();
        let mut p = Peer::start(
            Mode::Lmtp,
            limits.clone(),
            Budget::new(1 << 20),
            rec.clone(),
        );
        assert!(p.reply().await.starts_with("220 "));
        let caps = p.says("LHLO relay").await;
        assert!(caps.contains("250-AUTH CRAM-MD5\r\n"), "{caps}");
        assert!(caps.contains("250-DSN\r\n"), "{caps}");
        // MAIL before AUTH, another mechanism, a cancel, a wrong answer.
        assert!(p.says("MAIL FROM:<a@x>").await.starts_with("530 5.7.0 "));
        assert!(p.says("AUTH PLAIN").await.starts_with("504 5.5.4 "));
        let _ = challenge_of(&mut p).await;
        assert!(p.says("*").await.starts_with("501 "));
        let c = challenge_of(&mut p).await;
        assert!(
            c.starts_with('<') && c.ends_with("@test>") && c.contains('.'),
            "{c}"
        );
        let wrong = cram_md5_response(b"not the key", &c, "relay");
        assert!(p.says(&wrong).await.starts_with("535 5.7.8 "));
        // The challenge is new each time: an old answer does not do.
        let c2 = challenge_of(&mut p).await;
        assert_ne!(c, c2);
        let stale = cram_md5_response(key, &c, "relay");
        assert!(p.says(&stale).await.starts_with("535 5.7.8 "));
        let c3 = challenge_of(&mut p).await;
        let right = cram_md5_response(key, &c3, "relay");
        assert!(p.says(&right).await.starts_with("235 2.7.0 "));
        assert!(p.says("AUTH CRAM-MD5").await.starts_with("503 "));
        assert!(
            p.says("MAIL FROM:<a@x> ENVID=r1+2Bx")
                .await
                .starts_with("250 ")
        );
        assert!(p.says("RCPT TO:<b@example.com>").await.starts_with("250 "));
        assert!(p.says("DATA").await.starts_with("354 "));
        assert!(
            p.says("Subject: s\r\n\r\nbody\r\n.")
                .await
                .starts_with("250 ")
        );
        assert!(p.says("QUIT").await.starts_with("221 "));
        p.server.await.unwrap().unwrap();
        let got = rec.got.lock().unwrap();
        assert_eq!(got.len(), 1);
        // xtext-decoded.
        assert_eq!(got[0].0.envid.as_deref(), Some("r1+x"));
    }

    #[tokio::test]
    async fn three_failed_auths_close_the_session() {
        let rec = Recorder::keyed(b"k");
        let mut p = Peer::start(Mode::Smtp, Limits::default(), Budget::new(1 << 20), rec);
        p.reply().await;
        challenge_of(&mut p).await;
        assert!(p.says(&b64("u 00")).await.starts_with("535 "));
        challenge_of(&mut p).await;
        // Not base64 at all.
        assert!(p.says("!!!").await.starts_with("501 "));
        challenge_of(&mut p).await;
        // Over the length bound.
        let r = p.says(&"A".repeat(MAX_AUTH_LINE + 10)).await;
        assert!(r.starts_with("421 4.7.0 "), "{r}");
        assert_eq!(p.reply().await, "", "closed after 421");
        p.server.await.unwrap().unwrap();
        // Without a secret, AUTH is not offered.
        let rec = Arc::new(Recorder::default());
        let mut p = Peer::start(Mode::Smtp, Limits::default(), Budget::new(1 << 20), rec);
        p.reply().await;
        assert!(!p.says("EHLO c").await.contains("AUTH"));
        assert!(p.says("AUTH CRAM-MD5").await.starts_with("503 5.5.1 "));
        assert!(p.says("MAIL FROM:<a@x>").await.starts_with("250 "));
    }

    #[tokio::test]
    async fn postmaster_is_taken_when_the_handler_names_a_domain() {
        let input: &[u8] = b"EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<PostMaster>\r\nRCPT TO:<postmaster@elsewhere.org>\r\nDATA\r\n.\r\nQUIT\r\n";
        let rec = Arc::new(Recorder {
            postmaster: Some("example.com".into()),
            ..Default::default()
        });
        let out = session_with(Mode::Smtp, Limits::default(), &[input], &rec).await;
        let out = String::from_utf8(out).unwrap();
        assert_eq!(
            codes(&out),
            vec![220, 250, 250, 250, 550, 354, 250, 221],
            "{out}"
        );
        assert_eq!(
            rec.got.lock().unwrap()[0].0.rcpts,
            vec!["postmaster@example.com"]
        );
        // No domain: 550.
        let (out, _) = session(Mode::Smtp, Limits::default(), &[input]).await;
        assert_eq!(
            codes(&out),
            vec![220, 250, 250, 550, 550, 554, 500, 221],
            "{out}"
        );
    }

    #[tokio::test]
    async fn a_size_that_does_not_fit_is_refused_not_wrapped() {
        let input: &[u8] = b"EHLO c\r\nMAIL FROM:<a@x> SIZE=99999999999999999999999\r\nMAIL FROM:<a@x> SIZE=18446744073709551616\r\nMAIL FROM:<a@x> SIZE=1x\r\nMAIL FROM:<a@x> SIZE=1000\r\nQUIT\r\n";
        let (out, _) = session(Mode::Smtp, Limits::default(), &[input]).await;
        assert_eq!(
            codes(&out),
            vec![220, 250, 552, 552, 501, 250, 221],
            "{out}"
        );
    }

    #[tokio::test]
    async fn an_overlong_line_gets_exactly_one_500() {
        // 10 MB without CRLF, sent in pieces, then a NOOP: one 500, one 250.
        let big = vec![b'x'; 10 << 20];
        let pieces: Vec<&[u8]> = big.chunks(100_000).collect();
        let mut input = pieces.clone();
        input.push(b"\r\nNOOP\r\n");
        let (out, _) = session(Mode::Smtp, Limits::default(), &input).await;
        assert_eq!(codes(&out), vec![220, 500, 250], "{out}");
        // Pipelined: each overlong line one 500, in order; a line of exactly
        // the limit (CRLF included) is a command.
        let limit = Limits::default().max_line;
        let exact = format!("NOOP {}\r\n", "y".repeat(limit - 7));
        let over = format!("NOOP {}\r\n", "y".repeat(limit - 6));
        let input = format!("{over}{exact}{over}{over}NOOP\r\nQUIT\r\n");
        let (out, _) = session(Mode::Lmtp, Limits::default(), &[input.as_bytes()]).await;
        assert_eq!(
            codes(&out),
            vec![220, 500, 250, 500, 500, 250, 221],
            "{out}"
        );
        // And ending at EOF without its CRLF: still one.
        let (out, _) = session(Mode::Smtp, Limits::default(), &pieces).await;
        assert_eq!(codes(&out), vec![220, 500], "{out}");
    }

    #[tokio::test]
    async fn an_address_that_is_not_utf8_is_refused() {
        let input: &[u8] = b"EHLO c\r\nMAIL FROM:<a\xff@x>\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b\xfe\xff@example.com>\r\nRCPT TO:<b\xc3\xa9@example.com>\r\nDATA\r\n.\r\nQUIT\r\n";
        let (out, rec) = session(Mode::Smtp, Limits::default(), &[input]).await;
        assert_eq!(
            codes(&out),
            vec![220, 250, 553, 250, 553, 250, 354, 250, 221],
            "{out}"
        );
        assert_eq!(rec.got.lock().unwrap()[0].0.rcpts, vec!["bé@example.com"]);
    }

    #[tokio::test]
    async fn a_reply_text_with_cr_lf_is_written_as_one_line() {
        let rec = Arc::new(Recorder {
            reply: Some("stored <id\r\n\tcontinued ü>\r\n250 injected\u{7}".into()),
            ..Default::default()
        });
        let input: &[u8] = b"LHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<z@else.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n.\r\nQUIT\r\n";
        let out = session_with(Mode::Lmtp, Limits::default(), &[input], &rec).await;
        let text = String::from_utf8(out.clone()).unwrap();
        // 220, the LHLO lines, 250, 550, 250, 354, one 250, 221.
        let lhlo = text.lines().filter(|l| l.starts_with("250-")).count() + 1;
        assert_eq!(well_formed(&out), Ok(7 + lhlo), "{text}");
        assert!(
            text.contains("250 2.0.0 stored <id???continued ü>??250 injected?\r\n"),
            "{text}"
        );
        assert!(
            text.contains("z@else.org: not here??fake?bare?\r\n"),
            "{text}"
        );
        // Bounded, cut at a char boundary.
        let mut v = Vec::new();
        Reply::new(250, [2, 0, 0], "é".repeat(1000)).write(&mut v);
        let line = String::from_utf8(v).unwrap();
        assert_eq!(line.len(), "250 2.0.0 ".len() + MAX_REPLY_TEXT + 2);
        let mut v = Vec::new();
        Reply::new(7, [0, 0, 0], "odd").write(&mut v);
        assert_eq!(v, b"451 (reply code 7) odd\r\n");
    }

    #[tokio::test]
    async fn the_budget_refuses_a_large_message_with_452_while_a_small_one_goes_through() {
        let limits = Limits {
            max_message: 8 << 20,
            data_budget: 2 << 20,
            ..Default::default()
        };
        let budget = Budget::new(limits.data_budget);
        let big = Arc::new(Recorder::default());
        let mut a = Peer::start(Mode::Smtp, limits.clone(), budget.clone(), big.clone());
        a.reply().await;
        a.says("EHLO a").await;
        a.says("MAIL FROM:<a@x>").await;
        a.says("RCPT TO:<b@example.com>").await;
        assert!(a.says("DATA").await.starts_with("354"));
        let line = format!("{}\r\n", "z".repeat(998));
        let mb = line.repeat(1 << 10);
        a.wr.write_all(mb.as_bytes()).await.unwrap();
        // Wait (with a deadline) until the first MiB is held.
        let deadline = Instant::now() + Duration::from_secs(10);
        while budget.available() > budget.total() - (1 << 20) {
            assert!(Instant::now() < deadline, "the first MiB never reserved");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(budget.available() > 0);
        // Another session's small message still goes through.
        let small = Arc::new(Recorder::default());
        let input: &[u8] = b"EHLO b\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@example.com>\r\nDATA\r\nSubject: small\r\n\r\nhi\r\n.\r\nQUIT\r\n";
        let out = session_in(Mode::Smtp, limits.clone(), &[input], &small, &budget).await;
        let out = String::from_utf8(out).unwrap();
        assert_eq!(
            codes(&out),
            vec![220, 250, 250, 250, 354, 250, 221],
            "{out}"
        );
        // The large one grows past the budget: read to its end, then 452.
        for _ in 0..3 {
            a.wr.write_all(mb.as_bytes()).await.unwrap();
        }
        let r = a.says(".").await;
        assert!(
            r.starts_with("452 4.3.1 insufficient system storage"),
            "{r}"
        );
        // The session goes on, and the budget is whole again.
        assert_eq!(budget.available(), budget.total());
        assert!(a.says("NOOP").await.starts_with("250"));
        assert!(a.says("QUIT").await.starts_with("221"));
        a.server.await.unwrap().unwrap();
        assert!(big.got.lock().unwrap().is_empty());
        assert_eq!(small.got.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_session_gone_mid_data_gives_its_budget_back() {
        let limits = Limits::default();
        let budget = Budget::new(1 << 20);
        let rec = Arc::new(Recorder::default());
        let body = vec![b'q'; 500_000];
        let input = [
            b"EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n".as_slice(),
            &body,
        ];
        session_in(Mode::Smtp, limits, &input, &rec, &budget).await;
        assert_eq!(budget.available(), budget.total());
    }

    #[tokio::test]
    async fn one_address_holds_at_most_its_share_of_sessions() {
        let addr = listen(Limits {
            max_per_source: 2,
            ..Default::default()
        })
        .await;
        let from = |ip: [u8; 4]| async move {
            let s = tokio::net::TcpSocket::new_v4().unwrap();
            s.bind((std::net::Ipv4Addr::from(ip), 0).into()).unwrap();
            let mut c = s.connect(addr).await.unwrap();
            let mut buf = vec![0u8; 256];
            let n = c.read(&mut buf).await.unwrap();
            (c, String::from_utf8_lossy(&buf[..n]).into_owned())
        };
        let (_a, ga) = from([127, 0, 0, 2]).await;
        let (_b, gb) = from([127, 0, 0, 2]).await;
        assert!(ga.starts_with("220") && gb.starts_with("220"), "{ga} {gb}");
        let (mut c, gc) = from([127, 0, 0, 2]).await;
        assert_eq!(gc, "421 4.7.0 too many sessions from your address\r\n");
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "closed after 421");
        // Another address is served.
        let (_d, gd) = from([127, 0, 0, 3]).await;
        assert!(gd.starts_with("220"), "{gd}");
        // A session ended is a place again for its address.
        drop(_a);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_e, ge) = from([127, 0, 0, 2]).await;
            if ge.starts_with("220") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no place after a session ended: {ge}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_session_without_mail_in_time_is_closed() {
        let limits = Limits {
            before_mail: Duration::from_millis(300),
            ..Default::default()
        };
        let started = Instant::now();
        let mut p = Peer::start(
            Mode::Smtp,
            limits.clone(),
            Budget::new(1 << 20),
            Arc::default(),
        );
        p.reply().await;
        // Commands other than MAIL do not extend it.
        assert!(p.says("EHLO c").await.starts_with("250"));
        assert!(p.says("NOOP").await.starts_with("250"));
        let r = p.reply().await;
        assert!(
            r.starts_with("421 4.4.2 test no mail transaction in time"),
            "{r}"
        );
        assert_eq!(p.reply().await, "");
        assert!(started.elapsed() >= Duration::from_millis(300));
        p.server.await.unwrap().unwrap();
        // Once MAIL is accepted, only the idle limit applies.
        let mut p = Peer::start(Mode::Smtp, limits, Budget::new(1 << 20), Arc::default());
        p.reply().await;
        assert!(p.says("MAIL FROM:<a@x>").await.starts_with("250"));
        let quiet = tokio::time::timeout(Duration::from_millis(600), p.reply()).await;
        assert!(quiet.is_err(), "closed after MAIL: {quiet:?}");
        assert!(p.says("RCPT TO:<b@example.com>").await.starts_with("250"));
    }

    mod props {
        use proptest::prelude::*;

        use super::*;

        /// 256 cases per property unless `PROPTEST_CASES` says otherwise.
        fn config() -> ProptestConfig {
            let cases = std::env::var("PROPTEST_CASES")
                .ok()
                .and_then(|c| c.parse().ok())
                .unwrap_or(256);
            ProptestConfig {
                cases,
                failure_persistence: None,
                ..ProptestConfig::default()
            }
        }

        /// Small limits, so that the cases reach them.
        fn small() -> Limits {
            Limits {
                max_message: 3000,
                max_line: 300,
                max_recipients: 3,
                data_budget: 2 * BUDGET_CHUNK,
                ..Default::default()
            }
        }

        fn mode() -> impl Strategy<Value = Mode> {
            prop_oneof![Just(Mode::Smtp), Just(Mode::Lmtp)]
        }

        /// Lines a client might send, valid or nearly, and garbage.
        fn line() -> impl Strategy<Value = Vec<u8>> {
            let addr = prop_oneof![
                Just("b@example.com".to_string()),
                Just("postmaster".to_string()),
                Just("z@else.org".to_string()),
                Just(String::new()),
                "[a-z\u{e9}\"\\\\ .@<>]{0,12}",
            ];
            let size = prop_oneof![
                any::<u32>().prop_map(|n| n.to_string()),
                Just("99999999999999999999999".to_string()),
                "[0-9x]{0,30}",
            ];
            let text = any::<Vec<u8>>();
            prop_oneof![
                Just(b"EHLO c\r\n".to_vec()),
                Just(b"LHLO c\r\n".to_vec()),
                Just(b"HELO c\r\n".to_vec()),
                (addr.clone(), size)
                    .prop_map(
                        |(a, s)| format!("MAIL FROM:<{a}> SIZE={s} ENVID=x+41\r\n").into_bytes()
                    ),
                addr.clone()
                    .prop_map(|a| format!("MAIL FROM:<{a}>\r\n").into_bytes()),
                addr.prop_map(|a| format!("RCPT TO:<{a}>\r\n").into_bytes()),
                Just(b"DATA\r\n".to_vec()),
                text.clone().prop_map(|mut t| {
                    t.extend_from_slice(b"\r\n.\r\n");
                    t
                }),
                Just(b".\r\n".to_vec()),
                Just(b"RSET\r\nNOOP\r\n".to_vec()),
                Just(b"AUTH CRAM-MD5\r\n".to_vec()),
                Just(b"AUTH PLAIN AAAA\r\n".to_vec()),
                Just(b"*\r\n".to_vec()),
                "[A-Za-z0-9+/=]{0,60}".prop_map(|s| format!("{s}\r\n").into_bytes()),
                (0usize..40).prop_map(|n| format!("BDAT {n}\r\n").into_bytes()),
                (250usize..700).prop_map(|n| vec![b'x'; n]),
                text,
                Just(b"QUIT\r\n".to_vec()),
            ]
        }

        /// `bytes` cut at the given points.
        fn split(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
            cuts.sort_unstable();
            let mut pieces = Vec::new();
            let mut at = 0;
            for c in cuts.into_iter().chain([bytes.len()]) {
                pieces.push(bytes[at..c].to_vec());
                at = c;
            }
            pieces
        }

        /// Runs one session; what the server wrote, checked.
        fn check(
            mode: Mode,
            pieces: Vec<Vec<u8>>,
            handler: Arc<Recorder>,
        ) -> Result<(), TestCaseError> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let out = rt.block_on(async {
                let pieces: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
                let s = session_with(mode, small(), &pieces, &handler);
                tokio::time::timeout(Duration::from_secs(20), s).await
            });
            let out = out.map_err(|_| TestCaseError::fail("the session did not end"))?;
            prop_assert!(out.starts_with(b"220 "));
            if let Err(e) = well_formed(&out) {
                return Err(TestCaseError::fail(e));
            }
            Ok(())
        }

        fn handler() -> impl Strategy<Value = Arc<Recorder>> {
            (
                any::<bool>(),
                any::<bool>(),
                proptest::option::of("[a-z<>\r\n\t\u{85}\u{2028} ]{0,20}"),
            )
                .prop_map(|(keyed, pm, reply)| {
                    Arc::new(Recorder {
                        secret: keyed.then(|| b"k".to_vec()),
                        postmaster: pm.then(|| "example.com".into()),
                        reply,
                        ..Default::default()
                    })
                })
        }

        proptest! {
            #![proptest_config(config())]

            #[test]
            fn arbitrary_bytes_get_well_formed_replies(
                mode in mode(),
                bytes in proptest::collection::vec(any::<u8>(), 0..3000),
                cuts in proptest::collection::vec(any::<usize>(), 0..8),
                handler in handler(),
            ) {
                check(mode, split(&bytes, &cuts), handler)?;
            }

            #[test]
            fn command_sequences_with_garbage_get_well_formed_replies(
                mode in mode(),
                lines in proptest::collection::vec(line(), 0..40),
                cuts in proptest::collection::vec(any::<usize>(), 0..12),
                handler in handler(),
            ) {
                let bytes = lines.concat();
                check(mode, split(&bytes, &cuts), handler)?;
            }
        }
    }
}
