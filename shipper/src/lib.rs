//! The core of logship, and its active side. It owns the segment format,
//! the store that turns every SQLite transaction into a durable log record
//! before SQLite commits (the WAL rule), crash recovery, the content hash
//! that proves two copies equal, the changeset primitives the replayer
//! reuses, the shares segments travel through, and the active's duties.
//!
//! Reading order, by group:
//! - Foundations: `types` (LSN, generation, epoch, ids, `now_us`), `error`
//!   (one variant per failure), `state_file` (reading the JSON files other
//!   processes wrote: bounded, versioned).
//! - Format (bytes, no I/O): `format` (segments, frames, records), `hash`
//!   (content and schema hashes).
//! - Changesets: `changeset` (the session extension: apply, invert),
//!   `capture` (the store's own capture), `apply` (one record onto a
//!   connection; the guard row), `script` (SQL text into statements).
//! - Store: `log` (segment files: writer, reader), `store` (transactions,
//!   group commit, fence, recovery), `rewind` (undo past a fork), `metrics`
//!   (latency histograms), `block` (block mode: the durable-bytes feed and
//!   its stream).
//! - Shares: `share` (a directory or `smb://`) with its child `share::smb`
//!   (the SMB client), `secret` (owner-only secret files).
//! - The active's duties: `seed` (snapshots), `ship` (seeding, publishing,
//!   truncation).

pub mod apply;
pub mod block;
pub(crate) mod capture;
pub mod changeset;
pub mod error;
pub mod format;
pub mod hash;
pub mod log;
pub mod metrics;
pub mod rewind;
pub mod script;
pub mod secret;
pub mod seed;
pub mod share;
/// The SMB client, a child of `share`; here under its old path too.
pub use share::smb;
pub mod ship;
pub mod state_file;
pub mod store;
pub mod types;

pub use error::{Error, Result};
pub use store::{Committed, Fence, Params, Store, StoreOptions, StoreState, StoreStats, Tx};
pub use types::{ContentHash, DatabaseId, Epoch, FormatVersion, Generation, Lsn, SchemaHash};
