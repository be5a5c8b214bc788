//! Shared helpers for the integration tests: a temporary cluster directory
//! with a config file, and running the real `logship` binary with its output
//! captured and printed when a test fails.

#![allow(dead_code)] // each test binary uses a different subset

#[allow(unused_imports)] // only the SMB tests use it
pub use harness::samba;

pub mod net;
pub mod proof;
pub mod trio;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl Cluster {
    /// A config with one node, `alpha`, whose data directory is `<tmp>/alpha`.
    pub fn new() -> Cluster {
        Self::with_seal_after("10s")
    }

    pub fn with_seal_after(seal_after: &str) -> Cluster {
        let dir = tempfile::tempdir().expect("create temp dir");
        let config = dir.path().join("logship.toml");
        std::fs::write(
            &config,
            format!(
                "[cluster]\nname = \"test\"\nseal-after = \"{seal_after}\"\n\n\
                 [nodes.alpha]\ndata-dir = \"{}\"\n",
                dir.path().join("alpha").display()
            ),
        )
        .expect("write config");
        Cluster { dir, config }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("alpha")
    }

    pub fn logs(&self) -> PathBuf {
        self.data_dir().join("logs")
    }

    pub fn database(&self) -> PathBuf {
        self.data_dir().join("store.db")
    }

    /// `logship ARGS --config C --node alpha` (node args appended for node commands).
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_logship"));
        c.args(args)
            .arg("--config")
            .arg(&self.config)
            .arg("--node")
            .arg("alpha")
            .env("RUST_LOG", "warn")
            .env_remove("LOGSHIP_FAILPOINT")
            .stdin(Stdio::null());
        c
    }

    /// Runs and returns the output, whatever the exit status.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run logship")
    }

    /// Runs and requires success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        if !out.status.success() {
            self.fail(args, &out, "expected success");
        }
        String::from_utf8(out.stdout).expect("utf-8 stdout")
    }

    /// Runs and requires failure; returns stderr.
    pub fn err(&self, args: &[&str]) -> String {
        let out = self.run(args);
        if out.status.success() {
            self.fail(args, &out, "expected failure");
        }
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    pub fn fail(&self, args: &[&str], out: &Output, why: &str) -> ! {
        panic!(
            "{why}: logship {args:?}\nstatus: {}\nstdout:\n{}\nstderr:\n{}\nfiles:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            listing(self.dir.path())
        )
    }

    /// Rows of a read-only query, without the header line.
    pub fn read(&self, sql: &str) -> Vec<String> {
        let out = self.ok(&["sql", "--read", sql]);
        out.lines().skip(1).map(str::to_string).collect()
    }
}

/// A recursive listing with sizes, for failure messages.
pub fn listing(dir: &Path) -> String {
    let mut out = String::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                out.push_str(&format!("  {} ({len} bytes)\n", p.display()));
            }
        }
    }
    out
}

/// A small deterministic PRNG (xorshift64*) so randomized tests can print
/// and replay their seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The seed from `LOGSHIP_TEST_SEED`, or a fresh one; printed either way.
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var("LOGSHIP_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("{test}: seed {seed} (replay with LOGSHIP_TEST_SEED={seed})");
    seed
}

/// `logship ARGS --config CONFIG --node NODE`, logging at `log_level`, no
/// failpoint, no stdin.
pub fn node_cmd(config: &Path, node: &str, args: &[&str], log_level: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_logship"));
    c.args(args)
        .arg("--config")
        .arg(config)
        .arg("--node")
        .arg(node)
        .env("RUST_LOG", log_level)
        .env_remove("LOGSHIP_FAILPOINT")
        .stdin(Stdio::null());
    c
}

/// `logship status --json --node NODE`, parsed: the node's entry, if any.
pub fn status_json(config: &Path, node: &str) -> Option<serde_json::Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_logship"))
        .args(["status", "--json", "--node", node, "--config"])
        .arg(config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array().and_then(|a| a.first().cloned())
}

/// Two nodes: `alpha` (the active, whose share is its log directory) and
/// `beta` (a passive, publishing its status on its own share).
pub struct Pair {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl Pair {
    pub fn new() -> Pair {
        Self::with("0s", None)
    }

    /// With `cluster.retention`, and optionally a share for alpha that is a
    /// directory of its own (the ship daemon then publishes into it).
    pub fn with(retention: &str, alpha_share: Option<&str>) -> Pair {
        let dir = tempfile::tempdir().expect("create temp dir");
        let p = dir.path();
        std::fs::create_dir_all(p.join("beta-share")).unwrap();
        let a_share = match alpha_share {
            Some(name) => {
                std::fs::create_dir_all(p.join(name)).unwrap();
                p.join(name)
            }
            None => p.join("alpha").join("logs"),
        };
        let config = p.join("logship.toml");
        std::fs::write(
            &config,
            format!(
                "[cluster]\nname = \"pair\"\nseal-after = \"200ms\"\nretention = \"{retention}\"\n\n\
                 [nodes.alpha]\ndata-dir = \"{a}\"\nshare = \"{as_}\"\n\n\
                 [nodes.beta]\ndata-dir = \"{b}\"\nshare = \"{bs}\"\n",
                a = p.join("alpha").display(),
                as_ = a_share.display(),
                b = p.join("beta").display(),
                bs = p.join("beta-share").display(),
            ),
        )
        .unwrap();
        Pair { dir, config }
    }

    pub fn data_dir(&self, node: &str) -> PathBuf {
        self.dir.path().join(node)
    }

    pub fn cmd(&self, node: &str, args: &[&str]) -> Command {
        node_cmd(&self.config, node, args, "warn")
    }

    pub fn ok(&self, node: &str, args: &[&str]) -> String {
        let out = self.cmd(node, args).output().expect("run logship");
        if !out.status.success() {
            panic!(
                "logship {args:?} on {node} failed: {}\nstdout:\n{}\nstderr:\n{}\nfiles:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                listing(self.dir.path())
            );
        }
        String::from_utf8(out.stdout).unwrap()
    }

    /// `logship status --json`, parsed, for one node's copy.
    pub fn copy_status(&self, node: &str) -> Option<serde_json::Value> {
        status_json(&self.config, node)
    }

    /// Offline seed: the active's database file, copied while no process has it open.
    pub fn offline_seed(&self) {
        let b = self.data_dir("beta");
        std::fs::create_dir_all(&b).unwrap();
        std::fs::copy(self.data_dir("alpha").join("store.db"), b.join("store.db")).unwrap();
    }

    /// Waits until `cond` holds, up to `secs` seconds (a readiness check).
    pub fn wait_for(&self, what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        while !cond() {
            if std::time::Instant::now() > deadline {
                panic!(
                    "timed out after {secs} s waiting for {what}\nfiles:\n{}",
                    listing(self.dir.path())
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// A daemon child process, killed when dropped.
pub struct Daemon(pub std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Compares every row of both databases with Python's sqlite3 module.
pub fn python_compare(a: &Path, b: &Path) {
    let script = r#"
import sqlite3, sys
def dump(path):
    c = sqlite3.connect("file:" + path + "?mode=ro", uri=True)
    out = {}
    for (t,) in c.execute("SELECT name FROM sqlite_schema WHERE type='table' AND name NOT LIKE 'sqlite_%' ORDER BY name"):
        out[t] = sorted(c.execute('SELECT * FROM "%s"' % t).fetchall(), key=repr)
    return out
a, b = dump(sys.argv[1]), dump(sys.argv[2])
if a != b:
    for t in sorted(set(a) | set(b)):
        if a.get(t) != b.get(t):
            print("table", t, "differs:", len(a.get(t) or []), "rows vs", len(b.get(t) or []))
    sys.exit(1)
print("equal", sum(len(v) for v in a.values()), "rows")
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(a)
        .arg(b)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "python row comparison: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The generations of the sealed segments in a log directory, ascending.
pub fn sealed_generations(dir: &Path) -> Vec<u64> {
    shipper::log::list_sealed(dir)
        .expect("list the log directory")
        .into_iter()
        .map(|(g, _)| g.0)
        .collect()
}

/// Another process holding a data directory's lock (util-linux `flock`),
/// until `release`.
pub struct LockHolder(std::process::Child);

/// Has another process take `data_dir`'s lock, and waits until it holds it.
pub fn hold_data_dir(data_dir: &Path) -> LockHolder {
    let holder = Command::new("flock")
        .arg("-x")
        .arg(data_dir.join("lock"))
        .arg("cat")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("run flock (util-linux)");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while shipper::store::lock_data_dir(data_dir).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "flock did not take the lock of {}",
            data_dir.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    LockHolder(holder)
}

impl LockHolder {
    /// `cat` ends with its input, and `flock` releases the lock.
    pub fn release(mut self) {
        drop(self.0.stdin.take());
        self.0.wait().unwrap();
    }
}
