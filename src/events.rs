//! The node's event log: `<data-dir>/events.jsonl`, one JSON object per
//! line, appended and never rewritten. It records what an operator must
//! know happened: role changes, fencing, failovers with their dial
//! decision, planned moves with their comment and duration, rewinds.
//! `logship events` prints it.

use std::io::Write;
use std::path::{Path, PathBuf};

pub const EVENTS_FILE: &str = "events.jsonl";

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(EVENTS_FILE)
}

/// Appends one event: `kind` plus `fields` (an object), with the time and node.
pub fn append(data_dir: &Path, node: &str, kind: &str, fields: serde_json::Value) {
    let mut obj = serde_json::Map::new();
    obj.insert(
        "time".into(),
        humantime::format_rfc3339_millis(std::time::SystemTime::now())
            .to_string()
            .into(),
    );
    obj.insert("node".into(), node.into());
    obj.insert("event".into(), kind.into());
    obj.insert("version".into(), shipper::FormatVersion::CURRENT.0.into());
    if let serde_json::Value::Object(m) = fields {
        obj.extend(m);
    }
    let mut line = serde_json::Value::Object(obj).to_string();
    line.push('\n');
    let p = path(data_dir);
    let r = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&p)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = r {
        tracing::warn!(path = %p.display(), error = %e, "cannot append to the event log");
    }
    tracing::info!(target: "logship::events", event = kind, "{}", line.trim_end());
}

/// The longest line `logship events` reads as an event.
pub const MAX_EVENT_LINE: usize = 64 * 1024;

/// One line of the event log, as read back.
#[derive(Debug, PartialEq)]
pub struct Event {
    pub time: String,
    pub event: String,
    /// The other fields, without `node` and `version`.
    pub fields: serde_json::Map<String, serde_json::Value>,
}

/// Reads one line of `events.jsonl`.
pub fn parse_line(line: &str) -> Result<Event, shipper::state_file::StateFileError> {
    let mut m = shipper::state_file::parse_object(line.as_bytes(), MAX_EVENT_LINE)?;
    let mut text = |k: &str| match m.remove(k) {
        Some(serde_json::Value::String(s)) => s,
        _ => String::new(),
    };
    let time = text("time");
    let event = text("event");
    m.remove("node");
    m.remove("version");
    Ok(Event {
        time,
        event,
        fields: m,
    })
}

impl Event {
    /// The line `logship events` prints: time, event, then `key=value`.
    pub fn summary(&self) -> String {
        let rest: Vec<String> = self
            .fields
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => format!("{k}={s:?}"),
                v if v.is_object() => format!("{k}=…"),
                v => format!("{k}={v}"),
            })
            .collect();
        format!("{}  {:<18} {}", self.time, self.event, rest.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use shipper::state_file::StateFileError;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        /// Whatever a line of `events.jsonl` holds, it is read or refused;
        /// reading never panics, and a summary can always be printed.
        #[test]
        fn any_line_of_the_event_log_is_read_or_refused(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let line = String::from_utf8_lossy(&bytes);
            if let Ok(e) = parse_line(&line) {
                let _ = e.summary();
            }
        }

        /// An event line with arbitrary fields reads back with its time and kind.
        #[test]
        fn an_appended_event_reads_back(kind in "[a-z-]{1,20}", n in any::<u64>(), s in ".{0,40}") {
            let dir = tempfile::tempdir().unwrap();
            append(dir.path(), "alpha", &kind, serde_json::json!({"n": n, "s": s}));
            let text = std::fs::read_to_string(path(dir.path())).unwrap();
            let e = parse_line(text.trim_end()).unwrap();
            prop_assert_eq!(&e.event, &kind);
            prop_assert_eq!(e.fields["n"].as_u64(), Some(n));
            prop_assert_eq!(e.fields["s"].as_str(), Some(s.as_str()));
        }
    }

    #[test]
    fn an_event_of_a_newer_format_is_refused_by_its_version() {
        let e = parse_line(r#"{"time":"t","event":"failover","version":7}"#).unwrap_err();
        assert!(matches!(e, StateFileError::Newer { found: 7, .. }), "{e:?}");
        let e = parse_line(r#"{"time":"t","event":"failover"}"#).unwrap();
        assert_eq!(e.event, "failover");
    }
}
