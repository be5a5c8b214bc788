//! The copier: brings the next sealed segment from the active's share into
//! the copy's log directory, under a temporary name (`.part`) that the
//! daemon renames to the generation name once the inspector passed it. It
//! finds where to start after a seed, and tells a missing segment from a gap.

use std::path::{Path, PathBuf};

use shipper::format::{self, HEADER_SIZE, SEGMENT_SIZE, SegmentHeader};
use shipper::share::Share;
use shipper::{Generation, Lsn, Result};

/// Copies generation `g` from `source` into `dir` as `<name>.part` (a
/// name no reader takes for a segment) and returns that path. `Ok(None)`
/// when the share does not hold it (yet).
pub fn copy(source: &Share, dir: &Path, g: Generation) -> Result<Option<PathBuf>> {
    let name = format::segment_file_name(g);
    let dest = dir.join(format!("{name}{}", shipper::share::TEMP_SUFFIX));
    // Never more than a segment: a huge file under a segment's name must
    // not fill the copy's disk.
    let fetched = source
        .fetch(&name, &dest, SEGMENT_SIZE as u64)
        .map_err(|e| match e {
            shipper::Error::TooLarge { size, max } => shipper::Error::Corrupt {
                path: PathBuf::from(source.display()).join(&name),
                generation: g,
                offset: 0,
                reason: format::Reason::LengthTooLarge {
                    len: size as u64,
                    max: max as u64,
                },
            },
            e => e,
        })?;
    if let Some(len) = fetched {
        crate::BYTES_COPIED.fetch_add(len, std::sync::atomic::Ordering::Relaxed);
    }
    match fetched {
        Some(len) if len == SEGMENT_SIZE as u64 => Ok(Some(dest)),
        // A short file is left for the inspector to refuse with its offset.
        Some(_) => Ok(Some(dest)),
        None => Ok(None),
    }
}

/// The sealed generations the share holds, ascending.
pub fn sealed_generations(source: &Share) -> Result<Vec<Generation>> {
    let mut v: Vec<Generation> = source
        .list()?
        .iter()
        .filter_map(|n| format::parse_segment_file_name(n))
        .collect();
    v.sort();
    Ok(v)
}

/// Where a copy at LSN `lsn` starts: the newest sealed generation in the
/// share whose records begin at or before `lsn + 1`. `Ok(None)` when the
/// share holds no sealed segment yet; `Err` with the share's first LSN when
/// it no longer reaches back to `lsn` (the copy needs a reseed).
pub fn start_generation(source: &Share, lsn: Lsn) -> Result<Option<Generation>> {
    let gens = sealed_generations(source)?;
    let mut first_prev_lsn = None;
    for g in gens.iter().rev() {
        let name = format::segment_file_name(*g);
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
