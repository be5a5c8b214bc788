//! The store against real SQLite files and real segment files: group commit,
//! rollback of failed transactions, DDL records, refusals, fragments of a
//! transaction larger than a segment, seal-after, torn-tail repair, and redo
//! of durable records after the database fell behind its log.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shipper::apply::apply_record;
use shipper::log::{for_each_record, list_sealed};
use shipper::store::{DATABASE_FILE, LOG_DIR};
use shipper::{Error, Lsn, Store, StoreOptions};

fn new_store(dir: &Path) -> Store {
    Store::init(dir).unwrap();
    Store::open(dir, StoreOptions::default()).unwrap()
}

/// A store in `<tmp>/a`, a snapshot of its fresh database in `<tmp>/seed`,
/// and the store reopened: what a copy seeded before any record looks like.
fn store_and_seed(tmp: &Path) -> (PathBuf, PathBuf, Store) {
    let dir = tmp.join("a");
    drop(new_store(&dir));
    let seed = tmp.join("seed");
    snapshot(&dir, &seed);
    let store = Store::open(&dir, StoreOptions::default()).unwrap();
    (dir, seed, store)
}

fn exec(store: &Store, sql: &'static str) -> shipper::Committed<()> {
    store
        .transaction(move |tx| tx.execute_script(sql, |_, _, _| Ok(())))
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn count(store: &Store, sql: &str) -> i64 {
    store
        .reader()
        .unwrap()
        .query_row(sql, [], |r| r.get(0))
        .unwrap()
}

fn assert_hash_matches(store: &Store) {
    let c = store.check_content().unwrap();
    assert_eq!(
        c.logged, c.scanned,
        "content hash of the log and of a full scan at LSN {}",
        c.lsn
    );
}

/// Opens the database in `db_dir` as a copy does (triggers off) and
/// replays onto it every record of the log in `store_dir`.
fn replay_onto(db_dir: &Path, store_dir: &Path) -> rusqlite::Connection {
    let copy = rusqlite::Connection::open(db_dir.join(DATABASE_FILE)).unwrap();
    shipper::changeset::set_triggers_enabled(&copy, false).unwrap();
    for_each_record(&store_dir.join(LOG_DIR), None, Lsn::ZERO, |lsn, rec| {
        apply_record(&copy, lsn, &rec)
    })
    .unwrap();
    copy
}

/// Copies a closed store's database files (db + WAL) aside.
fn snapshot(dir: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for name in [DATABASE_FILE.to_string(), format!("{DATABASE_FILE}-wal")] {
        let p = dir.join(&name);
        if p.exists() {
            std::fs::copy(&p, to.join(&name)).unwrap();
        }
    }
}

fn restore(from: &Path, dir: &Path) {
    for name in [
        DATABASE_FILE.to_string(),
        format!("{DATABASE_FILE}-wal"),
        format!("{DATABASE_FILE}-shm"),
    ] {
        let _ = std::fs::remove_file(dir.join(&name));
        let p = from.join(&name);
        if p.exists() {
            std::fs::copy(&p, dir.join(&name)).unwrap();
        }
    }
}

#[test]
fn concurrent_callers_share_records_and_fsyncs() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(new_store(tmp.path()));
    exec(
        &store,
        "CREATE TABLE t (id INTEGER PRIMARY KEY, w INTEGER NOT NULL, v TEXT NOT NULL)",
    );
    let start = store.state().lsn;
    let syncs_before = store.stats().syncs;
    const THREADS: usize = 16;
    const EACH: usize = 60;
    let handles: Vec<_> = (0..THREADS)
        .map(|w| {
            let store = store.clone();
            std::thread::spawn(move || {
                (0..EACH)
                    .map(|i| {
                        store
                            .transaction(move |tx| {
                                tx.conn().execute(
                                    "INSERT INTO t (w, v) VALUES (?1, ?2)",
                                    (w as i64, format!("{w}-{i}")),
                                )?;
                                Ok(())
                            })
                            .unwrap()
                            .lsn
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut lsns: Vec<u64> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .map(|l| l.0)
        .collect();
    lsns.sort();
    let end = store.state().lsn.0;
    let mut distinct = lsns.clone();
    distinct.dedup();
    // One record per group commit: the records are dense, every caller's
    // LSN names one of them, and callers shared records.
    assert_eq!(
        distinct,
        (start.0 + 1..=end).collect::<Vec<_>>(),
        "records are dense"
    );
    assert!(
        distinct.len() < THREADS * EACH,
        "{} transactions made {} records: group commit must share them",
        THREADS * EACH,
        distinct.len()
    );
    let syncs = store.stats().syncs - syncs_before;
    assert_eq!(syncs, distinct.len() as u64, "one fdatasync per record");
    assert_eq!(
        count(&store, "SELECT count(*) FROM t"),
        (THREADS * EACH) as i64
    );
    assert_hash_matches(&store);
}

#[test]
fn a_failing_transaction_is_rolled_back_and_logs_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let store = new_store(tmp.path());
    exec(
        &store,
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL UNIQUE)",
    );
    exec(&store, "INSERT INTO t VALUES (1, 'a')");
    let before = store.state();
    // The second statement fails: the first must not survive either.
    let err = store
        .transaction(|tx| {
            tx.execute_script(
                "INSERT INTO t VALUES (2, 'b'); INSERT INTO t VALUES (3, 'a');",
                |_, _, _| Ok(()),
            )
        })
        .unwrap_err();
    assert!(err.to_string().contains("UNIQUE"), "{err}");
    // A closure that gives up after writing.
    let err = store
        .transaction(|tx| -> shipper::Result<()> {
            tx.conn().execute("INSERT INTO t VALUES (4, 'd')", [])?;
            Err(Error::Aborted("changed my mind".into()))
        })
        .unwrap_err();
    assert!(err.to_string().contains("changed my mind"));
    assert_eq!(
        store.state().lsn,
        before.lsn,
        "no record for failed transactions"
    );
    assert_eq!(count(&store, "SELECT count(*) FROM t"), 1);
    // The log holds nothing past the last success either.
    let dir = tmp.path().join(LOG_DIR);
    let mut last = Lsn::ZERO;
    for_each_record(&dir, None, Lsn::ZERO, |l, _| {
        last = l;
        Ok(())
    })
    .unwrap();
    assert_eq!(last, before.lsn);
    assert_hash_matches(&store);
}

#[test]
fn unreplicable_tables_and_transaction_control_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let store = new_store(tmp.path());
    let lsn = store.state().lsn;
    for (sql, needle) in [
        (
            "CREATE TABLE nopk (_ROWID_ TEXT, b TEXT)",
            "hides the rowid",
        ),
        (
            "CREATE TABLE nullpk (a TEXT PRIMARY KEY, b TEXT)",
            "may be NULL",
        ),
        ("CREATE VIRTUAL TABLE v USING fts4(x)", "module fts4"),
        (
            "CREATE VIRTUAL TABLE r USING rtree(id, x0, x1)",
            "module rtree",
        ),
        ("VACUUM", "VACUUM"),
        (
            "CREATE TABLE nocase (k TEXT COLLATE NOCASE PRIMARY KEY NOT NULL, v TEXT)",
            "COLLATE NOCASE",
        ),
        (
            "CREATE TABLE cw (a TEXT NOT NULL, b INT NOT NULL, PRIMARY KEY (b, a COLLATE RTRIM)) WITHOUT ROWID",
            "COLLATE RTRIM",
        ),
        (
            "CREATE TABLE untyped (k PRIMARY KEY NOT NULL, v)",
            "has no type",
        ),
        (
            "CREATE TABLE blobkey (k BLOB PRIMARY KEY NOT NULL)",
            "has no type",
        ),
        ("BEGIN", "the store owns the transaction"),
        ("ATTACH ':memory:' AS other", "ATTACH"),
    ] {
        let err = store
            .transaction(move |tx| tx.execute_script(sql, |_, _, _| Ok(())))
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{sql}: {err}");
    }
    assert_eq!(store.state().lsn, lsn, "refused statements log nothing");
    // Allowed shapes: NOT NULL key, WITHOUT ROWID, INTEGER PRIMARY KEY.
    exec(
        &store,
        "CREATE TABLE ok1 (a TEXT PRIMARY KEY NOT NULL, b TEXT)",
    );
    exec(
        &store,
        "CREATE TABLE ok2 (a TEXT, b INT, PRIMARY KEY (b, a)) WITHOUT ROWID",
    );
    exec(&store, "CREATE TABLE ok3 (id INTEGER PRIMARY KEY, b TEXT)");
    // Collations and untyped columns outside the key, and BLOB keys in a
    // STRICT table (which holds only blobs there).
    exec(
        &store,
        "CREATE TABLE ok4 (k TEXT PRIMARY KEY NOT NULL, v TEXT COLLATE NOCASE, w)",
    );
    exec(
        &store,
        "CREATE TABLE ok5 (k BLOB PRIMARY KEY NOT NULL, v ANY) STRICT",
    );
}

/// The tables applications make: Django's (AUTOINCREMENT), a table with no
/// key, and FTS5. A copy that replays the log has the same rows, the same
/// rowids, the same counters and answers the same `MATCH` queries.
#[test]
fn autoincrement_keyless_and_fts5_tables_replay_onto_a_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, seed, store) = store_and_seed(tmp.path());
    for sql in [
        r#"CREATE TABLE "app_note" ("id" integer NOT NULL PRIMARY KEY AUTOINCREMENT, "title" varchar(100) NOT NULL)"#,
        "CREATE TABLE events (at TEXT, what TEXT)",
        "CREATE VIRTUAL TABLE search USING fts5(subject, body)",
        "INSERT INTO app_note (title) VALUES ('a'), ('b'), ('c')",
        // Inserted and deleted in one transaction: only the counter moves.
        "INSERT INTO app_note (title) VALUES ('d'); DELETE FROM app_note WHERE title = 'd'",
        "DELETE FROM app_note WHERE id = 3",
        "INSERT INTO events VALUES ('t1', 'x'), ('t1', 'x'), ('t2', 'y'); \
         UPDATE events SET what = 'z' WHERE rowid = 2; DELETE FROM events WHERE rowid = 1",
        "UPDATE events SET rowid = 10 WHERE rowid = 3",
        // Several statements, the FTS5 rows last: FTS5 holds their terms in
        // memory until a savepoint or COMMIT.
        "INSERT INTO events VALUES ('t3', 'w'); \
         INSERT INTO search (subject, body) VALUES ('hello', 'world of mail'); \
         INSERT INTO search (subject, body) VALUES ('invoice', 'please pay'); \
         INSERT INTO search (subject, body) VALUES ('lunch', 'hello again')",
        "DELETE FROM events WHERE at = 't3'; DELETE FROM search WHERE subject = 'invoice'; \
         INSERT INTO search (search) VALUES ('optimize')",
        "CREATE TABLE gone (id INTEGER PRIMARY KEY AUTOINCREMENT, v)",
        "INSERT INTO gone (v) VALUES (1)",
        "DROP TABLE gone",
        "UPDATE sqlite_sequence SET seq = 100 WHERE name = 'app_note'",
    ] {
        exec(&store, sql);
    }
    assert_hash_matches(&store);
    let end = store.state();
    let views = |c: &rusqlite::Connection| -> Vec<String> {
        [
            "SELECT group_concat(name || '=' || seq, ',') FROM (SELECT * FROM sqlite_sequence ORDER BY name)",
            "SELECT group_concat(id || ':' || title, ',') FROM app_note",
            "SELECT group_concat(rowid || ':' || at || ':' || what, ',') FROM events",
            "SELECT group_concat(rowid || ':' || subject, ',') FROM search WHERE search MATCH 'hello'",
            "SELECT group_concat(rowid, ',') FROM search WHERE search MATCH 'mail OR pay'",
        ]
        .iter()
        .map(|q| c.query_row(q, [], |r| r.get::<_, Option<String>>(0)).unwrap().unwrap_or_default())
        .collect()
    };
    let active = views(&store.reader().unwrap());
    assert_eq!(
        active,
        [
            "app_note=100",
            "1:a,2:b",
            "2:t1:z,10:t2:y",
            "1:hello,3:lunch",
            "1"
        ]
    );
    drop(store);

    let copy = replay_onto(&seed, &dir);
    assert_eq!(shipper::hash::full_scan(&copy).unwrap(), end.hash);
    assert_eq!(views(&copy), active);
    // A fresh connection reads the same index.
    let again = rusqlite::Connection::open(seed.join(DATABASE_FILE)).unwrap();
    assert_eq!(views(&again), active);
    // The next id is the active's next id.
    copy.execute("INSERT INTO app_note (title) VALUES ('e')", [])
        .unwrap();
    assert_eq!(copy.last_insert_rowid(), 101);
}

#[test]
fn ddl_records_replay_onto_a_copy_seeded_before_them() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("active");
    let store = new_store(&dir);
    drop(store);
    let seed = tmp.path().join("seed");
    snapshot(&dir, &seed);
    let store = Store::open(&dir, StoreOptions::default()).unwrap();
    exec(
        &store,
        "CREATE TABLE m (id INTEGER PRIMARY KEY, box TEXT NOT NULL, body BLOB)",
    );
    exec(
        &store,
        "INSERT INTO m VALUES (1, 'inbox', x'00ff'), (2, 'inbox', NULL)",
    );
    // DDL and DML mixed in one transaction, in order.
    exec(
        &store,
        "INSERT INTO m VALUES (3, 'sent', 'x'); ALTER TABLE m ADD COLUMN flags INTEGER NOT NULL DEFAULT 0; \
         UPDATE m SET flags = 7 WHERE id = 3; CREATE INDEX m_box ON m (box);",
    );
    exec(&store, "DELETE FROM m WHERE id = 2");
    // A table dropped with rows in it, and a view, in a transaction that
    // also changes rows: the rows go with the table, on the copy as on the
    // active.
    exec(&store, "CREATE TABLE gone (id INTEGER PRIMARY KEY, v TEXT)");
    exec(&store, "INSERT INTO gone VALUES (1, 'a'), (2, 'b')");
    exec(
        &store,
        "UPDATE m SET box = 'old' WHERE id = 1; DROP TABLE gone; CREATE VIEW mv AS SELECT id FROM m; \
         DROP VIEW mv; INSERT INTO m VALUES (4, 'new', NULL, 1)",
    );
    assert_hash_matches(&store);
    let end = store.state();
    drop(store);

    let copy = rusqlite::Connection::open(seed.join(DATABASE_FILE)).unwrap();
    shipper::changeset::set_triggers_enabled(&copy, false).unwrap();
    let mut applied = 0;
    for_each_record(&dir.join(LOG_DIR), None, Lsn::ZERO, |lsn, rec| {
        apply_record(&copy, lsn, &rec)?;
        applied += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(applied, end.lsn.0);
    assert_eq!(shipper::hash::full_scan(&copy).unwrap(), end.hash);
    assert_eq!(shipper::hash::schema_hash(&copy).unwrap(), end.schema_hash);
    let flags: i64 = copy
        .query_row("SELECT flags FROM m WHERE id = 3", [], |r| r.get(0))
        .unwrap();
    assert_eq!(flags, 7);
    let gone: i64 = copy
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE name = 'gone'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(gone, 0);
}

#[test]
fn a_schema_change_undone_by_a_savepoint_rollback_is_refused_and_logs_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let store = new_store(tmp.path());
    exec(
        &store,
        "CREATE TABLE t (id INTEGER PRIMARY KEY, a INTEGER); INSERT INTO t VALUES (1, 1), (2, 2)",
    );
    let before = store.state();
    // The ALTER would be logged as SQL although the database no longer has
    // it: a copy replaying the record would gain the column.
    let r = store.transaction(|tx| {
        tx.execute_script(
            "SAVEPOINT u; ALTER TABLE t ADD COLUMN e INTEGER DEFAULT 5; \
             UPDATE t SET a = 10 WHERE id = 1; ROLLBACK TO u; RELEASE u; \
             UPDATE t SET a = 20 WHERE id = 2",
            |_, _, _| Ok(()),
        )
    });
    let e = r.unwrap_err().to_string();
    assert!(
        e.contains("savepoint rollback undid a schema change"),
        "{e}"
    );
    assert_eq!(store.state().lsn, before.lsn, "nothing was logged");
    assert_eq!(count(&store, "SELECT a FROM t WHERE id = 2"), 2);
    assert_eq!(
        count(&store, "SELECT count(*) FROM pragma_table_info('t')"),
        2
    );
    // A savepoint rolled back before a schema change, or released, is fine.
    exec(
        &store,
        "SAVEPOINT v; UPDATE t SET a = 3 WHERE id = 1; ROLLBACK TO v; RELEASE v; \
         ALTER TABLE t ADD COLUMN f INTEGER DEFAULT 6; SAVEPOINT w; UPDATE t SET f = 7; RELEASE w",
    );
    assert_eq!(count(&store, "SELECT sum(f) FROM t"), 14);
    assert_hash_matches(&store);
}

#[test]
fn replaying_a_record_twice_or_skipping_one_is_a_conflict() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, seed, store) = store_and_seed(tmp.path());
    exec(
        &store,
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER NOT NULL)",
    );
    exec(&store, "INSERT INTO t VALUES (1, 1)");
    exec(&store, "UPDATE t SET v = 2 WHERE id = 1");
    drop(store);
    let mut recs = Vec::new();
    for_each_record(&dir.join(LOG_DIR), None, Lsn::ZERO, |l, r| {
        recs.push((l, r));
        Ok(())
    })
    .unwrap();
    let copy = rusqlite::Connection::open(seed.join(DATABASE_FILE)).unwrap();
    apply_record(&copy, recs[0].0, &recs[0].1).unwrap();
    // Skipping record 2: record 3 expects the guard at LSN 2.
    let err = apply_record(&copy, recs[2].0, &recs[2].1).unwrap_err();
    assert!(
        matches!(&err, Error::Conflict { lsn, .. } if *lsn == recs[2].0),
        "{err}"
    );
    apply_record(&copy, recs[1].0, &recs[1].1).unwrap();
    // Applying record 2 again.
    let err = apply_record(&copy, recs[1].0, &recs[1].1).unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err}");
}

#[test]
fn a_transaction_larger_than_a_segment_is_split_and_redone_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    let store = new_store(&dir);
    exec(
        &store,
        "CREATE TABLE att (id INTEGER PRIMARY KEY, data BLOB NOT NULL)",
    );
    exec(&store, "INSERT INTO att VALUES (1, x'01')");
    drop(store);
    let seed = tmp.path().join("seed");
    snapshot(&dir, &seed);
    let store = Store::open(&dir, StoreOptions::default()).unwrap();
    let big = store
        .transaction(|tx| {
            tx.conn().execute(
                "INSERT INTO att VALUES (2, randomblob(3 * 1024 * 1024))",
                [],
            )?;
            Ok(())
        })
        .unwrap();
    exec(&store, "INSERT INTO att VALUES (3, x'03')");
    assert_hash_matches(&store);
    let end = store.state();
    drop(store);
    let sealed = list_sealed(&dir.join(LOG_DIR)).unwrap();
    assert!(
        sealed.len() >= 3,
        "a 3 MiB row spans at least 3 sealed segments, got {}",
        sealed.len()
    );

    // The database falls back to before the big row: recovery redoes it whole.
    restore(&seed, &dir);
    let store = Store::open(&dir, StoreOptions::default()).unwrap();
    assert_eq!(store.state().lsn, end.lsn);
    let len: i64 = count(&store, "SELECT length(data) FROM att WHERE id = 2");
    assert_eq!(len, 3 * 1024 * 1024);
    assert_eq!(count(&store, "SELECT count(*) FROM att"), 3);
    assert_hash_matches(&store);
    assert!(big.lsn < end.lsn);
}

#[test]
fn seal_after_seals_an_idle_segment() {
    let tmp = tempfile::tempdir().unwrap();
    Store::init(tmp.path()).unwrap();
    let opts = StoreOptions {
        seal_after: Duration::from_millis(200),
        ..Default::default()
    };
    let store = Store::open(tmp.path(), opts).unwrap();
    exec(&store, "CREATE TABLE t (id INTEGER PRIMARY KEY)");
    let logs = tmp.path().join(LOG_DIR);
    let wait_sealed = |n: usize, what: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while list_sealed(&logs).unwrap().len() < n {
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_sealed(
        1,
        "no segment sealed 10 s after a record with seal-after 200ms",
    );
    let sealed = list_sealed(&logs).unwrap();
    assert_eq!(sealed.len(), 1);
    shipper::log::SealedSegment::open(&sealed[0].1, Some(store.state().database_id)).unwrap();
    // Nothing new: nothing more is sealed.
    assert_eq!(store.seal().unwrap(), None);
    // The writer now sleeps with no deadline; the next record sets one.
    exec(&store, "INSERT INTO t VALUES (1)");
    wait_sealed(
        2,
        "a record written after an idle spell was not sealed 10 s later",
    );
}

#[test]
fn a_torn_tail_is_truncated_and_earlier_records_survive() {
    let tmp = tempfile::tempdir().unwrap();
    let store = new_store(tmp.path());
    exec(
        &store,
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)",
    );
    exec(&store, "INSERT INTO t VALUES (1, 'kept')");
    let end = store.state();
    drop(store);
    // Garbage where the next record would go: a torn, unacknowledged write.
    let current: PathBuf = tmp
        .path()
        .join(LOG_DIR)
        .join(shipper::format::CURRENT_FILE_NAME);
    let bytes = std::fs::read(&current).unwrap();
    let scan = shipper::format::scan_current(&bytes, None).unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&current)
        .unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&[0x5a; 300], scan.records_end as u64)
        .unwrap();
    drop(f);
    let store = Store::open(tmp.path(), StoreOptions::default()).unwrap();
    assert_eq!(store.state().lsn, end.lsn);
    exec(&store, "INSERT INTO t VALUES (2, 'next')");
    assert_eq!(count(&store, "SELECT count(*) FROM t"), 2);
    assert_hash_matches(&store);
}

#[test]
fn a_sealed_segment_with_a_bad_byte_stops_recovery_with_its_location() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, seed, store) = store_and_seed(tmp.path());
    exec(
        &store,
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)",
    );
    exec(&store, "INSERT INTO t VALUES (1, 'x')");
    store.seal().unwrap().expect("sealed");
    drop(store);
    let sealed = list_sealed(&dir.join(LOG_DIR)).unwrap();
    let (generation, path) = &sealed[0];
    let mut bytes = std::fs::read(path).unwrap();
    bytes[200] ^= 0x10;
    std::fs::write(path, &bytes).unwrap();
    restore(&seed, &dir);
    let err = Store::open(&dir, StoreOptions::default()).unwrap_err();
    match err {
        Error::Corrupt {
            path: p,
            generation: g,
            offset,
            ..
        } => {
            assert_eq!(&p, path);
            assert_eq!(g, *generation);
            assert!(offset <= 200, "offset {offset}");
        }
        e => panic!("expected Corrupt, got {e}"),
    }
}

#[test]
fn the_database_ahead_of_its_log_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let store = new_store(tmp.path());
    exec(&store, "CREATE TABLE t (id INTEGER PRIMARY KEY)");
    drop(store);
    // Lose the log's records: replace the current segment with a fresh one.
    let logs = tmp.path().join(LOG_DIR);
    std::fs::remove_dir_all(&logs).unwrap();
    let conn = rusqlite::Connection::open(tmp.path().join(DATABASE_FILE)).unwrap();
    let (_, id) = shipper::apply::read_guard(&conn).unwrap();
    shipper::log::LogWriter::create(&logs, id, shipper::Epoch(1), shipper::SchemaHash(0)).unwrap();
    drop(conn);
    let err = Store::open(tmp.path(), StoreOptions::default()).unwrap_err();
    assert!(matches!(err, Error::DatabaseAhead { .. }), "{err}");
}

#[test]
fn a_second_writer_is_locked_out() {
    let tmp = tempfile::tempdir().unwrap();
    let _store = new_store(tmp.path());
    let err = Store::open(tmp.path(), StoreOptions::default()).unwrap_err();
    assert!(matches!(err, Error::Locked { .. }), "{err}");
}

/// Holds the writer inside a transaction until released, so that the
/// transactions submitted meanwhile run together in the next group commit.
fn hold_writer(store: &Arc<Store>) -> (std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>) {
    let before = store.stats().submitted;
    let (release, gate) = std::sync::mpsc::channel::<()>();
    let gate = Arc::new(std::sync::Mutex::new(gate));
    let (entered_tx, entered) = std::sync::mpsc::channel::<()>();
    let s = store.clone();
    let h = std::thread::spawn(move || {
        s.transaction(move |_tx| {
            let _ = entered_tx.send(());
            let _ = gate.lock().unwrap().recv();
            Ok(())
        })
        .unwrap();
    });
    entered.recv().unwrap();
    // The holder's submission is counted after its send, which the writer
    // may take (and run) first: wait for the count, or the caller's
    // `wait_submitted` would be one behind and let its jobs reorder.
    wait_submitted(store, before + 1);
    (release, h)
}

fn wait_submitted(store: &Store, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.stats().submitted < n {
        assert!(Instant::now() < deadline, "transactions were not submitted");
        std::thread::yield_now();
    }
}

#[test]
fn one_group_commit_isolates_failures_reruns_and_schema_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(new_store(tmp.path()));
    exec(
        &store,
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL UNIQUE)",
    );
    exec(&store, "INSERT INTO t VALUES (100, 'taken')");
    let before = store.state().lsn;
    let (release, holder) = hold_writer(&store);
    let base = store.stats().submitted;
    let mut threads = Vec::new();
    let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    type Job = Box<dyn FnMut(&mut shipper::Tx<'_>) -> shipper::Result<()> + Send>;
    let jobs: Vec<(&str, Job)> = vec![
        (
            "ok1",
            Box::new({
                let runs = runs.clone();
                move |tx| {
                    runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    tx.conn().execute("INSERT INTO t VALUES (1, 'one')", [])?;
                    Ok(())
                }
            }),
        ),
        (
            "fails",
            Box::new(|tx| {
                tx.conn().execute("INSERT INTO t VALUES (2, 'two')", [])?;
                Err(shipper::Error::Aborted("no".into()))
            }),
        ),
        (
            "rollback",
            Box::new(|tx| {
                // Ends the whole SQLite transaction: the batch is redone without it.
                tx.conn()
                    .execute("INSERT OR ROLLBACK INTO t VALUES (3, 'taken')", [])?;
                Ok(())
            }),
        ),
        (
            "ddl",
            Box::new(|tx| {
                tx.conn().execute("INSERT INTO t VALUES (4, 'four')", [])?;
                tx.ddl("CREATE TABLE u (id INTEGER PRIMARY KEY, w TEXT)")?;
                tx.conn().execute("INSERT INTO u VALUES (1, 'x')", [])?;
                Ok(())
            }),
        ),
        (
            "ok2",
            Box::new(|tx| {
                tx.conn().execute("INSERT INTO t VALUES (5, 'five')", [])?;
                Ok(())
            }),
        ),
    ];
    for (i, (name, mut job)) in jobs.into_iter().enumerate() {
        let s = store.clone();
        threads.push((
            name,
            std::thread::spawn(move || s.transaction(move |tx| job(tx))),
        ));
        wait_submitted(&store, base + i as u64 + 1);
    }
    release.send(()).unwrap();
    holder.join().unwrap();
    let mut results = std::collections::HashMap::new();
    for (name, h) in threads {
        results.insert(name, h.join().unwrap());
    }
    assert!(
        results["ok1"].is_ok() && results["ok2"].is_ok() && results["ddl"].is_ok(),
        "{results:?}"
    );
    assert!(
        results["fails"].is_err() && results["rollback"].is_err(),
        "{results:?}"
    );
    // ok1 ran twice: once before the rollback ended the batch, once after.
    assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 2);
    let ids: Vec<i64> = store
        .reader()
        .unwrap()
        .prepare("SELECT id FROM t ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(ids, vec![1, 4, 5, 100]);
    assert_eq!(count(&store, "SELECT count(*) FROM u"), 1);
    // The schema change got a record of its own.
    let ddl_lsn = results["ddl"].as_ref().unwrap().lsn;
    assert_ne!(ddl_lsn, results["ok1"].as_ref().unwrap().lsn);
    assert_ne!(ddl_lsn, results["ok2"].as_ref().unwrap().lsn);
    assert!(store.state().lsn.0 > before.0 + 1);
    assert_hash_matches(&store);
}

#[test]
fn a_refused_schema_change_is_rolled_back_even_if_the_closure_ignores_it() {
    let tmp = tempfile::tempdir().unwrap();
    let store = new_store(tmp.path());
    let before = store.state().lsn;
    let err = store
        .transaction(|tx| {
            let _ignored = tx.ddl("CREATE TABLE nopk (_rowid_ TEXT)");
            Ok(())
        })
        .unwrap_err();
    assert!(
        matches!(&err, Error::Refused { what } if what.contains("nopk")),
        "{err}"
    );
    assert_eq!(store.state().lsn, before);
    assert_eq!(
        count(
            &store,
            "SELECT count(*) FROM sqlite_schema WHERE name = 'nopk'"
        ),
        0
    );
    assert_hash_matches(&store);
}

#[test]
fn statements_after_a_whole_transaction_rollback_cannot_commit_unlogged() {
    let tmp = tempfile::tempdir().unwrap();
    let store = new_store(tmp.path());
    exec(
        &store,
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL UNIQUE)",
    );
    exec(&store, "INSERT INTO t VALUES (1, 'taken')");
    let before = store.state().lsn;
    let r = store.transaction(|tx| {
        // Ends the SQLite transaction; the closure ignores it and goes on.
        let _ = tx
            .conn()
            .execute("INSERT OR ROLLBACK INTO t VALUES (2, 'taken')", []);
        let _ = tx.conn().execute("INSERT INTO t VALUES (99, 'sneaky')", []);
        let _ = tx
            .conn()
            .execute_batch("SAVEPOINT x; INSERT INTO t VALUES (98, 'x'); RELEASE x;");
        Ok(())
    });
    assert!(r.is_err(), "{r:?}");
    assert_eq!(
        count(&store, "SELECT count(*) FROM t WHERE id IN (98, 99)"),
        0
    );
    assert_eq!(store.state().lsn, before);
    assert_hash_matches(&store);
}

#[test]
fn the_guard_table_and_sqlite_schema_are_out_of_reach() {
    let tmp = tempfile::tempdir().unwrap();
    let store = new_store(tmp.path());
    exec(&store, "CREATE TABLE t (id INTEGER PRIMARY KEY)");
    let before = store.state().lsn;
    for sql in [
        "UPDATE _logship SET lsn = 500",
        "DELETE FROM _logship",
        "INSERT INTO _logship VALUES (2, 0, x'00')",
        "ALTER TABLE _logship ADD COLUMN x",
        "DROP TABLE _logship",
        "CREATE TRIGGER g BEFORE UPDATE ON _logship BEGIN SELECT RAISE(ROLLBACK, 'no'); END",
        "UPDATE sqlite_schema SET sql = sql",
    ] {
        let err = store
            .transaction(move |tx| tx.execute_script(sql, |_, _, _| Ok(())))
            .unwrap_err();
        assert!(
            matches!(err, Error::Refused { .. } | Error::Sql { .. }),
            "{sql}: {err}"
        );
    }
    assert_eq!(store.state().lsn, before);
    drop(store);
    // And the store still opens.
    let store = Store::open(tmp.path(), StoreOptions::default()).unwrap();
    assert_hash_matches(&store);
}

#[test]
fn ddl_takes_one_schema_statement_and_no_row_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let store = new_store(tmp.path());
    exec(&store, "CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)");
    for sql in [
        "CREATE TABLE a (id INTEGER PRIMARY KEY); INSERT INTO t VALUES (1, random())",
        "INSERT INTO t VALUES (1, random())",
    ] {
        let err = store.transaction(move |tx| tx.ddl(sql)).unwrap_err();
        assert!(matches!(err, Error::Refused { .. }), "{sql}: {err}");
    }
    assert_eq!(count(&store, "SELECT count(*) FROM t"), 0);
    assert_eq!(
        count(
            &store,
            "SELECT count(*) FROM sqlite_schema WHERE name = 'a'"
        ),
        0
    );
}

#[test]
fn integer_primary_key_desc_is_not_a_rowid_alias_and_is_refused_when_nullable() {
    let tmp = tempfile::tempdir().unwrap();
    let store = new_store(tmp.path());
    let err = store
        .transaction(|tx| {
            tx.execute_script(
                "CREATE TABLE d (id INTEGER PRIMARY KEY DESC, v TEXT)",
                |_, _, _| Ok(()),
            )
        })
        .unwrap_err();
    assert!(err.to_string().contains("may be NULL"), "{err}");
    exec(
        &store,
        "CREATE TABLE d (id INTEGER PRIMARY KEY DESC NOT NULL, v TEXT)",
    );
}

#[test]
fn a_torn_tail_repair_that_would_drop_committed_records_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let store = new_store(tmp.path());
    exec(
        &store,
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)",
    );
    for _ in 0..3 {
        exec(&store, "INSERT INTO t (v) VALUES ('x')");
    }
    drop(store);
    // A bad byte early in the current segment: the records after it are in
    // the database, so zeroing them would put the database ahead of its log.
    let current = tmp
        .path()
        .join(LOG_DIR)
        .join(shipper::format::CURRENT_FILE_NAME);
    let mut bytes = std::fs::read(&current).unwrap();
    bytes[shipper::format::HEADER_SIZE + 20] ^= 0xff;
    std::fs::write(&current, &bytes).unwrap();
    let err = Store::open(tmp.path(), StoreOptions::default()).unwrap_err();
    assert!(matches!(err, Error::DatabaseAhead { .. }), "{err}");
    assert_eq!(
        std::fs::read(&current).unwrap(),
        bytes,
        "nothing was written"
    );
}

#[test]
fn a_crash_before_the_next_segment_keeps_the_schema_hash_of_the_last_ddl() {
    let tmp = tempfile::tempdir().unwrap();
    let store = new_store(tmp.path());
    exec(&store, "CREATE TABLE t (id INTEGER PRIMARY KEY)");
    store.seal().unwrap().unwrap();
    let expected = store.state().schema_hash;
    drop(store);
    // As if the process died between the seal's rename and the new LS.log.
    std::fs::remove_file(
        tmp.path()
            .join(LOG_DIR)
            .join(shipper::format::CURRENT_FILE_NAME),
    )
    .unwrap();
    let store = Store::open(tmp.path(), StoreOptions::default()).unwrap();
    assert_eq!(store.state().schema_hash, expected);
    let header = shipper::log::read_header(
        &tmp.path()
            .join(LOG_DIR)
            .join(shipper::format::CURRENT_FILE_NAME),
    )
    .unwrap();
    assert_eq!(header.schema_hash, expected);
    assert_eq!(
        shipper::hash::schema_hash(&store.reader().unwrap()).unwrap(),
        expected
    );
}

#[test]
fn a_store_past_its_fence_takes_no_writes_and_acknowledges_none() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    Store::init(&dir).unwrap();
    let fence = Arc::new(shipper::Fence::new());
    fence.extend(Instant::now() + Duration::from_secs(3600));
    let opts = StoreOptions {
        fence: Some(fence.clone()),
        ..Default::default()
    };
    let store = Store::open(&dir, opts).unwrap();
    exec(
        &store,
        "CREATE TABLE t (id INTEGER PRIMARY KEY NOT NULL, v TEXT)",
    );
    let before = exec(&store, "INSERT INTO t VALUES (1, 'a')").lsn;
    fence.revoke();
    let r = store
        .transaction(|tx| tx.execute_script("INSERT INTO t VALUES (2, 'b')", |_, _, _| Ok(())));
    assert!(matches!(r, Err(Error::Fenced(_))), "{r:?}");
    // And it stays fenced: nothing more is taken.
    let r = store
        .transaction(|tx| tx.execute_script("INSERT INTO t VALUES (3, 'c')", |_, _, _| Ok(())));
    assert!(r.is_err(), "{r:?}");
    drop(store);
    // Nothing past the fence was logged.
    let store = Store::open(&dir, StoreOptions::default()).unwrap();
    assert_eq!(store.state().lsn, before);
    assert_eq!(count(&store, "SELECT count(*) FROM t"), 1);
}

#[test]
fn a_new_epoch_seals_a_segment_holding_records_and_rewrites_an_empty_one() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    let store = new_store(&dir);
    exec(&store, "CREATE TABLE t (id INTEGER PRIMARY KEY NOT NULL)");
    let lsn = exec(&store, "INSERT INTO t VALUES (1)").lsn;
    let old_epoch = store.state().epoch;
    drop(store);
    let opts = |e: u64| StoreOptions {
        epoch: Some(shipper::Epoch(e)),
        ..Default::default()
    };
    // Records in the current segment: it is sealed in the old epoch.
    let store = Store::open(&dir, opts(7)).unwrap();
    let st = store.state();
    assert_eq!(st.epoch, shipper::Epoch(7));
    let sealed = list_sealed(&dir.join(LOG_DIR)).unwrap();
    assert_eq!(sealed.len(), 1);
    let h = shipper::log::read_header(&sealed[0].1).unwrap();
    assert_eq!(h.epoch, old_epoch);
    let current = dir.join(LOG_DIR).join(shipper::format::CURRENT_FILE_NAME);
    assert_eq!(
        shipper::log::read_header(&current).unwrap().epoch,
        shipper::Epoch(7)
    );
    exec(&store, "INSERT INTO t VALUES (2)");
    drop(store);
    // An epoch older than the log's is refused; the same epoch changes nothing.
    assert!(matches!(
        Store::open(&dir, opts(6)),
        Err(Error::EpochBehind { .. })
    ));
    drop(Store::open(&dir, opts(7)).unwrap());
    // An empty current segment takes the new epoch in place.
    let store = Store::open(&dir, StoreOptions::default()).unwrap();
    store.seal().unwrap();
    let generation = store.state().generation;
    drop(store);
    let store = Store::open(&dir, opts(9)).unwrap();
    assert_eq!(store.state().generation, generation);
    assert_eq!(
        shipper::log::read_header(&current).unwrap().epoch,
        shipper::Epoch(9)
    );
    exec(&store, "INSERT INTO t VALUES (3)");
    assert!(store.state().lsn > lsn);
    assert_hash_matches(&store);
    drop(store);
    // The whole log still reads as one chain.
    let mut n = 0;
    for_each_record(&dir.join(LOG_DIR), None, Lsn::ZERO, |_, _| {
        n += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(n, 4);
}

#[test]
fn a_frozen_store_has_sealed_everything_before_and_refuses_everything_after() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    let store = new_store(&dir);
    exec(&store, "CREATE TABLE t (id INTEGER PRIMARY KEY NOT NULL)");
    let last = exec(&store, "INSERT INTO t VALUES (1)").lsn;
    assert_eq!(store.freeze("handed over to beta").unwrap(), last);
    let sealed = list_sealed(&dir.join(LOG_DIR)).unwrap();
    let trailer = shipper::log::read_trailer(&sealed.last().unwrap().1).unwrap();
    assert_eq!(trailer.last_lsn, last);
    let r = store.transaction(|tx| tx.execute_script("INSERT INTO t VALUES (2)", |_, _, _| Ok(())));
    match r {
        Err(Error::Fenced(why)) => assert!(why.contains("handed over to beta"), "{why}"),
        other => panic!("{other:?}"),
    }
    // Still answering reads and checks.
    assert_hash_matches(&store);
    assert_eq!(store.state().lsn, last);
}

#[test]
fn transactions_too_large_together_for_one_record_are_committed_one_by_one() {
    let tmp = tempfile::tempdir().unwrap();
    Store::init(tmp.path()).unwrap();
    let store = Arc::new(
        Store::open(
            tmp.path(),
            StoreOptions {
                max_transaction_bytes: 1 << 20,
                ..Default::default()
            },
        )
        .unwrap(),
    );
    exec(
        &store,
        "CREATE TABLE b (id INTEGER PRIMARY KEY, v BLOB NOT NULL)",
    );
    let before = store.state().lsn;
    // Four of 600 KiB queue behind a held writer: one batch would be 2.4 MiB.
    let (release, holder) = hold_writer(&store);
    let base = store.stats().submitted;
    let mut threads = Vec::new();
    for i in 0..4 {
        let s = store.clone();
        threads.push(std::thread::spawn(move || {
            s.transaction(move |tx| {
                tx.conn()
                    .execute("INSERT INTO b VALUES (?1, zeroblob(600 * 1024))", [i])?;
                Ok(())
            })
        }));
        wait_submitted(&store, base + i as u64 + 1);
    }
    release.send(()).unwrap();
    holder.join().unwrap();
    for t in threads {
        t.join().unwrap().expect("each fits a record alone");
    }
    assert_eq!(count(&store, "SELECT count(*) FROM b"), 4);
    // One record each (and the held one's, which changed nothing).
    assert_eq!(store.state().lsn.0, before.0 + 4);
    // Alone, one larger than the limit is still refused, by size.
    let e = store
        .transaction(|tx| {
            tx.conn()
                .execute("INSERT INTO b VALUES (9, zeroblob(1100 * 1024))", [])?;
            Ok(())
        })
        .unwrap_err();
    assert!(e.to_string().contains("too large"), "{e}");
}

mod application_tables {
    //! Random transactions on an AUTOINCREMENT table, a keyless table and an
    //! FTS5 table, some of them run together in one group commit: a copy
    //! that replays the log ends equal (content hash, counters, rowids and
    //! every `MATCH` answer).

    use super::*;
    use proptest::prelude::*;

    const WORDS: [&str; 5] = ["alpha", "bravo", "charlie", "delta", "echo"];

    fn text() -> impl Strategy<Value = String> {
        proptest::collection::vec(0..WORDS.len(), 1..4)
            .prop_map(|w| w.iter().map(|&i| WORDS[i]).collect::<Vec<_>>().join(" "))
    }

    fn statement() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => text().prop_map(|t| format!("INSERT INTO note (title) VALUES ('{t}')")),
            1 => Just("DELETE FROM note WHERE id = (SELECT max(id) FROM note)".to_string()),
            1 => (1i64..8).prop_map(|k| format!("DELETE FROM note WHERE id = {k}")),
            1 => (0i64..5).prop_map(|k| format!("UPDATE sqlite_sequence SET seq = seq + {k} WHERE name = 'note'")),
            3 => (0i64..4, text()).prop_map(|(k, t)| format!("INSERT INTO ev VALUES ({k}, '{t}')")),
            1 => (0i64..4, text()).prop_map(|(k, t)| format!("UPDATE ev SET b = '{t}' WHERE a = {k}")),
            1 => (0i64..4).prop_map(|k| format!("DELETE FROM ev WHERE a = {k}")),
            1 => (0i64..4, 1i64..20).prop_map(|(k, r)| format!("UPDATE ev SET rowid = {r} WHERE a = {k}")),
            3 => (text(), text()).prop_map(|(s, b)| format!("INSERT INTO s (subject, body) VALUES ('{s}', '{b}')")),
            1 => (1i64..10, text()).prop_map(|(k, b)| format!("UPDATE s SET body = '{b}' WHERE rowid = {k}")),
            1 => (1i64..10).prop_map(|k| format!("DELETE FROM s WHERE rowid = {k}")),
            1 => Just("INSERT INTO s (s) VALUES ('optimize')".to_string()),
        ]
    }

    /// What a copy must answer as the active does.
    fn views(c: &rusqlite::Connection) -> Vec<String> {
        let mut q = vec![
            "SELECT group_concat(name || '=' || seq) FROM (SELECT * FROM sqlite_sequence ORDER BY name)".to_string(),
            "SELECT group_concat(id || ':' || title) FROM (SELECT * FROM note ORDER BY id)".into(),
            "SELECT group_concat(rowid || ':' || a || ':' || b) FROM (SELECT rowid, * FROM ev ORDER BY rowid)".into(),
        ];
        q.extend(WORDS.iter().map(|w| {
            format!("SELECT group_concat(rowid) FROM (SELECT rowid FROM s WHERE s MATCH '{w}' ORDER BY rowid)")
        }));
        q.iter()
            .map(|q| {
                c.query_row(q, [], |r| r.get::<_, Option<String>>(0))
                    .unwrap()
                    .unwrap_or_default()
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        #[test]
        fn a_copy_replaying_the_log_answers_as_the_active(
            alone in proptest::collection::vec(proptest::collection::vec(statement(), 1..4), 1..10),
            together in proptest::collection::vec(proptest::collection::vec(statement(), 1..4), 0..6),
        ) {
            let tmp = tempfile::tempdir().unwrap();
            let (dir, seed, store) = store_and_seed(tmp.path());
            for sql in [
                "CREATE TABLE note (id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, title TEXT NOT NULL)",
                "CREATE TABLE ev (a INTEGER, b TEXT)",
                "CREATE VIRTUAL TABLE s USING fts5(subject, body)",
            ] {
                exec(&store, sql);
            }
            let run = |store: &Store, tx: Vec<String>| {
                // A failing statement fails its transaction, which is fine.
                let _ = store.transaction(move |t| {
                    for sql in &tx {
                        t.execute_script(sql, |_, _, _| Ok(()))?;
                    }
                    Ok(())
                });
            };
            for tx in alone {
                run(&store, tx);
            }
            let store = Arc::new(store);
            let threads: Vec<_> = together
                .into_iter()
                .map(|tx| {
                    let store = store.clone();
                    std::thread::spawn(move || run(&store, tx))
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            assert_hash_matches(&store);
            let end = store.state();
            let active = views(&store.reader().unwrap());
            drop(store);
            let copy = replay_onto(&seed, &dir);
            prop_assert_eq!(shipper::hash::full_scan(&copy).unwrap(), end.hash);
            prop_assert_eq!(views(&copy), active);
        }
    }
}

/// A passive copy that replayed records past where a newer epoch began
/// undoes them (`rewind_copy`): its database goes back to the fork with the
/// content hash the log recorded there, and its segments go aside, so that
/// it can follow the new active's log. (A store rewind would refuse: a
/// copy is not a store.)
#[test]
fn a_copy_rewinds_past_a_fork_without_opening_a_store() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, seed, store) = store_and_seed(tmp.path());
    exec(&store, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)");
    let fork = exec(&store, "INSERT INTO t VALUES (1, 'kept')").lsn;
    exec(&store, "INSERT INTO t VALUES (2, 'past the fork')");
    exec(
        &store,
        "UPDATE t SET v = 'changed past the fork' WHERE id = 1",
    );
    store.seal().unwrap();
    drop(store);
    // The copy: the seed, every record replayed, the segments copied, and
    // the passive marker.
    let copy = tmp.path().join("copy");
    restore(&seed, &{
        std::fs::create_dir_all(&copy).unwrap();
        copy.clone()
    });
    std::fs::create_dir_all(copy.join(LOG_DIR)).unwrap();
    for (_, seg) in list_sealed(&dir.join(LOG_DIR)).unwrap() {
        let name = seg.file_name().unwrap();
        std::fs::copy(&seg, copy.join(LOG_DIR).join(name)).unwrap();
    }
    drop(replay_onto(&copy, &dir));
    std::fs::write(copy.join(shipper::store::PASSIVE_MARKER), b"{}").unwrap();
    let r = shipper::rewind::rewind_copy(&copy, fork).unwrap();
    assert_eq!((r.to, r.records), (fork, 2));
    let conn = rusqlite::Connection::open(copy.join(DATABASE_FILE)).unwrap();
    let (lsn, _) = shipper::apply::read_guard(&conn).unwrap();
    assert_eq!(lsn, fork);
    let rows: Vec<(i64, String)> = conn
        .prepare("SELECT id, v FROM t ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(rows, [(1, "kept".to_string())]);
    assert_eq!(
        Some(shipper::hash::full_scan(&conn).unwrap()),
        shipper::log::hash_at(&dir.join(LOG_DIR), fork).unwrap()
    );
    assert!(list_sealed(&copy.join(LOG_DIR)).unwrap().is_empty());
    assert!(r.report.exists() && r.segments.exists());
}
