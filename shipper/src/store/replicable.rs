//! The checks that refuse tables the store cannot replicate faithfully,
//! and say why.

use super::*;

/// Refuses tables the store cannot replicate faithfully: a virtual table of
/// another module than FTS5, a table without a declared PRIMARY KEY whose
/// rowid a column hides, key columns that may be NULL or compare loosely.
///
/// What it lets through: tables without a declared key (keyed by rowid),
/// AUTOINCREMENT (its counters are logged by table name) and FTS5 tables,
/// whose shadow tables are ordinary tables with keys (FTS5 writes their
/// values with fixed types, so the key-type rules do not apply to them).
pub fn check_replicable(conn: &Connection) -> Result<()> {
    let sql_err = |e| Error::sql("check the schema", e);
    let mut stmt = conn
        .prepare(
            "SELECT s.name, s.sql, l.wr, l.strict, l.type FROM sqlite_schema s \
             JOIN pragma_table_list l ON l.name = s.name AND l.schema = 'main' \
             WHERE s.type = 'table' AND s.name NOT LIKE 'sqlite\\_%' ESCAPE '\\' \
             ORDER BY s.name",
        )
        .map_err(sql_err)?;
    let tables: Vec<(String, String, bool, bool, String)> = stmt
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get::<_, Option<String>>(1)?.unwrap_or_default(),
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
            ))
        })
        .map_err(sql_err)?
        .collect::<rusqlite::Result<_>>()
        .map_err(sql_err)?;
    for (table, sql, without_rowid, strict, kind) in tables {
        let refuse = |reason: String| Error::Unreplicable {
            table: table.clone(),
            reason,
        };
        if kind == "virtual" {
            match virtual_module(&sql) {
                Some(m) if m.eq_ignore_ascii_case("fts5") => continue,
                module => {
                    return Err(refuse(format!(
                        "it is a virtual table of module {}: only FTS5 tables are replicated \
                         (through their shadow tables); the rows of other modules are not \
                         seen by the log",
                        module.unwrap_or("(unknown)")
                    )));
                }
            }
        }
        if kind == "shadow" {
            // An FTS5 table's own storage (its module is checked above).
            continue;
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
            // Keyed by rowid in the log, which the name `_rowid_` must reach.
            let hides: i64 = conn
                .query_row(
                    "SELECT count(*) FROM pragma_table_xinfo(?1) WHERE name = '_rowid_' COLLATE NOCASE",
                    [&table],
                    |r| r.get(0),
                )
                .map_err(sql_err)?;
            if hides > 0 {
                return Err(refuse(
                    "it has no PRIMARY KEY, so the log keys its rows by rowid, and its column \
                     named _rowid_ hides the rowid; rename the column or declare a PRIMARY KEY"
                        .into(),
                ));
            }
            continue;
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

/// The module of `CREATE VIRTUAL TABLE name USING module(...)`.
fn virtual_module(sql: &str) -> Option<&str> {
    let upper = sql.to_ascii_uppercase();
    let at = upper.find(" USING ")? + " USING ".len();
    let rest = sql[at..].trim_start();
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    Some(&rest[..end])
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
