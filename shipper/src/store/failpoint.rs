//! Crash points for the tests that prove the WAL rule (the `failpoints`
//! feature; a release build has none).

/// Where the writer may crash on purpose, for tests that prove the WAL rule
/// (set `LOGSHIP_FAILPOINT` to the name; the process aborts there). Only
/// with the `failpoints` feature, which the tests turn on and a release
/// build leaves out: there the variable is not read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum FailPoint {
    None,
    /// After the batch's records are written, before fdatasync.
    AfterAppend,
    /// After fdatasync, before the SQLite COMMIT.
    AfterFsync,
}

impl FailPoint {
    #[cfg(not(feature = "failpoints"))]
    pub(super) fn from_env() -> FailPoint {
        FailPoint::None
    }

    #[cfg(feature = "failpoints")]
    pub(super) fn from_env() -> FailPoint {
        match std::env::var("LOGSHIP_FAILPOINT").as_deref() {
            Ok("after-append") => FailPoint::AfterAppend,
            Ok("after-fsync") => FailPoint::AfterFsync,
            _ => FailPoint::None,
        }
    }

    pub(super) fn hit(self, here: FailPoint) {
        if self == here && here != FailPoint::None {
            eprintln!("logship: failpoint {here:?} reached, aborting");
            std::process::abort();
        }
    }
}
