//! SQLite session-extension primitives over raw FFI (the bundled SQLite is
//! built with SQLITE_ENABLE_SESSION; rusqlite's `session` feature is not used
//! because it needs libclang): capture a changeset, iterate its changes,
//! apply it strictly (any conflict aborts and is reported), invert it.
//!
//! This module knows nothing of LSNs or files.

use rusqlite::Connection;

use crate::error::Result;

/// Name of the store's guard table (one row: the LSN the database contains).
pub const GUARD_TABLE: &str = "_logship";

/// A capture session on the `main` database of one connection, attached to
/// every table (also tables created later) except `sqlite_stat1`.
#[derive(Debug)]
pub struct Session {
    raw: *mut rusqlite::ffi::sqlite3_session,
}

impl Session {
    /// # Safety contract
    /// The session must be dropped before `conn` is closed.
    pub fn new(conn: &Connection) -> Result<Session> {
        todo!("{conn:?}")
    }

    pub fn is_empty(&self) -> bool {
        todo!("{:?}", self.raw)
    }

    pub fn changeset(&self) -> Result<Vec<u8>> {
        todo!()
    }
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

/// One row change.
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
pub fn for_each_change(changeset: &[u8], mut f: impl FnMut(&Change) -> Result<()>) -> Result<()> {
    todo!("{} {:?}", changeset.len(), &mut f as *mut _)
}

/// Options for `apply_strict`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ApplyOptions {
    /// Apply the inverse of the changeset (rewinding).
    pub invert: bool,
}

/// What made a strict apply abort.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConflictReport {
    pub table: String,
    /// DATA, NOTFOUND, CONFLICT, CONSTRAINT or FOREIGN_KEY.
    pub kind: String,
    pub detail: String,
}

/// Applies `changeset` to `conn`; any conflict aborts (nothing of this
/// changeset stays applied) and is returned as `Err(Ok(report))`; other
/// failures as `Err(Err(error))`. FK actions do not fire (FKNOACTION).
pub fn apply_strict(conn: &Connection, changeset: &[u8], opts: ApplyOptions) -> std::result::Result<(), std::result::Result<ConflictReport, crate::Error>> {
    todo!("{conn:?} {} {opts:?}", changeset.len())
}

/// The inverse changeset (INSERT <-> DELETE, UPDATE old <-> new).
pub fn invert(changeset: &[u8]) -> Result<Vec<u8>> {
    todo!("{}", changeset.len())
}

/// Turns trigger execution off (replaying: the effects of triggers are
/// already in the changesets) or back on (the node becomes active).
pub fn set_triggers_enabled(conn: &Connection, on: bool) -> Result<()> {
    todo!("{conn:?} {on}")
}
