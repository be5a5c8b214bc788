//! The active's ship daemon with a passive: an online seed while the active
//! commits (statements reach the store through the daemon's control
//! socket), the copy catching up and proving equality, a refused reseed
//! without --force, and truncation that waits for the copy and holds while
//! it is suspended.

mod common;

use std::process::Stdio;

use common::{Daemon, Pair};

fn start(p: &Pair, node: &str, args: &[&str]) -> Daemon {
    Daemon(
        p.cmd(node, args)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    )
}

fn sealed(p: &Pair) -> Vec<u64> {
    common::sealed_generations(&p.data_dir("alpha").join("logs"))
}

fn status(p: &Pair) -> serde_json::Value {
    p.copy_status("beta").expect("beta has a status")
}

fn inserts(from: usize, to: usize) -> String {
    (from..to)
        .map(|i| {
            format!(
                "INSERT INTO t (id, v) VALUES ({i}, randomblob({}));\n",
                500 + i % 1000
            )
        })
        .collect()
}

/// Waits until alpha's ship loop has run a whole turn that began after
/// this call, and returns the status it wrote then: a check that nothing
/// was truncated waits on the loop, not on the clock.
fn after_a_ship_turn(p: &Pair) -> shipper::ship::ShipStatus {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    let mut first: Option<u64> = None;
    let mut last = None;
    p.wait_for("a whole turn of the ship loop", 30, || {
        let Some(s) = shipper::ship::ShipStatus::load(&p.data_dir("alpha")) else {
            return false;
        };
        if s.updated_us <= since {
            return false;
        }
        // The turn that wrote this status ended after `since`, so the next
        // one began after it.
        let done = first.is_some_and(|t| s.turns > t);
        first.get_or_insert(s.turns);
        last = Some(s);
        done
    });
    last.unwrap()
}

fn lsn_of(out: &str) -> u64 {
    out.lines()
        .find_map(|l| l.strip_prefix("lsn "))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn seed_while_the_active_commits_then_follow_and_truncate() {
    let p = Pair::new();
    p.ok("alpha", &["init"]);
    p.ok(
        "alpha",
        &[
            "sql",
            "CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB NOT NULL)",
        ],
    );
    let ship = start(&p, "alpha", &["ship"]);
    p.wait_for("the control socket", 30, || {
        p.data_dir("alpha").join("control.sock").exists()
    });
    // Statements go through the daemon while it owns the store.
    let out = p.ok("alpha", &["sql", "INSERT INTO t VALUES (-1, x'00')"]);
    assert!(out.starts_with("ok "), "{out}");

    // Load on the active during the seed.
    let file = p.dir.path().join("load.sql");
    std::fs::write(&file, inserts(0, 1500)).unwrap();
    let mut load = start(
        &p,
        "alpha",
        &["sql", "--each", "--file", file.to_str().unwrap()],
    );
    let seeded = p.ok("beta", &["seed"]);
    assert!(seeded.contains("verified"), "{seeded}");
    // Seeding over it again without --force is refused.
    let out = p.cmd("beta", &["seed"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    assert!(load.0.wait().unwrap().success());

    let _replay = start(&p, "beta", &["replay", "--poll", "20ms"]);
    std::fs::write(&file, inserts(1500, 4000)).unwrap();
    p.ok(
        "alpha",
        &["sql", "--each", "--file", file.to_str().unwrap()],
    );
    p.ok("alpha", &["seal"]);
    let target = lsn_of(&p.ok("alpha", &["verify-copy"]).replace("verdict equal", ""));
    p.wait_for("the copy to catch up", 90, || {
        status(&p)["last_replayed_lsn"] == target
    });
    let copy = p.ok("beta", &["verify-copy"]);
    assert!(copy.contains("verdict equal"), "{copy}");
    // The same LSN and hash as the active, and the same rows (Python's sqlite3).
    let active = p.ok("alpha", &["verify-copy"]);
    let line = |out: &str, k: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(line(&copy, "lsn "), line(&active, "lsn "));
    assert_eq!(line(&copy, "scan-hash "), line(&active, "log-hash "));
    common::python_compare(
        &p.data_dir("alpha").join("store.db"),
        &p.data_dir("beta").join("store.db"),
    );

    // Truncation: what the copy replayed goes away from the active's share.
    let replayed = status(&p)["last_log_replayed"].as_u64().unwrap();
    p.wait_for("truncation", 30, || {
        sealed(&p).first().is_none_or(|g| *g > replayed)
    });
    for g in sealed(&p) {
        assert!(g > replayed, "generation {g} was kept though replayed");
    }

    // Suspended: truncation is held back, and says why.
    p.ok("beta", &["suspend", "--reason", "maintenance"]);
    p.wait_for("the suspension to be published", 30, || {
        status(&p)["summary_copy_status"] == "Suspended"
    });
    let suspended = Some("copy beta is suspended (maintenance)");
    p.wait_for("the active to hold truncation back", 30, || {
        shipper::ship::ShipStatus::load(&p.data_dir("alpha"))
            .is_some_and(|s| s.truncation_held.as_deref() == suspended)
    });
    std::fs::write(&file, inserts(4000, 5000)).unwrap();
    p.ok(
        "alpha",
        &["sql", "--each", "--file", file.to_str().unwrap()],
    );
    p.ok("alpha", &["seal"]);
    let kept = sealed(&p);
    assert!(!kept.is_empty());
    let held = after_a_ship_turn(&p);
    assert_eq!(
        sealed(&p),
        kept,
        "segments were truncated while the copy was suspended"
    );
    assert_eq!(held.truncation_held.as_deref(), suspended);
    let shown = p.ok("alpha", &["status"]);
    assert!(
        shown.contains("log truncation on alpha: held back: copy beta is suspended (maintenance)"),
        "{shown}"
    );
    let st = status(&p);
    assert!(st["last_log_replayed"].as_u64().unwrap() < *kept.last().unwrap());

    // Resumed: the copy catches up and truncation follows.
    p.ok("beta", &["resume"]);
    let active_lsn = {
        let out = p.ok("alpha", &["sql", "SELECT 1"]);
        out.lines()
            .last()
            .unwrap()
            .strip_prefix("ok ")
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    p.wait_for("the copy to catch up again", 90, || {
        status(&p)["last_replayed_lsn"] == active_lsn
    });
    let replayed = status(&p)["last_log_replayed"].as_u64().unwrap();
    p.wait_for("truncation after resume", 30, || {
        sealed(&p).first().is_none_or(|g| *g > replayed)
    });
    drop(ship);
}

#[test]
fn a_seed_without_the_active_daemon_says_so_and_status_shows_seeding_meanwhile() {
    let p = Pair::new();
    p.ok("alpha", &["init"]);
    let mut seed = Daemon(
        p.cmd("beta", &["seed", "--timeout", "4s"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    p.wait_for("Seeding", 20, || {
        p.copy_status("beta")
            .is_some_and(|s| s["summary_copy_status"] == "Seeding")
    });
    // The request is on beta's own share, nowhere else.
    assert!(
        p.dir
            .path()
            .join("beta-share")
            .join("seed-request.json")
            .exists()
    );
    let out = seed.0.wait_with_output_ref();
    assert!(!out.0.success());
    assert!(
        out.1.contains("is `logship ship` running on alpha"),
        "{}",
        out.1
    );
    // It said so before its timeout, naming the command that starts one.
    assert!(
        out.1.contains("no daemon on alpha has answered after 3 s")
            && out.1.contains("`logship node --node alpha`"),
        "{}",
        out.1
    );
    // The failed seed leaves a clear status and no request behind.
    let st = p.copy_status("beta").unwrap();
    assert_ne!(st["summary_copy_status"], "Seeding", "{st}");
    assert!(
        st["error"].as_str().unwrap().contains("seed failed"),
        "{st}"
    );
    assert!(
        !p.dir
            .path()
            .join("beta-share")
            .join("seed-request.json")
            .exists()
    );
}

trait WaitOutput {
    fn wait_with_output_ref(&mut self) -> (std::process::ExitStatus, String);
}

impl WaitOutput for std::process::Child {
    fn wait_with_output_ref(&mut self) -> (std::process::ExitStatus, String) {
        use std::io::Read;
        let mut err = String::new();
        if let Some(mut e) = self.stderr.take() {
            e.read_to_string(&mut err).unwrap();
        }
        (self.wait().unwrap(), err)
    }
}

fn names_in(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("LS0"))
        .collect();
    v.sort();
    v
}

#[test]
fn a_share_of_its_own_is_published_into_and_retention_keeps_replayed_segments() {
    let p = Pair::with("1h", Some("alpha-share"));
    p.ok("alpha", &["init"]);
    p.ok(
        "alpha",
        &[
            "sql",
            "CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB NOT NULL)",
        ],
    );
    let _ship = start(&p, "alpha", &["ship"]);
    p.wait_for("the control socket", 30, || {
        p.data_dir("alpha").join("control.sock").exists()
    });
    p.ok("beta", &["seed"]);
    let _replay = start(&p, "beta", &["replay", "--poll", "20ms"]);
    let file = p.dir.path().join("load.sql");
    std::fs::write(&file, inserts(0, 2000)).unwrap();
    p.ok(
        "alpha",
        &["sql", "--each", "--file", file.to_str().unwrap()],
    );
    p.ok("alpha", &["seal"]);
    let logs = p.data_dir("alpha").join("logs");
    let share = p.dir.path().join("alpha-share");
    let sealed = names_in(&logs);
    assert!(sealed.len() >= 3, "{sealed:?}");
    // Every sealed segment shows up, whole, on the share.
    p.wait_for("publication", 30, || names_in(&share) == sealed);
    for n in &sealed {
        assert_eq!(
            std::fs::read(logs.join(n)).unwrap(),
            std::fs::read(share.join(n)).unwrap(),
            "{n}"
        );
    }
    let out = p.ok("alpha", &["sql", "SELECT 1"]);
    let active_lsn: u64 = out
        .lines()
        .last()
        .unwrap()
        .strip_prefix("ok ")
        .unwrap()
        .parse()
        .unwrap();
    p.wait_for("the copy to catch up", 60, || {
        status(&p)["last_replayed_lsn"] == active_lsn
    });
    // Replayed, but younger than the retention: kept on both sides.
    assert_eq!(after_a_ship_turn(&p).truncation_held, None);
    assert_eq!(names_in(&logs), sealed);
    assert_eq!(names_in(&share), sealed);
}
