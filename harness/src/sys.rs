//! Small facts of the machine that the tests, the benchmarks, the demo and
//! the private Samba and Dovecot servers share: where a system program is,
//! and a free loopback port.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

/// The child gets SIGTERM when the process that started it dies, so a
/// private server never outlives its test or benchmark.
pub fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl only sets a flag of the child; it is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
}

/// A system program by name: from PATH, else from the sbin directories
/// (which a non-login root shell may not have on its PATH).
pub fn program(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Ports handed out here: below Linux's default ephemeral range (32768 and
/// up), so that no outgoing connection of another process is given the port
/// between the check and its use, as happens with a port picked by binding
/// port 0. Processes running side by side pick at random.
const PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A pseudo-random candidate port (no cryptographic need: spreading picks
/// of concurrent processes is enough).
fn candidate() -> u16 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static STATE: AtomicU64 = AtomicU64::new(0);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        ^ (u64::from(std::process::id()) << 32);
    let mut x = STATE.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed) ^ seed;
    // splitmix64
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    PORTS.start + (x % u64::from(PORTS.end - PORTS.start)) as u16
}

/// How long a port handed out stays reserved against other processes.
const RESERVED_FOR: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// Reserves `port` against the other processes that pick ports here (tests
/// run side by side, each in its own process): a marker file created
/// exclusively, or one older than `RESERVED_FOR`. A port is free between
/// the check and the bind of the server it is for; without this, another
/// process could pick and bind it first.
fn reserve(port: u16) -> bool {
    let dir = std::env::temp_dir().join("logship-ports");
    if std::fs::create_dir_all(&dir).is_err() {
        // Nowhere to mark it: the random pick alone.
        return true;
    }
    let marker = dir.join(port.to_string());
    let fresh = || {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&marker)
            .is_ok()
    };
    if fresh() {
        return true;
    }
    let stale = std::fs::metadata(&marker)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age > RESERVED_FOR);
    stale && std::fs::remove_file(&marker).is_ok() && fresh()
}

fn free_port(free: impl Fn(u16) -> bool) -> std::io::Result<u16> {
    for _ in 0..500 {
        let port = candidate();
        if free(port) && reserve(port) {
            return Ok(port);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        format!("no free loopback port in {}..{}", PORTS.start, PORTS.end),
    ))
}

/// A TCP port free on loopback now.
pub fn free_tcp_port() -> std::io::Result<u16> {
    free_port(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
}

/// A UDP port free on loopback now (heartbeats).
pub fn free_udp_port() -> std::io::Result<u16> {
    free_port(|p| std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok())
}
