//! Clusters of more than two nodes, arbitrated by a private etcd (Debian's
//! `etcd-server`, started on loopback by the test): real `logship node`
//! daemons, killed with SIGKILL, and the copies that follow whichever node
//! takes the role.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::net::Net;
use common::proof::{Ack, start_writers, writers_by_epoch};
use common::{Daemon, listing, node_cmd, status_json};
use harness::etcd::Etcd;

/// N nodes whose shares are their log directories, and a private etcd.
struct Dag {
    dir: tempfile::TempDir,
    config: PathBuf,
    nodes: Vec<String>,
    etcd: Etcd,
    /// The network namespace a node's daemon runs in, if not this one.
    netns: BTreeMap<String, String>,
    /// Environment every daemon starts with.
    env: Vec<(String, String)>,
}

impl Dag {
    /// `nodes` as (name, activation preference, extra lines of its section).
    fn new(cluster: &str, nodes: &[(&str, u32, &str)]) -> Dag {
        Self::with_etcd(1, cluster, nodes)
    }

    /// `new`, with an etcd of `members` members.
    fn with_etcd(members: usize, cluster: &str, nodes: &[(&str, u32, &str)]) -> Dag {
        Self::on(Etcd::start(members), cluster, nodes)
    }

    /// `new`, with `etcd`.
    fn on(etcd: Etcd, cluster: &str, nodes: &[(&str, u32, &str)]) -> Dag {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        let mut text = format!(
            "[cluster]\nname = \"dag\"\nheartbeat-interval = \"200ms\"\ndead-after = \"2s\"\n{}arbiter = \"{}\"\n{cluster}\n",
            // 200 ms unless the test sets its own.
            if cluster.contains("seal-after") {
                ""
            } else {
                "seal-after = \"200ms\"\n"
            },
            etcd.url("dag")
        );
        for (n, pref, extra) in nodes {
            text.push_str(&format!(
                "[nodes.{n}]\ndata-dir = \"{d}\"\nshare = \"{d}/logs\"\nactivation-preference = {pref}\n{extra}\n",
                d = p.join(n).display()
            ));
        }
        let config = p.join("logship.toml");
        std::fs::write(&config, text).unwrap();
        Dag {
            dir,
            config,
            nodes: nodes.iter().map(|(n, _, _)| n.to_string()).collect(),
            etcd,
            netns: BTreeMap::new(),
            env: Vec::new(),
        }
    }

    fn data_dir(&self, node: &str) -> PathBuf {
        self.dir.path().join(node)
    }

    fn ok(&self, node: &str, args: &[&str]) -> String {
        let out = node_cmd(&self.config, node, args, "info").output().unwrap();
        assert!(
            out.status.success(),
            "logship {args:?} on {node}: {}\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.dump()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn start(&self, node: &str) -> Daemon {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{node}.log")))
            .unwrap();
        let mut c = match self.netns.get(node) {
            Some(ns) => common::trio::node_in_netns(&self.config, ns, node),
            None => node_cmd(&self.config, node, &["node"], "info"),
        };
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        Daemon(c.stdout(Stdio::null()).stderr(log).spawn().unwrap())
    }

    /// SIGKILL of `node`'s daemon, and its share gone with its machine.
    fn kill_with_its_share(&self, node: &str, d: &mut Daemon) {
        signal(d, "-KILL");
        let _ = d.0.wait();
        let logs = self.data_dir(node).join("logs");
        std::fs::rename(&logs, logs.with_extension("gone")).unwrap();
    }

    fn status(&self, node: &str) -> serde_json::Value {
        status_json(&self.config, node).unwrap_or(serde_json::Value::Null)
    }

    fn epoch(&self, node: &str) -> u64 {
        self.status(node)["epoch"].as_u64().unwrap_or(0)
    }

    fn role(&self, node: &str) -> String {
        self.status(node)["role"].as_str().unwrap_or("").to_string()
    }

    /// Writes row `id` through `node`: true once acknowledged.
    fn insert(&self, node: &str, id: u64) -> bool {
        node_cmd(
            &self.config,
            node,
            &[
                "sql",
                &format!("INSERT OR REPLACE INTO t VALUES ({id}, 'v{id}')"),
            ],
            "warn",
        )
        .output()
        .unwrap()
        .status
        .success()
    }

    fn ids(&self, node: &str) -> Vec<u64> {
        let Ok(conn) = rusqlite::Connection::open_with_flags(
            self.data_dir(node).join("store.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        ) else {
            return Vec::new();
        };
        let Ok(mut st) = conn.prepare("SELECT id FROM t ORDER BY id") else {
            return Vec::new();
        };
        st.query_map([], |r| r.get::<_, i64>(0))
            .unwrap()
            .map(|r| r.unwrap() as u64)
            .collect()
    }

    /// What every node publishes in etcd (`members/<node>`).
    fn members(&self) -> BTreeMap<String, witness::keys::MemberValue> {
        let url = witness::etcd::ArbiterUrl::parse(&self.etcd.url("dag")).unwrap();
        let etcd = witness::etcd::Etcd::new(url, Duration::from_secs(5));
        witness::keys::read(&etcd)
            .map(|r| r.members.into_iter().map(|m| (m.node.clone(), m)).collect())
            .unwrap_or_default()
    }

    /// The events a node logged, by kind.
    fn events(&self, node: &str) -> Vec<String> {
        std::fs::read_to_string(self.data_dir(node).join("events.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v["event"].as_str().map(str::to_string))
            .collect()
    }

    fn dump(&self) -> String {
        let mut out = format!("files:\n{}", listing(self.dir.path()));
        for n in &self.nodes {
            let log = std::fs::read_to_string(self.dir.path().join(format!("{n}.log")))
                .unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            out.push_str(&format!(
                "--- {n}.log (last 40 of {} lines)\n{tail}\n--- {n} status\n{}\n",
                lines.len(),
                self.status(n)
            ));
        }
        out
    }

    fn wait_for(&self, what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !cond() {
            if Instant::now() > deadline {
                panic!(
                    "timed out after {secs} s waiting for {what}\n{}\n(timed out waiting for {what})",
                    self.dump()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `first` initialised with the table `t` and active; every other node
    /// started, seeded from it and a Healthy passive. The daemons, in the
    /// order of `nodes`.
    fn running(&self, first: &str) -> Vec<(String, Daemon)> {
        self.ok(first, &["init"]);
        self.ok(
            first,
            &[
                "sql",
                "CREATE TABLE t (id INTEGER PRIMARY KEY NOT NULL, v TEXT NOT NULL)",
            ],
        );
        let mut out = vec![(first.to_string(), self.start(first))];
        self.wait_for(&format!("{first} active"), 30, || {
            self.role(first) == "active"
        });
        for n in self.nodes.iter().filter(|n| *n != first) {
            out.push((n.clone(), self.start(n)));
            self.ok(n, &["seed", "--from", first]);
        }
        for n in self.nodes.iter().filter(|n| *n != first) {
            self.wait_for(&format!("{n} a Healthy passive"), 60, || {
                let s = self.status(n);
                s["role"] == "passive" && s["summary_copy_status"] == "Healthy"
            });
        }
        out
    }
}

fn signal(d: &Daemon, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &d.0.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig}");
}

/// SIGKILL of the active: the copy with the most of the log takes the
/// role, although another, more preferred copy is alive; that copy waits,
/// then follows the new active and ends equal.
#[test]
fn the_best_copy_takes_over_and_position_beats_preference() {
    // gamma is the most preferred node, and will be the one behind.
    let dag = Dag::new(
        "mount-dial = \"best-availability\"",
        &[("alpha", 2, ""), ("beta", 3, ""), ("gamma", 1, "")],
    );
    let mut daemons = dag.running("alpha");
    for id in 1..=20 {
        assert!(dag.insert("alpha", id), "insert {id}\n{}", dag.dump());
    }
    dag.ok("alpha", &["seal"]);
    dag.wait_for("both copies to hold rows 1-20", 30, || {
        dag.ids("beta").len() == 20 && dag.ids("gamma").len() == 20
    });
    // gamma stops where it is; alpha goes on, and beta copies it all.
    signal(&daemons[2].1, "-STOP");
    for id in 21..=40 {
        assert!(dag.insert("alpha", id), "insert {id}\n{}", dag.dump());
    }
    dag.ok("alpha", &["seal"]);
    dag.wait_for("beta to hold rows 1-40", 30, || dag.ids("beta").len() == 40);
    // The active's machine dies, and its share with it.
    dag.kill_with_its_share("alpha", &mut daemons[0].1);
    signal(&daemons[2].1, "-CONT");
    dag.wait_for("beta active", 30, || dag.role("beta") == "active");
    assert!(dag.insert("beta", 41), "beta takes writes\n{}", dag.dump());
    dag.ok("beta", &["seal"]);
    dag.wait_for("gamma following beta with all 41 rows", 60, || {
        dag.role("gamma") == "passive" && dag.ids("gamma").len() == 41
    });
    assert_eq!(dag.ids("beta"), (1..=41).collect::<Vec<_>>());
    let events = dag.events("gamma");
    assert!(
        !events.iter().any(|e| e == "active" || e == "failover"),
        "gamma, behind, took the role: {events:?}\n{}",
        dag.dump()
    );
    let out = dag.ok("gamma", &["verify-copy"]);
    assert!(out.contains("equal"), "verify-copy on gamma: {out}");
}

const THREE: &[(&str, u32, &str)] = &[("alpha", 2, ""), ("beta", 3, ""), ("gamma", 1, "")];

/// A copy ahead of the node that takes the role: gamma copied rows the
/// new active (beta) never received, because beta was stopped while the
/// old active wrote them and gamma was stopped while beta took over. When
/// gamma comes back it undoes those rows (a `copy-rewind`), follows beta
/// and ends equal, instead of failing on a log that no longer chains.
#[test]
fn a_copy_ahead_of_the_new_active_undoes_what_only_it_copied_and_follows() {
    let dag = Dag::new("mount-dial = \"best-availability\"", THREE);
    let mut daemons = dag.running("alpha");
    for id in 1..=20 {
        assert!(dag.insert("alpha", id), "insert {id}\n{}", dag.dump());
    }
    dag.ok("alpha", &["seal"]);
    dag.wait_for("both copies to hold rows 1-20", 30, || {
        dag.ids("beta").len() == 20 && dag.ids("gamma").len() == 20
    });
    // beta stops where it is; gamma copies rows 21-40.
    signal(&daemons[1].1, "-STOP");
    for id in 21..=40 {
        assert!(dag.insert("alpha", id), "insert {id}\n{}", dag.dump());
    }
    dag.ok("alpha", &["seal"]);
    dag.wait_for("gamma to hold rows 1-40", 30, || {
        dag.ids("gamma").len() == 40
    });
    // The active dies with its share; gamma is stopped, so beta, behind,
    // is the only copy left to take the role.
    dag.kill_with_its_share("alpha", &mut daemons[0].1);
    signal(&daemons[2].1, "-STOP");
    signal(&daemons[1].1, "-CONT");
    dag.wait_for("beta active", 90, || dag.role("beta") == "active");
    assert!(dag.insert("beta", 41), "beta takes writes\n{}", dag.dump());
    signal(&daemons[2].1, "-CONT");
    dag.ok("beta", &["seal"]);
    let beta: Vec<u64> = (1..=20).chain([41]).collect();
    assert_eq!(dag.ids("beta"), beta);
    dag.wait_for("gamma following beta with beta's rows", 90, || {
        dag.role("gamma") == "passive" && dag.ids("gamma") == beta
    });
    let events = dag.events("gamma");
    assert!(
        events.iter().any(|e| e == "copy-rewind"),
        "gamma did not undo rows 21-40: {events:?}\n{}",
        dag.dump()
    );
    let out = dag.ok("gamma", &["verify-copy"]);
    assert!(out.contains("equal"), "verify-copy on gamma: {out}");
}

/// One of etcd's three members killed: the active goes on in its epoch
/// and the copies with it. Then SIGKILL of the active: of two equal
/// copies, the more preferred takes the role; the old active, restarted,
/// undoes nothing (it wrote nothing past the fork), follows, and ends
/// equal.
#[test]
fn one_etcd_member_killed_changes_nothing_and_a_tie_goes_to_preference() {
    let mut dag = Dag::with_etcd(3, "mount-dial = \"best-availability\"", THREE);
    let mut daemons = dag.running("alpha");
    let epoch = dag.epoch("alpha");
    for id in 1..=10 {
        assert!(dag.insert("alpha", id), "insert {id}\n{}", dag.dump());
    }
    dag.etcd.kill(0);
    for id in 11..=20 {
        assert!(dag.insert("alpha", id), "insert {id}\n{}", dag.dump());
    }
    dag.ok("alpha", &["seal"]);
    dag.wait_for("both copies to hold rows 1-20", 30, || {
        dag.ids("beta").len() == 20 && dag.ids("gamma").len() == 20
    });
    assert_eq!(dag.role("alpha"), "active", "{}", dag.dump());
    assert_eq!(dag.epoch("alpha"), epoch, "{}", dag.dump());
    for n in ["alpha", "beta", "gamma"] {
        assert!(
            !dag.events(n).iter().any(|e| e == "fenced"),
            "{n} was fenced\n{}",
            dag.dump()
        );
    }
    signal(&daemons[0].1, "-KILL");
    let _ = daemons[0].1.0.wait();
    // beta and gamma hold the same; gamma is preferred (1).
    dag.wait_for("gamma active", 30, || dag.role("gamma") == "active");
    assert!(
        dag.insert("gamma", 21),
        "gamma takes writes\n{}",
        dag.dump()
    );
    assert!(
        !dag.events("beta")
            .iter()
            .any(|e| e == "active" || e == "failover"),
        "beta took the role too\n{}",
        dag.dump()
    );
    daemons[0].1 = dag.start("alpha");
    dag.ok("gamma", &["seal"]);
    for n in ["alpha", "beta"] {
        dag.wait_for(&format!("{n} following gamma with all 21 rows"), 60, || {
            dag.role(n) == "passive" && dag.ids(n).len() == 21
        });
        let out = dag.ok(n, &["verify-copy"]);
        assert!(out.contains("equal"), "verify-copy on {n}: {out}");
    }
}

/// A lagged copy (`replay-lag`) never takes the role by itself while
/// another copy is left, even as the most preferred node: that copy takes
/// it, and `activate` on the lagged one is refused with the reason. Left
/// the last copy, it plays down (replays everything it can reach) and takes
/// the role, as the mount dial allows.
#[test]
fn a_lagged_copy_never_activates_by_itself_while_another_copy_is_left() {
    let dag = Dag::new(
        "mount-dial = \"best-availability\"",
        &[
            ("alpha", 2, ""),
            ("beta", 1, "replay-lag = \"1h\""),
            ("gamma", 3, ""),
        ],
    );
    let mut daemons = dag.running("alpha");
    assert!(dag.insert("alpha", 1), "{}", dag.dump());
    dag.ok("alpha", &["seal"]);
    dag.wait_for("gamma to hold row 1", 30, || dag.ids("gamma") == [1]);
    signal(&daemons[0].1, "-KILL");
    let _ = daemons[0].1.0.wait();
    dag.wait_for("gamma active", 30, || dag.role("gamma") == "active");
    assert_eq!(dag.role("beta"), "passive", "{}", dag.dump());
    let took = |n: &str| {
        dag.events(n)
            .iter()
            .any(|e| e == "active" || e == "failover")
    };
    assert!(
        !took("beta"),
        "the lagged copy took the role\n{}",
        dag.dump()
    );
    dag.wait_for("beta to know gamma is active", 30, || {
        dag.status("beta")["active_node"] == "gamma"
    });
    let out = node_cmd(&dag.config, "beta", &["activate"], "warn")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("node gamma is active"),
        "{err}"
    );
    assert!(dag.insert("gamma", 2), "{}", dag.dump());
    dag.ok("gamma", &["seal"]);
    dag.wait_for("beta to follow gamma", 30, || {
        dag.status("beta")["active_node"] == "gamma"
    });
    // The last copy left: it plays down and takes the role.
    signal(&daemons[2].1, "-KILL");
    let _ = daemons[2].1.0.wait();
    dag.wait_for("beta active, the last copy", 30, || {
        dag.role("beta") == "active"
    });
    assert_eq!(dag.ids("beta"), [1, 2], "played down\n{}", dag.dump());
    assert!(dag.insert("beta", 3), "{}", dag.dump());
    drop(daemons);
}

/// Truncation on the active waits for every copy: one suspended copy of
/// three holds it back, and status names it; resumed, truncation goes on.
/// Status has one line per copy, and the active's `/metrics` one series.
#[test]
fn one_suspended_copy_of_three_holds_truncation_back() {
    let admin = format!("127.0.0.1:{}", common::trio::free_tcp_port());
    let alpha_extra = format!("admin = \"{admin}\"");
    let dag = Dag::new(
        "",
        &[
            ("alpha", 2, &alpha_extra),
            ("beta", 3, ""),
            ("gamma", 1, ""),
        ],
    );
    let _daemons = dag.running("alpha");
    dag.ok("gamma", &["suspend", "--reason", "disk swap"]);
    for id in 1..=5 {
        assert!(dag.insert("alpha", id), "{}", dag.dump());
        dag.ok("alpha", &["seal"]);
    }
    dag.wait_for("beta to hold rows 1-5", 30, || dag.ids("beta").len() == 5);
    dag.wait_for("alpha to say gamma holds truncation back", 30, || {
        dag.status("alpha")["truncation_held"]
            .as_str()
            .is_some_and(|h| h.contains("copy gamma is suspended (disk swap)"))
    });
    // One line per copy, as etcd has it: gamma Suspended, preference 1.
    dag.wait_for("status to show gamma Suspended in etcd", 30, || {
        let out = node_cmd(&dag.config, "alpha", &["status"], "warn")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.contains("member")
            && text.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.first() == Some(&"gamma")
                    && f.get(2) == Some(&"Suspended")
                    && f.last() == Some(&"1")
            })
    });
    let copies = dag.status("alpha")["copies"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(copies.len(), 3, "{copies:?}");
    let metrics = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&admin).unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    for n in ["alpha", "beta", "gamma"] {
        assert!(
            metrics.contains(&format!(
                "logship_copy_replayed_lsn{{node=\"alpha\",copy=\"{n}\"}}"
            )),
            "{metrics}"
        );
    }
    assert!(
        metrics.contains("logship_copy_healthy{node=\"alpha\",copy=\"gamma\"} 0"),
        "{metrics}"
    );
    let sealed = |n: &str| common::sealed_generations(&dag.data_dir(n).join("logs"));
    let held = sealed("alpha");
    assert!(held.len() >= 5, "alpha keeps its segments: {held:?}");
    dag.ok("gamma", &["resume"]);
    dag.wait_for("gamma to hold rows 1-5", 30, || dag.ids("gamma").len() == 5);
    dag.wait_for("truncation to run again on alpha", 30, || {
        dag.status("alpha")["truncation_held"].is_null() && sealed("alpha").len() < held.len()
    });
}

/// The active cut off from etcd (its daemon in a network namespace this
/// test makes, etcd's three members in this one): it fences within its
/// lease, another node takes the role, and when the cut heals the old
/// active rejoins. Under a writer on every node, no epoch holds
/// acknowledged writes of two nodes: each node's own segments are the
/// proof, and etcd's epoch records name the writer of each epoch.
#[test]
fn the_active_cut_off_from_etcd_fences_and_no_epoch_has_two_writers() {
    let net = Net::new();
    let etcd = Etcd::start_on(&net.witness, 3);
    let mut dag = Dag::on(
        etcd,
        "mount-dial = \"best-availability\"\nretention = \"1h\"",
        THREE,
    );
    dag.netns.insert("alpha".into(), net.ns[0].clone());
    let daemons = dag.running("alpha");
    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(Mutex::new(Vec::<Ack>::new()));
    let dirs: Vec<PathBuf> = dag.nodes.iter().map(|n| dag.data_dir(n)).collect();
    let writers = start_writers(dirs.clone(), &stop, &acks);
    dag.wait_for("alpha to acknowledge writes", 30, || {
        acks.lock().unwrap().iter().filter(|a| a.node == 0).count() >= 20
    });
    let epoch = dag.epoch("alpha");
    net.witness_link(0, false);
    dag.wait_for("alpha to fence itself", 30, || {
        dag.events("alpha").iter().any(|e| e == "fenced")
    });
    dag.wait_for("another node active in a newer epoch", 30, || {
        ["beta", "gamma"]
            .iter()
            .any(|n| dag.role(n) == "active" && dag.epoch(n) > epoch)
    });
    let new_active = if dag.role("beta") == "active" { 1 } else { 2 };
    let written = acks
        .lock()
        .unwrap()
        .iter()
        .filter(|a| a.node == new_active)
        .count();
    dag.wait_for("the new active to acknowledge writes", 30, || {
        acks.lock()
            .unwrap()
            .iter()
            .filter(|a| a.node == new_active)
            .count()
            > written + 20
    });
    net.witness_link(0, true);
    dag.wait_for("alpha to rejoin as a Healthy passive", 60, || {
        let s = dag.status("alpha");
        s["role"] == "passive" && s["summary_copy_status"] == "Healthy"
    });
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    let acks = acks.lock().unwrap().clone();
    // The nodes stop first: a running node renames the files read below.
    drop(daemons);
    let names: Vec<&str> = dag.nodes.iter().map(String::as_str).collect();
    let writers_of = writers_by_epoch(&acks, &dirs, &names, "");
    let url = witness::etcd::ArbiterUrl::parse(&dag.etcd.url("dag")).unwrap();
    let history = witness::keys::Ledger::new(witness::etcd::Etcd::new(url, Duration::from_secs(5)))
        .history()
        .unwrap();
    for (epoch, nodes) in &writers_of {
        assert_eq!(
            nodes.len(),
            1,
            "epoch {epoch} holds acknowledged writes of {nodes:?}"
        );
        let writer = &dag.nodes[*nodes.iter().next().unwrap()];
        let rec = history.iter().find(|r| r.epoch.0 == *epoch);
        assert_eq!(
            rec.map(|r| &r.node),
            Some(writer),
            "epoch {epoch}: {history:?}"
        );
    }
    assert!(
        writers_of.len() >= 2,
        "writes in one epoch only: {writers_of:?}"
    );
    eprintln!(
        "{} acknowledged writes in epochs {writers_of:?}",
        acks.len()
    );
    drop(net);
}

/// Five nodes under mail: the active is killed with SIGKILL four times in
/// turn (each killed node restarted once another took the role). Every
/// message the relay accepted is stored exactly once on the last active,
/// and every copy verifies equal.
#[test]
fn five_nodes_lose_no_mail_through_four_kills_of_the_active() {
    let seed = common::seed("five_nodes_lose_no_mail_through_four_kills_of_the_active");
    let mut rng = common::Rng::new(seed);
    let port = common::trio::free_tcp_port;
    let names = ["alpha", "beta", "gamma", "delta", "epsilon"];
    let extra: Vec<String> = names
        .iter()
        .map(|_| format!("lmtp = \"127.0.0.1:{}\"", port()))
        .collect();
    let nodes: Vec<(&str, u32, &str)> = names
        .iter()
        .zip(&extra)
        .enumerate()
        .map(|(i, (n, x))| (*n, i as u32 + 1, x.as_str()))
        .collect();
    let probe = tempfile::tempdir().unwrap();
    let key = common::trio::cluster_key(probe.path());
    let smtp = format!("127.0.0.1:{}", port());
    let dag = Dag::new(
        &format!("mount-dial = \"best-availability\"\n{key}"),
        &nodes,
    );
    let relay_dir = dag.dir.path().join("relay");
    std::fs::write(
        &dag.config,
        format!(
            "{}\n[dumpster]\naccepted-domains = [\"example.com\"]\nsmtp = \"{smtp}\"\ndata-dir = \"{}\"\n",
            std::fs::read_to_string(&dag.config).unwrap(),
            relay_dir.display()
        ),
    )
    .unwrap();
    let mut daemons: BTreeMap<String, Daemon> = dag.running("alpha").into_iter().collect();
    let relay_log = std::fs::File::create(dag.dir.path().join("relay.log")).unwrap();
    let _relay = Daemon(
        Command::new(env!("CARGO_BIN_EXE_logship"))
            .args(["dumpster", "--config"])
            .arg(&dag.config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(relay_log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    dag.wait_for("the relay to listen", 30, || {
        std::net::TcpStream::connect(&smtp).is_ok()
    });
    let submitter = common::trio::Submitter::start_at(dag.dir.path(), &smtp, "m");
    let stored = |dag: &Dag, n: &str| {
        dumpster::mailbox::stored_message_ids(&dag.data_dir(n).join("store.db"))
    };
    let active = |dag: &Dag| {
        names
            .iter()
            .find(|n| dag.role(n) == "active")
            .map(|n| n.to_string())
    };
    for round in 0..4 {
        let a = active(&dag)
            .unwrap_or_else(|| panic!("no active before round {round}\n{}", dag.dump()));
        for n in names.iter().filter(|n| **n != a) {
            dag.wait_for(
                &format!("{n} a Healthy passive before the kill"),
                60,
                || {
                    let s = dag.status(n);
                    s["role"] == "passive" && s["summary_copy_status"] == "Healthy"
                },
            );
        }
        let before = stored(&dag, &a).len();
        dag.wait_for("mail flowing into the active", 30, || {
            stored(&dag, &a).len() > before + 3 + rng.below(10) as usize
        });
        let mut d = daemons.remove(&a).unwrap();
        d.0.kill().unwrap();
        d.0.wait().unwrap();
        eprintln!("round {round}: killed {a}");
        dag.wait_for("another node active", 60, || {
            active(&dag).is_some_and(|n| n != a)
        });
        daemons.insert(a.clone(), dag.start(&a));
    }
    let (accepted, sent) = submitter.stop();
    assert!(
        accepted.len() > 20,
        "too few messages accepted: {}",
        accepted.len()
    );
    let last = active(&dag).expect("an active node at the end");
    let relay_queue = || {
        let st: serde_json::Value = serde_json::from_slice(
            &std::fs::read(relay_dir.join("relay.json")).unwrap_or_default(),
        )
        .unwrap_or(serde_json::Value::Null);
        st["queue_length"].as_u64()
    };
    dag.wait_for("the relay to deliver everything", 120, || {
        relay_queue() == Some(0)
    });
    let ids = stored(&dag, &last);
    let distinct =
        common::trio::assert_stored_exactly_once(&ids, &accepted, &sent, seed, || dag.dump());
    // Each new active asked the relay to re-deliver (duplicates dropped).
    let relay: serde_json::Value =
        serde_json::from_slice(&std::fs::read(relay_dir.join("relay.json")).unwrap()).unwrap();
    assert!(
        relay["last_redelivery"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("became active")),
        "{relay}"
    );
    dag.ok(&last, &["seal"]);
    for n in names.iter().filter(|n| **n != last) {
        dag.wait_for(&format!("{n} holding every message"), 60, || {
            dag.role(n) == "passive" && stored(&dag, n).len() == ids.len()
        });
    }
    for n in names {
        let out = dag.ok(n, &["verify-copy"]);
        assert!(out.contains("equal"), "verify-copy on {n}: {out}");
    }
    eprintln!(
        "{} accepted, {} stored once on {last} (seed {seed})",
        accepted.len(),
        distinct.len()
    );
}

/// `move-cluster` past two nodes: without `--to` the role goes to the best
/// copy (equal positions: the most preferred), with `--to` to any copy;
/// nothing acknowledged is lost, and the old active follows.
#[test]
fn move_cluster_goes_to_the_best_copy_without_to_and_to_any_copy_with_it() {
    let dag = Dag::new("", THREE);
    let _daemons = dag.running("alpha");
    for id in 1..=10 {
        assert!(dag.insert("alpha", id), "{}", dag.dump());
    }
    dag.ok("alpha", &["seal"]);
    let caught_up = |n: &str, rows: usize, active: &str| {
        let s = dag.status(n);
        s["summary_copy_status"] == "Healthy"
            && s["active_node"] == active
            && dag.ids(n).len() == rows
    };
    for n in ["beta", "gamma"] {
        dag.wait_for(&format!("{n} caught up"), 30, || caught_up(n, 10, "alpha"));
    }
    // What the active ranks the copies by: their values in etcd (the
    // table and ten rows: LSN 11).
    dag.wait_for("etcd to show every node at LSN 11", 30, || {
        let m = dag.members();
        ["alpha", "beta", "gamma"]
            .iter()
            .all(|n| m.get(*n).is_some_and(|v| v.received.0 == 11))
    });
    let move_cluster = |to: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_logship"));
        c.args(["move-cluster", "--comment", "test", "--config"])
            .arg(&dag.config);
        if let Some(t) = to {
            c.args(["--to", t]);
        }
        let out = c.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "move-cluster {to:?}: {text}{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            dag.dump()
        );
        text
    };
    // Without --to: beta and gamma hold the same; gamma is preferred.
    let out = move_cluster(None);
    assert!(
        out.contains("from alpha to gamma") && out.contains("nothing lost"),
        "{out}"
    );
    // (The status file is published a moment after the move answers.)
    dag.wait_for("gamma's status to say active", 10, || {
        dag.role("gamma") == "active"
    });
    assert_eq!(dag.ids("gamma"), (1..=10).collect::<Vec<_>>());
    assert!(dag.insert("gamma", 11), "{}", dag.dump());
    dag.ok("gamma", &["seal"]);
    for n in ["alpha", "beta"] {
        dag.wait_for(&format!("{n} following gamma"), 60, || {
            caught_up(n, 11, "gamma")
        });
    }
    // With --to: the least preferred copy.
    let out = move_cluster(Some("beta"));
    assert!(out.contains("from gamma to beta"), "{out}");
    assert!(dag.insert("beta", 12), "{}", dag.dump());
    dag.ok("beta", &["seal"]);
    for n in ["alpha", "gamma"] {
        dag.wait_for(&format!("{n} following beta"), 60, || {
            caught_up(n, 12, "beta")
        });
        let out = dag.ok(n, &["verify-copy"]);
        assert!(out.contains("equal"), "verify-copy on {n}: {out}");
    }
    // A move to a copy that is not Healthy is refused, and the role stays.
    dag.ok("gamma", &["suspend", "--reason", "test"]);
    dag.wait_for("gamma's member value to say Suspended", 30, || {
        dag.members()
            .get("gamma")
            .is_some_and(|m| m.copy_status.as_deref() == Some("Suspended"))
    });
    let out = Command::new(env!("CARGO_BIN_EXE_logship"))
        .args(["move-cluster", "--to", "gamma", "--config"])
        .arg(&dag.config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("is not a Healthy copy (Suspended)"),
        "{err}"
    );
    assert_eq!(dag.role("beta"), "active", "{}", dag.dump());
    assert!(dag.insert("beta", 13), "{}", dag.dump());
}

/// Failback with a window, the local time injected (`LOGSHIP_LOCAL_TIME`):
/// alpha, the most preferred, is killed and comes back as a copy. At 12:00,
/// outside `02:00-04:00`, the active says why it waits and keeps the role;
/// at 03:00 it hands the role back to alpha by a planned move.
#[test]
fn failback_happens_inside_its_window_and_not_outside() {
    for (time, inside) in [("12:00", false), ("03:00", true)] {
        let mut dag = Dag::new(
            "failback = \"preferred\"\nfailback-window = \"02:00-04:00\"\nfailback-after = \"1s\"",
            &[("alpha", 1, ""), ("beta", 2, ""), ("gamma", 3, "")],
        );
        dag.env.push(("LOGSHIP_LOCAL_TIME".into(), time.into()));
        let mut daemons: BTreeMap<String, Daemon> = dag.running("alpha").into_iter().collect();
        assert!(dag.insert("alpha", 1), "{}", dag.dump());
        dag.ok("alpha", &["seal"]);
        dag.wait_for("beta to hold row 1", 30, || dag.ids("beta") == [1]);
        let mut a = daemons.remove("alpha").unwrap();
        a.0.kill().unwrap();
        a.0.wait().unwrap();
        dag.wait_for("beta active", 30, || dag.role("beta") == "active");
        assert!(dag.insert("beta", 2), "{}", dag.dump());
        daemons.insert("alpha".into(), dag.start("alpha"));
        if inside {
            dag.wait_for("the role back on alpha", 60, || {
                dag.role("alpha") == "active"
            });
            assert!(
                dag.events("beta").iter().any(|e| e == "failback"),
                "{}",
                dag.dump()
            );
            assert!(dag.insert("alpha", 3), "{}", dag.dump());
            assert_eq!(dag.ids("alpha"), [1, 2, 3]);
        } else {
            dag.wait_for("beta to say the failback waits for its window", 60, || {
                dag.status("beta")["move_check"]
                    .as_str()
                    .is_some_and(|m| m.contains("12:00 is outside the failback window 02:00-04:00"))
            });
            assert_eq!(dag.role("beta"), "active", "{}", dag.dump());
            assert!(
                !dag.events("beta").iter().any(|e| e == "failback"),
                "{}",
                dag.dump()
            );
        }
    }
}

/// Block mode past two nodes: each copy has its own stream from the
/// active. With nothing sealed and the active's share gone with it, the
/// new active still holds every acknowledged row (what its stream
/// received), and the other copy follows it and ends equal.
#[test]
fn each_copy_has_its_own_block_mode_stream_and_a_failover_loses_nothing() {
    let port = common::trio::free_tcp_port;
    let blocks: Vec<String> = (0..3)
        .map(|_| format!("block = \"127.0.0.1:{}\"", port()))
        .collect();
    let dag = Dag::new(
        "mount-dial = \"best-availability\"\nseal-after = \"1h\"",
        &[
            ("alpha", 1, &blocks[0]),
            ("beta", 2, &blocks[1]),
            ("gamma", 3, &blocks[2]),
        ],
    );
    let mut daemons = dag.running("alpha");
    for n in ["beta", "gamma"] {
        dag.wait_for(&format!("{n} receiving from alpha"), 30, || {
            dag.status(n)["block_mode"]
                .as_str()
                .is_some_and(|b| b.starts_with("receiving"))
        });
    }
    for id in 1..=30 {
        assert!(dag.insert("alpha", id), "insert {id}\n{}", dag.dump());
    }
    // The table and thirty rows.
    let lsn = 31;
    for n in ["beta", "gamma"] {
        dag.wait_for(&format!("{n} to have received LSN {lsn}"), 30, || {
            dag.status(n)["last_received_lsn"].as_u64() == Some(lsn)
        });
    }
    // Nothing sealed: the rows are in alpha's open segment and the streams.
    dag.kill_with_its_share("alpha", &mut daemons[0].1);
    dag.wait_for("beta active", 30, || dag.role("beta") == "active");
    assert_eq!(
        dag.ids("beta"),
        (1..=30).collect::<Vec<_>>(),
        "{}",
        dag.dump()
    );
    assert!(dag.insert("beta", 31), "{}", dag.dump());
    dag.ok("beta", &["seal"]);
    dag.wait_for("gamma following beta with all 31 rows", 60, || {
        dag.role("gamma") == "passive" && dag.ids("gamma").len() == 31
    });
    let out = dag.ok("gamma", &["verify-copy"]);
    assert!(out.contains("equal"), "verify-copy on gamma: {out}");
}
