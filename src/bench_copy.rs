//! `logship bench replay` and `logship bench ship`: the passive's two hot
//! paths against their baselines, in one run, ending with the ratio.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use shipper::format::{Body, Record, RecordKind};
use shipper::share::Share;
use shipper::{ContentHash, Lsn, SchemaHash};

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The SQL of transaction `i` (75% inserts, 25% updates of earlier rows).
fn statement(i: usize) -> String {
    if i % 4 == 3 {
        // An earlier inserted row (ids that are 3 mod 4 are updates, not rows).
        let mut j = (i * 7919) % (i - 1) + 1;
        if j % 4 == 3 {
            j -= 1;
        }
        format!("UPDATE items SET a = a + 1, b = 'u{i}' WHERE id = {j}")
    } else {
        format!(
            "INSERT INTO items (id, a, b) VALUES ({i}, {}, 'row number {i} of the bench')",
            i % 977
        )
    }
}

/// A new store in `dir` holding `schema` (one logged transaction).
fn store_with(dir: &Path, schema: &'static str) -> Result<shipper::Store> {
    shipper::Store::init(dir)?;
    let store = shipper::Store::open(dir, shipper::StoreOptions::default())?;
    store.transaction(move |tx| tx.execute_script(schema, |_, _, _| Ok(())))?;
    Ok(store)
}

pub fn replay(base: &Path, n: usize) -> Result<ExitCode> {
    let result = (|| -> Result<(f64, f64)> {
        let src = base.join("active");
        drop(store_with(
            &src,
            "CREATE TABLE items (id INTEGER PRIMARY KEY, a INTEGER NOT NULL, b TEXT NOT NULL)",
        )?);
        // Two identical copies, seeded before the transactions.
        for copy in ["replay", "sql"] {
            let dir = base.join(copy);
            std::fs::create_dir_all(&dir)?;
            shipper::seed::snapshot(&src.join("store.db"), &dir.join("store.db"))?;
        }
        // Log N transactions, one record each (built without fdatasync: the
        // benchmark measures replay, not commit).
        println!("logging {n} transactions...");
        let opts = shipper::StoreOptions {
            fsync: false,
            ..Default::default()
        };
        let store = shipper::Store::open(&src, opts)?;
        for i in 0..n {
            let sql = statement(i + 1);
            store.transaction(move |tx| {
                tx.conn().execute(&sql, [])?;
                Ok(())
            })?;
        }
        store.seal()?;
        let end = store.state();
        drop(store);

        // Replay.
        let mut replayer = replayer::replay::Replayer::open(&base.join("replay").join("store.db"))?;
        let t = Instant::now();
        let progress = replayer.replay_available(&src.join("logs"))?;
        let replay_secs = t.elapsed().as_secs_f64();
        if progress.lsn != end.lsn || progress.records != n as u64 {
            bail!(
                "replay reached LSN {} after {} records, expected {} / {n}",
                progress.lsn,
                progress.records,
                end.lsn
            );
        }
        // Re-executing the SQL, 1000 statements per transaction.
        let conn = rusqlite::Connection::open(base.join("sql").join("store.db"))?;
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")?;
        let t = Instant::now();
        for chunk in (1..=n).collect::<Vec<_>>().chunks(1000) {
            conn.execute_batch("BEGIN")?;
            for i in chunk {
                conn.execute(&statement(*i), [])?;
            }
            conn.execute_batch("COMMIT")?;
        }
        let sql_secs = t.elapsed().as_secs_f64();
        // Both copies must agree with the active's log.
        let replayed = shipper::hash::full_scan(replayer.conn())?;
        let reexecuted = shipper::hash::full_scan(&conn)?;
        if replayed != end.hash || reexecuted != end.hash {
            bail!(
                "content hashes differ: log {}, replay {replayed}, SQL {reexecuted}",
                end.hash
            );
        }
        println!("replay {replay_secs:.3} s, re-execute {sql_secs:.3} s");
        Ok((n as f64 / replay_secs, n as f64 / sql_secs))
    })();
    let _ = std::fs::remove_dir_all(base);
    let (replay, sql) = result?;
    println!("replay       {replay:>10.0} tx/s");
    println!("re-execute   {sql:>10.0} tx/s (the same SQL, 1000 statements per transaction)");
    println!("ratio {:.2}", replay / sql);
    Ok(ExitCode::SUCCESS)
}

/// Builds `segments` sealed segments of ~200 KiB records in `dir`.
fn build_log(dir: &Path, segments: u64) -> Result<()> {
    let db = shipper::DatabaseId::random()?;
    shipper::log::LogWriter::create(dir, db, shipper::Epoch(1), SchemaHash(0))?;
    let mut w = shipper::log::LogWriter::open(dir, db, Lsn::ZERO)?;
    let mut lsn = Lsn::ZERO;
    let mut payload = Vec::new();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut body = vec![0u8; 200 * 1024];
    while (shipper::log::list_sealed(dir)?.len() as u64) < segments {
        for b in body.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        lsn = lsn.next();
        let rec = Record {
            time_us: 0,
            hash: ContentHash(lsn.0 as u128),
            body: Body::Changeset(body.clone()),
        };
        payload.clear();
        rec.encode(&mut payload);
        w.append(
            RecordKind::Changeset,
            lsn,
            &payload,
            rec.hash,
            SchemaHash(0),
        )?;
        w.write()?;
    }
    Ok(())
}

/// Sealed segments of a source log, with their paths.
type Segments = Vec<(shipper::Generation, PathBuf)>;

/// A source log of `segments` sealed segments under `base`: its directory,
/// the segments, and their database.
fn sealed_source(base: &Path, segments: u64) -> Result<(PathBuf, Segments, shipper::DatabaseId)> {
    let src = base.join("source");
    println!("building {segments} sealed segments...");
    build_log(&src, segments)?;
    let files: Vec<_> = shipper::log::list_sealed(&src)?
        .into_iter()
        .take(segments as usize)
        .collect();
    let db = shipper::log::read_header(&files[0].1)?.database_id;
    Ok((src, files, db))
}

pub fn ship(base: &Path, segments: u64, rounds: usize) -> Result<ExitCode> {
    let result = (|| -> Result<(f64, f64, u64)> {
        let (src, files, db) = sealed_source(base, segments)?;
        let bytes: u64 = files.len() as u64 * shipper::format::SEGMENT_SIZE as u64;
        let share = Share::Dir(src.clone());
        let (mut ours, mut cps) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            // cp of the same files.
            let dest = base.join(format!("cp-{round}"));
            std::fs::create_dir_all(&dest)?;
            let t = Instant::now();
            let status = std::process::Command::new("cp")
                .args(files.iter().map(|(_, p)| p))
                .arg(&dest)
                .status()
                .context("run cp")?;
            if !status.success() {
                bail!("cp failed: {status}");
            }
            cps.push(t.elapsed().as_secs_f64());
            std::fs::remove_dir_all(&dest)?;
            // Copy + inspect, as the replay daemon does.
            let dest = base.join(format!("copy-{round}"));
            let logs = dest.join("logs");
            std::fs::create_dir_all(&logs)?;
            let t = Instant::now();
            copy_and_inspect(&share, &files, db, &logs)?;
            ours.push(t.elapsed().as_secs_f64());
            std::fs::remove_dir_all(&dest)?;
        }
        Ok((median(&mut ours), median(&mut cps), bytes))
    })();
    let _ = std::fs::remove_dir_all(base);
    let (ours, cp, bytes) = result?;
    let mib = bytes as f64 / (1 << 20) as f64;
    println!(
        "ship (copy + inspect) {:>8.0} MiB/s ({ours:.3} s)",
        mib / ours
    );
    println!("cp                    {:>8.0} MiB/s ({cp:.3} s)", mib / cp);
    println!("ratio {:.2}", cp / ours);
    Ok(ExitCode::SUCCESS)
}

/// Copies and inspects `files` from `share` into `logs`, as the replay
/// daemon does when it is behind: segments copied and inspected on
/// parallel lanes, the chain check and the rename in generation order.
fn copy_and_inspect(
    share: &Share,
    files: &[(shipper::Generation, std::path::PathBuf)],
    db: shipper::DatabaseId,
    logs: &Path,
) -> Result<()> {
    let mut prev = None;
    for window in files.chunks(replayer::daemon::MAX_WINDOW) {
        let mut outcome = Ok(());
        replayer::copier::copy_window(
            share,
            logs,
            window[0].0,
            window.len(),
            db,
            replayer::daemon::LANES,
            shipper::format::NameCase::Lower,
            &mut |g, f| {
                let r = (|| -> Result<()> {
                    let f = f?.context("segment vanished")?;
                    let ins = f.inspected?;
                    replayer::inspector::follows(&f.path, &ins, prev.as_ref())?;
                    std::fs::rename(&f.path, logs.join(shipper::format::segment_file_name(g)))?;
                    prev = Some(ins);
                    Ok(())
                })();
                let go_on = r.is_ok();
                if outcome.is_ok() {
                    outcome = r;
                }
                go_on
            },
        );
        outcome?;
    }
    Ok(())
}

pub fn ship_smb(base: &Path, segments: u64, rounds: usize) -> Result<ExitCode> {
    use harness::samba::{self, Samba};
    let (src, files, db) = sealed_source(base, segments)?;
    let mib = (files.len() * shipper::format::SEGMENT_SIZE) as f64 / (1 << 20) as f64;
    let server = Samba::try_start(&Samba::share_section("bench", &src))?;
    let auth = server.root.path().join("smbclient.auth");
    std::fs::write(
        &auth,
        format!(
            "username = {}\npassword = {}\n",
            samba::USER,
            samba::PASSWORD
        ),
    )?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&auth, std::fs::Permissions::from_mode(0o600))?;
    }
    let mut last_ratio = 0.0;
    for (label, encrypt, protection) in [
        ("unencrypted", shipper::share::Encrypt::Off, "sign"),
        (
            "encryption required",
            shipper::share::Encrypt::Required,
            "encrypt",
        ),
    ] {
        let share = Share::open(
            &server.url("bench"),
            &shipper::share::SmbOptions {
                password_file: Some(server.try_password_file()?),
                file_only: true,
                encrypt,
                timeout: Some(Duration::from_secs(10)),
            },
        )?;
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            let dest = base.join(format!("smbclient-{round}"));
            std::fs::create_dir_all(&dest)?;
            let t = Instant::now();
            let out = std::process::Command::new("smbclient")
                .arg("//127.0.0.1/bench")
                .args(["-p", &server.port.to_string()])
                .arg("-A")
                .arg(&auth)
                .arg(format!("--client-protection={protection}"))
                .arg("-c")
                .arg(format!("prompt; lcd {}; mget LS0*", dest.display()))
                .output()
                .context("run smbclient")?;
            if !out.status.success() {
                bail!("smbclient failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            theirs.push(t.elapsed().as_secs_f64());
            std::fs::remove_dir_all(&dest)?;
            let dest = base.join(format!("copy-{round}"));
            std::fs::create_dir_all(&dest)?;
            let t = Instant::now();
            copy_and_inspect(&share, &files, db, &dest)?;
            ours.push(t.elapsed().as_secs_f64());
            std::fs::remove_dir_all(&dest)?;
        }
        let (o, t) = (median(&mut ours), median(&mut theirs));
        last_ratio = t / o;
        println!(
            "{label:>20}: ship {:>6.0} MiB/s, smbclient {:>6.0} MiB/s, ratio {last_ratio:.2}",
            mib / o,
            mib / t
        );
    }
    drop(server);
    let _ = std::fs::remove_dir_all(base);
    println!("ratio {last_ratio:.2}");
    Ok(ExitCode::SUCCESS)
}

fn cpu_time() -> Duration {
    // SAFETY: an all-zero rusage is a valid value of this plain C struct,
    // and getrusage fills the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

pub fn lag(base: &Path, samples: usize, poll: Duration, smb: bool) -> Result<ExitCode> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut server = None;
    let result = (|| -> Result<(Vec<Duration>, f64)> {
        let active = base.join("active");
        let store = store_with(
            &active,
            "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)",
        )?;
        let copy = base.join("copy");
        std::fs::create_dir_all(&copy)?;
        shipper::seed::snapshot(&active.join("store.db"), &copy.join("store.db"))?;
        let source = if smb {
            use harness::samba::Samba;
            let s = server.insert(Samba::try_start(&Samba::share_section(
                "lag",
                &active.join("logs"),
            ))?);
            Share::open(
                &s.url("lag"),
                &shipper::share::SmbOptions {
                    password_file: Some(s.try_password_file()?),
                    file_only: true,
                    ..Default::default()
                },
            )?
        } else {
            Share::Dir(active.join("logs"))
        };
        println!("copying from {}", source.display());
        let cfg = replayer::ReplayConfig {
            node: "copy".into(),
            data_dir: copy.clone(),
            source_node: "active".into(),
            source,
            own_share: None,
            poll,
            epochs: Default::default(),
            replay_lag: Duration::ZERO,
        };
        static STOP: AtomicBool = AtomicBool::new(false);
        STOP.store(false, Ordering::Relaxed);
        let daemon = std::thread::spawn(move || replayer::run(&cfg, &STOP));
        let reader = shipper::store::open_read_only(&copy.join("store.db"))?;
        let copy_lsn = || -> Result<u64> {
            Ok(reader.query_row("SELECT lsn FROM _logship", [], |r| r.get::<_, i64>(0))? as u64)
        };
        let mut lags = Vec::new();
        for i in 0..samples {
            let done = store.transaction(move |tx| {
                tx.conn()
                    .execute("INSERT INTO t (v) VALUES (?1)", [format!("sample {i}")])?;
                Ok(())
            })?;
            // A random phase against the daemon's poll.
            std::thread::sleep(poll.mul_f64(((i * 7919) % 100) as f64 / 100.0));
            store.seal()?;
            let sealed = Instant::now();
            while copy_lsn()? < done.lsn.0 {
                if sealed.elapsed() > Duration::from_secs(30) {
                    bail!("the copy did not replay LSN {} within 30 s", done.lsn);
                }
                std::thread::sleep(Duration::from_micros(500));
            }
            lags.push(sealed.elapsed());
        }
        // Idle: nothing to copy; what does the daemon burn?
        let window = Duration::from_secs(3);
        let before = cpu_time();
        std::thread::sleep(window);
        let idle = (cpu_time() - before).as_secs_f64() / window.as_secs_f64() * 100.0;
        STOP.store(true, Ordering::Relaxed);
        daemon.join().expect("daemon thread")?;
        Ok((lags, idle))
    })();
    drop(server);
    let _ = std::fs::remove_dir_all(base);
    let (mut lags, idle) = result?;
    lags.sort();
    let pct = |p: f64| lags[((lags.len() - 1) as f64 * p).round() as usize];
    println!(
        "seal to replayed: p50 {:.1} ms, p90 {:.1} ms, max {:.1} ms over {} samples (poll {})",
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.9).as_secs_f64() * 1e3,
        lags[lags.len() - 1].as_secs_f64() * 1e3,
        lags.len(),
        humantime::format_duration(poll)
    );
    println!("idle replay daemon: {idle:.2}% of one core");
    Ok(ExitCode::SUCCESS)
}
