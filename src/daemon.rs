//! What every daemon of the binary shares at start and stop: the shutdown
//! flag that SIGTERM and SIGINT set, the refusal to run a role's daemon by
//! hand where `logship node` runs it, and the warning for a data directory
//! open to others. Nothing here decides a role.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Result, bail};
use logship::config::Node;

pub static SHUTDOWN: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    SHUTDOWN.store(true, Ordering::Relaxed);
}

/// SIGTERM and SIGINT ask daemons to stop at the end of their current step.
pub fn install_shutdown_handler() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
    }
}

/// Refuses to run a role's daemon by hand where `logship node` runs it.
pub fn refuse_under_node(name: &str, node: &Node) -> Result<()> {
    if let Some(pid) = crate::control::node_daemon(&node.data_dir) {
        bail!("`logship node` (pid {pid}) runs node {name}: it runs the role's duties itself");
    }
    Ok(())
}

/// A WARN for a node's data directory (or its log directory) open to its
/// group or others.
pub fn warn_open_dirs(name: &str, node: &Node) {
    let logs = node.data_dir.join(shipper::store::LOG_DIR);
    logship::private::warn_if_open(
        &format!("node {name}'s data directory"),
        &[node.data_dir.as_path(), logs.as_path()],
    );
}
