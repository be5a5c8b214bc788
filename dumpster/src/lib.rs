//! The mail path of logship: the SMTP relay with its durable queue and
//! retention window (Exchange's transport dumpster), the LMTP client and the
//! node's LMTP endpoint, the mailbox schema with duplicate detection by
//! (Message-ID, recipient), and redelivery on request after a lossy failover.
//!
//! Built so far: the message rules (`message`), the mailbox store
//! (`mailbox`), the SMTP/LMTP session engine (`protocol`) and the node's
//! LMTP endpoint (`lmtp`). The relay comes next.

pub mod lmtp;
pub mod lmtp_client;
pub mod mailbox;
pub mod message;
pub mod protocol;
pub mod queue;
