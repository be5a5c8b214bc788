//! The store: a SQLite database whose every write transaction becomes a
//! durable log record *before* SQLite commits (the WAL rule), with group
//! commit, DDL records, the LSN guard row, the content hash, the checks that
//! refuse tables the session extension cannot replicate, and crash recovery
//! on open.
//!
//! One writer thread owns the write connection. Callers send closures; the
//! writer runs a batch of them in one SQLite transaction, each inside its own
//! savepoint, with one capture of their row changes (`capture`) for the
//! batch's one record; writes that record with one pwrite and one
//! fdatasync, commits SQLite, and only then answers each caller. The write
//! connection is never handed out outside a closure, so no write can bypass
//! capture.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;

use crate::apply;
use crate::capture::{Capture, IntUpdate};
use crate::changeset::{self, GUARD_TABLE};
use crate::error::{Error, Result};
use crate::format::{Body, DdlPart, Record, RecordKind};
use crate::hash;
use crate::log::{self, LogWriter, now_us};
use crate::script;
use crate::types::{ContentHash, DatabaseId, Epoch, Generation, Lsn, SchemaHash};

/// File name of the database inside a node's data directory.
pub const DATABASE_FILE: &str = "store.db";
/// Directory of the log segments inside a node's data directory.
pub const LOG_DIR: &str = "logs";
const LOCK_FILE: &str = "lock";
/// A file that marks a data directory as a passive copy (the replayer's
/// state file): the store refuses to open it for writing.
pub const PASSIVE_MARKER: &str = "copy.json";

/// Default for `StoreOptions::seal_after`.
pub const DEFAULT_SEAL_AFTER: Duration = Duration::from_secs(10);
/// Default for `StoreOptions::max_batch`.
pub const DEFAULT_MAX_BATCH: usize = 256;
/// Default for `StoreOptions::max_transaction_bytes`.
pub const DEFAULT_MAX_TRANSACTION_BYTES: usize = 64 << 20;
/// Capacity of the queue of transactions waiting for the writer.
const REQUEST_QUEUE: usize = 1024;
/// Records replayed per SQLite transaction during recovery.
const RECOVERY_BATCH: usize = 1000;
const SAVEPOINT: &str = "logship_request";

/// Tunables of a store. Every field has a default (`Default`).
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Seal the current segment this long after its first unsealed record
    /// (default 10 s).
    pub seal_after: Duration,
    /// Most transactions per group commit (default 256).
    pub max_batch: usize,
    /// Largest changeset one transaction may produce (default 64 MiB).
    pub max_transaction_bytes: usize,
    /// fdatasync each group commit (default true). False only to build a
    /// log fast for a benchmark: a crash then loses acknowledged transactions.
    pub fsync: bool,
    /// The cluster's quorum lease (default none: a standalone store). Once
    /// it runs out the writer takes nothing more, and a transaction whose
    /// record became durable after it ran out is answered `Fenced`, not
    /// acknowledged.
    pub fence: Option<Arc<Fence>>,
    /// Start this epoch (default none: keep the log's). A current segment
    /// that holds records is sealed first, so every segment holds one epoch.
    pub epoch: Option<Epoch>,
    /// Block mode: every byte of the log made durable is published here for
    /// the copies (default none).
    pub feed: Option<Arc<crate::block::Feed>>,
}

/// A deadline on a monotonic clock, moved forward by whoever holds the
/// lease (the cluster daemon) and read by the store's writer before it
/// writes and before it acknowledges.
#[derive(Debug)]
pub struct Fence {
    base: Instant,
    /// Nanoseconds after `base` until which writes are allowed.
    until_ns: AtomicU64,
}

impl Default for Fence {
    fn default() -> Self {
        Fence::new()
    }
}

impl Fence {
    /// A fence that allows nothing until extended.
    pub fn new() -> Fence {
        Fence {
            base: Instant::now(),
            until_ns: AtomicU64::new(0),
        }
    }

    /// Allows writes until `until` (never moves the deadline back unless
    /// `revoke` is called).
    pub fn extend(&self, until: Instant) {
        let ns = until.saturating_duration_since(self.base).as_nanos() as u64;
        self.until_ns.fetch_max(ns, Ordering::SeqCst);
    }

    /// Allows no more writes, at once.
    pub fn revoke(&self) {
        self.until_ns.store(0, Ordering::SeqCst);
    }

    /// Until when writes are allowed (`None`: never extended, or revoked).
    pub fn until(&self) -> Option<Instant> {
        match self.until_ns.load(Ordering::SeqCst) {
            0 => None,
            ns => Some(self.base + std::time::Duration::from_nanos(ns)),
        }
    }

    /// True while writes are allowed.
    pub fn allows(&self) -> bool {
        (self.base.elapsed().as_nanos() as u64) < self.until_ns.load(Ordering::SeqCst)
    }
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            seal_after: DEFAULT_SEAL_AFTER,
            max_batch: DEFAULT_MAX_BATCH,
            max_transaction_bytes: DEFAULT_MAX_TRANSACTION_BYTES,
            fsync: true,
            fence: None,
            epoch: None,
            feed: None,
        }
    }
}

/// Where a store keeps its files.
#[derive(Clone, Debug)]
pub struct StorePaths {
    pub data_dir: PathBuf,
    pub database: PathBuf,
    pub logs: PathBuf,
}

impl StorePaths {
    pub fn new(data_dir: &Path) -> StorePaths {
        StorePaths {
            data_dir: data_dir.to_path_buf(),
            database: data_dir.join(DATABASE_FILE),
            logs: data_dir.join(LOG_DIR),
        }
    }
}

/// What a committed transaction returns.
#[derive(Debug)]
pub struct Committed<T> {
    /// The transaction's LSN, or the database's LSN when it changed nothing.
    pub lsn: Lsn,
    /// False when the transaction changed nothing and wrote no record.
    pub logged: bool,
    pub value: T,
}

/// A point-in-time view of the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreState {
    pub database_id: DatabaseId,
    /// The last durable and committed LSN.
    pub lsn: Lsn,
    /// Content hash at `lsn`, as maintained from the changesets.
    pub hash: ContentHash,
    pub schema_hash: SchemaHash,
    /// Generation of the current (unsealed) segment.
    pub generation: Generation,
    pub epoch: Epoch,
}

/// Result of `Store::check_content`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContentCheck {
    pub lsn: Lsn,
    /// The hash the log holds at `lsn`.
    pub logged: ContentHash,
    /// The hash a full scan of the database computes.
    pub scanned: ContentHash,
}

/// Where the writer may crash on purpose, for tests that prove the WAL rule
/// (set `LOGSHIP_FAILPOINT` to the name; the process aborts there). Only
/// with the `failpoints` feature, which the tests turn on and a release
/// build leaves out: there the variable is not read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FailPoint {
    None,
    /// After the batch's records are written, before fdatasync.
    AfterAppend,
    /// After fdatasync, before the SQLite COMMIT.
    AfterFsync,
}

impl FailPoint {
    #[cfg(not(feature = "failpoints"))]
    fn from_env() -> FailPoint {
        FailPoint::None
    }

    #[cfg(feature = "failpoints")]
    fn from_env() -> FailPoint {
        match std::env::var("LOGSHIP_FAILPOINT").as_deref() {
            Ok("after-append") => FailPoint::AfterAppend,
            Ok("after-fsync") => FailPoint::AfterFsync,
            _ => FailPoint::None,
        }
    }

    fn hit(self, here: FailPoint) {
        if self == here && here != FailPoint::None {
            eprintln!("logship: failpoint {here:?} reached, aborting");
            std::process::abort();
        }
    }
}

// ---------------------------------------------------------------------------
// The transaction handle given to closures.
// ---------------------------------------------------------------------------

/// Authorizer modes of the write connection.
const MODE_INTERNAL: u8 = 0;
const MODE_USER: u8 = 1;
const MODE_DDL: u8 = 2;

#[derive(Debug, Default)]
struct AuthState {
    mode: AtomicU8,
    /// What the authorizer refused last, for the error message.
    refused: Mutex<Option<Refusal>>,
    /// The write connection's handle (as an address), to ask whether it is
    /// still inside the writer's transaction.
    db: std::sync::atomic::AtomicUsize,
    /// The table a `DROP TABLE` in `Tx::ddl` is dropping (lower case): its
    /// own rows go with it, which SQLite authorizes as a delete.
    dropping: Mutex<Option<String>>,
}

#[derive(Clone, Debug)]
enum Refusal {
    /// A schema statement outside `Tx::ddl`: route it there.
    Ddl(String),
    /// Something never allowed in a logged transaction.
    Forbidden(String),
}

/// Receives the column names, the row's index within its statement, and the row.
pub type RowFn<'f> = dyn FnMut(&[String], usize, &rusqlite::Row<'_>) -> Result<()> + 'f;

/// A store transaction, given to the closure of `Store::transaction`.
/// `conn()` runs queries and DML; schema changes go through `ddl`.
///
/// The closure may run more than once: when a group commit has to be redone
/// (another caller's statement rolled the SQLite transaction back, or this
/// caller changes the schema and must run alone), the store rolls back and
/// runs it again. Keep its side effects inside the transaction.
pub struct Tx<'a> {
    conn: &'a Connection,
    auth: &'a AuthState,
    capture: &'a mut Capture,
    batch: &'a mut BatchCapture,
    /// True when this request runs first in its group commit.
    first: bool,
    /// Set when the request must run again at the head of a new batch.
    requeue: bool,
    /// Set when a schema change failed: the request is rolled back even if
    /// its closure ignores the error (the DDL would otherwise go unlogged).
    poisoned: Option<String>,
    /// `PRAGMA schema_version` right after this request's last schema
    /// change: if it differs when the closure returns, a savepoint rollback
    /// undid a logged schema change, and the request is refused.
    schema_version: Option<i64>,
}

/// What a group commit holds besides the rows its capture saw.
#[derive(Debug, Default)]
struct BatchCapture {
    parts: Vec<DdlPart>,
    ddl: bool,
}

impl std::fmt::Debug for Tx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx")
            .field("ddl", &self.batch.ddl)
            .field("first", &self.first)
            .finish_non_exhaustive()
    }
}

impl<'a> Tx<'a> {
    /// The connection, for queries and INSERT/UPDATE/DELETE. Transaction
    /// control, ATTACH and schema statements are refused here.
    ///
    /// Change nothing about the connection itself through it (db_config
    /// flags such as WRITABLE_SCHEMA, functions or collations that the
    /// schema uses): such changes are not logged, and a copy or a recovery
    /// would not have them.
    pub fn conn(&self) -> &Connection {
        self.conn
    }

    /// Runs one schema statement (CREATE/ALTER/DROP ...) as part of this
    /// transaction; it is logged in a DDL record. Tables the log cannot
    /// replicate faithfully are refused.
    pub fn ddl(&mut self, sql: &str) -> Result<()> {
        if !self.first {
            // Schema changes run alone in their group commit, so that the
            // changes of other callers never share a record with them.
            self.requeue = true;
            return Err(Error::Aborted("schema change: rerun alone".into()));
        }
        if script::split_statements(sql).len() != 1 {
            let what = format!("Tx::ddl takes exactly one schema statement, got {sql:?}");
            self.poisoned = Some(what.clone());
            return Err(Error::Refused { what });
        }
        // Whatever happens next, a failure must roll this request back.
        self.poisoned = Some(format!("schema change {sql:?} did not complete"));
        // The rows changed before the statement, as a part of their own;
        // the statement's own row changes (a table rewrite) are not
        // captured: the record replays the statement.
        let cs = self.capture.changeset()?;
        if !cs.is_empty() {
            self.batch.parts.push(DdlPart::Changeset(cs));
        }
        self.capture.stop();
        *self.auth.dropping.lock().expect("auth lock") = None;
        self.auth.mode.store(MODE_DDL, Ordering::SeqCst);
        let run = self.conn.execute_batch(sql);
        self.auth.mode.store(MODE_USER, Ordering::SeqCst);
        let result = run
            .map_err(|e| self.refusal_or(format!("run {sql}"), e))
            .and_then(|()| check_replicable(self.conn))
            .and_then(|()| {
                self.schema_version = Some(schema_version(self.conn)?);
                Ok(())
            });
        // Capture again either way, with the tables read afresh.
        self.capture.schema_changed();
        self.capture.start();
        self.batch.ddl = true;
        if let Err(e) = &result {
            self.poisoned = Some(format!("schema change {sql:?} failed: {e}"));
        }
        result?;
        self.batch.parts.push(DdlPart::Sql(sql.to_string()));
        self.poisoned = None;
        Ok(())
    }

    /// Runs every statement of `sql` in order: schema statements as DDL,
    /// the others through the connection. `on_row` receives the column names,
    /// the row's index within its statement, and each row of statements that
    /// return rows.
    pub fn execute_script(
        &mut self,
        sql: &str,
        mut on_row: impl FnMut(&[String], usize, &rusqlite::Row<'_>) -> Result<()>,
    ) -> Result<()> {
        for stmt_sql in script::split_statements(sql) {
            self.execute_one(stmt_sql, &mut on_row)?;
        }
        Ok(())
    }

    /// Runs one statement (see `execute_script`).
    pub fn execute_one(&mut self, sql: &str, on_row: &mut RowFn<'_>) -> Result<()> {
        *self.auth.refused.lock().expect("auth lock") = None;
        let prepared = self.conn.prepare(sql);
        let mut stmt = match prepared {
            Ok(s) => s,
            Err(e) => {
                let refusal = self.auth.refused.lock().expect("auth lock").take();
                return match refusal {
                    Some(Refusal::Ddl(_)) => self.ddl(sql),
                    Some(Refusal::Forbidden(what)) => Err(Error::Refused { what }),
                    None => Err(Error::sql(format!("prepare {sql}"), e)),
                };
            }
        };
        let names: Vec<String> = stmt.column_names().map(|s| s.to_string()).collect();
        let mut rows = stmt.raw_query();
        let mut index = 0;
        while let Some(row) = rows
            .next()
            .map_err(|e| self.refusal_or(format!("run {sql}"), e))?
        {
            if !names.is_empty() {
                on_row(&names, index, row)?;
                index += 1;
            }
        }
        Ok(())
    }

    fn refusal_or(&self, op: String, e: rusqlite::Error) -> Error {
        match self.auth.refused.lock().expect("auth lock").take() {
            Some(Refusal::Forbidden(what)) => Error::Refused { what },
            Some(Refusal::Ddl(what)) => Error::Refused {
                what: format!("schema change outside Tx::ddl: {what}"),
            },
            None => Error::sql(op, e),
        }
    }
}

fn authorize(state: &AuthState, ctx: AuthContext<'_>) -> Authorization {
    let mode = state.mode.load(Ordering::SeqCst);
    if mode == MODE_INTERNAL {
        return Authorization::Allow;
    }
    let db = state.db.load(Ordering::SeqCst) as *mut rusqlite::ffi::sqlite3;
    // SAFETY: the address is the write connection's handle, set before the
    // hook was installed; the hook runs on the writer thread while that
    // connection is open, and sqlite3_get_autocommit only reads a flag.
    if !db.is_null() && unsafe { rusqlite::ffi::sqlite3_get_autocommit(db) } != 0 {
        *state.refused.lock().expect("auth lock") = Some(Refusal::Forbidden(
            "an earlier statement rolled back the whole transaction; nothing more can run in it"
                .into(),
        ));
        return Authorization::Deny;
    }
    let forbid = |what: String| {
        *state.refused.lock().expect("auth lock") = Some(Refusal::Forbidden(what));
        Authorization::Deny
    };
    let guard = |t: &str| t.eq_ignore_ascii_case(GUARD_TABLE);
    let schema_table = |t: &str| {
        t.eq_ignore_ascii_case("sqlite_schema") || t.eq_ignore_ascii_case("sqlite_master")
    };
    match ctx.action {
        AuthAction::Transaction { operation } => {
            forbid(format!("{operation:?}: the store owns the transaction"))
        }
        // The guard row is the store's: it tells recovery and replay where
        // the database is. Nothing else may write or reshape it.
        AuthAction::Insert { table_name }
        | AuthAction::Delete { table_name }
        | AuthAction::Update { table_name, .. }
        | AuthAction::AlterTable { table_name, .. }
        | AuthAction::DropTable { table_name }
        | AuthAction::CreateTrigger { table_name, .. }
        | AuthAction::CreateIndex { table_name, .. }
            if guard(table_name) =>
        {
            forbid(format!("{GUARD_TABLE} is the store's guard table"))
        }
        // Schema statements report their own write to sqlite_schema: in user
        // mode that is a schema change to route through `Tx::ddl` (where
        // SQLite itself refuses direct writes to sqlite_schema).
        AuthAction::Insert { table_name }
        | AuthAction::Delete { table_name }
        | AuthAction::Update { table_name, .. }
            if schema_table(table_name) && mode == MODE_USER =>
        {
            *state.refused.lock().expect("auth lock") =
                Some(Refusal::Ddl(format!("a write to {table_name}")));
            Authorization::Deny
        }
        // DROP TABLE deletes the table's own rows, and SQLite asks about
        // DROP VIEW the same way (as a delete); the statement replays as
        // SQL with the same effect.
        AuthAction::DropTable { table_name }
        | AuthAction::DropTempTable { table_name }
        | AuthAction::DropView {
            view_name: table_name,
        }
        | AuthAction::DropTempView {
            view_name: table_name,
        } if mode == MODE_DDL => {
            *state.dropping.lock().expect("auth lock") = Some(table_name.to_ascii_lowercase());
            Authorization::Allow
        }
        AuthAction::Delete { table_name }
            if mode == MODE_DDL
                && state.dropping.lock().expect("auth lock").as_deref()
                    == Some(table_name.to_ascii_lowercase().as_str()) =>
        {
            Authorization::Allow
        }
        // Row changes inside a schema statement would be replayed as SQL
        // text, not as values: refused.
        AuthAction::Insert { table_name }
        | AuthAction::Delete { table_name }
        | AuthAction::Update { table_name, .. }
            if mode == MODE_DDL
                && ctx.accessor.is_none()
                && !table_name.to_ascii_lowercase().starts_with("sqlite_") =>
        {
            forbid("row changes inside Tx::ddl: run them through the connection".into())
        }
        AuthAction::Savepoint { savepoint_name, .. }
            if savepoint_name.eq_ignore_ascii_case(SAVEPOINT) =>
        {
            forbid(format!("savepoint {savepoint_name} is the store's own"))
        }
        AuthAction::Attach { .. } | AuthAction::Detach { .. } => {
            forbid("ATTACH/DETACH: only the main database is logged".into())
        }
        AuthAction::CreateVtable { table_name, .. } => forbid(format!(
            "virtual table {table_name}: the session extension does not capture virtual tables"
        )),
        AuthAction::Pragma {
            pragma_name,
            pragma_value: Some(_),
        } if !READ_PRAGMAS.contains(&pragma_name.to_ascii_lowercase().as_str()) => forbid(format!(
            "PRAGMA {pragma_name} with a value: pragmas are not logged"
        )),
        AuthAction::CreateIndex { .. }
        | AuthAction::CreateTable { .. }
        | AuthAction::CreateTrigger { .. }
        | AuthAction::CreateView { .. }
        | AuthAction::DropIndex { .. }
        | AuthAction::DropTable { .. }
        | AuthAction::DropTrigger { .. }
        | AuthAction::DropView { .. }
        | AuthAction::AlterTable { .. }
            if mode == MODE_USER && ctx.accessor.is_none() =>
        {
            *state.refused.lock().expect("auth lock") =
                Some(Refusal::Ddl(format!("{:?}", ctx.action)));
            Authorization::Deny
        }
        _ => Authorization::Allow,
    }
}

/// The database's schema cookie (it changes with every schema change, and
/// goes back with a rollback of one).
fn schema_version(conn: &Connection) -> Result<i64> {
    conn.query_row("PRAGMA schema_version", [], |r| r.get(0))
        .map_err(|e| Error::sql("read the schema version", e))
}

/// Pragmas that take an argument but only read. (`table_xinfo` must stay:
/// the capture reads table descriptions with it, on the write connection.)
const READ_PRAGMAS: &[&str] = &[
    "table_info",
    "table_xinfo",
    "table_list",
    "index_list",
    "index_info",
    "index_xinfo",
    "foreign_key_list",
    "foreign_key_check",
    "integrity_check",
    "quick_check",
    "function_list",
    "pragma_list",
    "collation_list",
    "database_list",
];

/// Refuses tables the session extension cannot replicate faithfully: no
/// PRIMARY KEY, a PRIMARY KEY column that may be NULL, AUTOINCREMENT.
pub fn check_replicable(conn: &Connection) -> Result<()> {
    let sql_err = |e| Error::sql("check the schema", e);
    let mut stmt = conn
        .prepare(
            "SELECT s.name, s.sql, l.wr, l.strict FROM sqlite_schema s \
             JOIN pragma_table_list l ON l.name = s.name AND l.schema = 'main' \
             WHERE s.type = 'table' AND s.name NOT LIKE 'sqlite\\_%' ESCAPE '\\' \
             ORDER BY s.name",
        )
        .map_err(sql_err)?;
    let tables: Vec<(String, String, bool, bool)> = stmt
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get::<_, Option<String>>(1)?.unwrap_or_default(),
                r.get(2)?,
                r.get(3)?,
            ))
        })
        .map_err(sql_err)?
        .collect::<rusqlite::Result<_>>()
        .map_err(sql_err)?;
    for (table, sql, without_rowid, strict) in tables {
        let refuse = |reason: String| Error::Unreplicable {
            table: table.clone(),
            reason,
        };
        if sql.to_ascii_uppercase().contains("AUTOINCREMENT") {
            return Err(refuse(
                "AUTOINCREMENT keeps its counter in sqlite_sequence, which is not logged; \
                 use INTEGER PRIMARY KEY or an explicit counter table"
                    .into(),
            ));
        }
        let mut cols = conn
            .prepare("SELECT name, type, \"notnull\", pk FROM pragma_table_xinfo(?1) WHERE pk > 0")
            .map_err(sql_err)?;
        let pk: Vec<(String, String, bool)> = cols
            .query_map([&table], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(sql_err)?
            .collect::<rusqlite::Result<_>>()
            .map_err(sql_err)?;
        if pk.is_empty() {
            return Err(refuse(
                "it has no PRIMARY KEY; the session extension ignores such tables".into(),
            ));
        }
        // A rowid alias is a rowid table's single INTEGER key with no index
        // of its own (`INTEGER PRIMARY KEY DESC` gets one and may hold NULL).
        let pk_index: i64 = conn
            .query_row(
                "SELECT count(*) FROM pragma_index_list(?1) WHERE origin = 'pk'",
                [&table],
                |r| r.get(0),
            )
            .map_err(sql_err)?;
        let rowid_alias = !without_rowid
            && pk.len() == 1
            && pk[0].1.eq_ignore_ascii_case("INTEGER")
            && pk_index == 0;
        if !without_rowid
            && !rowid_alias
            && let Some((col, _, _)) = pk.iter().find(|(_, _, notnull)| !notnull)
        {
            {
                return Err(refuse(format!(
                    "primary key column {col:?} may be NULL, and rows with a NULL key are not \
                     captured; declare it NOT NULL"
                )));
            }
        }
        // A key is found by its bytes in a changeset, but compared by its
        // collation and affinity in SQLite: where two different values are
        // one key ('a' and 'A' under NOCASE, 1 and 1.0 in an untyped
        // column), a copy cannot apply the changes.
        for (col, ty, _) in &pk {
            if !rowid_alias && blob_affinity(ty) && !(strict && ty.eq_ignore_ascii_case("BLOB")) {
                return Err(refuse(format!(
                    "primary key column {col:?} has no type (or BLOB): 1 and 1.0 would be one \
                     key with two spellings; declare it INTEGER, TEXT, REAL or NUMERIC (or \
                     BLOB in a STRICT table)"
                )));
            }
        }
        let mut colls = conn
            .prepare(
                "SELECT x.name, x.coll FROM pragma_index_list(?1) l, pragma_index_xinfo(l.name) x \
                 WHERE l.origin = 'pk' AND x.key = 1 AND x.cid >= 0",
            )
            .map_err(sql_err)?;
        let colls: Vec<(String, String)> = colls
            .query_map([&table], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(sql_err)?
            .collect::<rusqlite::Result<_>>()
            .map_err(sql_err)?;
        if let Some((col, coll)) = colls
            .iter()
            .find(|(_, coll)| !coll.eq_ignore_ascii_case("BINARY"))
        {
            return Err(refuse(format!(
                "primary key column {col:?} compares with COLLATE {coll}: values that differ \
                 only by it would be one key with two spellings; use the default (BINARY) \
                 collation for key columns"
            )));
        }
    }
    Ok(())
}

/// True when a column of declared type `ty` has BLOB affinity (SQLite's
/// rules: none of INT, CHAR/CLOB/TEXT, REAL/FLOA/DOUB, and either no type
/// or one that names BLOB).
fn blob_affinity(ty: &str) -> bool {
    let t = ty.to_ascii_uppercase();
    if t.contains("INT") || ["CHAR", "CLOB", "TEXT"].iter().any(|k| t.contains(k)) {
        return false;
    }
    t.trim().is_empty() || t.contains("BLOB")
}

// ---------------------------------------------------------------------------
// The store and its writer thread.
// ---------------------------------------------------------------------------

/// One caller's transaction, queued for the writer. `run` may be called
/// more than once (see `Tx`); `finish` answers the caller exactly once.
trait Request: Send {
    /// Runs the closure; false when it failed.
    fn run(&mut self, tx: &mut Tx<'_>) -> bool;
    /// Answers the caller: `Ok(lsn, logged)` once durable, or the batch's
    /// error; a failed closure is answered with its own error.
    fn finish(self: Box<Self>, r: Result<(Lsn, bool)>);
}

struct Req<T, F> {
    f: F,
    last: Option<Result<T>>,
    reply: oneshot::Sender<Result<Committed<T>>>,
}

impl<T, F> Request for Req<T, F>
where
    T: Send + 'static,
    F: FnMut(&mut Tx<'_>) -> Result<T> + Send + 'static,
{
    fn run(&mut self, tx: &mut Tx<'_>) -> bool {
        let f = &mut self.f;
        let r = catch_unwind(AssertUnwindSafe(|| f(tx)))
            .unwrap_or_else(|_| Err(Error::Aborted("the transaction closure panicked".into())));
        let ok = r.is_ok();
        self.last = Some(r);
        ok
    }

    fn finish(self: Box<Self>, r: Result<(Lsn, bool)>) {
        let answer = match (r, self.last) {
            (Err(e), _) => Err(e),
            (Ok(_), Some(Err(e))) => Err(e),
            (Ok((lsn, logged)), Some(Ok(value))) => Ok(Committed { lsn, logged, value }),
            (Ok(_), None) => Err(Error::Stopped("transaction was never run".into())),
        };
        let _ = self.reply.send(answer);
    }
}

type Job = Box<dyn Request>;

/// How a job's run ended.
enum Ran {
    Ok,
    /// The closure returned an error; the caller gets it.
    Failed,
    /// The store refused what the closure did (it ignored the error).
    Refused(Error),
}
/// Jobs with the answer each gets.
type Answers = Vec<(Job, Result<(Lsn, bool)>)>;

enum Msg {
    Tx(Job),
    Seal(oneshot::Sender<Result<Option<Generation>>>),
    Check(oneshot::Sender<Result<ContentCheck>>),
    Checkpoint(oneshot::Sender<Result<Lsn>>),
    Freeze(String, oneshot::Sender<Result<Lsn>>),
    Shutdown,
}

#[derive(Debug, Default)]
struct Counters {
    submitted: AtomicU64,
    syncs: AtomicU64,
    records: AtomicU64,
    batches: AtomicU64,
    fsync: crate::metrics::Histogram,
}

/// Counters since the store was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Transactions handed to the writer.
    pub submitted: u64,
    /// fdatasyncs of the log for group commits.
    pub syncs: u64,
    /// Records written.
    pub records: u64,
    /// Group commits run (including read-only ones).
    pub batches: u64,
}

/// How long a lone caller polls for its answer before it sleeps.
const CALLER_SPIN: Duration = Duration::from_micros(500);

#[derive(Debug)]
struct Shared {
    /// Callers waiting in `transaction`.
    waiting: std::sync::atomic::AtomicUsize,
    state: Mutex<StoreState>,
    stopped: Mutex<Option<String>>,
    counters: Counters,
}

/// A logged SQLite database. Cheap to share across threads (`&Store` is
/// `Sync`); dropping it stops the writer after the work already queued.
#[derive(Debug)]
pub struct Store {
    paths: StorePaths,
    sender: SyncSender<Msg>,
    writer: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
    _lock: File,
}

impl Store {
    /// Creates a data directory with a new database and its log. Returns the
    /// new database id.
    pub fn init(data_dir: &Path) -> Result<DatabaseId> {
        let paths = StorePaths::new(data_dir);
        fs::create_dir_all(data_dir)
            .map_err(|e| Error::io("create data directory", data_dir, e))?;
        if paths.database.exists() {
            return Err(Error::AlreadyInitialized {
                path: paths.database,
            });
        }
        let id = DatabaseId::random().map_err(|e| Error::io("read", "/dev/urandom", e))?;
        let conn =
            Connection::open(&paths.database).map_err(|e| Error::sql("create database", e))?;
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL;
             BEGIN;
             CREATE TABLE {GUARD_TABLE} (
               id INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
               lsn INTEGER NOT NULL,
               database_id BLOB NOT NULL
             );
             COMMIT;"
        ))
        .map_err(|e| Error::sql("create the guard table", e))?;
        conn.execute(
            &format!("INSERT INTO {GUARD_TABLE} (id, lsn, database_id) VALUES (1, 0, ?1)"),
            [&id.0[..]],
        )
        .map_err(|e| Error::sql("write the guard row", e))?;
        let schema = hash::schema_hash(&conn)?;
        drop(conn);
        LogWriter::create(&paths.logs, id, Epoch(1), schema)?;
        log::sync_dir(data_dir)?;
        Ok(id)
    }

    /// Opens the store in `data_dir`, recovering after a crash: a torn tail
    /// of the current segment is truncated, and every durable record past
    /// the guard LSN is redone.
    pub fn open(data_dir: &Path, opts: StoreOptions) -> Result<Store> {
        let paths = StorePaths::new(data_dir);
        if !paths.database.exists() {
            return Err(Error::NotInitialized {
                path: data_dir.to_path_buf(),
            });
        }
        if data_dir.join(PASSIVE_MARKER).exists() {
            return Err(Error::PassiveCopy {
                path: data_dir.to_path_buf(),
                marker: PASSIVE_MARKER,
            });
        }
        let lock = lock_data_dir(data_dir)?;
        let mut conn = Connection::open_with_flags(
            &paths.database,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| Error::sql(format!("open {}", paths.database.display()), e))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;",
        )
        .map_err(|e| Error::sql("configure the database", e))?;
        let (db_lsn, database_id) = apply::read_guard(&conn).map_err(|e| match e {
            Error::Sql { .. } => Error::NotInitialized {
                path: data_dir.to_path_buf(),
            },
            e => e,
        })?;
        let mut log = LogWriter::open(&paths.logs, database_id, db_lsn)?;
        let end = log.end().clone();
        if db_lsn > end.lsn {
            return Err(Error::DatabaseAhead {
                path: paths.database.clone(),
                db: db_lsn,
                log: end.lsn,
            });
        }
        if db_lsn < end.lsn {
            recover(&conn, &paths.logs, database_id, db_lsn, end.lsn)?;
        }
        check_replicable(&conn)?;
        let auth = Arc::new(AuthState::default());
        // SAFETY: only the address is kept; see `authorize`.
        auth.db
            .store(unsafe { conn.handle() } as usize, Ordering::SeqCst);
        let auth_hook = auth.clone();
        conn.authorizer(Some(move |ctx: AuthContext<'_>| authorize(&auth_hook, ctx)))
            .map_err(|e| Error::sql("install the authorizer", e))?;
        // Only the writer commits. A closure whose statement ended the SQLite
        // transaction (INSERT OR ROLLBACK) runs its next statements in
        // autocommit mode; this veto turns each of their commits into a
        // rollback, so nothing reaches the database without its record.
        let auth_commit = auth.clone();
        conn.commit_hook(Some(move || {
            auth_commit.mode.load(Ordering::SeqCst) != MODE_INTERNAL
        }))
        .map_err(|e| Error::sql("install the commit hook", e))?;
        log.set_epoch(end.epoch);
        if let Some(epoch) = opts.epoch {
            if epoch < end.epoch {
                return Err(Error::EpochBehind {
                    path: paths.logs.clone(),
                    epoch,
                    current: end.epoch,
                });
            }
            if epoch > end.epoch {
                log.begin_epoch(epoch)?;
            }
        }
        if let Some(feed) = &opts.feed {
            log.set_feed(feed.clone());
        }
        let end = log.end().clone();
        let state = StoreState {
            database_id,
            lsn: end.lsn,
            hash: end.hash,
            schema_hash: end.schema_hash,
            generation: end.generation,
            epoch: end.epoch,
        };
        let shared = Arc::new(Shared {
            waiting: Default::default(),
            state: Mutex::new(state),
            stopped: Mutex::new(None),
            counters: Counters::default(),
        });
        let (sender, receiver) = sync_channel(REQUEST_QUEUE);
        // Everything that can fail comes before the capture: once it exists,
        // it must be dropped before `conn` (the field order of `Writer`).
        let replier =
            Replier::start().map_err(|e| Error::io("start the replier thread", data_dir, e))?;
        let guard = IntUpdate::new(&conn, GUARD_TABLE, "lsn")?;
        let capture = Capture::new(&conn, &[GUARD_TABLE]);
        let writer = Writer {
            capture,
            guard,
            conn,
            log,
            auth,
            opts,
            shared: shared.clone(),
            failpoint: FailPoint::from_env(),
            replier,
            lsn: end.lsn,
            hash: end.hash,
            schema_hash: end.schema_hash,
            frozen: None,
            solo: 0,
        };
        let handle = std::thread::Builder::new()
            .name("logship-writer".into())
            .spawn(move || writer.run(receiver))
            .map_err(|e| Error::io("start the writer thread", data_dir, e))?;
        Ok(Store {
            paths,
            sender,
            writer: Some(handle),
            shared,
            _lock: lock,
        })
    }

    pub fn paths(&self) -> &StorePaths {
        &self.paths
    }

    /// The last committed LSN, its hashes and the current generation.
    pub fn state(&self) -> StoreState {
        self.shared.state.lock().expect("state lock").clone()
    }

    /// Counters since the store was opened.
    pub fn stats(&self) -> StoreStats {
        let c = &self.shared.counters;
        StoreStats {
            submitted: c.submitted.load(Ordering::Relaxed),
            syncs: c.syncs.load(Ordering::Relaxed),
            records: c.records.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
        }
    }

    /// Runs `f` as one logged transaction and waits until its record is
    /// durable and SQLite has committed. If `f` fails, everything it did is
    /// rolled back and nothing of it is logged. Concurrent callers share a
    /// group commit: one record, one LSN and one fdatasync for the batch.
    pub fn transaction<T, F>(&self, f: F) -> Result<Committed<T>>
    where
        T: Send + 'static,
        F: FnMut(&mut Tx<'_>) -> Result<T> + Send + 'static,
    {
        let mut rx = self.submit(f)?;
        // A lone caller polls for its answer a little before it sleeps (see
        // WRITER_SPIN); with company it sleeps at once, not to steal the
        // writer's core.
        if self.shared.waiting.fetch_add(1, Ordering::Relaxed) == 0 {
            let until = Instant::now() + CALLER_SPIN;
            while Instant::now() < until {
                match rx.try_recv() {
                    Ok(r) => {
                        self.shared.waiting.fetch_sub(1, Ordering::Relaxed);
                        return r;
                    }
                    Err(oneshot::error::TryRecvError::Empty) => std::hint::spin_loop(),
                    Err(oneshot::error::TryRecvError::Closed) => break,
                }
            }
        }
        let r = rx.blocking_recv();
        self.shared.waiting.fetch_sub(1, Ordering::Relaxed);
        r.map_err(|_| Error::Stopped(self.stop_reason()))?
    }

    /// Like `transaction`, for async callers.
    pub async fn transaction_async<T, F>(&self, f: F) -> Result<Committed<T>>
    where
        T: Send + 'static,
        F: FnMut(&mut Tx<'_>) -> Result<T> + Send + 'static,
    {
        let rx = self.submit(f)?;
        rx.await.map_err(|_| Error::Stopped(self.stop_reason()))?
    }

    fn submit<T, F>(&self, f: F) -> Result<oneshot::Receiver<Result<Committed<T>>>>
    where
        T: Send + 'static,
        F: FnMut(&mut Tx<'_>) -> Result<T> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel::<Result<Committed<T>>>();
        let job: Job = Box::new(Req {
            f,
            last: None,
            reply,
        });
        self.sender
            .send(Msg::Tx(job))
            .map_err(|_| Error::Stopped(self.stop_reason()))?;
        self.shared
            .counters
            .submitted
            .fetch_add(1, Ordering::Relaxed);
        Ok(rx)
    }

    /// Seals the current segment now if it holds any record.
    pub fn seal(&self) -> Result<Option<Generation>> {
        self.ask(Msg::Seal)
    }

    /// Stops intake for a planned move: seals the current segment and
    /// refuses every transaction submitted after this call (with `Fenced`
    /// and `reason`); those submitted before are committed first. Returns
    /// the last LSN, which the sealed segments now hold.
    pub fn freeze(&self, reason: &str) -> Result<Lsn> {
        let reason = reason.to_string();
        self.ask(move |reply| Msg::Freeze(reason, reply))
    }

    /// The latency of the log's fdatasyncs since the store was opened.
    pub fn fsync_latency(&self) -> crate::metrics::Snapshot {
        self.shared.counters.fsync.snapshot()
    }

    /// Recomputes the content hash by a full scan and returns it beside the
    /// hash the log holds at the same LSN.
    pub fn check_content(&self) -> Result<ContentCheck> {
        self.ask(Msg::Check)
    }

    /// Makes everything committed durable in SQLite itself (a full WAL
    /// checkpoint: SQLite runs at synchronous=NORMAL because the log is the
    /// durability point) and returns the LSN that is now durable without the
    /// log. Truncation calls this before it deletes a segment.
    pub fn checkpoint(&self) -> Result<Lsn> {
        self.ask(Msg::Checkpoint)
    }

    /// Sends the writer a request that carries its own reply channel, and
    /// waits for the reply.
    fn ask<T>(&self, msg: impl FnOnce(oneshot::Sender<Result<T>>) -> Msg) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.sender
            .send(msg(tx))
            .map_err(|_| Error::Stopped(self.stop_reason()))?;
        rx.blocking_recv()
            .map_err(|_| Error::Stopped(self.stop_reason()))?
    }

    /// Opens a read-only connection to the database.
    pub fn reader(&self) -> Result<Connection> {
        open_read_only(&self.paths.database)
    }

    /// Why the writer stopped, once it has (a fatal error, or the fence).
    pub fn stopped(&self) -> Option<String> {
        self.shared.stopped.lock().expect("stopped lock").clone()
    }

    fn stop_reason(&self) -> String {
        self.shared
            .stopped
            .lock()
            .expect("stopped lock")
            .clone()
            .unwrap_or_else(|| "the store is closed".into())
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = self.sender.send(Msg::Shutdown);
        if let Some(h) = self.writer.take() {
            let _ = h.join();
        }
    }
}

/// Opens a database read-only (for readers on any node).
pub fn open_read_only(path: &Path) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| Error::sql(format!("open {} read-only", path.display()), e))?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(|e| Error::sql("set busy timeout", e))?;
    Ok(conn)
}

/// Takes the data directory's lock (one writing process at a time); held
/// until the returned file is dropped.
pub fn lock_data_dir(data_dir: &Path) -> Result<File> {
    lock_file(&data_dir.join(LOCK_FILE), data_dir)
}

/// Takes the exclusive lock `path` (an `flock`, released when the process
/// dies) and writes our pid in it; `Error::Locked` names the holder's pid
/// and `what`.
pub fn lock_file(path: &Path, what: &Path) -> Result<File> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| Error::io("open lock file", path, e))?;
    // SAFETY: flock on a valid, open descriptor owned by `file`.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let mut pid = String::new();
        let _ = file.read_to_string(&mut pid);
        return Err(Error::Locked {
            path: what.to_path_buf(),
            pid: pid.trim().to_string(),
        });
    }
    file.set_len(0)
        .map_err(|e| Error::io("truncate lock file", path, e))?;
    write!(file, "{}", std::process::id()).map_err(|e| Error::io("write lock file", path, e))?;
    Ok(file)
}

/// Redoes the durable records after `from` (the guard LSN) up to `to`.
fn recover(conn: &Connection, logs: &Path, db: DatabaseId, from: Lsn, to: Lsn) -> Result<()> {
    tracing::info!(from = %from, to = %to, "recovery: redoing durable records past the database's LSN");
    changeset::set_triggers_enabled(conn, false)?;
    // The content hash is checked after every redone record: a redo that
    // does not reproduce what the log recorded stops recovery.
    let mut hash = log::hash_at(logs, from)?;
    let result = (|| {
        let mut in_batch = 0;
        conn.execute_batch("BEGIN IMMEDIATE")
            .map_err(|e| Error::sql("begin recovery", e))?;
        log::for_each_record(logs, Some(db), from, |lsn, rec| {
            apply::apply_record(conn, lsn, &rec)?;
            if let Some(before) = hash {
                let after = match &rec.body {
                    Body::Changeset(cs) => hash::apply_changeset(before, cs)?,
                    Body::Ddl { .. } => hash::full_scan(conn)?,
                };
                if after != rec.hash {
                    return Err(Error::Conflict {
                        lsn,
                        table: String::new(),
                        conflict: "CONTENT HASH".into(),
                        detail: format!(
                            "the log records {}, redoing the record gives {after}",
                            rec.hash
                        ),
                    });
                }
                hash = Some(after);
            }
            in_batch += 1;
            if in_batch == RECOVERY_BATCH {
                conn.execute_batch("COMMIT; BEGIN IMMEDIATE")
                    .map_err(|e| Error::sql("commit recovery batch", e))?;
                in_batch = 0;
            }
            Ok(())
        })?;
        conn.execute_batch("COMMIT")
            .map_err(|e| Error::sql("commit recovery", e))
    })();
    if result.is_err() && !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    changeset::set_triggers_enabled(conn, true)?;
    result?;
    let (now, _) = apply::read_guard(conn)?;
    if now != to {
        return Err(Error::MissingLog {
            dir: logs.to_path_buf(),
            after: now,
            first: to,
        });
    }
    tracing::info!(lsn = %now, "recovery complete");
    Ok(())
}

/// How long the writer polls for the next request before it sleeps: a lone
/// caller sends its next transaction within microseconds of its answer,
/// and a sleeping thread's wake-up costs tens of them on a virtual machine.
const WRITER_SPIN: Duration = Duration::from_micros(200);

/// The next message: polled for `WRITER_SPIN`, then waited for until
/// `deadline` (for ever without one).
fn spin_then_recv(
    rx: &Receiver<Msg>,
    deadline: Option<Instant>,
) -> std::result::Result<Msg, RecvTimeoutError> {
    let until = Instant::now() + WRITER_SPIN;
    while Instant::now() < until.min(deadline.unwrap_or(until)) {
        match rx.try_recv() {
            Ok(m) => return Ok(m),
            Err(TryRecvError::Empty) => std::hint::spin_loop(),
            Err(TryRecvError::Disconnected) => return Err(RecvTimeoutError::Disconnected),
        }
    }
    match deadline {
        Some(d) => rx.recv_timeout(d.saturating_duration_since(Instant::now())),
        None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
    }
}

struct Writer {
    /// Declared before `conn`: it is dropped first (it holds statements
    /// and the hook of the connection).
    capture: Capture,
    /// Encodes the guard row's change, which the writer makes itself.
    guard: IntUpdate,
    conn: Connection,
    log: LogWriter,
    auth: Arc<AuthState>,
    opts: StoreOptions,
    shared: Arc<Shared>,
    failpoint: FailPoint,
    /// Answers callers of large batches off the writer's path.
    replier: Replier,
    /// Last committed LSN and its hashes.
    lsn: Lsn,
    hash: ContentHash,
    schema_hash: SchemaHash,
    /// Set by `freeze`: every later transaction is refused with this reason.
    frozen: Option<String>,
    /// Batches still to run with one job each: after a batch too large for
    /// one record, its jobs run again alone (each may fit).
    solo: usize,
}

/// A thread that wakes callers, so that a batch of many callers does not
/// pay their wake-ups on the writer thread.
struct Replier {
    sender: Option<SyncSender<(Answers, Option<Confirm>)>>,
    handle: Option<JoinHandle<()>>,
}

/// Answers that wait, under synchronous commit, until a copy holds `lsn`.
struct Confirm {
    feed: Arc<crate::block::Feed>,
    lsn: Lsn,
}

/// Answers callers, once their record is confirmed when that is asked for:
/// a record the store stopped before confirming is answered as stopped.
fn finish_all(answers: Answers, confirm: Option<Confirm>) {
    let unconfirmed = confirm.and_then(|c| c.feed.confirm(c.lsn).err());
    for (job, r) in answers {
        match (&unconfirmed, r) {
            (Some(why), Ok((_, true))) => job.finish(Err(Error::Stopped(why.clone()))),
            (_, r) => job.finish(r),
        }
    }
}

impl Replier {
    fn start() -> std::io::Result<Replier> {
        let (sender, rx) = sync_channel::<(Answers, Option<Confirm>)>(64);
        let handle = std::thread::Builder::new()
            .name("logship-replier".into())
            .spawn(move || {
                for (batch, confirm) in rx {
                    finish_all(batch, confirm);
                }
            })?;
        Ok(Replier {
            sender: Some(sender),
            handle: Some(handle),
        })
    }

    /// Answers, after `confirm` when given (on the replier's thread, so
    /// that the writer goes on with the next batch meanwhile).
    fn answer_confirmed(&self, answers: Answers, confirm: Option<Confirm>) {
        if confirm.is_none() {
            return self.answer(answers);
        }
        if let Some(s) = &self.sender
            && let Err(e) = s.send((answers, confirm))
        {
            let (answers, confirm) = e.0;
            finish_all(answers, confirm);
        }
    }

    fn answer(&self, mut answers: Answers) {
        if answers.len() <= 1 {
            // One caller: answering it here is faster than a hand-off.
            for (job, r) in answers.drain(..) {
                job.finish(r);
            }
            return;
        }
        if let Some(s) = &self.sender
            && let Err(e) = s.send((answers, None))
        {
            finish_all(e.0.0, None);
        }
    }
}

impl Drop for Replier {
    fn drop(&mut self) {
        self.sender.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Block-mode senders end with the writer.
        if let Some(f) = &self.opts.feed {
            f.close();
        }
    }
}

impl Writer {
    fn run(mut self, rx: Receiver<Msg>) {
        let mut deferred: Option<Msg> = None;
        let mut queue: VecDeque<Job> = VecDeque::new();
        loop {
            if queue.is_empty() {
                let msg = match deferred.take() {
                    Some(m) => m,
                    None => match spin_then_recv(&rx, self.seal_deadline()) {
                        Ok(m) => m,
                        Err(RecvTimeoutError::Timeout) => {
                            if let Err(e) = self.seal_if_due() {
                                return self.stop(e, rx, queue);
                            }
                            continue;
                        }
                        Err(RecvTimeoutError::Disconnected) => return,
                    },
                };
                match msg {
                    Msg::Tx(job) => queue.push_back(job),
                    Msg::Seal(reply) => {
                        let r = self.log.seal();
                        let failed = r.as_ref().err().map(|e| e.to_string());
                        self.publish();
                        let _ = reply.send(r);
                        if let Some(e) = failed {
                            return self.stop(Error::Stopped(e), rx, queue);
                        }
                        continue;
                    }
                    Msg::Check(reply) => {
                        let r = hash::full_scan(&self.conn).map(|scanned| ContentCheck {
                            lsn: self.lsn,
                            logged: self.hash,
                            scanned,
                        });
                        let _ = reply.send(r);
                        continue;
                    }
                    Msg::Freeze(reason, reply) => {
                        let r = self.log.seal().map(|_| self.lsn);
                        let failed = r.as_ref().err().map(|e| e.to_string());
                        self.publish();
                        self.frozen = Some(reason);
                        let _ = reply.send(r);
                        if let Some(e) = failed {
                            return self.stop(Error::Stopped(e), rx, queue);
                        }
                        continue;
                    }
                    Msg::Checkpoint(reply) => {
                        self.internal_mode();
                        let r = self
                            .conn
                            .query_row("PRAGMA wal_checkpoint(FULL)", [], |r| r.get::<_, i64>(0))
                            .map_err(|e| Error::sql("checkpoint", e))
                            .and_then(|busy| {
                                if busy != 0 {
                                    Err(Error::Stopped(
                                        "a reader kept the checkpoint from completing".into(),
                                    ))
                                } else {
                                    Ok(self.lsn)
                                }
                            });
                        let _ = reply.send(r);
                        continue;
                    }
                    Msg::Shutdown => return,
                }
            }
            // Gather what else is waiting, up to a batch.
            while deferred.is_none() && queue.len() < self.opts.max_batch.max(1) {
                match rx.try_recv() {
                    Ok(Msg::Tx(j)) => queue.push_back(j),
                    Ok(other) => deferred = Some(other),
                    Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => break,
                }
            }
            if let Some(reason) = self.fenced() {
                return self.stop(Error::Fenced(reason), rx, queue);
            }
            if let Some(reason) = &self.frozen {
                for job in queue.drain(..) {
                    job.finish(Err(Error::Fenced(reason.clone())));
                }
                continue;
            }
            let take = queue.len().min(self.opts.max_batch.max(1));
            let batch: VecDeque<Job> = queue.drain(..take).collect();
            match self.run_batch(batch) {
                Ok(rest) => {
                    for job in rest.into_iter().rev() {
                        queue.push_front(job);
                    }
                }
                Err(e) => return self.stop(e, rx, queue),
            }
            if let Err(e) = self.seal_if_due() {
                return self.stop(e, rx, queue);
            }
        }
    }

    /// Why writes are no longer allowed, if they are not.
    fn fenced(&self) -> Option<String> {
        match &self.opts.fence {
            Some(f) if !f.allows() => Some("the quorum lease ran out".into()),
            _ => None,
        }
    }

    fn seal_deadline(&self) -> Option<Instant> {
        self.log.oldest_unsealed().map(|t| t + self.opts.seal_after)
    }

    fn seal_if_due(&mut self) -> Result<()> {
        if self.seal_deadline().is_some_and(|d| d <= Instant::now()) {
            self.log.seal()?;
            self.publish();
        }
        Ok(())
    }

    fn publish(&self) {
        let mut s = self.shared.state.lock().expect("state lock");
        s.lsn = self.lsn;
        s.hash = self.hash;
        s.schema_hash = self.schema_hash;
        s.generation = self.log.end().generation;
        s.epoch = self.log.end().epoch;
    }

    /// A fatal error: answer everything queued with it and exit. The
    /// SQLite transaction, if any, is rolled back when the connection
    /// closes; what the log holds durably is redone at the next open.
    fn stop(self, e: Error, rx: Receiver<Msg>, queue: VecDeque<Job>) {
        let fenced = matches!(e, Error::Fenced(_));
        let reason = e.to_string();
        if fenced {
            tracing::warn!(error = %reason, "store writer stopped");
        } else {
            tracing::error!(error = %reason, "store writer stopped; reopen the store to recover");
        }
        *self.shared.stopped.lock().expect("stopped lock") = Some(reason.clone());
        drop(self);
        let err = || {
            if fenced {
                Error::Fenced(reason.clone())
            } else {
                Error::Stopped(reason.clone())
            }
        };
        for job in queue {
            job.finish(Err(err()));
        }
        while let Ok(m) = rx.try_recv() {
            match m {
                Msg::Tx(job) => job.finish(Err(err())),
                Msg::Seal(r) => {
                    let _ = r.send(Err(err()));
                }
                Msg::Check(r) => {
                    let _ = r.send(Err(err()));
                }
                Msg::Checkpoint(r) => {
                    let _ = r.send(Err(err()));
                }
                Msg::Freeze(_, r) => {
                    let _ = r.send(Err(err()));
                }
                Msg::Shutdown => {}
            }
        }
    }

    fn internal_mode(&self) {
        self.auth.mode.store(MODE_INTERNAL, Ordering::SeqCst);
    }

    /// Runs an internal statement (prepared once, cached).
    fn internal(&self, sql: &str) -> Result<()> {
        self.auth.mode.store(MODE_INTERNAL, Ordering::SeqCst);
        self.conn
            .prepare_cached(sql)
            .and_then(|mut s| s.execute([]).map(|_| ()))
            .map_err(|e| Error::sql(sql.to_string(), e))
    }

    /// Runs one group commit: every job in its own savepoint, all sharing
    /// one capture, one record, one fdatasync and one SQLite COMMIT. An
    /// `Err` is fatal for the writer.
    /// Returns the jobs that did not fit (they wait for the next batch).
    fn run_batch(&mut self, mut jobs: VecDeque<Job>) -> Result<VecDeque<Job>> {
        'batch: loop {
            self.internal("BEGIN IMMEDIATE")?;
            self.capture.start();
            let mut capture = BatchCapture {
                parts: Vec::new(),
                ddl: false,
            };
            // Jobs whose closure succeeded, and those that failed (answered
            // after the batch, like the others, to keep one path).
            let mut ran: Vec<(Job, Ran)> = Vec::new();
            while let Some(mut job) = jobs.pop_front() {
                self.internal(&format!("SAVEPOINT {SAVEPOINT}"))?;
                let parts_before = capture.parts.len();
                let mut tx = Tx {
                    conn: &self.conn,
                    auth: &self.auth,
                    capture: &mut self.capture,
                    batch: &mut capture,
                    first: ran.is_empty(),
                    requeue: false,
                    poisoned: None,
                    schema_version: None,
                };
                self.auth.mode.store(MODE_USER, Ordering::SeqCst);
                let closure_ok = job.run(&mut tx);
                self.auth.mode.store(MODE_INTERNAL, Ordering::SeqCst);
                if let Some(v) = tx.schema_version
                    && tx.poisoned.is_none()
                    && !self.conn.is_autocommit()
                    && schema_version(&self.conn)? != v
                {
                    tx.poisoned = Some(
                        "a savepoint rollback undid a schema change of this transaction; \
                         run the schema change without rolling it back"
                            .into(),
                    );
                }
                let requeue = tx.requeue;
                let outcome = match (closure_ok, tx.poisoned.take()) {
                    (_, Some(what)) => Ran::Refused(Error::Refused { what }),
                    (true, None) => Ran::Ok,
                    (false, None) => Ran::Failed,
                };
                let ok = matches!(outcome, Ran::Ok);
                // Close this job's savepoint. If the SQLite transaction is no
                // longer the writer's (a statement such as INSERT OR ROLLBACK
                // ended it), the batch is broken.
                let closed = if self.conn.is_autocommit() {
                    Err(())
                } else if ok && !requeue {
                    self.internal(&format!("RELEASE {SAVEPOINT}"))
                        .map_err(|_| ())
                } else {
                    self.internal(&format!("ROLLBACK TO {SAVEPOINT}"))
                        .and_then(|()| self.internal(&format!("RELEASE {SAVEPOINT}")))
                        .map_err(|_| ())
                };
                if closed.is_err() {
                    // The work of every earlier job of this batch is gone with
                    // the transaction: run those again.
                    if !self.conn.is_autocommit() {
                        self.internal("ROLLBACK")?;
                    }
                    if capture.ddl {
                        self.capture.schema_changed();
                    }
                    drop(capture);
                    let culprit_error = if ok {
                        Err(Error::Aborted(
                            "a statement rolled back the whole transaction".into(),
                        ))
                    } else {
                        Ok((self.lsn, false))
                    };
                    self.shared.counters.batches.fetch_add(1, Ordering::Relaxed);
                    job.finish(culprit_error);
                    self.run_again(ran, &mut jobs);
                    continue 'batch;
                }
                if requeue {
                    // A schema change that must run first in its own batch.
                    capture.parts.truncate(parts_before);
                    jobs.push_front(job);
                    break;
                }
                if !ok && capture.ddl && ran.is_empty() {
                    // The failed job was the batch's schema change: its DDL
                    // and parts are rolled back with it.
                    capture.parts.clear();
                    capture.ddl = false;
                    self.capture.schema_changed();
                    self.capture.start();
                }
                let was_ddl = capture.ddl;
                ran.push((job, outcome));
                if was_ddl {
                    // Nothing shares a record with a schema change.
                    break;
                }
                if self.solo > 0 {
                    self.solo -= 1;
                    break;
                }
            }
            let capture_ddl = capture.ddl;
            let built = self.build_record(capture);
            let (record, fail_all) = match built {
                Ok(r) => (r, None),
                Err(e) => (None, Some(e)),
            };
            if let Some(e) = fail_all {
                // The batch's record could not be built (too large, ...):
                // nothing of it is committed.
                self.internal("ROLLBACK")?;
                if capture_ddl {
                    self.capture.schema_changed();
                }
                let oks = ran.iter().filter(|(_, r)| matches!(r, Ran::Ok)).count();
                if matches!(e, Error::TooLarge { .. }) && oks > 1 {
                    // Together too large, each perhaps not: run them again,
                    // one per record.
                    self.solo = oks;
                    self.run_again(ran, &mut jobs);
                    continue 'batch;
                }
                let reason = e.to_string();
                let answers = ran
                    .into_iter()
                    .map(|(j, ran)| match ran {
                        Ran::Failed => (j, Ok((self.lsn, false))),
                        Ran::Refused(e) => (j, Err(e)),
                        Ran::Ok => (j, Err(Error::Aborted(reason.clone()))),
                    })
                    .collect();
                self.replier.answer(answers);
                return Ok(jobs);
            }
            self.commit_batch(ran, record)?;
            return Ok(jobs);
        }
    }

    /// After a batch was rolled back: the jobs that succeeded go back to
    /// the front of the queue, in order, to run again; the others are
    /// answered (a job that failed on its own: its answer is its error).
    fn run_again(&self, ran: Vec<(Job, Ran)>, jobs: &mut VecDeque<Job>) {
        let mut again = Vec::new();
        for (j, ran) in ran {
            match ran {
                Ran::Ok => again.push(j),
                Ran::Failed => j.finish(Ok((self.lsn, false))),
                Ran::Refused(e) => j.finish(Err(e)),
            }
        }
        for j in again.into_iter().rev() {
            jobs.push_front(j);
        }
    }

    /// Finishes a batch's capture: changeset, guard row, hash. `None` when
    /// the batch changed nothing (then the guard row is left alone).
    #[allow(clippy::type_complexity)] // a private tuple, built and consumed once
    fn build_record(
        &mut self,
        mut capture: BatchCapture,
    ) -> Result<Option<(Lsn, RecordKind, Vec<u8>, ContentHash, SchemaHash)>> {
        let lsn = self.lsn.next();
        let captured = self.capture.changeset();
        self.capture.stop();
        let mut cs = captured?;
        let (new_hash, changes) = hash::apply_changeset_counting(self.hash, &cs)?;
        if changes == 0 && !capture.ddl {
            // A read-only (or net-zero) batch: no record.
            return Ok(None);
        }
        // The guard row moves in the same transaction, and its change goes
        // into the changeset as the session extension would write it: a
        // copy that skips or repeats a record conflicts on it.
        self.internal_mode();
        let moved = self
            .conn
            .prepare_cached(&format!(
                "UPDATE {GUARD_TABLE} SET lsn = ?1 WHERE id = 1 AND lsn = ?2"
            ))
            .and_then(|mut s| s.execute([lsn.0 as i64, self.lsn.0 as i64]))
            .map_err(|e| Error::sql("update the guard row", e))?;
        if moved != 1 {
            return Err(Error::Stopped(format!(
                "the guard row of {GUARD_TABLE} is missing or not at LSN {} ({moved} rows updated)",
                self.lsn
            )));
        }
        self.guard
            .append(&mut cs, 1, self.lsn.0 as i64, lsn.0 as i64);
        let size = cs.len()
            + capture
                .parts
                .iter()
                .map(|p| match p {
                    DdlPart::Sql(s) => s.len(),
                    DdlPart::Changeset(c) => c.len(),
                })
                .sum::<usize>();
        if size > self.opts.max_transaction_bytes {
            return Err(Error::TooLarge {
                size,
                max: self.opts.max_transaction_bytes,
            });
        }
        let (body, new_hash, new_schema) = if capture.ddl {
            let mut parts = std::mem::take(&mut capture.parts);
            if !cs.is_empty() {
                parts.push(DdlPart::Changeset(cs));
            }
            let schema = hash::schema_hash(&self.conn)?;
            // Schema changes can add or drop cells wholesale: rescan.
            let h = hash::full_scan(&self.conn)?;
            (
                Body::Ddl {
                    schema_hash: schema,
                    parts,
                },
                h,
                schema,
            )
        } else {
            (Body::Changeset(cs), new_hash, self.schema_hash)
        };
        let record = Record {
            time_us: now_us(),
            hash: new_hash,
            body,
        };
        let kind = record.kind();
        let mut payload = Vec::with_capacity(size + 64);
        record.encode(&mut payload);
        let max = self
            .opts
            .max_transaction_bytes
            .min(crate::format::MAX_RECORD_SIZE);
        if payload.len() > max {
            return Err(Error::TooLarge {
                size: payload.len(),
                max,
            });
        }
        Ok(Some((lsn, kind, payload, new_hash, new_schema)))
    }

    fn commit_batch(
        &mut self,
        ran: Vec<(Job, Ran)>,
        record: Option<(Lsn, RecordKind, Vec<u8>, ContentHash, SchemaHash)>,
    ) -> Result<()> {
        let c = &self.shared.counters;
        if let Some((lsn, kind, payload, h, s)) = &record {
            self.log.append(*kind, *lsn, payload, *h, *s)?;
            self.log.write()?;
            self.failpoint.hit(FailPoint::AfterAppend);
            if self.opts.fsync {
                let t = Instant::now();
                self.log.sync()?;
                c.fsync.observe(t.elapsed());
            }
            self.failpoint.hit(FailPoint::AfterFsync);
            c.syncs.fetch_add(1, Ordering::Relaxed);
            c.records.fetch_add(1, Ordering::Relaxed);
        }
        c.batches.fetch_add(1, Ordering::Relaxed);
        let logged = record.is_some();
        let commit = self.internal("COMMIT");
        // The record is durable: it is committed whether or not SQLite's
        // COMMIT succeeded (recovery redoes it). Answer accordingly.
        if let Some((lsn, _, _, h, s)) = record {
            self.lsn = lsn;
            self.hash = h;
            self.schema_hash = s;
        }
        self.publish();
        let lsn = self.lsn;
        // Acknowledge only under a valid lease: past it, the peer may have
        // taken over without this record.
        let fenced = if logged { self.fenced() } else { None };
        let answers = ran
            .into_iter()
            .map(|(j, ran)| match ran {
                Ran::Ok if fenced.is_some() => (
                    j,
                    Err(Error::Fenced(format!(
                        "the lease ran out before LSN {lsn} was acknowledged"
                    ))),
                ),
                Ran::Ok => (j, Ok((lsn, logged))),
                Ran::Failed => (j, Ok((lsn, false))),
                Ran::Refused(e) => (j, Err(e)),
            })
            .collect();
        let confirm = match &self.opts.feed {
            Some(feed) if logged && feed.is_synchronous() => Some(Confirm {
                feed: feed.clone(),
                lsn,
            }),
            _ => None,
        };
        self.replier.answer_confirmed(answers, confirm);
        commit?;
        match fenced {
            Some(reason) => Err(Error::Fenced(reason)),
            None => Ok(()),
        }
    }
}
