//! The admin endpoint of a node or of the relay (its `admin` address):
//! `GET /metrics` in the Prometheus text format and `GET /status` as JSON.
//! What is shown comes from a closure the daemon gives, called per request.
//!
//! The port faces whoever can reach it, so the server is small and bounded:
//! one thread with a current-thread tokio runtime, a task per connection, at
//! most [`Limits::max_connections`] of them (a connection still sending its
//! request is dropped for a newer one when the cap is reached; beyond that
//! the newcomer is answered 503 and closed), a request head of at most
//! [`Limits::max_head`] bytes read within [`Limits::head_deadline`], no
//! request bodies, one request per connection, and a deadline on writing
//! the reply. Nothing a client sends is kept beyond its fixed head buffer.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// Renders a page: (content type, body).
pub type Render = Arc<dyn Fn() -> (String, String) + Send + Sync>;

/// The body of the 404 reply.
pub const NOT_FOUND: &str = "not found: try /metrics or /status\n";

/// What one client may cost the admin server.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once.
    pub max_connections: usize,
    /// Bytes of a request head (request line and headers).
    pub max_head: usize,
    /// Time from accepting a connection to the end of its request head.
    pub head_deadline: Duration,
    /// Time to write a reply.
    pub write_timeout: Duration,
    /// After an error reply, how long (and how many bytes) the rest of the
    /// request is read and dropped, so that the client can read the reply
    /// rather than a reset.
    pub linger: Duration,
    pub linger_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 64,
            max_head: 8 * 1024,
            head_deadline: Duration::from_secs(5),
            write_timeout: Duration::from_secs(5),
            linger: Duration::from_secs(1),
            linger_bytes: 256 * 1024,
        }
    }
}

/// Serves `/metrics` and `/status` on `addr` until the process ends.
pub fn serve(addr: &str, metrics: Render, status: Render) -> Result<()> {
    serve_with(addr, Limits::default(), metrics, status).map(|_| ())
}

/// [`serve`] with the limits given; returns the address it listens on.
pub fn serve_with(
    addr: &str,
    limits: Limits,
    metrics: Render,
    status: Render,
) -> Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("listen on the admin address {addr}"))?;
    let local = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .context("start the admin server's runtime")?;
    std::thread::Builder::new()
        .name("logship-admin".into())
        .spawn(move || {
            rt.block_on(async move {
                let listener = match TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(error = %e, "the admin server cannot listen");
                        return;
                    }
                };
                let pages = Arc::new(Pages { metrics, status });
                accept_loop(listener, limits, pages).await;
            });
        })
        .context("start the admin server's thread")?;
    Ok(local)
}

struct Pages {
    metrics: Render,
    status: Render,
}

/// The connections being served: by id (oldest first), with the means to
/// drop each one while it is still reading its request.
#[derive(Default)]
struct Registry {
    next_id: u64,
    live: BTreeMap<u64, Option<oneshot::Sender<()>>>,
}

/// Removes a connection from the registry when its task ends.
struct Slot {
    id: u64,
    registry: Arc<Mutex<Registry>>,
}

impl Slot {
    /// The request head is in: this connection can no longer be dropped
    /// for a newer one.
    fn replying(&self) {
        if let Some(e) = lock(&self.registry).live.get_mut(&self.id) {
            *e = None;
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        lock(&self.registry).live.remove(&self.id);
    }
}

fn lock(r: &Mutex<Registry>) -> std::sync::MutexGuard<'_, Registry> {
    r.lock().unwrap_or_else(|p| p.into_inner())
}

async fn accept_loop(listener: TcpListener, limits: Limits, pages: Arc<Pages>) {
    let registry = Arc::new(Mutex::new(Registry::default()));
    let mut accept_errors = 0u64;
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of descriptors, say: wait rather than spin.
                accept_errors += 1;
                if accept_errors.is_power_of_two() {
                    tracing::warn!(error = %e, count = accept_errors, "the admin server cannot accept a connection");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let admitted = {
            let mut r = lock(&registry);
            if r.live.len() >= limits.max_connections {
                // Make room by dropping the oldest connection still reading
                // its request: an idle client cannot hold a slot against a
                // newer one.
                let oldest = r
                    .live
                    .iter()
                    .find(|(_, evict)| evict.is_some())
                    .map(|(id, _)| *id);
                if let Some(id) = oldest {
                    r.live.remove(&id);
                }
            }
            if r.live.len() < limits.max_connections {
                let id = r.next_id;
                r.next_id += 1;
                let (tx, rx) = oneshot::channel();
                r.live.insert(id, Some(tx));
                Some((id, rx))
            } else {
                None
            }
        };
        match admitted {
            Some((id, evicted)) => {
                let slot = Slot {
                    id,
                    registry: registry.clone(),
                };
                let pages = pages.clone();
                tokio::spawn(async move {
                    serve_connection(stream, limits, &pages, slot, evicted).await;
                });
            }
            None => {
                // Every slot is writing a reply: refuse at once, without
                // waiting on this client.
                let _ = stream.try_write(&reply(503, "text/plain", "busy: try again\n"));
            }
        }
    }
}

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
enum Head {
    Get(String),
    /// Another method (answered 404, as an unknown page).
    Other,
    /// The request carries a body.
    Body,
    /// Not an HTTP/1 request line.
    Malformed,
}

/// Parses a complete request head (without its final empty line).
fn parse_head(head: &[u8]) -> Head {
    let Ok(text) = std::str::from_utf8(head) else {
        return Head::Malformed;
    };
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let Some(request_line) = lines.next() else {
        return Head::Malformed;
    };
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Head::Malformed;
    };
    if !version.starts_with("HTTP/1.") || method.is_empty() || target.is_empty() {
        return Head::Malformed;
    }
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding")
            || (name.eq_ignore_ascii_case("content-length") && value != "0")
        {
            return Head::Body;
        }
    }
    if method != "GET" {
        return Head::Other;
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    Head::Get(path.to_string())
}

/// Where the request head ends (the index after its empty line), if it does.
fn head_end(buf: &[u8]) -> Option<(usize, usize)> {
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, i + 4));
    let lf = buf
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|i| (i, i + 2));
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

fn reply(code: u16, content_type: &str, body: &str) -> Vec<u8> {
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        408 => "Request Timeout",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

/// How reading the request head ended.
enum Read {
    Head(usize),
    TooLarge,
    Closed,
}

async fn read_head(stream: &mut TcpStream, buf: &mut [u8]) -> Read {
    let mut len = 0;
    loop {
        if len == buf.len() {
            return Read::TooLarge;
        }
        match stream.read(&mut buf[len..]).await {
            Ok(0) | Err(_) => return Read::Closed,
            Ok(n) => {
                // Search from a little before the new bytes: the empty line
                // may straddle two reads.
                let from = len.saturating_sub(3);
                len += n;
                if let Some((end, _)) = head_end(&buf[from..len]) {
                    return Read::Head(from + end);
                }
            }
        }
    }
}

/// One connection: one request, one reply, closed.
async fn serve_connection(
    mut stream: TcpStream,
    limits: Limits,
    pages: &Pages,
    slot: Slot,
    evicted: oneshot::Receiver<()>,
) {
    let mut buf = vec![0u8; limits.max_head];
    let read = {
        let mut reading = std::pin::pin!(tokio::time::timeout(
            limits.head_deadline,
            read_head(&mut stream, &mut buf),
        ));
        let mut evicted = evicted;
        let raced = std::future::poll_fn(|cx| {
            // Dropped for a newer connection: the sender is gone.
            if std::pin::Pin::new(&mut evicted).poll(cx).is_ready() {
                return std::task::Poll::Ready(None);
            }
            reading.as_mut().poll(cx).map(Some)
        })
        .await;
        match raced {
            Some(r) => r,
            None => return,
        }
    };
    slot.replying();
    let (response, linger) = match read {
        Err(_) => (reply(408, "text/plain", "request head too slow\n"), false),
        Ok(Read::Closed) => return,
        Ok(Read::TooLarge) => (
            reply(
                431,
                "text/plain",
                &format!("request head larger than {} bytes\n", limits.max_head),
            ),
            true,
        ),
        Ok(Read::Head(end)) => match parse_head(&buf[..end]) {
            Head::Get(path) if path == "/metrics" || path == "/status" => {
                let (ctype, body) = if path == "/metrics" {
                    (pages.metrics)()
                } else {
                    (pages.status)()
                };
                (reply(200, &ctype, &body), false)
            }
            Head::Get(_) | Head::Other => (reply(404, "text/plain", NOT_FOUND), false),
            Head::Body => (
                reply(
                    413,
                    "text/plain",
                    "the admin endpoint takes no request body\n",
                ),
                true,
            ),
            Head::Malformed => (reply(400, "text/plain", "not an HTTP/1 request\n"), true),
        },
    };
    drop(buf);
    let written = tokio::time::timeout(limits.write_timeout, async {
        stream.write_all(&response).await?;
        stream.shutdown().await
    })
    .await;
    if linger && matches!(written, Ok(Ok(()))) {
        // Read and drop what the client still sends for a short while, so
        // that it sees the reply rather than a reset.
        let mut sink = [0u8; 4096];
        let mut left = limits.linger_bytes;
        let _ = tokio::time::timeout(limits.linger, async {
            while left > 0 {
                match stream.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => left = left.saturating_sub(n),
                }
            }
        })
        .await;
    }
}

/// Builds a Prometheus text exposition.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    /// One metric with its help and type, and one sample per label set.
    pub fn metric(&mut self, name: &str, kind: &str, help: &str, samples: &[(&str, f64)]) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
        for (labels, v) in samples {
            if labels.is_empty() {
                let _ = writeln!(self.out, "{name} {v}");
            } else {
                let _ = writeln!(self.out, "{name}{{{labels}}} {v}");
            }
        }
    }

    pub fn gauge(&mut self, name: &str, help: &str, labels: &str, v: f64) {
        self.metric(name, "gauge", help, &[(labels, v)]);
    }

    pub fn counter(&mut self, name: &str, help: &str, labels: &str, v: f64) {
        self.metric(name, "counter", help, &[(labels, v)]);
    }

    /// A histogram (seconds) with `le` buckets.
    pub fn histogram(
        &mut self,
        name: &str,
        help: &str,
        labels: &str,
        h: &shipper::metrics::Snapshot,
    ) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} histogram");
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, c) in h.cumulative.iter().enumerate() {
            let le = shipper::metrics::BOUNDS
                .get(i)
                .map(|b| b.to_string())
                .unwrap_or_else(|| "+Inf".into());
            let _ = writeln!(self.out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {c}");
        }
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(self.out, "{name}_sum{braces} {}", h.sum_seconds);
        let _ = writeln!(self.out, "{name}_count{braces} {}", h.count);
    }

    pub fn finish(self) -> (String, String) {
        ("text/plain; version=0.0.4".into(), self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read as _, Write as _};
    use std::net::TcpStream;
    use std::time::Instant;

    fn pages() -> (Render, Render) {
        (
            Arc::new(|| ("text/plain; version=0.0.4".into(), "up 1\n".into())),
            Arc::new(|| ("application/json".into(), "{\"ok\":true}".into())),
        )
    }

    fn start(limits: Limits) -> SocketAddr {
        let (m, s) = pages();
        serve_with("127.0.0.1:0", limits, m, s).unwrap()
    }

    /// Sends `request` on a new connection and reads the reply to its end.
    fn ask(addr: SocketAddr, request: &[u8]) -> String {
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(request).unwrap();
        let mut out = Vec::new();
        let _ = c.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn heads_are_parsed_strictly() {
        assert_eq!(
            parse_head(b"GET /metrics HTTP/1.1\r\nHost: x"),
            Head::Get("/metrics".into())
        );
        assert_eq!(
            parse_head(b"GET /status?x=1 HTTP/1.0"),
            Head::Get("/status".into())
        );
        assert_eq!(parse_head(b"POST /metrics HTTP/1.1"), Head::Other);
        assert_eq!(
            parse_head(b"GET /metrics HTTP/1.1\r\nContent-Length: 5"),
            Head::Body
        );
        assert_eq!(
            parse_head(b"GET /metrics HTTP/1.1\r\ntransfer-encoding: chunked"),
            Head::Body
        );
        assert_eq!(
            parse_head(b"GET /metrics HTTP/1.1\r\nContent-Length: 0"),
            Head::Get("/metrics".into())
        );
        assert_eq!(parse_head(b"GET /metrics"), Head::Malformed);
        assert_eq!(parse_head(b"GET  /metrics HTTP/1.1"), Head::Malformed);
        assert_eq!(parse_head(b"\xff\xfe"), Head::Malformed);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nrest"), Some((14, 18)));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\nrest"), Some((14, 16)));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
    }

    #[test]
    fn pages_unknown_paths_bodies_and_large_heads_get_their_answers() {
        let addr = start(Limits::default());
        let r = ask(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(
            r.contains("Content-Type: text/plain; version=0.0.4\r\n"),
            "{r}"
        );
        assert!(r.contains("Connection: close\r\n"), "{r}");
        assert!(r.ends_with("\r\n\r\nup 1\n"), "{r}");
        let r = ask(addr, b"GET /status HTTP/1.0\r\n\r\n");
        assert!(r.ends_with("{\"ok\":true}"), "{r}");
        let r = ask(addr, b"GET /nope HTTP/1.1\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 404 "), "{r}");
        assert!(r.ends_with(NOT_FOUND), "{r}");
        let r = ask(
            addr,
            b"GET /metrics HTTP/1.1\r\nContent-Length: 4\r\n\r\nbody",
        );
        assert!(r.starts_with("HTTP/1.1 413 "), "{r}");
        let mut big = b"GET /metrics HTTP/1.1\r\nX-Big: ".to_vec();
        big.resize(64 * 1024, b'a');
        let r = ask(addr, &big);
        assert!(r.starts_with("HTTP/1.1 431 "), "{r}");
        let r = ask(addr, b"HELLO\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 400 "), "{r}");
    }

    #[test]
    fn a_pipelining_client_gets_one_reply_and_is_closed() {
        let addr = start(Limits::default());
        let one = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
        let r = ask(addr, &one.repeat(50));
        assert_eq!(r.matches("HTTP/1.1 200 OK").count(), 1, "{r}");
    }

    #[test]
    fn idle_connections_make_room_for_a_new_client_and_a_slow_head_times_out() {
        let limits = Limits {
            max_connections: 4,
            head_deadline: Duration::from_secs(3),
            ..Limits::default()
        };
        let addr = start(limits);
        // Twenty idle clients, five times the cap: the newest still gets its page.
        let idle: Vec<TcpStream> = (0..20).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let t = Instant::now();
        let r = ask(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
        assert!(r.ends_with("up 1\n"), "{r}");
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        // An idle connection that kept its slot is answered 408 and closed
        // at the head deadline (or was dropped for a newer one: closed).
        let mut last = idle.into_iter().last().unwrap();
        last.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut out = Vec::new();
        let _ = last.read_to_end(&mut out);
        let out = String::from_utf8_lossy(&out);
        assert!(out.is_empty() || out.starts_with("HTTP/1.1 408 "), "{out}");
    }
}
