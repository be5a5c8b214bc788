//! The passive side of logship: seeding a copy from the active, the copier that
//! pulls sealed segments from the active's share into a local queue, the
//! inspector that verifies every segment before replay, the replay engine that
//! applies changesets in LSN order, and the per-copy status an operator reads.
//!
//! Nothing lives here yet; the segment format and the apply primitive it will
//! use are `shipper`'s.
