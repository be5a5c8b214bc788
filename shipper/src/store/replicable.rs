//! The checks that refuse tables the session extension cannot replicate
//! faithfully.

use super::*;

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
