//! The passive side of logship: it keeps a copy of the active's database
//! current by pulling sealed segments from the active's share (the copier),
//! verifying each one whole before anything else touches it (the
//! inspector), and applying their records in LSN order (replay). It keeps
//! the copy's status with the names Exchange administrators know, and
//! publishes it on the node's own share for the active to read.
//!
//! Reading order: `error` (the replayer's own failure, and the core's it
//! passes on), `state` (what a copy remembers), `inspector`, `copier`,
//! `replay`, `status`, then `daemon`, which runs them in a loop; `tail`
//! reads the old active's open segment at failover; `block` receives the
//! active's open segment as it becomes durable (block mode).
//!
//! Architecture invariant: the replayer never writes into the active's
//! share; it only reads it. Nothing is replayed that the inspector has not
//! passed.

pub mod block;
pub mod copier;
pub mod daemon;
pub mod error;
pub mod inspector;
pub mod replay;
pub mod state;
pub mod status;
pub mod tail;

pub use daemon::{ReplayConfig, run};
pub use error::Error;
pub use state::CopyState;
pub use status::{CopyStatus, SummaryCopyStatus};

/// Bytes of segments copied from the source share since the process started.
pub static BYTES_COPIED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Seal-to-replay lag of each replayed segment: from its seal on the active
/// (the trailer's wall-clock time) to its commit on the copy.
pub static REPLAY_LAG: shipper::metrics::Histogram = shipper::metrics::Histogram::new();
