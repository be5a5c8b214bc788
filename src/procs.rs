//! A set of `logship` processes started from this binary against one
//! config file, for `logship demo` and the benchmarks that run a cluster:
//! one-shot commands, daemons with their logs in `<dir>/<name>.log`,
//! SIGKILL, status, and waiting for a condition. Daemons still running are
//! killed when dropped, unless `keep` is set.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

#[derive(Debug)]
pub struct Procs {
    pub dir: PathBuf,
    pub config: PathBuf,
    exe: PathBuf,
    children: Vec<(String, Child)>,
    /// Leave the daemons running when dropped.
    pub keep: bool,
}

impl Drop for Procs {
    fn drop(&mut self) {
        if !self.keep {
            self.kill_all();
        }
    }
}

impl Procs {
    /// Processes of this binary in `dir`, all with `--config config`.
    pub fn new(dir: PathBuf, config: PathBuf) -> Result<Procs> {
        Ok(Procs {
            dir,
            config,
            exe: std::env::current_exe()?,
            children: Vec::new(),
            keep: false,
        })
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.exe);
        c.args(args)
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "warn")
            // Its servers are private, with their own users.
            .env_remove("LOGSHIP_SMB_PASSWORD")
            .stdin(Stdio::null());
        c
    }

    /// The cluster benchmarks' pair: alpha initialised with the `load`
    /// table and active, beta seeded and a Healthy passive behind it.
    pub fn start_pair(&mut self) -> Result<()> {
        self.run(&["init", "--node", "alpha"])?;
        self.run(&[
            "sql",
            "--node",
            "alpha",
            "CREATE TABLE load (id INTEGER PRIMARY KEY NOT NULL, v TEXT NOT NULL)",
        ])?;
        self.start("alpha", &["node", "--node", "alpha"])?;
        self.wait("alpha active", 30, || {
            self.status("alpha")["role"] == "active"
        })?;
        self.start("beta", &["node", "--node", "beta"])?;
        self.run(&["seed", "--node", "beta", "--from", "alpha"])?;
        self.wait("beta Healthy and passive", 60, || {
            let s = self.status("beta");
            s["role"] == "passive" && s["summary_copy_status"] == "Healthy"
        })
    }

    /// Runs a command to its end; its stdout, or an error with its stderr.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let out = self.cmd(args).output()?;
        if !out.status.success() {
            bail!(
                "logship {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts a daemon called `name`, logging to `<dir>/<name>.log`.
    pub fn start(&mut self, name: &str, args: &[&str]) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{name}.log")))?;
        let child = self
            .cmd(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.children.push((name.to_string(), child));
        Ok(())
    }

    /// SIGKILLs the daemon called `name` and reaps it.
    pub fn kill(&mut self, name: &str) -> Result<()> {
        let i = self
            .children
            .iter()
            .position(|(n, _)| n == name)
            .with_context(|| format!("no process called {name}"))?;
        let (_, mut c) = self.children.remove(i);
        c.kill()?;
        c.wait()?;
        Ok(())
    }

    /// SIGKILLs and reaps every daemon still running.
    pub fn kill_all(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.children.clear();
    }

    /// `logship status --json` for one node (Null if it cannot be read).
    pub fn status(&self, node: &str) -> serde_json::Value {
        self.cmd(&["status", "--json", "--node", node])
            .output()
            .ok()
            .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
            .and_then(|v| v.as_array().and_then(|a| a.first().cloned()))
            .unwrap_or(serde_json::Value::Null)
    }

    /// `logship move-cluster --to TO`: its output and the handoff time (ms)
    /// it reports.
    pub fn move_cluster(&self, to: &str, comment: &str) -> Result<(String, u64)> {
        let out = self.run(&["move-cluster", "--to", to, "--comment", comment])?;
        let ms = out
            .split(" in ")
            .nth(1)
            .and_then(|r| r.split(" ms").next())
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("no handoff time in {out:?}"))?;
        Ok((out, ms))
    }

    /// Waits until `cond` holds, up to `secs` seconds.
    pub fn wait(&self, what: &str, secs: u64, cond: impl Fn() -> bool) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !cond() {
            if Instant::now() > deadline {
                bail!(
                    "timed out after {secs} s waiting for {what} (logs in {})",
                    self.dir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }
}

/// A fresh random cluster key (authenticates the heartbeats), owner-only.
pub fn write_cluster_key(path: &Path) -> Result<()> {
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let mut raw = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut raw))
        .context("read /dev/urandom")?;
    let text: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| writeln!(f, "{text}"))
        .with_context(|| format!("write {}", path.display()))
}

/// A two-node benchmark cluster's config in `dir` (absolute paths, default
/// timings, a fresh cluster key, free heartbeat ports), with `alpha_extra`
/// added to alpha's section and `tail` after the nodes.
pub fn write_bench_config(dir: &Path, alpha_extra: &str, tail: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(dir.join("witness"))?;
    write_cluster_key(&dir.join("cluster.key"))?;
    let config = dir.join("logship.toml");
    std::fs::write(
        &config,
        format!(
            "[cluster]\nname = \"bench\"\nwitness = \"{w}\"\nkey-file = \"cluster.key\"\n\n\
             [nodes.alpha]\ndata-dir = \"{d}/alpha\"\nshare = \"{d}/alpha/logs\"\nheartbeat = \"127.0.0.1:{pa}\"\n{alpha_extra}\n\
             [nodes.beta]\ndata-dir = \"{d}/beta\"\nshare = \"{d}/beta/logs\"\nheartbeat = \"127.0.0.1:{pb}\"\n{tail}",
            w = dir.join("witness").display(),
            d = dir.display(),
            pa = harness::sys::free_udp_port()?,
            pb = harness::sys::free_udp_port()?,
        ),
    )?;
    Ok(config)
}
