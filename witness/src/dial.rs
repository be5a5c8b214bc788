//! The mount dial (Exchange's AutoDatabaseMountDial): after an unplanned
//! failover, how many generations a copy may lack and still be activated
//! automatically. An operator can always override (`logship activate --force`).

use serde::{Deserialize, Serialize};
use shipper::{Generation, Lsn};

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
    pub lsn: Lsn,
    /// The last generation that holds records up to `lsn` (for an active,
    /// its current generation when that holds records, else the one before).
    pub generation: Generation,
}

/// Whether the failover could read what the old active's share still
/// holds (its sealed segments and the valid prefix of its open one).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LastLogs {
    /// Read: every record the old active acknowledged is in the copy (it
    /// is durable on the share before it is acknowledged, and the old
    /// active is fenced by then).
    #[default]
    Copied,
    /// Not read (the share is gone): the old active may have acknowledged
    /// records after its last heartbeat, so the loss is at least what the
    /// heartbeat shows and at least one generation.
    Unread,
}

/// The dial's verdict, with the numbers behind it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DialDecision {
    pub dial: MountDial,
    pub allowed: bool,
    /// Generations the copy lacks (as far as it knows).
    pub missing: u64,
    /// Records the copy lacks of the old active's last known position
    /// (at least that many when the last logs were unread).
    #[serde(default)]
    pub missing_records: Option<u64>,
    /// Bytes of log the copy lacks, when block mode knew the old active's
    /// durable end in bytes (set by the caller).
    #[serde(default)]
    pub missing_bytes: Option<u64>,
    /// What the copy holds, and the active's last known position.
    pub replayed: Position,
    pub known: Option<Position>,
    #[serde(default)]
    pub last_logs: LastLogs,
    pub text: String,
}

/// Decides whether a copy that replayed up to `replayed` may be activated,
/// when the old active was last known to be at `known` (`None`: never heard
/// from it, and then no dial allows it: only an operator can). With the
/// last logs `Unread`, what the old active acknowledged after its last
/// heartbeat cannot be known: at least one generation counts as missing,
/// so `lossless` never activates on a guess.
pub fn decide(
    dial: MountDial,
    replayed: Position,
    known: Option<Position>,
    last_logs: LastLogs,
) -> DialDecision {
    let heard = match known {
        Some(k) if k.lsn > replayed.lsn => {
            k.generation.0.saturating_sub(replayed.generation.0).max(1)
        }
        _ => 0,
    };
    let missing = match last_logs {
        LastLogs::Copied => heard,
        LastLogs::Unread => heard.max(1),
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
            "mount dial {} allows {} missing generation(s); {}{} missing (old active at LSN {} generation {} in its last heartbeat, copy at LSN {} generation {}){}",
            dial.name(),
            dial.max_missing(),
            if last_logs == LastLogs::Unread {
                "at least "
            } else {
                ""
            },
            missing,
            k.lsn,
            k.generation,
            replayed.lsn,
            replayed.generation,
            if last_logs == LastLogs::Unread {
                "; the old active's last logs could not be read whole (its share gone, or its open segment not there or not usable), so what it acknowledged after that heartbeat is unknown"
            } else {
                ""
            }
        ),
    };
    DialDecision {
        dial,
        allowed,
        missing,
        missing_records: known.map(|k| k.lsn.0.saturating_sub(replayed.lsn.0)),
        missing_bytes: None,
        replayed,
        known,
        last_logs,
        text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(lsn: u64, generation: u64) -> Position {
        Position {
            lsn: Lsn(lsn),
            generation: Generation(generation),
        }
    }

    #[test]
    fn the_dial_counts_missing_records_from_the_last_known_position() {
        let d = decide(
            MountDial::GoodAvailability,
            p(100, 5),
            Some(p(130, 6)),
            LastLogs::Copied,
        );
        assert_eq!(d.missing_records, Some(30));
        let d = decide(
            MountDial::GoodAvailability,
            p(100, 5),
            None,
            LastLogs::Copied,
        );
        assert_eq!(d.missing_records, None);
        let d = decide(
            MountDial::GoodAvailability,
            p(140, 6),
            Some(p(130, 6)),
            LastLogs::Unread,
        );
        assert_eq!(d.missing_records, Some(0));
    }

    #[test]
    fn the_dial_counts_missing_generations() {
        let d = decide(
            MountDial::Lossless,
            p(100, 5),
            Some(p(100, 5)),
            LastLogs::Copied,
        );
        assert!(d.allowed && d.missing == 0, "{d:?}");
        // Records lost in the active's current segment count as one.
        let d = decide(
            MountDial::Lossless,
            p(100, 5),
            Some(p(101, 5)),
            LastLogs::Copied,
        );
        assert!(!d.allowed && d.missing == 1, "{d:?}");
        let d = decide(
            MountDial::GoodAvailability,
            p(100, 5),
            Some(p(900, 11)),
            LastLogs::Copied,
        );
        assert!(d.allowed && d.missing == 6, "{d:?}");
        let d = decide(
            MountDial::GoodAvailability,
            p(100, 5),
            Some(p(900, 12)),
            LastLogs::Copied,
        );
        assert!(!d.allowed && d.missing == 7, "{d:?}");
        assert!(d.text.contains("7 missing"), "{}", d.text);
        let d = decide(
            MountDial::BestAvailability,
            p(100, 5),
            Some(p(900, 17)),
            LastLogs::Copied,
        );
        assert!(d.allowed);
        assert!(!decide(MountDial::Lossless, p(1, 1), None, LastLogs::Copied).allowed);
        assert!(!decide(MountDial::BestAvailability, p(1, 1), None, LastLogs::Copied).allowed);
    }

    #[test]
    fn a_share_that_could_not_be_read_counts_at_least_one_generation_missing() {
        // The last heartbeat showed nothing past the copy, but the share
        // is gone: records acknowledged after that heartbeat may be lost.
        let d = decide(
            MountDial::Lossless,
            p(100, 5),
            Some(p(100, 5)),
            LastLogs::Unread,
        );
        assert!(!d.allowed && d.missing == 1, "{d:?}");
        assert!(d.text.contains("at least 1 missing"), "{}", d.text);
        assert!(d.text.contains("could not be read whole"), "{}", d.text);
        let d = decide(
            MountDial::GoodAvailability,
            p(100, 5),
            Some(p(100, 5)),
            LastLogs::Unread,
        );
        assert!(d.allowed && d.missing == 1, "{d:?}");
        // What the heartbeat shows still counts in full.
        let d = decide(
            MountDial::GoodAvailability,
            p(100, 5),
            Some(p(900, 12)),
            LastLogs::Unread,
        );
        assert!(!d.allowed && d.missing == 7, "{d:?}");
    }
}
