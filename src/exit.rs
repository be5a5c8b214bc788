//! Exit codes: the class of failure a command ends with, so that scripts
//! can tell a bad config from a corrupt log from a node that is down.
//! README ("Exit codes") and `logship --help` list them.
//!
//! | code | class |
//! |---|---|
//! | 0 | success |
//! | 1 | refused by a check (`move-cluster` refused, the mount dial, a statement the store refuses), or a failure of no other class |
//! | 2 | usage (the command line) |
//! | 3 | configuration (the config file, a node not in it, a secret file, a share URL, a node not initialised) |
//! | 4 | corruption (a damaged or diverged log, copy or state file; `verify` and `verify-copy` finding a difference) |
//! | 5 | unavailable or fenced (a daemon not running, a share or disk that fails, a store locked, fenced or stopped) |

use std::fmt;
use std::process::ExitCode;

/// The class of a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Refused,
    Usage,
    Config,
    Corrupt,
    Unavailable,
}

impl Class {
    pub fn code(self) -> u8 {
        match self {
            Class::Refused => 1,
            Class::Usage => 2,
            Class::Config => 3,
            Class::Corrupt => 4,
            Class::Unavailable => 5,
        }
    }

    pub fn exit(self) -> ExitCode {
        ExitCode::from(self.code())
    }
}

/// An error that says its own class.
#[derive(Debug)]
pub struct Classified {
    pub class: Class,
    pub message: String,
}

impl fmt::Display for Classified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Classified {}

/// An error of `class` saying `message`.
pub fn error(class: Class, message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Classified {
        class,
        message: message.into(),
    })
}

/// The class of a library error.
pub fn of_store_error(e: &shipper::Error) -> Class {
    use shipper::Error as E;
    match e {
        E::Corrupt { .. }
        | E::DatabaseAhead { .. }
        | E::Conflict { .. }
        | E::SchemaMismatch { .. }
        | E::MissingLog { .. }
        | E::BadGuard { .. }
        | E::BadStateFile { .. }
        | E::SeedMismatch { .. }
        | E::RewindCheck { .. } => Class::Corrupt,
        E::Io { .. } | E::Locked { .. } | E::Fenced(_) | E::Stopped(_) => Class::Unavailable,
        E::SecretFile { .. }
        | E::NoSmbPassword
        | E::BadShareUrl { .. }
        | E::NotInitialized { .. } => Class::Config,
        E::Sql { .. }
        | E::Unreplicable { .. }
        | E::Refused { .. }
        | E::Aborted(_)
        | E::BatchAborted
        | E::TooLarge { .. }
        | E::AlreadyInitialized { .. }
        | E::RewindPastSchemaChange { .. }
        | E::PassiveCopy { .. }
        | E::EpochBehind { .. } => Class::Refused,
    }
}

/// The class of a command's error: the first cause in its chain that has
/// one; a failure of no known class is `Refused` (code 1).
pub fn classify(e: &anyhow::Error) -> Class {
    for cause in e.chain() {
        if let Some(c) = cause.downcast_ref::<Classified>() {
            return c.class;
        }
        if let Some(s) = cause.downcast_ref::<shipper::Error>() {
            return of_store_error(s);
        }
        // The crates' own errors pass the core's on transparently: their
        // chain skips it, so it is looked for here.
        if let Some(r) = cause.downcast_ref::<replayer::Error>() {
            return match r {
                replayer::Error::Core(e) => of_store_error(e),
                replayer::Error::StaleEpoch { .. } => Class::Corrupt,
            };
        }
        if let Some(w) = cause.downcast_ref::<witness::witness::WitnessError>() {
            use witness::witness::WitnessError as W;
            return match w {
                W::Share(e) => of_store_error(e),
                W::BadEpochFile { .. } | W::WrongEpoch { .. } | W::BadAloneFile { .. } => {
                    Class::Corrupt
                }
                W::Vanished { .. } | W::NotHeld { .. } => Class::Unavailable,
            };
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            if matches!(
                io.kind(),
                K::ConnectionRefused | K::NotFound | K::TimedOut | K::StorageFull | K::BrokenPipe
            ) {
                return Class::Unavailable;
            }
        }
    }
    Class::Refused
}

#[cfg(test)]
mod tests {
    use super::*;
    use shipper::state_file::StateFileError;
    use witness::witness::WitnessError;

    fn io() -> shipper::Error {
        shipper::Error::io("read", "/x", std::io::Error::other("down"))
    }

    /// The replayer's and the witness's errors carry the core's inside them
    /// transparently; its class is still found.
    #[test]
    fn a_core_error_inside_a_crate_error_keeps_its_class() {
        let e = anyhow::Error::new(replayer::Error::Core(io())).context("replay");
        assert_eq!(classify(&e), Class::Unavailable);
        let e = anyhow::Error::new(replayer::Error::Core(shipper::Error::BatchAborted));
        assert_eq!(classify(&e), Class::Refused);
        let e = anyhow::Error::new(WitnessError::Share(io())).context("read the witness");
        assert_eq!(classify(&e), Class::Unavailable);
    }

    #[test]
    fn the_crates_own_failures_have_their_class() {
        let stale = replayer::Error::StaleEpoch {
            generation: shipper::Generation(3),
            epoch: shipper::Epoch(1),
            newer: shipper::Epoch(2),
            newer_start: shipper::Generation(2),
        };
        assert_eq!(classify(&anyhow::Error::new(stale)), Class::Corrupt);
        let bad = WitnessError::BadEpochFile {
            path: "w/epoch-0000000000000001.json".into(),
            why: StateFileError::NotObject,
        };
        assert_eq!(classify(&anyhow::Error::new(bad)), Class::Corrupt);
        let held = WitnessError::NotHeld {
            path: "w/witness.lock".into(),
        };
        assert_eq!(classify(&anyhow::Error::new(held)), Class::Unavailable);
    }
}
