//! The mail path of logship: the SMTP relay with its durable queue and
//! retention window (Exchange's transport dumpster), the LMTP client and the
//! node's LMTP endpoint, the mailbox schema with duplicate detection by
//! (Message-ID, recipient), and redelivery on request after a lossy failover.
//!
//! Nothing lives here yet.
