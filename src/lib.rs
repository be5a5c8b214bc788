//! The `logship` package: the command-line binary (`src/main.rs`, with the
//! node daemon, the relay's glue, the demo and the benchmarks) and what its
//! subcommands and tests share.
//!
//! Reading order: `config` (the cluster configuration file, every path
//! resolved against it), `private` (the owner-only files rule), `exit` (the
//! exit code of each class of failure). The private servers and machine
//! facts of the demo, benchmarks and tests are in the `logship-harness`
//! package, outside this library.

pub mod config;
pub mod exit;
pub mod private;
