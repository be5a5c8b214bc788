//! The SMTP and LMTP server side, one session engine for both (smtp-proto
//! parses; this module keeps the state, the limits and the replies).
//!
//! What it does, per RFC 5321 / 2033 and what real clients send
//! (../shared/notes/smtp-lmtp.md): pipelining (replies are flushed when the
//! input is used up), SIZE checked at MAIL and while DATA arrives (552, the
//! session goes on), a cap on recipients (452), our own cap on command line
//! length (500), bare LF in a message normalised to CRLF, BDAT refused and
//! its chunk skipped, an idle timeout (421). In LMTP mode LHLO is the
//! greeting and there is one reply per accepted recipient after the data;
//! EHLO and HELO get 500, as Dovecot answers.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use smtp_proto::request::receiver::{DataReceiver, DummyDataReceiver, RequestReceiver};
use smtp_proto::{Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::message::normalize_line_endings;

/// SMTP (the relay) or LMTP (a node).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Smtp,
    Lmtp,
}

/// Bounds on what a client may send.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest message (advertised as SIZE).
    pub max_message: usize,
    /// Longest command line.
    pub max_line: usize,
    pub max_recipients: usize,
    /// A silent client is dropped after this (421).
    pub idle: Duration,
    /// Sessions at once; one more is answered 421 and closed.
    pub max_sessions: usize,
    /// A session is closed after this, however busy: `idle` bounds each
    /// read, this bounds a client that trickles bytes.
    pub max_session: Duration,
}

/// Sessions in progress, bounded by `Limits::max_sessions`.
pub type Sessions = Arc<tokio::sync::Semaphore>;

impl Limits {
    pub fn sessions(&self) -> Sessions {
        Arc::new(tokio::sync::Semaphore::new(self.max_sessions))
    }
}

/// Serves `stream` if a session slot is free (held until it ends), else
/// answers 421 and closes: memory stays bounded however many connect.
pub fn spawn_session<H: Handler + Send + Sync + 'static>(
    sessions: &Sessions,
    stream: TcpStream,
    mode: Mode,
    hostname: String,
    limits: Limits,
    handler: H,
) {
    match sessions.clone().try_acquire_owned() {
        Ok(permit) => {
            tokio::spawn(async move {
                let _permit = permit;
                let session = serve(stream, mode, &hostname, &limits, &handler);
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
        Err(_) => {
            tokio::spawn(async move {
                let mut stream = stream;
                let busy = b"421 4.3.2 too many sessions, try again later\r\n";
                let _ = tokio::time::timeout(Duration::from_secs(2), stream.write_all(busy)).await;
            });
        }
    }
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
            max_session: Duration::from_secs(3600),
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

    fn write(&self, out: &mut Vec<u8>) {
        if self.esc == [0, 0, 0] {
            out.extend_from_slice(format!("{} {}\r\n", self.code, self.text).as_bytes());
            return;
        }
        let [a, b, c] = self.esc;
        Response::new(self.code, a, b, c, self.text.as_str())
            .write(&mut *out)
            .expect("writing to a Vec cannot fail");
    }
}

/// The envelope of one message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Envelope {
    pub from: String,
    pub rcpts: Vec<String>,
    pub envid: Option<String>,
}

/// What the server asks of the relay or the node.
pub trait Handler: Send + Sync + 'static {
    /// Words added to the 220 greeting (a node says its epoch there).
    fn banner(&self) -> String {
        String::new()
    }
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

enum State {
    Command(RequestReceiver),
    Data(DataReceiver),
    /// The message is over the limit: read it to its end, keep nothing.
    Discard(DummyDataReceiver),
    /// A BDAT chunk we did not offer to take: skip its bytes.
    SkipChunk(DummyDataReceiver),
    /// A command line over the limit: skip to its end.
    SkipLine,
}

/// smtp-proto's `DataReceiver` starts as if no CRLF had been seen, so a
/// message whose first line is "." (an empty message: `DATA\r\n.\r\n`) is
/// not recognised. The CRLF that ended the DATA command counts.
fn data_receiver() -> DataReceiver {
    let mut r = DataReceiver::new();
    r.ingest(&mut b"\r\n".iter(), &mut Vec::new());
    r
}

/// Serves one connection until QUIT, EOF, or the idle timeout.
pub async fn serve<H: Handler>(
    stream: TcpStream,
    mode: Mode,
    hostname: &str,
    limits: &Limits,
    handler: &H,
) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let mut out = Vec::with_capacity(4096);
    let proto = if mode == Mode::Lmtp { "LMTP" } else { "ESMTP" };
    Reply::new(
        220,
        [0, 0, 0],
        format!("{hostname} {proto} logship{}", handler.banner()),
    )
    .write(&mut out);
    wr.write_all(&out).await?;
    out.clear();
    let mut state = State::Command(RequestReceiver::default());
    let mut env: Option<Envelope> = None;
    let mut data = Vec::new();
    // Bytes of the current command line fed so far (our own line cap).
    let mut line = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match tokio::time::timeout(limits.idle, rd.read(&mut buf)).await {
            Err(_) => {
                Reply::new(421, [4, 4, 2], format!("{hostname} idle too long, closing"))
                    .write(&mut out);
                let _ = wr.write_all(&out).await;
                return Ok(());
            }
            Ok(Ok(0)) => return Ok(()),
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(e),
        };
        let mut iter = buf[..n].iter();
        let mut quit = false;
        while !quit {
            match &mut state {
                State::SkipLine => match iter.as_slice().iter().position(|b| *b == b'\n') {
                    Some(p) => {
                        iter = iter.as_slice()[p + 1..].iter();
                        state = State::Command(RequestReceiver::default());
                        line = 0;
                    }
                    None => break,
                },
                State::Command(rx) => {
                    if iter.as_slice().is_empty() {
                        break;
                    }
                    let before = iter.as_slice().len();
                    let r = rx.ingest(&mut iter);
                    line += before - iter.as_slice().len();
                    match r {
                        Err(smtp_proto::Error::NeedsMoreData { .. }) => {
                            if line > limits.max_line {
                                Reply::new(500, [5, 5, 2], "line too long").write(&mut out);
                                state = State::SkipLine;
                            }
                            break;
                        }
                        _ if line > limits.max_line => {
                            line = 0;
                            Reply::new(500, [5, 5, 2], "line too long").write(&mut out);
                        }
                        Err(e) => {
                            line = 0;
                            syntax_error(e).write(&mut out);
                        }
                        Ok(req) => {
                            line = 0;
                            let req = req.into_owned();
                            match command(req, mode, hostname, limits, handler, &mut env, &mut out)
                            {
                                Next::Command => {}
                                Next::Data => {
                                    data.clear();
                                    state = State::Data(data_receiver());
                                }
                                Next::SkipChunk(n) => {
                                    state = State::SkipChunk(DummyDataReceiver::new_bdat(n));
                                }
                                Next::Quit => quit = true,
                            }
                        }
                    }
                }
                State::Data(rx) => {
                    let done = rx.ingest(&mut iter, &mut data);
                    // The size that counts is the stored one: after bare
                    // LFs became CRLF.
                    let message = done.then(|| normalize_line_endings(std::mem::take(&mut data)));
                    if message
                        .as_ref()
                        .is_some_and(|m| m.len() > limits.max_message)
                    {
                        let e = env.take().unwrap_or_default();
                        refuse_oversize(mode, &e, limits, &mut out);
                        state = State::Command(RequestReceiver::default());
                    } else if let Some(message) = message {
                        let e = env.take().unwrap_or_default();
                        let count = if mode == Mode::Lmtp { e.rcpts.len() } else { 1 };
                        // What the client sent so far is answered first.
                        if !out.is_empty() {
                            wr.write_all(&out).await?;
                            out.clear();
                        }
                        let mut replies = handler.data(e, message).await;
                        replies.resize(
                            count,
                            Reply::new(451, [4, 3, 0], "no reply for this recipient"),
                        );
                        for r in &replies {
                            r.write(&mut out);
                        }
                        state = State::Command(RequestReceiver::default());
                    } else {
                        if data.len() > limits.max_message {
                            let d = DummyDataReceiver::new_data(rx);
                            data = Vec::new();
                            state = State::Discard(d);
                            continue;
                        }
                        break;
                    }
                }
                State::Discard(rx) => {
                    if rx.ingest(&mut iter) {
                        let e = env.take().unwrap_or_default();
                        refuse_oversize(mode, &e, limits, &mut out);
                        state = State::Command(RequestReceiver::default());
                    } else {
                        break;
                    }
                }
                State::SkipChunk(rx) => {
                    if rx.ingest(&mut iter) {
                        state = State::Command(RequestReceiver::default());
                    } else {
                        break;
                    }
                }
            }
        }
        if !out.is_empty() {
            wr.write_all(&out).await?;
            out.clear();
        }
        if quit {
            return Ok(());
        }
    }
}

/// 552 for the message (per recipient in LMTP).
fn refuse_oversize(mode: Mode, env: &Envelope, limits: &Limits, out: &mut Vec<u8>) {
    let count = if mode == Mode::Lmtp {
        env.rcpts.len()
    } else {
        1
    };
    for _ in 0..count {
        Reply::new(
            552,
            [5, 3, 4],
            format!("message larger than {} bytes", limits.max_message),
        )
        .write(out);
    }
}

enum Next {
    Command,
    Data,
    SkipChunk(usize),
    Quit,
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
        other => Reply::new(500, [5, 5, 2], format!("{other:?}")),
    }
}

fn command<H: Handler>(
    req: Request<String>,
    mode: Mode,
    hostname: &str,
    limits: &Limits,
    handler: &H,
    env: &mut Option<Envelope>,
    out: &mut Vec<u8>,
) -> Next {
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
            out.extend_from_slice(
                format!(
                    "250-{hostname}\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n250-DSN\r\n250 SIZE {}\r\n",
                    limits.max_message
                )
                .as_bytes(),
            );
        }
        Request::Helo { .. } => {
            *env = None;
            Reply::new(250, [2, 0, 0], hostname).write(out);
        }
        Request::Mail { from } => {
            if env.is_some() {
                Reply::new(503, [5, 5, 1], "MAIL already given (RSET first)").write(out);
            } else if from.flags & smtp_proto::MAIL_BODY_BINARYMIME != 0 {
                Reply::new(504, [5, 5, 4], "BODY=BINARYMIME is not offered").write(out);
            } else if from.size > limits.max_message {
                Reply::new(
                    552,
                    [5, 3, 4],
                    format!("message larger than {} bytes", limits.max_message),
                )
                .write(out);
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
                // An active node repeats its epoch here: the client may have
                // connected (and been greeted) just before it became active.
                Reply::new(250, [2, 1, 0], format!("sender ok{}", handler.banner())).write(out);
            }
        }
        Request::Rcpt { to } => match env {
            None => Reply::new(503, [5, 5, 1], "MAIL first").write(out),
            Some(_) if to.address.is_empty() => {
                Reply::new(501, [5, 1, 3], "an empty recipient address").write(out)
            }
            Some(e) if e.rcpts.len() >= limits.max_recipients => {
                Reply::new(452, [4, 5, 3], "too many recipients").write(out)
            }
            Some(_) if !plain_address(&to.address) => not_plain(&to.address).write(out),
            Some(e) => match handler.rcpt(&to.address) {
                Some(r) => r.write(out),
                None => {
                    e.rcpts.push(to.address);
                    Reply::new(250, [2, 1, 5], "recipient ok").write(out);
                }
            },
        },
        Request::Data => match env {
            Some(e) if !e.rcpts.is_empty() => {
                Reply::new(354, [0, 0, 0], "send the message, end with <CRLF>.<CRLF>").write(out);
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
        other => Reply::new(502, [5, 5, 1], format!("{} not implemented", other.name())).write(out),
    }
    Next::Command
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
    #[derive(Default)]
    struct Recorder {
        got: Mutex<Vec<(Envelope, Vec<u8>)>>,
    }

    impl Handler for Arc<Recorder> {
        fn mail(&self, _from: &str) -> Option<Reply> {
            None
        }
        fn rcpt(&self, to: &str) -> Option<Reply> {
            (!to.ends_with("@example.com")).then(|| Reply::new(550, [5, 1, 2], "not here"))
        }
        async fn data(&self, env: Envelope, data: Vec<u8>) -> Vec<Reply> {
            let n = env.rcpts.len();
            self.got.lock().unwrap().push((env, data));
            vec![Reply::ok("stored"); n]
        }
    }

    /// Runs one session in `mode` with `limits`, sends `input` in the given
    /// pieces, and returns everything the server said.
    async fn session(mode: Mode, limits: Limits, pieces: &[&[u8]]) -> (String, Arc<Recorder>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let rec = Arc::new(Recorder::default());
        let server = {
            let rec = rec.clone();
            tokio::spawn(async move {
                let (s, _) = listener.accept().await.unwrap();
                serve(s, mode, "test", &limits, &rec).await
            })
        };
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        for p in pieces {
            c.write_all(p).await.unwrap();
            c.flush().await.unwrap();
            tokio::task::yield_now().await;
        }
        c.shutdown().await.unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).await.unwrap();
        server.await.unwrap().unwrap();
        (out, rec)
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

    #[tokio::test]
    async fn sessions_beyond_the_limit_are_answered_421_and_closed() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = Limits {
            max_sessions: 2,
            ..Default::default()
        };
        let rec = Arc::new(Recorder::default());
        let sessions = limits.sessions();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                spawn_session(
                    &sessions,
                    stream,
                    Mode::Smtp,
                    "test".into(),
                    limits.clone(),
                    rec.clone(),
                );
            }
        });
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
            let (stream, _) = listener.accept().await.unwrap();
            spawn_session(&sessions, stream, Mode::Smtp, "test".into(), limits, rec);
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
}

/// The line a client sends in answer to a CRAM-MD5 challenge (RFC 2195):
/// base64 of `user SP hex(HMAC-MD5(secret, challenge))`.
pub fn cram_md5_response(secret: &[u8], challenge: &str, user: &str) -> String {
    use base64::Engine as _;
    use hmac::{KeyInit, Mac};
    let mut mac = <hmac::Hmac<md5::Md5> as KeyInit>::new_from_slice(secret)
        .expect("HMAC takes a key of any length");
    mac.update(challenge.as_bytes());
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    base64::engine::general_purpose::STANDARD.encode(format!("{user} {hex}"))
}
