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
        Ok(ExitCode::from(1))
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
    let h = &scan.header;
    println!("file           {}", path.display());
    println!("database       {}", h.database_id);
    println!(
        "generation     {} ({})",
        h.generation,
        format::segment_file_name(h.generation)
    );
    println!("epoch          {}", h.epoch);
    println!("created        {}", fmt_time(h.created_us));
    println!("prev checksum  {:08x}", h.prev_checksum);
    println!("prev lsn       {}", h.prev_lsn);
    println!("base hash      {} at lsn {}", h.base_hash, h.hash_lsn);
    println!("schema hash    {}", h.schema_hash);
    match &scan.trailer {
        Some(t) => {
            println!("state          sealed {}", fmt_time(t.sealed_us));
            println!(
                "records        {} (ending at offset {})",
                t.record_count, t.records_end
            );
            println!("last lsn       {}", t.last_lsn);
            println!("hash           {} at lsn {}", t.hash, t.hash_lsn);
            println!("checksum       {:08x}", t.segment_checksum);
        }
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
        println!(
            "           time {} hash {}",
            fmt_time(rec.time_us),
            rec.hash
        );
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

fn fmt_time(us: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_micros(us);
    humantime::format_rfc3339_micros(t).to_string()
}
