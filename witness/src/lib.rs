//! The cluster layer of logship: heartbeats between the two nodes, the
//! file-share witness that breaks ties, quorum, epochs (one active per epoch),
//! self-fencing, unplanned failover, planned moves and rejoin.
//!
//! Nothing lives here yet.
