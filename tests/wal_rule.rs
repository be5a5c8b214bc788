//! The WAL rule: SQLite never holds a change that is not in the durable log.
//! A fault hook aborts the real binary between the append and the fsync, or
//! between the fsync and the SQLite commit; the database found on disk right
//! after is never ahead of the log, and recovery brings it level.

mod common;

use common::Cluster;
use shipper::Lsn;

/// The last complete LSN in the log directory, read with the same reader
/// recovery uses (no repair, no database).
fn log_end(c: &Cluster) -> u64 {
    let mut last = 0;
    shipper::log::for_each_record(&c.logs(), None, Lsn::ZERO, |lsn, _| {
        last = lsn.0;
        Ok(())
    })
    .expect("read the log");
    last
}

/// The guard LSN of the database file as SQLite sees it, without recovery.
fn db_lsn(c: &Cluster) -> u64 {
    let conn = rusqlite::Connection::open_with_flags(
        c.database(),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    conn.query_row("SELECT lsn FROM _logship WHERE id = 1", [], |r| {
        r.get::<_, i64>(0)
    })
    .unwrap() as u64
}

fn crash_at(failpoint: &str) {
    let c = Cluster::new();
    c.ok(&["init"]);
    c.ok(&[
        "sql",
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)",
    ]);
    c.ok(&["sql", "INSERT INTO t VALUES (1, 'before')"]);
    let before = db_lsn(&c);
    assert_eq!(log_end(&c), before);

    let out = c
        .cmd(&["sql", "INSERT INTO t VALUES (2, 'crashed')"])
        .env("LOGSHIP_FAILPOINT", failpoint)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the failpoint must abort the process"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("failpoint"),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("ok "),
        "a crashed transaction must not be acknowledged"
    );

    // Right after the crash, before any recovery: the database did not commit.
    let db = db_lsn(&c);
    let log = log_end(&c);
    assert_eq!(db, before, "SQLite must not have committed at {failpoint}");
    assert!(
        db <= log,
        "the database (LSN {db}) is ahead of the log (LSN {log})"
    );
    // The record was appended (it is in the page cache even if not synced),
    // so the log holds one more record than the database.
    assert_eq!(log, before + 1);

    // Recovery redoes the durable record: the database catches up exactly.
    let out = c.ok(&["verify-copy"]);
    assert!(out.contains("verdict equal"), "{out}");
    assert_eq!(db_lsn(&c), log);
    assert_eq!(
        c.read("SELECT id, v FROM t ORDER BY id"),
        vec!["1\tbefore", "2\tcrashed"]
    );
    // And the store goes on from there.
    let out = c.ok(&["sql", "INSERT INTO t VALUES (3, 'after')"]);
    assert_eq!(out.trim(), format!("ok {}", log + 1));
}

#[test]
fn crash_between_fsync_and_commit_is_redone() {
    crash_at("after-fsync");
}

#[test]
fn crash_between_append_and_fsync_never_leaves_the_database_ahead() {
    crash_at("after-append");
}

/// A crash in the middle of a transaction larger than a segment: its first
/// fragments are already sealed (and could have been shipped), its last one
/// never reached the disk. The next transaction reuses its LSN, which
/// abandons it; nothing of it is ever applied, and every segment verifies.
#[test]
fn a_fragmented_transaction_cut_by_a_crash_is_abandoned() {
    let c = Cluster::new();
    c.ok(&["init"]);
    c.ok(&[
        "sql",
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB NOT NULL)",
    ]);
    let before = db_lsn(&c);
    let out = c
        .cmd(&["sql", "INSERT INTO t VALUES (1, randomblob(3145728))"])
        .env("LOGSHIP_FAILPOINT", "after-append")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let sealed_before: Vec<_> = shipper::log::list_sealed(&c.logs()).unwrap();
    assert!(sealed_before.len() >= 3, "the first fragments were sealed");
    // The last fragment, in the current segment, is lost.
    let current = c.logs().join(shipper::format::CURRENT_FILE_NAME);
    let mut bytes = std::fs::read(&current).unwrap();
    let area = shipper::format::HEADER_SIZE..shipper::format::TRAILER_OFFSET;
    assert!(
        bytes[area.clone()].iter().any(|b| *b != 0),
        "the last fragment was written"
    );
    bytes[area].fill(0);
    std::fs::write(&current, &bytes).unwrap();

    let out = c.ok(&["sql", "INSERT INTO t VALUES (2, x'02')"]);
    assert_eq!(
        out.trim(),
        format!("ok {}", before + 1),
        "the next record reuses the abandoned LSN"
    );
    assert_eq!(c.read("SELECT id FROM t"), vec!["2"]);
    let out = c.ok(&["verify-copy"]);
    assert!(out.contains("verdict equal"), "{out}");
    c.ok(&["seal"]);
    let mut files: Vec<String> = shipper::log::list_sealed(&c.logs())
        .unwrap()
        .into_iter()
        .map(|(_, p)| p.to_string_lossy().into_owned())
        .collect();
    files.insert(0, "verify".into());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_logship"))
        .args(&files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Reading the whole log yields each LSN once, the abandoned record never.
    let mut seen = Vec::new();
    shipper::log::for_each_record(&c.logs(), None, Lsn::ZERO, |lsn, _| {
        seen.push(lsn.0);
        Ok(())
    })
    .unwrap();
    assert_eq!(seen, (1..=before + 1).collect::<Vec<_>>());
}
