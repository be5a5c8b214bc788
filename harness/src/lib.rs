//! What logship's demo, benchmarks and tests need of the machine, kept out
//! of the product's library: where a system program is and a free loopback
//! port (`sys`), and private servers started on loopback for as long as a
//! value lives: Samba (`samba`), Dovecot's LMTP (`dovecot`) and etcd
//! (`etcd`, one member or several).
//!
//! Reading order: `sys`, then `samba`, `dovecot` and `etcd`, which use it. Each
//! server has a `try_start` that returns why it could not start (for the
//! benchmarks) and a `start` that panics with that reason (for the tests:
//! a test that needs Samba fails and says why; it never skips).

pub mod dovecot;
pub mod etcd;
pub mod samba;
pub mod sys;
