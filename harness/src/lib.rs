//! What logship's demo, benchmarks and tests need of the machine, kept out
//! of the product's library: where a system program is and a free loopback
//! port (`sys`), and private servers started on loopback for as long as a
//! value lives: Samba (`samba`) and Dovecot's LMTP (`dovecot`).
//!
//! Reading order: `sys`, then `samba` and `dovecot`, which use it. Each
//! server has a `try_start` that returns why it could not start (for the
//! benchmarks) and a `start` that panics with that reason (for the tests:
//! a test that needs Samba fails and says why; it never skips).

pub mod dovecot;
pub mod samba;
pub mod sys;
