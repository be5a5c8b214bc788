//! The `logship` command line: one binary with a subcommand for every job.
fn main() {}
