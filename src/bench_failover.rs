//! `logship bench failover`: a two-node cluster on local directories with
//! the default timings, under a steady write load. Each round kills the
//! active with SIGKILL and measures the time until the other node accepts a
//! write; the killed node is restarted and rejoins before the next round.
//! Then a planned move and a move back, timed as `move-cluster` reports
//! them. The last line is `rto_p50_ms <x>`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::control::{self, Op};

const NODES: [&str; 2] = ["alpha", "beta"];

struct Bench {
    dir: PathBuf,
    config: PathBuf,
    exe: PathBuf,
    children: Vec<(String, Child)>,
}

impl Drop for Bench {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_udp_port() -> Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Bench {
    fn new(dir: &Path) -> Result<Bench> {
        std::fs::create_dir_all(dir.join("witness"))?;
        let config = dir.join("logship.toml");
        std::fs::write(
            &config,
            format!(
                "[cluster]\nname = \"bench\"\nwitness = \"{w}\"\n\n\
                 [nodes.alpha]\ndata-dir = \"{d}/alpha\"\nshare = \"{d}/alpha/logs\"\nheartbeat = \"127.0.0.1:{pa}\"\n\n\
                 [nodes.beta]\ndata-dir = \"{d}/beta\"\nshare = \"{d}/beta/logs\"\nheartbeat = \"127.0.0.1:{pb}\"\n",
                w = dir.join("witness").display(),
                d = dir.display(),
                pa = free_udp_port()?,
                pb = free_udp_port()?,
            ),
        )?;
        Ok(Bench {
            dir: dir.to_path_buf(),
            config,
            exe: std::env::current_exe()?,
            children: Vec::new(),
        })
    }

    fn cmd(&self, node: &str, args: &[&str]) -> Command {
        let mut c = Command::new(&self.exe);
        c.args(args)
            .arg("--config")
            .arg(&self.config)
            .arg("--node")
            .arg(node)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null());
        c
    }

    fn run(&self, node: &str, args: &[&str]) -> Result<String> {
        let out = self.cmd(node, args).output()?;
        if !out.status.success() {
            bail!(
                "logship {args:?} on {node}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn start(&mut self, node: &str) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{node}.log")))?;
        let child = self
            .cmd(node, &["node"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.children.push((node.to_string(), child));
        Ok(())
    }

    fn kill(&mut self, node: &str) -> Result<()> {
        let i = self
            .children
            .iter()
            .position(|(n, _)| n == node)
            .context("no such node process")?;
        let (_, mut c) = self.children.remove(i);
        c.kill()?;
        c.wait()?;
        Ok(())
    }

    fn data_dir(&self, node: &str) -> PathBuf {
        self.dir.join(node)
    }

    fn status(&self, node: &str) -> serde_json::Value {
        let out = Command::new(&self.exe)
            .args(["status", "--json", "--node", node, "--config"])
            .arg(&self.config)
            .output();
        out.ok()
            .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
            .and_then(|v| v.as_array().and_then(|a| a.first().cloned()))
            .unwrap_or(serde_json::Value::Null)
    }

    fn wait(&self, what: &str, secs: u64, cond: impl Fn() -> bool) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !cond() {
            if Instant::now() > deadline {
                bail!(
                    "timed out after {secs} s waiting for {what} (logs in {})",
                    self.dir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }
}

/// One INSERT through the node's daemon; true when acknowledged.
fn insert(data_dir: &Path, id: u64) -> bool {
    let op = Op::Sql {
        sql: format!("INSERT INTO load VALUES ({id}, 'x')"),
        each: false,
    };
    matches!(control::request(data_dir, &op), Ok((true, _)))
}

pub fn failover(dir: &Path, rounds: usize) -> Result<ExitCode> {
    let mut b = Bench::new(dir)?;
    b.run("alpha", &["init"])?;
    b.run(
        "alpha",
        &[
            "sql",
            "CREATE TABLE load (id INTEGER PRIMARY KEY NOT NULL, v TEXT NOT NULL)",
        ],
    )?;
    b.start("alpha")?;
    b.wait("alpha active", 30, || b.status("alpha")["role"] == "active")?;
    b.start("beta")?;
    b.run("beta", &["seed"])?;
    b.wait("beta Healthy", 60, || {
        b.status("beta")["summary_copy_status"] == "Healthy"
    })?;
    // A steady write load into whichever node is active.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let load = {
        let (stop, acked) = (stop.clone(), acked.clone());
        let dirs: Vec<PathBuf> = NODES.iter().map(|n| b.data_dir(n)).collect();
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
            if insert(&b.data_dir(other), probe) {
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
        b.start(active)?;
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
        let out = Command::new(&b.exe)
            .args(["move-cluster", "--to", to, "--comment", "bench", "--config"])
            .arg(&b.config)
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "move-cluster to {to}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let ms: f64 = text
            .split(" in ")
            .nth(1)
            .and_then(|r| r.split(" ms").next())
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("no handoff time in {text:?}"))?;
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
