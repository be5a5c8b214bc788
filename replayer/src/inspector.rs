//! The inspector: verifies a copied segment whole before it may be
//! replayed, as Exchange's LogInspector does: header, database id,
//! generation (file name and header agree, no gap after the previous
//! inspected segment), the previous-segment checksum chain, the epoch, every
//! record CRC and LSN, the zero padding and the trailer. It reads; it never
//! repairs.

use std::path::Path;

use shipper::format::{self, SegmentHeader, Trailer};
use shipper::log::SealedSegment;
use shipper::{DatabaseId, Error, Generation, Result};

/// What a segment that passed inspection looks like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inspected {
    pub header: SegmentHeader,
    pub trailer: Trailer,
}

/// Inspects the segment at `path`, which must be generation `generation`
/// of database `db` and, when `prev` is given, follow it.
pub fn inspect(
    path: &Path,
    generation: Generation,
    db: DatabaseId,
    prev: Option<&Inspected>,
) -> Result<Inspected> {
    // One full verification (every byte), then the chain checks.
    // The copy's temporary name carries no generation: name it here.
    let (header, trailer) = SealedSegment::verify(path, Some(db)).map_err(|e| match e {
        Error::Corrupt {
            path,
            generation: Generation(0),
            offset,
            reason,
        } => Error::Corrupt {
            path,
            generation,
            offset,
            reason,
        },
        e => e,
    })?;
    let corrupt = |offset: u64, reason: format::Reason| Error::Corrupt {
        path: path.to_path_buf(),
        generation,
        offset,
        reason,
    };
    if header.generation != generation {
        return Err(corrupt(
            48,
            format::Reason::BadField {
                field: "generation",
                detail: format!(
                    "expected {generation}, the header says {}",
                    header.generation
                ),
            },
        ));
    }
    if let Some(p) = prev {
        format::check_successor(&p.header, &p.trailer, &header).map_err(|r| corrupt(0, r))?;
    }
    Ok(Inspected { header, trailer })
}

/// Reads back a segment that already passed inspection (after a restart).
pub fn reload(path: &Path, generation: Generation, db: DatabaseId) -> Result<Inspected> {
    inspect(path, generation, db, None)
}
