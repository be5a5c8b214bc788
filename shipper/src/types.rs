//! Newtypes for the positions and identities that the log, the store and the
//! replayer pass around: `Lsn`, `Generation`, `Epoch`, `DatabaseId`,
//! `ContentHash`, `SchemaHash`. Each has a `Display` an operator can read.
//! This module holds no logic beyond formatting and parsing.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Log sequence number: the position of one logical record (one transaction)
/// in a database's log. The first record has LSN 1; LSN 0 means "nothing".
/// Dense: every committed transaction takes exactly the previous LSN + 1.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(transparent)]
pub struct Lsn(pub u64);

impl Lsn {
    pub const ZERO: Lsn = Lsn(0);

    pub fn next(self) -> Lsn {
        Lsn(self.0 + 1)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Segment generation. Generations start at 1, grow by one per segment and
/// are never reused within a database. Shown in hex, as in file names.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(transparent)]
pub struct Generation(pub u64);

impl Generation {
    pub const FIRST: Generation = Generation(1);

    pub fn next(self) -> Generation {
        Generation(self.0 + 1)
    }
}

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{:X}", self.0)
    }
}

/// Activation epoch: every activation of a node as the active takes a new,
/// larger epoch on the witness. At most one node is active per epoch.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(transparent)]
pub struct Epoch(pub u64);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Random 128-bit identity of one database, chosen at `init` and carried by
/// every copy (a seed copies it) and every segment header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DatabaseId(pub [u8; 16]);

impl DatabaseId {
    /// A fresh random id read from the operating system's generator.
    pub fn random() -> std::io::Result<DatabaseId> {
        use std::io::Read;
        let mut b = [0u8; 16];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
        Ok(DatabaseId(b))
    }

    /// Parses the 32 hex digits (dashes allowed) that `Display` prints.
    pub fn parse(s: &str) -> Option<DatabaseId> {
        let hex: Vec<u8> = s.bytes().filter(|b| *b != b'-').collect();
        if hex.len() != 32 {
            return None;
        }
        let mut out = [0u8; 16];
        for (i, pair) in hex.chunks(2).enumerate() {
            let s = std::str::from_utf8(pair).ok()?;
            out[i] = u8::from_str_radix(s, 16).ok()?;
        }
        Some(DatabaseId(out))
    }
}

impl fmt::Display for DatabaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        for (i, byte) in b.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// The additive content hash of a database: the sum, modulo 2^128, of one
/// 128-bit hash per (table, primary key, column, value) cell. Maintained from
/// changesets on the active, recomputed by a full scan on any copy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ContentHash(pub u128);

impl ContentHash {
    pub fn plus_cell(self, cell: u128) -> ContentHash {
        ContentHash(self.0.wrapping_add(cell))
    }

    pub fn minus_cell(self, cell: u128) -> ContentHash {
        ContentHash(self.0.wrapping_sub(cell))
    }
}

impl fmt::Display for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// Hash of the database schema (the `sqlite_schema` rows of the replicated
/// tables, indexes, views and triggers). A replica refuses to apply a
/// changeset written against another schema.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SchemaHash(pub u128);

impl fmt::Display for SchemaHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// The format version every JSON file and datagram logship writes carries
/// as `version` (FORMAT.md, "State files"). A file without one is version
/// 1, written before the field existed; a newer one is refused by its
/// reader, never guessed at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FormatVersion(pub u32);

impl FormatVersion {
    /// The version this build writes and the newest it reads.
    pub const CURRENT: FormatVersion = FormatVersion(1);

    /// The version of a file written before the field existed.
    pub fn first() -> FormatVersion {
        FormatVersion(1)
    }

    /// Whether this build can read a file of this version.
    pub fn readable(self) -> bool {
        self <= Self::CURRENT
    }

    /// Why a file of this version is refused, if it is.
    pub fn refusal(self) -> Option<String> {
        (!self.readable()).then(|| {
            format!(
                "format version {} is newer than this build reads ({}): upgrade logship",
                self.0,
                Self::CURRENT.0
            )
        })
    }
}

impl Default for FormatVersion {
    fn default() -> FormatVersion {
        FormatVersion::CURRENT
    }
}

/// Microseconds since the Unix epoch, for the times files and records
/// carry (0 before 1970).
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_id_round_trips_through_display() {
        let id = DatabaseId([
            0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0, 1, 2, 3, 4, 5, 6, 0xff,
        ]);
        let s = id.to_string();
        assert_eq!(s, "01234567-89ab-cdef-0001-0203040506ff");
        assert_eq!(DatabaseId::parse(&s), Some(id));
        assert_eq!(DatabaseId::parse("xyz"), None);
    }

    #[test]
    fn generation_displays_in_hex() {
        assert_eq!(Generation(42).to_string(), "0x2A");
    }
}
