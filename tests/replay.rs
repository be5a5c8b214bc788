//! The passive copy end to end, with real processes: the replay daemon
//! follows the active's share, inspects every segment, replays it, and the
//! copy proves it equals the active; it survives SIGKILL at random moments;
//! a damaged segment is copied again, and a persistent fault ends `Failed`
//! with the generation and offset named.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Daemon, Pair, Rng, seed};

fn lsn_line(out: &str, key: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in {out}"))
        .trim()
        .to_string()
}

fn start_replay(p: &Pair) -> Daemon {
    Daemon(
        p.cmd("beta", &["replay", "--poll", "20ms"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start logship replay"),
    )
}

fn replayed_lsn(p: &Pair) -> u64 {
    p.copy_status("beta")
        .and_then(|s| s["last_replayed_lsn"].as_u64())
        .unwrap_or(0)
}

fn copy_lsn(p: &Pair) -> u64 {
    let conn = rusqlite::Connection::open_with_flags(
        p.data_dir("beta").join("store.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    conn.query_row("SELECT lsn FROM _logship", [], |r| r.get::<_, i64>(0))
        .unwrap() as u64
}

fn statements(from: usize, to: usize) -> String {
    let mut s = String::new();
    for i in from..to {
        match i % 10 {
            7 => s.push_str(&format!("UPDATE items SET qty = qty + 1, note = 'u{i}' WHERE id = {};\n", i / 2)),
            9 => s.push_str(&format!("DELETE FROM items WHERE id = {};\n", i / 3)),
            _ => s.push_str(&format!(
                "INSERT INTO items (id, name, qty, price, note, blob) VALUES ({i}, 'item {i}', {}, {}.25, NULL, randomblob({}));\n",
                i % 13,
                i % 100,
                200 + (i * 37) % 1500
            )),
        }
    }
    s
}

fn setup(p: &Pair) {
    p.ok("alpha", &["init"]);
    p.ok(
        "alpha",
        &["sql", "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL, qty INTEGER, price REAL, note TEXT, blob BLOB); \
                  CREATE TABLE tags (item INTEGER NOT NULL, tag TEXT NOT NULL, PRIMARY KEY (item, tag)) WITHOUT ROWID; \
                  INSERT INTO tags VALUES (1, 'a'), (1, 'b'), (2, 'a'); \
                  CREATE TABLE audit (id INTEGER PRIMARY KEY, item INTEGER NOT NULL, what TEXT NOT NULL); \
                  CREATE TRIGGER items_ai AFTER INSERT ON items BEGIN INSERT INTO audit (item, what) VALUES (new.id, 'insert'); END; \
                  CREATE TABLE notes (id INTEGER PRIMARY KEY, item INTEGER NOT NULL REFERENCES items(id) ON DELETE CASCADE, body TEXT); \
                  CREATE TRIGGER items_notes AFTER INSERT ON items WHEN new.id % 5 = 0 BEGIN INSERT INTO notes (item, body) VALUES (new.id, 'note'); END;"],
    );
    p.offline_seed();
}

fn run_sql(p: &Pair, sql: &str) -> String {
    let file = p.dir.path().join(format!("batch-{}.sql", sql.len()));
    std::fs::write(&file, sql).unwrap();
    p.ok(
        "alpha",
        &["sql", "--each", "--file", file.to_str().unwrap()],
    )
}

fn alpha_lsn(p: &Pair) -> u64 {
    lsn_line(&p.ok("alpha", &["verify-copy"]), "lsn ")
        .parse()
        .unwrap()
}

fn python_compare(p: &Pair) {
    common::python_compare(
        &p.data_dir("alpha").join("store.db"),
        &p.data_dir("beta").join("store.db"),
    );
}

#[test]
fn the_copy_follows_the_active_and_proves_it_is_equal() {
    let p = Pair::new();
    setup(&p);
    let _replay = start_replay(&p);
    p.wait_for("the copy to start", 30, || p.copy_status("beta").is_some());
    // A reader on the copy while replay runs.
    let reader_path = p.data_dir("beta").join("store.db");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let conn = rusqlite::Connection::open_with_flags(
                &reader_path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )
            .unwrap();
            conn.busy_timeout(Duration::from_secs(5)).unwrap();
            let mut reads = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _: i64 = conn
                    .query_row("SELECT count(*) FROM items", [], |r| r.get(0))
                    .unwrap();
                reads += 1;
            }
            reads
        })
    };
    run_sql(&p, &statements(0, 3000));
    p.ok("alpha", &["seal"]);
    let target = alpha_lsn(&p);
    p.wait_for("the copy to catch up", 60, || replayed_lsn(&p) == target);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(reader.join().unwrap() > 0);

    let st = p.copy_status("beta").unwrap();
    assert_eq!(st["summary_copy_status"], "Healthy", "{st}");
    assert_eq!(st["copy_queue_length"], 0, "{st}");
    assert_eq!(st["replay_queue_length"], 0, "{st}");
    assert!(st["last_log_replayed"].as_u64().unwrap() >= 3, "{st}");
    for key in [
        "summary_copy_status",
        "copy_queue_length",
        "replay_queue_length",
        "last_log_generated",
        "last_log_copied",
        "last_log_inspected",
        "last_log_replayed",
        "last_replayed_lsn",
        "content_hash",
        "error",
        "database_path",
    ] {
        assert!(st.get(key).is_some(), "status JSON lacks {key}: {st}");
    }
    // The copy's full scan equals the hash the active's log holds at the same LSN.
    let copy = p.ok("beta", &["verify-copy"]);
    assert!(copy.contains("verdict equal"), "{copy}");
    let active = p.ok("alpha", &["verify-copy"]);
    assert_eq!(lsn_line(&copy, "lsn "), lsn_line(&active, "lsn "));
    assert_eq!(
        lsn_line(&copy, "scan-hash "),
        lsn_line(&active, "log-hash ")
    );
    assert_eq!(
        st["content_hash"].as_str().unwrap(),
        lsn_line(&active, "log-hash ")
    );
    python_compare(&p);
}

#[test]
fn replay_killed_at_random_moments_resumes_exactly() {
    let seed = seed("replay-kill");
    let mut rng = Rng::new(seed);
    let p = Pair::new();
    setup(&p);
    // Load on the active for the whole test: segments keep sealing (seal-after 200ms).
    let file = p.dir.path().join("load.sql");
    std::fs::write(&file, statements(0, 8000)).unwrap();
    let mut load = Daemon(
        p.cmd(
            "alpha",
            &["sql", "--each", "--file", file.to_str().unwrap()],
        )
        .stdout(Stdio::null())
        .spawn()
        .unwrap(),
    );
    let mut last = copy_lsn(&p);
    let mut kills = 0;
    while kills < 22 {
        let mut d = start_replay(&p);
        std::thread::sleep(Duration::from_millis(20 + rng.below(250)));
        d.0.kill().unwrap(); // SIGKILL at a random moment
        d.0.wait().unwrap();
        kills += 1;
        let now = copy_lsn(&p);
        assert!(
            now >= last,
            "the copy went back from LSN {last} to {now} (seed {seed})"
        );
        last = now;
        // Consistent at every instant: the copy equals the log at its own LSN.
        let out = p.ok("beta", &["verify-copy"]);
        assert!(
            out.contains("verdict equal"),
            "after kill {kills} (seed {seed}):\n{out}"
        );
    }
    assert!(load.0.wait().unwrap().success());
    p.ok("alpha", &["seal"]);
    let target = alpha_lsn(&p);
    assert!(last < target, "the kills should have interrupted the copy");
    let _replay = start_replay(&p);
    p.wait_for("the copy to catch up", 120, || replayed_lsn(&p) == target);
    let out = p.ok("beta", &["verify-copy"]);
    assert!(out.contains("verdict equal"), "{out}");
    python_compare(&p);
}

fn flip(path: &std::path::Path, at: usize) {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    use std::io::{Read, Seek, SeekFrom};
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(at as u64)).unwrap();
    f.read_exact(&mut b).unwrap();
    f.seek(SeekFrom::Start(at as u64)).unwrap();
    f.write_all(&[b[0] ^ 0x40]).unwrap();
}

#[test]
fn a_damaged_segment_is_copied_again_and_a_persistent_fault_fails_the_copy() {
    let p = Pair::new();
    setup(&p);
    let _replay = start_replay(&p);
    run_sql(&p, &statements(0, 50));
    p.ok("alpha", &["seal"]);
    let target = alpha_lsn(&p);
    p.wait_for("the copy to catch up", 60, || replayed_lsn(&p) == target);
    let replayed = p.copy_status("beta").unwrap()["last_log_replayed"]
        .as_u64()
        .unwrap();

    // Transient: the next segment is damaged, then repaired before the third copy.
    p.ok(
        "beta",
        &["suspend", "--reason", "test: damage the next segment"],
    );
    assert_eq!(
        p.copy_status("beta").unwrap()["summary_copy_status"],
        "Suspended"
    );
    run_sql(&p, &statements(50, 100));
    p.ok("alpha", &["seal"]);
    let next = p
        .data_dir("alpha")
        .join("logs")
        .join(format!("LS{:016x}.log", replayed + 1));
    flip(&next, 300);
    p.ok("beta", &["resume"]);
    p.wait_for("a failed inspection", 30, || {
        p.copy_status("beta").unwrap()["inspection_failures"]
            .as_u64()
            .unwrap()
            >= 1
    });
    flip(&next, 300);
    let target = alpha_lsn(&p);
    p.wait_for("the copy to recover and catch up", 60, || {
        replayed_lsn(&p) == target
    });
    assert_eq!(
        p.copy_status("beta").unwrap()["summary_copy_status"],
        "Healthy"
    );

    // Persistent: three copies fail, the copy is Failed and says where.
    // Suspended first, so that the copy cannot take the segment before it is damaged.
    p.ok("beta", &["suspend"]);
    run_sql(&p, &statements(100, 150));
    p.ok("alpha", &["seal"]);
    let newest = newest_sealed(&p);
    let seg = p
        .data_dir("alpha")
        .join("logs")
        .join(format!("LS{newest:016x}.log"));
    flip(&seg, 5000);
    p.ok("beta", &["resume"]);
    p.wait_for("the copy to fail", 30, || {
        p.copy_status("beta").unwrap()["summary_copy_status"] == "Failed"
    });
    let st = p.copy_status("beta").unwrap();
    let err = st["error"].as_str().unwrap();
    assert!(
        err.contains(&format!("generation 0x{newest:X}")) && err.contains("offset"),
        "{st}"
    );
    // Nothing of it was replayed.
    assert!(st["last_log_replayed"].as_u64().unwrap() < newest, "{st}");
}

#[test]
fn a_damaged_segment_in_a_backlog_stops_the_copy_there_and_nothing_copied_ahead_stays() {
    let (p, _replay) = caught_up();
    // A backlog of twelve segments, which the copy takes in growing
    // windows on parallel connections.
    p.ok("beta", &["suspend", "--reason", "test: build a backlog"]);
    let first = newest_sealed(&p) + 1;
    for k in 0..12 {
        p.ok(
            "alpha",
            &[
                "sql",
                &format!(
                    "INSERT INTO items (id, name, qty, price, note, blob) VALUES ({}, 'big', 1, 1.5, NULL, randomblob(150000))",
                    100_000 + k
                ),
            ],
        );
        p.ok("alpha", &["seal"]);
    }
    assert_eq!(newest_sealed(&p), first + 11);
    // The sixth is damaged for good: the windows before it are taken
    // whole, the one that holds it stops there.
    let damaged = first + 5;
    let seg = p
        .data_dir("alpha")
        .join("logs")
        .join(format!("LS{damaged:016x}.log"));
    flip(&seg, 4000);
    p.ok("beta", &["resume"]);
    p.wait_for("the copy to fail", 30, || {
        p.copy_status("beta").unwrap()["summary_copy_status"] == "Failed"
    });
    let st = p.copy_status("beta").unwrap();
    let err = st["error"].as_str().unwrap();
    assert!(err.contains(&format!("generation 0x{damaged:X}")), "{st}");
    assert_eq!(st["last_log_inspected"].as_u64(), Some(damaged - 1), "{st}");
    p.wait_for("the segments before it to be replayed", 30, || {
        p.copy_status("beta").unwrap()["last_log_replayed"].as_u64() == Some(damaged - 1)
    });
    // Nothing at or past the damaged generation is left in the copy's
    // log directory, under its name or a temporary one.
    let names: Vec<String> = std::fs::read_dir(p.data_dir("beta").join("logs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for n in &names {
        if let Some(g) = n
            .strip_prefix("LS")
            .and_then(|r| r.get(..16))
            .and_then(|h| u64::from_str_radix(h, 16).ok())
        {
            assert!(g < damaged, "{n} left in the copy's logs: {names:?}");
        }
    }
    // Repaired at the source and resumed: the copy catches up whole.
    flip(&seg, 4000);
    p.ok("beta", &["resume"]);
    let target = alpha_lsn(&p);
    p.wait_for("the copy to catch up", 60, || replayed_lsn(&p) == target);
    assert_eq!(
        p.copy_status("beta").unwrap()["summary_copy_status"],
        "Healthy"
    );
    p.ok("beta", &["verify-copy"]);
}

fn newest_sealed(p: &Pair) -> u64 {
    common::sealed_generations(&p.data_dir("alpha").join("logs"))
        .last()
        .copied()
        .unwrap_or(0)
}

/// A pair whose copy, replayed by a running daemon, has caught up with 40
/// statements on the active.
fn caught_up() -> (Pair, Daemon) {
    let p = Pair::new();
    setup(&p);
    let replay = start_replay(&p);
    run_sql(&p, &statements(0, 40));
    p.ok("alpha", &["seal"]);
    p.wait_for("the copy to catch up", 60, || {
        replayed_lsn(&p) == alpha_lsn(&p)
    });
    (p, replay)
}

fn summary(p: &Pair) -> String {
    p.copy_status("beta")
        .and_then(|s| s["summary_copy_status"].as_str().map(str::to_string))
        .unwrap_or_default()
}

#[test]
fn an_unreachable_share_is_disconnected_then_resumes_by_itself() {
    let (p, _replay) = caught_up();
    let share = p.data_dir("alpha").join("logs");
    let away = p.data_dir("alpha").join("logs-away");
    std::fs::rename(&share, &away).unwrap();
    p.wait_for("Disconnected", 30, || summary(&p) == "Disconnected");
    assert!(
        p.copy_status("beta").unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("logs")
    );
    std::fs::rename(&away, &share).unwrap();
    run_sql(&p, &statements(40, 80));
    p.ok("alpha", &["seal"]);
    let target = alpha_lsn(&p);
    p.wait_for("the copy to resume", 60, || {
        replayed_lsn(&p) == target && summary(&p) == "Healthy"
    });
}

#[test]
fn a_gap_in_generations_and_a_foreign_segment_fail_the_copy_by_name() {
    let (p, _replay) = caught_up();
    let before = copy_lsn(&p);

    // A segment of another database where the next generation should be.
    p.ok("beta", &["suspend"]);
    run_sql(&p, &statements(40, 60));
    p.ok("alpha", &["seal"]);
    let next = newest_sealed(&p);
    let other = Pair::new();
    other.ok("alpha", &["init"]);
    let mut g = 0;
    while g < next {
        other.ok(
            "alpha",
            &[
                "sql",
                &format!("CREATE TABLE x{g} (id INTEGER PRIMARY KEY)"),
            ],
        );
        other.ok("alpha", &["seal"]);
        g = newest_sealed(&other);
    }
    let name = format!("LS{next:016x}.log");
    let ours = p.data_dir("alpha").join("logs").join(&name);
    let saved = std::fs::read(&ours).unwrap();
    std::fs::copy(other.data_dir("alpha").join("logs").join(&name), &ours).unwrap();
    p.ok("beta", &["resume"]);
    p.wait_for("the copy to fail", 30, || summary(&p) == "Failed");
    let err = p.copy_status("beta").unwrap()["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        err.contains("belongs to database") || err.contains("database"),
        "{err}"
    );
    assert!(err.contains(&format!("generation 0x{next:X}")), "{err}");
    assert_eq!(copy_lsn(&p), before, "nothing of it was applied");

    // Put the right one back and retry: the copy heals.
    std::fs::write(&ours, saved).unwrap();
    p.ok("beta", &["resume"]);
    let target = alpha_lsn(&p);
    p.wait_for("the copy to recover", 60, || {
        replayed_lsn(&p) == target && summary(&p) == "Healthy"
    });

    // A gap: the next generation is renamed away under the copy while a
    // later one exists.
    p.ok("beta", &["suspend"]);
    run_sql(&p, &statements(60, 70));
    p.ok("alpha", &["seal"]);
    let missing = newest_sealed(&p);
    run_sql(&p, &statements(70, 80));
    p.ok("alpha", &["seal"]);
    let logs = p.data_dir("alpha").join("logs");
    let name = format!("LS{missing:016x}.log");
    std::fs::rename(logs.join(&name), logs.join(format!("{name}.moved"))).unwrap();
    p.ok("beta", &["resume"]);
    p.wait_for("the copy to fail on the gap", 30, || {
        summary(&p) == "Failed"
    });
    let err = p.copy_status("beta").unwrap()["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        err.contains("gap") && err.contains(&format!("0x{missing:X}")),
        "{err}"
    );
    // Renamed back and retried: nothing was lost, the copy catches up.
    std::fs::rename(logs.join(format!("{name}.moved")), logs.join(&name)).unwrap();
    p.ok("beta", &["resume"]);
    let target = alpha_lsn(&p);
    p.wait_for("the copy to catch up after the rename back", 60, || {
        replayed_lsn(&p) == target && summary(&p) == "Healthy"
    });
    python_compare(&p);
}

#[test]
fn a_copy_whose_schema_differs_is_refused_before_any_change() {
    let p = Pair::new();
    setup(&p);
    // The copy got a column the active does not have.
    let conn = rusqlite::Connection::open(p.data_dir("beta").join("store.db")).unwrap();
    conn.execute_batch("ALTER TABLE tags ADD COLUMN extra TEXT")
        .unwrap();
    drop(conn);
    let before = copy_lsn(&p);
    run_sql(&p, &statements(0, 20));
    p.ok("alpha", &["seal"]);
    let _replay = start_replay(&p);
    p.wait_for("the copy to fail", 30, || summary(&p) == "Failed");
    let err = p.copy_status("beta").unwrap()["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(err.contains("schema mismatch"), "{err}");
    assert_eq!(copy_lsn(&p), before, "nothing was applied");
}

#[test]
fn a_full_disk_pauses_replay_with_an_error_and_it_resumes_when_space_returns() {
    let p = Pair::new();
    setup(&p);
    // The replay daemon may not grow a file past 4 MiB; writes beyond fail
    // (SIGXFSZ ignored) as they would on a full disk.
    let bin = env!("CARGO_BIN_EXE_logship");
    let mut child = Daemon(
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "trap '' XFSZ; ulimit -S -f 4096; exec '{bin}' replay --poll 20ms --config '{}' --node beta",
                p.config.display()
            ))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = child.0.id();
    run_sql(&p, &statements(0, 3000));
    p.ok("alpha", &["seal"]);
    p.wait_for("replay to pause on the full disk", 60, || {
        p.copy_status("beta").unwrap()["error"]
            .as_str()
            .is_some_and(|e| e.contains("replay paused"))
    });
    assert_eq!(summary(&p), "Failed");
    // Space returns.
    let out = Command::new("prlimit")
        .arg("--pid")
        .arg(pid.to_string())
        .arg("--fsize=unlimited")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "prlimit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let target = alpha_lsn(&p);
    p.wait_for("replay to resume", 60, || {
        replayed_lsn(&p) == target && summary(&p) == "Healthy"
    });
    let out = p.ok("beta", &["verify-copy"]);
    assert!(out.contains("verdict equal"), "{out}");
    child.0.kill().ok();
}

#[test]
fn divergence_fails_the_copy_naming_the_lsn_and_table() {
    let (p, _replay) = caught_up();
    // Triggers and cascades did not fire twice on the copy.
    python_compare(&p);
    // Someone changes the copy behind the replayer's back.
    p.ok("beta", &["suspend"]);
    let conn = rusqlite::Connection::open(p.data_dir("beta").join("store.db")).unwrap();
    conn.execute("UPDATE items SET qty = 999 WHERE id = 4", [])
        .unwrap();
    drop(conn);
    let before = copy_lsn(&p);
    let out = p.ok("alpha", &["sql", "UPDATE items SET qty = 1 WHERE id = 4"]);
    let lsn: u64 = out.trim().strip_prefix("ok ").unwrap().parse().unwrap();
    p.ok("alpha", &["seal"]);
    p.ok("beta", &["resume"]);
    p.wait_for("the copy to fail", 30, || summary(&p) == "Failed");
    let err = p.copy_status("beta").unwrap()["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        err.contains(&format!("divergence at LSN {lsn}")) && err.contains("\"items\""),
        "{err}"
    );
    assert_eq!(
        copy_lsn(&p),
        before,
        "nothing of the diverging segment was applied"
    );
}

#[test]
fn a_passive_copy_refuses_writes_of_its_own() {
    let p = Pair::new();
    setup(&p);
    let mut d = start_replay(&p);
    p.wait_for("the copy to start", 30, || p.copy_status("beta").is_some());
    d.0.kill().unwrap();
    d.0.wait().unwrap();
    let out = p
        .cmd(
            "beta",
            &["sql", "INSERT INTO items (id, name) VALUES (999, 'rogue')"],
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("passive copy"), "{err}");
    assert!(!p.data_dir("beta").join("logs").join("LS.log").exists());
}

#[test]
fn a_lost_copy_of_a_segment_the_copy_no_longer_needs_is_not_a_gap() {
    let p = Pair::new();
    setup(&p);
    let mut d = start_replay(&p);
    run_sql(&p, &statements(0, 40));
    p.ok("alpha", &["seal"]);
    p.wait_for("the copy to catch up", 60, || {
        replayed_lsn(&p) == alpha_lsn(&p)
    });
    d.0.kill().unwrap();
    d.0.wait().unwrap();
    // The copy's file of its newest segment is lost (power failure), and the
    // active has truncated it (every copy had replayed it).
    let newest = newest_sealed(&p);
    let name = format!("LS{newest:016x}.log");
    std::fs::write(p.data_dir("beta").join("logs").join(&name), b"").unwrap();
    std::fs::remove_file(p.data_dir("alpha").join("logs").join(&name)).unwrap();
    run_sql(&p, &statements(40, 80));
    p.ok("alpha", &["seal"]);
    let _d = start_replay(&p);
    let target = alpha_lsn(&p);
    p.wait_for("the copy to go on", 60, || replayed_lsn(&p) == target);
    assert_eq!(summary(&p), "Healthy");
    let out = p.ok("beta", &["verify-copy"]);
    assert!(out.contains("verdict equal"), "{out}");
}

/// Segment names are lower case. Those an older build named in upper case
/// are still read: by the store that holds them, by a copy that follows
/// them, and across the change of spelling once the active is upgraded.
#[test]
fn segments_named_in_upper_case_by_an_older_build_are_still_copied_and_replayed() {
    use shipper::format::{self, NameCase};
    let p = Pair::new();
    setup(&p);
    // Enough sealed segments for generations with letters (0xA and on).
    for i in 0..11 {
        run_sql(&p, &statements(i * 5, i * 5 + 5));
        p.ok("alpha", &["seal"]);
    }
    let logs = p.data_dir("alpha").join("logs");
    let sealed = || -> Vec<(String, NameCase)> {
        std::fs::read_dir(&logs)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter_map(|n| format::parse_segment_file_name_case(&n).map(|(_, c)| (n, c)))
            .collect()
    };
    let names = sealed();
    assert!(
        names.iter().any(|(n, _)| n == "LS000000000000000a.log"),
        "this build names segments in lower case: {names:?}"
    );
    // As an older build named them.
    for (n, _) in &names {
        let g = format::parse_segment_file_name(n).unwrap();
        std::fs::rename(
            logs.join(n),
            logs.join(format::segment_file_name_in(g, NameCase::Upper)),
        )
        .unwrap();
    }
    assert!(sealed().iter().any(|(n, _)| n == "LS000000000000000A.log"));
    let _replay = start_replay(&p);
    let target = alpha_lsn(&p);
    p.wait_for("the copy to catch up from upper-case names", 60, || {
        replayed_lsn(&p) == target
    });
    // The active, upgraded, goes on in lower case: the copy follows.
    run_sql(&p, &statements(60, 70));
    p.ok("alpha", &["seal"]);
    let newest = sealed()
        .into_iter()
        .max_by_key(|(n, _)| format::parse_segment_file_name(n));
    assert_eq!(newest.map(|(_, c)| c), Some(NameCase::Lower));
    let target = alpha_lsn(&p);
    p.wait_for("the copy to follow the change of spelling", 60, || {
        replayed_lsn(&p) == target
    });
    assert_eq!(summary(&p), "Healthy");
    let copy = p.ok("beta", &["verify-copy"]);
    assert!(copy.contains("verdict equal"), "{copy}");
}
