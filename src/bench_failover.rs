//! `logship bench failover`: a two-node cluster on local directories with
//! the default timings, under a steady write load. Each round kills the
//! active with SIGKILL and measures the time until the other node accepts a
//! write; the killed node is restarted and rejoins before the next round.
//! Then a planned move and a move back, timed as `move-cluster` reports
//! them. The last line is `rto_p50_ms <x>`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::control::{self, Op};
use crate::procs::Procs;

const NODES: [&str; 2] = ["alpha", "beta"];

/// One INSERT through the node's daemon; true when acknowledged.
fn insert(data_dir: &Path, id: u64) -> bool {
    let op = Op::Sql {
        sql: format!("INSERT INTO load VALUES ({id}, 'x')"),
        each: false,
    };
    matches!(control::request(data_dir, &op), Ok((true, _)))
}

pub fn failover(dir: &Path, rounds: usize) -> Result<ExitCode> {
    let mut b = Procs::new(
        dir.to_path_buf(),
        crate::procs::write_bench_config(dir, "", "")?,
    )?;
    b.start_pair()?;
    // A steady write load into whichever node is active.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let load = {
        let (stop, acked) = (stop.clone(), acked.clone());
        let dirs: Vec<PathBuf> = NODES.iter().map(|n| b.dir.join(n)).collect();
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
        let active = NODES
            .iter()
            .copied()
            .find(|n| b.status(n)["role"] == "active")
            .context("no active node")?;
        let other = NODES.iter().copied().find(|n| *n != active).expect("two");
        b.wait("the passive to be Healthy", 60, || {
            let s = b.status(other);
            s["role"] == "passive" && s["summary_copy_status"] == "Healthy"
        })?;
        b.wait("the active to hold both other votes", 30, || {
            let q = &b.status(active)["quorum"];
            q["peer"] == true && q["witness"] == true
        })?;
        b.kill(active)?;
        let killed = Instant::now();
        loop {
            probe += 1;
            if insert(&b.dir.join(other), probe) {
                break;
            }
            if killed.elapsed() > Duration::from_secs(60) {
                bail!("{other} did not take writes within 60 s");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
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
    let active = NODES
        .iter()
        .copied()
        .find(|n| b.status(n)["role"] == "active")
        .context("no active node")?;
    let other = NODES.iter().copied().find(|n| *n != active).expect("two");
    let mut moves = Vec::new();
    for (from, to) in [(active, other), (other, active)] {
        b.wait(
            "the target to be Healthy and known to the active",
            60,
            || {
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
        "rto median {:.0} ms, max {:.0} ms over {} rounds (heartbeat-interval 500ms, dead-after 2s)",
        p50,
        rtos.last().copied().unwrap_or(0.0),
        rtos.len()
    );
    println!(
        "planned move median {:.0} ms, max {:.0} ms",
        moves[moves.len() / 2],
        moves.last().copied().unwrap_or(0.0)
    );
    drop(b);
    let _ = std::fs::remove_dir_all(dir);
    println!("rto_p50_ms {p50:.0}");
    Ok(ExitCode::SUCCESS)
}
