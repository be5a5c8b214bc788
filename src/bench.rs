//! `logship bench`: benchmarks that run logship's path and a baseline in the
//! same run and print the ratio. Figures belong in the README with the
//! machine they came from.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Subcommand;
use rusqlite::Connection;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Small transactions through the store (log fdatasync, SQLite
    /// synchronous=NORMAL) against plain SQLite (WAL, synchronous=FULL, one
    /// connection per writer), with each writer count. Ends with
    /// `ratio <store/sqlite at the largest writer count>`.
    Commit {
        /// Directory for the databases (removed afterwards). Put it on the disk you want to measure.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Writer counts to measure.
        #[arg(long, value_delimiter = ',', default_value = "1,16")]
        writers: Vec<usize>,
        /// Rounds; the median rate of the rounds is reported.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Replay of N logged small transactions into a copy, against
    /// re-executing the same SQL on an identical copy (1000 statements per
    /// SQLite transaction). Ends with `ratio <replay/sql>`.
    Replay {
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Transactions to log and replay.
        #[arg(long, default_value_t = 80_000)]
        transactions: usize,
    },
    /// Lag from seal on the active to replayed on the copy, with the replay
    /// daemon polling as it does by default, and the daemon's CPU use while
    /// idle. (No baseline: the figure to compare with is the poll interval.)
    Lag {
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Seal-to-replay measurements.
        #[arg(long, default_value_t = 30)]
        samples: usize,
        /// The replay daemon's poll interval.
        #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
        poll: Duration,
        /// Copy over SMB (encryption on) from a private smbd on loopback that
        /// exports the active's log directory (needs root and samba).
        #[arg(long)]
        smb: bool,
    },
    /// Copy + inspection of sealed segments from a directory share into a
    /// copy's log directory, as the replay daemon does, against `cp` of the
    /// same files. Ends with `ratio <ship/cp>`.
    Ship {
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Segments to ship.
        #[arg(long, default_value_t = 200)]
        segments: u64,
        /// Over SMB from a private smbd on loopback (needs root and samba),
        /// against `smbclient -c 'prompt; mget *'`, unencrypted and with
        /// encryption required.
        #[arg(long)]
        smb: bool,
        /// Rounds; the median of each side is reported.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Mail: messages/s durable end to end through the relay into the active
    /// store, and straight over LMTP into the node and into Dovecot's LMTP
    /// (needs root and dovecot-lmtpd). Ends with `ratio <node/dovecot>`.
    Mail {
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Messages per leg.
        #[arg(long, default_value_t = 2000)]
        messages: usize,
        /// Concurrent client connections.
        #[arg(long, default_value_t = 8)]
        clients: usize,
    },
    /// What an unplanned failover loses, and what block mode and
    /// synchronous commit cost: the commit rate at 1 and 16 writers with
    /// asynchronous shipping (block mode off), block mode, and
    /// `commit = "remote"`; then rounds that SIGKILL the active under load,
    /// its share readable or its open segment gone, counting the
    /// acknowledged transactions missing on the new active. Ends with
    /// `rpo_lost_p50 <transactions>` (block mode, share gone).
    Rpo {
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Rounds of each kind.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Seconds per commit-rate figure.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// The active's share over SMB (a private smbd, killed with the
        /// node in the rounds whose share is gone).
        #[arg(long)]
        smb: bool,
    },
    /// SQL over HTTP: 1 and 16 keep-alive clients, each inserting one row a
    /// request through `/db/execute` on a store, against plain SQLite (WAL,
    /// synchronous=FULL, a connection per writer) with the same statement;
    /// and the time HTTP adds per request over `Store::transaction`. Ends
    /// with the 16-client ratio.
    Http {
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Seconds per figure.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Rounds; the median is shown.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Failover time: a two-node cluster with the default timings under a
    /// steady write load; each round SIGKILLs the active and measures until
    /// the other node accepts a write (the killed node rejoins before the
    /// next round). Then a planned move and back. Ends with `rto_p50_ms <x>`.
    Failover {
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Kill rounds.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Nodes in the cluster: 2 uses the file-share witness; 3 to 16
        /// start a private etcd (Debian's etcd-server) to arbitrate.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(2..=16))]
        nodes: u8,
    },
}

const SCHEMA: &str =
    "CREATE TABLE msgs (id INTEGER PRIMARY KEY, box INTEGER NOT NULL, body BLOB NOT NULL);
CREATE TABLE counters (id INTEGER PRIMARY KEY, n INTEGER NOT NULL);
INSERT INTO counters VALUES (0, 0), (1, 0), (2, 0), (3, 0);";
const INSERT: &str = "INSERT INTO msgs (box, body) VALUES (?1, zeroblob(200))";
const UPDATE: &str = "UPDATE counters SET n = n + 1 WHERE id = ?1";

pub fn run(cmd: BenchCommand) -> Result<ExitCode> {
    match cmd {
        BenchCommand::Commit {
            dir,
            seconds,
            writers,
            rounds,
        } => commit(
            dir,
            Duration::from_secs_f64(seconds),
            &writers,
            rounds.max(1),
        ),
        BenchCommand::Mail {
            dir,
            messages,
            clients,
        } => crate::bench_mail::mail(&bench_dir(dir)?, messages.max(1), clients.max(1)),
        BenchCommand::Rpo {
            dir,
            rounds,
            seconds,
            smb,
        } => crate::bench_rpo::rpo(&bench_dir(dir)?, rounds.max(1), seconds, smb),
        BenchCommand::Http {
            dir,
            seconds,
            rounds,
        } => http(
            &bench_dir(dir)?,
            Duration::from_secs_f64(seconds.max(0.1)),
            rounds.max(1),
        ),
        BenchCommand::Failover { dir, rounds, nodes } => {
            crate::bench_failover::failover(&bench_dir(dir)?, rounds.max(1), nodes as usize)
        }
        BenchCommand::Lag {
            dir,
            samples,
            poll,
            smb,
        } => crate::bench_copy::lag(&bench_dir(dir)?, samples, poll, smb),
        BenchCommand::Replay { dir, transactions } => {
            crate::bench_copy::replay(&bench_dir(dir)?, transactions)
        }
        BenchCommand::Ship {
            dir,
            segments,
            rounds,
            smb,
        } => {
            if smb {
                crate::bench_copy::ship_smb(&bench_dir(dir)?, segments, rounds.max(1))
            } else {
                crate::bench_copy::ship(&bench_dir(dir)?, segments, rounds.max(1))
            }
        }
    }
}

/// A fresh directory for one benchmark run (under `dir` or the temp dir).
pub fn bench_dir(dir: Option<PathBuf>) -> Result<PathBuf> {
    let base = dir
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("logship-bench-{}", std::process::id()));
    std::fs::create_dir_all(&base).with_context(|| format!("create {}", base.display()))?;
    if let Some(fs) = filesystem_of(&base) {
        println!("directory {}; filesystem {fs}", base.display());
    }
    Ok(base)
}

fn commit(
    dir: Option<PathBuf>,
    dur: Duration,
    writers: &[usize],
    rounds: usize,
) -> Result<ExitCode> {
    let base = dir
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("logship-bench-{}", std::process::id()));
    std::fs::create_dir_all(&base).with_context(|| format!("create {}", base.display()))?;
    println!(
        "bench commit: INSERT of a 200-byte row + UPDATE of one of 4 counters per transaction"
    );
    println!(
        "directory {}; {} s per run, median of {rounds} rounds",
        base.display(),
        dur.as_secs_f64()
    );
    if let Some(fs) = filesystem_of(&base) {
        println!("filesystem {fs}");
    }
    match shipper::log::direct_io_block(&base)? {
        Some(b) => println!("log writes: direct I/O in {} KiB blocks", b / 1024),
        None => println!("log writes: through the page cache (no direct I/O here)"),
    }
    println!(
        "{:>8} {:>14} {:>14} {:>8}",
        "writers", "store tx/s", "sqlite tx/s", "ratio"
    );
    let mut last_ratio = 0.0;
    let result = (|| -> Result<()> {
        for &n in writers {
            let mut store_rates = Vec::new();
            let mut sqlite_rates = Vec::new();
            for round in 0..rounds {
                // Interleave the two so that disk noise hits both alike.
                store_rates.push(run_store(&base.join(format!("store-{n}-{round}")), n, dur)?);
                sqlite_rates.push(run_sqlite(
                    &base.join(format!("sqlite-{n}-{round}")),
                    n,
                    dur,
                )?);
            }
            let s = median(&mut store_rates);
            let q = median(&mut sqlite_rates);
            last_ratio = s / q;
            println!("{n:>8} {s:>14.0} {q:>14.0} {last_ratio:>8.2}");
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&base);
    result?;
    println!("ratio {last_ratio:.2}");
    Ok(ExitCode::SUCCESS)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Runs `n` threads calling `work(thread, i)` until `dur` passes; returns transactions per second.
fn drive(n: usize, dur: Duration, work: impl Fn(usize, u64) -> Result<()> + Sync) -> Result<f64> {
    let stop = AtomicBool::new(false);
    let count = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let handles: Vec<_> = (0..n)
            .map(|t| {
                let (stop, count, work) = (&stop, &count, &work);
                s.spawn(move || -> Result<()> {
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        work(t, i)?;
                        i += 1;
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(())
                })
            })
            .collect();
        std::thread::sleep(dur);
        stop.store(true, Ordering::Relaxed);
        for h in handles {
            h.join().expect("bench thread panicked")?;
        }
        Ok(())
    })?;
    Ok(count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

fn run_store(dir: &Path, n: usize, dur: Duration) -> Result<f64> {
    shipper::Store::init(dir)?;
    let store = Arc::new(shipper::Store::open(dir, shipper::StoreOptions::default())?);
    store.transaction(|tx| {
        tx.execute_script(SCHEMA, |_, _, _| Ok(()))?;
        Ok(())
    })?;
    let rate = drive(n, dur, |t, i| {
        store.transaction(move |tx| {
            let c = tx.conn();
            c.prepare_cached(INSERT)?.execute([t as i64])?;
            c.prepare_cached(UPDATE)?
                .execute([((t as u64 + i) % 4) as i64])?;
            Ok(())
        })?;
        Ok(())
    })?;
    drop(store);
    std::fs::remove_dir_all(dir).ok();
    Ok(rate)
}

fn run_sqlite(dir: &Path, n: usize, dur: Duration) -> Result<f64> {
    run_sqlite_with(dir, n, dur, |c, t, i| {
        c.prepare_cached(INSERT)?.execute([t as i64])?;
        c.prepare_cached(UPDATE)?
            .execute([((t as u64 + i) % 4) as i64])?;
        Ok(())
    })
}

/// Plain SQLite (WAL, synchronous=FULL, a connection per writer), each
/// transaction `work(connection, writer, i)` between BEGIN and COMMIT.
fn run_sqlite_with(
    dir: &Path,
    n: usize,
    dur: Duration,
    work: impl Fn(&Connection, usize, u64) -> Result<()> + Sync,
) -> Result<f64> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("plain.db");
    let open = |path: &Path| -> Result<Connection> {
        let c = Connection::open(path)?;
        c.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;")?;
        c.busy_timeout(Duration::from_secs(60))?;
        Ok(c)
    };
    open(&path)?.execute_batch(SCHEMA)?;
    let conns: Vec<std::sync::Mutex<Connection>> = (0..n)
        .map(|_| open(&path).map(std::sync::Mutex::new))
        .collect::<Result<_>>()?;
    let rate = drive(n, dur, |t, i| {
        let c = conns[t].lock().expect("connection lock");
        c.execute_batch("BEGIN IMMEDIATE")?;
        work(&c, t, i)?;
        c.execute_batch("COMMIT")?;
        Ok(())
    })?;
    drop(conns);
    std::fs::remove_dir_all(dir).ok();
    Ok(rate)
}

/// "; with a journal" or "; no journal" for an ext3/ext4 device, from
/// whether the kernel runs a jbd2 journal for it (/proc/fs/jbd2/<dev>-<n>);
/// empty for other filesystems.
fn journal_of(fstype: &str, device: &str) -> &'static str {
    if !matches!(fstype, "ext3" | "ext4") {
        return "";
    }
    let Some(dev) = device.strip_prefix("/dev/") else {
        return "";
    };
    let prefix = format!("{}-", dev.replace('/', "!"));
    let journaled = std::fs::read_dir("/proc/fs/jbd2").is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(&prefix))
    });
    if journaled {
        "; with a journal"
    } else {
        "; no journal"
    }
}

/// The mount that holds `path`, from /proc/self/mounts: "TYPE (DEVICE on
/// MOUNTPOINT, OPTIONS)". Whether a filesystem journals decides what an
/// fsync costs, so the figures are meaningless without it.
pub fn filesystem_of(path: &Path) -> Option<String> {
    let path = std::fs::canonicalize(path).ok()?;
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 4 && path.starts_with(f[1])).then(|| {
                (
                    f[1].len(),
                    format!(
                        "{} ({} on {}, {}){}",
                        f[2],
                        f[0],
                        f[1],
                        f[3],
                        journal_of(f[2], f[0])
                    ),
                )
            })
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, s)| s)
}

/// The statement each HTTP request and each baseline transaction runs.
const HTTP_INSERT: &str = "INSERT INTO msgs (box, body) VALUES (?, zeroblob(200))";

/// `bench http`.
fn http(base: &Path, dur: Duration, rounds: usize) -> Result<ExitCode> {
    println!("bench http: one INSERT of a 200-byte row per request (or transaction)");
    println!(
        "{:>8} {:>14} {:>14} {:>8}",
        "clients", "http req/s", "sqlite tx/s", "ratio"
    );
    let mut last = 0.0;
    let mut one_http = 0.0;
    for n in [1usize, 16] {
        let (mut h, mut q) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            // Interleaved, so that disk noise hits both alike.
            h.push(run_http(&base.join(format!("http-{n}-{round}")), n, dur)?);
            q.push(run_sqlite_with(
                &base.join(format!("sqlite-{n}-{round}")),
                n,
                dur,
                |c, t, _| {
                    c.prepare_cached(HTTP_INSERT)?.execute([t as i64])?;
                    Ok(())
                },
            )?);
        }
        let (hm, qm) = (median(&mut h), median(&mut q));
        last = hm / qm;
        println!("{n:>8} {hm:>14.0} {qm:>14.0} {last:>8.2}");
        if n == 1 {
            one_http = hm;
        }
    }
    let mut direct = Vec::new();
    for round in 0..rounds {
        let dir = base.join(format!("direct-{round}"));
        shipper::Store::init(&dir)?;
        let store = shipper::Store::open(&dir, shipper::StoreOptions::default())?;
        store.transaction(|tx| tx.execute_script(SCHEMA, |_, _, _| Ok(())))?;
        direct.push(drive(1, dur, |t, _| {
            store.transaction(move |tx| {
                tx.conn().prepare_cached(HTTP_INSERT)?.execute([t as i64])?;
                Ok(())
            })?;
            Ok(())
        })?);
        drop(store);
        std::fs::remove_dir_all(&dir).ok();
    }
    let one_direct = median(&mut direct);
    println!(
        "one client: {one_http:.0} req/s over HTTP, {one_direct:.0} tx/s through Store::transaction: HTTP adds {:.0} µs a request",
        1e6 / one_http - 1e6 / one_direct
    );
    let _ = std::fs::remove_dir_all(base);
    println!("ratio {last:.2}");
    Ok(ExitCode::SUCCESS)
}

/// One keep-alive HTTP/1.1 connection of `bench http`.
struct Client {
    stream: std::io::BufReader<std::net::TcpStream>,
    request: Vec<u8>,
    answer: Vec<u8>,
}

impl Client {
    fn connect(addr: &str) -> Result<Client> {
        let s = std::net::TcpStream::connect(addr).with_context(|| format!("connect to {addr}"))?;
        s.set_nodelay(true)?;
        Ok(Client {
            stream: std::io::BufReader::new(s),
            request: Vec::new(),
            answer: Vec::new(),
        })
    }

    /// POSTs a JSON `body` to `path`: the status and the answer's body.
    fn post(&mut self, path: &str, body: &str) -> Result<(u16, String)> {
        use std::io::{BufRead, Read, Write};
        self.request.clear();
        write!(
            self.request,
            "POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
        self.stream.get_mut().write_all(&self.request)?;
        let mut status = 0u16;
        let mut length = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            anyhow::ensure!(
                self.stream.read_line(&mut line)? > 0,
                "the API closed the connection"
            );
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if status == 0 {
                status = l
                    .split(' ')
                    .nth(1)
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0);
            } else if let Some((k, v)) = l.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().context("a bad Content-Length")?;
            }
        }
        anyhow::ensure!(length <= 1 << 20, "an answer of {length} bytes");
        self.answer.resize(length, 0);
        self.stream.read_exact(&mut self.answer)?;
        Ok((status, String::from_utf8_lossy(&self.answer).into_owned()))
    }
}

/// `n` keep-alive clients against the API of a store in `dir`.
fn run_http(dir: &Path, n: usize, dur: Duration) -> Result<f64> {
    shipper::Store::init(dir)?;
    let store = Arc::new(shipper::Store::open(dir, shipper::StoreOptions::default())?);
    store.transaction(|tx| tx.execute_script(SCHEMA, |_, _, _| Ok(())))?;
    let addr = format!("127.0.0.1:{}", harness::sys::free_tcp_port()?);
    let stop = Arc::new(AtomicBool::new(false));
    crate::http_api::serve(
        &addr,
        crate::http_api::Api {
            node: "bench".into(),
            data_dir: dir.to_path_buf(),
            serving: Arc::new(std::sync::Mutex::new(Some(store.clone()))),
            snapshot: Default::default(),
            peers: Vec::new(),
            tls: None,
            forwarder: Default::default(),
            users: None,
            timeout: Duration::from_secs(30),
        },
        stop.clone(),
    )?;
    // A lean keep-alive client on a TcpStream (one write a request, the
    // answer read by its Content-Length), so that the clients, which share
    // the machine with the server, cost little beside it. The server does
    // all of its work as for any client.
    let clients: Vec<std::sync::Mutex<Client>> = (0..n)
        .map(|_| Client::connect(&addr).map(std::sync::Mutex::new))
        .collect::<Result<_>>()?;
    let rate = drive(n, dur, |t, _| {
        let body = format!(r#"[["{HTTP_INSERT}", {t}]]"#);
        let mut c = clients[t].lock().expect("client lock");
        let (status, text) = c.post("/db/execute", &body)?;
        anyhow::ensure!(
            status == 200 && text.contains("rows_affected"),
            "the API answered {status}: {text}"
        );
        Ok(())
    });
    stop.store(true, Ordering::Relaxed);
    drop(clients);
    drop(store);
    std::fs::remove_dir_all(dir).ok();
    rate
}
