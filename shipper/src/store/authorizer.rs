//! The write connection's authorizer: what a transaction's statements may
//! do (no transaction control, no ATTACH, DDL only through `Tx::ddl`, the
//! guard table untouchable), and why it refused.

use super::*;

/// Authorizer modes of the write connection.
pub(super) const MODE_INTERNAL: u8 = 0;
pub(super) const MODE_USER: u8 = 1;
pub(super) const MODE_DDL: u8 = 2;

#[derive(Debug, Default)]
pub(super) struct AuthState {
    pub(super) mode: AtomicU8,
    /// What the authorizer refused last, for the error message.
    pub(super) refused: Mutex<Option<Refusal>>,
    /// The write connection's handle (as an address), to ask whether it is
    /// still inside the writer's transaction.
    pub(super) db: std::sync::atomic::AtomicUsize,
    /// The table a `DROP TABLE` in `Tx::ddl` is dropping (lower case): its
    /// own rows go with it, which SQLite authorizes as a delete.
    pub(super) dropping: Mutex<Option<String>>,
    /// The FTS5 table a `CREATE VIRTUAL TABLE` in `Tx::ddl` is creating
    /// (lower case): FTS5 writes the first rows of its shadow tables
    /// (`<name>_config`, ...) itself, and the copy's replay of the statement
    /// writes the same.
    pub(super) creating: Mutex<Option<String>>,
    /// The running request's time limit (`Tx::interrupt_after`), in
    /// nanoseconds after `started`; 0 for none. Only user mode is
    /// interrupted: the store's own statements never are.
    pub(super) deadline_ns: AtomicU64,
    pub(super) started: std::sync::OnceLock<std::time::Instant>,
}

impl AuthState {
    /// The base instant that `deadline_ns` counts from.
    pub(super) fn base(&self) -> std::time::Instant {
        *self.started.get_or_init(std::time::Instant::now)
    }

    /// True when a request's time limit has passed (the progress handler:
    /// SQLite then interrupts the statement).
    pub(super) fn deadline_passed(&self) -> bool {
        let d = self.deadline_ns.load(Ordering::Relaxed);
        d != 0
            && self.mode.load(Ordering::Relaxed) == MODE_USER
            && self.base().elapsed().as_nanos() as u64 >= d
    }
}

#[derive(Clone, Debug)]
pub(super) enum Refusal {
    /// A schema statement outside `Tx::ddl`: route it there.
    Ddl(String),
    /// Something never allowed in a logged transaction.
    Forbidden(String),
}

/// Receives the column names, the row's index within its statement, and the row.
pub type RowFn<'f> = dyn FnMut(&[String], usize, &rusqlite::Row<'_>) -> Result<()> + 'f;

pub(super) fn authorize(state: &AuthState, ctx: AuthContext<'_>) -> Authorization {
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
        AuthAction::Insert { table_name }
        | AuthAction::Delete { table_name }
        | AuthAction::Update { table_name, .. }
            if mode == MODE_DDL
                && state
                    .creating
                    .lock()
                    .expect("auth lock")
                    .as_deref()
                    .is_some_and(|v| {
                        let t = table_name.to_ascii_lowercase();
                        t.len() > v.len() + 1 && t.starts_with(v) && t.as_bytes()[v.len()] == b'_'
                    }) =>
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
        // FTS5 keeps its index in ordinary shadow tables, which the log
        // carries; other modules keep rows the log never sees.
        AuthAction::CreateVtable {
            table_name,
            module_name,
        } if module_name.eq_ignore_ascii_case("fts5") => {
            if mode == MODE_DDL {
                *state.creating.lock().expect("auth lock") = Some(table_name.to_ascii_lowercase());
                Authorization::Allow
            } else {
                *state.refused.lock().expect("auth lock") =
                    Some(Refusal::Ddl(format!("CREATE VIRTUAL TABLE {table_name}")));
                Authorization::Deny
            }
        }
        AuthAction::CreateVtable {
            table_name,
            module_name,
        } => forbid(format!(
            "virtual table {table_name} of module {module_name}: only FTS5 tables are \
             replicated (through their shadow tables); the rows of other modules are not \
             seen by the log"
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

/// Pragmas that take an argument but only read. (`table_xinfo` must stay:
/// the capture reads table descriptions with it, on the write connection.)
pub(super) const READ_PRAGMAS: &[&str] = &[
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
