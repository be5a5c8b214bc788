//! The last logs at failover (DAG's attempt-copy-last-logs): the valid
//! prefix of the old active's *open* segment, read from its share once the
//! sealed segments have been drained. Every complete, CRC-checked frame up
//! to the first bad or torn byte is kept; the prefix must continue the
//! copy's own log (the next generation after its last sealed one, whose
//! checksum it names), or, for a copy seeded in the middle of that
//! segment, hold the copy's position. Installed as the copy's current
//! segment, it is replayed by the store's own recovery when the copy opens
//! as the store.
//!
//! Why this is safe: a passive reads the open segment only once it may
//! take over, so the old active has been fenced by then and acknowledged
//! nothing it wrote after; a record it made durable and never acknowledged
//! may still be in the prefix, and is then kept (its client was told
//! `Fenced`, an unknown outcome, as for any commit whose answer is lost).
//! Records the old active writes after the read are not in the prefix, and
//! its rejoin undoes them (they are past the new epoch's start).

use std::path::Path;

use shipper::format::{self, CURRENT_FILE_NAME, Fragment, SEGMENT_SIZE};
use shipper::share::Share;
use shipper::{DatabaseId, Generation, Lsn, Result};

/// The valid prefix of the old active's open segment.
#[derive(Clone, Debug)]
pub struct OpenTail {
    pub generation: Generation,
    /// The last complete record's LSN in it.
    pub complete: Lsn,
    /// Complete records past the copy's position.
    pub records: u64,
    /// The segment's image: the prefix, then zeros.
    image: Vec<u8>,
}

/// What the read of the old active's open segment came to.
#[derive(Clone, Debug)]
pub enum TailRead {
    /// Records past the copy's position, continuing its log.
    Copied(OpenTail),
    /// Nothing to add, and why: an open segment being sealed (its sealed
    /// copy was drained), or one with no records past the copy. Nothing the
    /// old active acknowledged is missing from the copy.
    Nothing(String),
    /// The share holds no open segment: it is not the old active's log
    /// directory (only sealed segments are published there), or the file
    /// is gone. What the old active acknowledged past its last sealed
    /// segment is unknown (`LastLogs::Unread`).
    Absent(String),
    /// An open segment is there but cannot be taken, and why (torn or of
    /// another size, another database's, not continuing the copy's log):
    /// what it holds past the copy is unknown, and the mount dial counts it
    /// so (`LastLogs::Unread`).
    Unusable(String),
}

impl TailRead {
    /// Whether the copy, with what this read added, holds every record the
    /// old active could have acknowledged: true for `Copied` and
    /// `Nothing`, false when the open segment was absent or unusable.
    pub fn complete(&self) -> bool {
        matches!(self, TailRead::Copied(_) | TailRead::Nothing(_))
    }
}

/// Reads `LS.log` from the old active's `source` share and checks it
/// against the copy's log in `logs` and its database position `db_lsn`.
/// Fails only when the share cannot be read.
pub fn read(source: &Share, logs: &Path, db: DatabaseId, db_lsn: Lsn) -> Result<TailRead> {
    let Some(bytes) = source.read(CURRENT_FILE_NAME, SEGMENT_SIZE as u64)? else {
        return Ok(TailRead::Absent(
            "the old active's share holds no open segment (a share that is not its log directory publishes sealed segments only)".into(),
        ));
    };
    from_bytes(bytes, logs, db, db_lsn)
}

/// The same, from what block mode received (`crate::block`): the received
/// file that continues the copy's log, its trailer (if the seal arrived)
/// set aside, since the copier had not taken that sealed segment.
pub fn read_received(
    received: &Path,
    logs: &Path,
    db: DatabaseId,
    db_lsn: Lsn,
) -> Result<TailRead> {
    let mut last = TailRead::Absent("block mode received nothing".into());
    for (_, path) in crate::block::list(received).into_iter().rev() {
        let mut bytes = std::fs::read(&path)
            .map_err(|e| shipper::Error::io("read received segment", &path, e))?;
        if bytes.len() == SEGMENT_SIZE {
            bytes[format::TRAILER_OFFSET..].fill(0);
        }
        match from_bytes(bytes, logs, db, db_lsn)? {
            r @ TailRead::Copied(_) => return Ok(r),
            r @ TailRead::Nothing(_) if !matches!(last, TailRead::Nothing(_)) => last = r,
            r => {
                if matches!(last, TailRead::Absent(_)) {
                    last = r;
                }
            }
        }
    }
    Ok(last)
}

/// Checks an open segment's `bytes` against the copy's log in `logs` and
/// its database position `db_lsn`.
fn from_bytes(bytes: Vec<u8>, logs: &Path, db: DatabaseId, db_lsn: Lsn) -> Result<TailRead> {
    if bytes.len() != SEGMENT_SIZE {
        return Ok(TailRead::Unusable(format!(
            "the old active's open segment is {} bytes, not {SEGMENT_SIZE}",
            bytes.len()
        )));
    }
    let scan = match format::scan_current(&bytes, Some(db)) {
        Ok(s) => s,
        Err(e) => {
            return Ok(TailRead::Unusable(format!(
                "the old active's open segment does not decode: at offset {}: {}",
                e.offset, e.reason
            )));
        }
    };
    if scan.trailer.is_some() {
        return Ok(TailRead::Nothing(
            "the old active's open segment was being sealed (its sealed copy was drained)".into(),
        ));
    }
    let header = &scan.header;
    let complete = scan.complete_lsn();
    if complete <= db_lsn {
        return Ok(TailRead::Nothing(format!(
            "the old active's open segment (generation {}) holds nothing past the copy's LSN {db_lsn}",
            header.generation
        )));
    }
    // It must continue the copy's log: right after its last sealed segment,
    // or (a copy seeded in this segment) start at or before its position.
    match shipper::log::list_sealed(logs)?.last() {
        Some((g, path)) => {
            let prev = shipper::log::read_header(path)?;
            let trailer = shipper::log::read_trailer(path)?;
            if let Err(why) = shipper::format::check_successor(&prev, &trailer, header) {
                return Ok(TailRead::Unusable(format!(
                    "the old active's open segment (generation {}) does not continue the copy's log (its last segment is generation {g}): {why}",
                    header.generation
                )));
            }
            if header.hash_lsn > db_lsn {
                return Ok(TailRead::Unusable(format!(
                    "the copy (LSN {db_lsn}) has not replayed its own log up to the open segment (which starts after LSN {})",
                    header.hash_lsn
                )));
            }
        }
        None if header.hash_lsn > db_lsn => {
            return Ok(TailRead::Unusable(format!(
                "the old active's open segment starts after LSN {}, past the copy's LSN {db_lsn}",
                header.hash_lsn
            )));
        }
        None => {}
    }
    let mut image = vec![0u8; SEGMENT_SIZE];
    image[..scan.records_end].copy_from_slice(&bytes[..scan.records_end]);
    let records = scan
        .frames
        .iter()
        .filter(|f| matches!(f.fragment, Fragment::Whole | Fragment::Last) && f.lsn > db_lsn)
        .count() as u64;
    Ok(TailRead::Copied(OpenTail {
        generation: header.generation,
        complete,
        records,
        image,
    }))
}

/// Installs `tail` as the copy's current segment in `logs` (written aside,
/// made durable, renamed).
pub fn install(logs: &Path, tail: &OpenTail) -> Result<()> {
    shipper::share::write_atomic(&logs.join(CURRENT_FILE_NAME), &tail.image)
}

/// Removes an installed open segment again (the copy stays passive: copies
/// hold sealed segments only).
pub fn remove(logs: &Path) -> Result<()> {
    Share::Dir(logs.to_path_buf()).remove(CURRENT_FILE_NAME)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shipper::Error;
    use shipper::store::{Store, StoreOptions};

    /// A store with records in its open segment after one sealed segment;
    /// its data directory.
    fn store_with_open_records() -> (tempfile::TempDir, DatabaseId, Lsn, Lsn) {
        let dir = tempfile::tempdir().unwrap();
        let db = Store::init(dir.path()).unwrap();
        let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
        s.transaction(|tx| tx.ddl("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)"))
            .unwrap();
        s.seal().unwrap();
        let sealed = s.state().lsn;
        for i in 0..5 {
            s.transaction(move |tx| {
                tx.conn()
                    .execute("INSERT INTO t VALUES (?1, 'x')", [i])
                    .map_err(|e| Error::sql("insert", e))?;
                Ok(())
            })
            .unwrap();
        }
        let end = s.state().lsn;
        drop(s);
        (dir, db, sealed, end)
    }

    #[test]
    fn the_open_segment_continuing_the_copy_is_taken_to_its_last_complete_record() {
        let (src, db, sealed, end) = store_with_open_records();
        let share = Share::open(
            src.path().join("logs").to_str().unwrap(),
            &Default::default(),
        )
        .unwrap();
        // A copy holding the sealed segment, replayed to its end.
        let copy = tempfile::tempdir().unwrap();
        for (g, p) in shipper::log::list_sealed(&src.path().join("logs")).unwrap() {
            std::fs::copy(&p, copy.path().join(format::segment_file_name(g))).unwrap();
        }
        let TailRead::Copied(t) = read(&share, copy.path(), db, sealed).unwrap() else {
            panic!("nothing copied");
        };
        assert_eq!(t.complete, end);
        assert_eq!(t.records, end.0 - sealed.0);
        // A torn last frame: the prefix stops before it.
        let cur = src.path().join("logs").join(CURRENT_FILE_NAME);
        let mut bytes = std::fs::read(&cur).unwrap();
        let scan = format::scan_current(&bytes, Some(db)).unwrap();
        let last = scan.frames.last().unwrap().offset;
        drop(scan);
        bytes[last + 20] ^= 0xff;
        std::fs::write(&cur, &bytes).unwrap();
        let TailRead::Copied(t) = read(&share, copy.path(), db, sealed).unwrap() else {
            panic!("nothing copied");
        };
        assert_eq!(t.complete, Lsn(end.0 - 1));
        install(copy.path(), &t).unwrap();
        assert!(copy.path().join(CURRENT_FILE_NAME).exists());
        remove(copy.path()).unwrap();
        assert!(!copy.path().join(CURRENT_FILE_NAME).exists());
        // Another database's segment is not taken, and says so.
        let other = DatabaseId::random().unwrap();
        assert!(matches!(
            read(&share, copy.path(), other, sealed).unwrap(),
            TailRead::Unusable(_)
        ));
        // A copy already at the end: nothing to add.
        assert!(matches!(
            read(&share, copy.path(), db, Lsn(end.0 - 1)).unwrap(),
            TailRead::Nothing(_)
        ));
    }

    #[test]
    fn an_open_segment_that_does_not_continue_the_copy_is_refused() {
        let (src, db, sealed, _) = store_with_open_records();
        let share = Share::open(
            src.path().join("logs").to_str().unwrap(),
            &Default::default(),
        )
        .unwrap();
        // A copy with no sealed segment but a database past the segment's start: taken.
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            read(&share, empty.path(), db, sealed).unwrap(),
            TailRead::Copied(_)
        ));
        // A copy whose database is behind the segment's start: a gap.
        let TailRead::Unusable(why) = read(&share, empty.path(), db, Lsn(0)).unwrap() else {
            panic!("a gap was taken");
        };
        assert!(why.contains("past the copy's LSN 0"), "{why}");
    }

    #[test]
    fn a_share_without_the_open_segment_leaves_the_copy_incomplete() {
        let (src, db, sealed, _) = store_with_open_records();
        // A share that publishes sealed segments only: a directory without
        // `LS.log`.
        let sealed_only = tempfile::tempdir().unwrap();
        for e in std::fs::read_dir(src.path().join("logs"))
            .unwrap()
            .flatten()
        {
            if e.file_name() != CURRENT_FILE_NAME {
                std::fs::copy(e.path(), sealed_only.path().join(e.file_name())).unwrap();
            }
        }
        let share = Share::open(sealed_only.path().to_str().unwrap(), &Default::default()).unwrap();
        let copy = tempfile::tempdir().unwrap();
        let r = read(&share, copy.path(), db, sealed).unwrap();
        assert!(matches!(r, TailRead::Absent(_)) && !r.complete(), "{r:?}");
    }
}
