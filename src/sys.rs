//! Small facts of the machine that the tests, the benchmarks, the demo and
//! the private Samba and Dovecot servers share: where a system program is,
//! and a free loopback port.

use std::path::PathBuf;

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

/// A TCP port free on loopback now.
pub fn free_tcp_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A UDP port free on loopback now (heartbeats).
pub fn free_udp_port() -> std::io::Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
