//! SQLite session-extension primitives over raw FFI (the bundled SQLite is
//! built with SQLITE_ENABLE_SESSION; rusqlite's `session` feature is not used
//! because it needs libclang): iterate a changeset's changes, apply it
//! strictly (any conflict aborts and is reported), invert it, combine
//! changesets. `Session` (tests only) captures with the extension itself;
//! the store captures with `capture`, and `Session` is the reference its
//! tests compare against.
//!
//! This module knows nothing of LSNs or files.

use std::ffi::{CStr, c_char, c_int, c_void};
use std::fmt::Write as _;
use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr;

use rusqlite::Connection;
use rusqlite::ffi;

use crate::error::{Error, Result};

/// Name of the store's guard table (one row: the LSN the database contains).
pub const GUARD_TABLE: &str = "_logship";

/// AUTOINCREMENT's counters. SQLite writes them without the preupdate hook
/// and without a primary key, so changesets carry this table keyed by
/// `name` (column 0 of `(name, seq)`), and `apply_strict` sets each named
/// counter to the changeset's value after the other tables' changes.
pub const SEQUENCE_TABLE: &str = "sqlite_sequence";

/// The table the session extension special-cases (it is captured although it
/// has no PRIMARY KEY); `Session` excludes it: statistics are per copy.
#[cfg(test)]
const STAT1_TABLE: &[u8] = b"sqlite_stat1";

/// Longest `ConflictReport::detail`, in bytes (then cut on a char boundary).
const DETAIL_MAX: usize = 200;

/// A capture session on the `main` database of one connection, attached to
/// every table (also tables created later) except `sqlite_stat1`: the
/// reference that tests compare the store's capture (`capture`) with.
///
/// Tests only: a session chains itself to the connection's preupdate hook
/// and takes the previous hook's context for another session's, so one
/// created on a connection that has a `Capture` would crash the process.
///
/// It holds a raw `sqlite3_session*` that points into the connection: it is
/// deliberately neither `Send` nor `Sync`, and it must be dropped before the
/// connection is closed. Extract the changeset before the connection changes
/// more rows: `sqlite3session_changeset` reads the *current* rows.
#[cfg(test)]
#[derive(Debug)]
pub struct Session {
    raw: *mut rusqlite::ffi::sqlite3_session,
}

#[cfg(test)]
impl Session {
    /// # Safety contract
    /// The session must be dropped before `conn` is closed.
    pub fn new(conn: &Connection) -> Result<Session> {
        let mut raw: *mut ffi::sqlite3_session = ptr::null_mut();
        // SAFETY: `conn.handle()` is the live connection handle; "main" is a
        // NUL-terminated C string; `raw` is a valid out-pointer.
        let rc = unsafe { ffi::sqlite3session_create(conn.handle(), c"main".as_ptr(), &mut raw) };
        if rc != ffi::SQLITE_OK {
            return Err(ffi_error("creating a session", rc));
        }
        // From here on, `Drop` deletes the session on every path.
        let session = Session { raw };
        // Tables without a declared primary key are keyed by their rowid
        // (as the store's capture does).
        let mut on: c_int = 1;
        // SAFETY: live session, before any table is attached; `on` is a
        // valid int for the call.
        let rc = unsafe {
            ffi::sqlite3session_object_config(
                session.raw,
                ffi::SQLITE_SESSION_OBJCONFIG_ROWID,
                (&raw mut on).cast::<c_void>(),
            )
        };
        if rc != ffi::SQLITE_OK {
            return Err(ffi_error(
                "keying tables without a primary key by rowid",
                rc,
            ));
        }
        // SAFETY: `session.raw` is a live session; the filter is a plain
        // function that ignores its (null) context and never unwinds.
        unsafe {
            ffi::sqlite3session_table_filter(session.raw, Some(table_filter), ptr::null_mut())
        };
        // SAFETY: live session; a null table name attaches every table,
        // including tables created later.
        let rc = unsafe { ffi::sqlite3session_attach(session.raw, ptr::null()) };
        if rc != ffi::SQLITE_OK {
            return Err(ffi_error("attaching a session to all tables", rc));
        }
        Ok(session)
    }

    pub fn is_empty(&self) -> bool {
        // SAFETY: `self.raw` is a live session (deleted only in Drop).
        unsafe { ffi::sqlite3session_isempty(self.raw) != 0 }
    }

    pub fn changeset(&self) -> Result<Vec<u8>> {
        let mut n: c_int = 0;
        let mut p: *mut c_void = ptr::null_mut();
        // SAFETY: live session; `n` and `p` are valid out-pointers.
        let rc = unsafe { ffi::sqlite3session_changeset(self.raw, &mut n, &mut p) };
        // SAFETY: on success `p` holds `n` bytes allocated by SQLite (or is
        // null), which `take_sqlite_buffer` copies and frees.
        let bytes = unsafe { take_sqlite_buffer(p, n) };
        if rc != ffi::SQLITE_OK {
            return Err(ffi_error("extracting a changeset", rc));
        }
        Ok(bytes)
    }
}

#[cfg(test)]
impl Drop for Session {
    fn drop(&mut self) {
        // SAFETY: `self.raw` was created by sqlite3session_create and is
        // deleted exactly once, here.
        unsafe { ffi::sqlite3session_delete(self.raw) };
    }
}

/// Table filter for auto-attached tables: everything but `sqlite_stat1`.
#[cfg(test)]
unsafe extern "C" fn table_filter(_ctx: *mut c_void, table: *const c_char) -> c_int {
    if table.is_null() {
        return 1;
    }
    // SAFETY: SQLite passes a NUL-terminated table name valid for the call.
    let name = unsafe { CStr::from_ptr(table) }.to_bytes();
    c_int::from(
        !name.eq_ignore_ascii_case(STAT1_TABLE)
            && !name.eq_ignore_ascii_case(SEQUENCE_TABLE.as_bytes()),
    )
}

/// A column value as a changeset carries it.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Integer(i64),
    Real(f64),
    Text(Vec<u8>),
    Blob(Vec<u8>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Insert,
    Update,
    Delete,
}

impl Op {
    /// "INSERT", "UPDATE" or "DELETE".
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "INSERT",
            Op::Update => "UPDATE",
            Op::Delete => "DELETE",
        }
    }
}

/// One row change.
///
/// `pk`, `old` and `new` always have one entry per column of the table as
/// the changeset numbers them (the non-hidden columns, in declaration order;
/// generated columns are absent). `None` means "not in the changeset";
/// an SQL NULL is `Some(Value::Null)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub table: String,
    pub op: Op,
    pub indirect: bool,
    /// `pk[i]` is true when column i is part of the primary key.
    pub pk: Vec<bool>,
    /// Old values (DELETE: all; UPDATE: PK and changed columns; INSERT: none).
    pub old: Vec<Option<Value>>,
    /// New values (INSERT: all; UPDATE: changed columns; DELETE: none).
    pub new: Vec<Option<Value>>,
}

/// Calls `f` for every change in `changeset`, in changeset order.
///
/// Malformed bytes give `Err` (SQLITE_CORRUPT), never a panic; an error
/// returned by `f` stops the iteration and is returned as is.
pub fn for_each_change(changeset: &[u8], mut f: impl FnMut(&Change) -> Result<()>) -> Result<()> {
    let mut it = ChangesetIter::start(changeset)?;
    // One `Change` reused for every row: its vectors keep their capacity.
    let mut change = Change {
        table: String::new(),
        op: Op::Insert,
        indirect: false,
        pk: Vec::new(),
        old: Vec::new(),
        new: Vec::new(),
    };
    while it.next()? {
        it.read_change(&mut change)?;
        f(&change)?;
    }
    it.finish()
}

/// Options for `apply_strict`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ApplyOptions {
    /// Apply the inverse of the changeset (rewinding).
    pub invert: bool,
}

/// What made a strict apply abort.
///
/// `kind` is one of SQLite's conflict kinds, or `SCHEMA` when the changeset
/// does not fit the table (missing table, other column count, other primary
/// key), which SQLite itself would skip silently. For `FOREIGN_KEY` SQLite
/// does not say which table is involved: `table` is empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConflictReport {
    pub table: String,
    /// DATA, NOTFOUND, CONFLICT, CONSTRAINT or FOREIGN_KEY.
    pub kind: String,
    pub detail: String,
}

/// One line per row change, for people: `Insert t old [] new [1, 'a']`
/// (long text is cut; blobs show their size).
pub fn describe(changeset: &[u8]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for_each_change(changeset, |c| {
        let vals = |v: &[Option<Value>]| {
            v.iter()
                .map(|x| match x {
                    None => "-".to_string(),
                    Some(v) => describe_value(v),
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        out.push(format!(
            "{:?} {}{} old [{}] new [{}]",
            c.op,
            c.table,
            if c.indirect { " (indirect)" } else { "" },
            vals(&c.old),
            vals(&c.new)
        ));
        Ok(())
    })?;
    Ok(out)
}

fn describe_value(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::Integer(i) => i.to_string(),
        Value::Real(f) => f.to_string(),
        Value::Text(t) => {
            let s = String::from_utf8_lossy(t);
            if s.len() > 40 {
                format!(
                    "'{}…' ({} bytes)",
                    &s.chars().take(40).collect::<String>(),
                    t.len()
                )
            } else {
                format!("'{s}'")
            }
        }
        Value::Blob(b) => format!("blob {} bytes", b.len()),
    }
}

/// Applies `changeset` to `conn`; any conflict aborts (nothing of this
/// changeset stays applied) and is returned as `Err(Ok(report))`; other
/// failures as `Err(Err(error))`. FK actions do not fire (FKNOACTION).
///
/// Before applying, every table of the changeset is checked against `main`
/// (exists, same number of non-hidden columns, same primary-key columns in
/// the same PK order); a mismatch is reported as kind `SCHEMA` and nothing is
/// applied. That costs one `pragma_table_xinfo` query per table per call (a
/// few µs per table); nothing is cached across calls, so DDL between calls
/// needs no invalidation.
pub fn apply_strict(
    conn: &Connection,
    changeset: &[u8],
    opts: ApplyOptions,
) -> std::result::Result<(), std::result::Result<ConflictReport, crate::Error>> {
    let sequences = check_schema(conn, changeset)?;
    if !sequences {
        return apply_rows(conn, changeset, opts);
    }
    // The counters come after the rows (whose inserts move the copy's own
    // counters), and both or neither stay.
    let sql = |what: &'static str| move |e| Err(Error::sql(what, e));
    conn.execute_batch("SAVEPOINT logship_sequences")
        .map_err(sql("open the savepoint of a changeset with counters"))?;
    let applied = apply_rows(conn, changeset, opts)
        .and_then(|()| apply_sequences(conn, changeset, opts.invert).map_err(Err));
    let close = if applied.is_ok() {
        "RELEASE logship_sequences"
    } else {
        "ROLLBACK TO logship_sequences; RELEASE logship_sequences"
    };
    conn.execute_batch(close)
        .map_err(sql("close the savepoint of a changeset with counters"))?;
    applied
}

/// The session extension's apply of every table but `sqlite_sequence`.
fn apply_rows(
    conn: &Connection,
    changeset: &[u8],
    opts: ApplyOptions,
) -> std::result::Result<(), std::result::Result<ConflictReport, crate::Error>> {
    let n = changeset_len(changeset).map_err(Err)?;
    let mut flags = SQLITE_CHANGESETAPPLY_FKNOACTION;
    if opts.invert {
        flags |= SQLITE_CHANGESETAPPLY_INVERT;
    }
    let mut ctx = ConflictCtx { report: None };
    // SAFETY: the handle is live for the duration of the call; SQLite only
    // reads the `n` changeset bytes (the `*mut` in the binding is historic);
    // `ctx` outlives the call and is only touched by `on_conflict`, which
    // never unwinds; the filter reads only the table name; no rebase buffer.
    let rc = unsafe {
        ffi::sqlite3changeset_apply_v2(
            conn.handle(),
            n,
            changeset.as_ptr().cast_mut().cast::<c_void>(),
            Some(not_sequences),
            Some(on_conflict),
            (&raw mut ctx).cast::<c_void>(),
            ptr::null_mut(),
            ptr::null_mut(),
            flags,
        )
    };
    if rc == ffi::SQLITE_OK {
        return Ok(());
    }
    // A recorded conflict made the apply fail: SQLITE_ABORT, or
    // SQLITE_CONSTRAINT after a FOREIGN_KEY conflict.
    match ctx.report {
        Some(report) => Err(Ok(report)),
        None => Err(Err(ffi_error("applying a changeset", rc))),
    }
}

/// The apply filter: every table but `sqlite_sequence`.
unsafe extern "C" fn not_sequences(_ctx: *mut c_void, table: *const c_char) -> c_int {
    if table.is_null() {
        return 1;
    }
    // SAFETY: SQLite passes a NUL-terminated table name valid for the call.
    let name = unsafe { CStr::from_ptr(table) }.to_bytes();
    c_int::from(!name.eq_ignore_ascii_case(SEQUENCE_TABLE.as_bytes()))
}

/// Sets each AUTOINCREMENT counter the changeset names to its value after
/// the change (before it, inverted); a deleted counter is deleted. The
/// copy's own value is not compared: its inserts just moved it.
fn apply_sequences(conn: &Connection, changeset: &[u8], invert: bool) -> Result<()> {
    let what = "setting an AUTOINCREMENT counter";
    let to_sql = |v: &Value| match v {
        Value::Null => rusqlite::types::Value::Null,
        Value::Integer(i) => rusqlite::types::Value::Integer(*i),
        Value::Real(f) => rusqlite::types::Value::Real(*f),
        Value::Text(t) => rusqlite::types::Value::Text(String::from_utf8_lossy(t).into_owned()),
        Value::Blob(b) => rusqlite::types::Value::Blob(b.clone()),
    };
    for_each_change(changeset, |c| {
        if !c.table.eq_ignore_ascii_case(SEQUENCE_TABLE) {
            return Ok(());
        }
        // (set or delete, the table's name, the counter's value)
        let (delete, name, seq) = match (c.op, invert) {
            (Op::Insert, false) => (false, c.new.first(), c.new.get(1)),
            (Op::Delete, true) => (false, c.old.first(), c.old.get(1)),
            (Op::Update, false) => (false, c.old.first(), c.new.get(1)),
            (Op::Update, true) => (false, c.old.first(), c.old.get(1)),
            (Op::Delete, false) => (true, c.old.first(), None),
            (Op::Insert, true) => (true, c.new.first(), None),
        };
        let Some(Some(name)) = name else {
            return Err(Error::sql(
                what,
                rusqlite::Error::InvalidParameterName("a counter without its table name".into()),
            ));
        };
        let name = to_sql(name);
        if delete {
            conn.prepare_cached("DELETE FROM main.sqlite_sequence WHERE name = ?1")
                .and_then(|mut s| s.execute([&name]))
                .map_err(|e| Error::sql(what, e))?;
            return Ok(());
        }
        let Some(Some(seq)) = seq else {
            return Ok(());
        };
        let seq = to_sql(seq);
        let updated = conn
            .prepare_cached("UPDATE main.sqlite_sequence SET seq = ?2 WHERE name = ?1")
            .and_then(|mut s| s.execute((&name, &seq)))
            .map_err(|e| Error::sql(what, e))?;
        if updated == 0 {
            conn.prepare_cached("INSERT INTO main.sqlite_sequence (name, seq) VALUES (?1, ?2)")
                .and_then(|mut s| s.execute((&name, &seq)))
                .map_err(|e| Error::sql(what, e))?;
        }
        Ok(())
    })
}

/// The inverse changeset (INSERT <-> DELETE, UPDATE old <-> new).
pub fn invert(changeset: &[u8]) -> Result<Vec<u8>> {
    let n = changeset_len(changeset)?;
    let mut out_n: c_int = 0;
    let mut out_p: *mut c_void = ptr::null_mut();
    // SAFETY: `changeset` is valid for `n` bytes and only read; `out_n` and
    // `out_p` are valid out-pointers.
    let rc = unsafe {
        ffi::sqlite3changeset_invert(
            n,
            changeset.as_ptr().cast::<c_void>(),
            &mut out_n,
            &mut out_p,
        )
    };
    // SAFETY: `out_p` is null or an SQLite allocation of `out_n` bytes.
    let bytes = unsafe { take_sqlite_buffer(out_p, out_n) };
    if rc != ffi::SQLITE_OK {
        return Err(ffi_error("inverting a changeset", rc));
    }
    Ok(bytes)
}

/// Concatenates changesets into one with their net effect
/// (`sqlite3changegroup`): applying the result equals applying the inputs
/// in order. Replay uses it to apply many small records at once.
#[derive(Debug)]
pub struct ChangeGroup {
    raw: *mut ffi::sqlite3_changegroup,
}

impl ChangeGroup {
    pub fn new() -> Result<ChangeGroup> {
        let mut raw: *mut ffi::sqlite3_changegroup = ptr::null_mut();
        // SAFETY: `raw` is a valid out-pointer.
        let rc = unsafe { ffi::sqlite3changegroup_new(&mut raw) };
        if rc != ffi::SQLITE_OK || raw.is_null() {
            return Err(ffi_error("creating a changegroup", rc));
        }
        Ok(ChangeGroup { raw })
    }

    /// Adds the next changeset, in order.
    pub fn add(&mut self, changeset: &[u8]) -> Result<()> {
        let n = changeset_len(changeset)?;
        // SAFETY: `self.raw` is a live changegroup; the buffer is valid for
        // `n` bytes and only read during the call.
        let rc = unsafe {
            ffi::sqlite3changegroup_add(self.raw, n, changeset.as_ptr().cast::<c_void>().cast_mut())
        };
        if rc != ffi::SQLITE_OK {
            return Err(ffi_error("adding to a changegroup", rc));
        }
        Ok(())
    }

    /// The combined changeset.
    pub fn output(&self) -> Result<Vec<u8>> {
        let mut n: c_int = 0;
        let mut p: *mut c_void = ptr::null_mut();
        // SAFETY: `self.raw` is live; `n` and `p` are valid out-pointers.
        let rc = unsafe { ffi::sqlite3changegroup_output(self.raw, &mut n, &mut p) };
        // SAFETY: `p` is null or an SQLite allocation of `n` bytes.
        let bytes = unsafe { take_sqlite_buffer(p, n) };
        if rc != ffi::SQLITE_OK {
            return Err(ffi_error("combining changesets", rc));
        }
        Ok(bytes)
    }
}

impl Drop for ChangeGroup {
    fn drop(&mut self) {
        // SAFETY: `self.raw` came from sqlite3changegroup_new and is deleted once.
        unsafe { ffi::sqlite3changegroup_delete(self.raw) };
    }
}

/// Turns trigger execution off (replaying: the effects of triggers are
/// already in the changesets) or back on (the node becomes active).
pub fn set_triggers_enabled(conn: &Connection, on: bool) -> Result<()> {
    let now = conn
        .set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER,
            on,
        )
        .map_err(|e| {
            Error::sql(
                if on {
                    "enabling triggers"
                } else {
                    "disabling triggers"
                },
                e,
            )
        })?;
    if now != on {
        return Err(Error::sql(
            "setting SQLITE_DBCONFIG_ENABLE_TRIGGER",
            rusqlite::Error::SqliteFailure(
                ffi::Error::new(ffi::SQLITE_ERROR),
                Some(format!(
                    "trigger execution is still {}",
                    if now { "on" } else { "off" }
                )),
            ),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// FFI helpers

/// Apply flags, from sqlite3.h (also in the pregenerated bindings of
/// libsqlite3-sys 0.39; spelled out here so the values are visible).
const SQLITE_CHANGESETAPPLY_INVERT: c_int = 0x0002;
const SQLITE_CHANGESETAPPLY_FKNOACTION: c_int = 0x0008;
const _: () = assert!(SQLITE_CHANGESETAPPLY_INVERT == ffi::SQLITE_CHANGESETAPPLY_INVERT);
const _: () = assert!(SQLITE_CHANGESETAPPLY_FKNOACTION == ffi::SQLITE_CHANGESETAPPLY_FKNOACTION);

/// Builds `Error::Sql` for an FFI return code that is not SQLITE_OK.
fn ffi_error(op: &str, rc: c_int) -> Error {
    Error::sql(
        op,
        rusqlite::Error::SqliteFailure(
            ffi::Error::new(rc),
            Some(format!("{} (SQLite code {rc})", errstr(rc))),
        ),
    )
}

/// `sqlite3_errstr`: the English text of a result code.
fn errstr(rc: c_int) -> String {
    // SAFETY: sqlite3_errstr accepts any code and returns a static string.
    let p = unsafe { ffi::sqlite3_errstr(rc) };
    if p.is_null() {
        return format!("error {rc}");
    }
    // SAFETY: `p` is a static NUL-terminated string.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

fn changeset_len(changeset: &[u8]) -> Result<c_int> {
    c_int::try_from(changeset.len())
        .map_err(|_| ffi_error("changeset larger than 2 GiB", ffi::SQLITE_TOOBIG))
}

/// Copies an SQLite-allocated buffer into a `Vec` and frees it.
///
/// # Safety
/// `p` is null or a pointer from `sqlite3_malloc` holding at least `n`
/// bytes; it must not be used afterwards.
unsafe fn take_sqlite_buffer(p: *mut c_void, n: c_int) -> Vec<u8> {
    if p.is_null() {
        return Vec::new();
    }
    let len = usize::try_from(n).unwrap_or(0);
    // SAFETY: per the contract `p` holds at least `len` initialised bytes.
    let bytes = unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len) }.to_vec();
    // SAFETY: `p` came from SQLite's allocator and is freed once.
    unsafe { ffi::sqlite3_free(p) };
    bytes
}

/// An `sqlite3_changeset_iter` over borrowed bytes; finalized on drop.
struct ChangesetIter<'a> {
    raw: *mut ffi::sqlite3_changeset_iter,
    _bytes: PhantomData<&'a [u8]>,
}

/// The header of the current change.
struct OpInfo {
    table: String,
    ncol: usize,
    op: Op,
    indirect: bool,
}

impl<'a> ChangesetIter<'a> {
    fn start(changeset: &'a [u8]) -> Result<ChangesetIter<'a>> {
        let n = changeset_len(changeset)?;
        let mut raw: *mut ffi::sqlite3_changeset_iter = ptr::null_mut();
        // SAFETY: the bytes outlive the iterator (lifetime 'a) and SQLite only
        // reads them; `raw` is a valid out-pointer.
        let rc = unsafe {
            ffi::sqlite3changeset_start(&mut raw, n, changeset.as_ptr().cast_mut().cast::<c_void>())
        };
        let it = ChangesetIter {
            raw,
            _bytes: PhantomData,
        };
        if rc != ffi::SQLITE_OK {
            return Err(ffi_error("reading a changeset", rc));
        }
        if it.raw.is_null() {
            return Err(ffi_error("reading a changeset", ffi::SQLITE_NOMEM));
        }
        Ok(it)
    }

    /// Moves to the next change: `Ok(true)` on a change, `Ok(false)` at the end.
    fn next(&mut self) -> Result<bool> {
        // SAFETY: `self.raw` is a live iterator.
        match unsafe { ffi::sqlite3changeset_next(self.raw) } {
            ffi::SQLITE_ROW => Ok(true),
            ffi::SQLITE_DONE => Ok(false),
            rc => Err(ffi_error("reading a changeset", rc)),
        }
    }

    /// Finalizes, returning the first error the iterator met.
    fn finish(mut self) -> Result<()> {
        let raw = std::mem::replace(&mut self.raw, ptr::null_mut());
        // SAFETY: `raw` is a live iterator, finalized once (Drop sees null).
        let rc = unsafe { ffi::sqlite3changeset_finalize(raw) };
        if rc != ffi::SQLITE_OK {
            return Err(ffi_error("reading a changeset", rc));
        }
        Ok(())
    }

    fn op_info(&self) -> Result<OpInfo> {
        // SAFETY: `self.raw` is live and positioned on a change by `next`.
        unsafe { read_op(self.raw) }.map_err(|rc| ffi_error("reading a changeset", rc))
    }

    fn pk_mask(&self) -> Result<&[u8]> {
        // SAFETY: as in `op_info`; the mask stays valid until the next call to
        // `next`, which needs `&mut self`.
        unsafe { read_pk(self.raw) }.map_err(|rc| ffi_error("reading a changeset", rc))
    }

    fn read_change(&self, change: &mut Change) -> Result<()> {
        let info = self.op_info()?;
        change.table = info.table;
        change.op = info.op;
        change.indirect = info.indirect;
        let mask = self.pk_mask()?;
        if mask.len() != info.ncol {
            return Err(ffi_error("reading a changeset", ffi::SQLITE_CORRUPT));
        }
        change.pk.clear();
        change.pk.extend(mask.iter().map(|b| *b != 0));
        change.old.clear();
        change.new.clear();
        for i in 0..info.ncol {
            let old = if info.op == Op::Insert {
                None
            } else {
                // SAFETY: live iterator on an UPDATE/DELETE, column in range.
                unsafe { column_value(self.raw, ffi::sqlite3changeset_old, i) }
                    .map_err(|rc| ffi_error("reading a changeset", rc))?
            };
            let new = if info.op == Op::Delete {
                None
            } else {
                // SAFETY: live iterator on an INSERT/UPDATE, column in range.
                unsafe { column_value(self.raw, ffi::sqlite3changeset_new, i) }
                    .map_err(|rc| ffi_error("reading a changeset", rc))?
            };
            change.old.push(old);
            change.new.push(new);
        }
        Ok(())
    }
}

impl Drop for ChangesetIter<'_> {
    fn drop(&mut self) {
        if !self.raw.is_null() {
            // SAFETY: live iterator, finalized once; the result code is the
            // error already reported (or ignored on an early return).
            unsafe { ffi::sqlite3changeset_finalize(self.raw) };
        }
    }
}

/// `sqlite3changeset_op` on the current change.
///
/// # Safety
/// `it` is a live iterator positioned on a change (or the iterator passed to
/// a conflict handler for a kind other than FOREIGN_KEY).
unsafe fn read_op(it: *mut ffi::sqlite3_changeset_iter) -> std::result::Result<OpInfo, c_int> {
    let mut table: *const c_char = ptr::null();
    let mut ncol: c_int = 0;
    let mut op: c_int = 0;
    let mut indirect: c_int = 0;
    // SAFETY: per the contract; all out-pointers are valid.
    let rc = unsafe { ffi::sqlite3changeset_op(it, &mut table, &mut ncol, &mut op, &mut indirect) };
    if rc != ffi::SQLITE_OK {
        return Err(rc);
    }
    let table = if table.is_null() {
        String::new()
    } else {
        // SAFETY: SQLite returns a NUL-terminated name valid until `next`.
        unsafe { CStr::from_ptr(table) }
            .to_string_lossy()
            .into_owned()
    };
    let op = match op {
        ffi::SQLITE_INSERT => Op::Insert,
        ffi::SQLITE_UPDATE => Op::Update,
        ffi::SQLITE_DELETE => Op::Delete,
        _ => return Err(ffi::SQLITE_CORRUPT),
    };
    let ncol = usize::try_from(ncol).map_err(|_| ffi::SQLITE_CORRUPT)?;
    Ok(OpInfo {
        table,
        ncol,
        op,
        indirect: indirect != 0,
    })
}

/// `sqlite3changeset_pk`: one byte per column, non-zero for PK columns (the
/// value is the column's 1-based position in the PRIMARY KEY declaration).
///
/// # Safety
/// As `read_op`; the slice is valid until the iterator moves or is finalized.
unsafe fn read_pk<'i>(
    it: *mut ffi::sqlite3_changeset_iter,
) -> std::result::Result<&'i [u8], c_int> {
    let mut mask: *mut u8 = ptr::null_mut();
    let mut ncol: c_int = 0;
    // SAFETY: per the contract; valid out-pointers.
    let rc = unsafe { ffi::sqlite3changeset_pk(it, &mut mask, &mut ncol) };
    if rc != ffi::SQLITE_OK {
        return Err(rc);
    }
    let ncol = usize::try_from(ncol).map_err(|_| ffi::SQLITE_CORRUPT)?;
    if mask.is_null() {
        return if ncol == 0 {
            Ok(&[])
        } else {
            Err(ffi::SQLITE_CORRUPT)
        };
    }
    // SAFETY: SQLite returns an array of `ncol` bytes owned by the iterator.
    Ok(unsafe { std::slice::from_raw_parts(mask, ncol) })
}

type ValueGetter = unsafe extern "C" fn(
    *mut ffi::sqlite3_changeset_iter,
    c_int,
    *mut *mut ffi::sqlite3_value,
) -> c_int;

/// Reads column `i` with `getter` (`sqlite3changeset_old`, `_new` or
/// `_conflict`): `None` when the changeset does not carry it.
///
/// # Safety
/// `it` is a live iterator on which `getter` may legally be called.
unsafe fn column_value(
    it: *mut ffi::sqlite3_changeset_iter,
    getter: ValueGetter,
    i: usize,
) -> std::result::Result<Option<Value>, c_int> {
    let i = c_int::try_from(i).map_err(|_| ffi::SQLITE_RANGE)?;
    let mut v: *mut ffi::sqlite3_value = ptr::null_mut();
    // SAFETY: per the contract; `v` is a valid out-pointer.
    let rc = unsafe { getter(it, i, &mut v) };
    if rc != ffi::SQLITE_OK {
        return Err(rc);
    }
    if v.is_null() {
        return Ok(None);
    }
    // SAFETY: `v` is a protected value owned by the iterator, valid here.
    unsafe { read_value(v) }.map(Some)
}

/// Copies an `sqlite3_value` (TEXT as raw bytes, no UTF-8 check).
///
/// # Safety
/// `v` is a valid, non-null `sqlite3_value`.
unsafe fn read_value(v: *mut ffi::sqlite3_value) -> std::result::Result<Value, c_int> {
    // SAFETY (whole block): `v` is valid per the contract; the text/blob
    // pointer is read before `_bytes`, as SQLite documents, and is valid for
    // that many bytes until `v` changes.
    unsafe {
        match ffi::sqlite3_value_type(v) {
            ffi::SQLITE_NULL => Ok(Value::Null),
            ffi::SQLITE_INTEGER => Ok(Value::Integer(ffi::sqlite3_value_int64(v))),
            ffi::SQLITE_FLOAT => Ok(Value::Real(ffi::sqlite3_value_double(v))),
            ffi::SQLITE_TEXT => {
                let p = ffi::sqlite3_value_text(v);
                let n = ffi::sqlite3_value_bytes(v);
                raw_bytes(p, n).map(Value::Text)
            }
            ffi::SQLITE_BLOB => {
                let p = ffi::sqlite3_value_blob(v).cast::<u8>();
                let n = ffi::sqlite3_value_bytes(v);
                raw_bytes(p, n).map(Value::Blob)
            }
            _ => Err(ffi::SQLITE_CORRUPT),
        }
    }
}

/// # Safety
/// `p` is null or valid for `n` bytes.
unsafe fn raw_bytes(p: *const u8, n: c_int) -> std::result::Result<Vec<u8>, c_int> {
    let n = usize::try_from(n).map_err(|_| ffi::SQLITE_CORRUPT)?;
    if n == 0 {
        return Ok(Vec::new());
    }
    if p.is_null() {
        return Err(ffi::SQLITE_NOMEM);
    }
    // SAFETY: per the contract.
    Ok(unsafe { std::slice::from_raw_parts(p, n) }.to_vec())
}

// ---------------------------------------------------------------------------
// Strict apply: schema check and conflict handler

/// Checks every table of `changeset` against `main` (see `apply_strict`).
/// True when the changeset holds `sqlite_sequence` changes.
fn check_schema(
    conn: &Connection,
    changeset: &[u8],
) -> std::result::Result<bool, std::result::Result<ConflictReport, Error>> {
    let mut sequences = false;
    let mut it = ChangesetIter::start(changeset).map_err(Err)?;
    // (table, pk mask) already checked; changesets hold few tables.
    let mut checked: Vec<(String, Vec<u8>)> = Vec::new();
    let mut stmt = conn
        .prepare_cached("SELECT pk, hidden FROM pragma_table_xinfo(?1, 'main') ORDER BY cid")
        .map_err(|e| Err(Error::sql("reading a table's columns", e)))?;
    while it.next().map_err(Err)? {
        let info = it.op_info().map_err(Err)?;
        let mask = it.pk_mask().map_err(Err)?;
        if checked.iter().any(|(t, m)| *t == info.table && m == mask) {
            continue;
        }
        // The column layout SQLite's apply will use: non-hidden columns, and
        // the pk column of pragma_table_xinfo (PK position) as a byte.
        let mut db_mask: Vec<u8> = Vec::new();
        let mut rows = stmt
            .query([&info.table])
            .map_err(|e| Err(Error::sql("reading a table's columns", e)))?;
        while let Some(row) = rows
            .next()
            .map_err(|e| Err(Error::sql("reading a table's columns", e)))?
        {
            let pk: i64 = row
                .get(0)
                .map_err(|e| Err(Error::sql("reading a table's columns", e)))?;
            let hidden: i64 = row
                .get(1)
                .map_err(|e| Err(Error::sql("reading a table's columns", e)))?;
            if hidden == 0 {
                // SQLite keeps the PK position in a u8, too.
                db_mask.push(pk as u8);
            }
        }
        let schema = |detail: String| {
            Err(Ok(ConflictReport {
                table: info.table.clone(),
                kind: "SCHEMA".into(),
                detail,
            }))
        };
        if db_mask.is_empty() {
            return schema("no such table in the database".into());
        }
        if info.table.eq_ignore_ascii_case(SEQUENCE_TABLE) {
            // Keyed by name (see `SEQUENCE_TABLE`).
            sequences = true;
            db_mask[0] = 1;
        } else if db_mask.iter().all(|&p| p == 0) {
            // No declared key: the rowid is column 0 and the key.
            db_mask.insert(0, 1);
        }
        if db_mask.len() != mask.len() {
            return schema(format!(
                "the changeset has {} columns, the table has {}",
                mask.len(),
                db_mask.len()
            ));
        }
        if db_mask != mask {
            return schema(format!(
                "primary key differs: changeset {}, table {}",
                describe_pk(mask),
                describe_pk(&db_mask)
            ));
        }
        checked.push((info.table, mask.to_vec()));
    }
    it.finish().map_err(Err)?;
    Ok(sequences)
}

/// "(col1, col0)": the PK columns in PRIMARY KEY order.
fn describe_pk(mask: &[u8]) -> String {
    let mut cols: Vec<(u8, usize)> = mask
        .iter()
        .enumerate()
        .filter(|(_, p)| **p != 0)
        .map(|(i, p)| (*p, i))
        .collect();
    cols.sort_unstable();
    let names: Vec<String> = cols.iter().map(|(_, i)| format!("col{i}")).collect();
    format!("({})", names.join(", "))
}

/// Shared with `on_conflict` through the apply's context pointer.
struct ConflictCtx {
    report: Option<ConflictReport>,
}

/// The conflict handler: records the first conflict and aborts the apply.
/// Never unwinds (any panic is caught and still aborts).
unsafe extern "C" fn on_conflict(
    ctx: *mut c_void,
    kind: c_int,
    it: *mut ffi::sqlite3_changeset_iter,
) -> c_int {
    if ctx.is_null() {
        return ffi::SQLITE_CHANGESET_ABORT;
    }
    // SAFETY: `ctx` is the `ConflictCtx` that `apply_strict` passed; it lives
    // on its stack for the whole apply and nothing else touches it meanwhile.
    let ctx = unsafe { &mut *ctx.cast::<ConflictCtx>() };
    if ctx.report.is_none() {
        // SAFETY: `it` is the iterator SQLite passes for this conflict kind.
        let described = catch_unwind(AssertUnwindSafe(|| unsafe { describe_conflict(kind, it) }));
        ctx.report = Some(described.unwrap_or_else(|_| ConflictReport {
            table: String::new(),
            kind: kind_name(kind).into(),
            detail: "(the conflict could not be described)".into(),
        }));
    }
    ffi::SQLITE_CHANGESET_ABORT
}

fn kind_name(kind: c_int) -> &'static str {
    match kind {
        ffi::SQLITE_CHANGESET_DATA => "DATA",
        ffi::SQLITE_CHANGESET_NOTFOUND => "NOTFOUND",
        ffi::SQLITE_CHANGESET_CONFLICT => "CONFLICT",
        ffi::SQLITE_CHANGESET_CONSTRAINT => "CONSTRAINT",
        ffi::SQLITE_CHANGESET_FOREIGN_KEY => "FOREIGN_KEY",
        _ => "UNKNOWN",
    }
}

/// Builds the report for one conflict.
///
/// # Safety
/// `it` is the iterator SQLite passed to the conflict handler with `kind`.
unsafe fn describe_conflict(kind: c_int, it: *mut ffi::sqlite3_changeset_iter) -> ConflictReport {
    let name = kind_name(kind);
    if kind == ffi::SQLITE_CHANGESET_FOREIGN_KEY {
        // Only sqlite3changeset_fk_conflicts may be called on this iterator.
        let mut n: c_int = 0;
        // SAFETY: `it` is the FOREIGN_KEY handler's iterator; `n` is valid.
        let rc = unsafe { ffi::sqlite3changeset_fk_conflicts(it, &mut n) };
        let detail = if rc == ffi::SQLITE_OK {
            format!("{n} foreign key violation(s) after applying the changeset")
        } else {
            "foreign key violations after applying the changeset".into()
        };
        return ConflictReport {
            table: String::new(),
            kind: name.into(),
            detail,
        };
    }
    // SAFETY: for the other kinds the iterator is positioned on the change.
    let info = match unsafe { read_op(it) } {
        Ok(info) => info,
        Err(rc) => {
            return ConflictReport {
                table: String::new(),
                kind: name.into(),
                detail: format!("(change unreadable: {})", errstr(rc)),
            };
        }
    };
    let mut detail = String::new();
    detail.push_str(info.op.as_str());
    // SAFETY: as above.
    let mask = unsafe { read_pk(it) }.unwrap_or(&[]).to_vec();
    // The changeset's record: old values for UPDATE/DELETE, else new.
    let record = |i: usize| -> Option<Value> {
        // SAFETY: live iterator, column in range, getter legal for the op.
        let v = unsafe {
            if info.op == Op::Insert {
                column_value(it, ffi::sqlite3changeset_new, i)
            } else {
                column_value(it, ffi::sqlite3changeset_old, i)
            }
        };
        v.ok().flatten()
    };
    detail.push_str(" pk(");
    let mut first = true;
    for (i, p) in mask.iter().enumerate() {
        if *p != 0 {
            push_cell(&mut detail, &mut first, i, record(i).as_ref());
        }
    }
    detail.push(')');
    if kind == ffi::SQLITE_CHANGESET_DATA {
        // The values the changeset expected to find.
        detail.push_str(" expected(");
        let mut first = true;
        for i in 0..info.ncol {
            if mask.get(i).copied().unwrap_or(0) == 0
                && let Some(v) = record(i)
            {
                push_cell(&mut detail, &mut first, i, Some(&v));
            }
        }
        detail.push(')');
    }
    if kind == ffi::SQLITE_CHANGESET_DATA || kind == ffi::SQLITE_CHANGESET_CONFLICT {
        detail.push_str(" db(");
        let mut first = true;
        for i in 0..info.ncol {
            // SAFETY: DATA/CONFLICT handler iterator, column in range.
            let v = unsafe { column_value(it, ffi::sqlite3changeset_conflict, i) }
                .ok()
                .flatten();
            push_cell(&mut detail, &mut first, i, v.as_ref());
            if detail.len() > DETAIL_MAX {
                break;
            }
        }
        detail.push(')');
    }
    truncate(&mut detail, DETAIL_MAX);
    ConflictReport {
        table: info.table,
        kind: name.into(),
        detail,
    }
}

fn push_cell(out: &mut String, first: &mut bool, i: usize, v: Option<&Value>) {
    if !*first {
        out.push_str(", ");
    }
    *first = false;
    let _ = write!(out, "col{i}=");
    match v {
        None => out.push('?'),
        Some(v) => push_value(out, v),
    }
}

/// SQL-literal-like rendering, shortened for reports.
fn push_value(out: &mut String, v: &Value) {
    const MAX: usize = 32;
    match v {
        Value::Null => out.push_str("NULL"),
        Value::Integer(i) => {
            let _ = write!(out, "{i}");
        }
        Value::Real(r) => {
            let _ = write!(out, "{r:?}");
        }
        Value::Text(t) => {
            let s = String::from_utf8_lossy(&t[..t.len().min(MAX)]);
            let _ = write!(
                out,
                "'{}'{}",
                s.replace('\'', "''"),
                if t.len() > MAX { "…" } else { "" }
            );
        }
        Value::Blob(b) => {
            out.push_str("X'");
            for byte in &b[..b.len().min(MAX / 2)] {
                let _ = write!(out, "{byte:02X}");
            }
            out.push('\'');
            if b.len() > MAX / 2 {
                out.push('…');
            }
        }
    }
}

/// Cuts `s` to at most `max` bytes on a char boundary, marking the cut.
fn truncate(s: &mut String, max: usize) {
    if s.len() <= max {
        return;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push('…');
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::types::Value as SqlValue;

    fn mem() -> Connection {
        Connection::open_in_memory().unwrap()
    }

    /// Runs `sql` on `conn` under a fresh session and returns the changeset.
    fn capture(conn: &Connection, sql: &str) -> Vec<u8> {
        let s = Session::new(conn).unwrap();
        conn.execute_batch(sql).unwrap();
        let cs = s.changeset().unwrap();
        drop(s);
        cs
    }

    fn changes(cs: &[u8]) -> Vec<Change> {
        let mut out = Vec::new();
        for_each_change(cs, |c| {
            out.push(c.clone());
            Ok(())
        })
        .unwrap();
        out
    }

    /// A copy of `src` made with the backup API (the way replicas are seeded).
    fn seed(src: &Connection) -> Connection {
        let mut dst = mem();
        rusqlite::backup::Backup::new(src, &mut dst)
            .unwrap()
            .run_to_completion(64, std::time::Duration::ZERO, None)
            .unwrap();
        dst
    }

    /// Every row of every non-`sqlite_%` table, sorted, for comparisons.
    fn dump(conn: &Connection) -> Vec<(String, Vec<Vec<SqlValue>>)> {
        let mut stmt = conn.prepare("SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name").unwrap();
        let tables: Vec<String> = stmt
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        tables
            .into_iter()
            .map(|t| {
                let mut stmt = conn.prepare(&format!("SELECT * FROM \"{t}\"")).unwrap();
                let n = stmt.column_count();
                let mut rows: Vec<Vec<SqlValue>> = stmt
                    .query_map([], |r| (0..n).map(|i| r.get::<_, SqlValue>(i)).collect())
                    .unwrap()
                    .map(|r| r.unwrap())
                    .collect();
                rows.sort_by_key(|r| format!("{r:?}"));
                (t, rows)
            })
            .collect()
    }

    fn text(s: &str) -> Option<Value> {
        Some(Value::Text(s.as_bytes().to_vec()))
    }

    fn int(i: i64) -> Option<Value> {
        Some(Value::Integer(i))
    }

    fn conflict(
        r: std::result::Result<(), std::result::Result<ConflictReport, Error>>,
    ) -> ConflictReport {
        match r {
            Err(Ok(report)) => report,
            other => panic!("expected a conflict report, got {other:?}"),
        }
    }

    #[test]
    fn session_links_and_tracks_emptiness() {
        let conn = mem();
        conn.execute_batch("CREATE TABLE t(a INTEGER PRIMARY KEY, b)")
            .unwrap();
        let s = Session::new(&conn).unwrap();
        assert!(s.is_empty());
        assert!(s.changeset().unwrap().is_empty());
        conn.execute_batch("INSERT INTO t VALUES (1, 'x')").unwrap();
        assert!(!s.is_empty());
        assert!(!s.changeset().unwrap().is_empty());
        // An insert and delete of the same row, or a no-op UPDATE, net to
        // an empty changeset, but the session is not "empty": it recorded
        // them.
        drop(s);
        let s = Session::new(&conn).unwrap();
        conn.execute_batch("INSERT INTO t VALUES (2, 'y'); DELETE FROM t WHERE a = 2;")
            .unwrap();
        assert!(!s.is_empty());
        let cs = s.changeset().unwrap();
        drop(s);
        assert!(cs.is_empty());
        let s = Session::new(&conn).unwrap();
        conn.execute_batch("UPDATE t SET b = b WHERE a = 1;")
            .unwrap();
        assert!(!s.is_empty());
        assert!(s.changeset().unwrap().is_empty());
        drop(s);
        assert!(changes(&cs).is_empty());
        assert_eq!(invert(&cs).unwrap(), Vec::<u8>::new());
        apply_strict(&conn, &cs, ApplyOptions::default()).unwrap();
    }

    #[test]
    fn for_each_change_reads_every_op_and_storage_class() {
        let conn = mem();
        conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, i, r REAL, s TEXT, b BLOB, n)")
            .unwrap();

        let cs = capture(
            &conn,
            "INSERT INTO t VALUES (1, 42, 1.5, 'héllo', x'00ff', NULL)",
        );
        let c = changes(&cs);
        assert_eq!(c.len(), 1);
        assert_eq!(
            c[0],
            Change {
                table: "t".into(),
                op: Op::Insert,
                indirect: false,
                pk: vec![true, false, false, false, false, false],
                old: vec![None; 6],
                new: vec![
                    int(1),
                    int(42),
                    Some(Value::Real(1.5)),
                    text("héllo"),
                    Some(Value::Blob(vec![0, 0xff])),
                    Some(Value::Null)
                ],
            }
        );

        // Only the PK and the changed columns; NULL as a new value is
        // Some(Null), an unchanged column is None. TEXT keeps raw bytes.
        let cs = capture(
            &conn,
            "UPDATE t SET i = -7, s = CAST(x'ff80' AS TEXT), r = NULL WHERE id = 1",
        );
        let c = changes(&cs);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].op, Op::Update);
        assert_eq!(
            c[0].old,
            vec![
                int(1),
                int(42),
                Some(Value::Real(1.5)),
                text("héllo"),
                None,
                None
            ]
        );
        assert_eq!(
            c[0].new,
            vec![
                None,
                int(-7),
                Some(Value::Null),
                Some(Value::Text(vec![0xff, 0x80])),
                None,
                None
            ]
        );

        // A DELETE carries the whole old row, SQL NULLs included.
        let cs = capture(&conn, "DELETE FROM t WHERE id = 1");
        let c = changes(&cs);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].op, Op::Delete);
        assert_eq!(
            c[0].old,
            vec![
                int(1),
                int(-7),
                Some(Value::Null),
                Some(Value::Text(vec![0xff, 0x80])),
                Some(Value::Blob(vec![0, 0xff])),
                Some(Value::Null)
            ]
        );
        assert_eq!(c[0].new, vec![None; 6]);

        // Extremes and empty values survive.
        let cs = capture(
            &conn,
            "INSERT INTO t VALUES (9223372036854775807, -9223372036854775808, -0.0, '', x'', 1e308)",
        );
        let c = changes(&cs);
        assert_eq!(c[0].new[1], int(i64::MIN));
        assert_eq!(c[0].new[3], text(""));
        assert_eq!(c[0].new[4], Some(Value::Blob(vec![])));
        assert_eq!(c[0].new[5], Some(Value::Real(1e308)));
    }

    #[test]
    fn for_each_change_pk_mask_follows_columns_and_f_errors_propagate() {
        let conn = mem();
        conn.execute_batch("CREATE TABLE w(a, b, c, PRIMARY KEY (c, a)) WITHOUT ROWID; CREATE TABLE x(k TEXT PRIMARY KEY NOT NULL, v)").unwrap();
        let cs = capture(
            &conn,
            "INSERT INTO x VALUES ('k', 1); INSERT INTO w VALUES (1, 2, 3); INSERT INTO w VALUES (4, 5, 6);",
        );
        let c = changes(&cs);
        // Tables in the order they were first written; rows of one table in
        // an unspecified order.
        assert_eq!(
            c.iter().map(|c| c.table.as_str()).collect::<Vec<_>>(),
            ["x", "w", "w"]
        );
        assert_eq!(c[1].pk, vec![true, false, true]);
        let mut seen = 0;
        let r = for_each_change(&cs, |_| {
            seen += 1;
            if seen == 2 {
                Err(Error::Aborted("stop".into()))
            } else {
                Ok(())
            }
        });
        assert!(
            matches!(r, Err(Error::Aborted(ref m)) if m == "stop"),
            "{r:?}"
        );
        assert_eq!(seen, 2);
    }

    const SCHEMA: &str = "
        CREATE TABLE t(id INTEGER PRIMARY KEY, v, r REAL);
        CREATE TABLE w(a TEXT NOT NULL, b INTEGER NOT NULL, c BLOB, PRIMARY KEY (b, a)) WITHOUT ROWID;
        CREATE TABLE u(id INTEGER PRIMARY KEY, email TEXT UNIQUE);
        INSERT INTO t VALUES (1, 'one', 1.0), (2, 'two', 2.0), (3, NULL, NULL);
        INSERT INTO w VALUES ('a', 1, x'01'), ('b', 2, NULL);
        INSERT INTO u VALUES (1, 'x@example'), (2, 'y@example');
    ";

    /// A = a database with `SCHEMA`; B = its backup copy.
    fn pair() -> (Connection, Connection) {
        let a = mem();
        a.execute_batch(SCHEMA).unwrap();
        let b = seed(&a);
        (a, b)
    }

    #[test]
    fn apply_replicates_onto_a_backup_seeded_copy() {
        let (a, b) = pair();
        let txs = [
            "INSERT INTO t VALUES (4, x'beef', 4.5); UPDATE t SET v = 'uno' WHERE id = 1;",
            "DELETE FROM t WHERE id = 2; INSERT INTO w VALUES ('c', 3, zeroblob(10));",
            "UPDATE w SET c = NULL WHERE a = 'a'; UPDATE t SET id = 20 WHERE id = 3;",
            "UPDATE u SET email = 'y@example' WHERE id = 1 AND 0; DELETE FROM u WHERE id = 2; UPDATE u SET email = 'y@example' WHERE id = 1;",
            "INSERT OR REPLACE INTO t VALUES (1, 'replaced', -0.0); INSERT INTO t SELECT id + 100, v, r FROM t;",
        ];
        for sql in txs {
            let cs = capture(&a, sql);
            assert!(!cs.is_empty(), "{sql}");
            apply_strict(&b, &cs, ApplyOptions::default()).unwrap();
            assert_eq!(dump(&a), dump(&b), "after {sql}");
        }
    }

    /// Applies `cs` to `b` expecting a conflict, and checks `b` is unchanged.
    fn expect_conflict(b: &Connection, cs: &[u8]) -> ConflictReport {
        let before = dump(b);
        let report = conflict(apply_strict(b, cs, ApplyOptions::default()));
        assert_eq!(dump(b), before, "a failed apply left changes behind");
        assert!(b.is_autocommit());
        report
    }

    #[test]
    fn data_conflict_is_reported_and_applies_nothing() {
        let (a, b) = pair();
        let cs = capture(
            &a,
            "INSERT INTO t VALUES (10, 'new', 0); INSERT INTO w VALUES ('z', 9, NULL); UPDATE t SET v = 'uno' WHERE id = 1;",
        );
        b.execute_batch("UPDATE t SET v = 'diverged' WHERE id = 1")
            .unwrap();
        let r = expect_conflict(&b, &cs);
        assert_eq!((r.table.as_str(), r.kind.as_str()), ("t", "DATA"));
        assert!(r.detail.starts_with("UPDATE pk(col0=1)"), "{}", r.detail);
        assert!(r.detail.contains("expected(col1='one')"), "{}", r.detail);
        assert!(
            r.detail.contains("db(col0=1, col1='diverged', col2=1.0)"),
            "{}",
            r.detail
        );
    }

    #[test]
    fn conflict_detail_is_bounded() {
        let a = mem();
        a.execute_batch(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v, w, x); INSERT INTO t VALUES (1, 'é', 0, 0);",
        )
        .unwrap();
        let b = seed(&a);
        let cs = capture(&a, "UPDATE t SET v = 'new' WHERE id = 1");
        b.execute_batch(
            "UPDATE t SET v = printf('%.300c', 'é'), w = randomblob(500), x = 'ü' WHERE id = 1",
        )
        .unwrap();
        let r = expect_conflict(&b, &cs);
        assert_eq!(r.kind, "DATA");
        assert!(
            r.detail.len() <= DETAIL_MAX + '…'.len_utf8(),
            "{} bytes: {}",
            r.detail.len(),
            r.detail
        );
        assert!(
            r.detail
                .starts_with("UPDATE pk(col0=1) expected(col1='é') db(col0=1, col1='é"),
            "{}",
            r.detail
        );
    }

    #[test]
    fn notfound_conflict_is_reported() {
        let (a, b) = pair();
        let cs = capture(
            &a,
            "UPDATE w SET c = x'02' WHERE a = 'b'; DELETE FROM t WHERE id = 2;",
        );
        b.execute_batch("DELETE FROM t WHERE id = 2").unwrap();
        let r = expect_conflict(&b, &cs);
        assert_eq!((r.table.as_str(), r.kind.as_str()), ("t", "NOTFOUND"));
        assert!(r.detail.starts_with("DELETE pk(col0=2)"), "{}", r.detail);
    }

    #[test]
    fn conflict_on_existing_pk_is_reported() {
        let (a, b) = pair();
        let cs = capture(
            &a,
            "INSERT INTO w VALUES ('q', 7, x'00'); INSERT INTO t VALUES (5, 'a', 1);",
        );
        b.execute_batch("INSERT INTO w VALUES ('q', 7, x'00')")
            .unwrap();
        let r = expect_conflict(&b, &cs);
        // Even an identical row conflicts: an INSERT expects no row.
        assert_eq!((r.table.as_str(), r.kind.as_str()), ("w", "CONFLICT"));
        // PK values in column order (a, b), not declaration order (b, a).
        assert!(
            r.detail
                .starts_with("INSERT pk(col0='q', col1=7) db(col0='q', col1=7, col2=X'00')"),
            "{}",
            r.detail
        );
    }

    #[test]
    fn constraint_conflict_is_reported() {
        let (a, b) = pair();
        let cs = capture(&a, "INSERT INTO u VALUES (5, 'z@example');");
        b.execute_batch("INSERT INTO u VALUES (6, 'z@example')")
            .unwrap();
        let r = expect_conflict(&b, &cs);
        assert_eq!((r.table.as_str(), r.kind.as_str()), ("u", "CONSTRAINT"));
        assert!(r.detail.starts_with("INSERT pk(col0=5)"), "{}", r.detail);
    }

    #[test]
    fn foreign_key_violation_is_reported() {
        let a = mem();
        a.execute_batch("CREATE TABLE p(id INTEGER PRIMARY KEY); CREATE TABLE c(id INTEGER PRIMARY KEY, pid INTEGER REFERENCES p(id) ON DELETE CASCADE); INSERT INTO p VALUES (1);").unwrap();
        let b = seed(&a);
        b.execute_batch("PRAGMA foreign_keys = ON; DELETE FROM p WHERE id = 1;")
            .unwrap();
        let cs = capture(&a, "INSERT INTO c VALUES (1, 1)");
        let r = expect_conflict(&b, &cs);
        assert_eq!((r.table.as_str(), r.kind.as_str()), ("", "FOREIGN_KEY"));
        assert!(
            r.detail.starts_with("1 foreign key violation"),
            "{}",
            r.detail
        );
    }

    #[test]
    fn fk_actions_do_not_fire_on_apply() {
        // With foreign_keys=ON on the replica, a cascade would delete the
        // children before the changeset's own DELETEs (NOTFOUND); FKNOACTION
        // keeps the changeset authoritative.
        let a = mem();
        a.execute_batch("PRAGMA foreign_keys = ON; CREATE TABLE p(id INTEGER PRIMARY KEY); CREATE TABLE c(id INTEGER PRIMARY KEY, pid INTEGER REFERENCES p(id) ON DELETE CASCADE); INSERT INTO p VALUES (1); INSERT INTO c VALUES (1, 1), (2, 1);").unwrap();
        let b = seed(&a);
        b.execute_batch("PRAGMA foreign_keys = ON").unwrap();
        let cs = capture(&a, "DELETE FROM p WHERE id = 1");
        assert_eq!(changes(&cs).len(), 3);
        apply_strict(&b, &cs, ApplyOptions::default()).unwrap();
        assert_eq!(dump(&a), dump(&b));
    }

    #[test]
    fn schema_mismatch_is_reported_not_skipped() {
        // A table missing on the replica (SQLite alone would skip it and
        // return OK).
        let (a, b) = pair();
        a.execute_batch("CREATE TABLE newt(id INTEGER PRIMARY KEY, v)")
            .unwrap();
        let cs = capture(
            &a,
            "INSERT INTO t VALUES (7, 'x', 1); INSERT INTO newt VALUES (1, 'n');",
        );
        let r = expect_conflict(&b, &cs);
        assert_eq!((r.table.as_str(), r.kind.as_str()), ("newt", "SCHEMA"));
        assert!(r.detail.contains("no such table"), "{}", r.detail);

        // One more column on the active.
        let (a, b) = pair();
        a.execute_batch("ALTER TABLE t ADD COLUMN extra").unwrap();
        let cs = capture(&a, "INSERT INTO t VALUES (7, 'x', 1, 'e')");
        let r = expect_conflict(&b, &cs);
        assert_eq!((r.table.as_str(), r.kind.as_str()), ("t", "SCHEMA"));
        assert_eq!(r.detail, "the changeset has 4 columns, the table has 3");

        // One more column on the replica (SQLite would fill in defaults).
        let (a, b) = pair();
        b.execute_batch("ALTER TABLE t ADD COLUMN extra DEFAULT 5")
            .unwrap();
        let cs = capture(&a, "UPDATE t SET v = 'x' WHERE id = 1");
        let r = expect_conflict(&b, &cs);
        assert_eq!((r.table.as_str(), r.kind.as_str()), ("t", "SCHEMA"));
        assert_eq!(r.detail, "the changeset has 3 columns, the table has 4");

        // Same columns, other primary key (also another PK order).
        for other in [
            "CREATE TABLE k(a, b, PRIMARY KEY (a))",
            "CREATE TABLE k(a, b, PRIMARY KEY (a, b))",
        ] {
            let a = mem();
            a.execute_batch("CREATE TABLE k(a, b, PRIMARY KEY (b, a))")
                .unwrap();
            let b = mem();
            b.execute_batch(other).unwrap();
            let cs = capture(&a, "INSERT INTO k VALUES (1, 2)");
            let r = expect_conflict(&b, &cs);
            assert_eq!((r.table.as_str(), r.kind.as_str()), ("k", "SCHEMA"));
            assert!(
                r.detail
                    .starts_with("primary key differs: changeset (col1, col0), table (col0"),
                "{}",
                r.detail
            );
        }

        // Generated columns are not part of the layout: a VIRTUAL column on
        // the replica only does not count.
        let a = mem();
        a.execute_batch("CREATE TABLE g(id INTEGER PRIMARY KEY, v)")
            .unwrap();
        let b = mem();
        b.execute_batch("CREATE TABLE g(id INTEGER PRIMARY KEY, v, d AS (v * 2))")
            .unwrap();
        let cs = capture(&a, "INSERT INTO g VALUES (1, 21)");
        apply_strict(&b, &cs, ApplyOptions::default()).unwrap();
        assert_eq!(
            b.query_row("SELECT d FROM g", [], |r| r.get::<_, i64>(0))
                .unwrap(),
            42
        );
    }

    #[test]
    fn invert_and_apply_newest_first_rewinds() {
        let a = mem();
        a.execute_batch(SCHEMA).unwrap();
        let txs = [
            "INSERT INTO t VALUES (4, 'four', 4.0); UPDATE w SET c = x'ff' WHERE a = 'a';",
            "UPDATE t SET v = 'ONE', r = NULL WHERE id = 1; DELETE FROM w WHERE a = 'b';",
            "UPDATE t SET id = 40 WHERE id = 4; INSERT INTO u VALUES (3, 'x2@example');",
            "DELETE FROM t; UPDATE u SET email = NULL;",
        ];
        let mut states = vec![dump(&a)];
        let mut sets = Vec::new();
        for sql in txs {
            sets.push(capture(&a, sql));
            states.push(dump(&a));
        }
        let b = seed(&a);
        // Rewind A with inverted bytes, B with the INVERT flag.
        for (k, cs) in sets.iter().enumerate().rev() {
            let inv = invert(cs).unwrap();
            assert_eq!(invert(&inv).unwrap(), *cs, "invert is an involution");
            apply_strict(&a, &inv, ApplyOptions::default()).unwrap();
            assert_eq!(dump(&a), states[k]);
            apply_strict(&b, cs, ApplyOptions { invert: true }).unwrap();
            assert_eq!(dump(&b), states[k]);
        }
        // Replaying forwards reaches the end state again.
        for cs in &sets {
            apply_strict(&a, cs, ApplyOptions::default()).unwrap();
        }
        assert_eq!(dump(&a), states[sets.len()]);
        // Rewinding out of order is refused, not applied.
        let r = expect_conflict(&a, &invert(&sets[1]).unwrap());
        assert_eq!(r.table, "t");
        // Re-applying an old changeset: w's row no longer holds the old value.
        let r = expect_conflict(&a, &sets[0]);
        assert_eq!((r.table.as_str(), r.kind.as_str()), ("w", "DATA"));
    }

    #[test]
    fn triggers_disabled_on_the_replica_do_not_apply_twice() {
        let a = mem();
        a.execute_batch(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v);
             CREATE TABLE log(id INTEGER PRIMARY KEY, msg);
             CREATE TRIGGER t_ins AFTER INSERT ON t BEGIN INSERT INTO log(msg) VALUES ('inserted ' || new.v); END;",
        )
        .unwrap();
        let b = seed(&a);
        let cs = capture(&a, "INSERT INTO t VALUES (1, 'a')");
        let c = changes(&cs);
        assert_eq!(c.len(), 2);
        assert!(
            !c[0].indirect && c[1].indirect,
            "the trigger's row is flagged indirect"
        );
        // With triggers on, the replica's trigger inserts log row 1 first.
        let r = expect_conflict(&b, &cs);
        assert_eq!((r.table.as_str(), r.kind.as_str()), ("log", "CONFLICT"));
        set_triggers_enabled(&b, false).unwrap();
        apply_strict(&b, &cs, ApplyOptions::default()).unwrap();
        assert_eq!(dump(&a), dump(&b));
        set_triggers_enabled(&b, true).unwrap();
        b.execute_batch("INSERT INTO t VALUES (2, 'b')").unwrap();
        assert_eq!(
            b.query_row("SELECT count(*) FROM log", [], |r| r.get::<_, i64>(0))
                .unwrap(),
            2
        );
    }

    #[test]
    fn null_keys_are_not_captured_and_keyless_tables_are_keyed_by_rowid() {
        // A NULL key is the pitfall the store refuses up front: no change
        // at all. A table without a key gets its rowid as column 0.
        let conn = mem();
        conn.execute_batch("CREATE TABLE nopk(a, b); CREATE TABLE tp(k TEXT PRIMARY KEY, v);")
            .unwrap();
        let s = Session::new(&conn).unwrap();
        conn.execute_batch("INSERT INTO tp VALUES (NULL, 1);")
            .unwrap();
        assert!(s.is_empty());
        conn.execute_batch("INSERT INTO nopk VALUES (1, 2);")
            .unwrap();
        let mut seen = Vec::new();
        for_each_change(&s.changeset().unwrap(), |c| {
            seen.push((c.table.clone(), c.pk.clone(), c.new.clone()));
            Ok(())
        })
        .unwrap();
        let int = |i| Some(Value::Integer(i));
        assert_eq!(
            seen,
            [(
                "nopk".to_string(),
                vec![true, false, false],
                vec![int(1), int(1), int(2)]
            )]
        );
    }

    #[test]
    fn sqlite_stat1_is_not_captured() {
        let conn = mem();
        conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v); CREATE INDEX t_v ON t(v); INSERT INTO t VALUES (1, 1), (2, 2); ANALYZE;").unwrap();
        let before: String = conn
            .query_row("SELECT stat FROM sqlite_stat1 WHERE idx = 't_v'", [], |r| {
                r.get(0)
            })
            .unwrap();
        let cs = capture(&conn, "INSERT INTO t VALUES (3, 3), (4, 3); ANALYZE;");
        let after: String = conn
            .query_row("SELECT stat FROM sqlite_stat1 WHERE idx = 't_v'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_ne!(before, after, "ANALYZE changed the statistics");
        let c = changes(&cs);
        assert_eq!(c.len(), 2);
        assert!(c.iter().all(|c| c.table == "t"));
        // ANALYZE alone gives an empty changeset.
        assert!(capture(&conn, "ANALYZE").is_empty());
    }

    #[test]
    fn alter_table_inside_a_session_widens_the_whole_table() {
        // Documents SQLite 3.54: after ADD COLUMN inside a session, every
        // change of the table is recorded with the new column count, rows
        // captured before the ALTER included (read at changeset time).
        let conn = mem();
        conn.execute_batch("CREATE TABLE t(a INTEGER PRIMARY KEY, b); INSERT INTO t VALUES (1, 'old'), (2, 'old2');").unwrap();
        let cs = capture(
            &conn,
            "INSERT INTO t VALUES (3, 'x'); ALTER TABLE t ADD COLUMN c DEFAULT 7; DELETE FROM t WHERE a = 2;",
        );
        let mut c = changes(&cs);
        c.sort_by_key(|c| c.op.as_str());
        assert_eq!(c.len(), 2);
        assert_eq!(
            (c[0].op, c[0].old.clone()),
            (Op::Delete, vec![int(2), text("old2"), int(7)])
        );
        assert_eq!(
            (c[1].op, c[1].new.clone()),
            (Op::Insert, vec![int(3), text("x"), int(7)])
        );
    }

    /// A tiny deterministic PRNG (xorshift64*).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
    }

    #[test]
    fn malformed_changesets_give_errors_not_panics() {
        let (a, b) = pair();
        let cs = capture(
            &a,
            "INSERT INTO t VALUES (4, 'four', 4.0); UPDATE w SET c = x'ff' WHERE a = 'a'; DELETE FROM u WHERE id = 2; UPDATE t SET v = 'x' WHERE id = 1;",
        );
        let before = dump(&b);
        let mut errors = 0;
        for len in 0..cs.len() {
            let cut = &cs[..len];
            let iterated = for_each_change(cut, |_| Ok(()));
            errors += usize::from(iterated.is_err());
            let _ = invert(cut);
            // Probe inside a savepoint: a cut on a change boundary is a
            // valid, shorter changeset and applies.
            b.execute_batch("SAVEPOINT probe").unwrap();
            match apply_strict(&b, cut, ApplyOptions::default()) {
                Ok(()) => assert!(
                    iterated.is_ok(),
                    "applied a changeset that does not iterate (len {len})"
                ),
                Err(Ok(report)) => panic!("unexpected conflict {report:?} (len {len})"),
                Err(Err(_)) => assert_eq!(
                    dump(&b),
                    before,
                    "a rejected changeset changed the database (len {len})"
                ),
            }
            b.execute_batch("ROLLBACK TO probe; RELEASE probe").unwrap();
            assert_eq!(dump(&b), before, "len {len}");
        }
        assert!(
            errors > cs.len() / 2,
            "{errors} of {} truncations rejected",
            cs.len()
        );
        assert!(for_each_change(&cs[..cs.len() - 1], |_| Ok(())).is_err());

        let seed_value = 0x9E37_79B9_7F4A_7C15;
        eprintln!("malformed_changesets seed {seed_value:#x}");
        let mut rng = Rng(seed_value);
        for round in 0..3000 {
            let bytes: Vec<u8> = if round % 3 == 0 {
                // Bit flips in a valid changeset.
                let mut v = cs.clone();
                let i = (rng.next() as usize) % v.len();
                v[i] ^= 1 << (rng.next() % 8);
                v
            } else {
                let len = (rng.next() % 64) as usize;
                let mut v: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                if round % 3 == 1 && !v.is_empty() {
                    v[0] = b'T';
                }
                v
            };
            let _ = for_each_change(&bytes, |_| Ok(()));
            let _ = invert(&bytes);
        }
        // Random bytes never get as far as the database.
        let mut rng = Rng(seed_value ^ 1);
        for _ in 0..300 {
            let len = (rng.next() % 64) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if let Some(first) = bytes.first_mut() {
                *first = b'T';
            }
            let iterated = for_each_change(&bytes, |_| Ok(()));
            match apply_strict(&b, &bytes, ApplyOptions::default()) {
                Ok(()) => assert!(iterated.is_ok()),
                Err(Ok(report)) => assert_eq!(report.kind, "SCHEMA"),
                Err(Err(_)) => {}
            }
        }
        assert_eq!(dump(&b), before);
    }
}
