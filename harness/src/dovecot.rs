//! A private Dovecot LMTP server for tests and `bench mail`: its own
//! config, state and log directories, port and passwd-file users with
//! Maildirs under a temp dir, started in the foreground and stopped (and
//! reaped) when dropped. If it cannot start, `try_start` says why with its
//! log, and `start` panics with it: a test that needs Dovecot fails and says
//! why. Needs root (it delivers as
//! the `vmail` user, uid 5000, which it creates when missing).

use std::net::TcpStream;

use anyhow::{Context, Result, bail};
use std::os::unix::process::CommandExt;

use crate::sys::program;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const VMAIL_UID: u32 = 5000;

#[derive(Debug)]
pub struct Dovecot {
    pub root: tempfile::TempDir,
    pub port: u16,
    child: Child,
}

impl Dovecot {
    /// Starts Dovecot LMTP with one mailbox per address in `users`;
    /// panics, saying why, if it cannot.
    pub fn start(users: &[&str]) -> Dovecot {
        Self::try_start(users).unwrap_or_else(|e| panic!("private dovecot: {e:#}"))
    }

    /// Starts Dovecot LMTP with one mailbox per address in `users`, or says
    /// why it could not.
    pub fn try_start(users: &[&str]) -> Result<Dovecot> {
        let root = tempfile::tempdir().context("create the private dovecot's directory")?;
        let r = root.path();
        for d in ["run", "state", "log", "home"] {
            std::fs::create_dir_all(r.join(d))
                .with_context(|| format!("create {}", r.join(d).display()))?;
        }
        // Dovecot delivers as `vmail`, which must reach the Maildirs: these
        // directories are open whatever the umask (logship runs under 077).
        for d in [
            r.to_path_buf(),
            r.join("run"),
            r.join("state"),
            r.join("log"),
            r.join("home"),
        ] {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755))
                .with_context(|| format!("open {} to vmail", d.display()))?;
        }
        let has_vmail = Command::new(program("id"))
            .arg("vmail")
            .output()
            .is_ok_and(|o| o.status.success());
        if !has_vmail {
            let out = Command::new(program("useradd"))
                .args([
                    "-u",
                    &VMAIL_UID.to_string(),
                    "-M",
                    "-s",
                    "/usr/sbin/nologin",
                    "vmail",
                ])
                .output()
                .context("run useradd")?;
            if !out.status.success() {
                bail!("useradd vmail: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
        let mut passwd = String::new();
        for u in users {
            let home = r.join("home").join(u);
            std::fs::create_dir_all(&home)
                .and_then(|()| std::os::unix::fs::chown(&home, Some(VMAIL_UID), Some(VMAIL_UID)))
                .with_context(|| format!("make {} vmail's", home.display()))?;
            passwd.push_str(&format!(
                "{u}::{VMAIL_UID}:{VMAIL_UID}::{}::\n",
                home.display()
            ));
        }
        // Read by Dovecot's unprivileged auth process.
        let users_file = r.join("users");
        std::fs::write(&users_file, passwd)
            .and_then(|()| {
                std::fs::set_permissions(
                    &users_file,
                    std::os::unix::fs::PermissionsExt::from_mode(0o644),
                )
            })
            .with_context(|| format!("write {}", users_file.display()))?;
        let port = crate::sys::free_tcp_port()?;
        let conf = r.join("dovecot.conf");
        std::fs::write(
            &conf,
            format!(
                "protocols = lmtp
listen = 127.0.0.1
ssl = no
base_dir = {r}/run
state_dir = {r}/state
log_path = {r}/log/dovecot.log
first_valid_uid = {VMAIL_UID}
mail_location = maildir:~/Maildir
passdb {{
  driver = passwd-file
  args = username_format=%u {r}/users
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {r}/users
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {port}
  }}
}}
",
                r = r.display()
            ),
        )
        .with_context(|| format!("write {}", conf.display()))?;
        let mut cmd = Command::new(program("dovecot"));
        cmd.arg("-F")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: prctl and umask only set attributes of the child; both are
        // async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                // Dovecot as it runs as a system service, not under logship's 077.
                libc::umask(0o022);
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .context("start dovecot (is dovecot-lmtpd installed? tools/test.sh installs it)")?;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            let log = || std::fs::read_to_string(r.join("log/dovecot.log")).unwrap_or_default();
            if let Some(status) = child.try_wait().context("wait for dovecot")? {
                bail!("dovecot exited ({status}) before listening:\n{}", log());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "dovecot did not listen on 127.0.0.1:{port} within 15 s:\n{}",
                    log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Dovecot { root, port, child })
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Messages delivered to `user` (files in its Maildir's new/).
    pub fn delivered(&self, user: &str) -> Vec<Vec<u8>> {
        let dir = self.root.path().join("home").join(user).join("Maildir/new");
        let Ok(rd) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        rd.filter_map(|e| std::fs::read(e.ok()?.path()).ok())
            .collect()
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}
