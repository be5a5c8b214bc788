//! The `logship` package: the command-line binary (`src/main.rs`, with the
//! node daemon and the relay's glue) and what its subcommands and tests
//! share: the cluster configuration file, the private-files rule, and
//! private Samba and Dovecot servers for the tests and benchmarks.

pub mod config;
pub mod dovecot;
pub mod exit;
pub mod private;
pub mod samba;
pub mod sys;
