//! `logship bench rpo`: what an unplanned failover loses, and what block
//! mode and synchronous commit cost. Two nodes on local directories.
//!
//! - The commit rate through the active's daemon at 1 and 16 writers with
//!   plain asynchronous shipping (block mode off), with block mode, and
//!   with `commit = "remote"`, each against the first in the same run.
//! - Rounds under a steady write load, every acknowledgement recorded: the
//!   active is SIGKILLed with its share still readable, or with its open
//!   segment gone too (a share that went with the machine). Each round
//!   counts the acknowledged transactions missing on the new active, and
//!   the span of writes they cover.
//!
//! The last line is `rpo_lost_p50 <transactions>`, over the rounds whose
//! share was gone under block mode without synchronous commit.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::control::{self, Op};
use crate::procs::Procs;

/// How the pair is set up for one measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Block mode off: sealed segments only (and the last logs at failover).
    Async,
    /// Block mode, acknowledging on the active's own fdatasync.
    Block,
    /// Block mode with `commit = "remote"`.
    Remote,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Async => "asynchronous (block mode off)",
            Mode::Block => "block mode",
            Mode::Remote => "commit = \"remote\"",
        }
    }
}

fn insert(data_dir: &Path, id: u64) -> bool {
    let op = Op::Sql {
        sql: format!("INSERT INTO load VALUES ({id}, 'x')"),
        each: false,
    };
    matches!(control::request(data_dir, &op), Ok((true, _)))
}

/// A running pair: alpha active with the `load` table, beta Healthy.
/// With `smb`, alpha's log directory is its share through a private smbd
/// (encrypted, as by default), returned with the pair.
fn pair(dir: &Path, mode: Mode, smb: bool) -> Result<(Procs, Option<harness::samba::Samba>)> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let node_extra = if mode == Mode::Async {
        "block = \"off\"\n"
    } else {
        ""
    };
    let config = crate::procs::write_bench_config(dir, node_extra, node_extra)?;
    let mut text =
        std::fs::read_to_string(&config).with_context(|| format!("read {}", config.display()))?;
    let mut cluster = match mode {
        Mode::Remote => "seal-after = \"10s\"\ncommit = \"remote\"\n",
        _ => "seal-after = \"10s\"\n",
    }
    .to_string();
    let server = if smb {
        use harness::samba::Samba;
        let logs = dir.join("alpha").join("logs");
        std::fs::create_dir_all(&logs)?;
        let s = Samba::try_start(&Samba::share_section("alpha-logs", &logs))?;
        let password = dir.join("smb-password");
        std::fs::copy(s.try_password_file()?, &password)?;
        cluster.push_str(&format!("password-file = \"{}\"\n", password.display()));
        text = text.replacen(
            &format!("share = \"{}\"", logs.display()),
            &format!("share = \"{}\"", s.url("alpha-logs")),
            1,
        );
        Some(s)
    } else {
        None
    };
    text = text.replacen("[nodes.alpha]", &format!("{cluster}\n[nodes.alpha]"), 1);
    std::fs::write(&config, text).with_context(|| format!("write {}", config.display()))?;
    let mut b = Procs::new(dir.to_path_buf(), config)?;
    b.start_pair()?;
    b.wait("alpha to hold both other votes", 30, || {
        let q = &b.status("alpha")["quorum"];
        q["peer"] == true && q["witness"] == true
    })?;
    if mode != Mode::Async {
        b.wait("beta receiving", 30, || {
            b.status("beta")["block_mode"]
                .as_str()
                .is_some_and(|m| m.starts_with("receiving"))
        })?;
    }
    if mode == Mode::Remote {
        b.wait("alpha synchronous", 30, || {
            b.status("alpha")["commit"] == "remote: synchronous"
        })?;
    }
    Ok((b, server))
}

/// Inserts per second through alpha's daemon with `writers` threads.
fn rate(b: &Procs, writers: usize, dur: Duration, base: u64) -> Result<f64> {
    let alpha = b.dir.join("alpha");
    let stop = AtomicBool::new(false);
    let count = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..writers {
            let (stop, count, alpha) = (&stop, &count, &alpha);
            s.spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if insert(alpha, base + (t as u64) * 10_000_000 + i) {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    i += 1;
                }
            });
        }
        std::thread::sleep(dur);
        stop.store(true, Ordering::Relaxed);
    });
    Ok(count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

/// The ids in the `load` table of the store in `data_dir`.
fn ids(data_dir: &Path) -> Result<std::collections::BTreeSet<u64>> {
    let conn = shipper::store::open_read_only(&data_dir.join(shipper::store::DATABASE_FILE))?;
    let mut stmt = conn.prepare("SELECT id FROM load")?;
    let rows = stmt.query_map([], |r| r.get::<_, i64>(0))?;
    let mut out = std::collections::BTreeSet::new();
    for r in rows {
        out.insert(r? as u64);
    }
    Ok(out)
}

/// One round's outcome.
struct Round {
    lost: usize,
    span_ms: u64,
    acked: usize,
}

/// Runs a load on alpha, kills it (and hides its open segment when
/// `share_gone`), and counts what beta lacks of the acknowledged writes.
fn round(dir: &Path, mode: Mode, share_gone: bool, smb: bool) -> Result<Round> {
    let (mut b, mut server) = pair(dir, mode, smb)?;
    let acks: Arc<Mutex<BTreeMap<u64, Instant>>> = Default::default();
    let stop = Arc::new(AtomicBool::new(false));
    let alpha = b.dir.join("alpha");
    let writers: Vec<_> = (0..4u64)
        .map(|t| {
            let (acks, stop, alpha) = (acks.clone(), stop.clone(), alpha.clone());
            std::thread::spawn(move || {
                let mut id = t * 10_000_000;
                while !stop.load(Ordering::Relaxed) {
                    id += 1;
                    if insert(&alpha, id) {
                        acks.lock().expect("acks").insert(id, Instant::now());
                    } else {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    b.kill("alpha")?;
    if share_gone && server.is_some() {
        // The machine is gone: its smbd with it.
        server.take();
    } else if share_gone {
        let open = alpha.join("logs").join(shipper::format::CURRENT_FILE_NAME);
        std::fs::rename(&open, open.with_extension("gone"))
            .with_context(|| format!("hide {}", open.display()))?;
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        let _ = w.join();
    }
    let killed = Instant::now();
    b.wait("beta to take over", 60, || {
        b.status("beta")["role"] == "active"
    })?;
    if killed.elapsed() > Duration::from_secs(60) {
        bail!("beta did not take over");
    }
    let have = ids(&b.dir.join("beta"))?;
    let acks = acks.lock().expect("acks");
    let lost: Vec<Instant> = acks
        .iter()
        .filter(|(id, _)| !have.contains(id))
        .map(|(_, t)| *t)
        .collect();
    let span_ms = match (lost.iter().min(), lost.iter().max()) {
        (Some(a), Some(z)) => z.duration_since(*a).as_millis() as u64,
        _ => 0,
    };
    let r = Round {
        lost: lost.len(),
        span_ms,
        acked: acks.len(),
    };
    drop(acks);
    drop(b);
    let _ = std::fs::remove_dir_all(dir);
    Ok(r)
}

pub fn rpo(dir: &Path, rounds: usize, seconds: f64, smb: bool) -> Result<ExitCode> {
    if smb {
        println!(
            "the active's share: its log directory through a private smbd, encrypted; the stream keyed and encrypted"
        );
    }
    let dur = Duration::from_secs_f64(seconds);
    println!(
        "commit rate through the active's daemon: three pairs side by side, measured in turn, 3 rounds of {seconds} s, medians:"
    );
    let modes = [Mode::Async, Mode::Block, Mode::Remote];
    let mut pairs = Vec::new();
    for (i, mode) in modes.into_iter().enumerate() {
        pairs.push(pair(&dir.join(format!("rate-{i}")), mode, smb)?);
    }
    let mut samples: BTreeMap<(usize, usize), Vec<f64>> = BTreeMap::new();
    let mut base = 0u64;
    for _ in 0..3 {
        for writers in [1usize, 16] {
            for (i, (b, _)) in pairs.iter().enumerate() {
                base += 1_000_000_000;
                samples
                    .entry((i, writers))
                    .or_default()
                    .push(rate(b, writers, dur, base)?);
            }
        }
    }
    drop(pairs);
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let mut rates: BTreeMap<(usize, usize), f64> = BTreeMap::new();
    for ((i, writers), mut v) in samples {
        let m = median(&mut v);
        println!(
            "  {:<32} {writers:>2} writer(s): {m:>8.0} tx/s (of {:.0}..{:.0})",
            modes[i].name(),
            v[0],
            v[v.len() - 1]
        );
        rates.insert((i, writers), m);
    }
    for writers in [1usize, 16] {
        let base = rates[&(0, writers)].max(1.0);
        println!(
            "ratio at {writers:>2} writer(s): block mode {:.2}, commit = \"remote\" {:.2} (against asynchronous)",
            rates[&(1, writers)] / base,
            rates[&(2, writers)] / base
        );
    }
    let mut gone_block = Vec::new();
    let mut spans = Vec::new();
    for (mode, gone) in [
        (Mode::Block, false),
        (Mode::Block, true),
        (Mode::Remote, false),
        (Mode::Remote, true),
        (Mode::Async, true),
    ] {
        for n in 0..rounds {
            let r = round(&dir.join("round"), mode, gone, smb)?;
            println!(
                "{} / share {}: round {}: {} acknowledged, {} lost, spanning {} ms of writes",
                mode.name(),
                if gone { "gone" } else { "readable" },
                n + 1,
                r.acked,
                r.lost,
                r.span_ms
            );
            if mode == Mode::Block && gone {
                gone_block.push(r.lost);
                spans.push(r.span_ms);
            }
        }
    }
    let _ = std::fs::remove_dir_all(dir);
    gone_block.sort_unstable();
    spans.sort_unstable();
    println!(
        "block mode, share gone: lost p50 {} transaction(s), p50 span {} ms of writes",
        gone_block.get(gone_block.len() / 2).copied().unwrap_or(0),
        spans.get(spans.len() / 2).copied().unwrap_or(0)
    );
    let p50 = gone_block.get(gone_block.len() / 2).copied().unwrap_or(0);
    println!("rpo_lost_p50 {p50}");
    Ok(ExitCode::SUCCESS)
}
