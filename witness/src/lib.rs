//! The cluster layer of logship: the file-share witness that breaks ties
//! and records epochs (`witness`), the heartbeats between the two nodes
//! (`heartbeat`), the quorum leases that decide whether a node may take
//! writes (`quorum`), and the mount dial that decides whether a copy may be
//! activated after an unplanned failover (`dial`), and the planned move's
//! pre-checks (`moves`).
//!
//! The role decisions themselves are pure: the rules (`core`), and the
//! state machine that applies them (`machine`, `step(input, now) ->
//! actions`), run by the node daemon and by this crate's cluster simulator
//! alike.
//!
//! Reading order: `quorum` (the leases and the timing they come from),
//! `heartbeat` (the datagram and the peer view it keeps), `witness` (the
//! vote, the epoch and `alone-` files, and their errors), `dial`, `moves`,
//! `select` (which copy activates when there are several), then `core`
//! (each rule once) and `machine` (the rules applied to inputs). Past two
//! nodes: `etcd` (the client of the arbiter, etcd's v3 JSON gateway) and
//! `dcs` (a node's decisions against it, with the lease argument).
//!
//! This crate decides; the node daemon (package `logship`) acts. The
//! protocol, its timing assumptions and its failure cases are written down
//! in ARCHITECTURE.md ("The cluster protocol").

pub mod core;
pub mod dcs;
pub mod dial;
pub mod etcd;
pub mod failback;
pub mod heartbeat;
pub mod keys;
pub mod machine;
pub mod moves;
pub mod quorum;
pub mod select;
pub mod witness;

pub use dial::{DialDecision, MountDial};
pub use heartbeat::{Heartbeat, Role};
pub use quorum::{Leases, Timing};
pub use witness::{EpochRecord, Witness};
