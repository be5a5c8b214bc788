//! Two `logship node` daemons and a witness, for the cluster tests: the
//! config, starting daemons (in a network namespace when asked), status,
//! writes, and waiting with the logs in the failure message.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{Daemon, listing};

pub const INTERVAL_MS: u64 = 200;
pub const DEAD_MS: u64 = 1000;

/// Two nodes whose shares are their log directories, and a witness.
pub struct Trio {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    /// The network namespace each node daemon runs in, if any.
    pub netns: Option<[String; 2]>,
}

/// `host:port` as (host, port), for the clients the tests run.
pub fn split_addr(addr: &str) -> (String, String) {
    let (h, p) = addr.rsplit_once(':').expect("an address is host:port");
    (h.to_string(), p.to_string())
}

pub fn free_tcp_port() -> u16 {
    harness::sys::free_tcp_port().unwrap()
}

/// Writes an owner-only cluster key file `cluster.key` in `dir` and
/// returns the `key-file = "..."` line that names it.
pub fn cluster_key(dir: &std::path::Path) -> String {
    use std::os::unix::fs::PermissionsExt;
    let f = dir.join("cluster.key");
    std::fs::write(&f, format!("test-cluster-key-{}\n", std::process::id())).unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
    format!("key-file = \"{}\"\n", f.display())
}

pub fn free_udp_port() -> u16 {
    harness::sys::free_udp_port().unwrap()
}

/// What every two-node cluster test starts from: a temporary directory, a
/// witness directory in it, and two free loopback heartbeat addresses.
pub fn ground() -> (tempfile::TempDir, PathBuf, [String; 2]) {
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path().join("witness");
    std::fs::create_dir_all(&w).unwrap();
    let hb = [
        format!("127.0.0.1:{}", free_udp_port()),
        format!("127.0.0.1:{}", free_udp_port()),
    ];
    (dir, w, hb)
}

impl Trio {
    pub fn new(dial: &str) -> Trio {
        Self::with(dial, "200ms")
    }

    pub fn with(dial: &str, seal_after: &str) -> Trio {
        let (dir, w, hb) = ground();
        let cluster = format!(
            "witness = \"{}\"\nmount-dial = \"{dial}\"\nseal-after = \"{seal_after}\"\n",
            w.display()
        );
        Self::custom(dir, &cluster, hb, None)
    }

    /// `with`, block mode off: what the old active never sealed is lost
    /// when its share cannot give its open segment (for the lossy paths).
    pub fn without_block_mode(dial: &str, seal_after: &str) -> Trio {
        let t = Self::with(dial, seal_after);
        let text = std::fs::read_to_string(&t.config)
            .unwrap()
            .replace("heartbeat = ", "block = \"off\"\nheartbeat = ");
        std::fs::write(&t.config, text).unwrap();
        t
    }

    /// A cluster whose `[cluster]` section adds `cluster` (the witness and
    /// more), with the heartbeat addresses given, its node daemons started
    /// in `netns` when given.
    pub fn custom(
        dir: tempfile::TempDir,
        cluster: &str,
        heartbeat: [String; 2],
        netns: Option<[String; 2]>,
    ) -> Trio {
        Self::custom_full(
            dir,
            cluster,
            heartbeat,
            netns,
            [String::new(), String::new()],
            "",
        )
    }

    /// A cluster whose nodes take mail over LMTP on free loopback ports,
    /// for recipients in example.com.
    pub fn with_mail(dial: &str) -> Trio {
        Self::with_mail_keyed(dial, true)
    }

    /// `with_mail`, without a cluster key when `key` is false: a node's
    /// LMTP endpoint then takes mail from any client (for clients that
    /// cannot authenticate, such as Postfix's smtp-source).
    pub fn with_mail_keyed(dial: &str, key: bool) -> Trio {
        let (dir, w, hb) = ground();
        let cluster = format!(
            "witness = \"{}\"\nmount-dial = \"{dial}\"\nseal-after = \"200ms\"\n{}",
            w.display(),
            if key {
                cluster_key(dir.path())
            } else {
                String::new()
            }
        );
        let lmtp = |_| {
            format!(
                "lmtp = \"127.0.0.1:{}\"\nadmin = \"127.0.0.1:{}\"\n",
                free_tcp_port(),
                free_tcp_port()
            )
        };
        Self::custom_full(
            dir,
            &cluster,
            hb,
            None,
            [lmtp(0), lmtp(1)],
            &format!(
                "\n[dumpster]\naccepted-domains = [\"example.com\"]\nsmtp = \"127.0.0.1:{}\"\ndata-dir = \"relay\"\nadmin = \"127.0.0.1:{}\"\n",
                free_tcp_port(),
                free_tcp_port()
            ),
        )
    }

    /// The relay's SMTP address from the config.
    pub fn smtp(&self) -> String {
        let text = std::fs::read_to_string(&self.config).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("smtp = \""))
            .and_then(|l| l.strip_suffix('"'))
            .expect("an smtp address")
            .to_string()
    }

    /// Starts the relay, its log in `<tmp>/relay.log`, and waits until it
    /// takes connections.
    /// Runs a Python script with `args`; its stdout, or a panic with both
    /// streams and the cluster's logs.
    pub fn python(&self, script: &str, args: &[&str]) -> String {
        let out = Command::new("python3")
            .arg("-c")
            .arg(script)
            .args(args)
            .output()
            .expect("run python3");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "python failed: {}\nstdout:\n{stdout}\nstderr:\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.dump()
        );
        stdout
    }

    pub fn start_relay(&self) -> Daemon {
        self.start_relay_with(|_| {})
    }

    /// `start_relay`, with `adjust` applied to the command first.
    pub fn start_relay_with(&self, adjust: impl FnOnce(&mut Command)) -> Daemon {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("relay.log"))
            .unwrap();
        let mut c = Command::new(env!("CARGO_BIN_EXE_logship"));
        c.args(["dumpster", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .stdin(Stdio::null());
        adjust(&mut c);
        let d = Daemon(c.spawn().unwrap());
        let smtp = self.smtp();
        self.wait_for("the relay to listen", 30, || {
            std::net::TcpStream::connect(&smtp).is_ok()
        });
        d
    }

    /// The node's LMTP address from the config.
    pub fn lmtp(&self, node: &str) -> String {
        self.key(&format!("[nodes.{node}]"), "lmtp")
    }

    /// The admin address of a node, or of the relay (`"dumpster"`).
    pub fn admin(&self, node: &str) -> String {
        let section = if node == "dumpster" {
            "[dumpster]".to_string()
        } else {
            format!("[nodes.{node}]")
        };
        self.key(&section, "admin")
    }

    fn key(&self, section: &str, key: &str) -> String {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let body = text.split(section).nth(1).unwrap();
        let body = body.split("\n[").next().unwrap();
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{key} = \"")))
            .and_then(|l| l.strip_suffix('"'))
            .unwrap_or_else(|| panic!("no {key} in {section}"))
            .to_string()
    }

    pub fn custom_full(
        dir: tempfile::TempDir,
        cluster: &str,
        heartbeat: [String; 2],
        netns: Option<[String; 2]>,
        node_extra: [String; 2],
        tail: &str,
    ) -> Trio {
        let p = dir.path();
        let config = p.join("logship.toml");
        std::fs::write(
            &config,
            format!(
                "[cluster]\nname = \"trio\"\nheartbeat-interval = \"{INTERVAL_MS}ms\"\ndead-after = \"{DEAD_MS}ms\"\n{cluster}\n\
                 [nodes.alpha]\ndata-dir = \"{a}\"\nshare = \"{a}/logs\"\nheartbeat = \"{ha}\"\n{xa}\n\
                 [nodes.beta]\ndata-dir = \"{b}\"\nshare = \"{b}/logs\"\nheartbeat = \"{hb}\"\n{xb}{tail}",
                a = p.join("alpha").display(),
                b = p.join("beta").display(),
                ha = heartbeat[0],
                hb = heartbeat[1],
                xa = node_extra[0],
                xb = node_extra[1],
            ),
        )
        .unwrap();
        Trio { dir, config, netns }
    }

    pub fn data_dir(&self, node: &str) -> PathBuf {
        self.dir.path().join(node)
    }

    pub fn cmd(&self, node: &str, args: &[&str]) -> Command {
        super::node_cmd(&self.config, node, args, "info")
    }

    pub fn ok(&self, node: &str, args: &[&str]) -> String {
        let out = self.cmd(node, args).output().unwrap();
        assert!(
            out.status.success(),
            "logship {args:?} on {node}: {}\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            listing(self.dir.path())
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Starts a node daemon, its log in `<tmp>/<node>.log`.
    pub fn start(&self, node: &str) -> Daemon {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{node}.log")))
            .unwrap();
        let mut cmd = match &self.netns {
            Some(ns) => {
                let ns = if node == "alpha" { &ns[0] } else { &ns[1] };
                node_in_netns(&self.config, ns, node)
            }
            None => self.cmd(node, &["node"]),
        };
        Daemon(cmd.stdout(Stdio::null()).stderr(log).spawn().unwrap())
    }

    pub fn status(&self, node: &str) -> serde_json::Value {
        super::status_json(&self.config, node).unwrap_or(serde_json::Value::Null)
    }

    /// The files, then each daemon's status and the end of its log: for
    /// failure messages. The most telling part comes last, where a cut
    /// report still shows it.
    pub fn dump(&self) -> String {
        let mut out = format!("files:\n{}", listing(self.dir.path()));
        for n in ["relay", "alpha", "beta"] {
            let log = std::fs::read_to_string(self.dir.path().join(format!("{n}.log")))
                .unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            let status = if n == "relay" {
                serde_json::Value::Null
            } else {
                self.status(n)
            };
            out.push_str(&format!(
                "--- {n}.log (last 40 of {} lines)\n{tail}\n--- {n} status\n{status}\n",
                lines.len()
            ));
        }
        out
    }

    pub fn wait_for(&self, what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !cond() {
            if Instant::now() > deadline {
                panic!(
                    "timed out after {secs} s waiting for {what}\n{}\n\
                     (timed out after {secs} s waiting for {what})",
                    self.dump()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// alpha initialised with the table `t`, its node running and active.
    pub fn active_alpha(&self) -> Daemon {
        self.ok("alpha", &["init"]);
        self.ok(
            "alpha",
            &[
                "sql",
                "CREATE TABLE t (id INTEGER PRIMARY KEY NOT NULL, v TEXT NOT NULL)",
            ],
        );
        let alpha = self.start("alpha");
        self.wait_for("alpha active", 30, || {
            self.status("alpha")["role"] == "active"
        });
        alpha
    }

    /// alpha active with a table, beta seeded and Healthy behind it.
    pub fn running_pair(&self) -> (Daemon, Daemon) {
        let alpha = self.active_alpha();
        let beta = self.start("beta");
        self.ok("beta", &["seed"]);
        self.wait_for("beta Healthy and passive", 60, || {
            let s = self.status("beta");
            s["role"] == "passive" && s["summary_copy_status"] == "Healthy"
        });
        self.wait_for("alpha to hold beta's vote", 30, || {
            self.status("alpha")["quorum"]["peer"] == true
        });
        (alpha, beta)
    }

    /// After its peer died: `node` takes writes, holds every row of
    /// `rows`, and its mount dial's text says `dial_says`.
    pub fn takes_over_holding(
        &self,
        node: &str,
        rows: impl IntoIterator<Item = u64>,
        dial_says: &str,
    ) {
        self.wait_for(&format!("{node} to take writes"), 30, || {
            self.insert(node, 1000).is_some()
        });
        let have = self.ids(node);
        for id in rows {
            assert!(
                have.contains(&id),
                "acknowledged row {id} is missing: {have:?}\n{}",
                self.dump()
            );
        }
        let st = self.status(node);
        assert!(
            st["dial"]["text"]
                .as_str()
                .is_some_and(|d| d.contains(dial_says)),
            "{st}"
        );
    }

    /// After a failover to `active`: restarts `old`, which rejoins and
    /// follows; checks it ends with every row and `verify-copy` equal.
    pub fn rejoin_and_verify(&self, old: &str, active: &str) -> Daemon {
        let d = self.start(old);
        self.ok(active, &["seal"]);
        self.wait_for(
            &format!("{old} following {active} with every row"),
            60,
            || self.status(old)["role"] == "passive" && self.ids(old) == self.ids(active),
        );
        let out = self.ok(old, &["verify-copy"]);
        assert!(out.contains("equal"), "verify-copy on {old}: {out}");
        d
    }

    /// Writes row `id` through `node` until it is acknowledged (a node
    /// starved of CPU may be fenced for a moment and refuse); its LSN.
    pub fn write(&self, node: &str, id: u64) -> u64 {
        let mut lsn = None;
        self.wait_for(&format!("{node} to take the write of row {id}"), 30, || {
            lsn = self.insert(node, id);
            lsn.is_some()
        });
        lsn.expect("set when the wait ends")
    }

    /// Writes row `id` through `node`; the LSN when acknowledged. A probe
    /// may be retried with the same id after an answer was lost (a write
    /// made durable, then answered `Fenced`, is kept): it replaces the row.
    pub fn insert(&self, node: &str, id: u64) -> Option<u64> {
        let out = self
            .cmd(
                node,
                &[
                    "sql",
                    &format!("INSERT OR REPLACE INTO t VALUES ({id}, 'v{id}')"),
                ],
            )
            .output()
            .unwrap();
        if !out.status.success() {
            return None;
        }
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("ok ").and_then(|n| n.trim().parse().ok()))
    }

    pub fn ids(&self, node: &str) -> Vec<u64> {
        let conn = rusqlite::Connection::open_with_flags(
            self.data_dir(node).join("store.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        let mut st = conn.prepare("SELECT id FROM t ORDER BY id").unwrap();
        st.query_map([], |r| r.get::<_, i64>(0))
            .unwrap()
            .map(|r| r.unwrap() as u64)
            .collect()
    }
}

/// A real SMTP client (Python's smtplib) submitting one message after
/// another to the relay until stopped; what it sent and what the relay
/// accepted go to a file (not a pipe, which could fill and stall it).
pub struct Submitter {
    child: std::process::Child,
    stop: PathBuf,
    log: PathBuf,
}

const SUBMIT: &str = r#"
import os, smtplib, sys, time
host, port, stop, prefix = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[5]
log = open(sys.argv[4], "a", buffering=1)
i = 0
s = None
while not os.path.exists(stop):
    i += 1
    mid = "%s%d@test" % (prefix, i)
    msg = "Message-ID: <%s>\r\nSubject: n%d\r\n\r\nbody %d\r\n" % (mid, i, i)
    try:
        if s is None:
            s = smtplib.SMTP(host, port, timeout=10)
        s.sendmail("load@example.org", ["box@example.com"], msg)
        log.write("ok " + mid + "\n")
    except Exception as e:
        log.write("err %s %r\n" % (mid, e))
        s = None
        time.sleep(0.1)
    time.sleep(0.005)
"#;

impl Submitter {
    /// Starts submitting to the relay of `t`, Message-IDs `<prefix>N@test`.
    pub fn start(t: &Trio, prefix: &str) -> Submitter {
        Self::start_at(t.dir.path(), &t.smtp(), prefix)
    }

    /// Starts submitting to the relay at `smtp`, its files in `dir`.
    pub fn start_at(dir: &std::path::Path, smtp: &str, prefix: &str) -> Submitter {
        let (host, port) = split_addr(smtp);
        let stop = dir.join(format!("stop-{prefix}"));
        let log = dir.join(format!("submitted-{prefix}.txt"));
        let child = Command::new("python3")
            .args(["-c", SUBMIT, &host, &port])
            .arg(&stop)
            .arg(&log)
            .arg(prefix)
            .spawn()
            .unwrap();
        Submitter { child, stop, log }
    }

    /// Stops it; the Message-IDs the relay accepted, and all it sent.
    pub fn stop(mut self) -> (BTreeSet<String>, BTreeSet<String>) {
        std::fs::write(&self.stop, "").unwrap();
        assert!(
            self.child.wait().unwrap().success(),
            "the submitting client failed"
        );
        let text = std::fs::read_to_string(&self.log).unwrap();
        let accepted = text
            .lines()
            .filter_map(|l| l.strip_prefix("ok "))
            .map(String::from)
            .collect();
        // An 'err' message may have been accepted before the reply was
        // lost: it was sent, so it may be stored.
        let sent = text
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .map(String::from)
            .collect();
        (accepted, sent)
    }
}

/// The Message-IDs in a node's mailbox store (empty if it has none yet).
pub fn stored_ids(t: &Trio, node: &str) -> Vec<String> {
    dumpster::mailbox::stored_message_ids(&t.data_dir(node).join("store.db"))
}

/// Every message the relay `accepted` is in `stored` exactly once, and
/// nothing is there that was not `sent`; the distinct ids. `seed` and
/// `dump` go into the failure messages.
pub fn assert_stored_exactly_once(
    stored: &[String],
    accepted: &BTreeSet<String>,
    sent: &BTreeSet<String>,
    seed: u64,
    dump: impl FnOnce() -> String,
) -> BTreeSet<String> {
    let distinct: BTreeSet<String> = stored.iter().cloned().collect();
    assert_eq!(
        stored.len(),
        distinct.len(),
        "a message stored twice (seed {seed})"
    );
    let missing: Vec<_> = accepted.difference(&distinct).collect();
    assert!(
        missing.is_empty(),
        "accepted but not stored: {missing:?} (seed {seed})\n{}",
        dump()
    );
    // Nothing the client did not send.
    let extra: Vec<_> = distinct.difference(sent).collect();
    assert!(
        extra.is_empty(),
        "stored but never sent: {extra:?} (seed {seed})"
    );
    distinct
}

/// `logship node --node NODE` inside the network namespace `ns`.
pub fn node_in_netns(config: &std::path::Path, ns: &str, node: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns])
        .arg(env!("CARGO_BIN_EXE_logship"))
        .args(["node", "--config"])
        .arg(config)
        .args(["--node", node])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null());
    c
}
