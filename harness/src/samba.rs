//! A private smbd for tests and benchmarks: its own config, state, lock
//! and log directories and port under a temp dir, a user and password set
//! here, started on loopback and stopped (and reaped) when dropped. If smbd
//! cannot start, `try_start` says why with smbd's own output, and `start`
//! panics with it: a test that needs Samba fails and says why, it never
//! skips. Needs root (smbd, useradd).
//! Test credentials only: never use this for a real share.

use std::net::TcpStream;

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

use crate::sys::program;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const USER: &str = "logshiptest";
pub const PASSWORD: &str = "Harness-Pass-7";

#[derive(Debug)]
pub struct Samba {
    pub root: tempfile::TempDir,
    pub port: u16,
    /// The address smbd listens on (127.0.0.1 unless `start_on`).
    pub host: String,
    /// None while stopped (`stop`).
    child: Option<Child>,
}

const INSTALL: &str = "is samba installed? tools/test.sh installs it";

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("{what}: cannot run it ({INSTALL})"))?;
    if !out.status.success() {
        bail!(
            "{what} failed: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

impl Samba {
    /// Starts smbd with `shares` (smb.conf share sections) after the
    /// harness's [global]; panics, saying why, if it cannot.
    pub fn start(shares: &str) -> Samba {
        Self::start_on("127.0.0.1", shares)
    }

    /// Like `start`, listening on `host` (an address the test set up).
    pub fn start_on(host: &str, shares: &str) -> Samba {
        Self::try_start_on(host, shares).unwrap_or_else(|e| panic!("private smbd: {e:#}"))
    }

    /// Starts smbd on 127.0.0.1, or says why it could not.
    pub fn try_start(shares: &str) -> Result<Samba> {
        Self::try_start_on("127.0.0.1", shares)
    }

    /// Starts smbd listening on `host`, or says why it could not.
    pub fn try_start_on(host: &str, shares: &str) -> Result<Samba> {
        let root = tempfile::tempdir().context("create the private smbd's directory")?;
        let r = root.path();
        for d in ["lock", "state", "cache", "pid", "private", "ncalrpc", "log"] {
            std::fs::create_dir_all(r.join(d))
                .with_context(|| format!("create {}", r.join(d).display()))?;
        }
        let port = crate::sys::free_tcp_port()?;
        let conf = r.join("smb.conf");
        std::fs::write(
            &conf,
            format!(
                "[global]
    server role = standalone server
    netbios name = LOGSHIPTEST
    workgroup = WORKGROUP
    interfaces = {host}
    bind interfaces only = yes
    smb ports = {port}
    disable netbios = yes
    server min protocol = SMB2_10
    server smb encrypt = default
    lock directory = {r}/lock
    state directory = {r}/state
    cache directory = {r}/cache
    pid directory = {r}/pid
    private dir = {r}/private
    ncalrpc dir = {r}/ncalrpc
    log file = {r}/log/log.%m
    passdb backend = tdbsam:{r}/private/passdb.tdb
    map to guest = Bad User
    load printers = no
    printing = bsd
    printcap name = /dev/null
    disable spoolss = yes
    usershare path =
    socket options = TCP_NODELAY SO_KEEPALIVE TCP_KEEPIDLE=2 TCP_KEEPINTVL=1 TCP_KEEPCNT=3
    aio read size = 0
    aio write size = 0

{shares}",
                r = r.display()
            ),
        )
        .with_context(|| format!("write {}", conf.display()))?;
        // smbpasswd needs a Unix user.
        if !Command::new(program("id"))
            .arg(USER)
            .output()
            .context("run id")?
            .status
            .success()
        {
            run(
                Command::new(program("useradd")).args(["-M", "-s", "/usr/sbin/nologin", USER]),
                "useradd",
            )?;
        }
        let mut p = Command::new(program("smbpasswd"))
            .arg("-c")
            .arg(&conf)
            .args(["-s", "-a", USER])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("run smbpasswd ({INSTALL})"))?;
        use std::io::Write;
        p.stdin
            .take()
            .context("smbpasswd's stdin")?
            .write_all(format!("{PASSWORD}\n{PASSWORD}\n").as_bytes())
            .context("write to smbpasswd")?;
        let out = p.wait_with_output().context("wait for smbpasswd")?;
        if !out.status.success() {
            bail!("smbpasswd failed: {}", String::from_utf8_lossy(&out.stderr));
        }

        let child = Some(spawn_smbd(r, host, port)?);
        Ok(Samba {
            root,
            port,
            host: host.to_string(),
            child,
        })
    }

    /// Kills smbd (SIGTERM: it takes its per-client children with it) and
    /// starts it again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// Kills smbd and its per-client children: the share is gone until
    /// `start_again`.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill on our own child's pid, not yet waited for.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }

    /// Starts smbd again on the same port after `stop`; panics, saying
    /// why, if it cannot.
    pub fn start_again(&mut self) {
        if self.child.is_none() {
            let child = spawn_smbd(self.root.path(), &self.host, self.port);
            self.child = Some(child.unwrap_or_else(|e| panic!("private smbd: {e:#}")));
        }
    }

    /// A password file (owner-only) for logship.
    pub fn password_file(&self) -> PathBuf {
        self.try_password_file()
            .unwrap_or_else(|e| panic!("private smbd: {e:#}"))
    }

    /// A password file (owner-only) for logship, or why it was not written.
    pub fn try_password_file(&self) -> Result<PathBuf> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let p = self.root.path().join("smb-password");
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&p)
            .and_then(|mut f| f.write_all(PASSWORD.as_bytes()))
            .with_context(|| format!("write {}", p.display()))?;
        Ok(p)
    }

    pub fn url(&self, share: &str) -> String {
        format!("smb://{USER}@{}:{}/{share}", self.host, self.port)
    }

    /// A share section exporting `path` to the harness's user.
    pub fn share_section(name: &str, path: &Path) -> String {
        format!(
            "[{name}]\n    path = {}\n    read only = no\n    valid users = {USER}\n    force user = root\n",
            path.display()
        )
    }
}

impl Drop for Samba {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn_smbd(r: &Path, host: &str, port: u16) -> Result<Child> {
    let conf = r.join("smb.conf");
    let log_path = r.join("log/smbd.out");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("create {}", log_path.display()))?;
    let mut cmd = Command::new(program("smbd"));
    cmd.args(["--foreground", "--debug-stdout", "-d", "1"])
        .arg(format!("--configfile={}", conf.display()))
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("duplicate smbd's log file")?)
        .stderr(log);
    crate::sys::die_with_parent(&mut cmd);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("start smbd ({INSTALL})"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if TcpStream::connect((host, port)).is_ok() {
            break;
        }
        if let Some(status) = child.try_wait().context("wait for smbd")? {
            bail!(
                "smbd exited ({status}) before accepting connections:\n{}",
                std::fs::read_to_string(r.join("log/smbd.out")).unwrap_or_default()
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "smbd did not accept connections on {host}:{port} within 10 s:\n{}",
                std::fs::read_to_string(r.join("log/smbd.out")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(child)
}
