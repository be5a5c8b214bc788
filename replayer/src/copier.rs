//! The copier: brings the next sealed segments from the active's share into
//! the copy's log directory, several at a time when the copy is behind,
//! under a temporary name (`.part`) that the daemon renames to the
//! generation name once the inspector passed it. It finds where to start
//! after a seed, and tells a missing segment from a gap.

use std::path::{Path, PathBuf};

use shipper::format::{self, HEADER_SIZE, NameCase, SEGMENT_SIZE, SegmentHeader};
use shipper::share::Share;
use shipper::{DatabaseId, Generation, Lsn, Result};

use crate::inspector::{self, Inspected};

/// A segment the copier brought into the copy's log directory under its
/// temporary name, with its inspection (all but the chain check, which
/// needs the segments in order: `inspector::follows`).
#[derive(Debug)]
pub struct Fetched {
    pub path: PathBuf,
    pub inspected: Result<Inspected>,
}

/// Copies generations `from`, `from + 1`, ... (`count` of them) from
/// `source` into `dir` as `<name>.part` (a name no reader takes for a
/// segment), on `lanes` connections at a time, and inspects each while its
/// bytes are at hand. `take(generation, result)` gets them in generation
/// order as they come (`Ok(None)`: the share does not hold it yet); when it
/// returns false, no further copy starts (see `Share::fetch_many`).
///
/// Names are asked for in `case`, the spelling the source writes
/// (`format::NameCase`: lower case, or upper case for a source of an older
/// build); the daemon learns it from the share's listing.
#[allow(clippy::too_many_arguments)]
pub fn copy_window(
    source: &Share,
    dir: &Path,
    from: Generation,
    count: usize,
    db: DatabaseId,
    lanes: usize,
    case: NameCase,
    take: &mut dyn FnMut(Generation, Result<Option<Fetched>>) -> bool,
) {
    let gens: Vec<Generation> = (0..count as u64).map(|i| Generation(from.0 + i)).collect();
    let jobs: Vec<(String, PathBuf)> = gens
        .iter()
        .map(|g| {
            let name = format::segment_file_name_in(*g, case);
            let dest = dir.join(format!("{name}{}", shipper::share::TEMP_SUFFIX));
            (name, dest)
        })
        .collect();
    let check = |i: usize, bytes: &[u8]| inspector::inspect_bytes(&jobs[i].1, bytes, gens[i], db);
    // Never more than a segment: a huge file under a segment's name must
    // not fill the copy's disk.
    source.fetch_many(&jobs, SEGMENT_SIZE as u64, lanes, &check, &mut |i, r| {
        let g = gens[i];
        let r = match r {
            Ok(Some((len, inspected))) => {
                crate::BYTES_COPIED.fetch_add(len, std::sync::atomic::Ordering::Relaxed);
                Ok(Some(Fetched {
                    path: jobs[i].1.clone(),
                    inspected,
                }))
            }
            Ok(None) => Ok(None),
            Err(shipper::Error::TooLarge { size, max }) => Err(shipper::Error::Corrupt {
                path: PathBuf::from(source.display()).join(&jobs[i].0),
                generation: g,
                offset: 0,
                reason: format::Reason::LengthTooLarge {
                    len: size as u64,
                    max: max as u64,
                },
            }),
            Err(e) => Err(e),
        };
        take(g, r)
    });
}

/// The sealed generations the share holds, ascending.
pub fn sealed_generations(source: &Share) -> Result<Vec<Generation>> {
    Ok(sealed_segments(source)?
        .into_iter()
        .map(|(g, _)| g)
        .collect())
}

/// The sealed segments the share holds, ascending, with each name's
/// spelling (a generation found in both spellings is listed once, lower
/// case first).
pub fn sealed_segments(source: &Share) -> Result<Vec<(Generation, NameCase)>> {
    let mut v: Vec<(Generation, NameCase)> = source
        .list()?
        .iter()
        .filter_map(|n| format::parse_segment_file_name_case(n))
        .collect();
    v.sort_by_key(|(g, c)| (*g, *c == NameCase::Upper));
    v.dedup_by_key(|(g, _)| *g);
    Ok(v)
}

/// Where a copy at LSN `lsn` starts: the newest sealed generation in the
/// share whose records begin at or before `lsn + 1`. `Ok(None)` when the
/// share holds no sealed segment yet; `Err` with the share's first LSN when
/// it no longer reaches back to `lsn` (the copy needs a reseed).
pub fn start_generation(source: &Share, lsn: Lsn) -> Result<Option<Generation>> {
    let gens = sealed_segments(source)?;
    let mut first_prev_lsn = None;
    for (g, case) in gens.iter().rev() {
        let name = format::segment_file_name_in(*g, *case);
        let Some(prefix) = source.read_prefix(&name, HEADER_SIZE)? else {
            continue;
        };
        let header = SegmentHeader::decode(&prefix).map_err(|e| shipper::Error::Corrupt {
            path: PathBuf::from(source.display()).join(&name),
            generation: *g,
            offset: e.offset,
            reason: e.reason,
        })?;
        if header.prev_lsn <= lsn {
            return Ok(Some(*g));
        }
        first_prev_lsn = Some(header.prev_lsn);
    }
    match first_prev_lsn {
        None => Ok(None),
        Some(first) => Err(shipper::Error::MissingLog {
            dir: PathBuf::from(source.display()),
            after: lsn,
            first,
        }),
    }
}
