//! Recovery on open: the durable records past the database's guard LSN
//! are redone, each checked against its content hash.

use super::*;

/// Redoes the durable records after `from` (the guard LSN) up to `to`.
pub(super) fn recover(
    conn: &Connection,
    logs: &Path,
    db: DatabaseId,
    from: Lsn,
    to: Lsn,
) -> Result<()> {
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
