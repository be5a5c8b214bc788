//! Failback, as the Windows cluster service does it: with `[cluster]
//! failback = "preferred"`, the active hands the role back to the most
//! preferred node once that node has been a Healthy copy for
//! `failback-after`, inside the optional `failback-window` (local time).
//! Each failback is a planned move. Pure: the caller gives the local time of
//! day and tracks since when the preferred copy has been Healthy.

use std::time::Duration;

/// `failback-window = "HH:MM-HH:MM"`, local time; it may wrap past
/// midnight ("22:00-02:00"). The end is excluded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Minutes since midnight.
    pub start: u16,
    pub end: u16,
}

impl Window {
    /// Parses `HH:MM-HH:MM`, or says what is wrong.
    pub fn parse(s: &str) -> Result<Window, String> {
        let bad = |why: &str| format!("{s:?} is not HH:MM-HH:MM ({why})");
        let (a, b) = s.split_once('-').ok_or_else(|| bad("no '-'"))?;
        let (start, end) = (
            minute(a.trim()).map_err(|w| bad(&w))?,
            minute(b.trim()).map_err(|w| bad(&w))?,
        );
        if start == end {
            return Err(bad("it starts where it ends"));
        }
        Ok(Window { start, end })
    }

    /// Whether `minute` (since midnight) falls inside.
    pub fn contains(&self, minute: u16) -> bool {
        if self.start < self.end {
            (self.start..self.end).contains(&minute)
        } else {
            minute >= self.start || minute < self.end
        }
    }
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:02}:{:02}-{:02}:{:02}",
            self.start / 60,
            self.start % 60,
            self.end / 60,
            self.end % 60
        )
    }
}

/// `HH:MM` as minutes since midnight.
pub fn minute(s: &str) -> Result<u16, String> {
    let (h, m) = s.split_once(':').ok_or("no ':'")?;
    let h: u16 = h.parse().map_err(|_| format!("hour {h:?}"))?;
    let m: u16 = m.parse().map_err(|_| format!("minute {m:?}"))?;
    if h > 23 || m > 59 || s.len() != 5 {
        return Err(format!("{s:?} is not a time of day"));
    }
    Ok(h * 60 + m)
}

/// The policy, from the config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub window: Option<Window>,
    pub after: Duration,
}

/// The preferred node, as the active sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Preferred {
    pub node: String,
    /// Since when it has been a live, Healthy copy that is neither paused
    /// nor lagged (`None`: it is not one now).
    pub healthy_for: Option<Duration>,
}

/// What the active does about failback now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// This node is the preferred one (or none is preferred): nothing to do.
    Home,
    /// Move the role to this node now.
    Move { to: String, why: String },
    /// Not yet, and why.
    Wait(String),
}

/// The failback decision of the active `me`.
pub fn decide(
    policy: &Policy,
    me: &str,
    preferred: Option<&Preferred>,
    local_minute: u16,
) -> Decision {
    let Some(p) = preferred.filter(|p| p.node != me) else {
        return Decision::Home;
    };
    let Some(healthy) = p.healthy_for else {
        return Decision::Wait(format!(
            "failback to {} waits: it is not a live, Healthy copy",
            p.node
        ));
    };
    if healthy < policy.after {
        return Decision::Wait(format!(
            "failback to {} waits: Healthy for {} s of {} s",
            p.node,
            healthy.as_secs(),
            policy.after.as_secs()
        ));
    }
    if let Some(w) = policy.window
        && !w.contains(local_minute)
    {
        return Decision::Wait(format!(
            "failback to {} waits: {:02}:{:02} is outside the failback window {w}",
            p.node,
            local_minute / 60,
            local_minute % 60
        ));
    }
    Decision::Move {
        to: p.node.clone(),
        why: format!(
            "{} is the most preferred node and has been a Healthy copy for {} s{}",
            p.node,
            healthy.as_secs(),
            policy
                .window
                .map(|w| format!(", inside the failback window {w}"))
                .unwrap_or_default()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    fn p(healthy: Option<u64>) -> Preferred {
        Preferred {
            node: "alpha".into(),
            healthy_for: healthy.map(Duration::from_secs),
        }
    }

    #[test]
    fn windows_parse_wrap_past_midnight_and_bad_ones_say_why() {
        let w = Window::parse("02:00-04:00").unwrap();
        assert!(w.contains(120) && w.contains(239) && !w.contains(240) && !w.contains(119));
        let night = Window::parse("22:00-02:00").unwrap();
        assert!(night.contains(23 * 60) && night.contains(0) && night.contains(119));
        assert!(!night.contains(120) && !night.contains(12 * 60));
        assert_eq!(night.to_string(), "22:00-02:00");
        for bad in [
            "2-4",
            "02:00",
            "24:00-01:00",
            "02:60-03:00",
            "03:00-03:00",
            "2:00-04:00",
        ] {
            assert!(Window::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn failback_waits_for_health_time_and_the_window_then_moves() {
        let policy = Policy {
            window: Some(Window::parse("02:00-04:00").unwrap()),
            after: 5 * MIN,
        };
        let three = 3 * 60;
        assert_eq!(
            decide(&policy, "alpha", Some(&p(Some(600))), three),
            Decision::Home
        );
        assert_eq!(decide(&policy, "beta", None, three), Decision::Home);
        let d = decide(&policy, "beta", Some(&p(None)), three);
        assert!(
            matches!(&d, Decision::Wait(w) if w.contains("not a live, Healthy copy")),
            "{d:?}"
        );
        let d = decide(&policy, "beta", Some(&p(Some(60))), three);
        assert!(
            matches!(&d, Decision::Wait(w) if w.contains("Healthy for 60 s of 300 s")),
            "{d:?}"
        );
        let d = decide(&policy, "beta", Some(&p(Some(600))), 12 * 60);
        assert!(
            matches!(&d, Decision::Wait(w) if w.contains("12:00 is outside the failback window 02:00-04:00")),
            "{d:?}"
        );
        let d = decide(&policy, "beta", Some(&p(Some(600))), three);
        assert!(
            matches!(&d, Decision::Move { to, why } if to == "alpha" && why.contains("inside")),
            "{d:?}"
        );
        // No window: any time.
        let any = Policy {
            window: None,
            after: 5 * MIN,
        };
        assert!(matches!(
            decide(&any, "beta", Some(&p(Some(300))), 12 * 60),
            Decision::Move { .. }
        ));
    }
}
