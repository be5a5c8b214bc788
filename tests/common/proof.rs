//! The proof of the partition tests, from the records rather than from
//! status: each acknowledged write found in the log of the node that
//! acknowledged it, in a segment whose header carries its epoch.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// A writer per data directory, each inserting its own ids into `t`
/// through the node's control socket until `stop`, its acknowledgements
/// into `acks` (node = the directory's index).
pub fn start_writers(
    dirs: Vec<PathBuf>,
    stop: &Arc<AtomicBool>,
    acks: &Arc<Mutex<Vec<Ack>>>,
) -> Vec<JoinHandle<()>> {
    dirs.into_iter()
        .enumerate()
        .map(|(i, data_dir)| {
            let (stop, acks) = (stop.clone(), acks.clone());
            std::thread::spawn(move || {
                let mut id = (i as u64 + 1) * 1_000_000_000;
                while !stop.load(Ordering::Relaxed) {
                    id += 1;
                    let op = format!(
                        "{{\"sql\":{{\"sql\":\"INSERT INTO t VALUES ({id}, 'w')\",\"each\":false}}}}\n"
                    );
                    match control_request(&data_dir, &op) {
                        Some(lsn) => acks.lock().unwrap().push(Ack { node: i, id, lsn }),
                        None => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })
        })
        .collect()
}

/// For each epoch, the nodes whose acknowledged writes it holds, from each
/// acking node's own log; a write its node's log does not hold is a
/// failure (`names[node]` names it, `context` ends the message).
pub fn writers_by_epoch(
    acks: &[Ack],
    data_dirs: &[PathBuf],
    names: &[&str],
    context: &str,
) -> BTreeMap<u64, BTreeSet<usize>> {
    let logs: Vec<_> = data_dirs.iter().map(|d| records(d)).collect();
    let mut out: BTreeMap<u64, BTreeSet<usize>> = BTreeMap::new();
    for a in acks {
        let epoch = logs[a.node]
            .iter()
            .find(|(lsn, _, ids)| *lsn == a.lsn && ids.contains(&a.id))
            .map(|(_, e, _)| *e)
            .unwrap_or_else(|| {
                panic!(
                    "{} acknowledged row {} at LSN {} but its log does not hold it{context}",
                    names[a.node], a.id, a.lsn
                )
            });
        out.entry(epoch).or_default().insert(a.node);
    }
    out
}

/// One acknowledged write: which node, which row, at which LSN.
#[derive(Clone, Copy, Debug)]
pub struct Ack {
    pub node: usize,
    pub id: u64,
    pub lsn: u64,
}

/// Every (LSN, inserted ids, segment epoch) in a node's own log
/// directories (live and set aside by rewinds).
pub fn records(data_dir: &Path) -> Vec<(u64, u64, Vec<u64>)> {
    let mut dirs = vec![data_dir.join("logs")];
    if let Ok(rd) = std::fs::read_dir(data_dir.join("rewound")) {
        for e in rd {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p.clone());
                dirs.push(p.join("logs"));
            }
        }
    }
    let mut out = Vec::new();
    for d in dirs {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd {
            let p: PathBuf = e.unwrap().path();
            if p.extension().is_none_or(|x| x != "log") {
                continue;
            }
            let bytes = std::fs::read(&p).unwrap();
            let Ok(scan) = shipper::format::scan_current(&bytes, None) else {
                continue;
            };
            let epoch = scan.header.epoch.0;
            let mut r = shipper::format::Reassembler::default();
            for f in &scan.frames {
                if let Ok(Some((kind, lsn, payload))) = r.push(f)
                    && let Ok(rec) = shipper::format::Record::decode(kind, &payload)
                {
                    let mut ids = Vec::new();
                    if let shipper::format::Body::Changeset(cs) = &rec.body {
                        let _ = shipper::changeset::for_each_change(cs, |c| {
                            if c.table == "t"
                                && c.op == shipper::changeset::Op::Insert
                                && let Some(Some(shipper::changeset::Value::Integer(id))) =
                                    c.new.first()
                            {
                                ids.push(*id as u64);
                            }
                            Ok(())
                        });
                    }
                    out.push((lsn.0, epoch, ids));
                }
            }
        }
    }
    out
}

/// Sends one raw request line to a node's control socket; the LSN of an
/// acknowledged `ok <lsn>`.
pub fn control_request(data_dir: &Path, line: &str) -> Option<u64> {
    use std::io::{BufRead, BufReader, Write};
    let s = std::os::unix::net::UnixStream::connect(data_dir.join("control.sock")).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    (&s).write_all(line.as_bytes()).ok()?;
    let mut lsn = None;
    for l in BufReader::new(&s).lines() {
        let v: serde_json::Value = serde_json::from_str(&l.ok()?).ok()?;
        if let Some(out) = v["out"].as_str() {
            lsn = out
                .lines()
                .find_map(|x| x.strip_prefix("ok ").and_then(|n| n.trim().parse().ok()));
        }
        if v.get("error").is_some() {
            return None;
        }
        if v.get("done").is_some() {
            return lsn;
        }
    }
    None
}
