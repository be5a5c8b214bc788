//! The transaction handle given to callers' closures: statements run
//! under the authorizer, their changes captured for the batch's record.

use super::*;

/// A store transaction, given to the closure of `Store::transaction`.
/// `conn()` runs queries and DML; schema changes go through `ddl`.
///
/// The closure may run more than once: when a group commit has to be redone
/// (another caller's statement rolled the SQLite transaction back, or this
/// caller changes the schema and must run alone), the store rolls back and
/// runs it again. Keep its side effects inside the transaction.
pub struct Tx<'a> {
    pub(super) conn: &'a Connection,
    pub(super) auth: &'a AuthState,
    pub(super) capture: &'a mut Capture,
    pub(super) batch: &'a mut BatchCapture,
    /// True when this request runs first in its group commit.
    pub(super) first: bool,
    /// Set when the request must run again at the head of a new batch.
    pub(super) requeue: bool,
    /// Set when a schema change failed: the request is rolled back even if
    /// its closure ignores the error (the DDL would otherwise go unlogged).
    pub(super) poisoned: Option<String>,
    /// `PRAGMA schema_version` right after this request's last schema
    /// change: if it differs when the closure returns, a savepoint rollback
    /// undid a logged schema change, and the request is refused.
    pub(super) schema_version: Option<i64>,
}

/// What a group commit holds besides the rows its capture saw.
#[derive(Debug, Default)]
pub(super) struct BatchCapture {
    pub(super) parts: Vec<DdlPart>,
    pub(super) ddl: bool,
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
    /// Interrupts this request's statements once `deadline` passes: the
    /// statement running then fails with SQLite's "interrupted", and the
    /// request is rolled back if its closure returns that error. Only the
    /// request's own statements are interrupted, never the store's commit.
    pub fn interrupt_after(&mut self, deadline: std::time::Instant) {
        let ns = deadline
            .saturating_duration_since(self.auth.base())
            .as_nanos()
            .max(1) as u64;
        self.auth.deadline_ns.store(ns, Ordering::Relaxed);
    }

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
        *self.auth.creating.lock().expect("auth lock") = None;
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
        self.execute_with(sql, &Params::None, on_row)
    }

    /// Runs one statement with its parameters bound (a schema statement
    /// takes none).
    pub fn execute_with(
        &mut self,
        sql: &str,
        params: &Params,
        on_row: &mut RowFn<'_>,
    ) -> Result<()> {
        *self.auth.refused.lock().expect("auth lock") = None;
        let first = sql
            .trim_start()
            .split(|c: char| !c.is_ascii_alphabetic())
            .next()
            .unwrap_or("");
        if first.eq_ignore_ascii_case("VACUUM") {
            // SQLite would refuse it inside a transaction anyway; say why
            // the store never runs it.
            return Err(Error::Refused {
                what: "VACUUM may renumber the rowids of tables without an INTEGER PRIMARY \
                       KEY, behind the log's back (the log keys such rows by rowid)"
                    .into(),
            });
        }
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
        params
            .bind(&mut stmt)
            .map_err(|e| Error::sql(format!("bind the parameters of {sql}"), e))?;
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

    pub(super) fn refusal_or(&self, op: String, e: rusqlite::Error) -> Error {
        match self.auth.refused.lock().expect("auth lock").take() {
            Some(Refusal::Forbidden(what)) => Error::Refused { what },
            Some(Refusal::Ddl(what)) => Error::Refused {
                what: format!("schema change outside Tx::ddl: {what}"),
            },
            None => Error::sql(op, e),
        }
    }
}

/// The database's schema cookie (it changes with every schema change, and
/// goes back with a rollback of one).
pub(super) fn schema_version(conn: &Connection) -> Result<i64> {
    conn.query_row("PRAGMA schema_version", [], |r| r.get(0))
        .map_err(|e| Error::sql("read the schema version", e))
}

/// A statement's parameters, as a client gives them.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Params {
    #[default]
    None,
    /// `?` or `?NNN`, in order.
    Positional(Vec<rusqlite::types::Value>),
    /// `:name`, `@name` or `$name`, by name (without its sigil).
    Named(Vec<(String, rusqlite::types::Value)>),
}

impl Params {
    /// Binds them to `stmt`; a name the statement does not have, or a
    /// count that differs, is an error (SQLite's range error).
    pub fn bind(&self, stmt: &mut rusqlite::Statement<'_>) -> rusqlite::Result<()> {
        match self {
            Params::None => Ok(()),
            Params::Positional(values) => {
                if values.len() != stmt.parameter_count() {
                    return Err(rusqlite::Error::InvalidParameterCount(
                        values.len(),
                        stmt.parameter_count(),
                    ));
                }
                for (i, v) in values.iter().enumerate() {
                    stmt.raw_bind_parameter(i + 1, v)?;
                }
                Ok(())
            }
            Params::Named(values) => {
                for (name, v) in values {
                    let index = [":", "@", "$"]
                        .iter()
                        .find_map(|sigil| {
                            stmt.parameter_index(&format!("{sigil}{name}")).transpose()
                        })
                        .transpose()?
                        .ok_or_else(|| rusqlite::Error::InvalidParameterName(name.clone()))?;
                    stmt.raw_bind_parameter(index, v)?;
                }
                Ok(())
            }
        }
    }
}
