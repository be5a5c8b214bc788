//! The content hash (proof of equality) and the schema hash.
//!
//! H = the sum modulo 2^128 of xxh3-128 over every (table, primary key,
//! column index, type-tagged value) cell of the replicated tables (not
//! `sqlite_%`, not the guard table). It is maintained from changesets alone
//! and recomputed by a full scan; see FORMAT.md for the exact cell encoding.

use rusqlite::Connection;
use rusqlite::types::ValueRef;
use xxhash_rust::xxh3::xxh3_128;

use crate::changeset::{self, Change, GUARD_TABLE, Op, SEQUENCE_TABLE, Value};
use crate::error::{Error, Result};
use crate::types::{ContentHash, SchemaHash};

/// Value tags of the cell encoding.
const TAG_NULL: u8 = 0x00;
const TAG_INTEGER: u8 = 0x01;
const TAG_REAL: u8 = 0x02;
const TAG_TEXT: u8 = 0x03;
const TAG_BLOB: u8 = 0x04;

/// A borrowed value of either source (changeset or database row).
#[derive(Clone, Copy, Debug)]
enum Cell<'a> {
    Null,
    Integer(i64),
    Real(f64),
    Text(&'a [u8]),
    Blob(&'a [u8]),
}

impl<'a> From<&'a Value> for Cell<'a> {
    fn from(v: &'a Value) -> Cell<'a> {
        match v {
            Value::Null => Cell::Null,
            Value::Integer(i) => Cell::Integer(*i),
            Value::Real(r) => Cell::Real(*r),
            Value::Text(t) => Cell::Text(t),
            Value::Blob(b) => Cell::Blob(b),
        }
    }
}

impl<'a> From<ValueRef<'a>> for Cell<'a> {
    fn from(v: ValueRef<'a>) -> Cell<'a> {
        match v {
            ValueRef::Null => Cell::Null,
            ValueRef::Integer(i) => Cell::Integer(i),
            ValueRef::Real(r) => Cell::Real(r),
            ValueRef::Text(t) => Cell::Text(t),
            ValueRef::Blob(b) => Cell::Blob(b),
        }
    }
}

/// Lengths in the encodings are u32 LE. SQLite values and names are below
/// 2^31 bytes (SQLITE_MAX_LENGTH), so the conversion cannot saturate.
fn push_len(buf: &mut Vec<u8>, len: usize) {
    buf.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
}

fn push_bytes(buf: &mut Vec<u8>, bytes: &[u8]) {
    push_len(buf, bytes.len());
    buf.extend_from_slice(bytes);
}

/// Appends the type-tagged encoding of one value.
fn push_value(buf: &mut Vec<u8>, v: Cell<'_>) {
    match v {
        Cell::Null => buf.push(TAG_NULL),
        Cell::Integer(i) => {
            buf.push(TAG_INTEGER);
            buf.extend_from_slice(&i.to_le_bytes());
        }
        Cell::Real(r) => {
            buf.push(TAG_REAL);
            // -0.0 == 0.0 for the session (it compares reals with ==), so a
            // change between them is never recorded: hash them alike.
            let r = if r == 0.0 { 0.0 } else { r };
            buf.extend_from_slice(&r.to_bits().to_le_bytes());
        }
        Cell::Text(t) => {
            buf.push(TAG_TEXT);
            push_bytes(buf, t);
        }
        Cell::Blob(b) => {
            buf.push(TAG_BLOB);
            push_bytes(buf, b);
        }
    }
}

/// Starts a row prefix in `buf` (cleared first): the table name and a
/// placeholder for the number of PK values; `push_value` then appends each
/// PK value in column order, and `end_row_prefix` fills in the count.
fn begin_row(buf: &mut Vec<u8>, table: &[u8]) {
    buf.clear();
    push_bytes(buf, table);
    push_len(buf, 0);
}

/// Writes the number of PK values into the placeholder of `begin_row` and
/// returns the prefix length.
fn end_row_prefix(buf: &mut [u8], table_len: usize, npk: usize) -> usize {
    let at = 4 + table_len;
    buf[at..at + 4].copy_from_slice(&u32::try_from(npk).unwrap_or(u32::MAX).to_le_bytes());
    buf.len()
}

/// Hash of one cell: the row prefix in `buf[..prefix]`, then the column
/// index and the value. `buf` is truncated back to the prefix first.
fn cell_hash(buf: &mut Vec<u8>, prefix: usize, column: usize, v: Cell<'_>) -> u128 {
    buf.truncate(prefix);
    push_len(buf, column);
    push_value(buf, v);
    xxh3_128(buf)
}

/// Whether changes to `table` count in H: not `sqlite_%` (case-insensitive,
/// as SQLite reserves the prefix) except `sqlite_sequence` (AUTOINCREMENT's
/// counters, keyed by table name), not the guard table.
fn is_replicated(table: &str) -> bool {
    let reserved = table
        .as_bytes()
        .get(..7)
        .is_some_and(|p| p.eq_ignore_ascii_case(b"sqlite_"));
    (!reserved || table.eq_ignore_ascii_case(SEQUENCE_TABLE))
        && !table.eq_ignore_ascii_case(GUARD_TABLE)
}

fn malformed(what: &str, change: &Change) -> Error {
    Error::sql(
        "hashing a changeset",
        rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
            Some(format!(
                "{} on table {:?}: {what}",
                change.op.as_str(),
                change.table
            )),
        ),
    )
}

/// Returns `h` updated by every change in `changeset`.
///
/// Changes to `sqlite_%` tables and to the guard table are ignored (virtual
/// tables never appear in changesets).
pub fn apply_changeset(h: ContentHash, changeset: &[u8]) -> Result<ContentHash> {
    Ok(apply_changeset_counting(h, changeset)?.0)
}

/// Like `apply_changeset`, and also counts the row changes to replicated
/// tables (0: the changeset touches only the guard table or nothing).
pub fn apply_changeset_counting(h: ContentHash, changeset: &[u8]) -> Result<(ContentHash, usize)> {
    let mut h = h;
    let mut counted = 0usize;
    let mut buf: Vec<u8> = Vec::with_capacity(256);
    changeset::for_each_change(changeset, |c| {
        if !is_replicated(&c.table) {
            return Ok(());
        }
        counted += 1;
        // The PK values: old record for UPDATE/DELETE, new for INSERT.
        let record = if c.op == Op::Insert { &c.new } else { &c.old };
        if record.len() != c.pk.len() {
            return Err(malformed("column count mismatch", c));
        }
        begin_row(&mut buf, c.table.as_bytes());
        let mut npk = 0;
        for (is_pk, v) in c.pk.iter().zip(record) {
            if *is_pk {
                let Some(v) = v else {
                    return Err(malformed("primary key value missing", c));
                };
                push_value(&mut buf, v.into());
                npk += 1;
            }
        }
        let prefix = end_row_prefix(&mut buf, c.table.len(), npk);
        match c.op {
            Op::Insert | Op::Delete => {
                for (i, v) in record.iter().enumerate() {
                    let Some(v) = v else {
                        return Err(malformed("column value missing", c));
                    };
                    let cell = cell_hash(&mut buf, prefix, i, v.into());
                    h = if c.op == Op::Insert {
                        h.plus_cell(cell)
                    } else {
                        h.minus_cell(cell)
                    };
                }
            }
            Op::Update => {
                for (i, new) in c.new.iter().enumerate() {
                    let Some(new) = new else { continue };
                    let Some(Some(old)) = c.old.get(i) else {
                        return Err(malformed("updated column without its old value", c));
                    };
                    h = h.minus_cell(cell_hash(&mut buf, prefix, i, old.into()));
                    h = h.plus_cell(cell_hash(&mut buf, prefix, i, new.into()));
                }
            }
        }
        Ok(())
    })?;
    Ok((h, counted))
}

/// Quotes an identifier for SQL: `"name"` with embedded `"` doubled.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The replicated tables of `main`, by name: `type='table'`, not `sqlite_%`
/// but `sqlite_sequence`, not the guard table, not virtual.
fn replicated_tables(conn: &Connection) -> Result<Vec<String>> {
    let op = "listing the replicated tables";
    let mut stmt = conn
        .prepare("SELECT name, sql FROM main.sqlite_schema WHERE type = 'table' AND (name NOT LIKE 'sqlite\\_%' ESCAPE '\\' OR name = 'sqlite_sequence') ORDER BY name")
        .map_err(|e| Error::sql(op, e))?;
    let mut rows = stmt.query([]).map_err(|e| Error::sql(op, e))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(|e| Error::sql(op, e))? {
        let name = match row.get_ref(0).map_err(|e| Error::sql(op, e))? {
            ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
            _ => continue,
        };
        let sql = match row.get_ref(1).map_err(|e| Error::sql(op, e))? {
            ValueRef::Text(t) => t,
            _ => &[][..],
        };
        let is_virtual = {
            let s = String::from_utf8_lossy(sql);
            let words: Vec<&str> = s.split_whitespace().take(2).collect();
            words.len() == 2
                && words[0].eq_ignore_ascii_case("CREATE")
                && words[1].eq_ignore_ascii_case("VIRTUAL")
        };
        if is_virtual || !is_replicated(&name) {
            continue;
        }
        out.push(name);
    }
    Ok(out)
}

/// Recomputes H by reading every cell. Run it inside one read transaction
/// (when `conn` is in autocommit mode, it opens one itself).
///
/// A table without a declared PRIMARY KEY is keyed by its rowid (column 0),
/// as its changesets are; `sqlite_sequence` by the table name.
pub fn full_scan(conn: &Connection) -> Result<ContentHash> {
    let op = "scanning for the content hash";
    // Outside a transaction, open a deferred one so that every table is read
    // from one snapshot (dropped, i.e. rolled back, at the end: it only read).
    let _snapshot = if conn.is_autocommit() {
        Some(
            conn.unchecked_transaction()
                .map_err(|e| Error::sql(op, e))?,
        )
    } else {
        None
    };
    let mut h = ContentHash::default();
    let mut buf: Vec<u8> = Vec::with_capacity(256);
    let mut pk_cols: Vec<usize> = Vec::new();
    for table in replicated_tables(conn)? {
        // The changeset's column numbering: non-hidden columns in order,
        // after the rowid for a table without a declared key.
        let mut names: Vec<String> = Vec::new();
        pk_cols.clear();
        {
            let mut stmt = conn
                .prepare_cached("SELECT name, pk FROM pragma_table_xinfo(?1, 'main') WHERE hidden = 0 ORDER BY cid")
                .map_err(|e| Error::sql(op, e))?;
            let mut rows = stmt.query([&table]).map_err(|e| Error::sql(op, e))?;
            while let Some(row) = rows.next().map_err(|e| Error::sql(op, e))? {
                let name: String = row.get(0).map_err(|e| Error::sql(op, e))?;
                let pk: i64 = row.get(1).map_err(|e| Error::sql(op, e))?;
                if pk > 0 {
                    pk_cols.push(names.len());
                }
                names.push(quote_ident(&name));
            }
        }
        let sql = if table == SEQUENCE_TABLE {
            // Keyed by table name, as changesets carry it; SQLite reads the
            // first row of a name (by rowid), so only that one counts.
            pk_cols.push(0);
            "SELECT name, seq FROM main.sqlite_sequence WHERE rowid IN \
             (SELECT min(rowid) FROM main.sqlite_sequence GROUP BY name)"
                .to_string()
        } else {
            if pk_cols.is_empty() {
                names.insert(0, "_rowid_".into());
                pk_cols.push(0);
            }
            format!(
                "SELECT {} FROM \"main\".{}",
                names.join(", "),
                quote_ident(&table)
            )
        };
        let mut stmt = conn.prepare(&sql).map_err(|e| Error::sql(op, e))?;
        let mut rows = stmt.query([]).map_err(|e| Error::sql(op, e))?;
        while let Some(row) = rows.next().map_err(|e| Error::sql(op, e))? {
            begin_row(&mut buf, table.as_bytes());
            for &i in &pk_cols {
                push_value(
                    &mut buf,
                    row.get_ref(i).map_err(|e| Error::sql(op, e))?.into(),
                );
            }
            let prefix = end_row_prefix(&mut buf, table.len(), pk_cols.len());
            for i in 0..names.len() {
                let v = row.get_ref(i).map_err(|e| Error::sql(op, e))?;
                h = h.plus_cell(cell_hash(&mut buf, prefix, i, v.into()));
            }
        }
    }
    Ok(h)
}

/// Hash of the schema of the replicated objects (tables, indexes, views,
/// triggers; not `sqlite_%`).
///
/// xxh3-128 over the rows of `SELECT type, name, tbl_name, sql FROM
/// sqlite_schema WHERE name NOT LIKE 'sqlite\_%' ESCAPE '\' ORDER BY type,
/// name`, each field encoded as (u8 present flag, u32 LE length, bytes); a
/// NULL field is (0, 0). The guard table is included.
pub fn schema_hash(conn: &Connection) -> Result<SchemaHash> {
    let op = "hashing the schema";
    let mut stmt = conn
        .prepare("SELECT type, name, tbl_name, sql FROM main.sqlite_schema WHERE name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY type, name")
        .map_err(|e| Error::sql(op, e))?;
    let mut rows = stmt.query([]).map_err(|e| Error::sql(op, e))?;
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    while let Some(row) = rows.next().map_err(|e| Error::sql(op, e))? {
        for i in 0..4 {
            let num: String;
            let field: Option<&[u8]> = match row.get_ref(i).map_err(|e| Error::sql(op, e))? {
                ValueRef::Null => None,
                ValueRef::Text(t) | ValueRef::Blob(t) => Some(t),
                // Only a hand-edited schema (writable_schema) holds numbers
                // here; hash their decimal text.
                ValueRef::Integer(n) => {
                    num = n.to_string();
                    Some(num.as_bytes())
                }
                ValueRef::Real(r) => {
                    num = r.to_string();
                    Some(num.as_bytes())
                }
            };
            match field {
                None => {
                    buf.push(0);
                    push_len(&mut buf, 0);
                }
                Some(bytes) => {
                    buf.push(1);
                    push_bytes(&mut buf, bytes);
                }
            }
        }
    }
    Ok(SchemaHash(xxh3_128(&buf)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::changeset::Session;

    fn mem() -> Connection {
        Connection::open_in_memory().unwrap()
    }

    fn capture(conn: &Connection, sql: &str) -> Vec<u8> {
        let s = Session::new(conn).unwrap();
        conn.execute_batch(sql).unwrap();
        s.changeset().unwrap()
    }

    /// The cell hash spelled out byte by byte, as FORMAT.md describes it.
    fn manual_cell(table: &str, pk: &[&[u8]], column: u32, value: &[u8]) -> u128 {
        let mut b = Vec::new();
        b.extend_from_slice(&(table.len() as u32).to_le_bytes());
        b.extend_from_slice(table.as_bytes());
        b.extend_from_slice(&(pk.len() as u32).to_le_bytes());
        for v in pk {
            b.extend_from_slice(v);
        }
        b.extend_from_slice(&column.to_le_bytes());
        b.extend_from_slice(value);
        xxh3_128(&b)
    }

    fn enc_int(i: i64) -> Vec<u8> {
        let mut v = vec![0x01];
        v.extend_from_slice(&i.to_le_bytes());
        v
    }

    fn enc_text(tag: u8, t: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&(t.len() as u32).to_le_bytes());
        v.extend_from_slice(t);
        v
    }

    fn enc_real(r: f64) -> Vec<u8> {
        let mut v = vec![0x02];
        v.extend_from_slice(&r.to_bits().to_le_bytes());
        v
    }

    #[test]
    fn cell_encoding_matches_the_specification() {
        let conn = mem();
        conn.execute_batch("CREATE TABLE w(a TEXT NOT NULL, g AS (a || 'x'), b INTEGER NOT NULL, c, d REAL, PRIMARY KEY (b, a)) WITHOUT ROWID").unwrap();
        let cs = capture(
            &conn,
            "INSERT INTO w(a, b, c, d) VALUES ('k', 7, x'0102', -0.0)",
        );
        let h = apply_changeset(ContentHash::default(), &cs).unwrap();
        // PK values in column order (a, b) although declared (b, a); the
        // generated column g does not count: b is column 1.
        let pk: [&[u8]; 2] = [&enc_text(0x03, b"k"), &enc_int(7)];
        let expected = ContentHash::default()
            .plus_cell(manual_cell("w", &pk, 0, &enc_text(0x03, b"k")))
            .plus_cell(manual_cell("w", &pk, 1, &enc_int(7)))
            .plus_cell(manual_cell("w", &pk, 2, &enc_text(0x04, &[1, 2])))
            .plus_cell(manual_cell("w", &pk, 3, &enc_real(0.0)));
        assert_eq!(h, expected);
        assert_eq!(full_scan(&conn).unwrap(), expected);

        let cs = capture(&conn, "UPDATE w SET c = NULL WHERE b = 7");
        let h = apply_changeset(h, &cs).unwrap();
        let expected = expected
            .minus_cell(manual_cell("w", &pk, 2, &enc_text(0x04, &[1, 2])))
            .plus_cell(manual_cell("w", &pk, 2, &[0x00]));
        assert_eq!(h, expected);
        assert_eq!(full_scan(&conn).unwrap(), expected);

        let cs = capture(&conn, "DELETE FROM w");
        assert_eq!(apply_changeset(h, &cs).unwrap(), ContentHash::default());
        assert_eq!(full_scan(&conn).unwrap(), ContentHash::default());
    }

    #[test]
    fn format_md_example_holds() {
        // The example in FORMAT.md: t(id INTEGER PRIMARY KEY, v), row (1, 'a').
        let conn = mem();
        conn.execute_batch(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v); INSERT INTO t VALUES (1, 'a')",
        )
        .unwrap();
        // 01 00 00 00 74 | 01 00 00 00 | 01 01 00 00 00 00 00 00 00 | 01 00 00 00 | 03 01 00 00 00 61
        let cell_v: &[u8] = b"\x01\0\0\0t\x01\0\0\0\x01\x01\0\0\0\0\0\0\0\x01\0\0\0\x03\x01\0\0\0a";
        let mut cell_id = cell_v[..18].to_vec();
        cell_id.extend_from_slice(&[0, 0, 0, 0, 0x01, 1, 0, 0, 0, 0, 0, 0, 0]);
        let expected = ContentHash::default()
            .plus_cell(xxh3_128(&cell_id))
            .plus_cell(xxh3_128(cell_v));
        assert_eq!(full_scan(&conn).unwrap(), expected);
    }

    #[test]
    fn negative_zero_hashes_like_zero() {
        let conn = mem();
        conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, u, r REAL, b BLOB); INSERT INTO t VALUES (1, -0.0, -0.0, -0.0)").unwrap();
        // Untyped and BLOB columns keep -0.0, REAL affinity does not; the
        // session sees no change from -0.0 to 0.0.
        let signs: (bool, bool, bool) = conn
            .query_row("SELECT u, r, b FROM t", [], |r| {
                Ok((
                    r.get::<_, f64>(0)?.is_sign_negative(),
                    r.get::<_, f64>(1)?.is_sign_negative(),
                    r.get::<_, f64>(2)?.is_sign_negative(),
                ))
            })
            .unwrap();
        assert_eq!(signs, (true, false, true));
        let h = full_scan(&conn).unwrap();
        let cs = capture(&conn, "UPDATE t SET u = 0.0, r = 0.0, b = 0.0");
        assert!(cs.is_empty());
        assert_eq!(full_scan(&conn).unwrap(), h);
    }

    #[test]
    fn guard_and_sqlite_stat1_are_excluded_and_sqlite_sequence_counts_by_name() {
        let conn = mem();
        conn.execute_batch(&format!(
            "CREATE TABLE {GUARD_TABLE}(id INTEGER PRIMARY KEY, lsn INTEGER NOT NULL);
             CREATE TABLE t(id INTEGER PRIMARY KEY AUTOINCREMENT, v);
             CREATE INDEX t_v ON t(v);
             INSERT INTO {GUARD_TABLE} VALUES (1, 0);"
        ))
        .unwrap();
        assert_eq!(full_scan(&conn).unwrap(), ContentHash::default());
        // The store's capture: it carries sqlite_sequence, keyed by name.
        let mut cap = crate::capture::Capture::new(&conn, &[GUARD_TABLE]);
        let mut h = ContentHash::default();
        for sql in [
            format!(
                "UPDATE {GUARD_TABLE} SET lsn = 1; INSERT INTO t(v) VALUES (1), (1), (2); ANALYZE;"
            ),
            "DELETE FROM t".into(),
            "UPDATE sqlite_sequence SET seq = 10".into(),
            "INSERT INTO t(v) VALUES (3); INSERT INTO sqlite_sequence VALUES ('t', 99)".into(),
        ] {
            conn.execute_batch("BEGIN").unwrap();
            cap.start();
            conn.execute_batch(&sql).unwrap();
            let cs = cap.changeset().unwrap();
            conn.execute_batch("COMMIT").unwrap();
            h = apply_changeset(h, &cs).unwrap();
            assert_eq!(full_scan(&conn).unwrap(), h, "after {sql}");
            if sql.starts_with("DELETE") {
                // t is empty; its counter (3) is what is left in H.
                assert_ne!(h, ContentHash::default());
            }
        }
        // sqlite_stat1 has rows and does not count; the duplicate counter
        // row does not either (SQLite reads the first).
        let n: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_stat1", [], |r| r.get(0))
            .unwrap();
        assert!(n >= 1);
        conn.execute_batch("DELETE FROM t; DELETE FROM sqlite_sequence")
            .unwrap();
        assert_eq!(full_scan(&conn).unwrap(), ContentHash::default());
        // A changeset that touches only the guard row leaves H alone.
        let cs = capture(&conn, &format!("UPDATE {GUARD_TABLE} SET lsn = 2"));
        assert!(!cs.is_empty());
        assert_eq!(apply_changeset(h, &cs).unwrap(), h);
    }

    #[test]
    fn a_table_without_a_key_is_hashed_by_rowid() {
        let conn = mem();
        conn.execute_batch("CREATE TABLE nopk(a, b)").unwrap();
        let mut h = ContentHash::default();
        for sql in [
            "INSERT INTO nopk VALUES (1, 'x'), (1, 'x'), (NULL, 2.5)",
            "UPDATE nopk SET b = 'y' WHERE rowid = 2",
            "UPDATE nopk SET rowid = 10 WHERE rowid = 1",
            "DELETE FROM nopk WHERE rowid = 3",
        ] {
            let cs = capture(&conn, sql);
            h = apply_changeset(h, &cs).unwrap();
            assert_eq!(full_scan(&conn).unwrap(), h, "after {sql}");
        }
        // Two rows with equal values are two rows.
        assert_ne!(h, ContentHash::default());
    }

    #[test]
    fn fts5_shadow_tables_are_hashed_and_the_virtual_table_skipped() {
        let conn = mem();
        conn.execute_batch("CREATE VIRTUAL TABLE doc USING fts5(body); CREATE TABLE \"we\"\"ird\"(\"k\"\"ey\" INTEGER PRIMARY KEY, \"v al\")").unwrap();
        // CREATE VIRTUAL TABLE already wrote rows into the shadow tables.
        let mut h = full_scan(&conn).unwrap();
        assert_ne!(h, ContentHash::default());
        for sql in [
            "INSERT INTO doc(body) VALUES ('hello world'), ('lorem ipsum'); INSERT INTO \"we\"\"ird\" VALUES (1, 'q')",
            "UPDATE doc SET body = 'goodbye world' WHERE rowid = 1; UPDATE \"we\"\"ird\" SET \"v al\" = 'r'",
            "DELETE FROM doc WHERE rowid = 2",
        ] {
            let cs = capture(&conn, sql);
            h = apply_changeset(h, &cs).unwrap();
            assert_eq!(full_scan(&conn).unwrap(), h, "after {sql}");
        }
        let tables: Vec<String> = replicated_tables(&conn).unwrap();
        assert_eq!(
            tables,
            [
                "doc_config",
                "doc_content",
                "doc_data",
                "doc_docsize",
                "doc_idx",
                "we\"ird"
            ]
        );
    }

    #[test]
    fn schema_hash_tracks_ddl_only() {
        let a = mem();
        let base = schema_hash(&a).unwrap();
        a.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
            .unwrap();
        let h1 = schema_hash(&a).unwrap();
        assert_ne!(h1, base);
        a.execute_batch("CREATE INDEX t_v ON t(v)").unwrap();
        let h2 = schema_hash(&a).unwrap();
        assert_ne!(h2, h1);
        a.execute_batch("ALTER TABLE t ADD COLUMN w").unwrap();
        let h3 = schema_hash(&a).unwrap();
        assert_ne!(h3, h2);
        a.execute_batch("CREATE VIEW vv AS SELECT v FROM t; CREATE TRIGGER tr AFTER INSERT ON t BEGIN SELECT 1; END;").unwrap();
        let h4 = schema_hash(&a).unwrap();
        assert_ne!(h4, h3);
        // Data, ANALYZE (sqlite_stat1) and autoindexes do not count.
        a.execute_batch("INSERT INTO t VALUES (1, 2, 3); ANALYZE; CREATE TABLE u(k TEXT PRIMARY KEY, x UNIQUE); DROP TABLE u;").unwrap();
        assert_eq!(schema_hash(&a).unwrap(), h4);
        // The guard table counts.
        a.execute_batch(&format!(
            "CREATE TABLE {GUARD_TABLE}(id INTEGER PRIMARY KEY, lsn)"
        ))
        .unwrap();
        let h5 = schema_hash(&a).unwrap();
        assert_ne!(h5, h4);

        // The same schema built in another order on another database.
        let b = mem();
        b.execute_batch(&format!(
            "CREATE TABLE {GUARD_TABLE}(id INTEGER PRIMARY KEY, lsn);
             CREATE TABLE t(id INTEGER PRIMARY KEY, v);
             ALTER TABLE t ADD COLUMN w;
             CREATE TRIGGER tr AFTER INSERT ON t BEGIN SELECT 1; END;
             CREATE INDEX t_v ON t(v);
             CREATE VIEW vv AS SELECT v FROM t;"
        ))
        .unwrap();
        assert_eq!(schema_hash(&b).unwrap(), h5);
        // The SQL text is hashed verbatim: whitespace counts.
        let c = mem();
        c.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY,  v)")
            .unwrap();
        assert_ne!(schema_hash(&c).unwrap(), h1);
    }

    /// xorshift64*: small, deterministic, seedable.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
            &items[self.below(items.len() as u64) as usize]
        }
    }

    /// A random SQL literal covering every storage class, -0.0 and
    /// non-UTF-8 text.
    fn literal(rng: &mut Rng) -> String {
        match rng.below(12) {
            0 => "NULL".into(),
            1 => "-0.0".into(),
            2 => "0.0".into(),
            3 => format!("{}", rng.below(7) as i64 - 3),
            4 => format!("{}", rng.next() as i64),
            5 => rng
                .pick(&["1.5", "3.0", "-2.25", "1e300", "0.1"])
                .to_string(),
            6 | 7 => format!(
                "'{}'",
                rng.pick(&["", "a", "b", "3", "x'y", "héllo", "1.5"])
                    .replace('\'', "''")
            ),
            8 => "CAST(x'ff00fe' AS TEXT)".into(),
            9 => format!("x'{:02x}{:02x}'", rng.below(256), rng.below(256)),
            10 => "x''".into(),
            _ => "zeroblob(3)".into(),
        }
    }

    struct Shape {
        name: &'static str,
        /// PK columns: (name, literal generator kind) — 'i' integer, 't' text.
        pk: &'static [(&'static str, char)],
        /// Writable non-PK columns.
        cols: &'static [&'static str],
    }

    const SHAPES: &[Shape] = &[
        Shape {
            name: "t_rowid",
            pk: &[("id", 'i')],
            cols: &["a", "b", "c", "d"],
        },
        Shape {
            name: "t_strict",
            pk: &[("id", 'i')],
            cols: &["n", "r", "x", "s"],
        },
        Shape {
            name: "t_wr",
            pk: &[("b", 'i'), ("a", 't')],
            cols: &["c", "d"],
        },
        Shape {
            name: "t_gen",
            pk: &[("id", 'i')],
            cols: &["v", "w", "z"],
        },
        Shape {
            name: "t_textpk",
            pk: &[("k", 't')],
            cols: &["v"],
        },
    ];

    const RANDOM_SCHEMA: &str = "
        CREATE TABLE _logship(id INTEGER PRIMARY KEY, lsn INTEGER NOT NULL);
        INSERT INTO _logship VALUES (1, 0);
        CREATE TABLE t_rowid(id INTEGER PRIMARY KEY, a, b REAL, c TEXT, d BLOB);
        CREATE INDEX t_rowid_a ON t_rowid(a);
        CREATE TABLE t_strict(id INTEGER PRIMARY KEY, n INTEGER, r REAL, x ANY, s TEXT) STRICT;
        CREATE TABLE t_wr(a TEXT NOT NULL, c, b INTEGER NOT NULL, d REAL, PRIMARY KEY (b, a)) WITHOUT ROWID;
        CREATE TABLE t_gen(id INTEGER PRIMARY KEY, v, g1 AS (typeof(v)) VIRTUAL, w REAL, g2 AS (coalesce(w, 0) + 1) STORED, z UNIQUE);
        CREATE TABLE t_textpk(k TEXT PRIMARY KEY NOT NULL, v);
    ";

    fn pk_literal(rng: &mut Rng, kind: char) -> String {
        match kind {
            'i' => format!("{}", rng.below(30)),
            _ => format!(
                "'{}'",
                rng.pick(&["a", "b", "c", "d", "e", "f", "g", "h", "A", "é", "", "a b"])
            ),
        }
    }

    /// A WHERE condition on the PK: a random key, or (half the time) an
    /// existing row picked deterministically.
    fn where_pk(rng: &mut Rng, shape: &Shape) -> String {
        if rng.below(2) == 0 {
            let cols: Vec<&str> = shape.pk.iter().map(|(n, _)| *n).collect();
            let cols = cols.join(", ");
            return format!(
                "({cols}) IN (SELECT {cols} FROM {t} ORDER BY {cols} LIMIT 1 OFFSET {k} % max(1, (SELECT count(*) FROM {t})))",
                t = shape.name,
                k = rng.below(1000)
            );
        }
        shape
            .pk
            .iter()
            .map(|(n, k)| format!("{n} = {}", pk_literal(rng, *k)))
            .collect::<Vec<_>>()
            .join(" AND ")
    }

    /// One random statement against a random table.
    fn statement(rng: &mut Rng) -> String {
        let shape = rng.pick(SHAPES);
        let t = shape.name;
        match rng.below(20) {
            0..=6 => {
                let mut cols = Vec::new();
                let mut vals = Vec::new();
                for (n, k) in shape.pk {
                    cols.push(n.to_string());
                    vals.push(pk_literal(rng, *k));
                }
                for c in shape.cols {
                    cols.push(c.to_string());
                    vals.push(literal(rng));
                }
                let verb = if rng.below(3) == 0 {
                    "INSERT OR REPLACE"
                } else {
                    "INSERT"
                };
                format!(
                    "{verb} INTO {t}({}) VALUES ({})",
                    cols.join(", "),
                    vals.join(", ")
                )
            }
            7..=11 => {
                let mut sets = Vec::new();
                for c in shape.cols {
                    if rng.below(2) == 0 {
                        sets.push(format!("{c} = {}", literal(rng)));
                    }
                }
                if sets.is_empty() {
                    return format!(
                        "UPDATE {t} SET {} = {} WHERE {}",
                        shape.cols[0],
                        shape.cols[0],
                        where_pk(rng, shape)
                    );
                }
                format!(
                    "UPDATE {t} SET {} WHERE {}",
                    sets.join(", "),
                    where_pk(rng, shape)
                )
            }
            12 | 13 => format!("DELETE FROM {t} WHERE {}", where_pk(rng, shape)),
            14 | 15 => {
                // PK-changing UPDATE (a DELETE + INSERT in the changeset).
                let (n, k) = shape.pk[0];
                format!(
                    "UPDATE {t} SET {n} = {} WHERE {}",
                    pk_literal(rng, k),
                    where_pk(rng, shape)
                )
            }
            16 | 17 => {
                // Multi-row statements that may fail half-way (PK or UNIQUE
                // collision): SQLite undoes the statement.
                let (n, k) = shape.pk[0];
                if k == 'i' {
                    format!("UPDATE {t} SET {n} = {n} + 1")
                } else {
                    format!("UPDATE {t} SET {} = {}", shape.cols[0], literal(rng))
                }
            }
            18 => {
                // Multi-row INSERT OR REPLACE over existing rows.
                let cols: Vec<&str> = shape
                    .pk
                    .iter()
                    .map(|(n, _)| *n)
                    .chain(shape.cols.iter().copied())
                    .collect();
                let cols = cols.join(", ");
                format!(
                    "INSERT OR REPLACE INTO {t}({cols}) SELECT {cols} FROM {t} WHERE {}",
                    where_pk(rng, shape)
                )
            }
            _ => format!(
                "DELETE FROM {t} WHERE {} IS NOT NULL AND length({}) % 3 = {}",
                shape.cols[0],
                shape.pk[0].0,
                rng.below(3)
            ),
        }
    }

    fn run_random(seed: u64, transactions: usize) {
        eprintln!(
            "random hash test seed {seed:#x} ({transactions} transactions; set LOGSHIP_HASH_SEED to replay)"
        );
        let mut rng = Rng(seed | 1);
        let a = mem();
        a.execute_batch(RANDOM_SCHEMA).unwrap();
        let mut b = mem();
        rusqlite::backup::Backup::new(&a, &mut b)
            .unwrap()
            .run_to_completion(64, std::time::Duration::ZERO, None)
            .unwrap();
        let mut h = full_scan(&a).unwrap();
        let (mut failed, mut rolled_back, mut empty) = (0, 0, 0);
        let mut ops = [0usize; 3];
        for tx in 1..=transactions {
            a.execute_batch("BEGIN IMMEDIATE").unwrap();
            let session = Session::new(&a).unwrap();
            for _ in 0..1 + rng.below(4) {
                if rng.below(8) == 0 {
                    // Work that fails mid-way inside a savepoint, rolled back.
                    a.execute_batch("SAVEPOINT sp").unwrap();
                    for _ in 0..1 + rng.below(3) {
                        let _ = a.execute_batch(&statement(&mut rng));
                    }
                    let _ = a.execute_batch("INSERT INTO t_gen(id) VALUES (1), (1)");
                    a.execute_batch("ROLLBACK TO sp; RELEASE sp").unwrap();
                    rolled_back += 1;
                } else if a.execute_batch(&statement(&mut rng)).is_err() {
                    failed += 1;
                }
            }
            if rng.below(50) == 0 {
                a.execute_batch("ANALYZE").unwrap();
            }
            a.execute("UPDATE _logship SET lsn = ?1", [tx as i64])
                .unwrap();
            let cs = session.changeset().unwrap();
            drop(session);
            a.execute_batch("COMMIT").unwrap();
            let mut user_changes = 0;
            crate::changeset::for_each_change(&cs, |c| {
                if c.table != GUARD_TABLE {
                    user_changes += 1;
                    ops[c.op as usize] += 1;
                }
                Ok(())
            })
            .unwrap();
            empty += usize::from(user_changes == 0);
            h = apply_changeset(h, &cs).unwrap();
            crate::changeset::apply_strict(&b, &cs, Default::default())
                .unwrap_or_else(|e| panic!("seed {seed:#x} tx {tx}: replica apply failed: {e:?}"));
            if tx % 25 == 0 || tx == transactions {
                assert_eq!(
                    full_scan(&a).unwrap(),
                    h,
                    "seed {seed:#x}: maintained H differs from a full scan after transaction {tx}"
                );
            }
        }
        assert_eq!(
            full_scan(&b).unwrap(),
            h,
            "seed {seed:#x}: the replica's H differs"
        );
        assert_eq!(schema_hash(&b).unwrap(), schema_hash(&a).unwrap());
        let rows: i64 = a.query_row("SELECT (SELECT count(*) FROM t_rowid) + (SELECT count(*) FROM t_strict) + (SELECT count(*) FROM t_wr) + (SELECT count(*) FROM t_gen) + (SELECT count(*) FROM t_textpk)", [], |r| r.get(0)).unwrap();
        eprintln!(
            "  {rows} rows at the end; {ops:?} row INSERTs/UPDATEs/DELETEs; {failed} failed statements, {rolled_back} rolled-back savepoints, {empty} transactions with only the guard row"
        );
        assert!(ops.iter().all(|n| *n > transactions / 5), "{ops:?}");
        assert!(rows > 10 && failed > transactions / 20 && rolled_back > transactions / 20);
    }

    #[test]
    fn maintained_hash_equals_full_scan_over_random_transactions() {
        let seed = std::env::var("LOGSHIP_HASH_SEED")
            .ok()
            .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok());
        match seed {
            Some(seed) => run_random(seed, 3000),
            None => {
                run_random(0x5EED_0001, 2000);
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(7);
                run_random(t, 2000);
            }
        }
    }
}
