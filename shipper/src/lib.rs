//! The active side of logship. It owns the segment format (write and read),
//! the log writer with its sealing rules, the store that turns every SQLite
//! transaction into a durable log record before SQLite commits (the WAL rule),
//! crash recovery, the content hash that proves two copies equal, and the
//! changeset primitives (capture, apply, invert) that the replayer reuses.
//!
//! Reading order: `types` and `error`, then `format` (bytes, no I/O),
//! `changeset`, `capture` and `hash` (changesets: apply, capture, hash), `log` (segment files
//! on disk), `store` (transactions, group commit, recovery).

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
pub mod ship;
pub mod smb;
pub mod store;
pub mod types;

pub use error::{Error, Result};
pub use store::{Committed, Fence, Store, StoreOptions, StoreState, StoreStats, Tx};
pub use types::{ContentHash, DatabaseId, Epoch, Generation, Lsn, SchemaHash};
