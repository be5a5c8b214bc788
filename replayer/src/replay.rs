//! Replay: applies the records of inspected segments (`<data-dir>/logs`)
//! to the copy in LSN order, one SQLite transaction per segment, through
//! the same strict apply as crash recovery (any conflict is divergence). The
//! guard row makes it resume exactly after a kill at any instant: it starts
//! after the LSN the copy's database holds, whatever the state file says.
//!
//! Triggers are off on the copy (their effects are in the changesets) and
//! foreign keys are not enforced (the active enforced them). Commits are
//! `synchronous=FULL`: a generation is reported replayed (and may then be
//! truncated on the active) only once its records are durable here.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};
use shipper::apply::{apply_changesets, apply_record, read_guard};
use shipper::format::{Body, Reassembler, Record};
use shipper::log::{SealedSegment, list_sealed, read_header};
use shipper::{ContentHash, DatabaseId, Error, Generation, Lsn, Result};

/// Changeset records combined into one apply.
pub const APPLY_BATCH: usize = 1000;

/// What one call of `replay_available` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Records applied.
    pub records: u64,
    /// The newest generation whose records are all applied.
    pub replayed: Option<Generation>,
    /// The copy's LSN afterwards, and the log's content hash there.
    pub lsn: Lsn,
    pub hash: Option<ContentHash>,
}

/// The copy's database, open for replay.
#[derive(Debug)]
pub struct Replayer {
    conn: Connection,
    db: DatabaseId,
    schema_checked: bool,
}

impl Replayer {
    /// Opens the copy at `database` (WAL mode, so readers can read while
    /// replay runs).
    pub fn open(database: &Path) -> Result<Replayer> {
        if !database.exists() {
            return Err(Error::NotInitialized {
                path: database.to_path_buf(),
            });
        }
        let conn = Connection::open_with_flags(
            database,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| Error::sql(format!("open the copy {}", database.display()), e))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
             PRAGMA foreign_keys = OFF; PRAGMA busy_timeout = 5000;",
        )
        .map_err(|e| Error::sql("configure the copy", e))?;
        shipper::changeset::set_triggers_enabled(&conn, false)?;
        let (_, db) = read_guard(&conn)?;
        Ok(Replayer {
            conn,
            db,
            schema_checked: false,
        })
    }

    pub fn database_id(&self) -> DatabaseId {
        self.db
    }

    /// The LSN the copy holds.
    pub fn lsn(&self) -> Result<Lsn> {
        Ok(read_guard(&self.conn)?.0)
    }

    /// Applies every complete record in `logs` past the copy's LSN.
    pub fn replay_available(&mut self, logs: &Path) -> Result<Progress> {
        self.replay_sealed_before(logs, None)
    }

    /// Like `replay_available`, but stops at the first segment sealed after
    /// `cutoff_us` (µs since the Unix epoch): a lagged copy.
    pub fn replay_sealed_before(
        &mut self,
        logs: &Path,
        cutoff_us: Option<u64>,
    ) -> Result<Progress> {
        let guard = self.lsn()?;
        let mut progress = Progress {
            lsn: guard,
            ..Default::default()
        };
        let segments = list_sealed(logs)?;
        // The newest segment whose frames start at or before guard + 1.
        let mut start = None;
        for (i, (_, path)) in segments.iter().enumerate().rev() {
            if read_header(path)?.prev_lsn <= guard {
                start = Some(i);
                break;
            }
        }
        let Some(start) = start else {
            return Ok(progress);
        };
        let mut reasm = Reassembler::default();
        // The schema the log expects at the copy's LSN: the first segment's
        // header, moved on by any DDL record up to that LSN. Checked once,
        // before the first record is applied.
        let mut expected_schema = None;
        for (i, (generation, path)) in segments[start..].iter().enumerate() {
            let seg = SealedSegment::open(path, Some(self.db))?;
            let scan = seg.scan()?;
            if let (Some(cutoff), Some(t)) = (cutoff_us, scan.trailer.as_ref())
                && t.sealed_us > cutoff
            {
                break;
            }
            if i == 0 && !self.schema_checked {
                expected_schema = Some(scan.header.schema_hash);
            }
            let tx = self
                .conn
                .unchecked_transaction()
                .map_err(|e| Error::sql("begin replay", e))?;
            let mut applied = 0u64;
            let mut last = None;
            // Consecutive changeset records, applied together.
            let mut batch: Vec<(Lsn, Vec<u8>)> = Vec::new();
            let flush = |batch: &mut Vec<(Lsn, Vec<u8>)>| -> Result<()> {
                let refs: Vec<(Lsn, &[u8])> =
                    batch.iter().map(|(l, c)| (*l, c.as_slice())).collect();
                apply_changesets(&self.conn, &refs)?;
                batch.clear();
                Ok(())
            };
            for frame in &scan.frames {
                if !reasm.in_progress() && frame.lsn <= progress.lsn {
                    // Already in the copy. Only a DDL record matters here,
                    // for the schema check; one begun in an earlier segment
                    // cannot be read, and then the check is skipped.
                    if expected_schema.is_some() && frame.kind == shipper::format::RecordKind::Ddl {
                        if frame.fragment != shipper::format::Fragment::Whole {
                            expected_schema = None;
                        } else if let Ok(Record {
                            body: Body::Ddl { schema_hash, .. },
                            ..
                        }) = Record::decode(frame.kind, frame.payload)
                        {
                            expected_schema = Some(schema_hash);
                        }
                    }
                    continue;
                }
                if !self.schema_checked {
                    if let Some(expected) = expected_schema {
                        let found = shipper::hash::schema_hash(&self.conn)?;
                        if found != expected {
                            return Err(Error::SchemaMismatch {
                                lsn: frame.lsn,
                                expected,
                                found,
                            });
                        }
                    }
                    self.schema_checked = true;
                }
                let done = reasm.push(frame).map_err(|reason| Error::Corrupt {
                    path: path.clone(),
                    generation: *generation,
                    offset: frame.offset as u64,
                    reason,
                })?;
                if let Some((kind, lsn, payload)) = done {
                    let rec = Record::decode(kind, &payload).map_err(|e| Error::Corrupt {
                        path: path.clone(),
                        generation: *generation,
                        offset: frame.offset as u64,
                        reason: e.reason,
                    })?;
                    applied += 1;
                    last = Some((lsn, rec.hash));
                    match rec.body {
                        Body::Changeset(cs) => {
                            batch.push((lsn, cs));
                            if batch.len() >= APPLY_BATCH {
                                flush(&mut batch)?;
                            }
                        }
                        Body::Ddl { .. } => {
                            flush(&mut batch)?;
                            apply_record(&self.conn, lsn, &rec)?;
                        }
                    }
                }
            }
            flush(&mut batch)?;
            tx.commit().map_err(|e| Error::sql("commit replay", e))?;
            if let Some((lsn, hash)) = last {
                progress.lsn = lsn;
                progress.hash = Some(hash);
            }
            progress.records += applied;
            if !reasm.in_progress() {
                progress.replayed = Some(*generation);
                if applied > 0
                    && let Some(t) = &scan.trailer
                {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_micros() as u64)
                        .unwrap_or(0);
                    crate::REPLAY_LAG.observe(std::time::Duration::from_micros(
                        now.saturating_sub(t.sealed_us),
                    ));
                }
            }
        }
        Ok(progress)
    }

    /// The connection (for checks that read the copy).
    pub fn conn(&self) -> &Connection {
        &self.conn
    }
}
