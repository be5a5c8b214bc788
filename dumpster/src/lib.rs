//! The mail path of logship: the SMTP relay with its durable queue and
//! retention window (Exchange's transport dumpster), the LMTP client and the
//! node's LMTP endpoint, the mailbox schema with duplicate detection by
//! (Message-ID, recipient), and redelivery on request after a lossy failover.
//!
//! Reading order: the message rules (`message`), the mailbox store (`mailbox`),
//! the SMTP/LMTP session engine (`protocol`), the node's LMTP endpoint
//! (`lmtp`), the relay's LMTP client (`lmtp_client`), its durable queue and
//! dumpster (`queue`), and the relay itself (`relay`).

pub mod lmtp;
pub mod lmtp_client;
pub mod mailbox;
pub mod message;
pub mod protocol;
pub mod queue;
pub mod relay;
