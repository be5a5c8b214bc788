//! `logship bench failover`: a cluster on local directories with the
//! default timings, under a steady write load. Each round kills the active
//! with SIGKILL and measures the time until another node accepts a write;
//! the killed node is restarted and rejoins before the next round. Two
//! nodes use the file-share witness and then time a planned move and a
//! move back, as `move-cluster` reports them; `--nodes 3` and more start a
//! private etcd to arbitrate. The last line is `rto_p50_ms <x>`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::control::{self, Op};
use crate::procs::Procs;

/// The nodes' names, in order.
const NAMES: [&str; 16] = [
    "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa",
    "lambda", "mu", "nu", "xi", "omicron", "pi",
];

/// One INSERT through the node's daemon; true when acknowledged.
fn insert(data_dir: &Path, id: u64) -> bool {
    let op = Op::Sql {
        sql: format!("INSERT INTO load VALUES ({id}, 'x')"),
        each: false,
    };
    matches!(control::request(data_dir, &op), Ok((true, _)))
}

/// An etcd cluster's config in `dir`: `n` nodes, the arbiter at `url`.
fn etcd_config(dir: &Path, n: usize, url: &str) -> Result<PathBuf> {
    let mut text = format!("[cluster]\nname = \"bench\"\narbiter = \"{url}\"\n\n");
    for name in &NAMES[..n] {
        text.push_str(&format!(
            "[nodes.{name}]\ndata-dir = \"{d}/{name}\"\nshare = \"{d}/{name}/logs\"\n\n",
            d = dir.display()
        ));
    }
    let config = dir.join("logship.toml");
    std::fs::create_dir_all(dir)?;
    std::fs::write(&config, text)?;
    Ok(config)
}

pub fn failover(dir: &Path, rounds: usize, n: usize) -> Result<ExitCode> {
    let nodes = &NAMES[..n];
    // Kept until the end: the cluster's arbiter past two nodes.
    let etcd = if n > 2 {
        Some(harness::etcd::Etcd::try_start(1).context("the benchmark's private etcd")?)
    } else {
        None
    };
    let config = match &etcd {
        Some(e) => etcd_config(dir, n, &e.url("bench"))?,
        None => crate::procs::write_bench_config(dir, "", "")?,
    };
    let mut b = Procs::new(dir.to_path_buf(), config)?;
    b.start_pair()?;
    for name in &nodes[2..] {
        b.start(name, &["node", "--node", name])?;
        b.run(&["seed", "--node", name, "--from", "alpha"])?;
    }
    // A steady write load into whichever node is active.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let load = {
        let (stop, acked) = (stop.clone(), acked.clone());
        let dirs: Vec<PathBuf> = nodes.iter().map(|n| b.dir.join(n)).collect();
        std::thread::spawn(move || {
            let mut id = 1_000_000u64;
            while !stop.load(Ordering::Relaxed) {
                id += 1;
                if dirs.iter().any(|d| insert(d, id)) {
                    acked.fetch_add(1, Ordering::Relaxed);
                } else {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        })
    };
    let mut rtos = Vec::new();
    let mut probe = 0u64;
    for round in 0..rounds {
        let active = nodes
            .iter()
            .copied()
            .find(|n| b.status(n)["role"] == "active")
            .context("no active node")?;
        let others: Vec<&str> = nodes.iter().copied().filter(|n| *n != active).collect();
        for other in &others {
            b.wait(
                "the passives to be Healthy and to know the active",
                60,
                || {
                    let s = b.status(other);
                    s["role"] == "passive"
                        && s["summary_copy_status"] == "Healthy"
                        && s["active_node"] == active
                },
            )?;
        }
        if etcd.is_none() {
            b.wait("the active to hold both other votes", 30, || {
                let q = &b.status(active)["quorum"];
                q["peer"] == true && q["witness"] == true
            })?;
        }
        b.kill(active)?;
        let killed = Instant::now();
        let other = 'took: loop {
            for other in &others {
                probe += 1;
                if insert(&b.dir.join(other), probe) {
                    break 'took *other;
                }
            }
            if killed.elapsed() > Duration::from_secs(60) {
                bail!("no node took writes within 60 s of {active}'s death");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let rto = killed.elapsed();
        println!(
            "round {}: killed {active}; {other} took writes after {} ms",
            round + 1,
            rto.as_millis()
        );
        rtos.push(rto.as_secs_f64() * 1000.0);
        b.start(active, &["node", "--node", active])?;
    }
    // Planned moves, with the load still running.
    let active = nodes
        .iter()
        .copied()
        .find(|n| b.status(n)["role"] == "active")
        .context("no active node")?;
    let other = nodes.iter().copied().find(|n| *n != active).expect("two");
    let mut moves = Vec::new();
    for (from, to) in [(active, other), (other, active)] {
        b.wait(
            "the target to be Healthy and known to the active",
            60,
            || {
                if let Some(e) = &etcd {
                    let s = b.status(to);
                    // What the active checks: the target's value in etcd.
                    let url = witness::etcd::ArbiterUrl::parse(&e.url("bench"));
                    let healthy_in_etcd = url.ok().is_some_and(|u| {
                        let client = witness::etcd::Etcd::new(u, Duration::from_secs(2));
                        witness::keys::read(&client).is_ok_and(|r| {
                            r.members.iter().any(|m| {
                                m.node == to && m.copy_status.as_deref() == Some("Healthy")
                            })
                        })
                    });
                    return s["summary_copy_status"] == "Healthy"
                        && s["active_node"] == from
                        && healthy_in_etcd;
                }
                let p = &b.status(from)["peer"];
                p["role"] == "passive" && p["copy"] == "Healthy"
            },
        )?;
        let (_, ms) = b.move_cluster(to, "bench")?;
        let ms = ms as f64;
        println!("move {from} -> {to}: {ms} ms");
        moves.push(ms);
    }
    stop.store(true, Ordering::Relaxed);
    let _ = load.join();
    rtos.sort_by(|a, b| a.total_cmp(b));
    moves.sort_by(|a, b| a.total_cmp(b));
    let p50 = rtos[rtos.len() / 2];
    println!(
        "writes acknowledged under load: {}",
        acked.load(Ordering::Relaxed)
    );
    println!(
        "rto median {:.0} ms, max {:.0} ms over {} rounds, {n} nodes, {} (heartbeat-interval 500ms, dead-after 2s)",
        p50,
        rtos.last().copied().unwrap_or(0.0),
        rtos.len(),
        if etcd.is_some() {
            "etcd arbitrating"
        } else {
            "the file-share witness"
        }
    );
    if !moves.is_empty() {
        println!(
            "planned move median {:.0} ms, max {:.0} ms",
            moves[moves.len() / 2],
            moves.last().copied().unwrap_or(0.0)
        );
    }
    drop(b);
    drop(etcd);
    let _ = std::fs::remove_dir_all(dir);
    println!("rto_p50_ms {p50:.0}");
    Ok(ExitCode::SUCCESS)
}
