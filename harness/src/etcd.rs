//! A private etcd for tests and the demo: one member or several, each with
//! its own data directory, client and peer ports on loopback, started in the
//! foreground and stopped (and reaped) when dropped. If a member cannot
//! start, `try_start` says why with its log, and `start` panics with it.
//! Needs Debian's `etcd-server` (tools/test.sh installs it).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::sys::{free_tcp_port, program};

const INSTALL: &str = "is etcd-server installed? tools/test.sh installs it";

/// The `etcd` program: `LOGSHIP_ETCD` when set, else `etcd` from PATH or
/// the system's directories.
pub fn program_path() -> std::path::PathBuf {
    match std::env::var_os("LOGSHIP_ETCD") {
        Some(p) => p.into(),
        None => program("etcd"),
    }
}

#[derive(Debug)]
struct Member {
    name: String,
    client: u16,
    peer: u16,
    child: Option<Child>,
}

/// A private etcd cluster on loopback.
#[derive(Debug)]
pub struct Etcd {
    /// Where the members keep their data and logs.
    pub root: PathBuf,
    /// The temporary directory `root` is, unless one was given.
    _temp: Option<tempfile::TempDir>,
    /// Members started to outlive this process (`in_dir`'s `detached`).
    detached: bool,
    /// Leave the members running when dropped.
    kept: bool,
    /// The address every member listens on.
    host: String,
    members: Vec<Member>,
    initial_cluster: String,
}

impl Etcd {
    /// Starts `n` members; panics, saying why, if it cannot.
    pub fn start(n: usize) -> Etcd {
        Self::try_start(n).unwrap_or_else(|e| panic!("private etcd: {e:#}"))
    }

    /// Starts `n` members and waits until the cluster has a leader, or
    /// says why it could not.
    pub fn try_start(n: usize) -> Result<Etcd> {
        Self::try_start_on("127.0.0.1", n)
    }

    /// `start`, listening on `host` (an address of this namespace that
    /// network namespaces the test made can reach).
    pub fn start_on(host: &str, n: usize) -> Etcd {
        Self::try_start_on(host, n).unwrap_or_else(|e| panic!("private etcd on {host}: {e:#}"))
    }

    fn try_start_on(host: &str, n: usize) -> Result<Etcd> {
        let temp = tempfile::tempdir().context("create the private etcd's directory")?;
        Self::start_with(temp.path().to_path_buf(), Some(temp), host, n, false)
    }

    /// One member on loopback keeping its data in `dir` (the demo's). A
    /// `detached` member does not die with this process, so that `keep`
    /// can leave it running.
    pub fn in_dir(dir: &Path, detached: bool) -> Result<Etcd> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        Self::start_with(dir.to_path_buf(), None, "127.0.0.1", 1, detached)
    }

    /// Leaves the members running when this value is dropped.
    pub fn keep(&mut self) {
        self.kept = true;
    }

    fn start_with(
        root: PathBuf,
        temp: Option<tempfile::TempDir>,
        host: &str,
        n: usize,
        detached: bool,
    ) -> Result<Etcd> {
        let mut members = Vec::new();
        for i in 0..n.max(1) {
            members.push(Member {
                name: format!("m{}", i + 1),
                client: free_tcp_port()?,
                peer: free_tcp_port()?,
                child: None,
            });
        }
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://{host}:{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let mut etcd = Etcd {
            root,
            _temp: temp,
            detached,
            kept: false,
            host: host.to_string(),
            members,
            initial_cluster,
        };
        for i in 0..etcd.members.len() {
            etcd.spawn(i)?;
        }
        etcd.wait_healthy(Duration::from_secs(30))?;
        Ok(etcd)
    }

    /// `HOST:PORT` of each member's client port.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("{}:{}", self.host, m.client))
            .collect()
    }

    /// The arbiter URL for a cluster config: `etcd://H:P,H:P/prefix`.
    pub fn url(&self, prefix: &str) -> String {
        format!("etcd://{}/{prefix}", self.endpoints().join(","))
    }

    /// Kills member `i` with SIGKILL (its data stays).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts member `i` again after `kill`, on its ports and data.
    pub fn restart(&mut self, i: usize) -> Result<()> {
        if self.members[i].child.is_none() {
            self.spawn(i)?;
        }
        Ok(())
    }

    fn spawn(&mut self, i: usize) -> Result<()> {
        let dir = self.root.join(&self.members[i].name);
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let log_path = self.root.join(format!("{}.log", self.members[i].name));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("open {}", log_path.display()))?;
        let m = &self.members[i];
        let client = format!("http://{}:{}", self.host, m.client);
        let peer = format!("http://{}:{}", self.host, m.peer);
        let token = format!(
            "logship-{}",
            self.root.file_name().unwrap_or_default().to_string_lossy()
        );
        let mut cmd = Command::new(program_path());
        cmd.arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&dir)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-token", &token])
            .args(["--initial-cluster-state", "new"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("duplicate etcd's log file")?)
            .stderr(log);
        if !self.detached {
            crate::sys::die_with_parent(&mut cmd);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("start etcd ({INSTALL})"))?;
        self.members[i].child = Some(child);
        Ok(())
    }

    /// Waits until a member answers that the cluster is healthy.
    fn wait_healthy(&mut self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            for m in &mut self.members {
                if let Some(c) = m.child.as_mut()
                    && let Some(status) = c.try_wait().context("wait for etcd")?
                {
                    bail!(
                        "etcd member {} exited ({status}) before the cluster was up:\n{}",
                        m.name,
                        tail(&self.root.join(format!("{}.log", m.name)))
                    );
                }
            }
            if self
                .members
                .iter()
                .filter(|m| m.child.is_some())
                .any(|m| healthy(&self.host, m.client))
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "etcd did not become healthy within {} s:\n{}",
                    within.as_secs(),
                    tail(&self.root.join("m1.log"))
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Whether the member on `port` says the cluster is healthy (`/health`).
fn healthy(host: &str, port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect((host, port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut out = Vec::new();
    let _ = s.take(64 * 1024).read_to_end(&mut out);
    String::from_utf8_lossy(&out).contains("\"health\":\"true\"")
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        for m in &mut self.members {
            if let Some(mut c) = m.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}
