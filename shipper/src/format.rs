//! The on-disk format of log segments, byte by byte (documented in FORMAT.md):
//! the segment header, record frames (length + CRC32 + type + LSN + payload),
//! fragments of records larger than a segment, the logical record payload, the
//! trailer written at seal, and the file names.
//!
//! This module does no I/O. Every decoder treats its input as untrusted: it
//! checks each length before use, verifies each CRC itself, and reports the
//! byte offset of the first bad byte instead of panicking.

use std::borrow::Cow;

use crate::types::{ContentHash, DatabaseId, Epoch, Generation, Lsn, SchemaHash};

/// Size of every segment file, sealed or current.
pub const SEGMENT_SIZE: usize = 1 << 20;
/// Bytes of the header at offset 0.
pub const HEADER_SIZE: usize = 128;
/// Bytes of the trailer at offset `SEGMENT_SIZE - TRAILER_SIZE`.
pub const TRAILER_SIZE: usize = 64;
/// Offset of the trailer.
pub const TRAILER_OFFSET: usize = SEGMENT_SIZE - TRAILER_SIZE;
/// Bytes of a record frame before its payload: len u32, crc u32, type u8, lsn u64.
pub const FRAME_HEADER_SIZE: usize = 17;
/// The largest payload one frame can hold (a whole empty record area).
pub const MAX_FRAME_PAYLOAD: usize = TRAILER_OFFSET - HEADER_SIZE - FRAME_HEADER_SIZE;
/// The largest logical record (one transaction, reassembled from fragments).
pub const MAX_RECORD_SIZE: usize = 256 << 20;
/// The current format version. Any other version is refused.
pub const FORMAT_VERSION: u32 = 1;
pub const HEADER_MAGIC: [u8; 8] = *b"LGSHSEG\0";
pub const TRAILER_MAGIC: [u8; 8] = *b"LGSHEND\0";
/// Fixed name of the segment being written (Exchange's `E00.log`).
pub const CURRENT_FILE_NAME: &str = "LS.log";
/// Name under which the next current segment is prepared (Exchange's `E00tmp.log`).
pub const TEMP_FILE_NAME: &str = "LStmp.log";

/// Why a byte range failed to decode. Carried by `Error::Corrupt` together
/// with the file and the offset.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Reason {
    #[error("bad magic {found:02x?}")]
    BadMagic { found: [u8; 8] },
    #[error("unsupported format version {found} (this logship reads version {FORMAT_VERSION})")]
    BadVersion { found: u32 },
    #[error("short buffer: need {need} bytes, have {have}")]
    Short { need: usize, have: usize },
    #[error("CRC mismatch: stored {stored:08x}, computed {computed:08x}")]
    BadCrc { stored: u32, computed: u32 },
    #[error("length {len} runs past the end of the record area (at most {max})")]
    LengthTooLarge { len: u64, max: u64 },
    #[error("bad field {field}: {detail}")]
    BadField { field: &'static str, detail: String },
    #[error("record type byte {0:#04x} is not a known kind and fragment combination")]
    BadType(u8),
    #[error("LSN {found} where {expected} was expected")]
    BadLsn { expected: Lsn, found: Lsn },
    #[error("fragment out of order: {0}")]
    BadFragment(&'static str),
    #[error("segment of database {found}, expected {expected}")]
    WrongDatabase {
        expected: DatabaseId,
        found: DatabaseId,
    },
    #[error("generation {found} follows generation {prev}: a gap or a reorder")]
    GenerationGap { prev: Generation, found: Generation },
    #[error(
        "previous-segment checksum {stored:08x} does not match generation {prev}'s {actual:08x}"
    )]
    BrokenChain {
        prev: Generation,
        stored: u32,
        actual: u32,
    },
    #[error("trailer disagrees with the records: {0}")]
    TrailerMismatch(String),
    #[error("non-zero byte after the last record")]
    Garbage,
    #[error("epoch {found} is older than the previous segment's epoch {prev}")]
    EpochRegressed { prev: Epoch, found: Epoch },
}

/// A decode failure: what is wrong and at which byte offset of the buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError {
    pub offset: u64,
    pub reason: Reason,
}

/// The segment header: 128 bytes at offset 0 (see FORMAT.md).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    pub database_id: DatabaseId,
    pub epoch: Epoch,
    pub generation: Generation,
    /// Creation time, microseconds since the Unix epoch.
    pub created_us: u64,
    /// `segment_checksum` of generation - 1's trailer; 0 for the first generation.
    pub prev_checksum: u32,
    /// LSN of the last frame in generation - 1 (0 if none).
    pub prev_lsn: Lsn,
    /// The last complete LSN before this segment (differs from `prev_lsn`
    /// only when generation - 1 ended inside a fragmented record).
    pub hash_lsn: Lsn,
    /// Content hash at `hash_lsn`.
    pub base_hash: ContentHash,
    /// Schema hash at `hash_lsn`.
    pub schema_hash: SchemaHash,
}

/// The trailer: 64 bytes at `TRAILER_OFFSET`, all zero until the segment is sealed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trailer {
    /// Number of frames in the segment.
    pub record_count: u32,
    /// Offset of the first byte after the last frame.
    pub records_end: u32,
    /// LSN of the last frame (the header's `prev_lsn` if there is none).
    pub last_lsn: Lsn,
    /// The last complete LSN at the end of this segment.
    pub hash_lsn: Lsn,
    /// Content hash at `hash_lsn`.
    pub hash: ContentHash,
    /// Seal time, microseconds since the Unix epoch.
    pub sealed_us: u64,
    /// CRC32 of bytes `[0, TRAILER_OFFSET)`: header, frames and zero padding.
    pub segment_checksum: u32,
}

/// What a logical record holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// One transaction's changeset.
    Changeset = 1,
    /// A transaction that changed the schema: DDL statements and changesets in order.
    Ddl = 2,
}

/// Where a frame sits in its logical record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fragment {
    /// The whole record in one frame.
    Whole,
    /// The first frame of several (type bit 0x40: more follow).
    First,
    /// A frame in between (bits 0x40 | 0x80).
    Middle,
    /// The final frame (bit 0x80: continues the previous frame).
    Last,
}

/// One decoded frame, borrowing its payload from the buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub kind: RecordKind,
    pub fragment: Fragment,
    pub lsn: Lsn,
    pub payload: &'a [u8],
    /// Offset of the frame in the buffer it was decoded from.
    pub offset: usize,
}

/// One part of a DDL record, in execution order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DdlPart {
    /// A schema statement, executed as SQL text on replay.
    Sql(String),
    /// The changes made by the statements between two schema statements.
    Changeset(Vec<u8>),
}

/// The body of a logical record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    Changeset(Vec<u8>),
    Ddl {
        schema_hash: SchemaHash,
        parts: Vec<DdlPart>,
    },
}

/// A logical record: one transaction, as reassembled from its frames.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Commit time, microseconds since the Unix epoch.
    pub time_us: u64,
    /// Content hash after this record.
    pub hash: ContentHash,
    pub body: Body,
}

// ---------------------------------------------------------------------------
// Field offsets. Header offsets are relative to the segment start, trailer
// offsets to `TRAILER_OFFSET`, frame offsets to the frame start, record
// offsets to the logical payload start.
// ---------------------------------------------------------------------------

const H_MAGIC: usize = 0;
const H_VERSION: usize = 8;
const H_HEADER_LEN: usize = 12;
const H_SEGMENT_SIZE: usize = 16;
const H_FLAGS: usize = 20;
const H_DATABASE_ID: usize = 24;
const H_EPOCH: usize = 40;
const H_GENERATION: usize = 48;
const H_CREATED_US: usize = 56;
const H_PREV_CHECKSUM: usize = 64;
const H_RESERVED_1: usize = 68;
const H_PREV_LSN: usize = 72;
const H_HASH_LSN: usize = 80;
const H_BASE_HASH: usize = 88;
const H_SCHEMA_HASH: usize = 104;
const H_RESERVED_2: usize = 120;
const H_CRC: usize = 124;

const T_MAGIC: usize = 0;
const T_RECORD_COUNT: usize = 8;
const T_RECORDS_END: usize = 12;
const T_LAST_LSN: usize = 16;
const T_HASH_LSN: usize = 24;
const T_HASH: usize = 32;
const T_SEALED_US: usize = 48;
const T_SEGMENT_CHECKSUM: usize = 56;
const T_CRC: usize = 60;

const F_LEN: usize = 0;
const F_CRC: usize = 4;
const F_TYPE: usize = 8;
const F_LSN: usize = 9;

const R_TIME_US: usize = 0;
const R_HASH: usize = 8;
/// Bytes of the logical record before its body: time_us u64, hash u128.
pub const RECORD_PREFIX_SIZE: usize = 24;
/// Bytes of a DDL body before its parts: schema_hash u128, part_count u32.
const DDL_PREFIX_SIZE: usize = 20;
/// Bytes of one DDL part before its bytes: tag u8, len u32.
const DDL_PART_HEADER_SIZE: usize = 5;
const DDL_TAG_SQL: u8 = 1;
const DDL_TAG_CHANGESET: u8 = 2;

/// Frame type bits: low nibble is the kind, 0x40 = more fragments follow,
/// 0x80 = continues the previous frame's record. Bits 0x30 are reserved.
const TYPE_MORE: u8 = 0x40;
const TYPE_CONT: u8 = 0x80;

fn err(offset: usize, reason: Reason) -> DecodeError {
    DecodeError {
        offset: offset as u64,
        reason,
    }
}

fn bad_field(offset: usize, field: &'static str, detail: String) -> DecodeError {
    err(offset, Reason::BadField { field, detail })
}

fn short(need: usize, have: usize) -> DecodeError {
    err(have, Reason::Short { need, have })
}

/// Reads little-endian fields at constant offsets of a fixed-size block; every
/// offset is checked against the block size at compile time.
struct Fields<'a, const N: usize>(&'a [u8; N]);

impl<const N: usize> Fields<'_, N> {
    fn bytes<const AT: usize, const L: usize>(&self) -> [u8; L] {
        const { assert!(AT + L <= N) }
        let mut out = [0u8; L];
        out.copy_from_slice(&self.0[AT..AT + L]);
        out
    }

    fn u8<const AT: usize>(&self) -> u8 {
        self.bytes::<AT, 1>()[0]
    }

    fn u32<const AT: usize>(&self) -> u32 {
        u32::from_le_bytes(self.bytes::<AT, 4>())
    }

    fn u64<const AT: usize>(&self) -> u64 {
        u64::from_le_bytes(self.bytes::<AT, 8>())
    }

    fn u128<const AT: usize>(&self) -> u128 {
        u128::from_le_bytes(self.bytes::<AT, 16>())
    }
}

/// Writes little-endian fields at constant offsets of a fixed-size block.
struct FieldsMut<'a, const N: usize>(&'a mut [u8; N]);

impl<const N: usize> FieldsMut<'_, N> {
    fn bytes<const AT: usize, const L: usize>(&mut self, v: [u8; L]) {
        const { assert!(AT + L <= N) }
        self.0[AT..AT + L].copy_from_slice(&v);
    }

    fn u32<const AT: usize>(&mut self, v: u32) {
        self.bytes::<AT, 4>(v.to_le_bytes());
    }

    fn u64<const AT: usize>(&mut self, v: u64) {
        self.bytes::<AT, 8>(v.to_le_bytes());
    }

    fn u128<const AT: usize>(&mut self, v: u128) {
        self.bytes::<AT, 16>(v.to_le_bytes());
    }
}

/// The first `N` bytes of `buf` as an array, or `Short`.
fn fixed<const N: usize>(buf: &[u8]) -> Result<&[u8; N], DecodeError> {
    buf.first_chunk::<N>().ok_or_else(|| short(N, buf.len()))
}

/// A bounds-checked reader over a variable-length buffer.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.first_chunk::<N>().copied()
    }

    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }
}

// ---------------------------------------------------------------------------
// File names.
// ---------------------------------------------------------------------------

const NAME_PREFIX: &str = "LS";
const NAME_SUFFIX: &str = ".log";
const NAME_HEX_DIGITS: usize = 16;

/// How a segment file name spells its hex digits. This build writes lower
/// case, as every other hex name and id of logship; builds before it wrote
/// upper case, and every reader still takes both (FORMAT.md, "File names").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NameCase {
    #[default]
    Lower,
    /// The spelling of builds before lower-case names.
    Upper,
}

/// `LS` + 16 lower-case hex digits + `.log`, e.g. `LS000000000000002a.log`.
pub fn segment_file_name(generation: Generation) -> String {
    segment_file_name_in(generation, NameCase::Lower)
}

/// The segment name of `generation` in the given spelling.
pub fn segment_file_name_in(generation: Generation, case: NameCase) -> String {
    match case {
        NameCase::Lower => format!("{NAME_PREFIX}{:016x}{NAME_SUFFIX}", generation.0),
        NameCase::Upper => format!("{NAME_PREFIX}{:016X}{NAME_SUFFIX}", generation.0),
    }
}

/// The inverse of `segment_file_name`: exact width, hex digits all of one
/// case (either), generation 0 refused.
pub fn parse_segment_file_name(name: &str) -> Option<Generation> {
    parse_segment_file_name_case(name).map(|(g, _)| g)
}

/// Like `parse_segment_file_name`, with the spelling found. A name whose
/// letters are of both cases is no segment's.
pub fn parse_segment_file_name_case(name: &str) -> Option<(Generation, NameCase)> {
    let hex = name.strip_prefix(NAME_PREFIX)?.strip_suffix(NAME_SUFFIX)?;
    if hex.len() != NAME_HEX_DIGITS || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let lower = hex.bytes().any(|b| matches!(b, b'a'..=b'f'));
    let upper = hex.bytes().any(|b| matches!(b, b'A'..=b'F'));
    let case = match (lower, upper) {
        (true, true) => return None,
        (false, true) => NameCase::Upper,
        _ => NameCase::Lower,
    };
    match u64::from_str_radix(hex, 16).ok()? {
        0 => None,
        g => Some((Generation(g), case)),
    }
}

// ---------------------------------------------------------------------------
// Header.
// ---------------------------------------------------------------------------

impl SegmentHeader {
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        let mut f = FieldsMut(&mut b);
        f.bytes::<H_MAGIC, 8>(HEADER_MAGIC);
        f.u32::<H_VERSION>(FORMAT_VERSION);
        f.u32::<H_HEADER_LEN>(HEADER_SIZE as u32);
        f.u32::<H_SEGMENT_SIZE>(SEGMENT_SIZE as u32);
        f.u32::<H_FLAGS>(0);
        f.bytes::<H_DATABASE_ID, 16>(self.database_id.0);
        f.u64::<H_EPOCH>(self.epoch.0);
        f.u64::<H_GENERATION>(self.generation.0);
        f.u64::<H_CREATED_US>(self.created_us);
        f.u32::<H_PREV_CHECKSUM>(self.prev_checksum);
        f.u32::<H_RESERVED_1>(0);
        f.u64::<H_PREV_LSN>(self.prev_lsn.0);
        f.u64::<H_HASH_LSN>(self.hash_lsn.0);
        f.u128::<H_BASE_HASH>(self.base_hash.0);
        f.u128::<H_SCHEMA_HASH>(self.schema_hash.0);
        f.u32::<H_RESERVED_2>(0);
        let crc = crc32fast::hash(&b[..H_CRC]);
        FieldsMut(&mut b).u32::<H_CRC>(crc);
        b
    }

    /// Decodes and verifies the header at the start of `buf`.
    pub fn decode(buf: &[u8]) -> Result<SegmentHeader, DecodeError> {
        let b = fixed::<HEADER_SIZE>(buf)?;
        let f = Fields(b);
        let magic = f.bytes::<H_MAGIC, 8>();
        if magic != HEADER_MAGIC {
            return Err(err(H_MAGIC, Reason::BadMagic { found: magic }));
        }
        let version = f.u32::<H_VERSION>();
        if version != FORMAT_VERSION {
            return Err(err(H_VERSION, Reason::BadVersion { found: version }));
        }
        let stored = f.u32::<H_CRC>();
        let computed = crc32fast::hash(&b[..H_CRC]);
        if stored != computed {
            return Err(err(H_CRC, Reason::BadCrc { stored, computed }));
        }

        let header_len = f.u32::<H_HEADER_LEN>();
        if header_len as usize != HEADER_SIZE {
            return Err(bad_field(
                H_HEADER_LEN,
                "header_len",
                format!("{header_len}, must be {HEADER_SIZE}"),
            ));
        }
        let segment_size = f.u32::<H_SEGMENT_SIZE>();
        if segment_size as usize != SEGMENT_SIZE {
            return Err(bad_field(
                H_SEGMENT_SIZE,
                "segment_size",
                format!("{segment_size}, must be {SEGMENT_SIZE}"),
            ));
        }
        let flags = f.u32::<H_FLAGS>();
        if flags != 0 {
            return Err(bad_field(
                H_FLAGS,
                "flags",
                format!("{flags:#x}, no flags are defined"),
            ));
        }
        let generation = f.u64::<H_GENERATION>();
        if generation == 0 {
            return Err(bad_field(
                H_GENERATION,
                "generation",
                "0, generations start at 1".to_owned(),
            ));
        }
        let reserved = f.u32::<H_RESERVED_1>();
        if reserved != 0 {
            return Err(bad_field(
                H_RESERVED_1,
                "reserved",
                format!("{reserved:#x}, must be zero"),
            ));
        }
        let prev_lsn = f.u64::<H_PREV_LSN>();
        let hash_lsn = f.u64::<H_HASH_LSN>();
        if hash_lsn != prev_lsn && !(prev_lsn >= 1 && hash_lsn == prev_lsn - 1) {
            return Err(bad_field(
                H_HASH_LSN,
                "hash_lsn",
                format!("{hash_lsn} with prev_lsn {prev_lsn}: must be prev_lsn or prev_lsn - 1"),
            ));
        }
        let reserved = f.u32::<H_RESERVED_2>();
        if reserved != 0 {
            return Err(bad_field(
                H_RESERVED_2,
                "reserved",
                format!("{reserved:#x}, must be zero"),
            ));
        }

        Ok(SegmentHeader {
            database_id: DatabaseId(f.bytes::<H_DATABASE_ID, 16>()),
            epoch: Epoch(f.u64::<H_EPOCH>()),
            generation: Generation(generation),
            created_us: f.u64::<H_CREATED_US>(),
            prev_checksum: f.u32::<H_PREV_CHECKSUM>(),
            prev_lsn: Lsn(prev_lsn),
            hash_lsn: Lsn(hash_lsn),
            base_hash: ContentHash(f.u128::<H_BASE_HASH>()),
            schema_hash: SchemaHash(f.u128::<H_SCHEMA_HASH>()),
        })
    }
}

// ---------------------------------------------------------------------------
// Trailer.
// ---------------------------------------------------------------------------

/// The most frames a record area can hold (all of them empty).
const MAX_FRAMES: usize = (TRAILER_OFFSET - HEADER_SIZE) / FRAME_HEADER_SIZE;

impl Trailer {
    pub fn encode(&self) -> [u8; TRAILER_SIZE] {
        let mut b = [0u8; TRAILER_SIZE];
        let mut f = FieldsMut(&mut b);
        f.bytes::<T_MAGIC, 8>(TRAILER_MAGIC);
        f.u32::<T_RECORD_COUNT>(self.record_count);
        f.u32::<T_RECORDS_END>(self.records_end);
        f.u64::<T_LAST_LSN>(self.last_lsn.0);
        f.u64::<T_HASH_LSN>(self.hash_lsn.0);
        f.u128::<T_HASH>(self.hash.0);
        f.u64::<T_SEALED_US>(self.sealed_us);
        f.u32::<T_SEGMENT_CHECKSUM>(self.segment_checksum);
        let crc = crc32fast::hash(&b[..T_CRC]);
        FieldsMut(&mut b).u32::<T_CRC>(crc);
        b
    }

    /// Decodes the trailer at the start of `buf`; `Ok(None)` when all 64 bytes are zero (not sealed).
    pub fn decode(buf: &[u8]) -> Result<Option<Trailer>, DecodeError> {
        let b = fixed::<TRAILER_SIZE>(buf)?;
        if b.iter().all(|&x| x == 0) {
            return Ok(None);
        }
        let f = Fields(b);
        let magic = f.bytes::<T_MAGIC, 8>();
        if magic != TRAILER_MAGIC {
            return Err(err(T_MAGIC, Reason::BadMagic { found: magic }));
        }
        let stored = f.u32::<T_CRC>();
        let computed = crc32fast::hash(&b[..T_CRC]);
        if stored != computed {
            return Err(err(T_CRC, Reason::BadCrc { stored, computed }));
        }

        let record_count = f.u32::<T_RECORD_COUNT>();
        let records_end = f.u32::<T_RECORDS_END>();
        let end = records_end as usize;
        if !(HEADER_SIZE..=TRAILER_OFFSET).contains(&end) {
            return Err(bad_field(
                T_RECORDS_END,
                "records_end",
                format!("{records_end}, must be in [{HEADER_SIZE}, {TRAILER_OFFSET}]"),
            ));
        }
        let count = record_count as usize;
        if count > MAX_FRAMES
            || count * FRAME_HEADER_SIZE > end - HEADER_SIZE
            || (count == 0 && end != HEADER_SIZE)
        {
            return Err(bad_field(
                T_RECORD_COUNT,
                "record_count",
                format!("{record_count} frames cannot end at offset {records_end}"),
            ));
        }
        let last_lsn = f.u64::<T_LAST_LSN>();
        let hash_lsn = f.u64::<T_HASH_LSN>();
        if hash_lsn != last_lsn && !(last_lsn >= 1 && hash_lsn == last_lsn - 1) {
            return Err(bad_field(
                T_HASH_LSN,
                "hash_lsn",
                format!("{hash_lsn} with last_lsn {last_lsn}: must be last_lsn or last_lsn - 1"),
            ));
        }

        Ok(Some(Trailer {
            record_count,
            records_end,
            last_lsn: Lsn(last_lsn),
            hash_lsn: Lsn(hash_lsn),
            hash: ContentHash(f.u128::<T_HASH>()),
            sealed_us: f.u64::<T_SEALED_US>(),
            segment_checksum: f.u32::<T_SEGMENT_CHECKSUM>(),
        }))
    }
}

// ---------------------------------------------------------------------------
// Frames.
// ---------------------------------------------------------------------------

/// Total bytes a frame with this payload takes.
pub fn frame_len(payload_len: usize) -> usize {
    FRAME_HEADER_SIZE + payload_len
}

/// The frame type byte for a kind and a fragment position.
pub fn frame_type(kind: RecordKind, fragment: Fragment) -> u8 {
    let bits = match fragment {
        Fragment::Whole => 0,
        Fragment::First => TYPE_MORE,
        Fragment::Middle => TYPE_MORE | TYPE_CONT,
        Fragment::Last => TYPE_CONT,
    };
    kind as u8 | bits
}

/// The inverse of `frame_type`; `None` for any other byte.
pub fn parse_frame_type(ty: u8) -> Option<(RecordKind, Fragment)> {
    let kind = match ty & 0x0F {
        1 => RecordKind::Changeset,
        2 => RecordKind::Ddl,
        _ => return None,
    };
    let fragment = match ty & 0xF0 {
        0 => Fragment::Whole,
        TYPE_MORE => Fragment::First,
        0xC0 => Fragment::Middle,
        TYPE_CONT => Fragment::Last,
        _ => return None,
    };
    Some((kind, fragment))
}

impl Fragment {
    /// True for `Middle` and `Last`: the frame continues a record begun in an earlier frame.
    pub fn continues(self) -> bool {
        matches!(self, Fragment::Middle | Fragment::Last)
    }

    /// True for `Whole` and `Last`: the frame completes a record.
    pub fn completes(self) -> bool {
        matches!(self, Fragment::Whole | Fragment::Last)
    }
}

fn frame_crc(len: [u8; 4], type_and_lsn: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&len);
    h.update(type_and_lsn);
    h.update(payload);
    h.finalize()
}

/// Appends one frame to `out`. `payload.len()` must be at most `MAX_FRAME_PAYLOAD`.
///
/// # Panics
/// If `payload` is longer than `MAX_FRAME_PAYLOAD` (a caller bug: split it into fragments).
pub fn encode_frame(
    kind: RecordKind,
    fragment: Fragment,
    lsn: Lsn,
    payload: &[u8],
    out: &mut Vec<u8>,
) {
    assert!(
        payload.len() <= MAX_FRAME_PAYLOAD,
        "frame payload of {} bytes exceeds MAX_FRAME_PAYLOAD",
        payload.len()
    );
    let len = (payload.len() as u32).to_le_bytes();
    let mut type_and_lsn = [0u8; FRAME_HEADER_SIZE - F_TYPE];
    type_and_lsn[0] = frame_type(kind, fragment);
    type_and_lsn[F_LSN - F_TYPE..].copy_from_slice(&lsn.0.to_le_bytes());
    let crc = frame_crc(len, &type_and_lsn, payload);
    out.reserve(frame_len(payload.len()));
    out.extend_from_slice(&len);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&type_and_lsn);
    out.extend_from_slice(payload);
}

/// Decodes the frame at `segment[offset..]`, not reading at or past `limit`.
/// `Ok(None)` at the end marker (17 zero bytes) or when fewer than 17 bytes remain before `limit`.
pub fn decode_frame(
    segment: &[u8],
    offset: usize,
    limit: usize,
) -> Result<Option<Frame<'_>>, DecodeError> {
    let limit = limit.min(segment.len());
    let Some(head_end) = offset.checked_add(FRAME_HEADER_SIZE) else {
        return Ok(None);
    };
    if head_end > limit {
        return Ok(None);
    }
    let Some(head) = segment
        .get(offset..head_end)
        .and_then(|s| s.first_chunk::<FRAME_HEADER_SIZE>())
    else {
        return Ok(None);
    };
    if head.iter().all(|&b| b == 0) {
        return Ok(None);
    }
    let f = Fields(head);
    let len = f.u32::<F_LEN>();
    let max = (limit - head_end).min(MAX_FRAME_PAYLOAD);
    if len as usize > max {
        return Err(err(
            offset + F_LEN,
            Reason::LengthTooLarge {
                len: len.into(),
                max: max as u64,
            },
        ));
    }
    let ty = f.u8::<F_TYPE>();
    let Some((kind, fragment)) = parse_frame_type(ty) else {
        return Err(err(offset + F_TYPE, Reason::BadType(ty)));
    };
    let Some(payload) = segment.get(head_end..head_end + len as usize) else {
        // Unreachable: len <= limit - head_end and limit <= segment.len().
        return Err(err(
            offset + F_LEN,
            Reason::LengthTooLarge {
                len: len.into(),
                max: max as u64,
            },
        ));
    };
    let stored = f.u32::<F_CRC>();
    let computed = frame_crc(f.bytes::<F_LEN, 4>(), &head[F_TYPE..], payload);
    if stored != computed {
        return Err(err(offset + F_CRC, Reason::BadCrc { stored, computed }));
    }
    Ok(Some(Frame {
        kind,
        fragment,
        lsn: Lsn(f.u64::<F_LSN>()),
        payload,
        offset,
    }))
}

impl Frame<'_> {
    /// Offset of the first byte after this frame.
    pub fn end(&self) -> usize {
        self.offset + frame_len(self.payload.len())
    }
}

// ---------------------------------------------------------------------------
// Logical records.
// ---------------------------------------------------------------------------

fn put_len(out: &mut Vec<u8>, len: usize, what: &str) {
    let len = u32::try_from(len)
        .unwrap_or_else(|_| panic!("{what} of {len} bytes does not fit a u32 length"));
    out.extend_from_slice(&len.to_le_bytes());
}

impl Record {
    /// Appends the logical payload of this record to `out`.
    ///
    /// # Panics
    /// If a DDL part is 4 GiB or larger (records are limited to `MAX_RECORD_SIZE` anyway).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.time_us.to_le_bytes());
        out.extend_from_slice(&self.hash.0.to_le_bytes());
        match &self.body {
            Body::Changeset(bytes) => out.extend_from_slice(bytes),
            Body::Ddl { schema_hash, parts } => {
                out.extend_from_slice(&schema_hash.0.to_le_bytes());
                put_len(out, parts.len(), "DDL part count");
                for part in parts {
                    let (tag, bytes) = match part {
                        DdlPart::Sql(sql) => (DDL_TAG_SQL, sql.as_bytes()),
                        DdlPart::Changeset(c) => (DDL_TAG_CHANGESET, c.as_slice()),
                    };
                    out.push(tag);
                    put_len(out, bytes.len(), "DDL part");
                    out.extend_from_slice(bytes);
                }
            }
        }
    }

    pub fn kind(&self) -> RecordKind {
        match self.body {
            Body::Changeset(_) => RecordKind::Changeset,
            Body::Ddl { .. } => RecordKind::Ddl,
        }
    }

    /// Decodes a reassembled logical payload of the given kind.
    pub fn decode(kind: RecordKind, buf: &[u8]) -> Result<Record, DecodeError> {
        let prefix = fixed::<RECORD_PREFIX_SIZE>(buf)?;
        let f = Fields(prefix);
        let time_us = f.u64::<R_TIME_US>();
        let hash = ContentHash(f.u128::<R_HASH>());
        let mut c = Cursor {
            buf,
            pos: RECORD_PREFIX_SIZE,
        };
        let body = match kind {
            RecordKind::Changeset => {
                Body::Changeset(buf.get(RECORD_PREFIX_SIZE..).unwrap_or_default().to_vec())
            }
            RecordKind::Ddl => decode_ddl(&mut c)?,
        };
        Ok(Record {
            time_us,
            hash,
            body,
        })
    }
}

fn decode_ddl(c: &mut Cursor<'_>) -> Result<Body, DecodeError> {
    let have = c.buf.len();
    let need = RECORD_PREFIX_SIZE + DDL_PREFIX_SIZE;
    let (Some(schema_hash), Some(part_count)) = (c.array::<16>(), c.array::<4>()) else {
        return Err(short(need, have));
    };
    let schema_hash = SchemaHash(u128::from_le_bytes(schema_hash));
    let part_count = u32::from_le_bytes(part_count);
    let count_offset = c.pos - 4;
    if part_count as usize > c.remaining() / DDL_PART_HEADER_SIZE {
        return Err(bad_field(
            count_offset,
            "part_count",
            format!(
                "{part_count} parts need at least {} bytes, {} remain",
                u64::from(part_count) * DDL_PART_HEADER_SIZE as u64,
                c.remaining()
            ),
        ));
    }
    let mut parts = Vec::with_capacity(part_count as usize);
    for _ in 0..part_count {
        let part_offset = c.pos;
        let (Some([tag]), Some(len)) = (c.array::<1>(), c.array::<4>()) else {
            return Err(short(part_offset + DDL_PART_HEADER_SIZE, have));
        };
        let len = u32::from_le_bytes(len);
        let bytes_offset = c.pos;
        let remaining = c.remaining();
        let Some(bytes) = c.take(len as usize) else {
            return Err(err(
                part_offset + 1,
                Reason::LengthTooLarge {
                    len: len.into(),
                    max: remaining as u64,
                },
            ));
        };
        let part = match tag {
            DDL_TAG_SQL => match std::str::from_utf8(bytes) {
                Ok(sql) => DdlPart::Sql(sql.to_owned()),
                Err(e) => {
                    return Err(bad_field(
                        bytes_offset + e.valid_up_to(),
                        "ddl_part.sql",
                        "SQL text is not valid UTF-8".to_owned(),
                    ));
                }
            },
            DDL_TAG_CHANGESET => DdlPart::Changeset(bytes.to_vec()),
            other => {
                return Err(bad_field(
                    part_offset,
                    "ddl_part.tag",
                    format!(
                        "{other}, must be {DDL_TAG_SQL} (SQL) or {DDL_TAG_CHANGESET} (changeset)"
                    ),
                ));
            }
        };
        parts.push(part);
    }
    if c.remaining() != 0 {
        return Err(bad_field(
            c.pos,
            "ddl_parts",
            format!(
                "{} trailing bytes after the last of {part_count} parts",
                c.remaining()
            ),
        ));
    }
    Ok(Body::Ddl { schema_hash, parts })
}

// ---------------------------------------------------------------------------
// Segment scans.
// ---------------------------------------------------------------------------

/// What scanning one segment buffer found.
#[derive(Clone, Debug)]
pub struct SegmentScan<'a> {
    pub header: SegmentHeader,
    pub frames: Vec<Frame<'a>>,
    /// `Some` when the segment is sealed.
    pub trailer: Option<Trailer>,
    /// Offset of the first byte after the last valid frame.
    pub records_end: usize,
    /// Unsealed segments only: the first invalid frame (a torn tail), if any.
    pub torn: Option<DecodeError>,
}

impl SegmentScan<'_> {
    /// The LSN of the last complete record (a whole one, or the last
    /// fragment of one) in the segment; its header's `hash_lsn` when it
    /// holds none.
    pub fn complete_lsn(&self) -> Lsn {
        self.frames
            .iter()
            .rev()
            .find(|f| matches!(f.fragment, Fragment::Whole | Fragment::Last))
            .map(|f| f.lsn)
            .unwrap_or(self.header.hash_lsn)
    }
}

fn check_segment_len(buf: &[u8]) -> Result<(), DecodeError> {
    if buf.len() < SEGMENT_SIZE {
        return Err(short(SEGMENT_SIZE, buf.len()));
    }
    if buf.len() > SEGMENT_SIZE {
        return Err(bad_field(
            SEGMENT_SIZE,
            "segment_size",
            format!(
                "the segment is {} bytes, must be exactly {SEGMENT_SIZE}",
                buf.len()
            ),
        ));
    }
    Ok(())
}

fn check_database(
    header: &SegmentHeader,
    expect_db: Option<DatabaseId>,
) -> Result<(), DecodeError> {
    match expect_db {
        Some(expected) if expected != header.database_id => Err(err(
            H_DATABASE_ID,
            Reason::WrongDatabase {
                expected,
                found: header.database_id,
            },
        )),
        _ => Ok(()),
    }
}

/// Checks that `f` may follow `prev` (or open the segment described by `header`).
fn check_order(
    header: &SegmentHeader,
    prev: Option<&Frame<'_>>,
    f: &Frame<'_>,
) -> Result<(), Reason> {
    let expected = match (prev, f.fragment.continues()) {
        (None, true) => {
            if header.prev_lsn == Lsn::ZERO || header.hash_lsn.0 != header.prev_lsn.0 - 1 {
                return Err(Reason::BadFragment(
                    "the first frame continues a record, but the previous segment ended at a record boundary",
                ));
            }
            header.prev_lsn
        }
        // A new record follows the last complete one. When the previous
        // segment ended inside a record, that record was abandoned (a crash
        // cut it before its last fragment) and the new one reuses its LSN.
        (None, false) => next_lsn(header.hash_lsn)?,
        (Some(p), true) => {
            if p.fragment.completes() {
                return Err(Reason::BadFragment(
                    "a continuation frame follows a complete record",
                ));
            }
            if p.kind != f.kind {
                return Err(Reason::BadFragment(
                    "a continuation frame changes the record kind",
                ));
            }
            p.lsn
        }
        (Some(p), false) => {
            if p.fragment.completes() {
                next_lsn(p.lsn)?
            } else {
                // Abandons the incomplete record: same LSN.
                p.lsn
            }
        }
    };
    if f.lsn != expected {
        return Err(Reason::BadLsn {
            expected,
            found: f.lsn,
        });
    }
    Ok(())
}

fn next_lsn(lsn: Lsn) -> Result<Lsn, Reason> {
    lsn.0
        .checked_add(1)
        .map(Lsn)
        .ok_or(Reason::BadFragment("the LSN space is exhausted"))
}

/// Frames read from `HEADER_SIZE` until the end marker or the first frame that
/// fails to decode or breaks the LSN and fragment rules (`stop`).
struct Walk<'a> {
    frames: Vec<Frame<'a>>,
    end: usize,
    stop: Option<DecodeError>,
}

fn walk_frames<'a>(buf: &'a [u8], header: &SegmentHeader) -> Walk<'a> {
    let mut frames: Vec<Frame<'a>> = Vec::new();
    let mut end = HEADER_SIZE;
    let stop = loop {
        match decode_frame(buf, end, TRAILER_OFFSET) {
            Ok(None) => break None,
            Err(e) => break Some(e),
            Ok(Some(frame)) => {
                if let Err(reason) = check_order(header, frames.last(), &frame) {
                    break Some(err(frame.offset, reason));
                }
                end = frame.end();
                frames.push(frame);
            }
        }
    };
    Walk { frames, end, stop }
}

/// Offset of the first non-zero byte of `s`. Compares 4 KiB blocks against a
/// zero block (a `memcmp`, fast even in debug builds) before looking closer.
fn first_nonzero(s: &[u8]) -> Option<usize> {
    static ZEROS: [u8; 4096] = [0; 4096];
    for (n, block) in s.chunks(ZEROS.len()).enumerate() {
        if block != &ZEROS[..block.len()] {
            return block
                .iter()
                .position(|&b| b != 0)
                .map(|i| n * ZEROS.len() + i);
        }
    }
    None
}

fn trailer_bytes(buf: &[u8]) -> &[u8] {
    buf.get(TRAILER_OFFSET..).unwrap_or_default()
}

fn mismatch(field: usize, what: String) -> DecodeError {
    err(TRAILER_OFFSET + field, Reason::TrailerMismatch(what))
}

/// Verifies a sealed segment completely (see FORMAT.md, "Verification").
pub fn scan_sealed(
    buf: &[u8],
    expect_db: Option<DatabaseId>,
) -> Result<SegmentScan<'_>, DecodeError> {
    check_segment_len(buf)?;
    let header = SegmentHeader::decode(buf)?;
    check_database(&header, expect_db)?;
    let trailer = Trailer::decode(trailer_bytes(buf))
        .map_err(|e| DecodeError {
            offset: e.offset + TRAILER_OFFSET as u64,
            reason: e.reason,
        })?
        .ok_or_else(|| {
            bad_field(
                TRAILER_OFFSET,
                "trailer",
                "all zero: the segment is not sealed".to_owned(),
            )
        })?;

    let Walk { frames, end, stop } = walk_frames(buf, &header);
    if let Some(e) = stop {
        return Err(e);
    }
    if let Some(i) = first_nonzero(buf.get(end..TRAILER_OFFSET).unwrap_or_default()) {
        return Err(err(end + i, Reason::Garbage));
    }

    if trailer.record_count as usize != frames.len() {
        return Err(mismatch(
            T_RECORD_COUNT,
            format!(
                "record_count {} but the segment holds {} frames",
                trailer.record_count,
                frames.len()
            ),
        ));
    }
    if trailer.records_end as usize != end {
        return Err(mismatch(
            T_RECORDS_END,
            format!(
                "records_end {} but the last frame ends at {end}",
                trailer.records_end
            ),
        ));
    }
    let last_lsn = frames.last().map_or(header.prev_lsn, |f| f.lsn);
    if trailer.last_lsn != last_lsn {
        return Err(mismatch(
            T_LAST_LSN,
            format!(
                "last_lsn {} but the last frame has LSN {last_lsn}",
                trailer.last_lsn
            ),
        ));
    }
    let last_complete = frames.iter().rev().find(|f| f.fragment.completes());
    let hash_lsn = last_complete.map_or(header.hash_lsn, |f| f.lsn);
    if trailer.hash_lsn != hash_lsn {
        return Err(mismatch(
            T_HASH_LSN,
            format!(
                "hash_lsn {} but the last complete record has LSN {hash_lsn}",
                trailer.hash_lsn
            ),
        ));
    }
    match last_complete {
        Some(f) if f.fragment == Fragment::Whole => {
            let Some(prefix) = f.payload.first_chunk::<RECORD_PREFIX_SIZE>() else {
                return Err(bad_field(
                    f.offset + FRAME_HEADER_SIZE,
                    "record",
                    format!(
                        "{} bytes, shorter than the {RECORD_PREFIX_SIZE}-byte record prefix",
                        f.payload.len()
                    ),
                ));
            };
            let hash = ContentHash(Fields(prefix).u128::<R_HASH>());
            if trailer.hash != hash {
                return Err(mismatch(
                    T_HASH,
                    format!(
                        "hash {} but record {} ends with hash {hash}",
                        trailer.hash, f.lsn
                    ),
                ));
            }
        }
        // The hash of a fragmented record lives in its First fragment, maybe
        // in an earlier segment; with no complete record it is the header's.
        Some(_) => {}
        None => {
            if trailer.hash != header.base_hash {
                return Err(mismatch(
                    T_HASH,
                    format!(
                        "hash {} but the header's base_hash is {}",
                        trailer.hash, header.base_hash
                    ),
                ));
            }
        }
    }
    let computed = crc32fast::hash(buf.get(..TRAILER_OFFSET).unwrap_or_default());
    if trailer.segment_checksum != computed {
        return Err(err(
            TRAILER_OFFSET + T_SEGMENT_CHECKSUM,
            Reason::BadCrc {
                stored: trailer.segment_checksum,
                computed,
            },
        ));
    }

    Ok(SegmentScan {
        header,
        frames,
        trailer: Some(trailer),
        records_end: end,
        torn: None,
    })
}

/// Scans the current segment: a valid header, then frames up to the end
/// marker or the first invalid frame, which is reported in `torn`.
pub fn scan_current(
    buf: &[u8],
    expect_db: Option<DatabaseId>,
) -> Result<SegmentScan<'_>, DecodeError> {
    check_segment_len(buf)?;
    let header = SegmentHeader::decode(buf)?;
    check_database(&header, expect_db)?;
    let Walk { frames, end, stop } = walk_frames(buf, &header);
    // A trailer that fails to decode is a torn seal: the segment is still current.
    let trailer = Trailer::decode(trailer_bytes(buf)).ok().flatten();
    Ok(SegmentScan {
        header,
        frames,
        trailer,
        records_end: end,
        torn: stop,
    })
}

/// Checks that `next` may follow the sealed segment `prev` in one log.
pub fn check_successor(
    prev: &SegmentHeader,
    prev_trailer: &Trailer,
    next: &SegmentHeader,
) -> Result<(), Reason> {
    if prev.generation.0.checked_add(1) != Some(next.generation.0) {
        return Err(Reason::GenerationGap {
            prev: prev.generation,
            found: next.generation,
        });
    }
    if next.database_id != prev.database_id {
        return Err(Reason::WrongDatabase {
            expected: prev.database_id,
            found: next.database_id,
        });
    }
    if next.prev_checksum != prev_trailer.segment_checksum {
        return Err(Reason::BrokenChain {
            prev: prev.generation,
            stored: next.prev_checksum,
            actual: prev_trailer.segment_checksum,
        });
    }
    if next.prev_lsn != prev_trailer.last_lsn {
        return Err(Reason::BadLsn {
            expected: prev_trailer.last_lsn,
            found: next.prev_lsn,
        });
    }
    if next.hash_lsn != prev_trailer.hash_lsn {
        return Err(Reason::BadLsn {
            expected: prev_trailer.hash_lsn,
            found: next.hash_lsn,
        });
    }
    if next.base_hash != prev_trailer.hash {
        return Err(Reason::BadField {
            field: "base_hash",
            detail: format!(
                "{} but generation {} ended with hash {}",
                next.base_hash, prev.generation, prev_trailer.hash
            ),
        });
    }
    if next.epoch < prev.epoch {
        return Err(Reason::EpochRegressed {
            prev: prev.epoch,
            found: next.epoch,
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Reassembly.
// ---------------------------------------------------------------------------

/// Reassembles logical records from frames, across segments.
#[derive(Debug, Default)]
pub struct Reassembler {
    pending: Option<(RecordKind, Lsn, Vec<u8>)>,
}

impl Reassembler {
    /// Feeds one frame; returns the complete logical payload when `frame` ends a record.
    #[allow(
        clippy::type_complexity,
        reason = "the signature is the contract log.rs and the store use"
    )]
    pub fn push<'a>(
        &mut self,
        frame: &Frame<'a>,
    ) -> Result<Option<(RecordKind, Lsn, std::borrow::Cow<'a, [u8]>)>, Reason> {
        match frame.fragment {
            Fragment::Whole | Fragment::First if self.pending.is_some() => {
                // A new record with the LSN of the incomplete one abandons it
                // (FORMAT.md, "Fragments"); any other LSN is corruption.
                if self.pending.as_ref().map(|p| p.1) != Some(frame.lsn) {
                    return Err(Reason::BadFragment(
                        "a new record starts while a fragmented record with another LSN is incomplete",
                    ));
                }
                self.pending = None;
                self.push(frame)
            }
            Fragment::Whole => Ok(Some((frame.kind, frame.lsn, Cow::Borrowed(frame.payload)))),
            Fragment::First => {
                check_record_size(frame.payload.len())?;
                self.pending = Some((frame.kind, frame.lsn, frame.payload.to_vec()));
                Ok(None)
            }
            Fragment::Middle | Fragment::Last => {
                let Some((kind, lsn, buf)) = &mut self.pending else {
                    return Err(Reason::BadFragment(
                        "a continuation frame without a first fragment",
                    ));
                };
                if *kind != frame.kind {
                    return Err(Reason::BadFragment(
                        "a continuation frame changes the record kind",
                    ));
                }
                if *lsn != frame.lsn {
                    return Err(Reason::BadFragment(
                        "a continuation frame has another LSN than its first fragment",
                    ));
                }
                check_record_size(buf.len().saturating_add(frame.payload.len()))?;
                buf.extend_from_slice(frame.payload);
                if frame.fragment == Fragment::Middle {
                    return Ok(None);
                }
                Ok(self
                    .pending
                    .take()
                    .map(|(kind, lsn, buf)| (kind, lsn, Cow::Owned(buf))))
            }
        }
    }

    /// True while a fragmented record is incomplete.
    pub fn in_progress(&self) -> bool {
        self.pending.is_some()
    }
}

fn check_record_size(len: usize) -> Result<(), Reason> {
    if len > MAX_RECORD_SIZE {
        return Err(Reason::LengthTooLarge {
            len: len as u64,
            max: MAX_RECORD_SIZE as u64,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Instant;

    /// splitmix64: a small seeded generator for test data.
    #[derive(Debug, Clone)]
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn bytes(&mut self, n: usize) -> Vec<u8> {
            let mut out = Vec::with_capacity(n + 8);
            while out.len() < n {
                out.extend_from_slice(&self.next().to_le_bytes());
            }
            out.truncate(n);
            out
        }
    }

    const DB: DatabaseId = DatabaseId(*b"logship-test-db!");
    const OTHER_DB: DatabaseId = DatabaseId(*b"some-other-db-id");

    /// Lays out logical records into segments exactly as the log writer does:
    /// a record that does not fit the rest of the current segment opens the
    /// next one; a record larger than `MAX_FRAME_PAYLOAD` is split into
    /// First/Middle/Last fragments, each filling the rest of its segment.
    #[derive(Debug)]
    struct LogBuilder {
        sealed: Vec<Vec<u8>>,
        header: SegmentHeader,
        /// The current segment up to its last frame.
        buf: Vec<u8>,
        count: u32,
        last_lsn: Lsn,
        hash_lsn: Lsn,
        hash: ContentHash,
        schema: SchemaHash,
    }

    impl LogBuilder {
        fn new() -> LogBuilder {
            LogBuilder::starting_at(Generation::FIRST, 0, Lsn::ZERO, ContentHash(0))
        }

        /// A log whose first segment follows generation `generation - 1`, which
        /// ended at the record boundary `prev_lsn` with content hash `hash`.
        fn starting_at(
            generation: Generation,
            prev_checksum: u32,
            prev_lsn: Lsn,
            hash: ContentHash,
        ) -> LogBuilder {
            let header = SegmentHeader {
                database_id: DB,
                epoch: Epoch(3),
                generation,
                created_us: 1_700_000_000_000_000 + generation.0,
                prev_checksum,
                prev_lsn,
                hash_lsn: prev_lsn,
                base_hash: hash,
                schema_hash: SchemaHash(0x5C4E_3A00),
            };
            let mut b = LogBuilder {
                sealed: Vec::new(),
                buf: Vec::new(),
                count: 0,
                last_lsn: prev_lsn,
                hash_lsn: prev_lsn,
                hash,
                schema: header.schema_hash,
                header,
            };
            b.open(b.header.clone());
            b
        }

        fn open(&mut self, header: SegmentHeader) {
            self.buf = Vec::with_capacity(SEGMENT_SIZE);
            self.buf.extend_from_slice(&header.encode());
            self.header = header;
            self.count = 0;
        }

        fn room(&self) -> usize {
            TRAILER_OFFSET - self.buf.len()
        }

        /// Writes one raw frame, with no checks: tests use it to break the rules.
        fn put(&mut self, kind: RecordKind, fragment: Fragment, lsn: Lsn, payload: &[u8]) -> usize {
            let offset = self.buf.len();
            encode_frame(kind, fragment, lsn, payload, &mut self.buf);
            assert!(self.buf.len() <= TRAILER_OFFSET);
            self.count += 1;
            self.last_lsn = lsn;
            if fragment.completes() {
                self.hash_lsn = lsn;
            }
            offset
        }

        fn append(&mut self, record: &Record) -> Lsn {
            let mut payload = Vec::new();
            record.encode(&mut payload);
            let kind = record.kind();
            let lsn = self.last_lsn.next();
            if payload.len() <= MAX_FRAME_PAYLOAD {
                if frame_len(payload.len()) > self.room() {
                    self.seal();
                }
                self.put(kind, Fragment::Whole, lsn, &payload);
            } else {
                let mut rest = payload.as_slice();
                let mut first = true;
                while !rest.is_empty() {
                    if self.room() <= FRAME_HEADER_SIZE {
                        self.seal();
                    }
                    let (chunk, tail) =
                        rest.split_at(rest.len().min(self.room() - FRAME_HEADER_SIZE));
                    let fragment = match (first, tail.is_empty()) {
                        (true, false) => Fragment::First,
                        (false, false) => Fragment::Middle,
                        (false, true) => Fragment::Last,
                        (true, true) => {
                            unreachable!("a record over MAX_FRAME_PAYLOAD fits no segment")
                        }
                    };
                    self.put(kind, fragment, lsn, chunk);
                    rest = tail;
                    first = false;
                }
            }
            self.hash_lsn = lsn;
            self.hash = record.hash;
            if let Body::Ddl { schema_hash, .. } = &record.body {
                self.schema = *schema_hash;
            }
            lsn
        }

        /// The current segment as it is on disk: zero padding, zero trailer.
        fn current(&self) -> Vec<u8> {
            let mut seg = self.buf.clone();
            seg.resize(SEGMENT_SIZE, 0);
            seg
        }

        /// Seals the current segment and opens the next generation.
        fn seal(&mut self) {
            let mut seg = std::mem::take(&mut self.buf);
            let records_end = seg.len() as u32;
            seg.resize(TRAILER_OFFSET, 0);
            let trailer = Trailer {
                record_count: self.count,
                records_end,
                last_lsn: self.last_lsn,
                hash_lsn: self.hash_lsn,
                hash: self.hash,
                sealed_us: self.header.created_us + 500,
                segment_checksum: crc32fast::hash(&seg),
            };
            seg.extend_from_slice(&trailer.encode());
            assert_eq!(seg.len(), SEGMENT_SIZE);
            self.sealed.push(seg);
            let next = SegmentHeader {
                generation: self.header.generation.next(),
                created_us: self.header.created_us + 1000,
                prev_checksum: trailer.segment_checksum,
                prev_lsn: self.last_lsn,
                hash_lsn: self.hash_lsn,
                base_hash: self.hash,
                schema_hash: self.schema,
                ..self.header.clone()
            };
            self.open(next);
        }

        /// Seals the current segment and returns all sealed segments.
        fn finish(mut self) -> Vec<Vec<u8>> {
            self.seal();
            self.sealed
        }
    }

    fn changeset(time_us: u64, hash: u128, bytes: Vec<u8>) -> Record {
        Record {
            time_us,
            hash: ContentHash(hash),
            body: Body::Changeset(bytes),
        }
    }

    fn ddl_record() -> Record {
        Record {
            time_us: 42,
            hash: ContentHash(0xDD1),
            body: Body::Ddl {
                schema_hash: SchemaHash(0x5C4E_3A01),
                parts: vec![
                    DdlPart::Sql("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)".to_owned()),
                    DdlPart::Changeset(vec![1, 2, 3, 4]),
                    DdlPart::Sql("CREATE INDEX t_v ON t(v) -- é".to_owned()),
                    DdlPart::Changeset(Vec::new()),
                    DdlPart::Sql(String::new()),
                ],
            },
        }
    }

    /// Some small records of both kinds.
    fn small_records(n: usize, seed: u64) -> Vec<Record> {
        let mut rng = Rng(seed);
        (0..n)
            .map(|i| {
                if i % 7 == 3 {
                    ddl_record()
                } else {
                    let len = rng.below(2500);
                    changeset(
                        rng.next(),
                        u128::from(rng.next()) << 64 | u128::from(rng.next()),
                        rng.bytes(len),
                    )
                }
            })
            .collect()
    }

    /// A log of three sealed segments (generations 1 to 3) of small records.
    fn three_segments() -> Vec<Vec<u8>> {
        let mut b = LogBuilder::new();
        for (i, r) in small_records(12, 7).iter().enumerate() {
            b.append(r);
            if i % 4 == 3 && i < 11 {
                b.seal();
            }
        }
        let segs = b.finish();
        assert_eq!(segs.len(), 3);
        segs
    }

    fn frames_of(seg: &[u8]) -> Vec<Frame<'_>> {
        scan_sealed(seg, Some(DB)).expect("valid segment").frames
    }

    /// Recomputes the frame CRC at `offset` after a test edited the frame.
    fn refresh_frame_crc(seg: &mut [u8], offset: usize) {
        let len = u32::from_le_bytes(seg[offset..offset + 4].try_into().unwrap()) as usize;
        let mut h = crc32fast::Hasher::new();
        h.update(&seg[offset..offset + 4]);
        h.update(&seg[offset + 8..offset + FRAME_HEADER_SIZE + len]);
        let crc = h.finalize();
        seg[offset + 4..offset + 8].copy_from_slice(&crc.to_le_bytes());
    }

    /// Rewrites the trailer after a test edited it or the segment body:
    /// `edit` changes the fields, the checksum and CRC are recomputed.
    fn reseal(seg: &mut [u8], edit: impl FnOnce(&mut Trailer)) {
        let mut t = Trailer::decode(&seg[TRAILER_OFFSET..]).unwrap().unwrap();
        t.segment_checksum = crc32fast::hash(&seg[..TRAILER_OFFSET]);
        edit(&mut t);
        seg[TRAILER_OFFSET..].copy_from_slice(&t.encode());
    }

    fn rewrite_header(seg: &mut [u8], edit: impl FnOnce(&mut [u8])) {
        edit(&mut seg[..HEADER_SIZE]);
        let crc = crc32fast::hash(&seg[..H_CRC]);
        seg[H_CRC..HEADER_SIZE].copy_from_slice(&crc.to_le_bytes());
    }

    fn sealed_err(seg: &[u8]) -> DecodeError {
        scan_sealed(seg, Some(DB)).expect_err("the segment must be refused")
    }

    /// Checks a whole log the way a reader does and returns its records.
    fn read_log(segs: &[Vec<u8>]) -> Vec<(Lsn, Record)> {
        let mut out = Vec::new();
        let mut re = Reassembler::default();
        let mut prev: Option<(SegmentHeader, Trailer)> = None;
        let mut hash_at = std::collections::HashMap::new();
        for seg in segs {
            let scan =
                scan_sealed(seg, Some(DB)).unwrap_or_else(|e| panic!("segment refused: {e:?}"));
            let trailer = scan.trailer.clone().expect("sealed");
            if let Some((ph, pt)) = &prev {
                check_successor(ph, pt, &scan.header).unwrap();
            }
            for frame in &scan.frames {
                if let Some((kind, lsn, payload)) = re.push(frame).unwrap() {
                    let record = Record::decode(kind, &payload).unwrap();
                    assert_eq!(record.kind(), kind);
                    hash_at.insert(lsn, record.hash);
                    out.push((lsn, record));
                }
            }
            // The trailer's hash is the hash after its hash_lsn record, also
            // when that record was fragmented (not checked by scan_sealed).
            if let Some(h) = hash_at.get(&trailer.hash_lsn) {
                assert_eq!(*h, trailer.hash);
            }
            prev = Some((scan.header, trailer));
        }
        assert!(!re.in_progress());
        out
    }

    // ---- round trips -------------------------------------------------------

    #[test]
    fn file_names_round_trip() {
        assert_eq!(
            segment_file_name(Generation(0x2A)),
            "LS000000000000002a.log"
        );
        assert_eq!(
            segment_file_name(Generation(u64::MAX)),
            "LSffffffffffffffff.log"
        );
        for g in [1, 0x2A, 0xABCDEF, u64::MAX] {
            for case in [NameCase::Lower, NameCase::Upper] {
                assert_eq!(
                    parse_segment_file_name(&segment_file_name_in(Generation(g), case)),
                    Some(Generation(g))
                );
            }
        }
        // The spelling of older builds is read, and told apart.
        assert_eq!(
            parse_segment_file_name_case("LS000000000000002A.log"),
            Some((Generation(0x2A), NameCase::Upper))
        );
        assert_eq!(
            parse_segment_file_name_case("LS000000000000002a.log"),
            Some((Generation(0x2A), NameCase::Lower))
        );
        for bad in [
            CURRENT_FILE_NAME,
            TEMP_FILE_NAME,
            "LS0000000000000000.log",
            "LS00000000000000aA.log",
            "LS00000000000002A.log",
            "LS0000000000000002A.log",
            "LS000000000000002A.LOG",
            "ls000000000000002A.log",
            "LS000000000000002A.log.tmp",
            "LS+00000000000002A.log",
            "LS00000000000000\u{e9}.log",
            "",
        ] {
            assert_eq!(parse_segment_file_name(bad), None, "{bad:?}");
        }
    }

    fn sample_header() -> SegmentHeader {
        SegmentHeader {
            database_id: DB,
            epoch: Epoch(0x0102_0304_0506_0708),
            generation: Generation(0x2A),
            created_us: 0x1122_3344_5566_7788,
            prev_checksum: 0xDEAD_BEEF,
            prev_lsn: Lsn(1000),
            hash_lsn: Lsn(999),
            base_hash: ContentHash(0x0011_2233_4455_6677_8899_AABB_CCDD_EEFF),
            schema_hash: SchemaHash(u128::MAX - 5),
        }
    }

    #[test]
    fn header_round_trip() {
        let h = sample_header();
        let b = h.encode();
        assert_eq!(&b[..8], b"LGSHSEG\0");
        assert_eq!(b[8..12], 1u32.to_le_bytes());
        assert_eq!(b[12..16], 128u32.to_le_bytes());
        assert_eq!(b[16..20], 1_048_576u32.to_le_bytes());
        assert_eq!(b[24..40], DB.0);
        assert_eq!(b[48..56], 0x2Au64.to_le_bytes());
        assert_eq!(b[124..128], crc32fast::hash(&b[..124]).to_le_bytes());
        assert_eq!(SegmentHeader::decode(&b), Ok(h.clone()));
        // Extra bytes after the header are not its business.
        let mut longer = b.to_vec();
        longer.extend_from_slice(&[0xFF; 10]);
        assert_eq!(SegmentHeader::decode(&longer), Ok(h));
    }

    #[test]
    fn header_field_checks() {
        let good = sample_header().encode();
        let cases: [(usize, &[u8], &str); 7] = [
            (12, &64u32.to_le_bytes(), "header_len"),
            (16, &4096u32.to_le_bytes(), "segment_size"),
            (20, &1u32.to_le_bytes(), "flags"),
            (48, &0u64.to_le_bytes(), "generation"),
            (68, &7u32.to_le_bytes(), "reserved"),
            (80, &998u64.to_le_bytes(), "hash_lsn"),
            (120, &1u32.to_le_bytes(), "reserved"),
        ];
        for (at, bytes, name) in cases {
            let mut b = good;
            rewrite_header(&mut b, |h| h[at..at + bytes.len()].copy_from_slice(bytes));
            let e = SegmentHeader::decode(&b).unwrap_err();
            assert_eq!(e.offset, at as u64, "{name}");
            assert!(
                matches!(e.reason, Reason::BadField { field, .. } if field == name),
                "{e:?}"
            );
        }
        // hash_lsn == prev_lsn == 0 is fine, hash_lsn = prev_lsn - 1 at 0 is not.
        let mut h = sample_header();
        h.prev_lsn = Lsn(0);
        h.hash_lsn = Lsn(0);
        assert!(SegmentHeader::decode(&h.encode()).is_ok());
        h.hash_lsn = Lsn(u64::MAX);
        assert!(SegmentHeader::decode(&h.encode()).is_err());
    }

    fn sample_trailer() -> Trailer {
        Trailer {
            record_count: 3,
            records_end: 4000,
            last_lsn: Lsn(77),
            hash_lsn: Lsn(76),
            hash: ContentHash(0xFEED_FACE_0000_0001_0002_0003_0004_0005),
            sealed_us: 0x0AAA_BBBB_CCCC_DDDD,
            segment_checksum: 0x1234_5678,
        }
    }

    #[test]
    fn trailer_round_trip() {
        let t = sample_trailer();
        let b = t.encode();
        assert_eq!(&b[..8], b"LGSHEND\0");
        assert_eq!(b[12..16], 4000u32.to_le_bytes());
        assert_eq!(b[56..60], 0x1234_5678u32.to_le_bytes());
        assert_eq!(b[60..64], crc32fast::hash(&b[..60]).to_le_bytes());
        assert_eq!(Trailer::decode(&b), Ok(Some(t)));
        assert_eq!(Trailer::decode(&[0; TRAILER_SIZE]), Ok(None));
        // Field checks behind a valid CRC.
        let bad = [
            Trailer {
                records_end: 100,
                ..sample_trailer()
            },
            Trailer {
                records_end: TRAILER_OFFSET as u32 + 1,
                ..sample_trailer()
            },
            Trailer {
                record_count: 1000,
                ..sample_trailer()
            },
            Trailer {
                record_count: 0,
                ..sample_trailer()
            },
            Trailer {
                hash_lsn: Lsn(75),
                ..sample_trailer()
            },
        ];
        for t in bad {
            let e = Trailer::decode(&t.encode()).unwrap_err();
            assert!(matches!(e.reason, Reason::BadField { .. }), "{t:?}: {e:?}");
        }
    }

    #[test]
    fn frame_round_trip() {
        let kinds = [RecordKind::Changeset, RecordKind::Ddl];
        let frags = [
            Fragment::Whole,
            Fragment::First,
            Fragment::Middle,
            Fragment::Last,
        ];
        let mut accepted = 0;
        for ty in 0..=255u8 {
            if let Some((k, f)) = parse_frame_type(ty) {
                assert_eq!(frame_type(k, f), ty);
                accepted += 1;
            }
        }
        assert_eq!(accepted, 8);
        assert_eq!(frame_type(RecordKind::Changeset, Fragment::Whole), 0x01);
        assert_eq!(frame_type(RecordKind::Ddl, Fragment::First), 0x42);
        assert_eq!(frame_type(RecordKind::Changeset, Fragment::Middle), 0xC1);
        assert_eq!(frame_type(RecordKind::Ddl, Fragment::Last), 0x82);

        let mut buf = vec![0xEE; 5]; // frames need not start at 0
        let mut expect = Vec::new();
        for (i, kind) in kinds.into_iter().enumerate() {
            for (j, fragment) in frags.into_iter().enumerate() {
                let payload: Vec<u8> = (0..(i * 4 + j) * 37).map(|x| x as u8).collect();
                let lsn = Lsn(u64::MAX - (i * 4 + j) as u64);
                expect.push((kind, fragment, lsn, payload.clone(), buf.len()));
                encode_frame(kind, fragment, lsn, &payload, &mut buf);
            }
        }
        let mut offset = 5;
        for (kind, fragment, lsn, payload, at) in expect {
            let f = decode_frame(&buf, offset, buf.len()).unwrap().unwrap();
            assert_eq!(
                f,
                Frame {
                    kind,
                    fragment,
                    lsn,
                    payload: &payload,
                    offset: at
                }
            );
            assert_eq!(f.end(), at + frame_len(payload.len()));
            offset = f.end();
        }
        assert_eq!(offset, buf.len());
        assert_eq!(decode_frame(&buf, offset, buf.len()), Ok(None));
        // End marker, and too few bytes before the limit.
        let mut z = buf.clone();
        z.extend_from_slice(&[0; 40]);
        assert_eq!(decode_frame(&z, offset, z.len()), Ok(None));
        assert_eq!(decode_frame(&buf, 5, 5 + 16), Ok(None));
        assert_eq!(decode_frame(&buf, usize::MAX - 3, usize::MAX), Ok(None));
        // The limit cuts the payload of the first frame (37 * 0 = empty, take the second).
        let second = 5 + FRAME_HEADER_SIZE;
        let e = decode_frame(&buf, second, second + FRAME_HEADER_SIZE + 36).unwrap_err();
        assert_eq!(
            e,
            DecodeError {
                offset: second as u64,
                reason: Reason::LengthTooLarge { len: 37, max: 36 }
            }
        );
    }

    #[test]
    fn record_round_trip_changeset() {
        for r in [
            changeset(1, 2, vec![9; 1000]),
            changeset(u64::MAX, u128::MAX, Vec::new()),
        ] {
            let mut buf = Vec::new();
            r.encode(&mut buf);
            assert_eq!(
                buf.len(),
                RECORD_PREFIX_SIZE
                    + if let Body::Changeset(c) = &r.body {
                        c.len()
                    } else {
                        0
                    }
            );
            assert_eq!(buf[..8], r.time_us.to_le_bytes());
            assert_eq!(buf[8..24], r.hash.0.to_le_bytes());
            assert_eq!(Record::decode(RecordKind::Changeset, &buf), Ok(r));
        }
    }

    #[test]
    fn record_round_trip_ddl() {
        let r = ddl_record();
        let mut buf = Vec::new();
        r.encode(&mut buf);
        assert_eq!(buf[24..40], 0x5C4E_3A01u128.to_le_bytes());
        assert_eq!(buf[40..44], 5u32.to_le_bytes());
        assert_eq!(buf[44], 1);
        assert_eq!(Record::decode(RecordKind::Ddl, &buf), Ok(r));
        let empty = Record {
            time_us: 0,
            hash: ContentHash(0),
            body: Body::Ddl {
                schema_hash: SchemaHash(1),
                parts: Vec::new(),
            },
        };
        buf.clear();
        empty.encode(&mut buf);
        assert_eq!(buf.len(), 44);
        assert_eq!(Record::decode(RecordKind::Ddl, &buf), Ok(empty));
    }

    #[test]
    fn record_decode_refuses_malformed() {
        let mut good = Vec::new();
        ddl_record().encode(&mut good);
        let reason = |kind, buf: &[u8]| Record::decode(kind, buf).unwrap_err();
        // Too short for the prefix, for the DDL prefix, for a part header.
        assert!(matches!(
            reason(RecordKind::Changeset, &good[..23]).reason,
            Reason::Short { need: 24, have: 23 }
        ));
        assert!(matches!(
            reason(RecordKind::Ddl, &good[..43]).reason,
            Reason::Short { need: 44, .. }
        ));
        // Every truncation fails.
        for n in 0..good.len() {
            assert!(Record::decode(RecordKind::Ddl, &good[..n]).is_err(), "{n}");
        }
        // Trailing bytes.
        let mut t = good.clone();
        t.push(0);
        assert_eq!(reason(RecordKind::Ddl, &t).offset, good.len() as u64);
        // part_count larger than the bytes can hold: refused before allocating.
        let mut p = good.clone();
        p[40..44].copy_from_slice(&u32::MAX.to_le_bytes());
        let e = reason(RecordKind::Ddl, &p);
        assert_eq!(e.offset, 40);
        assert!(matches!(
            e.reason,
            Reason::BadField {
                field: "part_count",
                ..
            }
        ));
        // A part length past the end.
        let mut l = good.clone();
        l[45..49].copy_from_slice(&u32::MAX.to_le_bytes());
        let e = reason(RecordKind::Ddl, &l);
        assert_eq!(e.offset, 45);
        assert!(matches!(
            e.reason,
            Reason::LengthTooLarge {
                len: 0xFFFF_FFFF,
                ..
            }
        ));
        // An unknown tag.
        let mut g = good.clone();
        g[44] = 3;
        assert_eq!(reason(RecordKind::Ddl, &g).offset, 44);
        // SQL text that is not UTF-8.
        let mut u = good.clone();
        u[50] = 0xFF;
        let e = reason(RecordKind::Ddl, &u);
        assert_eq!(e.offset, 50);
        assert!(matches!(
            e.reason,
            Reason::BadField {
                field: "ddl_part.sql",
                ..
            }
        ));
    }

    #[test]
    fn reassembler_rules() {
        let p = [1u8, 2, 3];
        let frame = |fragment, lsn, kind| Frame {
            kind,
            fragment,
            lsn: Lsn(lsn),
            payload: &p,
            offset: 128,
        };
        let cs = RecordKind::Changeset;
        let mut re = Reassembler::default();
        let whole = re.push(&frame(Fragment::Whole, 1, cs)).unwrap().unwrap();
        assert!(matches!(whole, (RecordKind::Changeset, Lsn(1), Cow::Borrowed(b)) if b == p));
        assert_eq!(re.push(&frame(Fragment::First, 2, cs)), Ok(None));
        assert!(re.in_progress());
        assert_eq!(re.push(&frame(Fragment::Middle, 2, cs)), Ok(None));
        assert!(matches!(
            re.push(&frame(Fragment::Whole, 3, cs)),
            Err(Reason::BadFragment(_))
        ));
        assert!(matches!(
            re.push(&frame(Fragment::First, 3, cs)),
            Err(Reason::BadFragment(_))
        ));
        assert!(matches!(
            re.push(&frame(Fragment::Last, 3, cs)),
            Err(Reason::BadFragment(_))
        ));
        assert!(matches!(
            re.push(&frame(Fragment::Last, 2, RecordKind::Ddl)),
            Err(Reason::BadFragment(_))
        ));
        let (kind, lsn, buf) = re.push(&frame(Fragment::Last, 2, cs)).unwrap().unwrap();
        assert_eq!(
            (kind, lsn, &*buf),
            (cs, Lsn(2), &[1, 2, 3, 1, 2, 3, 1, 2, 3][..])
        );
        assert!(matches!(buf, Cow::Owned(_)));
        assert!(!re.in_progress());
        assert!(matches!(
            re.push(&frame(Fragment::Middle, 3, cs)),
            Err(Reason::BadFragment(_))
        ));
        assert!(matches!(
            re.push(&frame(Fragment::Last, 3, cs)),
            Err(Reason::BadFragment(_))
        ));

        // Past MAX_RECORD_SIZE: refused before the buffer grows.
        let big = vec![0u8; MAX_FRAME_PAYLOAD];
        let mut re = Reassembler::default();
        let mut f = Frame {
            kind: cs,
            fragment: Fragment::First,
            lsn: Lsn(9),
            payload: &big,
            offset: 128,
        };
        re.push(&f).unwrap();
        f.fragment = Fragment::Middle;
        let fits = MAX_RECORD_SIZE / MAX_FRAME_PAYLOAD - 1;
        for _ in 0..fits {
            assert_eq!(re.push(&f), Ok(None));
        }
        assert!(matches!(re.push(&f), Err(Reason::LengthTooLarge { .. })));
    }

    // ---- corruption, one kind per test -------------------------------------

    #[test]
    fn corrupt_bad_magic() {
        let mut seg = three_segments().remove(0);
        seg[3] ^= 0x20;
        let e = sealed_err(&seg);
        assert_eq!(e.offset, 0);
        assert!(matches!(e.reason, Reason::BadMagic { found } if &found == b"LGShSEG\0"));
        seg[3] ^= 0x20;
        seg[TRAILER_OFFSET + 7] = b'!';
        let e = sealed_err(&seg);
        assert_eq!(e.offset, TRAILER_OFFSET as u64);
        assert!(matches!(e.reason, Reason::BadMagic { .. }));
    }

    #[test]
    fn corrupt_bad_version() {
        let mut seg = three_segments().remove(0);
        rewrite_header(&mut seg, |h| h[8..12].copy_from_slice(&2u32.to_le_bytes()));
        reseal(&mut seg, |_| {});
        assert_eq!(
            sealed_err(&seg),
            DecodeError {
                offset: 8,
                reason: Reason::BadVersion { found: 2 }
            }
        );
        // The version is checked before the CRC: a future format is named as such.
        seg[8] = 0;
        assert_eq!(sealed_err(&seg).reason, Reason::BadVersion { found: 0 });
    }

    #[test]
    fn corrupt_short_buffer() {
        let seg = three_segments().remove(0);
        assert_eq!(
            SegmentHeader::decode(&seg[..127]),
            Err(DecodeError {
                offset: 127,
                reason: Reason::Short {
                    need: 128,
                    have: 127
                }
            })
        );
        assert!(matches!(
            Trailer::decode(&seg[TRAILER_OFFSET + 1..])
                .unwrap_err()
                .reason,
            Reason::Short { need: 64, have: 63 }
        ));
        let e = sealed_err(&seg[..SEGMENT_SIZE - 1]);
        assert_eq!(
            e.reason,
            Reason::Short {
                need: SEGMENT_SIZE,
                have: SEGMENT_SIZE - 1
            }
        );
        assert!(scan_current(&seg[..SEGMENT_SIZE - 1], Some(DB)).is_err());
        assert!(scan_sealed(&[], None).is_err());
        let mut long = seg.clone();
        long.push(0);
        assert!(matches!(
            sealed_err(&long).reason,
            Reason::BadField {
                field: "segment_size",
                ..
            }
        ));
    }

    #[test]
    fn corrupt_header_crc() {
        let mut seg = three_segments().remove(1);
        seg[H_CREATED_US] ^= 1;
        let e = sealed_err(&seg);
        assert_eq!(e.offset, 124);
        assert!(matches!(e.reason, Reason::BadCrc { .. }));
    }

    #[test]
    fn corrupt_frame_crc() {
        let mut seg = three_segments().remove(1);
        let (at, len) = {
            let f = &frames_of(&seg)[2];
            (f.offset, f.payload.len())
        };
        seg[at + FRAME_HEADER_SIZE + len / 2] ^= 0x80;
        let e = sealed_err(&seg);
        assert_eq!(e.offset, (at + 4) as u64);
        assert!(matches!(e.reason, Reason::BadCrc { .. }));
        // The LSN is covered too.
        seg[at + FRAME_HEADER_SIZE + len / 2] ^= 0x80;
        seg[at + 9] ^= 1;
        assert_eq!(sealed_err(&seg).offset, (at + 4) as u64);
    }

    #[test]
    fn corrupt_trailer_crc() {
        let mut seg = three_segments().remove(2);
        seg[TRAILER_OFFSET + T_SEALED_US] ^= 4;
        let e = sealed_err(&seg);
        assert_eq!(e.offset, (TRAILER_OFFSET + 60) as u64);
        assert!(matches!(e.reason, Reason::BadCrc { .. }));
    }

    #[test]
    fn corrupt_segment_checksum() {
        let mut seg = three_segments().remove(2);
        reseal(&mut seg, |t| t.segment_checksum ^= 0x100);
        let e = sealed_err(&seg);
        assert_eq!(e.offset, (TRAILER_OFFSET + 56) as u64);
        assert!(matches!(e.reason, Reason::BadCrc { .. }));
    }

    #[test]
    fn corrupt_huge_frame_length() {
        let mut seg = three_segments().remove(0);
        let last = frames_of(&seg).last().unwrap().offset;
        for len in [
            u32::MAX,
            (TRAILER_OFFSET - last - FRAME_HEADER_SIZE + 1) as u32,
        ] {
            seg[last..last + 4].copy_from_slice(&len.to_le_bytes());
            let e = sealed_err(&seg);
            assert_eq!(e.offset, last as u64);
            assert_eq!(
                e.reason,
                Reason::LengthTooLarge {
                    len: len.into(),
                    max: (TRAILER_OFFSET - last - FRAME_HEADER_SIZE) as u64
                }
            );
        }
    }

    #[test]
    fn corrupt_wrong_database() {
        let seg = three_segments().remove(0);
        let e = scan_sealed(&seg, Some(OTHER_DB)).unwrap_err();
        assert_eq!(e.offset, 24);
        assert_eq!(
            e.reason,
            Reason::WrongDatabase {
                expected: OTHER_DB,
                found: DB
            }
        );
        assert!(scan_sealed(&seg, None).is_ok());
        assert!(scan_current(&seg, Some(OTHER_DB)).is_err());
        let (h, t) = header_and_trailer(&seg);
        let next = SegmentHeader {
            database_id: OTHER_DB,
            ..successor_of(&h, &t)
        };
        assert_eq!(
            check_successor(&h, &t, &next),
            Err(Reason::WrongDatabase {
                expected: DB,
                found: OTHER_DB
            })
        );
    }

    fn header_and_trailer(seg: &[u8]) -> (SegmentHeader, Trailer) {
        let s = scan_sealed(seg, Some(DB)).unwrap();
        (s.header, s.trailer.unwrap())
    }

    fn successor_of(h: &SegmentHeader, t: &Trailer) -> SegmentHeader {
        SegmentHeader {
            generation: h.generation.next(),
            prev_checksum: t.segment_checksum,
            prev_lsn: t.last_lsn,
            hash_lsn: t.hash_lsn,
            base_hash: t.hash,
            ..h.clone()
        }
    }

    #[test]
    fn successor_generation_gap() {
        let segs = three_segments();
        let (h1, t1) = header_and_trailer(&segs[0]);
        let (h2, t2) = header_and_trailer(&segs[1]);
        let (h3, _) = header_and_trailer(&segs[2]);
        assert_eq!(check_successor(&h1, &t1, &h2), Ok(()));
        assert_eq!(check_successor(&h2, &t2, &h3), Ok(()));
        assert_eq!(
            check_successor(&h1, &t1, &h3),
            Err(Reason::GenerationGap {
                prev: Generation(1),
                found: Generation(3)
            })
        );
        assert!(matches!(
            check_successor(&h2, &t2, &h1),
            Err(Reason::GenerationGap { .. })
        ));
        assert!(matches!(
            check_successor(&h2, &t2, &h2),
            Err(Reason::GenerationGap { .. })
        ));
    }

    #[test]
    fn successor_broken_chain() {
        let segs = three_segments();
        let (h1, t1) = header_and_trailer(&segs[0]);
        let (h2, _) = header_and_trailer(&segs[1]);
        let other = Trailer {
            segment_checksum: t1.segment_checksum ^ 1,
            ..t1.clone()
        };
        assert_eq!(
            check_successor(&h1, &other, &h2),
            Err(Reason::BrokenChain {
                prev: Generation(1),
                stored: t1.segment_checksum,
                actual: t1.segment_checksum ^ 1
            })
        );
        // The other links of the chain.
        let next = |edit: fn(&mut SegmentHeader)| {
            let mut n = h2.clone();
            edit(&mut n);
            check_successor(&h1, &t1, &n)
        };
        assert!(matches!(
            next(|n| n.prev_lsn.0 += 1),
            Err(Reason::BadLsn { .. })
        ));
        assert!(matches!(
            next(|n| n.hash_lsn.0 -= 1),
            Err(Reason::BadLsn { .. })
        ));
        assert!(matches!(
            next(|n| n.base_hash.0 ^= 1),
            Err(Reason::BadField {
                field: "base_hash",
                ..
            })
        ));
        assert!(matches!(
            next(|n| n.epoch.0 -= 1),
            Err(Reason::EpochRegressed { .. })
        ));
        assert_eq!(next(|n| n.epoch.0 += 1), Ok(()));
    }

    #[test]
    fn corrupt_bad_type() {
        let seg = three_segments().remove(0);
        let at = frames_of(&seg)[1].offset;
        for ty in [0x00, 0x03, 0x0F, 0x11, 0x21, 0x31, 0x61, 0xF1] {
            let mut s = seg.clone();
            s[at + 8] = ty;
            refresh_frame_crc(&mut s, at);
            reseal(&mut s, |_| {});
            assert_eq!(
                sealed_err(&s),
                DecodeError {
                    offset: (at + 8) as u64,
                    reason: Reason::BadType(ty)
                }
            );
        }
    }

    #[test]
    fn corrupt_bad_lsn() {
        // A gap between two records.
        let mut b = LogBuilder::new();
        b.append(&changeset(1, 1, vec![1; 10]));
        let at = b.put(RecordKind::Changeset, Fragment::Whole, Lsn(3), &[0; 30]);
        let seg = b.finish().remove(0);
        assert_eq!(
            sealed_err(&seg),
            DecodeError {
                offset: at as u64,
                reason: Reason::BadLsn {
                    expected: Lsn(2),
                    found: Lsn(3)
                }
            }
        );
        // The first frame does not follow the header's prev_lsn.
        let mut b = LogBuilder::starting_at(Generation(5), 77, Lsn(100), ContentHash(5));
        b.put(RecordKind::Ddl, Fragment::Whole, Lsn(100), &[0; 30]);
        assert_eq!(
            sealed_err(&b.finish()[0]).reason,
            Reason::BadLsn {
                expected: Lsn(101),
                found: Lsn(100)
            }
        );
        // A fragment with another LSN than its first.
        let mut b = LogBuilder::new();
        b.put(RecordKind::Changeset, Fragment::First, Lsn(1), &[0; 30]);
        b.put(RecordKind::Changeset, Fragment::Last, Lsn(2), &[0; 30]);
        assert!(matches!(
            sealed_err(&b.finish()[0]).reason,
            Reason::BadLsn { .. }
        ));
    }

    #[test]
    fn corrupt_fragment_out_of_order() {
        type Frames = &'static [(Fragment, RecordKind)];
        use Fragment::*;
        use RecordKind::*;
        let cases: [(Frames, usize); 4] = [
            (&[(Whole, Changeset), (Last, Changeset)], 1),
            (&[(Whole, Ddl), (Middle, Ddl)], 1),
            (&[(First, Ddl), (Last, Changeset)], 1),
            // The header says the previous segment ended at a record boundary.
            (&[(Middle, Changeset)], 0),
        ];
        for (frames, bad) in cases {
            let mut b = LogBuilder::starting_at(Generation(2), 9, Lsn(10), ContentHash(1));
            // The LSN moves on after a complete record only, as a writer's does.
            let mut lsn = Lsn(10);
            let mut complete = true;
            let mut offsets = Vec::new();
            for (fragment, kind) in frames {
                if complete && !(offsets.is_empty() && fragment.continues()) {
                    lsn = lsn.next();
                }
                complete = fragment.completes();
                offsets.push(b.put(*kind, *fragment, lsn, &[7; 40]));
            }
            let e = sealed_err(&b.finish()[0]);
            assert_eq!(e.offset, offsets[bad] as u64, "{frames:?}");
            assert!(
                matches!(e.reason, Reason::BadFragment(_)),
                "{frames:?}: {e:?}"
            );
        }
        // The header says the previous segment ended inside record 10, but a new record starts.
        let mut b = LogBuilder::starting_at(Generation(2), 9, Lsn(10), ContentHash(1));
        b.header.hash_lsn = Lsn(9);
        b.buf.clear();
        b.buf.extend_from_slice(&b.header.encode());
        let at = b.put(Changeset, Whole, Lsn(11), &[0; 30]);
        let e = sealed_err(&b.finish()[0]);
        assert_eq!(e.offset, at as u64);
        assert!(matches!(e.reason, Reason::BadLsn { .. }), "{e:?}");
        // A new record after an incomplete one must reuse its LSN (abandoning it).
        let mut b = LogBuilder::starting_at(Generation(2), 9, Lsn(10), ContentHash(1));
        b.put(Changeset, First, Lsn(11), &[0; 30]);
        let at = b.put(Changeset, Whole, Lsn(12), &[0; 30]);
        let e = sealed_err(&b.finish()[0]);
        assert_eq!(e.offset, at as u64);
        assert!(matches!(e.reason, Reason::BadLsn { .. }), "{e:?}");
    }

    #[test]
    fn a_record_cut_by_a_crash_is_abandoned_by_the_next_with_its_lsn() {
        use Fragment::*;
        use RecordKind::*;
        let rec = |n: u8| {
            let r = Record {
                time_us: 1,
                hash: ContentHash(n as u128),
                body: Body::Changeset(vec![n; 10]),
            };
            let mut v = Vec::new();
            r.encode(&mut v);
            v
        };
        // Within a segment: First(11) cut, then Whole(11) and Whole(12).
        let mut b = LogBuilder::starting_at(Generation(2), 9, Lsn(10), ContentHash(1));
        b.put(Changeset, First, Lsn(11), &[9; 40]);
        b.put(Changeset, Whole, Lsn(11), &rec(1));
        b.put(Changeset, Whole, Lsn(12), &rec(2));
        b.hash = ContentHash(2);
        let segs = b.finish();
        let scan = scan_sealed(&segs[0], None).unwrap();
        let mut re = Reassembler::default();
        let mut got = Vec::new();
        for f in &scan.frames {
            if let Some((_, lsn, payload)) = re.push(f).unwrap() {
                got.push((lsn, Record::decode(Changeset, &payload).unwrap().hash));
            }
        }
        assert_eq!(
            got,
            vec![(Lsn(11), ContentHash(1)), (Lsn(12), ContentHash(2))]
        );
        // Across segments: the previous segment ended inside record 10.
        let mut b = LogBuilder::starting_at(Generation(2), 9, Lsn(10), ContentHash(1));
        b.header.hash_lsn = Lsn(9);
        b.buf.clear();
        b.buf.extend_from_slice(&b.header.encode());
        b.put(Changeset, Whole, Lsn(10), &rec(3));
        b.hash = ContentHash(3);
        scan_sealed(&b.finish()[0], None).unwrap();
    }

    #[test]
    fn corrupt_garbage_in_padding() {
        let seg = three_segments().remove(1);
        let end = scan_sealed(&seg, Some(DB)).unwrap().records_end;
        for at in [end + FRAME_HEADER_SIZE, end + 5000, TRAILER_OFFSET - 1] {
            let mut s = seg.clone();
            s[at] = 0x10;
            reseal(&mut s, |_| {});
            assert_eq!(
                sealed_err(&s),
                DecodeError {
                    offset: at as u64,
                    reason: Reason::Garbage
                }
            );
        }
        // Right after the last frame, garbage reads as a bad frame.
        let mut s = seg.clone();
        s[end + 3] = 1;
        reseal(&mut s, |_| {});
        assert!(scan_sealed(&s, Some(DB)).is_err());
        assert_eq!(first_nonzero(&[0; 10_000]), None);
        let mut z = vec![0u8; 10_000];
        z[9999] = 1;
        assert_eq!(first_nonzero(&z), Some(9999));
    }

    #[test]
    fn corrupt_trailer_mismatch() {
        let seg = three_segments().remove(1);
        let scan = scan_sealed(&seg, Some(DB)).unwrap();
        let n = scan.frames.len() as u32;
        type Edit = fn(&mut Trailer);
        let edits: [(Edit, usize); 5] = [
            (|t| t.record_count -= 1, T_RECORD_COUNT),
            (|t| t.records_end += 1, T_RECORDS_END),
            (|t| t.last_lsn.0 += 1, T_LAST_LSN),
            (|t| t.hash_lsn.0 -= 1, T_HASH_LSN),
            (|t| t.hash.0 ^= 1, T_HASH),
        ];
        assert!(n > 1);
        for (edit, field) in edits {
            let mut s = seg.clone();
            reseal(&mut s, edit);
            let e = sealed_err(&s);
            assert_eq!(e.offset, (TRAILER_OFFSET + field) as u64, "{e:?}");
            assert!(matches!(e.reason, Reason::TrailerMismatch(_)), "{e:?}");
        }
        // Not sealed at all.
        let mut s = seg.clone();
        s[TRAILER_OFFSET..].fill(0);
        assert!(matches!(
            sealed_err(&s).reason,
            Reason::BadField {
                field: "trailer",
                ..
            }
        ));
    }

    #[test]
    fn empty_sealed_segment_is_valid() {
        let mut b = LogBuilder::starting_at(Generation(4), 1, Lsn(50), ContentHash(77));
        b.seal();
        b.append(&changeset(1, 78, vec![1]));
        let segs = b.finish();
        let s0 = scan_sealed(&segs[0], Some(DB)).unwrap();
        assert_eq!(s0.records_end, HEADER_SIZE);
        assert!(s0.frames.is_empty());
        let t = s0.trailer.clone().unwrap();
        assert_eq!(
            (t.last_lsn, t.hash_lsn, t.hash),
            (Lsn(50), Lsn(50), ContentHash(77))
        );
        let s1 = scan_sealed(&segs[1], Some(DB)).unwrap();
        check_successor(&s0.header, &t, &s1.header).unwrap();
        assert_eq!(s1.frames[0].lsn, Lsn(51));
    }

    // ---- fragments across segments ------------------------------------------

    #[test]
    fn big_record_spans_four_segments() {
        let mut rng = Rng(0xB16);
        let records = vec![
            changeset(1, 11, rng.bytes(1000)),
            changeset(2, 22, rng.bytes(3 << 20)),
            changeset(3, 33, rng.bytes(500)),
        ];
        let mut b = LogBuilder::new();
        for r in &records {
            b.append(r);
        }
        let segs = b.finish();
        assert_eq!(segs.len(), 4);
        let frags: Vec<Vec<Fragment>> = segs
            .iter()
            .map(|s| frames_of(s).iter().map(|f| f.fragment).collect())
            .collect();
        use Fragment::*;
        assert_eq!(
            frags,
            vec![
                vec![Whole, First],
                vec![Middle],
                vec![Middle],
                vec![Last, Whole]
            ]
        );
        // Each of the fragmented segments is full to the last byte of its record area.
        for s in &segs[..3] {
            assert_eq!(
                scan_sealed(s, Some(DB)).unwrap().records_end,
                TRAILER_OFFSET
            );
        }
        let got = read_log(&segs);
        let want: Vec<(Lsn, Record)> = records
            .into_iter()
            .enumerate()
            .map(|(i, r)| (Lsn(i as u64 + 1), r))
            .collect();
        assert!(got == want, "the reassembled records differ");
    }

    // ---- scan_current --------------------------------------------------------

    /// A current segment (generation 2) of five records, and its records_end.
    fn current_fixture() -> (Vec<u8>, usize, LogBuilder) {
        let mut b = LogBuilder::new();
        b.append(&changeset(1, 1, vec![1; 100]));
        b.seal();
        for r in small_records(5, 99) {
            b.append(&r);
        }
        let end = b.buf.len();
        (b.current(), end, b)
    }

    #[test]
    fn scan_current_clean() {
        let (seg, end, _) = current_fixture();
        let s = scan_current(&seg, Some(DB)).unwrap();
        assert_eq!(
            (s.frames.len(), s.records_end, s.torn, s.trailer),
            (5, end, None, None)
        );
        assert_eq!(s.header.generation, Generation(2));
        // An unsealed segment is not a sealed one.
        assert!(matches!(
            sealed_err(&seg).reason,
            Reason::BadField {
                field: "trailer",
                ..
            }
        ));
    }

    #[test]
    fn scan_current_torn_garbage() {
        let (mut seg, end, _) = current_fixture();
        seg[end..end + 100].fill(0xAB);
        let s = scan_current(&seg, Some(DB)).unwrap();
        assert_eq!((s.frames.len(), s.records_end), (5, end));
        assert_eq!(s.torn.unwrap().offset, end as u64);
        // Garbage past an end marker is not looked at.
        let (mut seg, end, _) = current_fixture();
        seg[end + 40..end + 100].fill(0xAB);
        let s = scan_current(&seg, Some(DB)).unwrap();
        assert_eq!((s.frames.len(), s.records_end, s.torn), (5, end, None));
    }

    #[test]
    fn scan_current_truncated_frame() {
        let (_, end, mut b) = current_fixture();
        b.append(&changeset(9, 9, vec![0x5A; 3000]));
        let full = b.current();
        // The tail of the sixth frame never reached the disk.
        let mut seg = full.clone();
        seg[end + 1500..end + FRAME_HEADER_SIZE + 3024].fill(0);
        let s = scan_current(&seg, Some(DB)).unwrap();
        assert_eq!((s.frames.len(), s.records_end), (5, end));
        let torn = s.torn.unwrap();
        assert_eq!(torn.offset, (end + 4) as u64);
        assert!(matches!(torn.reason, Reason::BadCrc { .. }));
        // Only part of its header reached the disk.
        let mut seg = full.clone();
        seg[end + 6..end + FRAME_HEADER_SIZE + 3024].fill(0);
        let s = scan_current(&seg, Some(DB)).unwrap();
        assert_eq!((s.frames.len(), s.records_end), (5, end));
        assert!(s.torn.is_some());
        // A stale frame with a valid CRC but an LSN that does not follow.
        let mut seg = full.clone();
        let mut stale = Vec::new();
        encode_frame(
            RecordKind::Changeset,
            Fragment::Whole,
            Lsn(3),
            &[1; 10],
            &mut stale,
        );
        seg[end..end + stale.len()].copy_from_slice(&stale);
        let s = scan_current(&seg, Some(DB)).unwrap();
        assert_eq!((s.frames.len(), s.records_end), (5, end));
        assert!(matches!(s.torn.unwrap().reason, Reason::BadLsn { .. }));
        // A length that runs past the record area.
        let mut seg = full;
        seg[end..end + 4].copy_from_slice(&(SEGMENT_SIZE as u32).to_le_bytes());
        let torn = scan_current(&seg, Some(DB)).unwrap().torn.unwrap();
        assert!(matches!(torn.reason, Reason::LengthTooLarge { .. }));
    }

    #[test]
    fn scan_current_sealed_not_renamed() {
        let (_, end, mut b) = current_fixture();
        b.seal();
        let seg = b.sealed.pop().unwrap();
        let sealed = scan_sealed(&seg, Some(DB)).unwrap();
        let s = scan_current(&seg, Some(DB)).unwrap();
        assert_eq!(
            (s.frames.len(), s.records_end, s.torn.clone()),
            (5, end, None)
        );
        assert_eq!(s.trailer, sealed.trailer);
        assert!(s.trailer.is_some());
        // A torn seal: half a trailer is ignored, the segment is still current.
        let mut torn = seg.clone();
        torn[TRAILER_OFFSET + 20..].fill(0);
        let s = scan_current(&torn, Some(DB)).unwrap();
        assert_eq!((s.frames.len(), s.torn, s.trailer), (5, None, None));
        // The header is still verified.
        let mut bad = seg;
        bad[40] ^= 1;
        assert!(matches!(
            scan_current(&bad, Some(DB)).unwrap_err().reason,
            Reason::BadCrc { .. }
        ));
    }

    // ---- every single-byte mutation ------------------------------------------

    /// Cost: ~74 000 scans, dominated by CRC32 over the frames before the
    /// mutated byte (~2.4 GB in all). With crc32fast at opt-level 0 that is
    /// ~10 CPU-seconds (~5 s on two idle cores, the offsets are split over
    /// threads); with `[profile.dev.package.crc32fast] opt-level = 3` it is
    /// ~1 s. The padding stride (97) is the knob to turn if it gets too slow.
    #[test]
    fn every_single_byte_mutation_is_rejected() {
        // A sealed segment that opens with the Last fragment of a record begun
        // in the previous segment, then a few dozen records (~64 KiB of frames).
        let mut rng = Rng(0x5EED);
        let mut b = LogBuilder::starting_at(Generation(7), 0xC0FFEE, Lsn(1000), ContentHash(0xABC));
        b.append(&changeset(5, 6, rng.bytes(MAX_FRAME_PAYLOAD + 1500)));
        for i in 0..45 {
            let r = if i % 9 == 4 {
                ddl_record()
            } else {
                let n = 200 + rng.below(2600);
                changeset(rng.next(), u128::from(rng.next()), rng.bytes(n))
            };
            b.append(&r);
        }
        let seg = b.finish().remove(1);
        let scan = scan_sealed(&seg, Some(DB)).expect("the unmutated segment passes");
        assert_eq!(scan.frames[0].fragment, Fragment::Last);
        let end = scan.records_end;
        assert!((50_000..80_000).contains(&end), "{end}");
        drop(scan);

        let seed: u64 = std::env::var("FORMAT_MUTATION_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0x6D75_7461_7465);
        println!("mutation seed {seed} (set FORMAT_MUTATION_SEED to replay another)");
        let padding = (end..TRAILER_OFFSET)
            .step_by(97)
            .chain([end, TRAILER_OFFSET - 1]);
        let offsets: Vec<usize> = (0..end)
            .chain(padding)
            .chain(TRAILER_OFFSET..SEGMENT_SIZE)
            .collect();
        // The XOR value depends on the seed and the offset only, so a failure
        // replays the same way whatever the split between threads.
        let xor_at = |at: usize| (Rng(seed ^ at as u64).below(255) + 1) as u8;
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(4);
        let started = Instant::now();
        std::thread::scope(|scope| {
            for part in offsets.chunks(offsets.len().div_ceil(threads)) {
                let mut seg = seg.clone();
                scope.spawn(move || {
                    for &at in part {
                        let x = xor_at(at);
                        seg[at] ^= x;
                        let rejected = scan_sealed(&seg, Some(DB)).is_err();
                        seg[at] ^= x;
                        assert!(
                            rejected,
                            "xor {x:#04x} at offset {at} was accepted (seed {seed})"
                        );
                    }
                });
            }
        });
        println!(
            "{} mutations rejected in {:?} on {threads} threads",
            offsets.len(),
            started.elapsed()
        );
        assert!(scan_sealed(&seg, Some(DB)).is_ok());
    }

    // ---- properties ------------------------------------------------------------

    fn bytes_of(len: impl Strategy<Value = usize>) -> impl Strategy<Value = Vec<u8>> {
        (len, any::<u64>()).prop_map(|(n, seed)| Rng(seed).bytes(n))
    }

    fn record_strategy() -> impl Strategy<Value = Record> {
        let changeset_len = prop_oneof![
            12 => 0..4096usize,
            4 => 0..300_000usize,
            1 => 900_000..2_300_000usize,
        ];
        let part = prop_oneof![
            proptest::collection::vec(any::<char>(), 0..80)
                .prop_map(|c| DdlPart::Sql(c.into_iter().collect())),
            bytes_of(0..20_000usize).prop_map(DdlPart::Changeset),
        ];
        let body = prop_oneof![
            3 => bytes_of(changeset_len).prop_map(Body::Changeset),
            1 => (any::<u128>(), proptest::collection::vec(part, 0..6))
                .prop_map(|(h, parts)| Body::Ddl { schema_hash: SchemaHash(h), parts }),
        ];
        (any::<u64>(), any::<u128>(), body).prop_map(|(time_us, hash, body)| Record {
            time_us,
            hash: ContentHash(hash),
            body,
        })
    }

    fn config(cases: u32) -> ProptestConfig {
        ProptestConfig {
            cases,
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    proptest! {
        #![proptest_config(config(24))]

        #[test]
        fn prop_log_round_trip(
            records in proptest::collection::vec((record_strategy(), proptest::bool::weighted(0.15)), 1..14),
            start in 0u64..1_000_000,
        ) {
            let mut b = LogBuilder::starting_at(Generation(start + 1), 0, Lsn(start), ContentHash(u128::from(start)));
            for (r, seal) in &records {
                b.append(r);
                if *seal {
                    b.seal();
                }
            }
            let segs = b.finish();
            let got = read_log(&segs);
            prop_assert_eq!(got.len(), records.len());
            for (i, ((lsn, got), (want, _))) in got.iter().zip(&records).enumerate() {
                prop_assert_eq!(*lsn, Lsn(start + 1 + i as u64));
                prop_assert!(got == want, "record {} differs", lsn);
            }
        }
    }

    fn mutate(mut buf: Vec<u8>, edits: &[(usize, u8)], cut: usize) -> Vec<u8> {
        if !buf.is_empty() {
            let n = buf.len();
            for &(at, x) in edits {
                buf[at % n] ^= x;
            }
        }
        buf.truncate(buf.len().saturating_sub(cut % 8));
        buf
    }

    proptest! {
        #![proptest_config(config(512))]

        #[test]
        fn prop_decoders_never_panic(
            random in proptest::collection::vec(any::<u8>(), 0..400),
            edits in proptest::collection::vec((any::<usize>(), 1..=255u8), 0..4),
            cut in any::<usize>(),
            offset in 0usize..420,
            limit in 0usize..440,
            name in ".{0,30}",
        ) {
            let _ = SegmentHeader::decode(&random);
            let _ = Trailer::decode(&random);
            let _ = decode_frame(&random, offset, limit);
            let _ = decode_frame(&random, offset, usize::MAX);
            let _ = Record::decode(RecordKind::Changeset, &random);
            let _ = Record::decode(RecordKind::Ddl, &random);
            let _ = parse_segment_file_name(&name);
            let _ = parse_segment_file_name(&format!("LS{name}"));
            let _ = parse_segment_file_name(&format!("LS{name}.log"));

            // Near-valid inputs reach the later checks.
            let _ = SegmentHeader::decode(&mutate(sample_header().encode().to_vec(), &edits, cut));
            let _ = Trailer::decode(&mutate(sample_trailer().encode().to_vec(), &edits, cut));
            let mut frame = Vec::new();
            encode_frame(RecordKind::Ddl, Fragment::Middle, Lsn(4), &random, &mut frame);
            let frame = mutate(frame, &edits, cut);
            let _ = decode_frame(&frame, offset % 20, limit);
            let _ = decode_frame(&frame, 0, frame.len());
            let mut ddl = Vec::new();
            ddl_record().encode(&mut ddl);
            let ddl = mutate(ddl, &edits, cut);
            let _ = Record::decode(RecordKind::Ddl, &ddl);
        }
    }

    proptest! {
        #![proptest_config(config(16))]

        #[test]
        fn prop_mutated_segments_never_panic(
            edits in proptest::collection::vec((any::<usize>(), 1..=255u8), 1..6),
        ) {
            let (seg, _, _) = current_fixture();
            let seg = mutate(seg, &edits, 0);
            let _ = scan_sealed(&seg, Some(DB));
            let _ = scan_current(&seg, Some(DB));
            let _ = scan_current(&seg[..seg.len() / 2], None);
        }
    }
}
