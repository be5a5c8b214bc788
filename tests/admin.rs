//! The admin endpoint against hostile clients, on a real `logship dumpster`
//! process: a thousand idle connections, a 10 MB request head, and a client
//! that pipelines requests without reading the replies. None of them stops
//! another client from reading `/metrics`, and the daemon's threads,
//! descriptors and memory stay bounded.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::trio::Trio;

/// A field of `/proc/<pid>/status` (Threads, VmRSS in kB, ...).
fn proc_status(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status:\n{text}"))
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// One GET on a new connection: the whole reply, or why there is none.
fn get(addr: &str, path: &str) -> Result<String, String> {
    let mut c = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    c.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    c.write_all(format!("GET {path} HTTP/1.1\r\nHost: admin\r\n\r\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    c.read_to_end(&mut out).map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// `/metrics` answers 200 with the relay's gauges within `within`.
fn metrics_within(addr: &str, within: Duration) -> Duration {
    let t = Instant::now();
    loop {
        match get(addr, "/metrics") {
            Ok(r) if r.starts_with("HTTP/1.1 200 ") && r.contains("logship_relay_queue_length") => {
                return t.elapsed();
            }
            other => assert!(
                t.elapsed() < within,
                "no /metrics within {within:?}: {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn relay() -> (Trio, common::Daemon, String, u32) {
    let t = Trio::with_mail("good-availability");
    let d = t.start_relay();
    let addr = t.admin("dumpster");
    t.wait_for("the relay's admin endpoint", 30, || {
        get(&addr, "/metrics").is_ok_and(|r| r.starts_with("HTTP/1.1 200 "))
    });
    let pid = d.0.id();
    (t, d, addr, pid)
}

#[test]
fn a_thousand_idle_connections_neither_stop_metrics_nor_grow_threads() {
    let (_t, _relay, addr, pid) = relay();
    let threads_before = proc_status(pid, "Threads");
    let fds_before = open_fds(pid);
    let mut idle = Vec::new();
    for _ in 0..1200 {
        match TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2)) {
            Ok(c) => idle.push(c),
            Err(e) => panic!("connection {} refused: {e}", idle.len()),
        }
    }
    // Half of them send the start of a request and stop.
    for c in idle.iter_mut().step_by(2) {
        let _ = c.write_all(b"GET /metrics HTTP/1.1\r\nHost: ");
    }
    let took = metrics_within(&addr, Duration::from_secs(3));
    eprintln!("/metrics with 1200 idle connections open: {took:?}");
    let threads = proc_status(pid, "Threads");
    let fds = open_fds(pid);
    eprintln!("relay threads {threads_before} -> {threads}, descriptors {fds_before} -> {fds}");
    assert!(
        threads <= threads_before + 1,
        "threads grew from {threads_before} to {threads}"
    );
    // At most the cap (64) of admin connections held open, plus slack for
    // the relay's own work.
    assert!(
        fds <= fds_before + 64 + 8,
        "descriptors grew from {fds_before} to {fds}"
    );
    drop(idle);
}

#[test]
fn a_ten_megabyte_head_is_refused_and_memory_does_not_grow() {
    let (_t, _relay, addr, pid) = relay();
    metrics_within(&addr, Duration::from_secs(3));
    let rss_before = proc_status(pid, "VmRSS");
    for _ in 0..3 {
        let mut c = TcpStream::connect(&addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut w = c.try_clone().unwrap();
        // The sender runs on its own: the server stops reading long before
        // the 10 MB are sent, so it ends with an error.
        let sender = std::thread::spawn(move || {
            let _ = w.write_all(b"GET /metrics HTTP/1.1\r\nX-Big: ");
            let chunk = vec![b'a'; 64 * 1024];
            let mut sent = 0;
            while sent < 10 << 20 {
                if w.write_all(&chunk).is_err() {
                    break;
                }
                sent += chunk.len();
            }
            sent
        });
        let mut out = Vec::new();
        let _ = c.read_to_end(&mut out);
        let out = String::from_utf8_lossy(&out);
        assert!(out.starts_with("HTTP/1.1 431 "), "{out}");
        drop(c);
        let sent = sender.join().unwrap();
        assert!(sent < 10 << 20, "the server read all {sent} bytes");
        metrics_within(&addr, Duration::from_secs(3));
    }
    let rss = proc_status(pid, "VmRSS");
    eprintln!("relay RSS {rss_before} kB -> {rss} kB after three 10 MB heads");
    assert!(
        rss < rss_before + 4 * 1024,
        "RSS grew from {rss_before} kB to {rss} kB"
    );
}

#[test]
fn a_client_pipelining_ten_thousand_requests_without_reading_blocks_nobody() {
    let (_t, _relay, addr, _pid) = relay();
    let request = b"GET /metrics HTTP/1.1\r\nHost: admin\r\n\r\n".repeat(10_000);
    let mut pipeliners = Vec::new();
    let mut held = Vec::new();
    for _ in 0..4 {
        let c = TcpStream::connect(&addr).unwrap();
        let mut w = c.try_clone().unwrap();
        let request = request.clone();
        pipeliners.push(std::thread::spawn(move || w.write_all(&request).is_ok()));
        // Never read: the replies would pile up if the server kept serving.
        held.push(c);
    }
    for _ in 0..20 {
        let took = metrics_within(&addr, Duration::from_secs(2));
        assert!(took < Duration::from_secs(2), "{took:?}");
    }
    // Each pipelining connection was answered once and closed: its writer
    // stops (the rest of its requests were never read).
    for (p, mut c) in pipeliners.into_iter().zip(held) {
        let all_sent = p.join().unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut out = Vec::new();
        let _ = c.read_to_end(&mut out);
        let out = String::from_utf8_lossy(&out);
        assert!(
            out.matches("HTTP/1.1 ").count() <= 1,
            "more than one reply on one connection (all sent: {all_sent}): {out}"
        );
    }
}
