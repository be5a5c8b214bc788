//! The control socket of a daemon that owns a node's store
//! (`<data-dir>/control.sock`): `logship sql` run while `logship ship` holds
//! the store hands its statements over this socket instead, and prints the
//! same output. One JSON request line in; JSON lines out (`{"out": text}`
//! as each transaction becomes durable, then `{"done": true}` or
//! `{"error": message}`). Only the socket's owner (file mode 0600) can connect.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

pub const SOCKET_FILE: &str = "control.sock";
/// The longest request accepted (SQL text included).
const MAX_REQUEST: u64 = 64 << 20;

pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_FILE)
}

/// Held by `logship node` for its whole life: while it is held, nothing
/// else may open the node's store (the daemon may be between roles).
pub const NODE_LOCK_FILE: &str = "node.lock";

/// The pid of the `logship node` daemon running on `data_dir`, if one is.
pub fn node_daemon(data_dir: &Path) -> Option<String> {
    let path = data_dir.join(NODE_LOCK_FILE);
    if !path.exists() {
        return None;
    }
    match shipper::store::lock_file(&path, data_dir) {
        Ok(_released_at_once) => None,
        Err(shipper::Error::Locked { pid, .. }) => Some(pid),
        Err(_) => None,
    }
}

/// What a command asks of the store.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Op {
    /// `logship sql`.
    Sql { sql: String, each: bool },
    /// `logship seal`.
    Seal,
    /// `logship verify-copy` on the active.
    Check,
    /// `logship activate`: make this passive node active now (a node
    /// daemon only). `force` overrides the mount dial.
    Activate { force: bool, play_down: bool },
    /// `logship pause` / `logship resume-node`: a paused node never becomes active.
    Pause { paused: bool },
    /// `logship move-cluster`: a planned, lossless move of the active role.
    MoveCluster { to: String, comment: String },
}

/// What serves the requests of a control socket.
pub type Handler =
    dyn Fn(&Op, &mut dyn FnMut(&[u8]) -> std::io::Result<()>) -> Result<bool> + Send + Sync;

/// Runs `op` on `store`, handing its output to `out`; false when the
/// command must exit non-zero.
pub fn run_op(
    store: &shipper::Store,
    op: &Op,
    out: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
) -> Result<bool> {
    match op {
        Op::Sql { sql, each } => {
            crate::sql::execute(store, sql, *each, out)?;
            Ok(true)
        }
        Op::Seal => {
            let text = match store.seal()? {
                Some(g) => format!("sealed {}\n", shipper::format::segment_file_name(g)),
                None => "nothing to seal\n".to_string(),
            };
            out(text.as_bytes())?;
            Ok(true)
        }
        Op::Check => {
            let check = store.check_content()?;
            let equal = check.logged == check.scanned;
            let text = format!(
                "lsn {}\nlog-hash {}\nscan-hash {}\nverdict {}\n",
                check.lsn,
                check.logged,
                check.scanned,
                if equal { "equal" } else { "DIFFERENT" }
            );
            out(text.as_bytes())?;
            Ok(equal)
        }
        Op::Activate { .. } | Op::Pause { .. } | Op::MoveCluster { .. } => {
            bail!("this daemon runs no cluster node: start `logship node` to use it")
        }
    }
}

/// Runs `op` on the node's store: directly when no daemon holds it, else
/// through the daemon's control socket. Prints to stdout as it goes.
pub fn run_on_node(
    name: &str,
    node: &logship::config::Node,
    cfg: &logship::config::Config,
    op: &Op,
) -> Result<bool> {
    if node_daemon(&node.data_dir).is_some() {
        // The cluster daemon owns this node's store, whatever its role now.
        return forward(&node.data_dir, op);
    }
    let opts = shipper::StoreOptions {
        seal_after: cfg.cluster.seal_after,
        ..Default::default()
    };
    match shipper::Store::open(&node.data_dir, opts) {
        Ok(store) => {
            let stdout = std::io::stdout();
            let mut lock = stdout.lock();
            run_op(&store, op, &mut |chunk| {
                lock.write_all(chunk)?;
                lock.flush()
            })
        }
        Err(shipper::Error::Locked { .. }) if socket_path(&node.data_dir).exists() => {
            forward(&node.data_dir, op)
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!(
            "open the store of node {name} in {}",
            node.data_dir.display()
        ))),
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Reply {
    Out(String),
    Error(String),
    /// The command's success (false: exit non-zero).
    Done(bool),
}

/// Serves the control socket until `shutdown` is set. Each connection gets
/// a thread; the store's group commit batches concurrent ones.
pub fn serve(data_dir: &Path, handler: Arc<Handler>, shutdown: &'static AtomicBool) -> Result<()> {
    let path = socket_path(data_dir);
    let _ = std::fs::remove_file(&path);
    let listener =
        UnixListener::bind(&path).with_context(|| format!("listen on {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("make {} owner-only", path.display()))?;
    listener
        .set_nonblocking(true)
        .with_context(|| format!("make {} non-blocking", path.display()))?;
    std::thread::Builder::new()
        .name("logship-control".into())
        .spawn(move || {
            while !shutdown.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let handler = handler.clone();
                        let _ = std::thread::Builder::new()
                            .name("logship-control-conn".into())
                            .spawn(move || {
                                if let Err(e) = handle(stream, &*handler) {
                                    tracing::debug!(error = %e, "control connection ended");
                                }
                            });
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        // Wait for the next client (at once when one
                        // connects), looking at `shutdown` five times a second.
                        wait_readable(&listener, 200);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "control socket accept failed");
                        std::thread::sleep(std::time::Duration::from_millis(200));
                    }
                }
            }
            let _ = std::fs::remove_file(&path);
        })?;
    Ok(())
}

/// Waits until `listener` has a client to accept, or `ms` pass.
fn wait_readable(listener: &UnixListener, ms: i32) {
    use std::os::fd::AsRawFd;
    let mut fds = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for a descriptor `listener` keeps open.
    let _ = unsafe { libc::poll(&mut fds, 1, ms) };
}

fn handle(stream: UnixStream, handler: &Handler) -> Result<()> {
    stream.set_nonblocking(false)?;
    // A client that connects and says nothing does not hold a thread for ever.
    stream.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    let mut line = String::new();
    BufReader::new(std::io::Read::take(&stream, MAX_REQUEST)).read_line(&mut line)?;
    let op: Op = serde_json::from_str(&line).context("read the request")?;
    let mut w = &stream;
    let mut send = |r: &Reply| -> std::io::Result<()> {
        let mut b = serde_json::to_vec(r).expect("replies serialise");
        b.push(b'\n');
        w.write_all(&b)
    };
    let result = handler(&op, &mut |chunk| {
        send(&Reply::Out(String::from_utf8_lossy(chunk).into_owned()))
    });
    match result {
        Ok(ok) => send(&Reply::Done(ok))?,
        Err(e) => send(&Reply::Error(format!("{e:#}")))?,
    }
    Ok(())
}

/// Sends `op` to the daemon that owns the store and prints its output.
pub fn forward(data_dir: &Path, op: &Op) -> Result<bool> {
    let stdout = std::io::stdout();
    exchange(data_dir, op, &mut |s| {
        let mut out = stdout.lock();
        out.write_all(s.as_bytes())?;
        out.flush()
    })
}

/// Sends `op` to the daemon and collects its output: (success, output).
pub fn request(data_dir: &Path, op: &Op) -> Result<(bool, String)> {
    let mut text = String::new();
    let ok = exchange(data_dir, op, &mut |s| {
        text.push_str(s);
        Ok(())
    })?;
    Ok((ok, text))
}

fn exchange(
    data_dir: &Path,
    op: &Op,
    out: &mut dyn FnMut(&str) -> std::io::Result<()>,
) -> Result<bool> {
    let path = socket_path(data_dir);
    let stream = UnixStream::connect(&path).with_context(|| {
        format!(
            "connect to the daemon that owns the store ({})",
            path.display()
        )
    })?;
    let mut req = serde_json::to_vec(op)?;
    req.push(b'\n');
    (&stream).write_all(&req)?;
    for line in BufReader::new(std::io::Read::take(&stream, MAX_REQUEST)).lines() {
        let line = line?;
        match serde_json::from_str::<Reply>(&line).context("read the daemon's reply")? {
            Reply::Out(s) => out(&s)?,
            Reply::Error(e) => bail!("{e}"),
            Reply::Done(ok) => return Ok(ok),
        }
    }
    bail!("the daemon closed the connection before the statements completed")
}
