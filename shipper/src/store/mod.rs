//! The store: a SQLite database whose every write transaction becomes a
//! durable log record *before* SQLite commits (the WAL rule), with group
//! commit, DDL records, the LSN guard row, the content hash, the checks that
//! refuse tables the session extension cannot replicate, and crash recovery
//! on open.
//!
//! One writer thread owns the write connection. Callers send closures; the
//! writer runs a batch of them in one SQLite transaction, each inside its own
//! savepoint, with one capture of their row changes (`capture`) for the
//! batch's one record; writes that record with one pwrite and one
//! fdatasync, commits SQLite, and only then answers each caller. The write
//! connection is never handed out outside a closure, so no write can bypass
//! capture.
//!
//! This file holds the store's API (`Store`, its options, paths and state,
//! the data-directory lock). Beside it: `fence` (the lease deadline),
//! `failpoint` (crash points for the WAL-rule tests), `authorizer` (what
//! statements may do), `tx` (the handle given to closures), `replicable`
//! (the table checks), `recovery` (redo on open), and `writer` (group
//! commit and the replier).

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;

use crate::apply;
use crate::capture::{Capture, IntUpdate};
use crate::changeset::{self, GUARD_TABLE};
use crate::error::{Error, Result};
use crate::format::{Body, DdlPart, Record, RecordKind};
use crate::hash;
use crate::log::{self, LogWriter, now_us};
use crate::script;
use crate::types::{ContentHash, DatabaseId, Epoch, Generation, Lsn, SchemaHash};

mod authorizer;
mod failpoint;
mod fence;
mod recovery;
mod replicable;
mod tx;
mod writer;

use authorizer::*;
use failpoint::*;
pub use fence::Fence;
use recovery::*;
pub use replicable::check_replicable;
use tx::*;
pub use tx::{Params, Tx};
use writer::*;

/// File name of the database inside a node's data directory.
pub const DATABASE_FILE: &str = "store.db";
/// Directory of the log segments inside a node's data directory.
pub const LOG_DIR: &str = "logs";
const LOCK_FILE: &str = "lock";
/// A file that marks a data directory as a passive copy (the replayer's
/// state file): the store refuses to open it for writing.
pub const PASSIVE_MARKER: &str = "copy.json";

/// Default for `StoreOptions::seal_after`.
pub const DEFAULT_SEAL_AFTER: Duration = Duration::from_secs(10);
/// Default for `StoreOptions::max_batch`.
pub const DEFAULT_MAX_BATCH: usize = 256;
/// Default for `StoreOptions::max_transaction_bytes`.
pub const DEFAULT_MAX_TRANSACTION_BYTES: usize = 64 << 20;
/// Capacity of the queue of transactions waiting for the writer.
const REQUEST_QUEUE: usize = 1024;
/// Records replayed per SQLite transaction during recovery.
const RECOVERY_BATCH: usize = 1000;
const SAVEPOINT: &str = "logship_request";

/// Tunables of a store. Every field has a default (`Default`).
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Seal the current segment this long after its first unsealed record
    /// (default 10 s).
    pub seal_after: Duration,
    /// Most transactions per group commit (default 256).
    pub max_batch: usize,
    /// Largest changeset one transaction may produce (default 64 MiB).
    pub max_transaction_bytes: usize,
    /// fdatasync each group commit (default true). False only to build a
    /// log fast for a benchmark: a crash then loses acknowledged transactions.
    pub fsync: bool,
    /// The cluster's quorum lease (default none: a standalone store). Once
    /// it runs out the writer takes nothing more, and a transaction whose
    /// record became durable after it ran out is answered `Fenced`, not
    /// acknowledged.
    pub fence: Option<Arc<Fence>>,
    /// Start this epoch (default none: keep the log's). A current segment
    /// that holds records is sealed first, so every segment holds one epoch.
    pub epoch: Option<Epoch>,
    /// Block mode: every byte of the log made durable is published here for
    /// the copies (default none).
    pub feed: Option<Arc<crate::block::Feed>>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            seal_after: DEFAULT_SEAL_AFTER,
            max_batch: DEFAULT_MAX_BATCH,
            max_transaction_bytes: DEFAULT_MAX_TRANSACTION_BYTES,
            fsync: true,
            fence: None,
            epoch: None,
            feed: None,
        }
    }
}

/// Where a store keeps its files.
#[derive(Clone, Debug)]
pub struct StorePaths {
    pub data_dir: PathBuf,
    pub database: PathBuf,
    pub logs: PathBuf,
}

impl StorePaths {
    pub fn new(data_dir: &Path) -> StorePaths {
        StorePaths {
            data_dir: data_dir.to_path_buf(),
            database: data_dir.join(DATABASE_FILE),
            logs: data_dir.join(LOG_DIR),
        }
    }
}

/// What a committed transaction returns.
#[derive(Debug)]
pub struct Committed<T> {
    /// The transaction's LSN, or the database's LSN when it changed nothing.
    pub lsn: Lsn,
    /// False when the transaction changed nothing and wrote no record.
    pub logged: bool,
    pub value: T,
}

/// A point-in-time view of the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreState {
    pub database_id: DatabaseId,
    /// The last durable and committed LSN.
    pub lsn: Lsn,
    /// Content hash at `lsn`, as maintained from the changesets.
    pub hash: ContentHash,
    pub schema_hash: SchemaHash,
    /// Generation of the current (unsealed) segment.
    pub generation: Generation,
    pub epoch: Epoch,
}

/// Result of `Store::check_content`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContentCheck {
    pub lsn: Lsn,
    /// The hash the log holds at `lsn`.
    pub logged: ContentHash,
    /// The hash a full scan of the database computes.
    pub scanned: ContentHash,
}

// ---------------------------------------------------------------------------
// The store and its writer thread.
// ---------------------------------------------------------------------------

/// One caller's transaction, queued for the writer. `run` may be called
/// more than once (see `Tx`); `finish` answers the caller exactly once.
trait Request: Send {
    /// Runs the closure; false when it failed.
    fn run(&mut self, tx: &mut Tx<'_>) -> bool;
    /// Answers the caller: `Ok(lsn, logged)` once durable, or the batch's
    /// error; a failed closure is answered with its own error.
    fn finish(self: Box<Self>, r: Result<(Lsn, bool)>);
}

struct Req<T, F> {
    f: F,
    last: Option<Result<T>>,
    reply: oneshot::Sender<Result<Committed<T>>>,
}

impl<T, F> Request for Req<T, F>
where
    T: Send + 'static,
    F: FnMut(&mut Tx<'_>) -> Result<T> + Send + 'static,
{
    fn run(&mut self, tx: &mut Tx<'_>) -> bool {
        let f = &mut self.f;
        let r = catch_unwind(AssertUnwindSafe(|| f(tx)))
            .unwrap_or_else(|_| Err(Error::Aborted("the transaction closure panicked".into())));
        let ok = r.is_ok();
        self.last = Some(r);
        ok
    }

    fn finish(self: Box<Self>, r: Result<(Lsn, bool)>) {
        let answer = match (r, self.last) {
            (Err(e), _) => Err(e),
            (Ok(_), Some(Err(e))) => Err(e),
            (Ok((lsn, logged)), Some(Ok(value))) => Ok(Committed { lsn, logged, value }),
            (Ok(_), None) => Err(Error::Stopped("transaction was never run".into())),
        };
        let _ = self.reply.send(answer);
    }
}

type Job = Box<dyn Request>;

/// How a job's run ended.
enum Ran {
    Ok,
    /// The closure returned an error; the caller gets it.
    Failed,
    /// The store refused what the closure did (it ignored the error).
    Refused(Error),
}
/// Jobs with the answer each gets.
type Answers = Vec<(Job, Result<(Lsn, bool)>)>;

enum Msg {
    Tx(Job),
    Seal(oneshot::Sender<Result<Option<Generation>>>),
    Check(oneshot::Sender<Result<ContentCheck>>),
    Checkpoint(oneshot::Sender<Result<Lsn>>),
    Freeze(String, oneshot::Sender<Result<Lsn>>),
    Shutdown,
}

#[derive(Debug, Default)]
struct Counters {
    submitted: AtomicU64,
    syncs: AtomicU64,
    records: AtomicU64,
    batches: AtomicU64,
    fsync: crate::metrics::Histogram,
}

/// Counters since the store was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Transactions handed to the writer.
    pub submitted: u64,
    /// fdatasyncs of the log for group commits.
    pub syncs: u64,
    /// Records written.
    pub records: u64,
    /// Group commits run (including read-only ones).
    pub batches: u64,
}

/// How long a lone caller polls for its answer before it sleeps.
const CALLER_SPIN: Duration = Duration::from_micros(500);

#[derive(Debug)]
struct Shared {
    /// Callers waiting in `transaction`.
    waiting: std::sync::atomic::AtomicUsize,
    state: Mutex<StoreState>,
    stopped: Mutex<Option<String>>,
    counters: Counters,
}

/// A logged SQLite database. Cheap to share across threads (`&Store` is
/// `Sync`); dropping it stops the writer after the work already queued.
#[derive(Debug)]
pub struct Store {
    paths: StorePaths,
    sender: SyncSender<Msg>,
    writer: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
    /// The lease deadline the writer obeys, when a cluster gives one.
    fence: Option<Arc<Fence>>,
    _lock: File,
}

impl Store {
    /// Creates a data directory with a new database and its log. Returns the
    /// new database id.
    pub fn init(data_dir: &Path) -> Result<DatabaseId> {
        let paths = StorePaths::new(data_dir);
        fs::create_dir_all(data_dir)
            .map_err(|e| Error::io("create data directory", data_dir, e))?;
        if paths.database.exists() {
            return Err(Error::AlreadyInitialized {
                path: paths.database,
            });
        }
        let id = DatabaseId::random().map_err(|e| Error::io("read", "/dev/urandom", e))?;
        let conn =
            Connection::open(&paths.database).map_err(|e| Error::sql("create database", e))?;
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL;
             BEGIN;
             CREATE TABLE {GUARD_TABLE} (
               id INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
               lsn INTEGER NOT NULL,
               database_id BLOB NOT NULL
             );
             COMMIT;"
        ))
        .map_err(|e| Error::sql("create the guard table", e))?;
        conn.execute(
            &format!("INSERT INTO {GUARD_TABLE} (id, lsn, database_id) VALUES (1, 0, ?1)"),
            [&id.0[..]],
        )
        .map_err(|e| Error::sql("write the guard row", e))?;
        let schema = hash::schema_hash(&conn)?;
        drop(conn);
        LogWriter::create(&paths.logs, id, Epoch(1), schema)?;
        log::sync_dir(data_dir)?;
        Ok(id)
    }

    /// Opens the store in `data_dir`, recovering after a crash: a torn tail
    /// of the current segment is truncated, and every durable record past
    /// the guard LSN is redone.
    pub fn open(data_dir: &Path, opts: StoreOptions) -> Result<Store> {
        let paths = StorePaths::new(data_dir);
        if !paths.database.exists() {
            return Err(Error::NotInitialized {
                path: data_dir.to_path_buf(),
            });
        }
        if data_dir.join(PASSIVE_MARKER).exists() {
            return Err(Error::PassiveCopy {
                path: data_dir.to_path_buf(),
                marker: PASSIVE_MARKER,
            });
        }
        let lock = lock_data_dir(data_dir)?;
        let fence = opts.fence.clone();
        let mut conn = Connection::open_with_flags(
            &paths.database,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| Error::sql(format!("open {}", paths.database.display()), e))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;",
        )
        .map_err(|e| Error::sql("configure the database", e))?;
        let (db_lsn, database_id) = apply::read_guard(&conn).map_err(|e| match e {
            Error::Sql { .. } => Error::NotInitialized {
                path: data_dir.to_path_buf(),
            },
            e => e,
        })?;
        let mut log = LogWriter::open(&paths.logs, database_id, db_lsn)?;
        let end = log.end().clone();
        if db_lsn > end.lsn {
            return Err(Error::DatabaseAhead {
                path: paths.database.clone(),
                db: db_lsn,
                log: end.lsn,
            });
        }
        if db_lsn < end.lsn {
            recover(&conn, &paths.logs, database_id, db_lsn, end.lsn)?;
        }
        check_replicable(&conn)?;
        let auth = Arc::new(AuthState::default());
        // SAFETY: only the address is kept; see `authorize`.
        auth.db
            .store(unsafe { conn.handle() } as usize, Ordering::SeqCst);
        let auth_hook = auth.clone();
        conn.authorizer(Some(move |ctx: AuthContext<'_>| authorize(&auth_hook, ctx)))
            .map_err(|e| Error::sql("install the authorizer", e))?;
        // Only the writer commits. A closure whose statement ended the SQLite
        // transaction (INSERT OR ROLLBACK) runs its next statements in
        // autocommit mode; this veto turns each of their commits into a
        // rollback, so nothing reaches the database without its record.
        let auth_commit = auth.clone();
        conn.commit_hook(Some(move || {
            auth_commit.mode.load(Ordering::SeqCst) != MODE_INTERNAL
        }))
        .map_err(|e| Error::sql("install the commit hook", e))?;
        // A request's time limit (`Tx::interrupt_after`): checked every few
        // thousand VM steps, and only while a request's closure runs.
        let auth_deadline = auth.clone();
        conn.progress_handler(4_000, Some(move || auth_deadline.deadline_passed()))
            .map_err(|e| Error::sql("install the progress handler", e))?;
        log.set_epoch(end.epoch);
        if let Some(epoch) = opts.epoch {
            if epoch < end.epoch {
                return Err(Error::EpochBehind {
                    path: paths.logs.clone(),
                    epoch,
                    current: end.epoch,
                });
            }
            if epoch > end.epoch {
                log.begin_epoch(epoch)?;
            }
        }
        if let Some(feed) = &opts.feed {
            log.set_feed(feed.clone());
        }
        let end = log.end().clone();
        let state = StoreState {
            database_id,
            lsn: end.lsn,
            hash: end.hash,
            schema_hash: end.schema_hash,
            generation: end.generation,
            epoch: end.epoch,
        };
        let shared = Arc::new(Shared {
            waiting: Default::default(),
            state: Mutex::new(state),
            stopped: Mutex::new(None),
            counters: Counters::default(),
        });
        let (sender, receiver) = sync_channel(REQUEST_QUEUE);
        // Everything that can fail comes before the capture: once it exists,
        // it must be dropped before `conn` (the field order of `Writer`).
        let replier =
            Replier::start().map_err(|e| Error::io("start the replier thread", data_dir, e))?;
        let guard = IntUpdate::new(&conn, GUARD_TABLE, "lsn")?;
        let capture = Capture::new(&conn, &[GUARD_TABLE]);
        let writer = Writer {
            capture,
            guard,
            conn,
            log,
            auth,
            opts,
            shared: shared.clone(),
            failpoint: FailPoint::from_env(),
            replier,
            lsn: end.lsn,
            hash: end.hash,
            schema_hash: end.schema_hash,
            frozen: None,
            solo: 0,
        };
        let handle = std::thread::Builder::new()
            .name("logship-writer".into())
            .spawn(move || writer.run(receiver))
            .map_err(|e| Error::io("start the writer thread", data_dir, e))?;
        Ok(Store {
            paths,
            sender,
            writer: Some(handle),
            shared,
            fence,
            _lock: lock,
        })
    }

    pub fn paths(&self) -> &StorePaths {
        &self.paths
    }

    /// The last committed LSN, its hashes and the current generation.
    pub fn state(&self) -> StoreState {
        self.shared.state.lock().expect("state lock").clone()
    }

    /// Counters since the store was opened.
    pub fn stats(&self) -> StoreStats {
        let c = &self.shared.counters;
        StoreStats {
            submitted: c.submitted.load(Ordering::Relaxed),
            syncs: c.syncs.load(Ordering::Relaxed),
            records: c.records.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
        }
    }

    /// Runs `f` as one logged transaction and waits until its record is
    /// durable and SQLite has committed. If `f` fails, everything it did is
    /// rolled back and nothing of it is logged. Concurrent callers share a
    /// group commit: one record, one LSN and one fdatasync for the batch.
    pub fn transaction<T, F>(&self, f: F) -> Result<Committed<T>>
    where
        T: Send + 'static,
        F: FnMut(&mut Tx<'_>) -> Result<T> + Send + 'static,
    {
        let mut rx = self.submit(f)?;
        // A lone caller polls for its answer a little before it sleeps (see
        // WRITER_SPIN); with company it sleeps at once, not to steal the
        // writer's core.
        if self.shared.waiting.fetch_add(1, Ordering::Relaxed) == 0 {
            let until = Instant::now() + CALLER_SPIN;
            while Instant::now() < until {
                match rx.try_recv() {
                    Ok(r) => {
                        self.shared.waiting.fetch_sub(1, Ordering::Relaxed);
                        return r;
                    }
                    Err(oneshot::error::TryRecvError::Empty) => std::hint::spin_loop(),
                    Err(oneshot::error::TryRecvError::Closed) => break,
                }
            }
        }
        let r = rx.blocking_recv();
        self.shared.waiting.fetch_sub(1, Ordering::Relaxed);
        r.map_err(|_| Error::Stopped(self.stop_reason()))?
    }

    /// Like `transaction`, for async callers.
    pub async fn transaction_async<T, F>(&self, f: F) -> Result<Committed<T>>
    where
        T: Send + 'static,
        F: FnMut(&mut Tx<'_>) -> Result<T> + Send + 'static,
    {
        let rx = self.submit(f)?;
        rx.await.map_err(|_| Error::Stopped(self.stop_reason()))?
    }

    fn submit<T, F>(&self, f: F) -> Result<oneshot::Receiver<Result<Committed<T>>>>
    where
        T: Send + 'static,
        F: FnMut(&mut Tx<'_>) -> Result<T> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel::<Result<Committed<T>>>();
        let job: Job = Box::new(Req {
            f,
            last: None,
            reply,
        });
        self.sender
            .send(Msg::Tx(job))
            .map_err(|_| Error::Stopped(self.stop_reason()))?;
        self.shared
            .counters
            .submitted
            .fetch_add(1, Ordering::Relaxed);
        Ok(rx)
    }

    /// Seals the current segment now if it holds any record.
    pub fn seal(&self) -> Result<Option<Generation>> {
        self.ask(Msg::Seal)
    }

    /// Stops intake for a planned move: seals the current segment and
    /// refuses every transaction submitted after this call (with `Fenced`
    /// and `reason`); those submitted before are committed first. Returns
    /// the last LSN, which the sealed segments now hold.
    pub fn freeze(&self, reason: &str) -> Result<Lsn> {
        let reason = reason.to_string();
        self.ask(move |reply| Msg::Freeze(reason, reply))
    }

    /// The latency of the log's fdatasyncs since the store was opened.
    pub fn fsync_latency(&self) -> crate::metrics::Snapshot {
        self.shared.counters.fsync.snapshot()
    }

    /// Recomputes the content hash by a full scan and returns it beside the
    /// hash the log holds at the same LSN.
    pub fn check_content(&self) -> Result<ContentCheck> {
        self.ask(Msg::Check)
    }

    /// Makes everything committed durable in SQLite itself (a full WAL
    /// checkpoint: SQLite runs at synchronous=NORMAL because the log is the
    /// durability point) and returns the LSN that is now durable without the
    /// log. Truncation calls this before it deletes a segment.
    pub fn checkpoint(&self) -> Result<Lsn> {
        self.ask(Msg::Checkpoint)
    }

    /// Sends the writer a request that carries its own reply channel, and
    /// waits for the reply.
    fn ask<T>(&self, msg: impl FnOnce(oneshot::Sender<Result<T>>) -> Msg) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.sender
            .send(msg(tx))
            .map_err(|_| Error::Stopped(self.stop_reason()))?;
        rx.blocking_recv()
            .map_err(|_| Error::Stopped(self.stop_reason()))?
    }

    /// Opens a read-only connection to the database.
    pub fn reader(&self) -> Result<Connection> {
        open_read_only(&self.paths.database)
    }

    /// Whether this store may still take writes now: not stopped, and its
    /// fence (the cluster's lease) not run out. A read that finds it so
    /// after it read saw the latest committed state: while the lease holds,
    /// no other node can commit. Why not, otherwise.
    pub fn holds_lease(&self) -> std::result::Result<(), String> {
        if let Some(why) = self.stopped() {
            return Err(why);
        }
        match &self.fence {
            Some(f) if !f.allows() => Err("its lease has run out (fenced)".into()),
            _ => Ok(()),
        }
    }

    /// Why the writer stopped, once it has (a fatal error, or the fence).
    pub fn stopped(&self) -> Option<String> {
        self.shared.stopped.lock().expect("stopped lock").clone()
    }

    fn stop_reason(&self) -> String {
        self.shared
            .stopped
            .lock()
            .expect("stopped lock")
            .clone()
            .unwrap_or_else(|| "the store is closed".into())
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = self.sender.send(Msg::Shutdown);
        if let Some(h) = self.writer.take() {
            let _ = h.join();
        }
    }
}

/// Opens a database read-only (for readers on any node).
pub fn open_read_only(path: &Path) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| Error::sql(format!("open {} read-only", path.display()), e))?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(|e| Error::sql("set busy timeout", e))?;
    Ok(conn)
}

/// Takes the data directory's lock (one writing process at a time); held
/// until the returned file is dropped.
pub fn lock_data_dir(data_dir: &Path) -> Result<File> {
    lock_file(&data_dir.join(LOCK_FILE), data_dir)
}

/// Takes the exclusive lock `path` (an `flock`, released when the process
/// dies) and writes our pid in it; `Error::Locked` names the holder's pid
/// and `what`.
pub fn lock_file(path: &Path, what: &Path) -> Result<File> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| Error::io("open lock file", path, e))?;
    // SAFETY: flock on a valid, open descriptor owned by `file`.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let mut pid = String::new();
        let _ = file.read_to_string(&mut pid);
        return Err(Error::Locked {
            path: what.to_path_buf(),
            pid: pid.trim().to_string(),
        });
    }
    file.set_len(0)
        .map_err(|e| Error::io("truncate lock file", path, e))?;
    write!(file, "{}", std::process::id()).map_err(|e| Error::io("write lock file", path, e))?;
    Ok(file)
}
