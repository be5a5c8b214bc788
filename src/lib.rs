//! The `logship` package: the command-line binary (`src/main.rs`) and the
//! glue shared by its subcommands. Today that is the cluster configuration
//! file; the node daemon that runs a role will live here too.

pub mod config;
