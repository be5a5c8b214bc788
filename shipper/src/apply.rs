//! Applying logical records to a database: the one primitive that crash
//! recovery on the active and replay on the passive share. A changeset is
//! applied strictly (any conflict is divergence and aborts); a DDL record
//! runs its statements and changesets in order and then checks the schema
//! hash it promises. The guard row's LSN moves inside the changesets
//! themselves, so a skipped or repeated record is a conflict on `_logship`.
//!
//! The caller owns the SQLite transaction and disables triggers (their
//! effects are already in the changesets).

use rusqlite::Connection;

use crate::changeset::{self, ApplyOptions};
use crate::error::{Error, Result};
use crate::format::{Body, DdlPart, Record};
use crate::hash;
use crate::types::Lsn;

/// Applies `record` (LSN `lsn`) to `conn`. On a conflict nothing of the
/// failing changeset stays applied and `Error::Conflict` names the LSN and
/// table; the caller rolls back its transaction.
pub fn apply_record(conn: &Connection, lsn: Lsn, record: &Record) -> Result<()> {
    match &record.body {
        Body::Changeset(cs) => apply_changeset(conn, lsn, cs),
        Body::Ddl { schema_hash, parts } => {
            for part in parts {
                match part {
                    // A schema statement that fails on the copy means the
                    // schemas diverged: a conflict, not a passing fault.
                    DdlPart::Sql(sql) => conn.execute_batch(sql).map_err(|e| Error::Conflict {
                        lsn,
                        table: String::new(),
                        conflict: "DDL".into(),
                        detail: format!("{sql}: {e}"),
                    })?,
                    DdlPart::Changeset(cs) => apply_changeset(conn, lsn, cs)?,
                }
            }
            let found = hash::schema_hash(conn)?;
            if found != *schema_hash {
                return Err(Error::SchemaMismatch {
                    lsn,
                    expected: *schema_hash,
                    found,
                });
            }
            Ok(())
        }
    }
}

/// Applies consecutive changeset records at once, combined with a
/// changegroup (several times faster than one apply per record). The
/// result is the same as applying them in order. On a conflict nothing of
/// the combined changeset stays, and the records are applied one by one to
/// name the exact LSN that diverges; the caller then rolls back.
pub fn apply_changesets(conn: &Connection, records: &[(Lsn, &[u8])]) -> Result<()> {
    match records {
        [] => Ok(()),
        [(lsn, cs)] => apply_changeset(conn, *lsn, cs),
        _ => {
            let mut group = changeset::ChangeGroup::new()?;
            for (_, cs) in records {
                group.add(cs)?;
            }
            let combined = group.output()?;
            let last = records[records.len() - 1].0;
            match apply_changeset(conn, last, &combined) {
                Ok(()) => Ok(()),
                Err(Error::Conflict { .. }) => {
                    // Find the record that diverges; if none does, applying
                    // them one by one was the right answer anyway.
                    for (lsn, cs) in records {
                        apply_changeset(conn, *lsn, cs)?;
                    }
                    Ok(())
                }
                Err(e) => Err(e),
            }
        }
    }
}

fn apply_changeset(conn: &Connection, lsn: Lsn, cs: &[u8]) -> Result<()> {
    match changeset::apply_strict(conn, cs, ApplyOptions::default()) {
        Ok(()) => Ok(()),
        Err(Ok(report)) => Err(Error::Conflict {
            lsn,
            table: report.table,
            conflict: report.kind,
            detail: report.detail,
        }),
        Err(Err(e)) => Err(e),
    }
}

/// Reads the guard row: the LSN the database contains and its database id.
pub fn read_guard(conn: &Connection) -> Result<(Lsn, crate::types::DatabaseId)> {
    let (lsn, id): (i64, Vec<u8>) = conn
        .query_row(
            &format!(
                "SELECT lsn, database_id FROM {} WHERE id = 1",
                changeset::GUARD_TABLE
            ),
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(|e| Error::sql("read the guard row", e))?;
    let id: [u8; 16] = id.try_into().map_err(|v: Vec<u8>| Error::BadGuard {
        path: conn.path().unwrap_or_default().into(),
        what: format!("it holds a {}-byte database id, expected 16", v.len()),
    })?;
    Ok((Lsn(lsn as u64), crate::types::DatabaseId(id)))
}
