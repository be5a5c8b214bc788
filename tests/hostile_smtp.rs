//! The relay's SMTP intake (`logship dumpster`, the real binary) against
//! hostile clients written with Python's standard library: one address
//! holding every connection it can, 256 sessions sending the largest
//! message at once (the relay's peak RSS stays under the bound the README
//! states), an endless line, a SIZE past 2^64, `<postmaster>`, an address
//! that is not UTF-8, and a folded Message-ID (never echoed: the reply names the relay's delivery id). No node runs: only intake is under test.

mod common;

use std::time::{Duration, Instant};

use common::trio::Trio;

/// The bound on the relay's RSS the README states, with the default limits.
const RSS_BOUND_MIB: u64 = 512;

fn host_port(t: &Trio) -> (String, String) {
    common::trio::split_addr(&t.smtp())
}

/// Sends one small message with smtplib from `source`; the reply to DATA.
const SEND_ONE: &str = r#"
import smtplib, sys
host, port, source = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with smtplib.SMTP(host, port, timeout=30, source_address=(source, 0)) as s:
    s.ehlo("client")
    s.mail("a@example.org")
    code, _ = s.rcpt(sys.argv[4])
    assert code == 250, code
    code, text = s.data(b"Subject: hello\r\n\r\nbody\r\n")
    print(code, text.decode())
"#;

fn send_one(t: &Trio, source: &str, rcpt: &str) -> String {
    let (host, port) = host_port(t);
    t.python(SEND_ONE, &[&host, &port, source, rcpt])
}

/// Opens connections from 127.0.0.2 until one is refused, holds them, and
/// while it holds them has a normal client on 127.0.0.3 send a message.
const ABUSER: &str = r#"
import socket, subprocess, sys
host, port = sys.argv[1], int(sys.argv[2])
held = []
refusal = None
while refusal is None and len(held) < 1000:
    c = socket.create_connection((host, port), timeout=10, source_address=("127.0.0.2", 0))
    greeting = c.recv(512).decode()
    if greeting.startswith("220"):
        held.append(c)
    else:
        refusal = greeting.strip()
        c.close()
print("held", len(held))
print("refused", refusal)
sys.stdout.flush()
# The normal client, while the abuser holds all it can.
out = subprocess.run([sys.executable, "-c", sys.argv[3], host, str(port), "127.0.0.3", "ann@example.com"],
                     capture_output=True, text=True, timeout=60)
print("normal", out.stdout.strip(), out.stderr.strip().replace("\n", " | "))
"#;

#[test]
fn one_address_cannot_take_every_session() {
    let t = Trio::with_mail("good-availability");
    let _relay = t.start_relay();
    let (host, port) = host_port(&t);
    let out = t.python(ABUSER, &[&host, &port, SEND_ONE]);
    assert!(out.contains("held 16\n"), "{out}");
    assert!(
        out.contains("refused 421 4.7.0 too many sessions from your address\n"),
        "{out}"
    );
    assert!(out.contains("normal 250 2.0.0 queued as "), "{out}");
}

/// `n` sessions from 16 source addresses (the per-address limit each),
/// all sending a message of `size` bytes at once (after a barrier); prints
/// a count per final reply code.
const FLOOD: &str = r#"
import collections, socket, sys, threading, time
host, port, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
line = b"x" * 998 + b"\r\n"
body = b"Subject: big\r\n\r\n" + line * ((size - 16) // len(line)) + b".\r\n"
results = collections.Counter()
lock = threading.Lock()
ready = threading.Barrier(n)

def reply(f):
    while True:
        l = f.readline()
        if not l:
            return "eof"
        if l[3:4] != b"-":
            return l.decode(errors="replace").strip()

def run(i):
    source = "127.0.1.%d" % (10 + i % 16)
    deadline = time.time() + 10
    try:
        while True:
            c = socket.create_connection((host, port), timeout=120, source_address=(source, 0))
            f = c.makefile("rb")
            g = reply(f)
            if g.startswith("220") or time.time() > deadline:
                break
            # A session of an earlier client not yet ended: try again.
            c.close()
            time.sleep(0.05)
        assert g.startswith("220"), g
        c.sendall(b"EHLO flood\r\n")
        reply(f)
        c.sendall(b"MAIL FROM:<flood@example.org> SIZE=%d\r\nRCPT TO:<box@example.com>\r\nDATA\r\n" % len(body))
        r = [reply(f) for _ in range(3)]
        assert r[2].startswith("354"), r
        ready.wait(timeout=60)
        c.sendall(body)
        code = reply(f)[:3]
        c.sendall(b"QUIT\r\n")
        c.close()
    except Exception as e:
        code = "error %r" % (e,)
        try:
            ready.abort()
        except Exception:
            pass
    with lock:
        results[code] += 1

threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
for t in threads:
    t.start()
for t in threads:
    t.join()
for code, count in sorted(results.items()):
    print(code, count)
"#;

/// VmRSS and VmHWM of `pid`, in KiB.
fn rss(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[test]
fn many_sessions_sending_the_largest_message_stay_within_the_memory_bound() {
    let t = Trio::with_mail("good-availability");
    let relay = t.start_relay();
    let pid = relay.0.id();
    let (host, port) = host_port(&t);
    let limits = dumpster::protocol::Limits::default();
    let sessions = limits.max_sessions;
    let size = limits.max_message;
    let started = Instant::now();
    let (idle_rss, _) = rss(pid);
    // Sample while the flood runs.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss(pid).0);
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        })
    };
    let out = t.python(
        FLOOD,
        &[&host, &port, &sessions.to_string(), &size.to_string()],
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sampled_peak = sampler.join().unwrap();
    let elapsed = started.elapsed();
    let (after, hwm) = rss(pid);
    eprintln!(
        "{sessions} sessions x {size} bytes in {elapsed:?}: relay RSS idle {} MiB, sampled peak {} MiB, VmHWM {} MiB, after {} MiB; replies:\n{out}",
        idle_rss >> 10,
        sampled_peak >> 10,
        hwm >> 10,
        after >> 10
    );
    // Every session was answered, 250 or 452; nothing else.
    let mut total = 0;
    for l in out.lines() {
        let (code, count) = l.rsplit_once(' ').unwrap();
        assert!(code == "250" || code == "452", "{out}");
        total += count.parse::<usize>().unwrap();
    }
    assert_eq!(total, sessions, "{out}");
    assert!(out.contains("452 "), "the budget never refused: {out}");
    assert!(
        hwm < RSS_BOUND_MIB << 10,
        "relay peak RSS {} MiB over the {RSS_BOUND_MIB} MiB bound",
        hwm >> 10
    );
    // Still taking mail.
    let r = send_one(&t, "127.0.0.4", "ann@example.com");
    assert!(r.starts_with("250 "), "{r}");
}

/// Raw exchanges: the endless line, SIZE past 2^64, an address that is not
/// UTF-8; each reply line printed as it comes, `--` between steps.
const ODD: &str = r#"
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
c = socket.create_connection((host, port), timeout=30)
f = c.makefile("rb")
def reply():
    lines = []
    while True:
        l = f.readline()
        if not l:
            return lines + ["eof"]
        lines.append(l.decode(errors="replace").rstrip("\r\n"))
        if l[3:4] != b"-":
            return lines
def step(data, replies):
    c.sendall(data)
    for _ in range(replies):
        for l in reply():
            print(l)
    print("--")
reply()
step(b"EHLO odd\r\n", 1)
# 10 MB without CRLF, then its CRLF and a NOOP, pipelined: one 500, one 250.
c.sendall(b"NOOP " + b"y" * 10_000_000)
step(b"\r\nNOOP\r\n", 2)
step(b"MAIL FROM:<a@example.org> SIZE=99999999999999999999999\r\n", 1)
step(b"MAIL FROM:<a\xff\xfe@example.org>\r\n", 1)
step(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b\xe9@example.com>\r\nRCPT TO:<b\xc3\xa9@example.com>\r\n", 3)
# A Message-ID folded over two lines, with non-ASCII text: the relay answers
# with its own delivery id, on one line, and never echoes the Message-ID.
step(b"DATA\r\n", 1)
step(b"Message-ID: <folded@test\r\n \xc3\xbc\xc3\xa9>\r\nSubject: s\r\n\r\nbody\r\n.\r\n", 1)
# Nothing left unanswered: the next reply is QUIT's.
step(b"QUIT\r\n", 1)
"#;

#[test]
fn odd_input_gets_one_right_reply_each() {
    let t = Trio::with_mail("good-availability");
    let _relay = t.start_relay();
    let (host, port) = host_port(&t);
    let out = t.python(ODD, &[&host, &port]);
    let steps: Vec<&str> = out.split("--\n").collect();
    let codes = |s: &str| -> Vec<String> { s.lines().map(|l| l[..4].to_string()).collect() };
    assert_eq!(codes(steps[1]), ["500 ", "250 "], "{out}");
    assert_eq!(codes(steps[2]), ["552 "], "{out}");
    assert_eq!(codes(steps[3]), ["553 "], "{out}");
    assert_eq!(codes(steps[4]), ["250 ", "553 ", "250 "], "{out}");
    assert_eq!(codes(steps[5]), ["354 "], "{out}");
    assert_eq!(codes(steps[6]), ["250 "], "{out}");
    // The relay names the message by its own delivery id, never by the
    // client's Message-ID.
    let id = steps[6]
        .trim_end()
        .strip_prefix("250 2.0.0 queued as ")
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{out}"
    );
    assert_eq!(codes(steps[7]), ["221 "], "{out}");
    // <postmaster> is taken, for the first accepted domain.
    let r = send_one(&t, "127.0.0.1", "postmaster");
    assert!(r.starts_with("250 "), "{r}");
    let r = send_one(&t, "127.0.0.1", "PostMaster");
    assert!(r.starts_with("250 "), "{r}");
}
