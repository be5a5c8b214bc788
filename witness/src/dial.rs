//! The mount dial (Exchange's AutoDatabaseMountDial): after an unplanned
//! failover, how many generations a copy may lack and still be activated
//! automatically. An operator can always override (`logship activate --force`).

use serde::{Deserialize, Serialize};

/// `lossless` (0 generations), `good-availability` (6, the default) or
/// `best-availability` (12).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum MountDial {
    Lossless,
    #[default]
    GoodAvailability,
    BestAvailability,
}

impl MountDial {
    /// The most generations that may be missing.
    pub fn max_missing(self) -> u64 {
        match self {
            MountDial::Lossless => 0,
            MountDial::GoodAvailability => 6,
            MountDial::BestAvailability => 12,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            MountDial::Lossless => "lossless",
            MountDial::GoodAvailability => "good-availability",
            MountDial::BestAvailability => "best-availability",
        }
    }
}

/// Where a log stood: its last LSN and generation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub lsn: u64,
    /// The last generation that holds records up to `lsn` (for an active,
    /// its current generation when that holds records, else the one before).
    pub generation: u64,
}

/// The dial's verdict, with the numbers behind it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DialDecision {
    pub dial: MountDial,
    pub allowed: bool,
    /// Generations the copy lacks (as far as it knows).
    pub missing: u64,
    /// What the copy holds, and the active's last known position.
    pub replayed: Position,
    pub known: Option<Position>,
    pub text: String,
}

/// Decides whether a copy that replayed up to `replayed` may be activated,
/// when the old active was last known to be at `known` (`None`: never heard
/// from it, and then no dial allows it: only an operator can).
pub fn decide(dial: MountDial, replayed: Position, known: Option<Position>) -> DialDecision {
    let missing = match known {
        Some(k) if k.lsn > replayed.lsn => k.generation.saturating_sub(replayed.generation).max(1),
        _ => 0,
    };
    // Never heard from the old active: how much is lost cannot be bounded.
    let allowed = known.is_some() && missing <= dial.max_missing();
    let text = match known {
        None => format!(
            "mount dial {}: the old active's last position is unknown (not heard since this node started), so the loss cannot be bounded; the copy holds LSN {} (generation {})",
            dial.name(),
            replayed.lsn,
            replayed.generation
        ),
        Some(k) => format!(
            "mount dial {} allows {} missing generation(s); {} missing (old active at LSN {} generation {}, copy at LSN {} generation {})",
            dial.name(),
            dial.max_missing(),
            missing,
            k.lsn,
            k.generation,
            replayed.lsn,
            replayed.generation
        ),
    };
    DialDecision {
        dial,
        allowed,
        missing,
        replayed,
        known,
        text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(lsn: u64, generation: u64) -> Position {
        Position { lsn, generation }
    }

    #[test]
    fn the_dial_counts_missing_generations() {
        let d = decide(MountDial::Lossless, p(100, 5), Some(p(100, 5)));
        assert!(d.allowed && d.missing == 0, "{d:?}");
        // Records lost in the active's current segment count as one.
        let d = decide(MountDial::Lossless, p(100, 5), Some(p(101, 5)));
        assert!(!d.allowed && d.missing == 1, "{d:?}");
        let d = decide(MountDial::GoodAvailability, p(100, 5), Some(p(900, 11)));
        assert!(d.allowed && d.missing == 6, "{d:?}");
        let d = decide(MountDial::GoodAvailability, p(100, 5), Some(p(900, 12)));
        assert!(!d.allowed && d.missing == 7, "{d:?}");
        assert!(d.text.contains("7 missing"), "{}", d.text);
        let d = decide(MountDial::BestAvailability, p(100, 5), Some(p(900, 17)));
        assert!(d.allowed);
        assert!(!decide(MountDial::Lossless, p(1, 1), None).allowed);
        assert!(!decide(MountDial::BestAvailability, p(1, 1), None).allowed);
    }
}
