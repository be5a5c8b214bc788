//! `logship verify` and `logship dump`: read segment files through the same
//! decoder the store and the replayer use, and report to an operator.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use shipper::format::{self, Body, DdlPart, Fragment, SegmentHeader, Trailer};
use shipper::log::SealedSegment;
use shipper::{Error, Generation};

/// What one file turned out to be.
struct Checked {
    path: PathBuf,
    header: SegmentHeader,
    trailer: Option<Trailer>,
    frames: usize,
    first_lsn: Option<u64>,
    last_lsn: u64,
}

fn check_one(path: &Path) -> std::result::Result<Checked, Error> {
    let is_current = path.file_name().and_then(|n| n.to_str()) == Some(format::CURRENT_FILE_NAME);
    let summarize = |scan: &format::SegmentScan<'_>| Checked {
        path: path.to_path_buf(),
        header: scan.header.clone(),
        trailer: scan.trailer.clone(),
        frames: scan.frames.len(),
        first_lsn: scan.frames.first().map(|f| f.lsn.0),
        last_lsn: scan
            .frames
            .last()
            .map(|f| f.lsn.0)
            .unwrap_or(scan.header.prev_lsn.0),
    };
    if is_current {
        let bytes = std::fs::read(path).map_err(|e| Error::io("read", path, e))?;
        let corrupt = |generation, e: format::DecodeError| Error::Corrupt {
            path: path.to_path_buf(),
            generation,
            offset: e.offset,
            reason: e.reason,
        };
        let scan =
            format::scan_current(&bytes, None).map_err(|e| corrupt(Generation::default(), e))?;
        if let Some(torn) = scan.torn.clone() {
            return Err(corrupt(scan.header.generation, torn));
        }
        Ok(summarize(&scan))
    } else {
        let seg = SealedSegment::open(path, None)?;
        let scan = seg.scan()?;
        Ok(summarize(&scan))
    }
}

pub fn verify(files: &[PathBuf]) -> Result<ExitCode> {
    let mut sound = Vec::new();
    let mut bad = 0usize;
    for path in files {
        match check_one(path) {
            Ok(c) => sound.push(c),
            Err(e) => {
                bad += 1;
                println!("BAD  {e}");
            }
        }
    }
    // Cross-file checks: one database, and a chain with no gap.
    sound.sort_by_key(|c| c.header.generation);
    let mut chain_errors: Vec<(usize, String)> = Vec::new();
    for i in 0..sound.len() {
        let c = &sound[i];
        let first = &sound[0];
        if c.header.database_id != first.header.database_id {
            chain_errors.push((
                i,
                format!(
                    "belongs to database {}, but {} belongs to {}",
                    c.header.database_id,
                    first.path.display(),
                    first.header.database_id
                ),
            ));
            continue;
        }
        if i == 0 {
            continue;
        }
        let prev = &sound[i - 1];
        match &prev.trailer {
            Some(t) => {
                if let Err(reason) = format::check_successor(&prev.header, t, &c.header) {
                    chain_errors.push((i, format!("after {}: {reason}", prev.path.display())));
                }
            }
            None => chain_errors.push((
                i,
                format!("follows {}, which is not sealed", prev.path.display()),
            )),
        }
    }
    for (i, c) in sound.iter().enumerate() {
        if let Some((_, msg)) = chain_errors.iter().find(|(j, _)| *j == i) {
            bad += 1;
            println!(
                "BAD  {}: generation {}, offset 0: {msg}",
                c.path.display(),
                c.header.generation
            );
            continue;
        }
        let lsns = match c.first_lsn {
            Some(first) => format!("lsn {first}-{}", c.last_lsn),
            None => "no records".to_string(),
        };
        println!(
            "ok   {}: generation {} epoch {} {} records {} {}",
            c.path.display(),
            c.header.generation,
            c.header.epoch,
            if c.trailer.is_some() {
                "sealed"
            } else {
                "current"
            },
            c.frames,
            lsns
        );
    }
    if bad == 0 {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "logship: {bad} of {} segment files failed verification",
            files.len()
        );
        Ok(logship::exit::Class::Corrupt.exit())
    }
}

pub fn dump(path: &Path, changes: bool) -> Result<ExitCode> {
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    let is_current = path.file_name().and_then(|n| n.to_str()) == Some(format::CURRENT_FILE_NAME);
    let scan = if is_current {
        format::scan_current(&bytes, None)
    } else {
        format::scan_sealed(&bytes, None)
    }
    .map_err(|e| Error::Corrupt {
        path: path.to_path_buf(),
        generation: Generation::default(),
        offset: e.offset,
        reason: e.reason,
    })?;
    println!("file           {}", path.display());
    print!("{}", describe_segment(&scan.header, scan.trailer.as_ref()));
    match &scan.trailer {
        Some(_) => {}
        None => {
            println!("state          current (not sealed)");
            println!(
                "records        {} (ending at offset {})",
                scan.frames.len(),
                scan.records_end
            );
            if let Some(t) = &scan.torn {
                println!("torn tail      at offset {}: {}", t.offset, t.reason);
            }
        }
    }
    println!();
    let mut reasm = format::Reassembler::default();
    for frame in &scan.frames {
        let frag = match frame.fragment {
            Fragment::Whole => "",
            Fragment::First => " first-fragment",
            Fragment::Middle => " middle-fragment",
            Fragment::Last => " last-fragment",
        };
        println!(
            "@{:<8} lsn {:<8} {:?}{frag} {} bytes",
            frame.offset,
            frame.lsn,
            frame.kind,
            frame.payload.len()
        );
        let Ok(Some((kind, lsn, payload))) = reasm.push(frame) else {
            continue;
        };
        let rec = match format::Record::decode(kind, &payload) {
            Ok(r) => r,
            Err(e) => {
                println!("           undecodable record at lsn {lsn}: {}", e.reason);
                continue;
            }
        };
        println!("{}", describe_record(&rec));
        match &rec.body {
            Body::Changeset(cs) => {
                if changes {
                    print_changes(cs);
                }
            }
            Body::Ddl { schema_hash, parts } => {
                println!("           schema {schema_hash}");
                for part in parts {
                    match part {
                        DdlPart::Sql(sql) => println!("           ddl: {sql}"),
                        DdlPart::Changeset(cs) if changes => print_changes(cs),
                        DdlPart::Changeset(cs) => {
                            println!("           changeset {} bytes", cs.len())
                        }
                    }
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_changes(cs: &[u8]) {
    match shipper::changeset::describe(cs) {
        Ok(lines) => {
            for l in lines {
                println!("             {l}");
            }
        }
        Err(e) => println!("             undecodable changeset: {e}"),
    }
}

/// What `dump` shows of a segment's header and, when sealed, its trailer.
fn describe_segment(h: &SegmentHeader, trailer: Option<&Trailer>) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "database       {}", h.database_id);
    let _ = writeln!(
        out,
        "generation     {} ({})",
        h.generation,
        format::segment_file_name(h.generation)
    );
    let _ = writeln!(out, "epoch          {}", h.epoch);
    let _ = writeln!(out, "created        {}", fmt_time(h.created_us));
    let _ = writeln!(out, "prev checksum  {:08x}", h.prev_checksum);
    let _ = writeln!(out, "prev lsn       {}", h.prev_lsn);
    let _ = writeln!(out, "base hash      {} at lsn {}", h.base_hash, h.hash_lsn);
    let _ = writeln!(out, "schema hash    {}", h.schema_hash);
    if let Some(t) = trailer {
        let _ = writeln!(out, "state          sealed {}", fmt_time(t.sealed_us));
        let _ = writeln!(
            out,
            "records        {} (ending at offset {})",
            t.record_count, t.records_end
        );
        let _ = writeln!(out, "last lsn       {}", t.last_lsn);
        let _ = writeln!(out, "hash           {} at lsn {}", t.hash, t.hash_lsn);
        let _ = writeln!(out, "checksum       {:08x}", t.segment_checksum);
    }
    out
}

/// The line `dump` shows for a decoded record.
fn describe_record(rec: &format::Record) -> String {
    format!(
        "           time {} hash {}",
        fmt_time(rec.time_us),
        rec.hash
    )
}

/// The last instant RFC 3339 can write (9999-12-31T23:59:59.999999Z), in
/// microseconds since the Unix epoch.
const MAX_RFC3339_US: u64 = 253_402_300_799_999_999;

/// A time field (microseconds since the Unix epoch) for people: RFC 3339,
/// or the raw number where no date can show it. Total: the fields come from
/// files and may hold anything the checksums accept.
fn fmt_time(us: u64) -> String {
    if us > MAX_RFC3339_US {
        return format!("{us} µs since the Unix epoch (out of range: after year 9999)");
    }
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_micros(us);
    humantime::format_rfc3339_micros(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use shipper::{ContentHash, DatabaseId, Epoch, Lsn, SchemaHash};

    #[test]
    fn times_past_year_9999_show_their_number() {
        assert_eq!(fmt_time(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(fmt_time(MAX_RFC3339_US), "9999-12-31T23:59:59.999999Z");
        assert_eq!(
            fmt_time(MAX_RFC3339_US + 1),
            "253402300800000000 µs since the Unix epoch (out of range: after year 9999)"
        );
        assert!(fmt_time(u64::MAX).starts_with("18446744073709551615 µs"));
    }

    fn header() -> impl Strategy<Value = SegmentHeader> {
        (
            any::<[u8; 16]>(),
            any::<(u64, u64, u64, u32)>(),
            any::<(u64, u64, u128, u128)>(),
        )
            .prop_map(
                |(id, (epoch, generation, created_us, prev_checksum), (prev, hl, bh, sh))| {
                    SegmentHeader {
                        database_id: DatabaseId(id),
                        epoch: Epoch(epoch),
                        generation: Generation(generation),
                        created_us,
                        prev_checksum,
                        prev_lsn: Lsn(prev),
                        hash_lsn: Lsn(hl),
                        base_hash: ContentHash(bh),
                        schema_hash: SchemaHash(sh),
                    }
                },
            )
    }

    fn trailer() -> impl Strategy<Value = Option<Trailer>> {
        proptest::option::of(
            (any::<(u32, u32, u64, u64)>(), any::<(u128, u64, u32)>()).prop_map(
                |((record_count, records_end, last, hl), (hash, sealed_us, segment_checksum))| {
                    Trailer {
                        record_count,
                        records_end,
                        last_lsn: Lsn(last),
                        hash_lsn: Lsn(hl),
                        hash: ContentHash(hash),
                        sealed_us,
                        segment_checksum,
                    }
                },
            ),
        )
    }

    /// Times near the edges of what a date can show, and anything else.
    fn time() -> impl Strategy<Value = u64> {
        prop_oneof![
            any::<u64>(),
            (MAX_RFC3339_US - 2_000_000)..=(MAX_RFC3339_US + 2_000_000),
            (u64::MAX - 1000)..=u64::MAX,
            0u64..1000,
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn dump_formats_any_field_values_without_panicking(
            mut h in header(),
            mut t in trailer(),
            created in time(),
            sealed in time(),
            record_time in time(),
            record_hash in any::<u128>(),
        ) {
            h.created_us = created;
            if let Some(t) = t.as_mut() {
                t.sealed_us = sealed;
            }
            let text = describe_segment(&h, t.as_ref());
            let want = format!("created        {}", fmt_time(created));
            prop_assert!(text.contains(&want), "{}", text);
            if created > MAX_RFC3339_US {
                prop_assert!(text.contains(&format!("created        {created} µs")), "{}", text);
            }
            let rec = format::Record {
                time_us: record_time,
                hash: ContentHash(record_hash),
                body: format::Body::Changeset(Vec::new()),
            };
            let line = describe_record(&rec);
            prop_assert!(line.contains(&fmt_time(record_time)), "{}", line);
        }
    }
}
