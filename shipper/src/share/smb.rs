//! SMB shares: `smb://[user@]host[:port]/share[/path]`, read and written
//! with the `smb` crate over a TCP transport of our own that sets
//! TCP_NODELAY (the crate's own leaves Nagle on and stalls every request by
//! ~40 ms). All SMB work runs on a private current-thread tokio runtime (the
//! crate's directory listing can hang on a multi-thread one), every call has
//! our own timeout, and a failed or timed-out call drops the connection so
//! that the next call reconnects: the crate never reconnects by itself.
//!
//! The password never comes from the URL or the command line: it is given
//! by the caller (from `LOGSHIP_SMB_PASSWORD` or an owner-only file, see
//! `password`), kept out of `Debug`, and never logged.

use std::fmt;
use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use smb::transport::{IoVec, SmbTransport, SmbTransportRead, SmbTransportWrite, TransportError};
use smb::{
    Connection, ConnectionConfig, CreateOptions, FileAccessMask, FileAttributes, FileCreateArgs,
    GetLen, ReadAt, Session, Tree, UncPath, WriteAt,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::{Error, Result};

/// Default for `SmbShare::new`'s timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes per read or write request (the crate does not split requests).
const CHUNK: usize = 1 << 20;
/// Reads in flight on one connection in a streamed copy: few, since the
/// crate loses credits on a server's interim replies, which a long queue
/// of reads invites (see the design notes on SMB).
const STREAM_IN_FLIGHT: usize = 2;
/// Reconnections a streamed copy makes before it gives up.
const STREAM_RETRIES: u32 = 3;

/// Receives a streamed copy's spans: the bytes, bytes so far, total.
type SpanSink<'a> = dyn FnMut(&[u8], u64, u64) -> Result<()> + 'a;

/// One step of a streamed copy.
enum Step {
    Opened(Arc<smb::File>, u64),
    Read(Vec<u8>),
}
/// STATUS_OBJECT_NAME_NOT_FOUND, STATUS_NO_SUCH_FILE, STATUS_OBJECT_PATH_NOT_FOUND.
const NOT_FOUND: [u32; 3] = [0xC000_0034, 0xC000_000F, 0xC000_003A];

/// Whether the SMB session must encrypt.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Encrypt {
    /// Refuse a server that cannot encrypt.
    Required,
    /// Encrypt when the server can (the default).
    #[default]
    Preferred,
    /// Sign only.
    Off,
}

impl Encrypt {
    pub fn parse(s: &str) -> Option<Encrypt> {
        match s {
            "required" => Some(Encrypt::Required),
            "preferred" => Some(Encrypt::Preferred),
            "off" => Some(Encrypt::Off),
            _ => None,
        }
    }
}

/// A secret that prints as `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    pub fn new(s: String) -> Password {
        Password(s)
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// The SMB password: `LOGSHIP_SMB_PASSWORD`, else the first line of
/// `file`, which only its owner may read (mode 0600 or 0400, else refused).
pub fn password(file: Option<&Path>) -> Result<Password> {
    if let Ok(p) = std::env::var("LOGSHIP_SMB_PASSWORD") {
        return Ok(Password(p));
    }
    password_from_file(file)
}

/// The SMB password from `file` alone (the environment is not read).
pub fn password_from_file(file: Option<&Path>) -> Result<Password> {
    let Some(file) = file else {
        return Err(Error::NoSmbPassword);
    };
    let text = crate::secret::read_private(file, "password file")?;
    Ok(Password(text.lines().next().unwrap_or("").to_string()))
}

/// The parts of an `smb://` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmbUrl {
    pub user: String,
    pub host: String,
    pub port: u16,
    pub share: String,
    /// A directory inside the share ("" for its root), with `/` separators.
    pub path: String,
}

impl SmbUrl {
    /// Parses `smb://[user@]host[:port]/share[/path]`.
    pub fn parse(url: &str) -> Result<SmbUrl> {
        let bad = |why: &'static str| Error::BadShareUrl {
            url: url.to_string(),
            why,
        };
        let rest = url
            .strip_prefix("smb://")
            .ok_or_else(|| bad("not an smb:// URL"))?;
        let (authority, path) = rest.split_once('/').ok_or_else(|| bad("no share name"))?;
        let (user, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (u.to_string(), h),
            None => ("guest".to_string(), authority),
        };
        if user.contains(':') {
            return Err(bad(
                "a password in the URL is refused: use LOGSHIP_SMB_PASSWORD or a password file",
            ));
        }
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().map_err(|_| bad("bad port"))?),
            None => (hostport.to_string(), 445),
        };
        let mut parts = path.splitn(2, '/');
        let share = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").trim_matches('/').to_string();
        if host.is_empty() || share.is_empty() {
            return Err(bad("empty host or share"));
        }
        if path.split('/').any(|c| c == "..") {
            return Err(bad("a path outside the share"));
        }
        Ok(SmbUrl {
            user,
            host,
            port,
            share,
            path,
        })
    }
}

impl fmt::Display for SmbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "smb://{}@{}:{}/{}",
            self.user, self.host, self.port, self.share
        )?;
        if !self.path.is_empty() {
            write!(f, "/{}", self.path)?;
        }
        Ok(())
    }
}

/// An SMB share with its own runtime and a connection made on demand.
pub struct SmbShare {
    pub url: SmbUrl,
    password: Password,
    encrypt: Encrypt,
    timeout: Duration,
    rt: tokio::runtime::Runtime,
    conn: Mutex<Option<Arc<Conn>>>,
    /// Extra connections for parallel transfers (`lane`).
    lanes: Mutex<Vec<Arc<SmbShare>>>,
}

impl fmt::Debug for SmbShare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmbShare")
            .field("url", &self.url.to_string())
            .field("encrypt", &self.encrypt)
            .finish_non_exhaustive()
    }
}

struct Conn {
    _connection: Arc<Connection>,
    _session: Session,
    tree: Arc<Tree>,
}

impl Drop for SmbShare {
    fn drop(&mut self) {
        self.drop_connection();
    }
}

fn smb_status(e: &smb::Error) -> Option<u32> {
    match e {
        smb::Error::ReceivedErrorMessage(status, _) => Some(*status),
        smb::Error::UnexpectedMessageStatus(status) => Some(*status),
        _ => None,
    }
}

fn is_not_found(e: &smb::Error) -> bool {
    smb_status(e).is_some_and(|s| NOT_FOUND.contains(&s))
}

impl SmbShare {
    pub fn new(
        url: SmbUrl,
        password: Password,
        encrypt: Encrypt,
        timeout: Duration,
    ) -> Result<SmbShare> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::io("start the SMB runtime", PathBuf::from(url.to_string()), e))?;
        Ok(SmbShare {
            url,
            password,
            encrypt,
            timeout,
            rt,
            conn: Mutex::new(None),
            lanes: Mutex::new(Vec::new()),
        })
    }

    fn err(&self, op: &'static str, name: &str, msg: String) -> Error {
        let path = if name.is_empty() {
            PathBuf::from(self.url.to_string())
        } else {
            PathBuf::from(format!("{}/{name}", self.url))
        };
        Error::Io {
            path,
            op,
            source: std::io::Error::other(msg),
        }
    }

    /// The share-relative path of `name`.
    fn rel(&self, name: &str) -> String {
        if self.url.path.is_empty() {
            name.to_string()
        } else if name.is_empty() {
            self.url.path.clone()
        } else {
            format!("{}/{name}", self.url.path)
        }
    }

    async fn connect(&self) -> std::result::Result<Conn, String> {
        let addr: SocketAddr = (self.url.host.as_str(), self.url.port)
            .to_socket_addrs()
            .map_err(|e| format!("resolve {}: {e}", self.url.host))?
            .next()
            .ok_or_else(|| format!("resolve {}: no address", self.url.host))?;
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let transport = NoDelayTcp { stream, addr };
        let mut cfg = ConnectionConfig {
            port: Some(self.url.port),
            timeout: Some(self.timeout),
            encryption_mode: match self.encrypt {
                Encrypt::Required => smb::connection::EncryptionMode::Required,
                Encrypt::Preferred => smb::connection::EncryptionMode::Allowed,
                Encrypt::Off => smb::connection::EncryptionMode::Disabled,
            },
            ..Default::default()
        };
        cfg.auth_methods.ntlm = true;
        cfg.auth_methods.kerberos = false;
        let connection = Arc::new(
            Connection::from_transport(
                Box::new(transport),
                &self.url.host,
                smb::Guid::generate(),
                cfg,
            )
            .await
            .map_err(|e| format!("negotiate with {addr}: {e}"))?,
        );
        let identity = sspi::AuthIdentity {
            username: sspi::Username::parse(&self.url.user)
                .map_err(|e| format!("user name {:?}: {e}", self.url.user))?,
            password: sspi::Secret::from(self.password.0.clone()),
        };
        let session = connection
            .authenticate(identity)
            .await
            .map_err(|e| format!("log on as {}: {e}", self.url.user))?;
        let unc = UncPath::new(&self.url.host)
            .and_then(|u| u.with_share(&self.url.share))
            .map_err(|e| format!("share name {:?}: {e}", self.url.share))?;
        let tree = Arc::new(
            session
                .tree_connect(&unc)
                .await
                .map_err(|e| format!("connect to share {:?}: {e}", self.url.share))?,
        );
        Ok(Conn {
            _connection: connection,
            _session: session,
            tree,
        })
    }

    /// Runs `f` with a tree connection, under our timeout; on any transport
    /// failure the connection is dropped so the next call reconnects.
    fn call<T>(
        &self,
        op: &'static str,
        name: &str,
        f: impl for<'a> FnOnce(&'a Tree) -> BoxFuture<'a, std::result::Result<T, smb::Error>>,
    ) -> Result<std::result::Result<T, smb::Error>> {
        // The crate's handles spawn on the runtime when dropped: drop them
        // all inside its context.
        let _inside = self.rt.enter();
        let existing = self.conn.lock().expect("smb conn lock").clone();
        let conn = match existing {
            Some(c) => c,
            None => {
                let c = self
                    .rt
                    .block_on(async { tokio::time::timeout(self.timeout, self.connect()).await })
                    .map_err(|_| self.err(op, "", format!("no answer within {:?}", self.timeout)))?
                    .map_err(|m| self.err(op, "", m))?;
                let c = Arc::new(c);
                *self.conn.lock().expect("smb conn lock") = Some(c.clone());
                c
            }
        };
        let tree = conn.tree.clone();
        let r = self
            .rt
            .block_on(async { tokio::time::timeout(self.timeout * 4, f(&tree)).await });
        match r {
            Err(_) => {
                self.drop_connection();
                Err(self.err(op, name, format!("no answer within {:?}", self.timeout * 4)))
            }
            Ok(Err(e)) if smb_status(&e).is_none() => {
                // Not a status from the server: the connection is suspect.
                self.drop_connection();
                Err(self.err(op, name, e.to_string()))
            }
            Ok(r) => Ok(r),
        }
    }

    fn drop_connection(&self) {
        let _inside = self.rt.enter();
        let old = self.conn.lock().expect("smb conn lock").take();
        drop(old);
    }

    /// True when the share can be reached and logged on to.
    pub fn reachable(&self) -> bool {
        self.call("reach share", "", |_| async { Ok(()) }.boxed())
            .is_ok()
    }

    pub fn exists(&self, name: &str) -> Result<bool> {
        let rel = self.rel(name);
        match self.call("stat", name, move |t| {
            async move {
                let args = FileCreateArgs::make_open_existing(
                    FileAccessMask::new().with_file_read_attributes(true),
                );
                let r = t.create(&rel, &args).await?;
                close(r).await
            }
            .boxed()
        })? {
            Ok(()) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(self.err("stat", name, e.to_string())),
        }
    }

    /// The size of `name`; `None` when it does not exist.
    pub fn size(&self, name: &str) -> Result<Option<u64>> {
        let rel = self.rel(name);
        match self.call("stat", name, move |t| {
            async move {
                let args = FileCreateArgs::make_open_existing(
                    FileAccessMask::new().with_generic_read(true),
                );
                let file = t.create(&rel, &args).await?.unwrap_file();
                let len = file.get_len().await?;
                file.close().await?;
                Ok(len)
            }
            .boxed()
        })? {
            Ok(len) => Ok(Some(len)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(self.err("stat", name, e.to_string())),
        }
    }

    /// Reads `name` whole, refusing more than `max` bytes; `None` when missing.
    pub fn read(&self, name: &str, max: u64) -> Result<Option<Vec<u8>>> {
        let mut out = Vec::new();
        Ok(self.download(name, max, None, &mut out)?.map(|_| out))
    }

    /// Reads `name` whole into `buf` (its capacity is reused), refusing
    /// more than `max` bytes; returns the size, `None` when missing.
    pub fn read_into(&self, name: &str, max: u64, buf: &mut Vec<u8>) -> Result<Option<u64>> {
        self.download(name, max, None, buf)
    }

    pub fn read_prefix(&self, name: &str, n: usize) -> Result<Option<Vec<u8>>> {
        let mut out = Vec::new();
        Ok(self
            .download(name, u64::MAX, Some(n as u64), &mut out)?
            .map(|_| out))
    }

    /// Reads `name` (its first `limit` bytes when given) into `out`;
    /// returns the file's size, or `None` when the file does not exist.
    fn download(
        &self,
        name: &str,
        max: u64,
        limit: Option<u64>,
        out: &mut Vec<u8>,
    ) -> Result<Option<u64>> {
        let rel = self.rel(name);
        // The buffer travels into the request and back, keeping its pages
        // (and its old bytes, overwritten below: no zero-fill on reuse).
        let mut data = std::mem::take(out);
        let r = self.call("read", name, move |t| {
            async move {
                let args = FileCreateArgs::make_open_existing(
                    FileAccessMask::new().with_generic_read(true),
                );
                let file = t.create(&rel, &args).await?.unwrap_file();
                let len = file.get_len().await?;
                let want = limit.map_or(len, |l| l.min(len));
                if want <= max {
                    // Read straight into the result, a request per chunk.
                    if data.len() < want as usize {
                        data.resize(want as usize, 0);
                    }
                    data.truncate(want as usize);
                    let mut off = 0usize;
                    while off < data.len() {
                        let end = (off + CHUNK).min(data.len());
                        let got = file.read_at(&mut data[off..end], off as u64).await?;
                        if got == 0 {
                            break;
                        }
                        off += got;
                    }
                    data.truncate(off);
                }
                if want > max {
                    data.clear();
                }
                file.close().await?;
                Ok((len, data))
            }
            .boxed()
        })?;
        match r {
            Ok((len, data)) => {
                *out = data;
                let want = limit.map_or(len, |l| l.min(len));
                if want > max {
                    return Err(Error::TooLarge {
                        size: len as usize,
                        max: max as usize,
                    });
                }
                if (out.len() as u64) < want {
                    return Err(self.err(
                        "read",
                        name,
                        format!("short read: {} of {want} bytes", out.len()),
                    ));
                }
                Ok(Some(len))
            }
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(self.err("read", name, e.to_string())),
        }
    }

    /// Copies `name` to the local `dest` (temporary name, fsync, rename,
    /// directory fsync), streaming: `STREAM_IN_FLIGHT` reads of a chunk each in
    /// flight, each span written out as it arrives and reported to
    /// `progress(done, total)`, so that memory stays small whatever the file
    /// (a seed is the whole database). A dropped connection is made again
    /// and the copy resumes where it stopped, a few times; a file that
    /// changes size meanwhile is an error.
    pub fn copy_to_local(
        &self,
        name: &str,
        dest: &Path,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Option<u64>> {
        let mut temp = dest.as_os_str().to_owned();
        temp.push(super::TEMP_SUFFIX);
        let temp = PathBuf::from(temp);
        let mut out = std::fs::File::create(&temp).map_err(|e| Error::io("create", &temp, e))?;
        let r = self.stream(name, u64::MAX, &mut |span, done, total| {
            out.write_all(span)
                .map_err(|e| Error::io("write", &temp, e))?;
            progress(done, total);
            Ok(())
        });
        let n = match r {
            Ok(Some(n)) => n,
            other => {
                let _ = std::fs::remove_file(&temp);
                return other;
            }
        };
        let synced = out.sync_all();
        drop(out);
        if let Err(e) = synced.and_then(|()| std::fs::rename(&temp, dest)) {
            let _ = std::fs::remove_file(&temp);
            return Err(Error::io("fsync and rename", &temp, e));
        }
        if let Some(parent) = dest.parent() {
            crate::log::sync_dir(parent)?;
        }
        Ok(Some(n))
    }

    /// Reads `name` from start to end, handing each span to `sink(span,
    /// done, total)`; the size, or `None` when the file does not exist.
    fn stream(&self, name: &str, max: u64, sink: &mut SpanSink<'_>) -> Result<Option<u64>> {
        // The crate's handles spawn on the runtime when dropped: drop ours
        // inside its context.
        let _inside = self.rt.enter();
        let rel = self.rel(name);
        let mut open: Option<Arc<smb::File>> = None;
        let mut total: Option<u64> = None;
        let mut done = 0u64;
        let mut failures = 0u32;
        loop {
            let step = match &open {
                None => {
                    let rel = rel.clone();
                    self.call("open", name, move |t| {
                        async move {
                            let args = FileCreateArgs::make_open_existing(
                                FileAccessMask::new().with_generic_read(true),
                            );
                            let file = t.create(&rel, &args).await?.unwrap_file();
                            let len = file.get_len().await?;
                            Ok(Step::Opened(Arc::new(file), len))
                        }
                        .boxed()
                    })
                }
                Some(_) if total.is_some_and(|t| done >= t) => break,
                Some(file) => {
                    let file = file.clone();
                    let span = (total.unwrap_or(0) - done).min((CHUNK * STREAM_IN_FLIGHT) as u64);
                    self.call("read", name, move |_| {
                        async move {
                            let mut buf = vec![0u8; span as usize];
                            let got =
                                futures_util::future::try_join_all(
                                    buf.chunks_mut(CHUNK).enumerate().map(|(i, chunk)| {
                                        let file = &file;
                                        async move {
                                            file.read_at(chunk, done + (i * CHUNK) as u64).await
                                        }
                                    }),
                                )
                                .await?;
                            // Keep what arrived in one piece from the start.
                            let mut n = 0;
                            for (i, g) in got.iter().enumerate() {
                                n = i * CHUNK + g;
                                if *g < CHUNK {
                                    break;
                                }
                            }
                            buf.truncate(n.min(span as usize));
                            Ok(Step::Read(buf))
                        }
                        .boxed()
                    })
                }
            };
            match step {
                Ok(Ok(Step::Opened(file, len))) => {
                    if len > max {
                        self.close_quietly(&file);
                        return Err(Error::TooLarge {
                            size: len as usize,
                            max: max as usize,
                        });
                    }
                    if total.is_some_and(|t| t != len) {
                        self.close_quietly(&file);
                        return Err(self.err(
                            "read",
                            name,
                            format!(
                                "the file changed size during the copy ({} bytes, then {len})",
                                total.unwrap_or(0)
                            ),
                        ));
                    }
                    total = Some(len);
                    open = Some(file);
                }
                Ok(Ok(Step::Read(span))) => {
                    let len = total.unwrap_or(0);
                    if span.is_empty() {
                        if let Some(f) = open.take() {
                            self.close_quietly(&f);
                        }
                        return Err(self.err(
                            "read",
                            name,
                            format!("short read: the file ended at {done} of {len} bytes"),
                        ));
                    }
                    done += span.len() as u64;
                    failures = 0;
                    sink(&span, done, len)?;
                }
                Ok(Err(e)) if is_not_found(&e) && total.is_none() => return Ok(None),
                Ok(Err(e)) => {
                    if let Some(f) = open.take() {
                        self.close_quietly(&f);
                    }
                    return Err(self.err("read", name, e.to_string()));
                }
                Err(e) => {
                    // The connection is gone (`call` dropped it): open the
                    // file again on a new one and go on from `done`.
                    open = None;
                    failures += 1;
                    if failures > STREAM_RETRIES {
                        return Err(e);
                    }
                    tracing::warn!(file = %name, copied = done, error = %e, "SMB copy interrupted; reconnecting to resume");
                    std::thread::sleep(Duration::from_millis(200) * failures);
                }
            }
        }
        if let Some(f) = open {
            self.close_quietly(&f);
        }
        Ok(Some(done))
    }

    /// Closes a handle, ignoring errors (the server closes it with the
    /// connection anyway).
    fn close_quietly(&self, file: &Arc<smb::File>) {
        let _inside = self.rt.enter();
        let file = file.clone();
        let _ = self.call("close", "", move |_| {
            async move { file.close().await }.boxed()
        });
    }

    /// Connection `i` of a parallel transfer: 0 is this share's own; the
    /// others are independent connections (each with its own runtime),
    /// made on first use and kept for the next transfer. (`fetch_many`
    /// uses 1 and up, leaving 0 to its caller.)
    pub fn lane(self: &Arc<Self>, i: usize) -> Result<Arc<SmbShare>> {
        if i == 0 {
            return Ok(self.clone());
        }
        let mut lanes = self.lanes.lock().expect("smb lanes lock");
        while lanes.len() < i {
            lanes.push(Arc::new(SmbShare::new(
                self.url.clone(),
                self.password.clone(),
                self.encrypt,
                self.timeout,
            )?));
        }
        Ok(lanes[i - 1].clone())
    }

    /// Writes `name` atomically: `<name>.part`, then a rename that replaces.
    pub fn write_atomic(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let temp = format!("{name}{}", super::TEMP_SUFFIX);
        self.write_and_rename("write", name, &temp, bytes, true)?
            .map_err(|e| self.err("write", name, e.to_string()))
    }

    /// Writes `bytes` to `temp`, flushes, and renames it to `name`
    /// (replacing it or not); a temporary file whose rename failed is
    /// deleted.
    fn write_and_rename(
        &self,
        op: &'static str,
        name: &str,
        temp: &str,
        bytes: &[u8],
        replace: bool,
    ) -> Result<std::result::Result<(), smb::Error>> {
        let rel_temp = self.rel(temp);
        let rel_final = self.rel(name);
        let data = bytes.to_vec();
        self.call(op, name, move |t| {
            async move {
                let args =
                    FileCreateArgs::make_overwrite(FileAttributes::new(), CreateOptions::new());
                let file = t.create(&rel_temp, &args).await?.unwrap_file();
                let mut off = 0usize;
                while off < data.len() {
                    let end = (off + CHUNK).min(data.len());
                    let n = file.write_at(&data[off..end], off as u64).await?;
                    off += n.max(1);
                }
                file.flush().await.map_err(smb::Error::from)?;
                let renamed = file
                    .set_info(smb::FileRenameInformation {
                        replace_if_exists: replace.into(),
                        root_directory: 0,
                        file_name: rel_final.replace('/', "\\").as_str().into(),
                    })
                    .await;
                if renamed.is_err() {
                    let _ = file
                        .set_info(smb::FileDispositionInformation::default())
                        .await;
                }
                file.close().await?;
                renamed
            }
            .boxed()
        })
    }

    /// Deletes `name`; a missing file is not an error.
    pub fn remove(&self, name: &str) -> Result<()> {
        let rel = self.rel(name);
        let r = self.call("delete", name, move |t| {
            async move {
                let args =
                    FileCreateArgs::make_open_existing(FileAccessMask::new().with_delete(true));
                let file = t.create(&rel, &args).await?.unwrap_file();
                file.set_info(smb::FileDispositionInformation::default())
                    .await?;
                file.close().await
            }
            .boxed()
        })?;
        match r {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(self.err("delete", name, e.to_string())),
        }
    }

    /// Names of the files in the share's directory (not `.part` files).
    pub fn list(&self) -> Result<Vec<String>> {
        let rel = self.rel("");
        let r = self.call("list", "", move |t| {
            async move {
                use futures_util::StreamExt;
                let args = FileCreateArgs::make_open_existing(
                    FileAccessMask::new().with_generic_read(true),
                );
                let dir = Arc::new(t.create(&rel, &args).await?.unwrap_dir());
                let mut names = Vec::new();
                {
                    let mut s =
                        smb::Directory::query::<smb::FileDirectoryInformation>(&dir, "*").await?;
                    while let Some(item) = s.next().await {
                        let item = match item {
                            Err(e) if is_not_found(&e) => break,
                            r => r?,
                        };
                        if item.file_attributes.directory() {
                            continue;
                        }
                        names.push(item.file_name.to_string());
                    }
                }
                dir.close().await?;
                Ok(names)
            }
            .boxed()
        })?;
        let mut names = r.map_err(|e| self.err("list", "", e.to_string()))?;
        names.retain(|n| !n.ends_with(super::TEMP_SUFFIX));
        names.sort();
        Ok(names)
    }
}

/// An exclusive lock on an SMB share: a file made with create-new and
/// delete-on-close, held open. The crate cannot open a file exclusively, but
/// only one opener can create a file that does not exist, and the server
/// deletes it when the handle dies: at once when the holder closes or its
/// process dies (the TCP connection closes), and after the server's TCP
/// keepalive gives up on a partitioned holder (about 5 s with the settings
/// `share-config` prints). The holder learns of a partition only by failing
/// to reach the server: it must fence itself sooner than that bound.
pub struct SmbLock {
    share: Arc<SmbShare>,
    name: String,
    file: Option<smb::File>,
}

impl fmt::Debug for SmbLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmbLock")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Drop for SmbLock {
    fn drop(&mut self) {
        // Entered first, so that it is left last: the handle (and with it,
        // perhaps, the last reference to its tree and session) must drop
        // inside the runtime, because the crate spawns on drop.
        let _inside = self.share.rt.enter();
        if let Some(file) = self.file.take() {
            let timeout = self.share.timeout;
            let _ = self
                .share
                .rt
                .block_on(async { tokio::time::timeout(timeout, file.close()).await });
            drop(file);
        }
    }
}

/// STATUS_OBJECT_NAME_COLLISION: someone else holds the lock.
const NAME_COLLISION: u32 = 0xC000_0035;

impl SmbShare {
    /// Takes the lock `name` if no one holds it; `Ok(None)` if someone does.
    pub fn try_lock(self: &Arc<Self>, name: &str) -> Result<Option<SmbLock>> {
        let rel = self.rel(name);
        let r = self.call("lock", name, move |t| {
            async move {
                let args = FileCreateArgs {
                    disposition: smb::CreateDisposition::Create,
                    attributes: FileAttributes::new(),
                    options: CreateOptions::new().with_delete_on_close(true),
                    desired_access: FileAccessMask::new()
                        .with_generic_read(true)
                        .with_generic_write(true)
                        .with_delete(true),
                };
                Ok(t.create(&rel, &args).await?.unwrap_file())
            }
            .boxed()
        })?;
        match r {
            Ok(file) => Ok(Some(SmbLock {
                share: self.clone(),
                name: name.to_string(),
                file: Some(file),
            })),
            Err(e) if smb_status(&e) == Some(NAME_COLLISION) => Ok(None),
            Err(e) => Err(self.err("lock", name, e.to_string())),
        }
    }

    /// Creates `name` holding `bytes` unless it exists (`Ok(false)` then):
    /// a temporary name, then a rename that never replaces, so readers see
    /// the whole file or nothing and only one creator wins.
    pub fn create_new(&self, name: &str, bytes: &[u8]) -> Result<bool> {
        let temp = format!("{name}.{}{}", std::process::id(), super::TEMP_SUFFIX);
        match self.write_and_rename("create", name, &temp, bytes, false)? {
            Ok(()) => Ok(true),
            Err(e) if smb_status(&e) == Some(NAME_COLLISION) => Ok(false),
            Err(e) => Err(self.err("create", name, e.to_string())),
        }
    }
}

impl SmbLock {
    /// Proves the server still holds the lock: a request on its handle
    /// succeeds only while the handle is open on the server.
    pub fn confirm(&self) -> Result<()> {
        let Some(file) = &self.file else {
            return Err(self
                .share
                .err("confirm lock", &self.name, "released".into()));
        };
        let _inside = self.share.rt.enter();
        let r = self.share.rt.block_on(async {
            tokio::time::timeout(
                self.share.timeout,
                file.query_info::<smb::FileStandardInformation>(),
            )
            .await
        });
        match r {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(self.share.err("confirm lock", &self.name, e.to_string())),
            Err(_) => Err(self.share.err(
                "confirm lock",
                &self.name,
                format!("no answer within {:?}", self.share.timeout),
            )),
        }
    }
}

async fn close(r: smb::Resource) -> std::result::Result<(), smb::Error> {
    match r {
        smb::Resource::File(f) => f.close().await,
        smb::Resource::Directory(d) => d.close().await,
        smb::Resource::Pipe(p) => p.close().await,
    }
}

/// A TCP transport with TCP_NODELAY that writes each message in one write.
struct NoDelayTcp {
    stream: tokio::net::TcpStream,
    addr: SocketAddr,
}

fn transport_err(e: std::io::Error) -> TransportError {
    use std::io::ErrorKind::*;
    match e.kind() {
        UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe | NotConnected => {
            TransportError::NotConnected
        }
        _ => TransportError::IoError(e),
    }
}

impl SmbTransport for NoDelayTcp {
    fn connect<'a>(
        &'a mut self,
        _server: &'a str,
        _address: SocketAddr,
    ) -> BoxFuture<'a, smb::transport::error::Result<()>> {
        // Connected before `Connection::from_transport`, with our timeout.
        async { Ok(()) }.boxed()
    }

    fn default_port(&self) -> u16 {
        445
    }

    fn split(
        self: Box<Self>,
    ) -> smb::transport::error::Result<(Box<dyn SmbTransportRead>, Box<dyn SmbTransportWrite>)>
    {
        let (r, w) = self.stream.into_split();
        Ok((Box::new(Reader(r)), Box::new(Writer(w))))
    }

    fn remote_address(&self) -> smb::transport::error::Result<SocketAddr> {
        Ok(self.addr)
    }
}

impl SmbTransportRead for NoDelayTcp {
    fn receive_exact<'a>(
        &'a mut self,
        out: &'a mut [u8],
    ) -> BoxFuture<'a, smb::transport::error::Result<()>> {
        async move {
            self.stream
                .read_exact(out)
                .await
                .map(|_| ())
                .map_err(transport_err)
        }
        .boxed()
    }
}

impl SmbTransportWrite for NoDelayTcp {
    fn send_raw<'a>(
        &'a mut self,
        buf: &'a [u8],
    ) -> BoxFuture<'a, smb::transport::error::Result<()>> {
        async move { self.stream.write_all(buf).await.map_err(transport_err) }.boxed()
    }

    fn send<'a>(&'a mut self, data: &'a IoVec) -> BoxFuture<'a, smb::transport::error::Result<()>> {
        async move {
            self.stream
                .write_all(&frame(data))
                .await
                .map_err(transport_err)
        }
        .boxed()
    }
}

struct Reader(tokio::net::tcp::OwnedReadHalf);
struct Writer(tokio::net::tcp::OwnedWriteHalf);

impl SmbTransportRead for Reader {
    fn receive_exact<'a>(
        &'a mut self,
        out: &'a mut [u8],
    ) -> BoxFuture<'a, smb::transport::error::Result<()>> {
        async move {
            self.0
                .read_exact(out)
                .await
                .map(|_| ())
                .map_err(transport_err)
        }
        .boxed()
    }
}

impl SmbTransportWrite for Writer {
    fn send_raw<'a>(
        &'a mut self,
        buf: &'a [u8],
    ) -> BoxFuture<'a, smb::transport::error::Result<()>> {
        async move { self.0.write_all(buf).await.map_err(transport_err) }.boxed()
    }

    fn send<'a>(&'a mut self, data: &'a IoVec) -> BoxFuture<'a, smb::transport::error::Result<()>> {
        async move { self.0.write_all(&frame(data)).await.map_err(transport_err) }.boxed()
    }
}

/// Direct-TCP framing: a zero byte and a 24-bit big-endian length, then the
/// message, in one buffer so that it leaves in one write.
fn frame(data: &IoVec) -> Vec<u8> {
    let len = data.total_size();
    let mut out = Vec::with_capacity(4 + len);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    for b in data.iter() {
        out.extend_from_slice(b);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_refuse_passwords_and_escapes() {
        let u = SmbUrl::parse("smb://logship@127.0.0.1:4445/logs$/alpha").unwrap();
        assert_eq!(
            (u.user.as_str(), u.host.as_str(), u.port),
            ("logship", "127.0.0.1", 4445)
        );
        assert_eq!((u.share.as_str(), u.path.as_str()), ("logs$", "alpha"));
        assert_eq!(u.to_string(), "smb://logship@127.0.0.1:4445/logs$/alpha");
        assert_eq!(SmbUrl::parse("smb://h/s").unwrap().port, 445);
        assert!(
            SmbUrl::parse("smb://u:secret@h/s")
                .unwrap_err()
                .to_string()
                .contains("password")
        );
        assert!(SmbUrl::parse("smb://h/s/../x").is_err());
        assert!(SmbUrl::parse("smb://h").is_err());
        assert!(format!("{:?}", Password("hunter2".into())) == "***");
    }
}
