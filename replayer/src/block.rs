//! The copy's side of block mode: it connects to the active's node,
//! receives each durable byte of the open segment (`shipper::block`),
//! writes it at its offset in a local file of the same generation, makes
//! it durable and acknowledges it. These received files are apart from the
//! copy's log (the copier still takes sealed segments from the share, and
//! inspects them whole); they serve the failover when the old active's
//! share cannot be read, and the copy queue in records and bytes.
//!
//! A received file is `received/LS<generation>.log`, a byte-for-byte
//! prefix of the active's segment (zeros past what arrived; the trailer
//! once the segment is sealed), so its valid prefix is found the way the
//! active's own open segment is: by scanning it.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use shipper::block::{self, BlockError, Conn, Hello, Message};
use shipper::format::{self, SEGMENT_SIZE, TRAILER_OFFSET};
use shipper::{DatabaseId, Generation, Lsn};

use crate::state::{CopyPaths, CopyState};

/// The directory of received files, in the copy's data directory.
pub const RECEIVED_DIR: &str = "received";

/// The longest data nobody waits for stays unflushed.
const GATHER: Duration = Duration::from_millis(5);

/// How long to wait before connecting again after a failure.
const RETRY: Duration = Duration::from_secs(1);

/// What the copy has received, as status shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Received {
    /// The stream is up.
    pub connected: bool,
    pub encrypted: bool,
    /// The last generation received into, and its durable end.
    pub generation: u64,
    pub offset: u32,
    /// The last complete record received and durable here.
    pub lsn: u64,
    /// When it was (µs since the epoch).
    pub time_us: Option<u64>,
    /// Where the active said its durable log ends: generation, offset, LSN.
    pub active: Option<(u64, u32, u64)>,
    /// Why the stream is down, if it is.
    pub error: Option<String>,
}

impl Received {
    /// Records the active holds durable that this copy has not received.
    pub fn queue_records(&self) -> Option<u64> {
        self.active.map(|(_, _, lsn)| lsn.saturating_sub(self.lsn))
    }

    /// Bytes of log the active holds durable that this copy has not
    /// received (segments between count whole).
    pub fn queue_bytes(&self) -> Option<u64> {
        self.active.map(|(g, o, _)| {
            let area = (TRAILER_OFFSET - format::HEADER_SIZE) as u64;
            if g == self.generation {
                u64::from(o.saturating_sub(self.offset.min(TRAILER_OFFSET as u32)))
            } else if g > self.generation {
                let rest = (TRAILER_OFFSET as u64).saturating_sub(u64::from(self.offset));
                rest + (g - self.generation - 1) * area
                    + u64::from(o).saturating_sub(format::HEADER_SIZE as u64)
            } else {
                0
            }
        })
    }
}

/// Where and how to receive.
#[derive(Clone, Debug)]
pub struct ReceiverConfig {
    /// This node's name (in the hello).
    pub node: String,
    /// The active's node name and block-mode address.
    pub active: String,
    pub addr: String,
    pub key: Option<Vec<u8>>,
    pub database_id: DatabaseId,
    pub paths: CopyPaths,
}

/// The received file of `generation` in `dir` (under the spelling of an
/// older build when only that one is there).
pub fn received_path(dir: &Path, generation: Generation) -> PathBuf {
    let path = dir.join(format::segment_file_name(generation));
    let legacy = dir.join(format::segment_file_name_in(
        generation,
        format::NameCase::Upper,
    ));
    if !path.exists() && legacy.exists() {
        return legacy;
    }
    path
}

/// The received files in `dir`, oldest first.
pub fn list(dir: &Path) -> Vec<(Generation, PathBuf)> {
    shipper::log::list_sealed(dir).unwrap_or_default()
}

/// How far a received file goes: its durable end (the segment's size once
/// its trailer arrived) and its last complete record.
fn extent(path: &Path, db: DatabaseId) -> Option<(u32, Lsn)> {
    let bytes = std::fs::read(path).ok()?;
    if bytes.len() != SEGMENT_SIZE {
        return None;
    }
    let scan = format::scan_current(&bytes, Some(db)).ok()?;
    let end = if scan.trailer.is_some() {
        SEGMENT_SIZE
    } else {
        scan.records_end
    };
    Some((end as u32, scan.complete_lsn()))
}

/// Receives from the active until `stop` is set, reconnecting after
/// failures; `shared` is kept current for status.
pub fn run(cfg: &ReceiverConfig, shared: &Mutex<Received>, stop: &AtomicBool) {
    let dir = cfg.paths.data_dir.join(RECEIVED_DIR);
    let mut logged: Option<String> = None;
    while !stop.load(Ordering::Relaxed) {
        let r = receive(cfg, &dir, shared, stop);
        let why = match r {
            Ok(()) => "the active closed the stream".to_string(),
            Err(e) => e,
        };
        {
            let mut s = shared.lock().expect("received lock");
            s.connected = false;
            s.error = Some(why.clone());
        }
        if logged.as_deref() != Some(why.as_str()) {
            tracing::info!(active = %cfg.active, addr = %cfg.addr, reason = %why, "block-mode stream down; reconnecting");
            logged = Some(why);
        }
        let until = Instant::now() + RETRY;
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The received file being written.
struct Current {
    generation: Generation,
    file: File,
    path: PathBuf,
    offset: u32,
    dirty: bool,
}

fn open_received(dir: &Path, g: Generation) -> std::io::Result<(File, PathBuf)> {
    let path = received_path(dir, g);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)?;
    if file.metadata()?.len() != SEGMENT_SIZE as u64 {
        file.set_len(SEGMENT_SIZE as u64)?;
    }
    Ok((file, path))
}

/// Removes received files the copy no longer needs: those of generations
/// its copier has inspected (their sealed segments are in its log).
fn trim(cfg: &ReceiverConfig, dir: &Path, keep: Generation) {
    let inspected = CopyState::load(&cfg.paths)
        .ok()
        .flatten()
        .and_then(|s| s.last_inspected.map(|m| m.generation));
    for (g, path) in list(dir) {
        if g < keep && inspected.is_some_and(|i| g <= i) {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn receive(
    cfg: &ReceiverConfig,
    dir: &Path,
    shared: &Mutex<Received>,
    stop: &AtomicBool,
) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let addr = {
        use std::net::ToSocketAddrs;
        cfg.addr
            .to_socket_addrs()
            .map_err(|e| format!("address {:?}: {e}", cfg.addr))?
            .next()
            .ok_or_else(|| format!("address {:?} resolves to nothing", cfg.addr))?
    };
    let stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect to {} at {}: {e}", cfg.active, cfg.addr))?;
    let _ = stream.set_nodelay(true);
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let hello = Hello {
        node: cfg.node.clone(),
        database_id: cfg.database_id,
        nonce: block::hello_nonce(),
    };
    let mut conn = block::connect(stream, &cfg.active, &hello, cfg.key.as_deref())
        .map_err(|e| e.to_string())?;
    // Where this copy's received log ends.
    let mut current: Option<Current> = None;
    let mut lsn = Lsn(0);
    if let Some((g, path)) = list(dir).last().cloned()
        && let Some((end, last)) = extent(&path, cfg.database_id)
    {
        let (file, path) = open_received(dir, g).map_err(|e| e.to_string())?;
        current = Some(Current {
            generation: g,
            file,
            path,
            offset: end,
            dirty: false,
        });
        lsn = last;
    }
    let (g, o) = current
        .as_ref()
        .map(|c| (c.generation, c.offset))
        .unwrap_or((Generation(0), 0));
    conn.send(&Message::Where {
        generation: g,
        offset: o,
        lsn,
    })
    .map_err(|e| e.to_string())?;
    {
        let mut s = shared.lock().expect("received lock");
        s.connected = true;
        s.encrypted = conn.encrypted();
        s.error = None;
        s.generation = g.0;
        s.offset = o;
        s.lsn = s.lsn.max(lsn.0);
    }
    tracing::info!(active = %cfg.active, addr = %cfg.addr, encrypted = conn.encrypted(), generation = %g, offset = o, "block-mode stream up");
    let mut pending_lsn: Option<Lsn> = None;
    let mut last_heard = Instant::now();
    // Data nobody waits for is made durable within GATHER, sharing its
    // fdatasync with what follows: the active's own flushes are not
    // doubled one for one. Data the active waits for is flushed at once.
    let mut flush_due: Option<Instant> = None;
    let mut urgent = false;
    while !stop.load(Ordering::Relaxed) {
        let wait = flush_due
            .map(|d| d.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_millis(200))
            .max(Duration::from_millis(1));
        conn.stream()
            .set_read_timeout(Some(wait))
            .map_err(|e| e.to_string())?;
        let msg = conn.recv().map_err(|e| e.to_string())?;
        let Some(msg) = msg else {
            if flush_due.is_some_and(|d| d <= Instant::now()) {
                flush(&mut current, &mut conn, &mut pending_lsn, shared)?;
                flush_due = None;
            }
            if last_heard.elapsed() > block::KEEPALIVE * 5 {
                return Err(format!(
                    "nothing heard from {} for {} s",
                    cfg.active,
                    last_heard.elapsed().as_secs()
                ));
            }
            continue;
        };
        last_heard = Instant::now();
        match msg {
            Message::Data {
                generation,
                offset,
                lsn: l,
                bytes,
                waited,
            } => {
                urgent |= waited;
                flush_due.get_or_insert(Instant::now() + GATHER);
                if current.as_ref().is_none_or(|c| c.generation != generation) {
                    if current.as_ref().is_some_and(|c| c.generation > generation) {
                        continue;
                    }
                    flush(&mut current, &mut conn, &mut pending_lsn, shared)?;
                    let (file, path) = open_received(dir, generation).map_err(|e| e.to_string())?;
                    current = Some(Current {
                        generation,
                        file,
                        path,
                        offset: 0,
                        dirty: false,
                    });
                    trim(cfg, dir, generation);
                }
                let c = current.as_mut().expect("set above");
                c.file
                    .write_all_at(&bytes, u64::from(offset))
                    .map_err(|e| format!("write {}: {e}", c.path.display()))?;
                c.offset = c.offset.max(offset + bytes.len() as u32);
                c.dirty = true;
                if l.0 > 0 {
                    pending_lsn = Some(l);
                }
                let mut s = shared.lock().expect("received lock");
                let active = s.active.unwrap_or_default();
                if (generation.0, c.offset) >= (active.0, active.1) {
                    s.active = Some((generation.0, c.offset, l.0.max(active.2)));
                }
            }
            Message::Sealed {
                generation,
                trailer,
            } => {
                if let Some(c) = current.as_mut().filter(|c| c.generation == generation) {
                    c.file
                        .write_all_at(&trailer, TRAILER_OFFSET as u64)
                        .map_err(|e| format!("write {}: {e}", c.path.display()))?;
                    c.offset = SEGMENT_SIZE as u32;
                    c.dirty = true;
                    urgent = true;
                }
            }
            Message::Where {
                generation,
                offset,
                lsn: l,
            } => {
                shared.lock().expect("received lock").active = Some((generation.0, offset, l.0));
            }
            Message::Refuse(why) => {
                return Err(BlockError::Declined {
                    peer: cfg.active.clone(),
                    why,
                }
                .to_string());
            }
            Message::Ack { .. } => {
                return Err(format!(
                    "{} sent an acknowledgement, which only copies send",
                    cfg.active
                ));
            }
        }
        // More already here: take it before the fdatasync, which it shares.
        if conn_has_more(&conn) {
            continue;
        }
        if urgent || flush_due.is_some_and(|d| d <= Instant::now()) {
            flush(&mut current, &mut conn, &mut pending_lsn, shared)?;
            flush_due = None;
            urgent = false;
        }
    }
    Ok(())
}

/// Whether bytes are waiting on the socket.
fn conn_has_more(conn: &Conn) -> bool {
    let mut b = [0u8; 1];
    let s = conn.stream();
    if s.set_nonblocking(true).is_err() {
        return false;
    }
    let more = matches!(s.peek(&mut b), Ok(n) if n > 0);
    let _ = s.set_nonblocking(false);
    more
}

/// Makes what was written durable and acknowledges it.
fn flush(
    current: &mut Option<Current>,
    conn: &mut Conn,
    pending_lsn: &mut Option<Lsn>,
    shared: &Mutex<Received>,
) -> Result<(), String> {
    let Some(c) = current.as_mut().filter(|c| c.dirty) else {
        return Ok(());
    };
    c.file
        .sync_data()
        .map_err(|e| format!("fdatasync {}: {e}", c.path.display()))?;
    c.dirty = false;
    let mut s = shared.lock().expect("received lock");
    if let Some(l) = pending_lsn.take() {
        s.lsn = s.lsn.max(l.0);
    }
    s.generation = c.generation.0;
    s.offset = c.offset;
    s.time_us = Some(crate::daemon::now_us());
    let lsn = Lsn(s.lsn);
    drop(s);
    conn.send(&Message::Ack {
        generation: c.generation,
        offset: c.offset,
        lsn,
    })
    .map_err(|e| e.to_string())
}
