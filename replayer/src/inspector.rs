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
    let checked = SealedSegment::verify(path, Some(db));
    let ins = finish(path, generation, checked)?;
    follows(path, &ins, prev)?;
    Ok(ins)
}

/// The inspection of a segment copied to `path` whose bytes are at hand,
/// without the chain check (`follows`): what can run on the copier's lanes,
/// in any order.
pub fn inspect_bytes(
    path: &Path,
    bytes: &[u8],
    generation: Generation,
    db: DatabaseId,
) -> Result<Inspected> {
    finish(
        path,
        generation,
        SealedSegment::check_bytes(path, bytes, Some(db)),
    )
}

/// The chain check: `ins` (at `path`) follows `prev`, when given.
pub fn follows(path: &Path, ins: &Inspected, prev: Option<&Inspected>) -> Result<()> {
    if let Some(p) = prev {
        format::check_successor(&p.header, &p.trailer, &ins.header).map_err(|r| {
            Error::Corrupt {
                path: path.to_path_buf(),
                generation: ins.header.generation,
                offset: 0,
                reason: r,
            }
        })?;
    }
    Ok(())
}

/// One full verification's result (every byte), with the generation the
/// file must hold.
fn finish(
    path: &Path,
    generation: Generation,
    checked: Result<(SegmentHeader, Trailer)>,
) -> Result<Inspected> {
    // The copy's temporary name carries no generation: name it here.
    let (header, trailer) = checked.map_err(|e| match e {
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
    if header.generation != generation {
        return Err(Error::Corrupt {
            path: path.to_path_buf(),
            generation,
            offset: 48,
            reason: format::Reason::BadField {
                field: "generation",
                detail: format!(
                    "expected {generation}, the header says {}",
                    header.generation
                ),
            },
        });
    }
    Ok(Inspected { header, trailer })
}

/// Reads back a segment that already passed inspection (after a restart).
pub fn reload(path: &Path, generation: Generation, db: DatabaseId) -> Result<Inspected> {
    inspect(path, generation, db, None)
}
