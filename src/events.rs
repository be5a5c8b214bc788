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
