//! The segment files of one log directory on disk: the writer that appends
//! frames to the current segment (`LS.log`) with pwrite (direct I/O in whole
//! 4 KiB blocks where the filesystem allows it) and makes them durable with
//! fdatasync, seals full or idle segments (trailer, fsync, rename to the
//! generation name, directory fsync), repairs a torn tail on open, and the
//! reader that walks every record after an LSN across sealed segments and
//! the current one.
//!
//! This module knows segments and records as bytes; it does not know SQLite.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::error::{Error, Result};
use crate::format::{
    self, CURRENT_FILE_NAME, DecodeError, Fragment, HEADER_SIZE, MAX_FRAME_PAYLOAD, RecordKind,
    SEGMENT_SIZE, SegmentHeader, TEMP_FILE_NAME, TRAILER_OFFSET, Trailer,
};
use crate::types::{ContentHash, DatabaseId, Epoch, Generation, Lsn, SchemaHash};

/// Records smaller than this never start in a nearly full segment: the
/// segment is sealed and the record goes whole into the next one.
const MIN_FRAGMENT: usize = 4096;

pub(crate) use crate::types::now_us;

fn corrupt(path: &Path, generation: Generation, e: DecodeError) -> Error {
    Error::Corrupt {
        path: path.to_path_buf(),
        generation,
        offset: e.offset,
        reason: e.reason,
    }
}

/// Fsyncs a directory so that a rename or create in it is durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("fsync directory", dir, e))
}

/// The sealed segments in `dir`, sorted by generation.
pub fn list_sealed(dir: &Path) -> Result<Vec<(Generation, PathBuf)>> {
    let mut out = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| Error::io("list log directory", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("list log directory", dir, e))?;
        let name = entry.file_name();
        if let Some(g) = name.to_str().and_then(format::parse_segment_file_name) {
            out.push((g, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// A sealed segment, read into memory and verified whole.
///
/// Read, not memory-mapped: a map measured no faster (docs/decisions.md,
/// with the figures), and a file truncated under a mapping would kill the
/// process with SIGBUS.
#[derive(Debug)]
pub struct SealedSegment {
    pub path: PathBuf,
    map: Vec<u8>,
}

impl SealedSegment {
    /// Reads and verifies `path`. Any bad byte is `Error::Corrupt`.
    pub fn open(path: &Path, expect_db: Option<DatabaseId>) -> Result<SealedSegment> {
        Self::read_checked(path, expect_db).map(|(seg, _)| seg)
    }

    fn read_checked(
        path: &Path,
        expect_db: Option<DatabaseId>,
    ) -> Result<(SealedSegment, (SegmentHeader, Trailer))> {
        let mut file = File::open(path).map_err(|e| Error::io("open segment", path, e))?;
        let len = file
            .metadata()
            .map_err(|e| Error::io("stat segment", path, e))?
            .len();
        let generation = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(format::parse_segment_file_name)
            .unwrap_or_default();
        if len != SEGMENT_SIZE as u64 {
            return Err(corrupt(
                path,
                generation,
                DecodeError {
                    offset: len.min(SEGMENT_SIZE as u64),
                    reason: format::Reason::Short {
                        need: SEGMENT_SIZE,
                        have: len as usize,
                    },
                },
            ));
        }
        let mut map = Vec::with_capacity(SEGMENT_SIZE);
        std::io::Read::take(&mut file, SEGMENT_SIZE as u64)
            .read_to_end(&mut map)
            .map_err(|e| Error::io("read segment", path, e))?;
        let checked = Self::check_bytes(path, &map, expect_db)?;
        Ok((
            SealedSegment {
                path: path.to_path_buf(),
                map,
            },
            checked,
        ))
    }

    /// Verifies the bytes of the segment file `path` (already read) like
    /// `open`, and returns its header and trailer.
    pub fn check_bytes(
        path: &Path,
        bytes: &[u8],
        expect_db: Option<DatabaseId>,
    ) -> Result<(SegmentHeader, Trailer)> {
        let generation = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(format::parse_segment_file_name)
            .unwrap_or_default();
        let scan =
            format::scan_sealed(bytes, expect_db).map_err(|e| corrupt(path, generation, e))?;
        if generation != Generation::default() && scan.header.generation != generation {
            return Err(corrupt(
                path,
                generation,
                DecodeError {
                    offset: 48,
                    reason: format::Reason::BadField {
                        field: "generation",
                        detail: format!(
                            "header says {} but the file name says {generation}",
                            scan.header.generation
                        ),
                    },
                },
            ));
        }
        let trailer = scan.trailer.ok_or_else(|| {
            corrupt(
                path,
                scan.header.generation,
                DecodeError {
                    offset: TRAILER_OFFSET as u64,
                    reason: format::Reason::BadField {
                        field: "trailer",
                        detail: "not sealed".into(),
                    },
                },
            )
        })?;
        Ok((scan.header, trailer))
    }

    /// Reads and verifies `path` (like `open`) and returns its header and
    /// trailer, scanning it once.
    pub fn verify(path: &Path, expect_db: Option<DatabaseId>) -> Result<(SegmentHeader, Trailer)> {
        Self::read_checked(path, expect_db).map(|(_, checked)| checked)
    }

    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// The verified scan (cheap to redo: the data is in memory and was verified at open).
    pub fn scan(&self) -> Result<format::SegmentScan<'_>> {
        format::scan_sealed(&self.map, None)
            .map_err(|e| corrupt(&self.path, Generation::default(), e))
    }
}

/// Direct writes cover whole 4 KiB blocks, even where the device accepts
/// 512 bytes: a disk with 4 KiB physical sectors then never has to read,
/// modify and write a sector that holds durable records. The image is
/// aligned to it, and a filesystem that needs more (or reports no direct-I/O
/// support) is written through the page cache instead.
const MAX_DIRECT_ALIGN: usize = 4096;

/// The bytes of the current segment as they are on disk, in memory aligned
/// for direct I/O. A direct write must cover whole blocks, so the block that
/// holds the previous records' tail is written again from here with the new
/// frames after it: the same bytes over the same bytes, so a torn write
/// loses nothing that was durable.
struct Image {
    buf: Vec<u8>,
    start: usize,
}

impl Image {
    fn new() -> Image {
        let buf = vec![0u8; SEGMENT_SIZE + MAX_DIRECT_ALIGN];
        let start = buf.as_ptr().align_offset(MAX_DIRECT_ALIGN);
        Image { buf, start }
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[self.start..self.start + SEGMENT_SIZE]
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + SEGMENT_SIZE]
    }
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Image")
    }
}

/// The current segment opened for writing, and the block size its writes
/// are rounded to: with O_DIRECT where the filesystem supports it, so that
/// an append skips the page cache (an append plus fdatasync took about 8%
/// less time on a virtual disk), and buffered (block 0) where it does not.
fn open_for_append(path: &Path) -> Result<(File, usize)> {
    let direct = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path);
    if let Ok(file) = direct
        && let Some(block) = direct_alignment(&file)
    {
        return Ok((file, block));
    }
    Ok((open_buffered(path)?, 0))
}

/// The current segment opened for writing through the page cache.
fn open_buffered(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| Error::io("open current segment", path, e))
}

/// The block size the log writer's direct writes would use in `dir`
/// (probed with a temporary file), or `None` when it would write through the
/// page cache there.
pub fn direct_io_block(dir: &Path) -> Result<Option<usize>> {
    let probe = dir.join(".direct-io-probe");
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&probe)
        .map_err(|e| Error::io("create", &probe, e))?;
    let block = direct_alignment(&file);
    drop(file);
    fs::remove_file(&probe).map_err(|e| Error::io("remove", &probe, e))?;
    Ok(block)
}

/// The block size of direct writes to `file`: `MAX_DIRECT_ALIGN` if its
/// filesystem supports direct I/O with alignments that covers (statx,
/// Linux 6.1 and later).
fn direct_alignment(file: &File) -> Option<usize> {
    use std::os::fd::AsRawFd;
    // SAFETY: statx only writes into `stx`, a plain C struct for which all
    // zeroes is a valid value; the path is a NUL-terminated empty string and
    // AT_EMPTY_PATH makes the call describe the open file itself.
    let (rc, stx) = unsafe {
        let mut stx: libc::statx = std::mem::zeroed();
        let rc = libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut stx,
        );
        (rc, stx)
    };
    if rc != 0 || stx.stx_mask & libc::STATX_DIOALIGN == 0 {
        return None;
    }
    let (mem, offset) = (
        stx.stx_dio_mem_align as usize,
        stx.stx_dio_offset_align as usize,
    );
    let fits = |a: usize| a > 0 && a.is_power_of_two() && a <= MAX_DIRECT_ALIGN;
    (fits(mem) && fits(offset)).then_some(MAX_DIRECT_ALIGN)
}

/// What the writer knows about the end of the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEnd {
    /// The last complete record's LSN.
    pub lsn: Lsn,
    /// Content hash at `lsn`.
    pub hash: ContentHash,
    /// Schema hash at `lsn`.
    pub schema_hash: SchemaHash,
    /// The current segment's generation.
    pub generation: Generation,
    pub epoch: Epoch,
}

/// Appends frames to the current segment and seals segments.
#[derive(Debug)]
pub struct LogWriter {
    dir: PathBuf,
    current_path: PathBuf,
    file: File,
    /// The block size direct writes to `file` are rounded to; 0 when it
    /// is written through the page cache.
    direct_block: usize,
    /// The current segment's bytes as written.
    image: Image,
    header: SegmentHeader,
    /// Running CRC of bytes `[0, write_pos + pending.len())`.
    crc: crc32fast::Hasher,
    /// Offset where the next frame goes (after `pending`).
    write_pos: usize,
    /// Frames encoded but not yet written.
    pending: Vec<u8>,
    frame_count: u32,
    /// LSN of the last frame in this segment (header.prev_lsn if none).
    last_frame_lsn: Lsn,
    /// True while the last frame is First or Middle.
    open_fragment: bool,
    end: LogEnd,
    /// When the oldest unsealed frame of this segment was appended.
    oldest_unsealed: Option<Instant>,
    /// Block mode: where durable bytes are published for the copies.
    feed: Option<std::sync::Arc<crate::block::Feed>>,
    /// The end of what the feed has been given in this segment.
    fed: usize,
}

impl LogWriter {
    /// Creates the log directory and its first current segment (generation 1).
    pub fn create(
        dir: &Path,
        database_id: DatabaseId,
        epoch: Epoch,
        schema_hash: SchemaHash,
    ) -> Result<()> {
        fs::create_dir_all(dir).map_err(|e| Error::io("create log directory", dir, e))?;
        let header = SegmentHeader {
            database_id,
            epoch,
            generation: Generation::FIRST,
            created_us: now_us(),
            prev_checksum: 0,
            prev_lsn: Lsn::ZERO,
            hash_lsn: Lsn::ZERO,
            base_hash: ContentHash::default(),
            schema_hash,
        };
        install_current(dir, &header)
    }

    /// Starts a log in `dir` (which holds no segment) at a database's
    /// position: the first current segment is `generation`, its records
    /// follow `lsn`, whose content hash is `hash`. A copy seeded from a
    /// snapshot and activated before it received any segment starts so; the
    /// chain to the old active's segments is not checked across this point.
    pub fn create_at(
        dir: &Path,
        database_id: DatabaseId,
        epoch: Epoch,
        generation: Generation,
        lsn: Lsn,
        hash: ContentHash,
        schema_hash: SchemaHash,
    ) -> Result<()> {
        fs::create_dir_all(dir).map_err(|e| Error::io("create log directory", dir, e))?;
        if !list_sealed(dir)?.is_empty() || dir.join(CURRENT_FILE_NAME).exists() {
            return Err(Error::AlreadyInitialized {
                path: dir.to_path_buf(),
            });
        }
        let header = SegmentHeader {
            database_id,
            epoch,
            generation,
            created_us: now_us(),
            prev_checksum: 0,
            prev_lsn: lsn,
            hash_lsn: lsn,
            base_hash: hash,
            schema_hash,
        };
        install_current(dir, &header)
    }

    /// Opens the log in `dir`: finishes a seal that a crash interrupted,
    /// truncates a torn tail of the current segment (logging path and
    /// offset), and recreates a missing current segment.
    ///
    /// `keep` is the LSN the database holds: a repair that would drop a
    /// record at or below it is refused (the database would be ahead of its
    /// log), and nothing is written.
    pub fn open(dir: &Path, database_id: DatabaseId, keep: Lsn) -> Result<LogWriter> {
        let current_path = dir.join(CURRENT_FILE_NAME);
        let temp = dir.join(TEMP_FILE_NAME);
        match fs::remove_file(&temp) {
            Ok(()) => tracing::info!(path = %temp.display(), "removed a half-prepared segment"),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("remove", &temp, e)),
        }
        if !dir.is_dir() {
            return Err(Error::NotInitialized {
                path: dir.to_path_buf(),
            });
        }
        if current_path.exists() {
            let mut bytes = vec![0u8; SEGMENT_SIZE];
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&current_path)
                .map_err(|e| Error::io("open current segment", &current_path, e))?;
            let len = file
                .metadata()
                .map_err(|e| Error::io("stat", &current_path, e))?
                .len();
            if len != SEGMENT_SIZE as u64 {
                return Err(corrupt(
                    &current_path,
                    Generation::default(),
                    DecodeError {
                        offset: len,
                        reason: format::Reason::Short {
                            need: SEGMENT_SIZE,
                            have: len as usize,
                        },
                    },
                ));
            }
            file.read_exact_at(&mut bytes, 0)
                .map_err(|e| Error::io("read current segment", &current_path, e))?;
            let scan = format::scan_current(&bytes, Some(database_id))
                .map_err(|e| corrupt(&current_path, Generation::default(), e))?;
            let generation = scan.header.generation;
            if scan.trailer.is_some() {
                // Sealed, but the rename did not happen: verify and finish it.
                format::scan_sealed(&bytes, Some(database_id))
                    .map_err(|e| corrupt(&current_path, generation, e))?;
                let sealed = dir.join(format::segment_file_name(generation));
                fs::rename(&current_path, &sealed)
                    .map_err(|e| Error::io("rename sealed segment", &current_path, e))?;
                sync_dir(dir)?;
                tracing::info!(path = %sealed.display(), "finished a seal interrupted by a crash");
            } else {
                let records_end = scan.records_end;
                let complete = scan.complete_lsn();
                if complete < keep {
                    return Err(Error::DatabaseAhead {
                        path: current_path.clone(),
                        db: keep,
                        log: complete,
                    });
                }
                let tail_dirty =
                    scan.torn.is_some() || bytes[records_end..].iter().any(|b| *b != 0);
                if tail_dirty {
                    let zeros = vec![0u8; SEGMENT_SIZE - records_end];
                    file.write_all_at(&zeros, records_end as u64)
                        .map_err(|e| Error::io("truncate torn tail", &current_path, e))?;
                    file.sync_data()
                        .map_err(|e| Error::io("fdatasync", &current_path, e))?;
                    tracing::warn!(
                        path = %current_path.display(),
                        offset = records_end,
                        reason = %scan.torn.as_ref().map(|t| t.reason.to_string()).unwrap_or_else(|| "torn seal".into()),
                        "truncated the torn tail of the current segment"
                    );
                }
                drop(file);
                return Self::from_scan(dir, current_path, &bytes, &scan);
            }
        }
        // No current segment: the last seal completed (or was finished above)
        // but the next segment was not installed yet.
        let sealed = list_sealed(dir)?;
        let Some((_, last_path)) = sealed.last() else {
            return Err(Error::NotInitialized {
                path: dir.to_path_buf(),
            });
        };
        let last = SealedSegment::open(last_path, Some(database_id))?;
        let scan = last.scan()?;
        let trailer = scan.trailer.clone().expect("scan_sealed returns a trailer");
        // The schema at the end of that segment: its header's, unless a DDL
        // record in it changed it.
        let mut schema = scan.header.schema_hash;
        for_each_record(dir, Some(database_id), scan.header.hash_lsn, |_, rec| {
            if let format::Body::Ddl { schema_hash, .. } = rec.body {
                schema = schema_hash;
            }
            Ok(())
        })?;
        let header = successor_header(&scan.header, &trailer, scan.header.epoch, Some(schema));
        install_current(dir, &header)?;
        drop(scan);
        Self::open(dir, database_id, keep)
    }

    fn from_scan(
        dir: &Path,
        current_path: PathBuf,
        bytes: &[u8],
        scan: &format::SegmentScan<'_>,
    ) -> Result<LogWriter> {
        let (file, direct_block) = open_for_append(&current_path)?;
        let mut image = Image::new();
        // Bytes past the records are zero on disk (a dirty tail was zeroed).
        image.bytes_mut()[..scan.records_end].copy_from_slice(&bytes[..scan.records_end]);
        let mut crc = crc32fast::Hasher::new();
        crc.update(&bytes[..scan.records_end]);
        let header = &scan.header;
        let mut end = LogEnd {
            lsn: header.hash_lsn,
            hash: header.base_hash,
            schema_hash: header.schema_hash,
            generation: header.generation,
            epoch: header.epoch,
        };
        let (last_frame_lsn, open_fragment) = match scan.frames.last() {
            Some(f) => (
                f.lsn,
                matches!(f.fragment, Fragment::First | Fragment::Middle),
            ),
            None => (header.prev_lsn, header.hash_lsn < header.prev_lsn),
        };
        // The last complete record's hashes; reading it may reach back into
        // sealed segments when it was fragmented.
        if !scan.frames.is_empty() {
            for_each_record(
                dir,
                Some(header.database_id),
                header.hash_lsn,
                |lsn, rec| {
                    end.lsn = lsn;
                    end.hash = rec.hash;
                    if let format::Body::Ddl { schema_hash, .. } = rec.body {
                        end.schema_hash = schema_hash;
                    }
                    Ok(())
                },
            )?;
        }
        Ok(LogWriter {
            dir: dir.to_path_buf(),
            current_path,
            file,
            direct_block,
            image,
            header: header.clone(),
            crc,
            write_pos: scan.records_end,
            pending: Vec::new(),
            frame_count: scan.frames.len() as u32,
            last_frame_lsn,
            open_fragment,
            end,
            oldest_unsealed: if scan.frames.is_empty() {
                None
            } else {
                Some(Instant::now())
            },
            feed: None,
            fed: 0,
        })
    }

    /// Publishes every byte made durable from now on to `feed` (block
    /// mode), starting with what the current segment already holds.
    pub fn set_feed(&mut self, feed: std::sync::Arc<crate::block::Feed>) {
        feed.start_segment(
            self.header.generation,
            &self.image.bytes()[..self.write_pos],
            self.end.lsn,
        );
        self.fed = self.write_pos;
        self.feed = Some(feed);
    }

    /// Gives the feed the bytes made durable since it was last fed.
    fn feed_durable(&mut self) {
        if let Some(f) = &self.feed
            && self.fed < self.write_pos
        {
            f.durable(
                self.fed,
                &self.image.bytes()[self.fed..self.write_pos],
                self.end.lsn,
            );
            self.fed = self.write_pos;
        }
    }

    /// The end of the log: last complete LSN, its hashes, current generation.
    pub fn end(&self) -> &LogEnd {
        &self.end
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// When the oldest frame not yet sealed was appended.
    pub fn oldest_unsealed(&self) -> Option<Instant> {
        self.oldest_unsealed
    }

    /// Sets the epoch written into segments created from now on.
    pub fn set_epoch(&mut self, epoch: Epoch) {
        self.end.epoch = epoch;
    }

    /// Makes `epoch` the epoch of the current segment and of every segment
    /// after it: an empty current segment gets a new header in place of
    /// its old one; one that holds frames is sealed first.
    pub fn begin_epoch(&mut self, epoch: Epoch) -> Result<()> {
        self.set_epoch(epoch);
        if self.frame_count > 0 || !self.pending.is_empty() {
            self.seal()?;
            return Ok(());
        }
        let header = SegmentHeader {
            epoch,
            created_us: now_us(),
            ..self.header.clone()
        };
        self.install(header)
    }

    /// Installs an empty current segment with `header` and writes into it.
    fn install(&mut self, header: SegmentHeader) -> Result<()> {
        install_current(&self.dir, &header)?;
        (self.file, self.direct_block) = open_for_append(&self.current_path)?;
        let encoded = header.encode();
        let image = self.image.bytes_mut();
        image.fill(0);
        image[..HEADER_SIZE].copy_from_slice(&encoded);
        self.crc = crc32fast::Hasher::new();
        self.crc.update(&encoded);
        self.header = header;
        self.write_pos = HEADER_SIZE;
        self.fed = HEADER_SIZE;
        if let Some(f) = &self.feed {
            f.start_segment(
                self.header.generation,
                &self.image.bytes()[..HEADER_SIZE],
                self.end.lsn,
            );
        }
        Ok(())
    }

    /// Appends one logical record (an encoded `format::Record`) at `lsn`,
    /// which must be the next LSN. The frames are buffered; segments that fill
    /// up are written, sealed and made durable on the way. Call `sync` to make
    /// the rest durable.
    pub fn append(
        &mut self,
        kind: RecordKind,
        lsn: Lsn,
        payload: &[u8],
        hash: ContentHash,
        schema_hash: SchemaHash,
    ) -> Result<()> {
        debug_assert_eq!(lsn, self.end.lsn.next(), "LSNs are dense");
        if self.open_fragment {
            // A fragmented record whose end was lost in a crash: the new record
            // reuses its LSN, which abandons it (FORMAT.md, "Fragments").
            debug_assert_eq!(lsn, self.last_frame_lsn);
        }
        let mut rest = payload;
        let mut first = true;
        loop {
            let room = TRAILER_OFFSET - self.write_pos - self.pending.len();
            let room = room.saturating_sub(format::FRAME_HEADER_SIZE);
            let whole_fits = rest.len() <= room;
            if first && !whole_fits && (rest.len() <= MAX_FRAME_PAYLOAD || room < MIN_FRAGMENT) {
                // Seal first; the record then fits whole (or starts) in a fresh segment.
                if self.frame_count > 0 || !self.pending.is_empty() {
                    self.seal()?;
                    continue;
                }
            }
            let take = rest.len().min(room);
            let more = take < rest.len();
            let fragment = match (first, more) {
                (true, false) => Fragment::Whole,
                (true, true) => Fragment::First,
                (false, true) => Fragment::Middle,
                (false, false) => Fragment::Last,
            };
            let start = self.pending.len();
            format::encode_frame(kind, fragment, lsn, &rest[..take], &mut self.pending);
            self.crc.update(&self.pending[start..]);
            self.frame_count += 1;
            self.last_frame_lsn = lsn;
            self.open_fragment = more;
            if self.oldest_unsealed.is_none() {
                self.oldest_unsealed = Some(Instant::now());
            }
            rest = &rest[take..];
            first = false;
            if !more {
                break;
            }
            self.seal()?;
        }
        self.end.lsn = lsn;
        self.end.hash = hash;
        self.end.schema_hash = schema_hash;
        Ok(())
    }

    /// Writes buffered frames (one pwrite) without syncing.
    pub fn write(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let (start, end) = (self.write_pos, self.write_pos + self.pending.len());
        self.image.bytes_mut()[start..end].copy_from_slice(&self.pending);
        self.write_range(start, end, "write")?;
        self.write_pos = end;
        self.pending.clear();
        Ok(())
    }

    /// Writes bytes `[start, end)` of the image to the file: exactly those
    /// when buffered, the whole blocks around them when direct.
    fn write_range(&mut self, start: usize, end: usize, what: &'static str) -> Result<()> {
        let b = self.direct_block;
        let (from, to) = match start.checked_div(b) {
            Some(blocks) => (blocks * b, end.div_ceil(b) * b),
            None => (start, end),
        };
        match self
            .file
            .write_all_at(&self.image.bytes()[from..to], from as u64)
        {
            // A filesystem that accepts O_DIRECT but not these blocks refuses
            // before it writes anything: write buffered from now on.
            Err(e) if b > 0 && e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::warn!(path = %self.current_path.display(), "direct I/O refused; writing through the page cache");
                self.file = open_buffered(&self.current_path)?;
                self.direct_block = 0;
                self.write_range(start, end, what)
            }
            r => r.map_err(|e| Error::io(what, &self.current_path, e)),
        }
    }

    /// Writes buffered frames and makes them durable (fdatasync). A failure
    /// is fatal: the caller must stop and recover, never retry.
    pub fn sync(&mut self) -> Result<()> {
        self.write()?;
        self.file
            .sync_data()
            .map_err(|e| Error::io("fdatasync", &self.current_path, e))?;
        self.feed_durable();
        Ok(())
    }

    /// Seals the current segment if it holds any frame: trailer, fsync,
    /// rename to its generation name, directory fsync, then a new current
    /// segment. Returns the sealed generation.
    pub fn seal(&mut self) -> Result<Option<Generation>> {
        if self.frame_count == 0 && self.pending.is_empty() {
            return Ok(None);
        }
        if !self.pending.is_empty() {
            // The frames must be durable before the trailer that vouches for
            // them, or a crash could leave a trailer over missing frames.
            self.write()?;
            self.file
                .sync_data()
                .map_err(|e| Error::io("fdatasync", &self.current_path, e))?;
        }
        self.feed_durable();
        let mut crc = self.crc.clone();
        let mut remaining = TRAILER_OFFSET - self.write_pos;
        while remaining > 0 {
            let n = remaining.min(ZEROS.len());
            crc.update(&ZEROS[..n]);
            remaining -= n;
        }
        let trailer = Trailer {
            record_count: self.frame_count,
            records_end: self.write_pos as u32,
            last_lsn: self.last_frame_lsn,
            // `end` moves only when a record completes, so it is the last
            // complete record even while a fragmented one is open.
            hash_lsn: self.end.lsn,
            hash: self.end.hash,
            sealed_us: now_us(),
            segment_checksum: crc.finalize(),
        };
        self.image.bytes_mut()[TRAILER_OFFSET..].copy_from_slice(&trailer.encode());
        self.write_range(TRAILER_OFFSET, SEGMENT_SIZE, "write trailer")?;
        self.file
            .sync_all()
            .map_err(|e| Error::io("fsync", &self.current_path, e))?;
        let generation = self.header.generation;
        let sealed_path = self.dir.join(format::segment_file_name(generation));
        fs::rename(&self.current_path, &sealed_path)
            .map_err(|e| Error::io("rename sealed segment", &self.current_path, e))?;
        sync_dir(&self.dir)?;
        tracing::debug!(path = %sealed_path.display(), records = self.frame_count, last_lsn = %self.last_frame_lsn, "sealed segment");
        if let Some(f) = &self.feed {
            f.sealed(&self.image.bytes()[TRAILER_OFFSET..]);
        }

        let header = successor_header(
            &self.header,
            &trailer,
            self.end.epoch,
            Some(self.end.schema_hash),
        );
        self.install(header)?;
        self.frame_count = 0;
        self.end.generation = self.header.generation;
        self.oldest_unsealed = None;
        Ok(Some(generation))
    }
}

static ZEROS: [u8; 64 * 1024] = [0u8; 64 * 1024];

fn successor_header(
    prev: &SegmentHeader,
    trailer: &Trailer,
    epoch: Epoch,
    schema_hash: Option<SchemaHash>,
) -> SegmentHeader {
    SegmentHeader {
        database_id: prev.database_id,
        epoch: epoch.max(prev.epoch),
        generation: prev.generation.next(),
        created_us: now_us(),
        prev_checksum: trailer.segment_checksum,
        prev_lsn: trailer.last_lsn,
        hash_lsn: trailer.hash_lsn,
        base_hash: trailer.hash,
        schema_hash: schema_hash.unwrap_or(prev.schema_hash),
    }
}

/// Writes a fresh zero-filled segment with `header` under the temporary
/// name, fsyncs it, and renames it to the current segment's name.
fn install_current(dir: &Path, header: &SegmentHeader) -> Result<()> {
    let temp = dir.join(TEMP_FILE_NAME);
    let current = dir.join(CURRENT_FILE_NAME);
    let mut bytes = vec![0u8; SEGMENT_SIZE];
    bytes[..HEADER_SIZE].copy_from_slice(&header.encode());
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temp)
        .map_err(|e| Error::io("create segment", &temp, e))?;
    // Writing the zeros (rather than fallocate) makes every extent "written",
    // so later fdatasyncs of appends need no metadata journal commit.
    file.write_all_at(&bytes, 0)
        .map_err(|e| Error::io("write segment", &temp, e))?;
    file.sync_all().map_err(|e| Error::io("fsync", &temp, e))?;
    fs::rename(&temp, &current).map_err(|e| Error::io("rename", &temp, e))?;
    sync_dir(dir)
}

/// True when the current segment in `dir` holds at least one frame (a new
/// epoch then begins in the next segment).
pub fn current_has_frames(dir: &Path) -> Result<bool> {
    let path = dir.join(CURRENT_FILE_NAME);
    let bytes = fs::read(&path).map_err(|e| Error::io("read current segment", &path, e))?;
    let scan =
        format::scan_current(&bytes, None).map_err(|e| corrupt(&path, Generation::default(), e))?;
    Ok(!scan.frames.is_empty())
}

/// Calls `f` with every complete record whose LSN is greater than `after`,
/// in LSN order, from the sealed segments and the current one in `dir`.
/// Sealed segments are verified whole and the generation chain (no gap,
/// previous-segment checksum, LSN continuity) is checked. Records in the
/// current segment are read up to its last valid frame. Fails with
/// `Error::MissingLog` when the log no longer reaches back to `after`.
pub fn for_each_record(
    dir: &Path,
    expect_db: Option<DatabaseId>,
    after: Lsn,
    mut f: impl FnMut(Lsn, format::Record) -> Result<()>,
) -> Result<()> {
    let current = dir.join(CURRENT_FILE_NAME);
    let mut files: Vec<(Option<Generation>, PathBuf)> = list_sealed(dir)?
        .into_iter()
        .map(|(g, p)| (Some(g), p))
        .collect();
    if current.exists() {
        files.push((None, current));
    }
    // Start at the newest segment whose first frame comes after `after`'s
    // frames: records > after start there or later.
    let mut start = None;
    for (i, (_, path)) in files.iter().enumerate().rev() {
        let header = read_header(path)?;
        if header.prev_lsn <= after {
            start = Some(i);
            break;
        }
    }
    let Some(start) = start else {
        let first = match files.first() {
            Some((_, p)) => read_header(p)?.prev_lsn,
            None => Lsn::ZERO,
        };
        return Err(Error::MissingLog {
            dir: dir.to_path_buf(),
            after,
            first,
        });
    };
    let mut reasm = format::Reassembler::default();
    let mut prev: Option<(SegmentHeader, Trailer)> = None;
    for (sealed_gen, path) in &files[start..] {
        let (seg, bytes);
        let scan = match sealed_gen {
            Some(_) => {
                seg = SealedSegment::open(path, expect_db)?;
                seg.scan()?
            }
            None => {
                bytes = fs::read(path).map_err(|e| Error::io("read", path, e))?;
                format::scan_current(&bytes, expect_db)
                    .map_err(|e| corrupt(path, Generation::default(), e))?
            }
        };
        let generation = scan.header.generation;
        let bad = |offset: usize, reason| Error::Corrupt {
            path: path.clone(),
            generation,
            offset: offset as u64,
            reason,
        };
        if let Some((ph, pt)) = &prev {
            format::check_successor(ph, pt, &scan.header).map_err(|r| bad(0, r))?;
        }
        for frame in &scan.frames {
            // Frames of records <= after (including continuations of a
            // record that began before the first segment read) are skipped.
            if !reasm.in_progress() && frame.lsn <= after {
                continue;
            }
            let done = reasm.push(frame).map_err(|r| bad(frame.offset, r))?;
            if let Some((kind, lsn, payload)) = done
                && lsn > after
            {
                {
                    let rec = format::Record::decode(kind, &payload)
                        .map_err(|e| bad(frame.offset, e.reason))?;
                    f(lsn, rec)?;
                }
            }
        }
        prev = scan.trailer.clone().map(|t| (scan.header.clone(), t));
    }
    Ok(())
}

/// The content hash the log in `dir` records at `lsn`: in the record with
/// that LSN, or in a segment header whose base is `lsn`. `Ok(None)` when the
/// log no longer reaches back to it.
pub fn hash_at(dir: &Path, lsn: Lsn) -> Result<Option<ContentHash>> {
    // A seal renaming the current segment between our listing and our read
    // makes the log look inconsistent for an instant: look again.
    let mut tries = 0;
    loop {
        match hash_at_once(dir, lsn) {
            Err(Error::Corrupt { .. }) | Err(Error::Io { .. }) if tries < 3 => tries += 1,
            r => return r,
        }
    }
}

fn hash_at_once(dir: &Path, lsn: Lsn) -> Result<Option<ContentHash>> {
    let current = dir.join(CURRENT_FILE_NAME);
    let mut files: Vec<PathBuf> = list_sealed(dir)?.into_iter().map(|(_, p)| p).collect();
    if current.exists() {
        files.push(current);
    }
    for path in &files {
        let h = read_header(path)?;
        if h.hash_lsn == lsn {
            return Ok(Some(h.base_hash));
        }
    }
    if lsn == Lsn::ZERO {
        return Ok(None);
    }
    let mut found = None;
    match for_each_record(dir, None, Lsn(lsn.0 - 1), |l, rec| {
        if l == lsn {
            found = Some(rec.hash);
        }
        Ok(())
    }) {
        Ok(()) => Ok(found),
        Err(Error::MissingLog { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads and verifies only the trailer of a sealed segment file.
pub fn read_trailer(path: &Path) -> Result<Trailer> {
    let file = File::open(path).map_err(|e| Error::io("open segment", path, e))?;
    let mut buf = [0u8; format::TRAILER_SIZE];
    file.read_exact_at(&mut buf, TRAILER_OFFSET as u64)
        .map_err(|e| Error::io("read segment trailer", path, e))?;
    Trailer::decode(&buf)
        .map_err(|e| {
            corrupt(
                path,
                Generation::default(),
                DecodeError {
                    offset: e.offset + TRAILER_OFFSET as u64,
                    reason: e.reason,
                },
            )
        })?
        .ok_or_else(|| {
            corrupt(
                path,
                Generation::default(),
                DecodeError {
                    offset: TRAILER_OFFSET as u64,
                    reason: format::Reason::BadField {
                        field: "trailer",
                        detail: "not sealed".into(),
                    },
                },
            )
        })
}

/// Reads and verifies only the header of a segment file.
pub fn read_header(path: &Path) -> Result<SegmentHeader> {
    let file = File::open(path).map_err(|e| Error::io("open segment", path, e))?;
    let mut buf = [0u8; HEADER_SIZE];
    file.read_exact_at(&mut buf, 0)
        .map_err(|e| Error::io("read segment header", path, e))?;
    SegmentHeader::decode(&buf).map_err(|e| corrupt(path, Generation::default(), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{Body, Record};

    impl LogWriter {
        /// Writes through the page cache from now on, as on a filesystem
        /// without direct I/O.
        fn force_buffered(&mut self) {
            self.file = open_buffered(&self.current_path).expect("reopen the current segment");
            self.direct_block = 0;
        }
    }

    /// Record `i`: its size varies so that records start and end anywhere
    /// in a block, and some span several blocks.
    fn record(i: u64) -> Record {
        let len = (i * 7919 % 9000) as usize;
        Record {
            time_us: i,
            hash: ContentHash(u128::from(i) * 31),
            body: Body::Changeset((0..len).map(|b| (b as u64 ^ i) as u8).collect()),
        }
    }

    /// Appends records `from..to` with a write after each, a sync after
    /// every third, and returns the writer.
    fn append_range(w: &mut LogWriter, from: u64, to: u64, buffered: bool) {
        for i in from..to {
            if buffered {
                w.force_buffered();
            }
            let rec = record(i);
            let mut payload = Vec::new();
            rec.encode(&mut payload);
            w.append(rec.kind(), Lsn(i), &payload, rec.hash, SchemaHash(0))
                .expect("append");
            w.write().expect("write");
            if i % 3 == 0 {
                w.sync().expect("sync");
            }
        }
    }

    fn records_of(dir: &Path, db: DatabaseId) -> Vec<(Lsn, Record)> {
        let mut out = Vec::new();
        for_each_record(dir, Some(db), Lsn::ZERO, |lsn, rec| {
            out.push((lsn, rec));
            Ok(())
        })
        .expect("read the log back");
        out
    }

    /// Direct and buffered writes leave the same records, survive a reopen
    /// in the middle of a block (the image is rebuilt from the file), keep
    /// the tail of the current segment zero, and seal segments that verify.
    #[test]
    fn direct_and_buffered_writes_leave_the_same_log() {
        let db = DatabaseId([7; 16]);
        // 400 records of up to 9 KB fill more than one segment.
        let n = 400;
        let mut logs = Vec::new();
        for buffered in [false, true] {
            let tmp = tempfile::tempdir().expect("tempdir");
            let dir = tmp.path().join("logs");
            LogWriter::create(&dir, db, Epoch(1), SchemaHash(0)).expect("create");
            let mut w = LogWriter::open(&dir, db, Lsn::ZERO).expect("open");
            if !buffered {
                eprintln!("direct block size here: {}", w.direct_block);
            }
            append_range(&mut w, 1, n / 2, buffered);
            drop(w);
            let mut w = LogWriter::open(&dir, db, Lsn::ZERO).expect("reopen");
            append_range(&mut w, n / 2, n + 1, buffered);
            w.sync().expect("sync");
            drop(w);
            let sealed = list_sealed(&dir).expect("list");
            assert!(!sealed.is_empty(), "the records filled a segment");
            for (_, path) in &sealed {
                SealedSegment::open(path, Some(db)).expect("a sealed segment verifies");
            }
            let current = fs::read(dir.join(CURRENT_FILE_NAME)).expect("read current");
            let scan = format::scan_current(&current, Some(db)).expect("scan current");
            assert!(scan.torn.is_none(), "no torn frame: {:?}", scan.torn);
            assert!(
                current[scan.records_end..].iter().all(|b| *b == 0),
                "the current segment is zero after its records"
            );
            let records = records_of(&dir, db);
            assert_eq!(records.len() as u64, n);
            for (lsn, rec) in &records {
                assert_eq!(*rec, record(lsn.0), "record {lsn}");
            }
            logs.push((records, sealed.len(), tmp));
        }
        assert_eq!(logs[0].0, logs[1].0);
        assert_eq!(logs[0].1, logs[1].1, "the same segments were sealed");
    }
}
