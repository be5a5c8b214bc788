//! The replayer's failures: the one that is its own (a segment of a
//! deposed active, past a newer epoch's start), and the core's
//! (`shipper::Error`: a damaged segment, a gap, SQL, I/O), passed on whole.

use shipper::{Epoch, Generation};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A failure of the core: reading, inspecting or applying a segment.
    #[error(transparent)]
    Core(#[from] shipper::Error),

    /// A segment from a deposed active: written in `epoch` at a generation
    /// where the newer epoch `newer` had already begun.
    #[error(
        "segment generation {generation} was written in epoch {epoch}, but epoch {newer} began at generation {newer_start}: it comes from a deposed active and is not replayed"
    )]
    StaleEpoch {
        generation: Generation,
        epoch: Epoch,
        newer: Epoch,
        newer_start: Generation,
    },
}

impl Error {
    /// The core's failure, if this is one.
    pub fn core(&self) -> Option<&shipper::Error> {
        match self {
            Error::Core(e) => Some(e),
            Error::StaleEpoch { .. } => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
