//! Shares: "a directory reachable by path or by `smb://` URL", behind one
//! type so that the replayer, the seed and the witness never care which
//! (the SMB client itself is the child module `smb`). Every operation names the share and file in its error.
//!
//! Writes are atomic from a reader's point of view: `write_atomic` writes a
//! temporary name, syncs it and renames it, so a reader sees either nothing
//! or the whole file.

pub mod smb;

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};

pub use self::smb::Encrypt;
use self::smb::{SmbShare, SmbUrl};
use crate::error::{Error, Result};

/// One job's outcome in `Share::fetch_many`: the size and what `check`
/// said, `None` when the share does not hold the file.
pub type Fetch<R> = Result<Option<(u64, R)>>;

/// Suffix of files being written; readers ignore them.
pub const TEMP_SUFFIX: &str = ".part";

/// A place where a node publishes files for its peers.
#[derive(Clone, Debug)]
pub enum Share {
    /// A local (or mounted) directory.
    Dir(PathBuf),
    /// An SMB share (`smb://[user@]host[:port]/share[/path]`).
    Smb(std::sync::Arc<SmbShare>),
}

impl PartialEq for Share {
    fn eq(&self, other: &Share) -> bool {
        match (self, other) {
            (Share::Dir(a), Share::Dir(b)) => a == b,
            (Share::Smb(a), Share::Smb(b)) => a.url == b.url,
            _ => false,
        }
    }
}

/// How to reach SMB shares: the password and the policies. Only used for
/// `smb://` specs.
#[derive(Clone, Debug, Default)]
pub struct SmbOptions {
    /// A file holding the password (owner-only); `LOGSHIP_SMB_PASSWORD` wins,
    /// unless `file_only`.
    pub password_file: Option<PathBuf>,
    /// The password is `password_file`'s, whatever the environment says:
    /// for a private server with its own user (the benchmarks').
    pub file_only: bool,
    pub encrypt: Encrypt,
    /// Per-call timeout (default 5 s).
    pub timeout: Option<std::time::Duration>,
}

impl Share {
    /// Parses the config form: a path, or an smb:// URL (with default SMB
    /// options: the password from `LOGSHIP_SMB_PASSWORD`).
    pub fn parse(spec: &str) -> Result<Share> {
        Self::open(spec, &SmbOptions::default())
    }

    /// Parses a path or an smb:// URL, with the SMB options to use.
    pub fn open(spec: &str, opts: &SmbOptions) -> Result<Share> {
        if spec.starts_with("smb://") {
            let url = SmbUrl::parse(spec)?;
            let password = if opts.file_only {
                self::smb::password_from_file(opts.password_file.as_deref())?
            } else {
                self::smb::password(opts.password_file.as_deref())?
            };
            let share = SmbShare::new(
                url,
                password,
                opts.encrypt,
                opts.timeout.unwrap_or(self::smb::DEFAULT_TIMEOUT),
            )?;
            return Ok(Share::Smb(std::sync::Arc::new(share)));
        }
        Ok(Share::Dir(PathBuf::from(spec)))
    }

    /// A short human name for messages.
    pub fn display(&self) -> String {
        match self {
            Share::Dir(p) => p.display().to_string(),
            Share::Smb(s) => s.url.to_string(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        match self {
            Share::Dir(p) => p.join(name),
            Share::Smb(s) => PathBuf::from(format!("{}/{name}", s.url)),
        }
    }

    /// True when the share itself can be reached.
    pub fn reachable(&self) -> bool {
        match self {
            Share::Dir(p) => p.is_dir(),
            Share::Smb(s) => s.reachable(),
        }
    }

    /// Names of the files in the share (not directories, not temporary files).
    pub fn list(&self) -> Result<Vec<String>> {
        match self {
            Share::Smb(s) => s.list(),
            Share::Dir(dir) => {
                let mut out = Vec::new();
                let entries = fs::read_dir(dir).map_err(|e| Error::io("list share", dir, e))?;
                for entry in entries {
                    let entry = entry.map_err(|e| Error::io("list share", dir, e))?;
                    let is_file = entry.file_type().map(|t| t.is_file()).unwrap_or(false);
                    if let Some(name) = entry.file_name().to_str()
                        && is_file
                        && !name.ends_with(TEMP_SUFFIX)
                    {
                        out.push(name.to_string());
                    }
                }
                out.sort();
                Ok(out)
            }
        }
    }

    /// The size of `name`; `None` when it does not exist.
    pub fn size(&self, name: &str) -> Result<Option<u64>> {
        if let Share::Smb(s) = self {
            return s.size(name);
        }
        let path = self.path(name);
        match fs::metadata(&path) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == ErrorKind::NotFound && self.reachable() => Ok(None),
            Err(e) => Err(Error::io("stat", path, e)),
        }
    }

    /// Whether `name` exists. An unreachable share is an error, not `false`.
    pub fn exists(&self, name: &str) -> Result<bool> {
        if let Share::Smb(s) = self {
            return s.exists(name);
        }
        let path = self.path(name);
        match fs::metadata(&path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                if self.reachable() {
                    Ok(false)
                } else {
                    Err(Error::io("reach share", self.path(""), e))
                }
            }
            Err(e) => Err(Error::io("stat", path, e)),
        }
    }

    /// Reads a whole file, refusing one larger than `max` bytes. `Ok(None)`
    /// when it does not exist.
    pub fn read(&self, name: &str, max: u64) -> Result<Option<Vec<u8>>> {
        let mut buf = Vec::new();
        Ok(self.read_into(name, max, &mut buf)?.map(|_| buf))
    }

    /// The first `n` bytes of `name` (fewer if it is shorter); `Ok(None)`
    /// when it does not exist.
    pub fn read_prefix(&self, name: &str, n: usize) -> Result<Option<Vec<u8>>> {
        if let Share::Smb(s) = self {
            return s.read_prefix(name, n);
        }
        let path = self.path(name);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound && self.reachable() => return Ok(None),
            Err(e) => return Err(Error::io("open", path, e)),
        };
        let mut buf = Vec::with_capacity(n);
        file.take(n as u64)
            .read_to_end(&mut buf)
            .map_err(|e| Error::io("read", &path, e))?;
        Ok(Some(buf))
    }

    /// Copies `name` to the local file `dest` (written under a temporary
    /// name, fsynced, renamed), calling `progress(copied, total)` as it goes.
    /// Returns the byte count; `Ok(None)` when `name` does not exist.
    pub fn copy_to(
        &self,
        name: &str,
        dest: &Path,
        progress: impl FnMut(u64, u64),
    ) -> Result<Option<u64>> {
        self.copy_impl(name, dest, progress)
    }

    /// Fetches several files at once on `lanes` threads (an SMB share uses
    /// one connection per lane, each with one request in flight, which
    /// keeps clear of the crate's credit leak on pipelined reads). Each job
    /// copies `name` to the local `dest` (no fsync, no temporary name, at
    /// most `max` bytes), then runs `check(job index,
    /// bytes)` on its lane while the bytes are at hand.
    ///
    /// `take(job index, result)` runs on the calling thread, in job order,
    /// while the lanes go on with later jobs: `Ok(None)` is a file the share
    /// does not hold. When it returns false no further job starts; jobs
    /// already running still reach `take`, so that it can clean up.
    pub fn fetch_many<R: Send>(
        &self,
        jobs: &[(String, PathBuf)],
        max: u64,
        lanes: usize,
        check: &(dyn Fn(usize, &[u8]) -> R + Sync),
        take: &mut dyn FnMut(usize, Fetch<R>) -> bool,
    ) {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let lanes = lanes.clamp(1, jobs.len().max(1));
        let next = AtomicUsize::new(0);
        let stop = AtomicBool::new(false);
        let run = |i: usize,
                   lane: &Option<std::result::Result<std::sync::Arc<SmbShare>, String>>,
                   buf: &mut Vec<u8>| {
            let (name, dest) = &jobs[i];
            let got = match lane {
                // A lane idle since the server dropped its connection fails
                // its first read: once more, on a fresh one.
                Some(Ok(s)) => match s.read_into(name, max, buf) {
                    Err(Error::Io { .. }) => s.read_into(name, max, buf),
                    r => r,
                },
                Some(Err(msg)) => Err(Error::io(
                    "open a connection for",
                    self.path(name),
                    std::io::Error::other(msg.clone()),
                )),
                None => self.read_into(name, max, buf),
            };
            got.and_then(|n| match n {
                None => Ok(None),
                Some(n) => {
                    if let Err(e) = fs::write(dest, &buf[..]) {
                        // A full disk: leave no half file taking space.
                        let _ = fs::remove_file(dest);
                        return Err(Error::io("write", dest, e));
                    }
                    Ok(Some((n, check(i, buf))))
                }
            })
        };
        if lanes == 1 {
            // One lane: on this thread, no hand-over.
            let smb = match self {
                Share::Smb(s) => Some(Ok(s.clone())),
                Share::Dir(_) => None,
            };
            let mut buf = Vec::new();
            for i in 0..jobs.len() {
                if !take(i, run(i, &smb, &mut buf)) {
                    break;
                }
            }
            return;
        }
        std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::channel();
            for lane in 0..lanes {
                let (tx, next, stop, run) = (tx.clone(), &next, &stop, &run);
                scope.spawn(move || {
                    // Connections of their own: this share's stays free for
                    // the calling thread (`take` may list the share).
                    let smb = match self {
                        Share::Smb(s) => Some(s.lane(lane + 1).map_err(|e| e.to_string())),
                        Share::Dir(_) => None,
                    };
                    let mut buf = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= jobs.len() {
                            break;
                        }
                        // A panic must not leave a hole that holds back
                        // every later result: it is this job's error.
                        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            run(i, &smb, &mut buf)
                        }))
                        .unwrap_or_else(|_| {
                            Err(Error::io(
                                "fetch",
                                jobs[i].1.clone(),
                                std::io::Error::other("the copy panicked"),
                            ))
                        });
                        if tx.send((i, r)).is_err() {
                            break;
                        }
                    }
                });
            }
            drop(tx);
            // Hand results over in job order.
            let mut waiting = std::collections::BTreeMap::new();
            let mut due = 0;
            for (i, r) in rx {
                waiting.insert(i, r);
                while let Some(r) = waiting.remove(&due) {
                    if !take(due, r) {
                        stop.store(true, Ordering::Relaxed);
                    }
                    due += 1;
                }
            }
        });
    }

    /// Reads `name` whole into `buf` (its capacity is reused), refusing a
    /// file larger than `max`; the size, or `None` when it does not exist.
    fn read_into(&self, name: &str, max: u64, buf: &mut Vec<u8>) -> Result<Option<u64>> {
        if let Share::Smb(s) = self {
            return s.read_into(name, max, buf);
        }
        let path = self.path(name);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound && self.reachable() => return Ok(None),
            Err(e) => return Err(Error::io("open", path, e)),
        };
        buf.clear();
        file.take(max + 1)
            .read_to_end(buf)
            .map_err(|e| Error::io("read", &path, e))?;
        if buf.len() as u64 > max {
            return Err(Error::TooLarge {
                size: buf.len(),
                max: max as usize,
            });
        }
        Ok(Some(buf.len() as u64))
    }

    fn copy_impl(
        &self,
        name: &str,
        dest: &Path,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<Option<u64>> {
        if let Share::Smb(s) = self {
            return s.copy_to_local(name, dest, &mut progress);
        }
        let path = self.path(name);
        let mut src = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound && self.reachable() => return Ok(None),
            Err(e) => return Err(Error::io("open", path, e)),
        };
        let total = src
            .metadata()
            .map_err(|e| Error::io("stat", &path, e))?
            .len();
        let temp = temp_name(dest);
        let mut out = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temp)
            .map_err(|e| Error::io("create", &temp, e))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut copied = 0u64;
        loop {
            let n = src
                .read(&mut buf)
                .map_err(|e| Error::io("read", &path, e))?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n])
                .map_err(|e| Error::io("write", &temp, e))?;
            copied += n as u64;
            progress(copied, total);
        }
        out.sync_all().map_err(|e| Error::io("fsync", &temp, e))?;
        drop(out);
        fs::rename(&temp, dest).map_err(|e| Error::io("rename", &temp, e))?;
        if let Some(parent) = dest.parent() {
            crate::log::sync_dir(parent)?;
        }
        Ok(Some(copied))
    }

    /// Uploads the local file `src` as `name` (temporary name, fsync, rename).
    pub fn upload(&self, src: &Path, name: &str) -> Result<u64> {
        match self {
            Share::Smb(s) => {
                let bytes = fs::read(src).map_err(|e| Error::io("read", src, e))?;
                s.write_atomic(name, &bytes)?;
                Ok(bytes.len() as u64)
            }
            Share::Dir(dir) => {
                let dest = dir.join(name);
                let temp = temp_name(&dest);
                let n = fs::copy(src, &temp).map_err(|e| Error::io("copy to share", &temp, e))?;
                File::open(&temp)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| Error::io("fsync", &temp, e))?;
                fs::rename(&temp, &dest).map_err(|e| Error::io("rename", &temp, e))?;
                crate::log::sync_dir(dir)?;
                Ok(n)
            }
        }
    }

    /// Writes `name` atomically: a temporary name, fsync, rename, directory fsync.
    pub fn write_atomic(&self, name: &str, bytes: &[u8]) -> Result<()> {
        match self {
            Share::Dir(dir) => write_atomic(&dir.join(name), bytes),
            Share::Smb(s) => s.write_atomic(name, bytes),
        }
    }

    /// Deletes `name`; a missing file is not an error.
    pub fn remove(&self, name: &str) -> Result<()> {
        if let Share::Smb(s) = self {
            return s.remove(name);
        }
        let path = self.path(name);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("delete", path, e)),
        }
    }
}

fn temp_name(dest: &Path) -> PathBuf {
    let mut s = dest.as_os_str().to_owned();
    s.push(TEMP_SUFFIX);
    PathBuf::from(s)
}

/// An exclusive lock taken on a share (see `Share::try_lock`); released
/// when dropped, or when the holder dies.
#[derive(Debug)]
pub enum ShareLock {
    /// `flock` on a file in the directory (released by the kernel when the
    /// process dies), and the path it was taken on.
    Dir(File, PathBuf),
    Smb(self::smb::SmbLock),
}

impl ShareLock {
    /// Proves the lock is still held: over SMB, a request on the lock's
    /// handle answered by the server; in a directory, the locked file is
    /// still the one at the lock's path (an operator may have deleted it).
    pub fn confirm(&self) -> Result<()> {
        match self {
            ShareLock::Smb(l) => l.confirm(),
            ShareLock::Dir(file, path) => {
                use std::os::unix::fs::MetadataExt;
                let held = file
                    .metadata()
                    .map_err(|e| Error::io("stat lock", path, e))?;
                let now = fs::metadata(path).map_err(|e| Error::io("stat lock", path, e))?;
                if held.ino() == now.ino() && held.dev() == now.dev() {
                    Ok(())
                } else {
                    Err(Error::io(
                        "confirm lock",
                        path,
                        std::io::Error::other("the lock file was replaced"),
                    ))
                }
            }
        }
    }
}

impl Share {
    /// Takes the exclusive lock `name` if no one holds it (`Ok(None)` if
    /// someone does). The witness builds on it.
    pub fn try_lock(&self, name: &str) -> Result<Option<ShareLock>> {
        match self {
            Share::Smb(s) => Ok(s.try_lock(name)?.map(ShareLock::Smb)),
            Share::Dir(dir) => {
                let path = dir.join(name);
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&path)
                    .map_err(|e| Error::io("open lock", &path, e))?;
                // SAFETY: flock on a valid descriptor owned by `file`.
                let rc = unsafe {
                    libc::flock(
                        std::os::fd::AsRawFd::as_raw_fd(&file),
                        libc::LOCK_EX | libc::LOCK_NB,
                    )
                };
                if rc == 0 {
                    Ok(Some(ShareLock::Dir(file, path)))
                } else {
                    let e = std::io::Error::last_os_error();
                    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                        Ok(None)
                    } else {
                        Err(Error::io("lock", &path, e))
                    }
                }
            }
        }
    }

    /// Creates `name` holding `bytes` unless it already exists (`Ok(false)`
    /// then). Only one of several concurrent creators wins, and readers see
    /// the whole file or nothing: the witness's epochs rest on it.
    pub fn create_new(&self, name: &str, bytes: &[u8]) -> Result<bool> {
        match self {
            Share::Smb(s) => s.create_new(name, bytes),
            Share::Dir(dir) => {
                let path = dir.join(name);
                let temp = dir.join(format!("{name}.{}{TEMP_SUFFIX}", std::process::id()));
                let mut f = File::create(&temp).map_err(|e| Error::io("create", &temp, e))?;
                f.write_all(bytes)
                    .and_then(|_| f.sync_all())
                    .map_err(|e| Error::io("write", &temp, e))?;
                drop(f);
                // link(2) fails when the name exists: the exclusive step.
                let r = fs::hard_link(&temp, &path);
                let _ = fs::remove_file(&temp);
                match r {
                    Ok(()) => {
                        crate::log::sync_dir(dir)?;
                        Ok(true)
                    }
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
                    Err(e) => Err(Error::io("create", path, e)),
                }
            }
        }
    }
}

/// Writes a local file atomically: temporary name, fsync, rename, directory fsync.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let temp = temp_name(path);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temp)
        .map_err(|e| Error::io("create", &temp, e))?;
    f.write_all(bytes)
        .map_err(|e| Error::io("write", &temp, e))?;
    f.sync_all().map_err(|e| Error::io("fsync", &temp, e))?;
    drop(f);
    fs::rename(&temp, path).map_err(|e| Error::io("rename", &temp, e))?;
    if let Some(parent) = path.parent() {
        crate::log::sync_dir(parent)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_share_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let share = Share::Dir(tmp.path().to_path_buf());
        assert!(share.reachable());
        share.write_atomic("a.json", b"{}").unwrap();
        std::fs::write(tmp.path().join("b.log.part"), b"half").unwrap();
        assert_eq!(share.list().unwrap(), vec!["a.json"]);
        assert_eq!(share.read("a.json", 10).unwrap().unwrap(), b"{}");
        assert!(matches!(
            share.read("a.json", 1),
            Err(Error::TooLarge { .. })
        ));
        assert_eq!(share.read("nope", 10).unwrap(), None);
        let dest = tmp.path().join("copy");
        let mut seen = 0;
        assert_eq!(
            share.copy_to("a.json", &dest, |c, _| seen = c).unwrap(),
            Some(2)
        );
        assert_eq!(seen, 2);
        assert_eq!(std::fs::read(&dest).unwrap(), b"{}");
        share.remove("a.json").unwrap();
        share.remove("a.json").unwrap();
        assert!(!share.exists("a.json").unwrap());
    }

    #[test]
    fn an_unreachable_share_is_an_error_not_an_empty_one() {
        let share = Share::Dir(PathBuf::from("/nonexistent/share"));
        assert!(!share.reachable());
        assert!(share.exists("x").is_err());
        assert!(share.read("x", 10).is_err());
        assert!(share.list().is_err());
    }
}
