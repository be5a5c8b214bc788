//! The HTTP/1.1 the API speaks, on one connection: requests read with
//! `httparse` (the head bounded, the body by `Content-Length` and bounded),
//! `Expect: 100-continue` answered, keep-alive unless the client asks to
//! close or speaks HTTP/1.0, and an idle connection closed after a minute.
//! A thread per connection, so that one slow client holds up no other.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// The largest request head read.
const MAX_HEAD: usize = 64 * 1024;
/// How long a connection may stay idle between requests.
const IDLE: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Other,
}

/// One request, its body read whole.
#[derive(Debug)]
pub struct Request {
    pub method: Method,
    /// The path and query string.
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// A header's value, by name in any case.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: String,
    pub headers: Vec<(String, String)>,
}

impl Response {
    pub fn text(status: u16, body: String) -> Response {
        Response {
            status,
            body,
            headers: Vec::new(),
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        301 => "Moved Permanently",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        411 => "Length Required",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// Writes `r`; `keep` says whether the connection stays open.
pub fn write(w: &mut impl Write, r: &Response, keep: bool) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Length: {}\r\nConnection: {}\r\n",
        r.status,
        reason(r.status),
        r.body.len(),
        if keep { "keep-alive" } else { "close" }
    );
    for (k, v) in &r.headers {
        // A value may not carry a line break into the head.
        if !v.contains(['\r', '\n']) {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    if !r
        .headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("Content-Type"))
    {
        head.push_str("Content-Type: text/plain; charset=utf-8\r\n");
    }
    head.push_str("\r\n");
    // One write, so one segment for a small answer (the socket has
    // TCP_NODELAY): the client wakes once.
    head.push_str(&r.body);
    w.write_all(head.as_bytes())?;
    w.flush()
}

/// What reading a request gave.
enum Incoming {
    Request(Request, bool),
    /// The client closed the connection (or went idle).
    Closed,
    /// A request that cannot be served: answer it and close.
    Bad(Response),
}

/// Sets a new connection's socket up: an idle timeout, and no Nagle delay.
pub fn prepare(stream: &TcpStream) {
    let _ = stream.set_read_timeout(Some(IDLE));
    let _ = stream.set_nodelay(true);
}

/// Serves requests on `stream` (a `prepare`d socket, or TLS over one) with
/// `handle` until the client closes.
pub fn serve_connection<S: Read + Write>(stream: S, mut handle: impl FnMut(Request) -> Response) {
    let mut reader = BufReader::new(stream);
    loop {
        match read_request(&mut reader) {
            Incoming::Request(req, keep) => {
                let resp = handle(req);
                if write(reader.get_mut(), &resp, keep).is_err() || !keep {
                    return;
                }
            }
            Incoming::Closed => return,
            Incoming::Bad(resp) => {
                let _ = write(reader.get_mut(), &resp, false);
                return;
            }
        }
    }
}

fn read_request<S: Read + Write>(reader: &mut BufReader<S>) -> Incoming {
    // The head: lines up to the empty one, bounded.
    let mut head = Vec::new();
    loop {
        let before = head.len();
        match reader
            .by_ref()
            .take((MAX_HEAD + 1 - head.len()) as u64)
            .read_until(b'\n', &mut head)
        {
            Ok(0) => return Incoming::Closed,
            Ok(_) => {}
            Err(_) => return Incoming::Closed,
        }
        if head.len() > MAX_HEAD {
            return Incoming::Bad(Response::text(
                431,
                format!("the request head is larger than {MAX_HEAD} bytes\n"),
            ));
        }
        let line = &head[before..];
        if line == b"\r\n" || line == b"\n" {
            if before == 0 {
                // A stray empty line between requests.
                head.clear();
                continue;
            }
            break;
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(&head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Incoming::Bad(Response::text(400, "a malformed request head\n".into())),
    }
    let method = match parsed.method {
        Some("GET") => Method::Get,
        Some("POST") => Method::Post,
        _ => Method::Other,
    };
    let url = parsed.path.unwrap_or("/").to_string();
    let http10 = parsed.version == Some(0);
    let headers: Vec<(String, String)> = parsed
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.as_str())
    };
    if get("Transfer-Encoding").is_some() {
        return Incoming::Bad(Response::text(
            411,
            "send the body with a Content-Length\n".into(),
        ));
    }
    let len: u64 = match get("Content-Length").map(|v| v.trim().parse::<u64>()) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            return Incoming::Bad(Response::text(
                400,
                "a Content-Length that is not a number\n".into(),
            ));
        }
    };
    if len > super::MAX_BODY {
        return Incoming::Bad(Response::text(
            413,
            format!(
                "the request body is larger than {} bytes\n",
                super::MAX_BODY
            ),
        ));
    }
    if get("Expect").is_some_and(|e| e.eq_ignore_ascii_case("100-continue"))
        && reader
            .get_mut()
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .and_then(|()| reader.get_mut().flush())
            .is_err()
    {
        return Incoming::Closed;
    }
    let mut body = vec![0; len as usize];
    if reader.read_exact(&mut body).is_err() {
        return Incoming::Closed;
    }
    let keep =
        !http10 && !get("Connection").is_some_and(|c| c.to_ascii_lowercase().contains("close"));
    Incoming::Request(
        Request {
            method,
            url,
            headers,
            body,
        },
        keep,
    )
}
