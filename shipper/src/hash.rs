//! The content hash (proof of equality) and the schema hash.
//!
//! H = the sum modulo 2^128 of xxh3-128 over every (table, primary key,
//! column index, type-tagged value) cell of the replicated tables (not
//! `sqlite_%`, not the guard table). It is maintained from changesets alone
//! and recomputed by a full scan; see FORMAT.md for the exact cell encoding.

use rusqlite::Connection;

use crate::error::Result;
use crate::types::{ContentHash, SchemaHash};

/// Returns `h` updated by every change in `changeset`.
pub fn apply_changeset(h: ContentHash, changeset: &[u8]) -> Result<ContentHash> {
    todo!("{h} {}", changeset.len())
}

/// Recomputes H by reading every cell. Run it inside one read transaction.
pub fn full_scan(conn: &Connection) -> Result<ContentHash> {
    todo!("{conn:?}")
}

/// Hash of the schema of the replicated objects (tables, indexes, views,
/// triggers; not `sqlite_%`).
pub fn schema_hash(conn: &Connection) -> Result<SchemaHash> {
    todo!("{conn:?}")
}
