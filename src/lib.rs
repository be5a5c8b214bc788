//! The `logship` package: the command-line binary (`src/main.rs`) and the
//! glue shared by its subcommands: the cluster configuration file, and a
//! private Samba server for the tests and the SMB benchmark. The node daemon
//! that runs a role will live here too.

pub mod config;
pub mod samba;
