//! The on-disk format of log segments, byte by byte (documented in FORMAT.md):
//! the segment header, record frames (length + CRC32 + type + LSN + payload),
//! fragments of records larger than a segment, the logical record payload, the
//! trailer written at seal, and the file names.
//!
//! This module does no I/O. Every decoder treats its input as untrusted: it
//! checks each length before use, verifies each CRC itself, and reports the
//! byte offset of the first bad byte instead of panicking.

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
    WrongDatabase { expected: DatabaseId, found: DatabaseId },
    #[error("generation {found} follows generation {prev}: a gap or a reorder")]
    GenerationGap { prev: Generation, found: Generation },
    #[error("previous-segment checksum {stored:08x} does not match generation {prev}'s {actual:08x}")]
    BrokenChain { prev: Generation, stored: u32, actual: u32 },
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
// API to implement (signatures are the contract used by log.rs and store.rs).
// ---------------------------------------------------------------------------

/// `LS` + 16 upper-case hex digits + `.log`, e.g. `LS000000000000002A.log`.
pub fn segment_file_name(generation: Generation) -> String {
    todo!("{generation}")
}

/// The inverse of `segment_file_name`: exact width, upper-case hex, generation 0 refused.
pub fn parse_segment_file_name(name: &str) -> Option<Generation> {
    todo!("{name}")
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        todo!()
    }

    /// Decodes and verifies the header at the start of `buf`.
    pub fn decode(buf: &[u8]) -> Result<SegmentHeader, DecodeError> {
        todo!("{}", buf.len())
    }
}

impl Trailer {
    pub fn encode(&self) -> [u8; TRAILER_SIZE] {
        todo!()
    }

    /// Decodes the trailer at the start of `buf`; `Ok(None)` when all 64 bytes are zero (not sealed).
    pub fn decode(buf: &[u8]) -> Result<Option<Trailer>, DecodeError> {
        todo!("{}", buf.len())
    }
}

/// Total bytes a frame with this payload takes.
pub fn frame_len(payload_len: usize) -> usize {
    FRAME_HEADER_SIZE + payload_len
}

/// Appends one frame to `out`. `payload.len()` must be at most `MAX_FRAME_PAYLOAD`.
pub fn encode_frame(kind: RecordKind, fragment: Fragment, lsn: Lsn, payload: &[u8], out: &mut Vec<u8>) {
    todo!("{kind:?} {fragment:?} {lsn} {} {}", payload.len(), out.len())
}

/// Decodes the frame at `segment[offset..]`, not reading at or past `limit`.
/// `Ok(None)` at the end marker (17 zero bytes) or when fewer than 17 bytes remain before `limit`.
pub fn decode_frame(segment: &[u8], offset: usize, limit: usize) -> Result<Option<Frame<'_>>, DecodeError> {
    todo!("{} {offset} {limit}", segment.len())
}

impl Record {
    pub fn encode(&self, out: &mut Vec<u8>) {
        todo!("{}", out.len())
    }

    pub fn kind(&self) -> RecordKind {
        match self.body {
            Body::Changeset(_) => RecordKind::Changeset,
            Body::Ddl { .. } => RecordKind::Ddl,
        }
    }

    /// Decodes a reassembled logical payload of the given kind.
    pub fn decode(kind: RecordKind, buf: &[u8]) -> Result<Record, DecodeError> {
        todo!("{kind:?} {}", buf.len())
    }
}

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

/// Verifies a sealed segment completely (see FORMAT.md, "Verification").
pub fn scan_sealed(buf: &[u8], expect_db: Option<DatabaseId>) -> Result<SegmentScan<'_>, DecodeError> {
    todo!("{} {expect_db:?}", buf.len())
}

/// Scans the current segment: a valid header, then frames up to the end
/// marker or the first invalid frame, which is reported in `torn`.
pub fn scan_current(buf: &[u8], expect_db: Option<DatabaseId>) -> Result<SegmentScan<'_>, DecodeError> {
    todo!("{} {expect_db:?}", buf.len())
}

/// Checks that `next` may follow the sealed segment `prev` in one log.
pub fn check_successor(prev: &SegmentHeader, prev_trailer: &Trailer, next: &SegmentHeader) -> Result<(), Reason> {
    todo!("{prev:?} {prev_trailer:?} {next:?}")
}

/// Reassembles logical records from frames, across segments.
#[derive(Debug, Default)]
pub struct Reassembler {
    pending: Option<(RecordKind, Lsn, Vec<u8>)>,
}

impl Reassembler {
    /// Feeds one frame; returns the complete logical payload when `frame` ends a record.
    pub fn push<'a>(&mut self, frame: &Frame<'a>) -> Result<Option<(RecordKind, Lsn, std::borrow::Cow<'a, [u8]>)>, Reason> {
        todo!("{frame:?} {:?}", self.pending.is_some())
    }

    /// True while a fragmented record is incomplete.
    pub fn in_progress(&self) -> bool {
        self.pending.is_some()
    }
}
