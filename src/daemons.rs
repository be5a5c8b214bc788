//! `logship ship` (the active's daemon: the store, its control socket, and
//! the shipping duties) and `logship seed` (a passive asks the active for a
//! snapshot through the shares, copies it with progress, checks it and
//! installs it).

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use logship::config::{Config, Node};
use replayer::state::{CopyPaths, CopyState};
use shipper::seed::{self, SeedManifest, SeedRequest};
use shipper::share::Share;
use shipper::state_file::StateFileError;

use crate::daemon::{SHUTDOWN, install_shutdown_handler, refuse_under_node, warn_open_dirs};
use crate::shares::{share_of, source_node};

pub fn ship(name: &str, node: &Node, cfg: &Config) -> Result<ExitCode> {
    refuse_under_node(name, node)?;
    warn_open_dirs(name, node);
    let share = share_of(name, node, cfg)?;
    let mut peers = Vec::new();
    for (peer, n) in &cfg.nodes {
        if peer != name {
            peers.push((peer.clone(), share_of(peer, n, cfg)?));
        }
    }
    let opts = shipper::StoreOptions {
        seal_after: cfg.cluster.seal_after,
        ..Default::default()
    };
    let store = Arc::new(shipper::Store::open(&node.data_dir, opts).with_context(|| {
        format!(
            "open the store of node {name} in {}",
            node.data_dir.display()
        )
    })?);
    install_shutdown_handler();
    let on_op = store.clone();
    crate::control::serve(
        &node.data_dir,
        Arc::new(
            move |op: &crate::control::Op, out: &mut dyn FnMut(&[u8]) -> std::io::Result<()>| {
                crate::control::run_op(&on_op, op, out)
            },
        ),
        &SHUTDOWN,
    )?;
    let ship_cfg = shipper::ship::ShipConfig {
        node: name.to_string(),
        share,
        peers,
        retention: cfg.cluster.retention,
    };
    shipper::ship::run(&store, &ship_cfg, &SHUTDOWN)?;
    // Give the control thread its turn to remove the socket.
    std::thread::sleep(Duration::from_millis(50));
    Ok(ExitCode::SUCCESS)
}

fn random_id() -> String {
    shipper::DatabaseId::random()
        .map(|d| d.to_string())
        .unwrap_or_else(|_| format!("{}", std::process::id()))
}

pub fn seed(
    name: &str,
    node: &Node,
    cfg: &Config,
    from: Option<&str>,
    force: bool,
    timeout: Duration,
) -> Result<ExitCode> {
    let (source_name, source_node_cfg) = source_node(cfg, name, from)?;
    let source = share_of(&source_name, source_node_cfg, cfg)?;
    let own = share_of(name, node, cfg)?;
    if let Share::Dir(d) = &own {
        // Often the node's own log directory, not made yet.
        std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
    }
    let paths = CopyPaths::new(&node.data_dir);
    std::fs::create_dir_all(&node.data_dir)
        .with_context(|| format!("create {}", node.data_dir.display()))?;
    let _lock = shipper::store::lock_data_dir(&node.data_dir).map_err(|e| match e {
        shipper::Error::Locked { pid, .. } => anyhow::anyhow!(
            "node {name}'s data directory is in use by process {pid}: stop `logship replay` on {name} before seeding"
        ),
        e => e.into(),
    })?;
    if paths.database.exists() && !force {
        bail!(
            "node {name} already holds a copy ({}); seeding replaces it and everything it holds: add --force to do that",
            paths.database.display()
        );
    }
    // What the active reads for truncation must not describe the copy being
    // replaced: publish a report that holds truncation back until replay runs.
    let seeding = CopyState {
        seeding: true,
        source: source_name.clone(),
        ..Default::default()
    };
    let report = replayer::status::status(name, &paths, &seeding, 0);
    own.write_atomic(
        replayer::daemon::PUBLISHED_STATUS,
        &serde_json::to_vec_pretty(&report)?,
    )?;
    let request = SeedRequest {
        version: Default::default(),
        node: name.to_string(),
        id: random_id(),
    };
    own.write_atomic(seed::REQUEST_FILE, &serde_json::to_vec(&request)?)?;
    // Status says Seeding only once the request is out, so whoever sees
    // Seeding also finds the request on this node's share.
    let mut state = CopyState::load(&paths)?.unwrap_or_default();
    state.seeding = true;
    state.source = source_name.clone();
    state.save(&paths)?;
    let result = (|| -> Result<SeedManifest> {
        eprintln!(
            "asked {source_name} for a snapshot; waiting for it on {}",
            source.display()
        );
        let manifest = wait_for_manifest(&source, name, &request.id, timeout, &source_name)?;
        let incoming = node.data_dir.join("seed.incoming");
        let started = Instant::now();
        let copied = copy_with_progress(
            &source,
            &seed::snapshot_name(name),
            &incoming,
            manifest.size,
        )?;
        let elapsed = started.elapsed();
        eprintln!(
            "copied {} in {:.1} s ({}/s); checking it",
            human_bytes(copied),
            elapsed.as_secs_f64(),
            human_bytes((copied as f64 / elapsed.as_secs_f64().max(1e-6)) as u64)
        );
        seed::verify(&incoming, &manifest).context("the copied snapshot failed its check")?;
        install(&paths, &incoming)?;
        Ok(manifest)
    })();
    own.remove(seed::REQUEST_FILE)?;
    let mut state = CopyState::load(&paths)?.unwrap_or_default();
    state.seeding = false;
    match result {
        Ok(m) => {
            state = CopyState {
                source: source_name.clone(),
                database_id: m.database_id.clone(),
                replayed_lsn: m.lsn,
                replayed_hash: Some(m.hash.clone()),
                ..Default::default()
            };
            state.save(&paths)?;
            println!(
                "seeded {name} from {source_name}: LSN {}, content hash {} verified",
                m.lsn, m.hash
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            state.error = Some(format!("seed failed: {e:#}"));
            state.save(&paths)?;
            Err(e)
        }
    }
}

/// How long a seed waits for the active's snapshot before it says that no
/// daemon there has answered (it goes on waiting up to its timeout).
const SEED_NOTICE: Duration = Duration::from_secs(3);

fn wait_for_manifest(
    source: &Share,
    name: &str,
    id: &str,
    timeout: Duration,
    source_name: &str,
) -> Result<SeedManifest> {
    let started = Instant::now();
    let deadline = started + timeout;
    let mut told = false;
    loop {
        if let Some(b) = source.read(&seed::manifest_name(name), seed::MAX_SEED_FILE as u64)? {
            match SeedManifest::parse(&b) {
                Ok(m) if m.id == id => return Ok(m),
                // An answer to an earlier request, or one half written: wait.
                Ok(_) | Err(StateFileError::NotJson(_)) => {}
                Err(why) => bail!(
                    "the seed manifest {} on {source_name}'s share: {why}",
                    seed::manifest_name(name)
                ),
            }
        }
        if !told && started.elapsed() >= SEED_NOTICE {
            told = true;
            eprintln!(
                "no daemon on {source_name} has answered after {} s: one must run there to take the snapshot (`logship node --node {source_name}` in a cluster, or `logship ship --node {source_name}`); waiting up to {}",
                SEED_NOTICE.as_secs(),
                humantime::format_duration(timeout)
            );
        }
        if Instant::now() > deadline {
            bail!(
                "no snapshot from {source_name} after {}: is `logship ship` running on {source_name}?",
                humantime::format_duration(timeout)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn copy_with_progress(
    source: &Share,
    name: &str,
    dest: &std::path::Path,
    size: u64,
) -> Result<u64> {
    let tty = std::io::stderr().is_terminal();
    let bar = tty.then(|| {
        let b = indicatif::ProgressBar::new(size);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "seeding {bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
            )
            .expect("valid template"),
        );
        b
    });
    let started = Instant::now();
    let mut last_log = Instant::now();
    let copied = source
        .copy_to(name, dest, |done, total| {
            if let Some(b) = &bar {
                b.set_position(done);
            } else if last_log.elapsed() >= Duration::from_secs(1) || done == total {
                last_log = Instant::now();
                let secs = started.elapsed().as_secs_f64().max(1e-6);
                let rate = done as f64 / secs;
                let eta = if rate > 0.0 {
                    (total.saturating_sub(done)) as f64 / rate
                } else {
                    0.0
                };
                tracing::info!(
                    copied = done,
                    total,
                    rate = %format!("{}/s", human_bytes(rate as u64)),
                    eta = %format!("{eta:.0}s"),
                    "seeding"
                );
            }
        })?
        .with_context(|| format!("the snapshot {name} vanished from {}", source.display()))?;
    if let Some(b) = bar {
        b.finish();
    }
    Ok(copied)
}

/// Replaces the copy with the checked snapshot.
fn install(paths: &CopyPaths, incoming: &std::path::Path) -> Result<()> {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = paths.database.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(std::path::PathBuf::from(p));
    }
    // The old copy's segments go; other files stay (the log directory may
    // be the node's share, holding its published status and seed request).
    if paths.logs.exists() {
        for entry in std::fs::read_dir(&paths.logs)? {
            let p = entry?.path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            // Segments and their interrupted copies only: other temporary
            // files there (the node's status on its way to its name) are
            // another process's, and may vanish while this runs.
            let segment = name
                .strip_suffix(shipper::share::TEMP_SUFFIX)
                .unwrap_or(name);
            if segment.ends_with(".log") {
                match std::fs::remove_file(&p) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(e).with_context(|| format!("clear {}", p.display()));
                    }
                    _ => {}
                }
            }
        }
    }
    std::fs::rename(incoming, &paths.database)
        .with_context(|| format!("install {}", paths.database.display()))?;
    let conn = rusqlite::Connection::open(&paths.database)?;
    conn.execute_batch("PRAGMA journal_mode = WAL")?;
    drop(conn);
    shipper::log::sync_dir(&paths.data_dir)?;
    Ok(())
}

fn human_bytes(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}
