//! Rewind: takes a node's database back to an earlier LSN by applying the
//! inverted changesets of its own records past that LSN, newest first, each
//! strictly conflict-checked. An old active that comes back after a lossy
//! failover holds transactions the new active never received; rewinding to
//! where the new epoch began lets it follow the new active's log without a
//! full reseed.
//!
//! The rewound transactions are written to a report an operator can read
//! (`<data-dir>/rewound/rewound-<from>-<to>.txt`), and the node's own log
//! segments are moved beside it: they are no longer the cluster's history.
//! DDL cannot be inverted from a changeset; a range holding DDL, a log that
//! no longer reaches back, or any conflict makes rewinding impossible (the
//! caller then reseeds). A node *behind* the fork (the new active took over
//! with records its machine lost before they reached its disk) has nothing
//! to undo: it stays where it is and catches up from the new active.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

use crate::apply::read_guard;
use crate::changeset::{self, ApplyOptions};
use crate::error::{Error, Result};
use crate::format::Body;
use crate::store::{Store, StoreOptions, StorePaths, lock_data_dir};
use crate::types::{ContentHash, Lsn};
use crate::{hash, log};

/// Where rewound transactions and retired segments go, in the data directory.
pub const REWOUND_DIR: &str = "rewound";

/// What a rewind did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rewound {
    /// The LSN the database held before, and holds now.
    pub from: Lsn,
    pub to: Lsn,
    /// Transactions undone.
    pub records: u64,
    /// The content hash at `to` (a full scan).
    pub hash: ContentHash,
    /// The report of the rewound transactions, and where the segments went.
    pub report: PathBuf,
    pub segments: PathBuf,
}

/// Rewinds the store in `data_dir` to `to`. The store must not be open.
pub fn rewind(data_dir: &Path, to: Lsn) -> Result<Rewound> {
    // Recovery first: the database must hold everything its log holds.
    drop(Store::open(data_dir, StoreOptions::default())?);
    undo_past(data_dir, to)
}

/// Rewinds a passive copy in `data_dir` to `to`: a copy that replayed
/// records an old active wrote past where a newer epoch began (copied from
/// its share after another node took over) undoes them, and puts its
/// segments aside, before it follows the new active. A copy has no store
/// to recover: its database stands where its replay left it. Its replay
/// must be stopped.
pub fn rewind_copy(data_dir: &Path, to: Lsn) -> Result<Rewound> {
    undo_past(data_dir, to)
}

/// Undoes the database's records past `to` and moves the log's segments
/// aside (see the module's text).
fn undo_past(data_dir: &Path, to: Lsn) -> Result<Rewound> {
    let paths = StorePaths::new(data_dir);
    let _lock = lock_data_dir(data_dir)?;
    let conn = Connection::open_with_flags(
        &paths.database,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| Error::sql(format!("open {}", paths.database.display()), e))?;
    conn.execute_batch("PRAGMA foreign_keys = OFF; PRAGMA busy_timeout = 5000;")
        .map_err(|e| Error::sql("configure the database", e))?;
    changeset::set_triggers_enabled(&conn, false)?;
    let (from, db) = read_guard(&conn)?;
    if from < to {
        // Behind the fork (the peer took over with records this node's
        // machine lost before they reached its disk): nothing to undo; the
        // copy catches up from the peer's log.
        tracing::info!(lsn = %from, fork = %to, "behind the fork: nothing to undo");
    }
    let to = to.min(from);
    let mut records: Vec<(Lsn, u64, Vec<u8>)> = Vec::new();
    let mut ddl = None;
    log::for_each_record(&paths.logs, Some(db), to, |lsn, rec| {
        if lsn > from {
            return Ok(());
        }
        match rec.body {
            Body::Changeset(cs) => records.push((lsn, rec.time_us, cs)),
            Body::Ddl { .. } => {
                ddl.get_or_insert(lsn);
            }
        }
        Ok(())
    })?;
    if let Some(lsn) = ddl {
        return Err(Error::RewindPastSchemaChange { lsn });
    }
    if records.len() as u64 != from.0 - to.0 {
        return Err(Error::MissingLog {
            dir: paths.logs.clone(),
            after: to,
            first: records.first().map(|r| r.0).unwrap_or(from),
        });
    }
    // The report first: what is undone is on disk before it is undone.
    let dir = data_dir.join(REWOUND_DIR);
    fs::create_dir_all(&dir).map_err(|e| Error::io("create", &dir, e))?;
    let report = dir.join(format!("rewound-{}-{}.txt", from.0, to.0));
    if !records.is_empty() {
        write_report(&report, &paths.database, from, to, &records)?;
    }
    conn.execute_batch("BEGIN IMMEDIATE")
        .map_err(|e| Error::sql("begin the rewind", e))?;
    for (lsn, _, cs) in records.iter().rev() {
        let inverse = changeset::invert(cs)?;
        match changeset::apply_strict(&conn, &inverse, ApplyOptions::default()) {
            Ok(()) => {}
            Err(r) => {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(match r {
                    Ok(report) => Error::Conflict {
                        lsn: *lsn,
                        table: report.table,
                        conflict: report.kind,
                        detail: format!("undoing it: {}", report.detail),
                    },
                    Err(e) => e,
                });
            }
        }
    }
    let (now, _) = read_guard(&conn)?;
    if now != to {
        let _ = conn.execute_batch("ROLLBACK");
        return Err(Error::RewindCheck {
            path: paths.database.clone(),
            to,
            what: format!("after undoing LSN {from}..{to} the guard row says {now}"),
        });
    }
    let scanned = hash::full_scan(&conn)?;
    if let Some(expected) = log::hash_at(&paths.logs, to)?
        && expected != scanned
    {
        let _ = conn.execute_batch("ROLLBACK");
        return Err(Error::RewindCheck {
            path: paths.database.clone(),
            to,
            what: format!(
                "the content hash is {scanned}, but the log recorded {expected} at LSN {to}"
            ),
        });
    }
    conn.execute_batch("COMMIT")
        .map_err(|e| Error::sql("commit the rewind", e))?;
    drop(conn);
    // The node's own segments leave the log directory.
    let segments = dir.join(format!("logs-{}-{}", from.0, to.0));
    fs::create_dir_all(&segments).map_err(|e| Error::io("create", &segments, e))?;
    for entry in fs::read_dir(&paths.logs).map_err(|e| Error::io("list", &paths.logs, e))? {
        let p = entry.map_err(|e| Error::io("list", &paths.logs, e))?.path();
        if p.extension().is_some_and(|e| e == "log") {
            let dest = segments.join(p.file_name().expect("a file name"));
            fs::rename(&p, &dest).map_err(|e| Error::io("move aside", &p, e))?;
        }
    }
    log::sync_dir(&paths.logs)?;
    if records.is_empty() {
        tracing::info!(lsn = %to, "nothing to undo: the new active holds everything this node wrote");
    } else {
        tracing::warn!(from = %from, to = %to, records = records.len(), report = %report.display(), "rewound transactions the new active never received");
    }
    Ok(Rewound {
        from,
        to,
        records: records.len() as u64,
        hash: scanned,
        report,
        segments,
    })
}

fn write_report(
    report: &Path,
    database: &Path,
    from: Lsn,
    to: Lsn,
    records: &[(Lsn, u64, Vec<u8>)],
) -> Result<()> {
    let mut text = format!(
        "# Transactions rewound from {} (LSN {from} back to LSN {to}), newest first.\n\
         # They were durable on this node but never reached the node that became active.\n",
        database.display()
    );
    for (lsn, time_us, cs) in records.iter().rev() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_micros(*time_us);
        text.push_str(&format!(
            "LSN {lsn} committed {}\n",
            humantime::format_rfc3339_seconds(t)
        ));
        for line in changeset::describe(cs)? {
            if !line.contains(changeset::GUARD_TABLE) {
                text.push_str(&format!("  {line}\n"));
            }
        }
    }
    let mut f = fs::File::create(report).map_err(|e| Error::io("create", report, e))?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io("write", report, e))?;
    Ok(())
}
