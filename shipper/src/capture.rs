//! Row-change capture on the store's write connection through SQLite's
//! preupdate hook, producing changesets in the session extension's binary
//! format (what `changeset::apply_strict`, the changegroup and the content
//! hash read).
//!
//! It follows the session extension's algorithm exactly: the first time a
//! row (table + primary key) is touched, its old values are kept (or "it did
//! not exist"); when the changeset is built, each touched row is read back
//! by its key and compared with what was kept. Reading the final rows is
//! what makes savepoint rollbacks, failed statements, REPLACE deletes,
//! trigger and foreign-key actions come out right: whatever happened in
//! between, the changeset is the difference between the kept row and the
//! row as it is.
//!
//! What it does not do, and why it exists: a session is created per group
//! commit, and the session extension reads each table's columns with a
//! `PRAGMA` and prepares a `SELECT` per table every time. Here the table
//! descriptions and their statements live as long as the schema, so a small
//! transaction costs a hash-map insert per row change and one prepared
//! lookup per row. Tests compare its changesets with the session
//! extension's on random workloads.

use std::collections::HashMap;
use std::ffi::{CStr, c_char, c_int, c_void};
use std::ptr;

use rusqlite::Connection;
use rusqlite::ffi;

use crate::error::{Error, Result};

/// Changeset operation codes (sqlite3.h).
const OP_INSERT: u8 = ffi::SQLITE_INSERT as u8;
const OP_DELETE: u8 = ffi::SQLITE_DELETE as u8;
const OP_UPDATE: u8 = ffi::SQLITE_UPDATE as u8;
/// Value type codes of the changeset record format.
const T_INTEGER: u8 = ffi::SQLITE_INTEGER as u8;
const T_FLOAT: u8 = ffi::SQLITE_FLOAT as u8;
const T_TEXT: u8 = ffi::SQLITE_TEXT as u8;
const T_BLOB: u8 = ffi::SQLITE_BLOB as u8;
const T_NULL: u8 = ffi::SQLITE_NULL as u8;

/// One column of a captured table, as the changeset numbers them (the
/// non-hidden columns in declaration order).
#[derive(Debug)]
struct Column {
    name: String,
    /// Index for `sqlite3_preupdate_old/new` (counts hidden columns too);
    /// `ROWID_CID` for the rowid of a table without a primary key.
    cid: c_int,
    /// Position in the primary key, from 1; 0 when not part of it.
    pk: u8,
}

/// The `cid` of the rowid column that a table without a declared primary
/// key gets in changesets (first, as the key), as the session extension
/// does with `SQLITE_SESSION_OBJCONFIG_ROWID`.
const ROWID_CID: c_int = -1;

/// What the capture knows of one table; lives as long as the schema.
#[derive(Debug)]
struct TableInfo {
    /// The table's name as the schema spells it (the changeset's).
    name: String,
    /// Columns the preupdate hook reports (hidden ones included).
    total: c_int,
    columns: Vec<Column>,
    /// `SELECT <columns> FROM main.<t> WHERE (<pk>) IS (?1, ...)`,
    /// prepared on first use.
    select_sql: String,
    select: *mut ffi::sqlite3_stmt,
}

impl Drop for TableInfo {
    fn drop(&mut self) {
        // SAFETY: `select` is null or a statement of the connection that the
        // capture belongs to, finalized once, here; the capture is dropped
        // before its connection (see `Capture`).
        unsafe { ffi::sqlite3_finalize(self.select) };
    }
}

/// A touched row.
#[derive(Debug)]
struct Row {
    /// The primary key's values in changeset record format, in column order.
    key: Vec<u8>,
    /// Every column's value before the batch, in record format; `None` when
    /// the row did not exist.
    old: Option<Vec<u8>>,
    /// True while every change to the row came from a trigger or a foreign
    /// key action (the session extension's "indirect").
    indirect: bool,
}

#[derive(Debug)]
struct TableRows {
    info: usize,
    rows: Vec<Row>,
    by_key: HashMap<Vec<u8>, usize>,
}

/// AUTOINCREMENT's counters. SQLite writes `sqlite_sequence` without the
/// preupdate hook, so the table is read whole when capturing starts and
/// compared when a changeset is taken; the changeset carries it keyed by
/// table name (`changeset::SEQUENCE_TABLE`). It holds a row per
/// AUTOINCREMENT table, so this costs one small read per batch, and only
/// once the table exists.
/// (table name, counter), each in record format.
type Counter = (Vec<u8>, Vec<u8>);

#[derive(Debug, Default)]
struct Sequences {
    /// `SELECT name, seq FROM sqlite_sequence ORDER BY rowid`, once the
    /// table exists (SQLite never drops it).
    select: Option<RawStmt>,
    /// The table was looked for and is absent (until the schema changes).
    absent: bool,
    /// (name, seq) in record format as of the last read: the first row of
    /// each name (the one SQLite uses), sorted by name.
    before: Vec<Counter>,
}

impl Sequences {
    /// The counters now (empty while the table does not exist).
    fn read(&mut self, db: *mut ffi::sqlite3) -> std::result::Result<Vec<Counter>, String> {
        if self.select.is_none() && !self.absent {
            // SAFETY: `db` is live; the names are NUL-terminated; null
            // out-pointers are allowed.
            let rc = unsafe {
                ffi::sqlite3_table_column_metadata(
                    db,
                    c"main".as_ptr(),
                    c"sqlite_sequence".as_ptr(),
                    ptr::null(),
                    ptr::null_mut(),
                    ptr::null_mut(),
                    ptr::null_mut(),
                    ptr::null_mut(),
                    ptr::null_mut(),
                )
            };
            if rc == ffi::SQLITE_OK {
                self.select = Some(RawStmt::prepare(
                    db,
                    "SELECT name, seq FROM main.sqlite_sequence ORDER BY rowid",
                )?);
            } else {
                self.absent = true;
            }
        }
        let Some(stmt) = &self.select else {
            return Ok(Vec::new());
        };
        let mut rows = Vec::new();
        let read = (|| {
            while stmt.step()? {
                let (mut name, mut seq) = (Vec::new(), Vec::new());
                // SAFETY: a row is current, with two columns.
                unsafe {
                    serialize_column(stmt.0, 0, &mut name)?;
                    serialize_column(stmt.0, 1, &mut seq)?;
                }
                rows.push((name, seq));
            }
            Ok::<(), String>(())
        })();
        // SAFETY: live statement; resetting ends its read.
        unsafe { ffi::sqlite3_reset(stmt.0) };
        read.map_err(|e| format!("reading sqlite_sequence: {e}"))?;
        // The first row of a name wins (stable sort keeps rowid order).
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows.dedup_by(|later, first| later.0 == first.0);
        Ok(rows)
    }

    /// Appends the section of the counters that changed since the last
    /// read, and remembers them as they are now.
    fn append_changes(
        &mut self,
        db: *mut ffi::sqlite3,
        out: &mut Vec<u8>,
    ) -> std::result::Result<(), String> {
        if self.select.is_none() && self.absent {
            return Ok(());
        }
        let now = self.read(db)?;
        let before = std::mem::replace(&mut self.before, now);
        let now = &self.before;
        let start = out.len();
        out.push(b'T');
        put_varint(out, 2);
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(b"sqlite_sequence\0");
        let body = out.len();
        let (mut i, mut j) = (0, 0);
        while i < before.len() || j < now.len() {
            let order = match (before.get(i), now.get(j)) {
                (Some(b), Some(n)) => b.0.cmp(&n.0),
                (Some(_), None) => std::cmp::Ordering::Less,
                _ => std::cmp::Ordering::Greater,
            };
            match order {
                std::cmp::Ordering::Less => {
                    let (name, seq) = &before[i];
                    out.extend_from_slice(&[OP_DELETE, 0]);
                    out.extend_from_slice(name);
                    out.extend_from_slice(seq);
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    let (name, seq) = &now[j];
                    out.extend_from_slice(&[OP_INSERT, 0]);
                    out.extend_from_slice(name);
                    out.extend_from_slice(seq);
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    let ((name, old), (_, new)) = (&before[i], &now[j]);
                    if old != new {
                        out.extend_from_slice(&[OP_UPDATE, 0]);
                        out.extend_from_slice(name);
                        out.extend_from_slice(old);
                        out.push(0);
                        out.extend_from_slice(new);
                    }
                    i += 1;
                    j += 1;
                }
            }
        }
        if out.len() == body {
            out.truncate(start);
        }
        Ok(())
    }
}

/// The hook's state. Boxed, so its address is stable for the hook.
#[derive(Debug, Default)]
struct State {
    enabled: bool,
    /// Table descriptions, by name; cleared when the schema changes.
    infos: Vec<TableInfo>,
    info_by_name: HashMap<String, Option<usize>>,
    /// The rows touched since `reset`, per table in first-touch order.
    tables: Vec<TableRows>,
    table_by_info: HashMap<usize, usize>,
    /// Tables never captured (lower case): the store's own.
    skip: Vec<String>,
    /// The first error met inside the hook (it cannot return one).
    error: Option<String>,
    /// AUTOINCREMENT's counters (see `Sequences`).
    sequences: Sequences,
    /// Whether `main` has virtual tables (`None`: look again), whose
    /// writes may wait in memory (see `flush_virtual_tables`).
    virtual_tables: Option<bool>,
    /// Scratch for building keys.
    key: Vec<u8>,
}

/// Capture of row changes on one connection's `main` database.
///
/// It installs the connection's preupdate hook and removes it on drop.
/// It holds raw pointers into the connection: it must be dropped before the
/// connection is closed, and used only by the thread that is using the
/// connection. Those rules are the store's to keep (`Writer` declares it
/// before its connection and never lets it leave the writer thread), which is
/// why this module is private to the crate. No session of the session
/// extension may be created on the same connection: it would take the
/// capture's state for another session's.
#[derive(Debug)]
pub struct Capture {
    db: *mut ffi::sqlite3,
    /// From `Box::into_raw`; freed in `Drop` after the hook is removed.
    /// Shared with the hook, so it is reached only through `state()`.
    state: *mut State,
}

// SAFETY: a capture belongs to one connection and is used only together
// with it, by whichever thread holds both (the store moves them into its
// writer thread together); SQLite connections may move between threads.
unsafe impl Send for Capture {}

impl Capture {
    /// Installs the hook on `conn`. Changes to the tables named in `skip`
    /// (case-insensitive) and to SQLite's own `sqlite_%` tables are never
    /// captured; a table without a declared primary key is keyed by its
    /// rowid, as the session extension does with
    /// `SQLITE_SESSION_OBJCONFIG_ROWID`.
    pub fn new(conn: &Connection, skip: &[&str]) -> Capture {
        // SAFETY: the handle is the live connection's; it outlives the
        // capture per the type's contract.
        let db = unsafe { conn.handle() };
        let mut state = Box::<State>::default();
        state.skip = skip.iter().map(|s| s.to_ascii_lowercase()).collect();
        let state = Box::into_raw(state);
        // SAFETY: `db` is live; `state` stays allocated until `Drop`, which
        // removes the hook first.
        unsafe { ffi::sqlite3_preupdate_hook(db, Some(on_preupdate), state.cast()) };
        Capture { db, state }
    }

    fn state(&mut self) -> &mut State {
        // SAFETY: allocated in `new`, freed only in `Drop`; the hook, its
        // only other user, runs inside SQLite calls made on this thread,
        // never while this borrow is in use (no statement that could fire it
        // runs while a capture method holds the state).
        unsafe { &mut *self.state }
    }

    /// Forgets the rows touched so far and starts capturing.
    pub fn start(&mut self) {
        let db = self.db;
        let s = self.state();
        s.tables.clear();
        s.table_by_info.clear();
        s.error = None;
        match s.sequences.read(db) {
            Ok(now) => s.sequences.before = now,
            Err(e) => s.error = Some(e),
        }
        s.enabled = true;
    }

    /// Stops capturing (what was captured stays until `start`).
    pub fn stop(&mut self) {
        self.state().enabled = false;
    }

    /// The schema changed (or a schema change was rolled back): table
    /// descriptions are read again when next needed, and the rows captured
    /// so far are forgotten (take the `changeset` before a schema
    /// statement, as the store does).
    pub fn schema_changed(&mut self) {
        let s = self.state();
        s.tables.clear();
        s.table_by_info.clear();
        s.info_by_name.clear();
        s.infos.clear();
        s.sequences.absent = false;
        s.virtual_tables = None;
    }

    /// The changeset of everything captured since `start` (or the last
    /// `changeset`), in the session extension's format, and forgets it.
    /// Empty when nothing changed.
    pub fn changeset(&mut self) -> Result<Vec<u8>> {
        self.check_hook()?;
        self.flush_virtual_tables()?;
        let db = self.db;
        let s = self.state();
        if let Some(e) = s.error.take() {
            s.tables.clear();
            s.table_by_info.clear();
            return Err(Error::Stopped(format!("capturing row changes: {e}")));
        }
        let mut out = Vec::new();
        let tables = std::mem::take(&mut s.tables);
        s.table_by_info.clear();
        for t in &tables {
            let info = &mut s.infos[t.info];
            write_table(db, info, &t.rows, &mut out)?;
        }
        s.sequences
            .append_changes(db, &mut out)
            .map_err(|e| Error::Stopped(format!("capturing AUTOINCREMENT counters: {e}")))?;
        Ok(out)
    }

    /// FTS5 keeps the terms of the rows written in a transaction in memory
    /// and writes them to its shadow tables at the next savepoint or at
    /// COMMIT, which would be after the changeset is built: opening (and
    /// releasing) a savepoint makes every virtual table of the transaction
    /// write them now, under the capture.
    fn flush_virtual_tables(&mut self) -> Result<()> {
        let db = self.db;
        let s = self.state();
        let has = match s.virtual_tables {
            Some(has) => has,
            None => {
                let stmt = RawStmt::prepare(
                    db,
                    "SELECT 1 FROM main.sqlite_schema WHERE type = 'table' \
                     AND sql LIKE 'CREATE VIRTUAL%' LIMIT 1",
                )
                .map_err(|e| Error::Stopped(format!("looking for virtual tables: {e}")))?;
                let has = stmt
                    .step()
                    .map_err(|e| Error::Stopped(format!("looking for virtual tables: {e}")))?;
                s.virtual_tables = Some(has);
                has
            }
        };
        // SAFETY: `db` is live and in a transaction (the capture's contract);
        // the SQL is NUL-terminated; no callback.
        let rc = if has {
            unsafe {
                ffi::sqlite3_exec(
                    db,
                    c"SAVEPOINT logship_flush; RELEASE logship_flush".as_ptr(),
                    None,
                    ptr::null_mut(),
                    ptr::null_mut(),
                )
            }
        } else {
            ffi::SQLITE_OK
        };
        if rc != ffi::SQLITE_OK {
            return Err(Error::Stopped(format!(
                "writing the virtual tables' pending rows: {}",
                errmsg(db, rc)
            )));
        }
        Ok(())
    }

    /// Fails if another hook replaced this one (the closure of a
    /// transaction reached the connection's hooks): what it captured would
    /// be incomplete. (The other hook is replaced in turn; its context, if
    /// it had one, is not freed.)
    fn check_hook(&mut self) -> Result<()> {
        let ctx = self.state.cast::<c_void>();
        // SAFETY: `db` is live; setting the same hook and context again
        // changes nothing and returns the previous context.
        let previous = unsafe { ffi::sqlite3_preupdate_hook(self.db, Some(on_preupdate), ctx) };
        if previous != ctx {
            return Err(Error::Stopped(
                "the connection's preupdate hook was replaced: row changes were not captured"
                    .into(),
            ));
        }
        Ok(())
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        // SAFETY: `db` is live (the capture is dropped before the
        // connection); removing the hook first means it can no longer see
        // the state freed next.
        unsafe { ffi::sqlite3_preupdate_hook(self.db, None, ptr::null_mut()) };
        // SAFETY: from `Box::into_raw` in `new`, freed once; the hook that
        // shared it is gone. Its statements are finalized with it, before
        // the connection closes.
        drop(unsafe { Box::from_raw(self.state) });
    }
}

/// The changeset section of an UPDATE of one INTEGER column of a row with a
/// one-column INTEGER key, as the session extension would write it: the
/// store's guard row, whose change it makes itself and appends.
#[derive(Debug)]
pub struct IntUpdate {
    header: Vec<u8>,
    ncol: usize,
    key_col: usize,
    value_col: usize,
}

impl IntUpdate {
    /// For `table`, whose primary key is one column, updating `column`.
    pub fn new(conn: &Connection, table: &str, column: &str) -> Result<IntUpdate> {
        let err = |e: String| Error::Stopped(format!("reading the columns of {table}: {e}"));
        // SAFETY: the live connection's handle, used for this call only.
        let db = unsafe { conn.handle() };
        let info = read_table_info(db, table).map_err(err)?;
        let keys: Vec<usize> = (0..info.columns.len())
            .filter(|&i| info.columns[i].pk > 0)
            .collect();
        let [key_col] = keys[..] else {
            return Err(err(format!(
                "expected a one-column primary key, found {}",
                keys.len()
            )));
        };
        let value_col = info
            .columns
            .iter()
            .position(|c| c.name.eq_ignore_ascii_case(column))
            .ok_or_else(|| err(format!("no column {column}")))?;
        let mut header = vec![b'T'];
        put_varint(&mut header, info.columns.len() as u64);
        header.extend(info.columns.iter().map(|c| c.pk));
        header.extend_from_slice(info.name.as_bytes());
        header.push(0);
        Ok(IntUpdate {
            header,
            ncol: info.columns.len(),
            key_col,
            value_col,
        })
    }

    /// Appends the table section for: row `key`, `column` from `old` to `new`.
    pub fn append(&self, out: &mut Vec<u8>, key: i64, old: i64, new: i64) {
        let int = |out: &mut Vec<u8>, v: i64| {
            out.push(T_INTEGER);
            out.extend_from_slice(&v.to_be_bytes());
        };
        out.extend_from_slice(&self.header);
        out.push(OP_UPDATE);
        out.push(0);
        for i in 0..self.ncol {
            match i {
                _ if i == self.key_col => int(out, key),
                _ if i == self.value_col => int(out, old),
                _ => out.push(0),
            }
        }
        for i in 0..self.ncol {
            if i == self.value_col {
                int(out, new);
            } else {
                out.push(0);
            }
        }
    }
}

/// The preupdate hook.
///
/// # Safety
/// Called by SQLite with `ctx` as registered by `Capture::new`.
unsafe extern "C" fn on_preupdate(
    ctx: *mut c_void,
    db: *mut ffi::sqlite3,
    op: c_int,
    zdb: *const c_char,
    zname: *const c_char,
    key1: i64,
    key2: i64,
) {
    // A panic must not unwind into SQLite.
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: `ctx` is the boxed state, alive while the hook is set; the
        // hook runs on the thread that runs the statement, which is the one
        // that owns the capture, so nothing else touches the state now.
        let state = unsafe { &mut *ctx.cast::<State>() };
        if !state.enabled || state.error.is_some() {
            return;
        }
        // SAFETY: SQLite passes NUL-terminated names valid for the call.
        let (dbname, name) = unsafe { (CStr::from_ptr(zdb), CStr::from_ptr(zname)) };
        if !dbname.to_bytes().eq_ignore_ascii_case(b"main") {
            return;
        }
        let Ok(name) = name.to_str() else {
            state.error = Some("a table name that is not UTF-8".into());
            return;
        };
        if let Err(e) = state.on_change(db, op, name, [key1, key2]) {
            state.error = Some(e);
        }
    }))
    .map_err(|_| {
        // SAFETY: as above.
        let state = unsafe { &mut *ctx.cast::<State>() };
        state.error = Some("the capture hook panicked".into());
    });
}

impl State {
    fn on_change(
        &mut self,
        db: *mut ffi::sqlite3,
        op: c_int,
        name: &str,
        rowids: [i64; 2],
    ) -> std::result::Result<(), String> {
        let Some(info) = self.info(db, name)? else {
            return Ok(());
        };
        // SAFETY: inside the preupdate callback of `db`.
        let count = unsafe { ffi::sqlite3_preupdate_count(db) };
        if count != self.infos[info].total {
            // The schema changed without `schema_changed`: what was kept
            // under the old description can no longer be trusted.
            return Err(format!(
                "table {name} changed shape during the transaction ({} columns, now {count})",
                self.infos[info].total
            ));
        }
        // SAFETY: inside the preupdate callback of `db`.
        let indirect = unsafe { ffi::sqlite3_preupdate_depth(db) } > 0;
        self.one_change(db, info, op, indirect, rowids)?;
        if op == ffi::SQLITE_UPDATE {
            // The row may have moved to a new key: that key is "inserted".
            self.one_change(db, info, ffi::SQLITE_INSERT, indirect, rowids)?;
        }
        Ok(())
    }

    /// Records the row that `op` is about to change, if it is the first
    /// change to it; `INSERT` reads the key from the new values. `rowids`
    /// are the hook's old and new rowids (the key of a table without a
    /// declared primary key).
    fn one_change(
        &mut self,
        db: *mut ffi::sqlite3,
        info: usize,
        op: c_int,
        indirect: bool,
        rowids: [i64; 2],
    ) -> std::result::Result<(), String> {
        let from_new = op == ffi::SQLITE_INSERT;
        let ti = &self.infos[info];
        self.key.clear();
        for c in ti.columns.iter().filter(|c| c.pk > 0) {
            if c.cid == ROWID_CID {
                push_int(&mut self.key, rowids[from_new as usize]);
                continue;
            }
            // SAFETY: inside the preupdate callback; `cid` < the count.
            let v = unsafe { preupdate_value(db, c.cid, from_new) }?;
            // SAFETY: `v` is valid until the next preupdate_* call.
            if unsafe { ffi::sqlite3_value_type(v) } == ffi::SQLITE_NULL {
                // A NULL in the key: ignored, as by the session extension
                // (the store refuses such tables).
                return Ok(());
            }
            // SAFETY: as above.
            unsafe { serialize_value(v, &mut self.key) }?;
        }
        let t = match self.table_by_info.get(&info) {
            Some(&t) => t,
            None => {
                self.tables.push(TableRows {
                    info,
                    rows: Vec::new(),
                    by_key: HashMap::new(),
                });
                self.table_by_info.insert(info, self.tables.len() - 1);
                self.tables.len() - 1
            }
        };
        let rows = &mut self.tables[t];
        if let Some(&r) = rows.by_key.get(self.key.as_slice()) {
            if !indirect {
                rows.rows[r].indirect = false;
            }
            return Ok(());
        }
        let old = if from_new {
            None
        } else {
            let mut rec = Vec::with_capacity(64);
            for c in &ti.columns {
                if c.cid == ROWID_CID {
                    push_int(&mut rec, rowids[0]);
                    continue;
                }
                // SAFETY: inside the preupdate callback; `cid` < the count.
                let v = unsafe { preupdate_value(db, c.cid, false) }?;
                // SAFETY: `v` is valid until the next preupdate_* call.
                unsafe { serialize_value(v, &mut rec) }?;
            }
            Some(rec)
        };
        rows.by_key.insert(self.key.clone(), rows.rows.len());
        rows.rows.push(Row {
            key: self.key.clone(),
            old,
            indirect,
        });
        Ok(())
    }

    /// The description of table `name`, read on first use. `None` for
    /// tables not captured.
    fn info(
        &mut self,
        db: *mut ffi::sqlite3,
        name: &str,
    ) -> std::result::Result<Option<usize>, String> {
        if let Some(i) = self.info_by_name.get(name) {
            return Ok(*i);
        }
        let lower = name.to_ascii_lowercase();
        if self.skip.contains(&lower) {
            self.info_by_name.insert(name.to_string(), None);
            return Ok(None);
        }
        // SQLite's own tables are not captured (`sqlite_sequence` is
        // compared whole instead, see `Sequences`).
        if lower.starts_with("sqlite_") {
            self.info_by_name.insert(name.to_string(), None);
            return Ok(None);
        }
        let info = read_table_info(db, name)?;
        let slot = Some(self.infos.len());
        self.infos.push(info);
        self.info_by_name.insert(name.to_string(), slot);
        Ok(slot)
    }
}

/// # Safety
/// Inside a preupdate callback of `db`, with `cid` below the column count.
unsafe fn preupdate_value(
    db: *mut ffi::sqlite3,
    cid: c_int,
    new: bool,
) -> std::result::Result<*mut ffi::sqlite3_value, String> {
    let mut v: *mut ffi::sqlite3_value = ptr::null_mut();
    // SAFETY: per the contract; `v` is a valid out-pointer.
    let rc = unsafe {
        if new {
            ffi::sqlite3_preupdate_new(db, cid, &mut v)
        } else {
            ffi::sqlite3_preupdate_old(db, cid, &mut v)
        }
    };
    if rc != ffi::SQLITE_OK || v.is_null() {
        return Err(format!(
            "reading column {cid} of the {} row: {}",
            if new { "new" } else { "old" },
            errstr(rc)
        ));
    }
    Ok(v)
}

/// Reads `name`'s columns with `PRAGMA table_xinfo` (as the session
/// extension does: hidden and generated columns are not in changesets).
fn read_table_info(db: *mut ffi::sqlite3, name: &str) -> std::result::Result<TableInfo, String> {
    let sql = format!("PRAGMA main.table_xinfo({})", quote_ident(name));
    let stmt = RawStmt::prepare(db, &sql)?;
    let mut columns = Vec::new();
    let mut total: c_int = 0;
    while stmt.step()? {
        total += 1;
        // SAFETY: a row is current; columns 0 (cid), 1 (name), 5 (pk),
        // 6 (hidden) exist in table_xinfo's result.
        unsafe {
            if ffi::sqlite3_column_int(stmt.0, 6) != 0 {
                continue;
            }
            let cid = ffi::sqlite3_column_int(stmt.0, 0);
            let pk = ffi::sqlite3_column_int(stmt.0, 5);
            let p = ffi::sqlite3_column_text(stmt.0, 1);
            if p.is_null() {
                return Err(format!("table {name}: a column without a name"));
            }
            let col = CStr::from_ptr(p.cast::<c_char>())
                .to_str()
                .map_err(|_| format!("table {name}: a column name that is not UTF-8"))?;
            columns.push(Column {
                name: col.to_string(),
                cid,
                pk: u8::try_from(pk)
                    .map_err(|_| format!("table {name}: primary key of {pk} columns"))?,
            });
        }
    }
    if !columns.iter().any(|c| c.pk > 0) {
        // No declared key: the rowid is the key, as column 0 (the store
        // refuses such a table with a column named `_rowid_`).
        columns.insert(
            0,
            Column {
                name: "_rowid_".into(),
                cid: ROWID_CID,
                pk: 1,
            },
        );
    }
    // Columns qualified by an alias: a column that is gone is an error, not
    // a string literal (SQLite reads an unknown "name" as one). The rowid
    // is named bare (a quoted name could be read as a string).
    let col = |n: &str| {
        if n == "_rowid_" && columns.first().is_some_and(|c| c.cid == ROWID_CID) {
            "x._rowid_".to_string()
        } else {
            format!("x.{}", quote_ident(n))
        }
    };
    let cols = columns
        .iter()
        .map(|c| col(&c.name))
        .collect::<Vec<_>>()
        .join(", ");
    let pk_cols: Vec<String> = columns
        .iter()
        .filter(|c| c.pk > 0)
        .map(|c| col(&c.name))
        .collect();
    let params: Vec<String> = (1..=pk_cols.len()).map(|i| format!("?{i}")).collect();
    let select_sql = format!(
        "SELECT {cols} FROM main.{} AS x WHERE ({}) IS ({})",
        quote_ident(name),
        pk_cols.join(", "),
        params.join(", ")
    );
    Ok(TableInfo {
        name: name.to_string(),
        total,
        columns,
        select_sql,
        select: ptr::null_mut(),
    })
}

/// Appends one table's changes: header, then each touched row compared
/// with its current state. Nothing (not even the header) when no row
/// changed in the end.
fn write_table(
    db: *mut ffi::sqlite3,
    info: &mut TableInfo,
    rows: &[Row],
    out: &mut Vec<u8>,
) -> Result<()> {
    let err =
        |e: String, t: &str| Error::Stopped(format!("building the changeset of table {t}: {e}"));
    if info.select.is_null() {
        info.select = RawStmt::prepare(db, &info.select_sql)
            .map_err(|e| err(e, &info.name))?
            .into_raw();
    }
    let stmt = info.select;
    let start = out.len();
    out.push(b'T');
    put_varint(out, info.columns.len() as u64);
    out.extend(info.columns.iter().map(|c| c.pk));
    out.extend_from_slice(info.name.as_bytes());
    out.push(0);
    let body = out.len();
    let written = write_rows(db, stmt, &info.columns, rows, out);
    // SAFETY: live statement; resetting releases its read of the table,
    // whatever happened above.
    unsafe { ffi::sqlite3_reset(stmt) };
    written.map_err(|e| err(e, &info.name))?;
    if out.len() == body {
        out.truncate(start);
    }
    Ok(())
}

/// Appends the changes of `rows`, read back through `stmt`.
fn write_rows(
    db: *mut ffi::sqlite3,
    stmt: *mut ffi::sqlite3_stmt,
    columns: &[Column],
    rows: &[Row],
    out: &mut Vec<u8>,
) -> std::result::Result<(), String> {
    let mut new_rec = Vec::new();
    for row in rows {
        // SAFETY: `stmt` is a live statement of `db`; the key holds one
        // value per PK column, bound in column order as ?1..?n; values are
        // copied by SQLite (SQLITE_TRANSIENT).
        let found = unsafe {
            ffi::sqlite3_reset(stmt);
            bind_key(stmt, &row.key)?;
            match ffi::sqlite3_step(stmt) {
                ffi::SQLITE_ROW => true,
                ffi::SQLITE_DONE => false,
                rc => return Err(format!("reading a row back: {}", errmsg(db, rc))),
            }
        };
        match (&row.old, found) {
            (None, false) => {}
            (None, true) => {
                out.push(OP_INSERT);
                out.push(row.indirect as u8);
                for i in 0..columns.len() {
                    // SAFETY: a row is current; `i` < the column count.
                    unsafe { serialize_column(stmt, i as c_int, out) }?;
                }
            }
            (Some(old), false) => {
                out.push(OP_DELETE);
                out.push(row.indirect as u8);
                out.extend_from_slice(old);
            }
            (Some(old), true) => {
                // SAFETY: a row is current.
                unsafe { append_update(stmt, columns, old, row.indirect, out, &mut new_rec) }?;
            }
        }
    }
    Ok(())
}

/// Appends an UPDATE of the row `stmt` points at, whose values before were
/// `old`: the old record holds the key and the changed columns' old
/// values, the new record the changed columns' new values; the others are
/// "undefined" (0). Nothing when no column changed. Comparison as the
/// session extension's: same type and value (floats by `==`).
///
/// # Safety
/// `stmt` has a current row with one column per entry of `columns`.
unsafe fn append_update(
    stmt: *mut ffi::sqlite3_stmt,
    columns: &[Column],
    old: &[u8],
    indirect: bool,
    out: &mut Vec<u8>,
    new_rec: &mut Vec<u8>,
) -> std::result::Result<(), String> {
    let rewind = out.len();
    out.push(OP_UPDATE);
    out.push(indirect as u8);
    new_rec.clear();
    let mut changed_any = false;
    let mut at = 0usize;
    for (i, c) in columns.iter().enumerate() {
        let i = i as c_int;
        let len = value_len(&old[at..]).ok_or("a malformed old record")?;
        let field = &old[at..at + len];
        at += len;
        // SAFETY: a row is current and `i` is in range (per the contract).
        let changed = unsafe { column_differs(stmt, i, field) };
        if changed || c.pk > 0 {
            out.extend_from_slice(field);
        } else {
            out.push(0);
        }
        if changed {
            changed_any = true;
            // SAFETY: as above.
            unsafe { serialize_column(stmt, i, new_rec) }?;
        } else {
            new_rec.push(0);
        }
    }
    if changed_any {
        out.extend_from_slice(new_rec);
    } else {
        out.truncate(rewind);
    }
    Ok(())
}

/// True when column `i` of the current row differs from `field` (one
/// record-format value).
///
/// # Safety
/// `stmt` has a current row and `i` is in range.
unsafe fn column_differs(stmt: *mut ffi::sqlite3_stmt, i: c_int, field: &[u8]) -> bool {
    // SAFETY (whole block): per the contract; text/blob pointers are read
    // before their byte counts, as SQLite documents.
    unsafe {
        let t = ffi::sqlite3_column_type(stmt, i) as u8;
        if t != field[0] {
            return true;
        }
        match t {
            T_NULL => false,
            T_INTEGER => {
                let v = i64::from_be_bytes(field[1..9].try_into().expect("8 bytes"));
                v != ffi::sqlite3_column_int64(stmt, i)
            }
            T_FLOAT => {
                let v =
                    f64::from_bits(u64::from_be_bytes(field[1..9].try_into().expect("8 bytes")));
                v != ffi::sqlite3_column_double(stmt, i)
            }
            _ => {
                let (n, hdr) = get_varint(&field[1..]).expect("checked by value_len");
                let p = if t == T_TEXT {
                    ffi::sqlite3_column_text(stmt, i).cast::<u8>()
                } else {
                    ffi::sqlite3_column_blob(stmt, i).cast::<u8>()
                };
                let len = ffi::sqlite3_column_bytes(stmt, i) as usize;
                if len as u64 != n {
                    return true;
                }
                len != 0 && std::slice::from_raw_parts(p, len) != &field[1 + hdr..]
            }
        }
    }
}

/// Binds the key's values to ?1..?n.
///
/// # Safety
/// `stmt` is a live, reset statement with at least as many parameters as
/// the key has values.
unsafe fn bind_key(stmt: *mut ffi::sqlite3_stmt, key: &[u8]) -> std::result::Result<(), String> {
    let mut at = 0usize;
    let mut param: c_int = 1;
    while at < key.len() {
        let len = value_len(&key[at..]).ok_or("a malformed key")?;
        let f = &key[at..at + len];
        // SAFETY (whole block): per the contract; SQLITE_TRANSIENT copies.
        let rc = unsafe {
            match f[0] {
                T_INTEGER => ffi::sqlite3_bind_int64(
                    stmt,
                    param,
                    i64::from_be_bytes(f[1..9].try_into().expect("8 bytes")),
                ),
                T_FLOAT => ffi::sqlite3_bind_double(
                    stmt,
                    param,
                    f64::from_bits(u64::from_be_bytes(f[1..9].try_into().expect("8 bytes"))),
                ),
                T_TEXT | T_BLOB => {
                    let (n, hdr) = get_varint(&f[1..]).ok_or("a malformed key")?;
                    let data = &f[1 + hdr..];
                    debug_assert_eq!(data.len() as u64, n);
                    let n = c_int::try_from(data.len()).map_err(|_| "a key over 2 GiB")?;
                    if f[0] == T_TEXT {
                        ffi::sqlite3_bind_text(
                            stmt,
                            param,
                            data.as_ptr().cast(),
                            n,
                            ffi::SQLITE_TRANSIENT(),
                        )
                    } else {
                        ffi::sqlite3_bind_blob(
                            stmt,
                            param,
                            data.as_ptr().cast(),
                            n,
                            ffi::SQLITE_TRANSIENT(),
                        )
                    }
                }
                _ => ffi::sqlite3_bind_null(stmt, param),
            }
        };
        if rc != ffi::SQLITE_OK {
            return Err(format!("binding key value {param}: {}", errstr(rc)));
        }
        at += len;
        param += 1;
    }
    Ok(())
}

/// Appends `v` in record format.
///
/// # Safety
/// `v` is a valid value.
unsafe fn serialize_value(
    v: *mut ffi::sqlite3_value,
    out: &mut Vec<u8>,
) -> std::result::Result<(), String> {
    // SAFETY (whole block): per the contract; pointers read before sizes.
    unsafe {
        let t = ffi::sqlite3_value_type(v);
        match t {
            ffi::SQLITE_INTEGER => {
                out.push(T_INTEGER);
                out.extend_from_slice(&ffi::sqlite3_value_int64(v).to_be_bytes());
            }
            ffi::SQLITE_FLOAT => {
                out.push(T_FLOAT);
                out.extend_from_slice(&ffi::sqlite3_value_double(v).to_bits().to_be_bytes());
            }
            ffi::SQLITE_TEXT | ffi::SQLITE_BLOB => {
                let p = if t == ffi::SQLITE_TEXT {
                    ffi::sqlite3_value_text(v).cast::<u8>()
                } else {
                    ffi::sqlite3_value_blob(v).cast::<u8>()
                };
                let n = ffi::sqlite3_value_bytes(v);
                push_bytes(out, t as u8, p, n)?;
            }
            _ => out.push(T_NULL),
        }
    }
    Ok(())
}

/// Appends column `i` of the current row in record format.
///
/// # Safety
/// `stmt` has a current row and `i` is in range.
unsafe fn serialize_column(
    stmt: *mut ffi::sqlite3_stmt,
    i: c_int,
    out: &mut Vec<u8>,
) -> std::result::Result<(), String> {
    // SAFETY (whole block): per the contract; pointers read before sizes.
    unsafe {
        let t = ffi::sqlite3_column_type(stmt, i);
        match t {
            ffi::SQLITE_INTEGER => {
                out.push(T_INTEGER);
                out.extend_from_slice(&ffi::sqlite3_column_int64(stmt, i).to_be_bytes());
            }
            ffi::SQLITE_FLOAT => {
                out.push(T_FLOAT);
                out.extend_from_slice(&ffi::sqlite3_column_double(stmt, i).to_bits().to_be_bytes());
            }
            ffi::SQLITE_TEXT | ffi::SQLITE_BLOB => {
                let p = if t == ffi::SQLITE_TEXT {
                    ffi::sqlite3_column_text(stmt, i).cast::<u8>()
                } else {
                    ffi::sqlite3_column_blob(stmt, i).cast::<u8>()
                };
                let n = ffi::sqlite3_column_bytes(stmt, i);
                push_bytes(out, t as u8, p, n)?;
            }
            _ => out.push(T_NULL),
        }
    }
    Ok(())
}

/// # Safety
/// `p` is null or valid for `n` bytes.
unsafe fn push_bytes(
    out: &mut Vec<u8>,
    t: u8,
    p: *const u8,
    n: c_int,
) -> std::result::Result<(), String> {
    let n = usize::try_from(n).map_err(|_| "a negative length")?;
    if p.is_null() && n > 0 {
        return Err("out of memory reading a value".into());
    }
    out.push(t);
    put_varint(out, n as u64);
    if n > 0 {
        // SAFETY: per the contract.
        out.extend_from_slice(unsafe { std::slice::from_raw_parts(p, n) });
    }
    Ok(())
}

/// Appends an INTEGER in record format.
fn push_int(out: &mut Vec<u8>, v: i64) {
    out.push(T_INTEGER);
    out.extend_from_slice(&v.to_be_bytes());
}

/// Length of the record-format value at the start of `b`.
fn value_len(b: &[u8]) -> Option<usize> {
    match *b.first()? {
        0 | T_NULL => Some(1),
        T_INTEGER | T_FLOAT => (b.len() >= 9).then_some(9),
        T_TEXT | T_BLOB => {
            let (n, hdr) = get_varint(&b[1..])?;
            let total = 1usize
                .checked_add(hdr)?
                .checked_add(usize::try_from(n).ok()?)?;
            (b.len() >= total).then_some(total)
        }
        _ => None,
    }
}

/// SQLite's varint (big-endian groups of 7 bits, a 9th byte of 8 bits).
pub(crate) fn put_varint(out: &mut Vec<u8>, v: u64) {
    if v <= 0x7f {
        out.push(v as u8);
        return;
    }
    if v >> 56 != 0 {
        let mut buf = [0u8; 9];
        buf[8] = v as u8;
        let mut x = v >> 8;
        for b in buf[..8].iter_mut().rev() {
            *b = (x & 0x7f) as u8 | 0x80;
            x >>= 7;
        }
        out.extend_from_slice(&buf);
        return;
    }
    let mut buf = [0u8; 9];
    let mut n = 0;
    let mut x = v;
    while x != 0 {
        buf[n] = (x & 0x7f) as u8 | 0x80;
        x >>= 7;
        n += 1;
    }
    buf[0] &= 0x7f;
    out.extend(buf[..n].iter().rev());
}

/// Reads a varint: (value, bytes used).
fn get_varint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v: u64 = 0;
    for (i, &byte) in b.iter().enumerate().take(9) {
        if i == 8 {
            return Some(((v << 8) | u64::from(byte), 9));
        }
        v = (v << 7) | u64::from(byte & 0x7f);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn errstr(rc: c_int) -> String {
    // SAFETY: sqlite3_errstr returns a static NUL-terminated string.
    unsafe { CStr::from_ptr(ffi::sqlite3_errstr(rc)) }
        .to_string_lossy()
        .into_owned()
}

fn errmsg(db: *mut ffi::sqlite3, rc: c_int) -> String {
    // SAFETY: `db` is live; the message is copied at once.
    let m = unsafe { CStr::from_ptr(ffi::sqlite3_errmsg(db)) }
        .to_string_lossy()
        .into_owned();
    format!("{m} ({})", errstr(rc))
}

/// A prepared statement owned here (finalized on drop).
#[derive(Debug)]
struct RawStmt(*mut ffi::sqlite3_stmt);

impl RawStmt {
    fn prepare(db: *mut ffi::sqlite3, sql: &str) -> std::result::Result<RawStmt, String> {
        let mut stmt = ptr::null_mut();
        let n = c_int::try_from(sql.len()).map_err(|_| "statement too long".to_string())?;
        // SAFETY: `db` is live; `sql` is valid for `n` bytes; `stmt` is a
        // valid out-pointer.
        let rc = unsafe {
            ffi::sqlite3_prepare_v2(db, sql.as_ptr().cast(), n, &mut stmt, ptr::null_mut())
        };
        if rc != ffi::SQLITE_OK || stmt.is_null() {
            // SAFETY: finalizing null is a no-op.
            unsafe { ffi::sqlite3_finalize(stmt) };
            return Err(format!("preparing {sql}: {}", errmsg(db, rc)));
        }
        Ok(RawStmt(stmt))
    }

    fn step(&self) -> std::result::Result<bool, String> {
        // SAFETY: a live statement.
        match unsafe { ffi::sqlite3_step(self.0) } {
            ffi::SQLITE_ROW => Ok(true),
            ffi::SQLITE_DONE => Ok(false),
            rc => Err(format!("running a statement: {}", errstr(rc))),
        }
    }

    fn into_raw(self) -> *mut ffi::sqlite3_stmt {
        let p = self.0;
        std::mem::forget(self);
        p
    }
}

impl Drop for RawStmt {
    fn drop(&mut self) {
        // SAFETY: a live statement, finalized once.
        unsafe { ffi::sqlite3_finalize(self.0) };
    }
}

#[cfg(test)]
mod tests {
    //! The capture against the session extension: the same statements run
    //! on two identical databases, one captured by each; the changesets
    //! must hold the same changes, and the capture's applied to a third
    //! copy must reproduce the database it came from.

    use super::*;
    use crate::changeset::{self, ApplyOptions, Change, Session};
    use crate::hash;
    use proptest::prelude::*;

    const SCHEMA: &str = "
        CREATE TABLE t1 (id INTEGER PRIMARY KEY, a INTEGER, b TEXT UNIQUE, c REAL);
        CREATE TABLE t2 (k TEXT PRIMARY KEY NOT NULL, v BLOB, n INTEGER);
        CREATE TABLE t3 (x INTEGER NOT NULL, y TEXT NOT NULL, z, PRIMARY KEY (y, x)) WITHOUT ROWID;
        CREATE TABLE t4 (id INTEGER PRIMARY KEY, a INTEGER,
            g INTEGER GENERATED ALWAYS AS (a * 2) VIRTUAL,
            s INTEGER GENERATED ALWAYS AS (a + 1) STORED, d TEXT);
        CREATE TABLE child (id INTEGER PRIMARY KEY,
            parent INTEGER REFERENCES t1(id) ON DELETE CASCADE ON UPDATE CASCADE, note TEXT);
        CREATE TABLE tlog (id INTEGER PRIMARY KEY, what TEXT NOT NULL);
        CREATE TABLE np (a INTEGER, b TEXT UNIQUE);
        CREATE TABLE _logship (id INTEGER PRIMARY KEY, lsn INTEGER NOT NULL, database_id BLOB);
        INSERT INTO _logship VALUES (1, 0, x'00');
        CREATE TRIGGER t1_ins AFTER INSERT ON t1 BEGIN
            INSERT INTO tlog (what) VALUES ('ins ' || new.id);
        END;
        CREATE TRIGGER t2_upd AFTER UPDATE ON t2 BEGIN
            UPDATE t1 SET a = coalesce(a, 0) + 1 WHERE id = new.n;
        END;
        INSERT INTO t1 VALUES (1, 1, 'a', 0.0), (2, 2, 'b', -0.0), (3, NULL, 'c', 1.5);
        INSERT INTO t2 VALUES ('k1', x'01', 1), ('k2', NULL, 2);
        INSERT INTO t3 VALUES (1, 'a', 'z1'), (2, 'a', NULL), (1, 'b', 3.25);
        INSERT INTO t4 (id, a, d) VALUES (1, 1, 'd1'), (2, 2, NULL);
        INSERT INTO child VALUES (1, 1, 'n1'), (2, 2, 'n2');
        INSERT INTO np VALUES (1, 'a'), (2, 'b'), (NULL, NULL);
    ";

    fn open() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch("PRAGMA foreign_keys = ON;").unwrap();
        c.execute_batch(SCHEMA).unwrap();
        c
    }

    fn int() -> impl Strategy<Value = String> {
        prop_oneof![
            (0i64..8).prop_map(|i| i.to_string()),
            Just("NULL".to_string()),
            Just("9223372036854775807".to_string()),
        ]
    }

    fn val() -> impl Strategy<Value = String> {
        prop_oneof![
            (0i64..6).prop_map(|i| i.to_string()),
            Just("NULL".into()),
            Just("0.0".into()),
            Just("-0.0".into()),
            Just("1.5".into()),
            "[a-e]{0,3}".prop_map(|s| format!("'{s}'")),
            proptest::collection::vec(any::<u8>(), 0..4).prop_map(|b| format!(
                "x'{}'",
                b.iter().map(|x| format!("{x:02x}")).collect::<String>()
            )),
        ]
    }

    fn key() -> impl Strategy<Value = String> {
        "[a-d]".prop_map(|s| format!("'k{s}'"))
    }

    /// One statement; some fail on purpose (constraints).
    fn simple() -> impl Strategy<Value = String> {
        let conflict = prop_oneof![Just(""), Just("OR REPLACE"), Just("OR IGNORE")];
        prop_oneof![
            3 => (conflict.clone(), 0i64..20, int(), "[a-l]", val()).prop_map(|(c, id, a, b, v)| format!(
                "INSERT {c} INTO t1 (id, a, b, c) VALUES ({id}, {a}, '{b}', {v})"
            )),
            2 => (int(), "[a-l]", 0i64..20).prop_map(|(a, b, id)| format!(
                "UPDATE t1 SET a = {a}, b = '{b}' WHERE id = {id}"
            )),
            1 => (val(), int()).prop_map(|(v, a)| format!("UPDATE t1 SET c = {v} WHERE a >= {a}")),
            1 => (0i64..20, 0i64..20).prop_map(|(n, o)| format!("UPDATE t1 SET id = {n} WHERE id = {o}")),
            1 => (0i64..20).prop_map(|id| format!("DELETE FROM t1 WHERE id = {id}")),
            1 => (0i64..20).prop_map(|id| format!("DELETE FROM t1 WHERE id > {id}")),
            1 => (0i64..20).prop_map(|id| format!(
                "INSERT INTO t1 (id, b) VALUES ({id}, 'x'), ({}, 'x')", id + 1
            )),
            2 => (key(), val(), int()).prop_map(|(k, v, n)| format!(
                "INSERT INTO t2 VALUES ({k}, {v}, {n}) ON CONFLICT (k) DO UPDATE SET v = excluded.v, n = n + 1"
            )),
            // Through the trigger: an indirect change of t1.
            1 => (key(), 0i64..8).prop_map(|(k, n)| format!("UPDATE t2 SET n = {n} WHERE k = {k}")),
            1 => (key(), key()).prop_map(|(n, o)| format!("UPDATE t2 SET k = {n} WHERE k = {o}")),
            1 => key().prop_map(|k| format!("DELETE FROM t2 WHERE k = {k}")),
            1 => (conflict.clone(), 0i64..3, "[a-c]", val()).prop_map(|(c, x, y, z)| format!(
                "INSERT {c} INTO t3 VALUES ({x}, '{y}', {z})"
            )),
            1 => ("[a-c]", "[a-c]").prop_map(|(n, o)| format!("UPDATE t3 SET y = '{n}' WHERE y = '{o}'")),
            1 => (val(), 0i64..3).prop_map(|(z, x)| format!("UPDATE t3 SET z = {z} WHERE x = {x}")),
            1 => (0i64..3).prop_map(|x| format!("DELETE FROM t3 WHERE x = {x}")),
            1 => (conflict, 0i64..4, int(), val()).prop_map(|(c, id, a, d)| format!(
                "INSERT {c} INTO t4 (id, a, d) VALUES ({id}, {a}, {d})"
            )),
            1 => (int(), 0i64..4).prop_map(|(a, id)| format!("UPDATE t4 SET a = {a} WHERE id = {id}")),
            1 => (0i64..4).prop_map(|id| format!("DELETE FROM t4 WHERE id = {id}")),
            1 => (0i64..6, 0i64..4, val()).prop_map(|(id, p, n)| format!(
                "INSERT OR REPLACE INTO child VALUES ({id}, {p}, {n})"
            )),
            // No declared key: keyed by rowid, which may also move.
            2 => (conflict_np(), int(), "[a-f]").prop_map(|(c, a, b)| format!(
                "INSERT {c} INTO np (a, b) VALUES ({a}, '{b}')"
            )),
            1 => (int(), "[a-f]").prop_map(|(a, b)| format!("UPDATE np SET a = {a} WHERE b = '{b}'")),
            1 => (1i64..12, 1i64..12).prop_map(|(n, o)| format!("UPDATE np SET rowid = {n} WHERE rowid = {o}")),
            1 => int().prop_map(|a| format!("DELETE FROM np WHERE a = {a}")),
        ]
    }

    fn conflict_np() -> impl Strategy<Value = &'static str> {
        prop_oneof![Just(""), Just("OR REPLACE"), Just("OR IGNORE")]
    }

    /// A statement, or a few inside a savepoint that is rolled back or
    /// released.
    fn statement() -> impl Strategy<Value = String> {
        prop_oneof![
            6 => simple(),
            1 => (proptest::collection::vec(simple(), 1..4), any::<bool>()).prop_map(|(inner, undo)| {
                let mut sql = String::from("SAVEPOINT sp; ");
                for s in inner {
                    // Each inner statement may fail alone; run them one by
                    // one so that a failure does not skip the rest.
                    sql.push_str(&s);
                    sql.push('\u{1}');
                }
                sql.push_str(if undo { "ROLLBACK TO sp; RELEASE sp" } else { "RELEASE sp" });
                sql
            }),
        ]
    }

    /// The changes of a changeset, per table in changeset order, each
    /// table's changes sorted (the session extension's order within a
    /// table is its hash table's).
    fn changes(cs: &[u8]) -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        changeset::for_each_change(cs, |c: &Change| {
            if out.last().is_none_or(|(t, _)| *t != c.table) {
                out.push((c.table.clone(), Vec::new()));
            }
            out.last_mut().unwrap().1.push(format!("{c:?}"));
            Ok(())
        })
        .unwrap();
        for (_, v) in &mut out {
            v.sort();
        }
        out
    }

    /// Runs `batches` on a session-captured and a hook-captured database
    /// and checks that both agree and that the capture's changesets rebuild
    /// the database on a third copy.
    fn check(batches: &[Vec<String>], ddl_between: bool) {
        let a = open();
        let b = open();
        let c = open();
        changeset::set_triggers_enabled(&c, false).unwrap();
        let mut capture = Capture::new(&b, &["_logship"]);
        for (i, batch) in batches.iter().enumerate() {
            if ddl_between && i == 1 {
                let ddl = "ALTER TABLE t4 ADD COLUMN e TEXT DEFAULT 'dflt'";
                for conn in [&a, &b, &c] {
                    conn.execute_batch(ddl).unwrap();
                }
                capture.schema_changed();
            }
            a.execute_batch("BEGIN").unwrap();
            b.execute_batch("BEGIN").unwrap();
            let session = Session::new(&a).unwrap();
            capture.start();
            for sql in batch.iter().flat_map(|s| s.split('\u{1}')) {
                let ra = a.execute_batch(sql).map_err(|e| e.to_string());
                let rb = b.execute_batch(sql).map_err(|e| e.to_string());
                assert_eq!(ra, rb, "{sql}");
            }
            let want = session.changeset().unwrap();
            drop(session);
            let got = capture.changeset().unwrap();
            capture.stop();
            assert_eq!(changes(&got), changes(&want), "batch {i}: {batch:#?}");
            assert_eq!(got.len(), want.len(), "batch {i}: {batch:#?}");
            if !a.is_autocommit() {
                a.execute_batch("COMMIT").unwrap();
            }
            if !b.is_autocommit() {
                b.execute_batch("COMMIT").unwrap();
            }
            c.execute_batch("BEGIN").unwrap();
            changeset::apply_strict(&c, &got, ApplyOptions::default())
                .unwrap_or_else(|e| panic!("batch {i} does not apply: {e:?}\n{batch:#?}"));
            c.execute_batch("COMMIT").unwrap();
            assert_eq!(
                hash::full_scan(&c).unwrap(),
                hash::full_scan(&b).unwrap(),
                "batch {i}: {batch:#?}"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        #[test]
        fn the_capture_writes_what_the_session_extension_writes(
            batches in proptest::collection::vec(proptest::collection::vec(statement(), 0..25), 1..4),
            ddl in any::<bool>(),
        ) {
            check(&batches, ddl);
        }
    }

    #[test]
    fn chosen_cases_agree_with_the_session_extension() {
        let cases: &[&[&str]] = &[
            // Insert then delete: nothing. Delete then insert: an UPDATE.
            &[
                "INSERT INTO t1 VALUES (7, 1, 'q', 1.0)",
                "DELETE FROM t1 WHERE id = 7",
            ],
            &[
                "DELETE FROM t1 WHERE id = 1",
                "INSERT INTO t1 (id, b) VALUES (1, 'a')",
            ],
            // A REPLACE that deletes two rows (key and unique index).
            &["INSERT OR REPLACE INTO t1 VALUES (1, 5, 'b', NULL)"],
            // A key change cascading to the child table.
            &["UPDATE t1 SET id = 9 WHERE id = 2"],
            // A statement that fails after its first row: rolled back.
            &["INSERT INTO t1 (id, b) VALUES (5, 'x'), (6, 'x')"],
            // Savepoint rolled back, then other changes.
            &[
                "SAVEPOINT s",
                "UPDATE t2 SET v = x'ff'",
                "ROLLBACK TO s",
                "RELEASE s",
                "DELETE FROM t3",
            ],
            // 0.0 and -0.0 compare equal; the same value is no change.
            &["UPDATE t1 SET c = -0.0 WHERE id = 1", "UPDATE t1 SET a = a"],
            // Indirect (trigger) and direct changes to one row.
            &[
                "UPDATE t2 SET n = 1 WHERE k = 'k1'",
                "UPDATE t1 SET a = 0 WHERE id = 1",
            ],
            // Every row deleted at once (no truncate shortcut may hide them).
            &["DELETE FROM t1", "DELETE FROM t3", "DELETE FROM t4"],
            // A large value.
            &[
                "INSERT INTO t2 VALUES ('big', zeroblob(300000), 0)",
                "UPDATE t2 SET v = zeroblob(70000) || x'01' WHERE k = 'k1'",
            ],
        ];
        for case in cases {
            let batch: Vec<String> = case.iter().map(|s| s.to_string()).collect();
            check(std::slice::from_ref(&batch), false);
            check(&[vec![], batch], true);
        }
    }

    #[test]
    fn the_guard_update_is_what_the_session_extension_writes() {
        let a = open();
        a.execute_batch("BEGIN").unwrap();
        let session = Session::new(&a).unwrap();
        a.execute_batch("UPDATE _logship SET lsn = 41").unwrap();
        let mut want = Vec::new();
        a.execute_batch("COMMIT; BEGIN").unwrap();
        drop(session);
        let session = Session::new(&a).unwrap();
        a.execute_batch("UPDATE _logship SET lsn = 42 WHERE id = 1")
            .unwrap();
        want.extend(session.changeset().unwrap());
        let mut got = Vec::new();
        IntUpdate::new(&a, "_logship", "lsn")
            .unwrap()
            .append(&mut got, 1, 41, 42);
        assert_eq!(got, want);
    }

    /// Writes `bytes` at offset 0 of t2.v in the row with rowid 1, through
    /// SQLite's incremental blob I/O (no UPDATE statement).
    fn blob_write(conn: &Connection, bytes: &[u8]) {
        let mut blob: *mut ffi::sqlite3_blob = ptr::null_mut();
        // SAFETY: a live connection; NUL-terminated names; a valid
        // out-pointer; the blob handle is closed before returning; `bytes`
        // is valid for its length.
        unsafe {
            let rc = ffi::sqlite3_blob_open(
                conn.handle(),
                c"main".as_ptr(),
                c"t2".as_ptr(),
                c"v".as_ptr(),
                1,
                1,
                &mut blob,
            );
            assert_eq!(rc, ffi::SQLITE_OK);
            let rc = ffi::sqlite3_blob_write(blob, bytes.as_ptr().cast(), bytes.len() as c_int, 0);
            assert_eq!(rc, ffi::SQLITE_OK);
            assert_eq!(ffi::sqlite3_blob_close(blob), ffi::SQLITE_OK);
        }
    }

    #[test]
    fn incremental_blob_writes_are_captured_as_the_session_extension_does() {
        let a = open();
        let b = open();
        let c = open();
        changeset::set_triggers_enabled(&c, false).unwrap();
        let mut capture = Capture::new(&b, &["_logship"]);
        a.execute_batch("BEGIN").unwrap();
        b.execute_batch("BEGIN").unwrap();
        let session = Session::new(&a).unwrap();
        capture.start();
        blob_write(&a, &[0xaa]);
        blob_write(&b, &[0xaa]);
        let want = session.changeset().unwrap();
        drop(session);
        let got = capture.changeset().unwrap();
        a.execute_batch("COMMIT").unwrap();
        b.execute_batch("COMMIT").unwrap();
        assert!(!got.is_empty(), "the blob write was not captured");
        assert_eq!(changes(&got), changes(&want));
        changeset::apply_strict(&c, &got, ApplyOptions::default()).unwrap();
        assert_eq!(hash::full_scan(&c).unwrap(), hash::full_scan(&b).unwrap());
    }

    #[test]
    fn a_table_without_a_primary_key_is_keyed_by_its_rowid() {
        let b = open();
        b.execute_batch("CREATE TABLE nopk (a, b)").unwrap();
        let mut capture = Capture::new(&b, &[]);
        capture.start();
        b.execute_batch(
            "INSERT INTO nopk VALUES (1, 2); UPDATE nopk SET b = 3; INSERT INTO t4 (id) VALUES (9)",
        )
        .unwrap();
        let cs = capture.changeset().unwrap();
        let mut seen = Vec::new();
        changeset::for_each_change(&cs, |c| {
            seen.push((c.table.clone(), c.pk.clone(), c.new.clone()));
            Ok(())
        })
        .unwrap();
        let int = |i| Some(changeset::Value::Integer(i));
        assert_eq!(seen[0].0, "nopk");
        assert_eq!(seen[0].1, [true, false, false]);
        assert_eq!(seen[0].2, [int(1), int(1), int(3)]);
        assert_eq!(seen[1].0, "t4");
    }

    #[test]
    fn a_table_that_changes_shape_unannounced_fails_the_changeset() {
        let b = open();
        let mut capture = Capture::new(&b, &[]);
        capture.start();
        b.execute_batch(
            "UPDATE t4 SET a = 5 WHERE id = 1; ALTER TABLE t4 ADD COLUMN e DEFAULT 1; \
             UPDATE t4 SET a = 6 WHERE id = 2",
        )
        .unwrap();
        let e = capture.changeset().unwrap_err().to_string();
        assert!(e.contains("table t4 changed shape"), "{e}");
    }

    #[test]
    fn a_replaced_hook_fails_the_changeset() {
        let b = open();
        let mut capture = Capture::new(&b, &[]);
        capture.start();
        // SAFETY: the live connection; a hook of no function.
        unsafe { ffi::sqlite3_preupdate_hook(b.handle(), None, ptr::null_mut()) };
        b.execute_batch("DELETE FROM t1").unwrap();
        let e = capture.changeset().unwrap_err().to_string();
        assert!(e.contains("preupdate hook was replaced"), "{e}");
    }

    #[test]
    fn varints_match_sqlite() {
        for v in [
            0u64,
            1,
            127,
            128,
            16383,
            16384,
            2097151,
            2097152,
            u32::MAX as u64,
            1 << 56,
            u64::MAX,
        ] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(get_varint(&b), Some((v, b.len())), "{v}");
        }
    }
}
