//! The relay's LMTP client: one connection, LHLO (and CRAM-MD5 when the
//! node asks for the cluster's proof), then per message MAIL + RCPT* +
//! DATA pipelined in one write, the dot-stuffed body, and one reply per
//! accepted recipient (RFC 2033). Neither lettre nor mail-send reads the
//! per-recipient replies (../shared/notes/smtp-lmtp.md), hence this.
//!
//! Everything the server sends is untrusted: replies are parsed from bytes
//! by a total function (`parse_line`), every line and every reply is
//! bounded, and anything malformed is a `ClientError::Protocol` (the
//! connection is then out of step and must be dropped), never a panic.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::protocol::Reply;

/// The longest reply line read, CRLF included.
pub const MAX_REPLY_LINE: usize = 4096;
/// The most lines one (multi-line) reply may have.
pub const MAX_REPLY_LINES: usize = 64;

/// An open LMTP session with a node.
#[derive(Debug)]
pub struct Client {
    rd: BufReader<OwnedReadHalf>,
    wr: OwnedWriteHalf,
    /// The server's greeting text (after the code), control characters
    /// replaced.
    pub greeting: String,
    /// What the server offered in its LHLO/EHLO reply, upper case (the
    /// first word of each line after the first: `DSN`, `AUTH`, ...).
    pub capabilities: Vec<String>,
    /// The SASL mechanisms of its AUTH line, upper case.
    pub auth_mechanisms: Vec<String>,
    timeout: Duration,
}

/// Why a delivery did not get per-recipient answers.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{addr}: {source}")]
    Io {
        addr: String,
        source: std::io::Error,
    },
    #[error("{addr}: no answer within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
    #[error("{addr}: {reply}")]
    Refused { addr: String, reply: String },
    /// The server's bytes are not an SMTP/LMTP reply (or not the one
    /// expected): the session is out of step.
    #[error("{addr}: malformed reply: {reason}")]
    Protocol { addr: String, reason: String },
    /// The node asks for authentication and this relay has no cluster key
    /// (or the node refused the proof).
    #[error("{addr}: authentication: {reason}")]
    Auth { addr: String, reason: String },
}

/// A failed delivery, and whether the message's body had been sent when
/// it failed: a connection lost after that may have been lost *because of*
/// this message (a node that cannot take it), so it counts against it.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct SendError {
    pub error: ClientError,
    pub body_sent: bool,
}

/// What became of one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The session refused the message as a whole (MAIL or DATA): the
    /// same reply for every recipient.
    Refused(Reply),
    /// One reply per recipient, in order (RCPT refusals included).
    PerRecipient(Vec<Reply>),
}

/// Why a reply line is not one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadLine {
    #[error("{0:?} is shorter than a reply code")]
    Short(String),
    #[error("{0:?} does not start with a reply code (2xx to 5xx, or 334)")]
    Code(String),
    #[error("{0:?}: a reply code must be followed by a space, a dash or the line end")]
    Separator(String),
}

/// One reply line, parsed: its code, whether more lines of the same reply
/// follow (`250-...`), and its text with control characters replaced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    pub code: u16,
    pub more: bool,
    pub text: String,
}

/// The printable form of bytes a peer sent, for errors and logs: lossy
/// UTF-8 with control characters as `?`, at most 200 characters.
pub fn printable(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    let mut out: String = s
        .chars()
        .take(200)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if s.chars().nth(200).is_some() {
        out.push('…');
    }
    out
}

/// Parses one reply line (without its line end). Total: any bytes give a
/// `Line` or a `BadLine`.
pub fn parse_line(line: &[u8]) -> Result<Line, BadLine> {
    let [a, b, c, rest @ ..] = line else {
        return Err(BadLine::Short(printable(line)));
    };
    if !(b'2'..=b'5').contains(a) || !b.is_ascii_digit() || !c.is_ascii_digit() {
        return Err(BadLine::Code(printable(line)));
    }
    let code = u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0');
    let (more, text) = match rest {
        [] => (false, &[][..]),
        [b' ', t @ ..] => (false, t),
        [b'-', t @ ..] => (true, t),
        _ => return Err(BadLine::Separator(printable(line))),
    };
    let text = String::from_utf8_lossy(text)
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    Ok(Line { code, more, text })
}

/// Folds the lines of one reply into a `Reply`: every line must carry the
/// same code, and only the last may lack the dash.
pub fn fold_reply(lines: &[Line]) -> Result<Reply, String> {
    let Some(last) = lines.last() else {
        return Err("an empty reply".into());
    };
    if let Some(l) = lines.iter().find(|l| l.code != last.code) {
        return Err(format!(
            "a reply mixes codes {} and {} on its lines",
            l.code, last.code
        ));
    }
    if lines[..lines.len() - 1].iter().any(|l| !l.more) || last.more {
        return Err("a multi-line reply out of order".into());
    }
    let text = lines
        .iter()
        .map(|l| l.text.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    let (esc, text) = split_esc(&text);
    Ok(Reply {
        code: last.code,
        esc,
        text,
    })
}

/// The capabilities of an LHLO/EHLO reply's text (its lines after the
/// first), upper case, first word of each.
fn capabilities(text: &str) -> Vec<String> {
    text.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .map(|w| w.to_ascii_uppercase())
        .collect()
}

/// The mechanisms on the AUTH line of an LHLO/EHLO reply's text.
fn auth_mechanisms(text: &str) -> Vec<String> {
    text.lines()
        .skip(1)
        .find_map(|l| {
            let mut w = l.split_whitespace();
            w.next()
                .is_some_and(|c| c.eq_ignore_ascii_case("AUTH"))
                .then(|| w.map(|m| m.to_ascii_uppercase()).collect())
        })
        .unwrap_or_default()
}

impl Client {
    /// Connects, reads the greeting and says LHLO.
    pub async fn connect(addr: &str, timeout: Duration) -> Result<Client, ClientError> {
        Self::connect_with(addr, timeout, "LHLO", None).await
    }

    /// Connects and greets with `hello` (`LHLO`, or `EHLO` to speak SMTP to
    /// a relay: with one recipient per message the replies line up the same).
    pub async fn connect_as(
        addr: &str,
        timeout: Duration,
        hello: &str,
    ) -> Result<Client, ClientError> {
        Self::connect_with(addr, timeout, hello, None).await
    }

    /// Connects, greets with `hello`, and, when the server offers
    /// `AUTH CRAM-MD5` and `secret` is given, proves it holds the secret.
    pub async fn connect_with(
        addr: &str,
        timeout: Duration,
        hello: &str,
        secret: Option<&[u8]>,
    ) -> Result<Client, ClientError> {
        let io = |source| ClientError::Io {
            addr: addr.to_string(),
            source,
        };
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::Timeout {
                addr: addr.to_string(),
                timeout,
            })?
            .map_err(io)?;
        let _ = stream.set_nodelay(true);
        let (rd, wr) = stream.into_split();
        let mut c = Client {
            rd: BufReader::new(rd),
            wr,
            greeting: String::new(),
            capabilities: Vec::new(),
            auth_mechanisms: Vec::new(),
            timeout,
        };
        let g = c.reply(addr).await?;
        if g.code != 220 {
            return Err(ClientError::Refused {
                addr: addr.to_string(),
                reply: format!("{} {}", g.code, g.text),
            });
        }
        c.greeting = g.text;
        c.wr.write_all(format!("{hello} logship-relay\r\n").as_bytes())
            .await
            .map_err(io)?;
        let r = c.reply(addr).await?;
        if r.code != 250 {
            return Err(ClientError::Refused {
                addr: addr.to_string(),
                reply: format!("{} {}", r.code, r.text),
            });
        }
        c.capabilities = capabilities(&r.text);
        c.auth_mechanisms = auth_mechanisms(&r.text);
        if c.offers("AUTH") {
            let Some(secret) = secret else {
                return Err(ClientError::Auth {
                    addr: addr.to_string(),
                    reason: "the node requires the cluster's proof and this relay has no cluster key ([cluster] key-file)".into(),
                });
            };
            if !c.auth_mechanisms.iter().any(|m| m == "CRAM-MD5") {
                return Err(ClientError::Auth {
                    addr: addr.to_string(),
                    reason: format!("the node offers {:?}, not CRAM-MD5", c.auth_mechanisms),
                });
            }
            c.authenticate(addr, secret).await?;
        }
        Ok(c)
    }

    /// AUTH CRAM-MD5 (RFC 2195) with `secret`.
    async fn authenticate(&mut self, addr: &str, secret: &[u8]) -> Result<(), ClientError> {
        let io = |source| ClientError::Io {
            addr: addr.to_string(),
            source,
        };
        let auth = |reason: String| ClientError::Auth {
            addr: addr.to_string(),
            reason,
        };
        self.wr.write_all(b"AUTH CRAM-MD5\r\n").await.map_err(io)?;
        let challenge = self.reply(addr).await?;
        if challenge.code != 334 {
            return Err(auth(format!(
                "AUTH answered {} {}",
                challenge.code, challenge.text
            )));
        }
        use base64::Engine as _;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(challenge.text.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| auth("the node's challenge is not base64 text".into()))?;
        let line = crate::protocol::cram_md5_response(secret, &decoded, "relay");
        self.wr
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .map_err(io)?;
        let done = self.reply(addr).await?;
        if done.code != 235 {
            return Err(auth(format!(
                "the node refused the proof: {} {}",
                done.code, done.text
            )));
        }
        Ok(())
    }

    /// Whether the server offered `cap` (e.g. `DSN`).
    pub fn offers(&self, cap: &str) -> bool {
        self.capabilities
            .iter()
            .any(|c| c.eq_ignore_ascii_case(cap))
    }

    /// Reads one (possibly multi-line) reply.
    async fn reply(&mut self, addr: &str) -> Result<Reply, ClientError> {
        let mut lines = Vec::new();
        loop {
            let mut raw = Vec::new();
            let n = tokio::time::timeout(self.timeout, async {
                let mut limited = (&mut self.rd).take(MAX_REPLY_LINE as u64);
                limited.read_until(b'\n', &mut raw).await
            })
            .await
            .map_err(|_| ClientError::Timeout {
                addr: addr.to_string(),
                timeout: self.timeout,
            })?
            .map_err(|source| ClientError::Io {
                addr: addr.to_string(),
                source,
            })?;
            let protocol = |reason: String| ClientError::Protocol {
                addr: addr.to_string(),
                reason,
            };
            if n == 0 {
                return Err(ClientError::Io {
                    addr: addr.to_string(),
                    source: std::io::ErrorKind::UnexpectedEof.into(),
                });
            }
            let Some(body) = raw.strip_suffix(b"\n") else {
                return Err(protocol(if raw.len() >= MAX_REPLY_LINE {
                    format!("a reply line over {MAX_REPLY_LINE} bytes")
                } else {
                    format!(
                        "the connection ended inside a reply line {:?}",
                        printable(&raw)
                    )
                }));
            };
            let body = body.strip_suffix(b"\r").unwrap_or(body);
            let line = parse_line(body).map_err(|e| protocol(e.to_string()))?;
            let more = line.more;
            lines.push(line);
            if !more {
                return fold_reply(&lines).map_err(protocol);
            }
            if lines.len() >= MAX_REPLY_LINES {
                return Err(protocol(format!("a reply of over {MAX_REPLY_LINES} lines")));
            }
        }
    }

    /// Delivers one message; `raw` must use CRLF line ends. `envid` is
    /// sent as MAIL's ENVID (RFC 3461) when the server offers DSN. Also
    /// returns the text of the reply to MAIL (a node repeats its epoch
    /// there).
    pub async fn send(
        &mut self,
        addr: &str,
        from: &str,
        rcpts: &[String],
        envid: Option<&str>,
        raw: &[u8],
    ) -> Result<(Outcome, String), SendError> {
        let mut mail_text = String::new();
        let mut body_sent = false;
        match self
            .send_inner(
                addr,
                from,
                rcpts,
                envid,
                raw,
                &mut mail_text,
                &mut body_sent,
            )
            .await
        {
            Ok(o) => Ok((o, mail_text)),
            Err(error) => Err(SendError { error, body_sent }),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn send_inner(
        &mut self,
        addr: &str,
        from: &str,
        rcpts: &[String],
        envid: Option<&str>,
        raw: &[u8],
        mail_text: &mut String,
        body_sent: &mut bool,
    ) -> Result<Outcome, ClientError> {
        let io = |source| ClientError::Io {
            addr: addr.to_string(),
            source,
        };
        let mut cmds = format!("MAIL FROM:<{from}>");
        if let Some(id) = envid
            && self.offers("DSN")
        {
            cmds.push_str(" ENVID=");
            cmds.push_str(&xtext(id));
        }
        cmds.push_str("\r\n");
        for r in rcpts {
            cmds.push_str(&format!("RCPT TO:<{r}>\r\n"));
        }
        cmds.push_str("DATA\r\n");
        self.wr.write_all(cmds.as_bytes()).await.map_err(io)?;
        let mail = self.reply(addr).await?;
        mail_text.clone_from(&mail.text);
        let mut per_rcpt = Vec::with_capacity(rcpts.len());
        for _ in rcpts {
            per_rcpt.push(self.reply(addr).await?);
        }
        let data = self.reply(addr).await?;
        if mail.code / 100 != 2 {
            return Ok(Outcome::Refused(mail));
        }
        if data.code != 354 {
            if per_rcpt.iter().all(|r| r.code / 100 != 2) {
                return Ok(Outcome::PerRecipient(per_rcpt));
            }
            return Ok(Outcome::Refused(data));
        }
        *body_sent = true;
        self.wr.write_all(&dot_stuff(raw)).await.map_err(io)?;
        for r in per_rcpt.iter_mut() {
            if r.code / 100 == 2 {
                *r = self.reply(addr).await?;
            }
        }
        Ok(Outcome::PerRecipient(per_rcpt))
    }

    pub async fn quit(mut self) {
        let _ = self.wr.write_all(b"QUIT\r\n").await;
    }
}

/// `s` as xtext (RFC 3461 §4): printable ASCII but `+` and `=` as is,
/// everything else as `+HH`.
pub fn xtext(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (b'!'..=b'~').contains(&b) && b != b'+' && b != b'=' {
            out.push(b as char);
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

fn split_esc(text: &str) -> ([u8; 3], String) {
    let mut parts = text.splitn(2, ' ');
    let first = parts.next().unwrap_or("");
    let nums: Vec<u8> = first.split('.').filter_map(|n| n.parse().ok()).collect();
    if nums.len() == 3 && first.split('.').count() == 3 {
        (
            [nums[0], nums[1], nums[2]],
            parts.next().unwrap_or("").to_string(),
        )
    } else {
        ([0, 0, 0], text.to_string())
    }
}

/// The body for DATA: a leading `.` doubled at the start of every line, a
/// final CRLF added if missing, then the terminating `.`.
pub fn dot_stuff(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 64 + 5);
    let mut at_line_start = true;
    for &b in raw {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    if !raw.is_empty() && !raw.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_stuffing_doubles_leading_dots_and_terminates() {
        assert_eq!(dot_stuff(b".a\r\nb\r\n.\r\n"), b"..a\r\nb\r\n..\r\n.\r\n");
        assert_eq!(dot_stuff(b"x"), b"x\r\n.\r\n");
        assert_eq!(dot_stuff(b""), b".\r\n");
    }

    #[test]
    fn enhanced_codes_are_split_off() {
        assert_eq!(split_esc("2.1.5 ok"), ([2, 1, 5], "ok".to_string()));
        assert_eq!(
            split_esc("alpha LMTP"),
            ([0, 0, 0], "alpha LMTP".to_string())
        );
    }

    #[test]
    fn reply_lines_parse_from_bytes_and_bad_ones_are_errors() {
        assert_eq!(
            parse_line(b"250-PIPELINING"),
            Ok(Line {
                code: 250,
                more: true,
                text: "PIPELINING".into()
            })
        );
        assert_eq!(
            parse_line(b"354").map(|l| (l.code, l.more)),
            Ok((354, false))
        );
        // The probe's greeting: a byte that is not a digit, mid-code.
        assert!(matches!(parse_line(b"2\xff0 hello"), Err(BadLine::Code(_))));
        // A folded, non-ASCII Message-ID echoed by a server.
        assert!(matches!(
            parse_line(" x\u{20ac}>".as_bytes()),
            Err(BadLine::Code(_))
        ));
        assert!(matches!(parse_line(b"25"), Err(BadLine::Short(_))));
        assert!(matches!(parse_line(b"250x"), Err(BadLine::Separator(_))));
        assert!(matches!(parse_line(b"650 no"), Err(BadLine::Code(_))));
        // Control characters in the text are replaced, not kept.
        assert_eq!(parse_line(b"250 a\x1bb").unwrap().text, "a?b");
    }

    #[test]
    fn multi_line_replies_fold_only_when_well_formed() {
        let l = |b: &[u8]| parse_line(b).unwrap();
        let r = fold_reply(&[l(b"250-a"), l(b"250-DSN"), l(b"250 AUTH CRAM-MD5")]).unwrap();
        assert_eq!(r.code, 250);
        assert_eq!(capabilities(&r.text), vec!["DSN", "AUTH"]);
        assert!(fold_reply(&[l(b"250-a"), l(b"251 b")]).is_err());
        assert!(fold_reply(&[]).is_err());
    }

    #[test]
    fn xtext_escapes_what_is_not_plain() {
        assert_eq!(xtext("a.b@c"), "a.b@c");
        assert_eq!(xtext("a+b=c d\r"), "a+2Bb+3Dc+20d+0D");
    }

    proptest::proptest! {
        /// Any bytes: a line or an error, never a panic; a line's text
        /// holds no control character.
        #[test]
        fn any_bytes_parse_to_a_line_or_an_error(b in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            if let Ok(l) = parse_line(&b) {
                proptest::prop_assert!((200..600).contains(&l.code));
                proptest::prop_assert!(!l.text.chars().any(char::is_control));
            }
        }

        /// Replies split at any point, with any garbage lines: folding is
        /// total too.
        #[test]
        fn any_lines_fold_to_a_reply_or_an_error(lines in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..12), 0..6)) {
            let parsed: Vec<Line> = lines.iter().filter_map(|b| parse_line(b).ok()).collect();
            let _ = fold_reply(&parsed);
        }
    }
}
