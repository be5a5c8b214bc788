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
