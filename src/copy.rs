//! The passive-copy commands: `replay` (the daemon), `status`, `suspend`,
//! `resume`, and `verify-copy` for a copy. They read the config to find the
//! nodes and shares and call into the `replayer` crate.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use logship::config::{Config, Node};
use replayer::state::{CopyPaths, CopyState};
use replayer::status::{self, CopyStatus};

use crate::daemon::{SHUTDOWN, install_shutdown_handler, refuse_under_node, warn_open_dirs};
use crate::node_status::{NodeStatus, PUBLISHED_NODE_STATUS};
use crate::shares::{share_of, source_node};

pub fn replay(
    name: &str,
    node: &Node,
    cfg: &Config,
    from: Option<&str>,
    poll: std::time::Duration,
) -> Result<ExitCode> {
    refuse_under_node(name, node)?;
    warn_open_dirs(name, node);
    let (source_name, source) = source_node(cfg, name, from)?;
    if !node.data_dir.join(shipper::store::DATABASE_FILE).exists() {
        bail!(
            "node {name} holds no copy in {}: seed it first (`logship seed --node {name}`)",
            node.data_dir.display()
        );
    }
    let _lock = shipper::store::lock_data_dir(&node.data_dir).map_err(|e| match e {
        shipper::Error::Locked { pid, .. } => anyhow::anyhow!(
            "node {name}'s data directory is in use by process {pid} (another `logship replay`, or a seed)"
        ),
        e => e.into(),
    })?;
    let config = replayer::ReplayConfig {
        node: name.to_string(),
        data_dir: node.data_dir.clone(),
        source_node: source_name.clone(),
        source: share_of(&source_name, source, cfg)?,
        own_share: match node.share {
            Some(_) => Some(share_of(name, node, cfg)?),
            None => None,
        },
        poll,
        epochs: Default::default(),
        replay_lag: node.replay_lag,
    };
    install_shutdown_handler();
    replayer::run(&config, &SHUTDOWN)
        .with_context(|| format!("replay into node {name} from {source_name}"))?;
    Ok(ExitCode::SUCCESS)
}

/// The status of every copy in the config (or of `only`).
pub fn collect(cfg: &Config, only: Option<&str>) -> Result<Vec<CopyStatus>> {
    let now = shipper_now_us();
    let mut out = Vec::new();
    for (name, node) in &cfg.nodes {
        if only.is_some_and(|o| o != name) {
            continue;
        }
        let paths = CopyPaths::new(&node.data_dir);
        if let Some(state) = CopyState::load(&paths)? {
            out.push(status::status(name, &paths, &state, now));
            continue;
        }
        // Not on this machine: what the node published on its share.
        if node.share.is_some()
            && let Ok(share) = share_of(name, node, cfg)
            && let Ok(Some(bytes)) = share.read(replayer::daemon::PUBLISHED_STATUS, 1 << 20)
            && let Ok(st) = shipper::state_file::parse::<CopyStatus>(&bytes, 1 << 20)
        {
            out.push(st);
        }
    }
    Ok(out)
}

use shipper::types::now_us as shipper_now_us;

/// Whether process `pid` of this machine exists.
fn process_alive(pid: u32) -> bool {
    // SAFETY: kill with signal 0 only checks that the process exists
    // (EPERM: it does, and belongs to another user).
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// The ship loop's status in `node`'s data directory on this machine, if
/// its daemon runs and wrote it in the last few seconds.
fn ship_status(node: &Node) -> Option<shipper::ship::ShipStatus> {
    let st = shipper::ship::ShipStatus::load(&node.data_dir)?;
    let age = Duration::from_micros(shipper_now_us().saturating_sub(st.updated_us));
    (process_alive(st.pid) && age < Duration::from_secs(5)).then_some(st)
}

/// What each node's daemon last published (`node.json`), marked offline
/// when the daemon is gone.
pub fn node_statuses(cfg: &Config, only: Option<&str>) -> Vec<NodeStatus> {
    let now = shipper_now_us();
    let mut out = Vec::new();
    for (name, node) in &cfg.nodes {
        if only.is_some_and(|o| o != name) {
            continue;
        }
        let local = NodeStatus::load(&node.data_dir);
        let is_local = local.is_some();
        // Not on this machine: what the node published on its share.
        let st = local.or_else(|| {
            let share = share_of(name, node, cfg).ok()?;
            let bytes = share.read(PUBLISHED_NODE_STATUS, 1 << 20).ok()??;
            NodeStatus::parse(&bytes).ok()
        });
        if let Some(mut st) = st {
            let alive = !is_local || process_alive(st.pid);
            let age = Duration::from_micros(now.saturating_sub(st.updated_us));
            let stale = age > (cfg.cluster.dead_after * 4).max(Duration::from_secs(5));
            if !alive || stale {
                // What it said last is no longer known to hold.
                st.role = witness::Role::Starting;
                st.quorum = Default::default();
                st.active_node = None;
                st.node_state = "offline".into();
                if alive && is_local {
                    // Running, yet silent: it cannot write (a full disk) or
                    // it is stuck.
                    st.node_state = "stale".into();
                    st.warnings.push(format!(
                        "status not updated for {}s although the daemon (pid {}) runs: it may be busy (a failover drains for up to {} s), stuck, or unable to write to {} (a full disk?)",
                        age.as_secs(),
                        st.pid,
                        witness::core::DRAIN_BUDGET.as_secs(),
                        node.data_dir.display()
                    ));
                }
            }
            out.push(st);
        }
    }
    out
}

/// What the relay last wrote (`relay.json`), when it runs on this machine.
fn relay_status(cfg: &Config) -> Option<dumpster::relay::RelayStatus> {
    let dir = cfg.dumpster.as_ref()?.data_dir.as_ref()?;
    let path = dir.join(dumpster::relay::STATUS_FILE);
    let bytes = shipper::state_file::read_file(&path, dumpster::relay::MAX_STATUS_FILE).ok()??;
    match dumpster::relay::RelayStatus::parse(&bytes) {
        Ok(st) => Some(st),
        Err(why) => {
            tracing::warn!(file = %path.display(), reason = %why, "the relay's status is not read");
            None
        }
    }
}

pub fn status(cfg: &Config, only: Option<&str>, json: bool) -> Result<ExitCode> {
    let copies = collect(cfg, only)?;
    let nodes = node_statuses(cfg, only);
    if json {
        let mut out = Vec::new();
        for name in cfg.nodes.keys() {
            let copy = copies.iter().find(|c| &c.node == name);
            let node = nodes.iter().find(|n| &n.node == name);
            let ship = if only.is_some_and(|o| o != name) {
                None
            } else {
                ship_status(&cfg.nodes[name])
            };
            if copy.is_none() && node.is_none() && ship.is_none() {
                continue;
            }
            let mut v = match copy {
                Some(c) => serde_json::to_value(c)?,
                None => serde_json::json!({ "node": name }),
            };
            if let (Some(n), Some(obj)) = (node, v.as_object_mut()) {
                let nv = serde_json::to_value(n)?;
                for (k, val) in nv.as_object().expect("a struct is an object") {
                    if !matches!(k.as_str(), "node" | "pid" | "updated_us" | "lsn") {
                        obj.insert(k.clone(), val.clone());
                    }
                }
            }
            if let (Some(s), Some(obj)) = (&ship, v.as_object_mut()) {
                obj.insert(
                    "truncation_held".into(),
                    serde_json::json!(s.truncation_held),
                );
            }
            out.push(v);
        }
        if only.is_none()
            && let Some(r) = relay_status(cfg)
        {
            out.push(serde_json::json!({ "dumpster": r }));
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    if only.is_none()
        && let Some(r) = relay_status(cfg)
    {
        println!(
            "relay {}: queue {}{}, dumpster {} message(s) ({} bytes{}), delivering to {}",
            r.smtp,
            r.queue_length,
            if r.parked > 0 {
                format!(
                    " ({} parked: refused by the node, retried hourly)",
                    r.parked
                )
            } else {
                String::new()
            },
            r.dumpster_messages,
            r.dumpster_bytes,
            r.dumpster_oldest
                .as_deref()
                .map(|t| format!(", oldest delivered {t}"))
                .unwrap_or_default(),
            r.delivering_to.as_deref().unwrap_or("-")
        );
        if let Some(l) = &r.last_redelivery {
            println!("           last redelivery: {l}");
        }
        println!();
    }
    if !nodes.is_empty() {
        println!(
            "{:<10} {:<8} {:>6} {:<8} {:<6} {:<10}",
            "node", "role", "epoch", "state", "votes", "active"
        );
        for n in &nodes {
            println!(
                "{:<10} {:<8} {:>6} {:<8} {:<6} {:<10}",
                n.node,
                n.role.name(),
                n.epoch,
                n.node_state,
                // Past two nodes the vote is the node's etcd lease.
                if n.witness.starts_with("etcd ") {
                    if n.quorum.witness { "lease" } else { "-" }.to_string()
                } else {
                    format!("{}/3", n.quorum.votes)
                },
                n.active_node.as_deref().unwrap_or("-")
            );
            if let Some(b) = &n.blocked {
                println!("           {b}");
            }
            if let Some(m) = &n.move_check {
                println!("           {m}");
            }
            if let Some(c) = &n.commit {
                println!("           commit {c}");
            }
            match (&n.block_mode, n.last_received_lsn) {
                (Some(b), Some(lsn)) => println!(
                    "           block mode: {b}; received LSN {lsn}{}",
                    match (n.copy_queue_records, n.copy_queue_bytes) {
                        (Some(r), Some(by)) => format!(", {r} record(s) ({by} bytes) behind"),
                        _ => String::new(),
                    }
                ),
                (Some(b), None) if n.role == witness::Role::Passive => {
                    println!("           block mode: {b}")
                }
                _ => {}
            }
            for w in &n.warnings {
                println!("           warning: {w}");
            }
        }
        println!();
        // Past two nodes: every copy as etcd has it, from the freshest view.
        if let Some(n) = nodes
            .iter()
            .filter(|n| !n.copies.is_empty())
            .max_by_key(|n| n.updated_us)
        {
            println!(
                "{:<10} {:<8} {:<14} {:>10} {:>10} {:>8} {:>4}  (etcd, as {} read it)",
                "member", "role", "copy", "received", "replayed", "behind", "pref", n.node
            );
            for c in &n.copies {
                let mut status = c.copy_status.clone().unwrap_or_else(|| "-".into());
                if c.paused {
                    status.push_str(",paused");
                }
                if c.lagged {
                    status.push_str(",lagged");
                }
                println!(
                    "{:<10} {:<8} {:<14} {:>10} {:>10} {:>8} {:>4}",
                    c.node,
                    c.role.name(),
                    status,
                    // As numbers: `Lsn`'s Display does not pad to a width.
                    c.received.0,
                    c.replayed.0,
                    c.behind
                        .map(|b| b.to_string())
                        .unwrap_or_else(|| "-".into()),
                    if c.preference == 0 {
                        "-".to_string()
                    } else {
                        c.preference.to_string()
                    }
                );
            }
            println!();
        }
    }
    let mut shipping = false;
    for (name, node) in &cfg.nodes {
        if only.is_some_and(|o| o != name) {
            continue;
        }
        if let Some(s) = ship_status(node) {
            shipping = true;
            match &s.truncation_held {
                Some(why) => println!("log truncation on {name}: held back: {why}"),
                None => println!("log truncation on {name}: running"),
            }
        }
    }
    if shipping {
        println!();
    }
    if copies.is_empty() {
        println!("no passive copies found (run `logship replay --node NAME` on a passive node)");
        return Ok(ExitCode::SUCCESS);
    }
    let hex =
        |g: Option<shipper::Generation>| g.map(|g| g.to_string()).unwrap_or_else(|| "-".into());
    println!(
        "{:<10} {:<10} {:<14} {:>4} {:>4} {:>9} {:>9} {:>9} {:>9} {:>10}",
        "copy",
        "source",
        "status",
        "CQL",
        "RQL",
        "generated",
        "copied",
        "inspected",
        "replayed",
        "lsn"
    );
    for c in &copies {
        println!(
            "{:<10} {:<10} {:<14} {:>4} {:>4} {:>9} {:>9} {:>9} {:>9} {:>10}",
            c.node,
            c.source,
            c.summary_copy_status.to_string(),
            c.copy_queue_length,
            c.replay_queue_length,
            hex(c.last_log_generated),
            hex(c.last_log_copied),
            hex(c.last_log_inspected),
            hex(c.last_log_replayed),
            c.last_replayed_lsn
        );
        if let Some(t) = &c.last_log_replayed_time {
            println!(
                "           last replayed {t}; content hash {}",
                c.content_hash.as_deref().unwrap_or("-")
            );
        }
        if let Some(s) = &c.suspend_comment {
            println!("           suspended: {s}");
        }
        if let Some(e) = &c.error {
            println!("           error: {e}");
        }
        if !c.daemon_running {
            println!(
                "           the replay daemon has not updated this copy for a while: is `logship replay` running?"
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn suspend(name: &str, node: &Node, reason: &str) -> Result<ExitCode> {
    let paths = CopyPaths::new(&node.data_dir);
    if CopyState::load(&paths)?.is_none() && !paths.database.exists() {
        bail!("node {name} holds no copy at {}", node.data_dir.display());
    }
    replayer::state::suspend(&paths, reason)?;
    crate::events::append(
        &node.data_dir,
        name,
        "suspend",
        serde_json::json!({ "reason": reason }),
    );
    println!("suspended the copy on {name}: {reason}");
    Ok(ExitCode::SUCCESS)
}

pub fn resume(name: &str, node: &Node) -> Result<ExitCode> {
    let paths = CopyPaths::new(&node.data_dir);
    replayer::state::resume(&paths)?;
    crate::events::append(&node.data_dir, name, "resume", serde_json::json!({}));
    println!("resumed the copy on {name}");
    Ok(ExitCode::SUCCESS)
}

/// `verify-copy` on a passive: a full scan of the copy, read in one read
/// transaction with its LSN, against the hash the log recorded at that LSN.
pub fn verify_copy(name: &str, node: &Node, cfg: &Config) -> Result<ExitCode> {
    let paths = CopyPaths::new(&node.data_dir);
    let conn = shipper::store::open_read_only(&paths.database)?;
    conn.execute_batch("BEGIN")?;
    let (lsn, _) = shipper::apply::read_guard(&conn)?;
    let scanned = shipper::hash::full_scan(&conn)?;
    conn.execute_batch("COMMIT")?;
    let mut logged = shipper::log::hash_at(&paths.logs, lsn)?;
    if logged.is_none() {
        // Not copied yet (just seeded): the source's share holds it.
        let source = CopyState::load(&paths)?
            .map(|s| s.source)
            .unwrap_or_default();
        if let Ok((source_name, source_node)) = source_node(
            cfg,
            name,
            Some(&source).filter(|s| !s.is_empty()).map(|s| s.as_str()),
        ) && let Ok(shipper::share::Share::Dir(dir)) = share_of(&source_name, source_node, cfg)
        {
            logged = shipper::log::hash_at(&dir, lsn)?;
        }
    }
    println!("lsn {lsn}");
    println!(
        "log-hash {}",
        logged.map(|h| h.to_string()).unwrap_or_else(|| "-".into())
    );
    println!("scan-hash {scanned}");
    match logged {
        Some(h) if h == scanned => {
            println!("verdict equal");
            Ok(ExitCode::SUCCESS)
        }
        Some(_) => {
            println!("verdict DIFFERENT");
            eprintln!("logship: the copy does not match the log at LSN {lsn}");
            Ok(logship::exit::Class::Corrupt.exit())
        }
        None => {
            println!("verdict UNKNOWN");
            eprintln!(
                "logship: the copy's log directory {} no longer holds LSN {lsn}; nothing to compare with",
                paths.logs.display()
            );
            Ok(ExitCode::from(1))
        }
    }
}

/// The smb.conf share definition that exports `node`'s log directory.
pub fn share_config(name: &str, node: &Node, user: Option<&str>) -> String {
    let url = node
        .share
        .as_deref()
        .filter(|s| s.starts_with("smb://"))
        .and_then(|s| shipper::smb::SmbUrl::parse(s).ok());
    let share = url
        .as_ref()
        .map(|u| u.share.clone())
        .unwrap_or_else(|| format!("logship-{name}"));
    let user = user
        .map(str::to_string)
        .or_else(|| url.as_ref().map(|u| u.user.clone()))
        .unwrap_or_else(|| "logship".into());
    let encrypt = match node.encrypt {
        logship::config::EncryptSetting::Required => "required",
        logship::config::EncryptSetting::Preferred => "desired",
        logship::config::EncryptSetting::Off => "off",
    };
    format!(
        "# logship: node {name}'s log directory, for its peers (paste into smb.conf).
# In [global], keepalive lets smbd drop a dead client's handles within
# about 5 s (the witness lock relies on it), and aio off avoids a credit
# leak in the SMB client on interim replies:
#   socket options = TCP_NODELAY SO_KEEPALIVE TCP_KEEPIDLE=2 TCP_KEEPINTVL=1 TCP_KEEPCNT=3
[{share}]
    path = {path}
    read only = no
    valid users = {user}
    smb encrypt = {encrypt}
    aio read size = 0
    aio write size = 0
",
        path = node.data_dir.join(shipper::store::LOG_DIR).display(),
    )
}

/// The smb.conf section for the witness, when it is an smb:// URL: on the
/// witness's host, a directory both nodes may write (the vote's lock file
/// and the epoch records); encryption required, as it decides who writes.
pub fn witness_share_config(cfg: &Config) -> Option<String> {
    let url = cfg
        .cluster
        .witness
        .as_deref()
        .filter(|s| s.starts_with("smb://"))
        .and_then(|s| shipper::smb::SmbUrl::parse(s).ok())?;
    Some(format!(
        "\n# logship: the witness of cluster {cluster}, on {host} (paste into that host's\n\
         # smb.conf, with the same [global] socket options as above; create\n\
         # /srv/{share}/{path} owned by {user}).\n\
         [{share}]\n    path = /srv/{share}\n    read only = no\n    valid users = {user}\n    \
         smb encrypt = required\n    aio read size = 0\n    aio write size = 0\n",
        cluster = cfg.cluster.name,
        host = url.host,
        share = url.share,
        user = url.user,
        path = url.path,
    ))
}
