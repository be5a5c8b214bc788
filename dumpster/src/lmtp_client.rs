//! The relay's LMTP client: one connection, LHLO, then per message MAIL +
//! RCPT* + DATA pipelined in one write, the dot-stuffed body, and one reply
//! per accepted recipient (RFC 2033). Neither lettre nor mail-send reads the
//! per-recipient replies (../shared/notes/smtp-lmtp.md), hence this.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::protocol::Reply;

/// The longest reply line read.
const MAX_REPLY_LINE: usize = 4096;

/// An open LMTP session with a node.
#[derive(Debug)]
pub struct Client {
    rd: BufReader<OwnedReadHalf>,
    wr: OwnedWriteHalf,
    /// The server's greeting text (after the code).
    pub greeting: String,
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
    #[error("{addr}: bad reply {line:?}")]
    Protocol { addr: String, line: String },
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

impl Client {
    /// Connects, reads the greeting and says LHLO.
    pub async fn connect(addr: &str, timeout: Duration) -> Result<Client, ClientError> {
        Self::connect_as(addr, timeout, "LHLO").await
    }

    /// Connects and greets with `hello` (`LHLO`, or `EHLO` to speak SMTP to
    /// a relay: with one recipient per message the replies line up the same).
    pub async fn connect_as(
        addr: &str,
        timeout: Duration,
        hello: &str,
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
        Ok(c)
    }

    /// Reads one (possibly multi-line) reply.
    async fn reply(&mut self, addr: &str) -> Result<Reply, ClientError> {
        let mut text = String::new();
        loop {
            let mut line = Vec::new();
            let n = tokio::time::timeout(self.timeout, async {
                let mut limited = (&mut self.rd).take(MAX_REPLY_LINE as u64);
                limited.read_until(b'\n', &mut line).await
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
            let s = String::from_utf8_lossy(&line).trim_end().to_string();
            let bad = || ClientError::Protocol {
                addr: addr.to_string(),
                line: s.clone(),
            };
            if n == 0 || s.len() < 3 {
                return Err(if n == 0 {
                    ClientError::Io {
                        addr: addr.to_string(),
                        source: std::io::ErrorKind::UnexpectedEof.into(),
                    }
                } else {
                    bad()
                });
            }
            let code: u16 = s[..3].parse().map_err(|_| bad())?;
            let rest = s.get(4..).unwrap_or("");
            if !text.is_empty() {
                text.push('\n');
            }
            text.push_str(rest);
            if s.as_bytes().get(3) != Some(&b'-') {
                // "250 2.1.5 text": split off an enhanced code if there is one.
                let (esc, text) = split_esc(&text);
                return Ok(Reply { code, esc, text });
            }
        }
    }

    /// Delivers one message; `raw` must use CRLF line ends. Also returns
    /// the text of the reply to MAIL (a node repeats its epoch there).
    pub async fn send(
        &mut self,
        addr: &str,
        from: &str,
        rcpts: &[String],
        raw: &[u8],
    ) -> Result<(Outcome, String), ClientError> {
        let mut mail_text = String::new();
        let o = self
            .send_inner(addr, from, rcpts, raw, &mut mail_text)
            .await?;
        Ok((o, mail_text))
    }

    async fn send_inner(
        &mut self,
        addr: &str,
        from: &str,
        rcpts: &[String],
        raw: &[u8],
        mail_text: &mut String,
    ) -> Result<Outcome, ClientError> {
        let io = |source| ClientError::Io {
            addr: addr.to_string(),
            source,
        };
        let mut cmds = format!("MAIL FROM:<{from}>\r\n");
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
}
