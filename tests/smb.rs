//! SMB shares against a real smbd started by the harness: the same share
//! operations over `smb://` as on a directory, clear and fast errors for a
//! wrong password and a missing share, and the passive copy end to end with
//! the active's log directory exported by Samba and read over SMB.

mod common;

use std::time::{Duration, Instant};

use common::samba::{self, Samba};
use shipper::share::{Share, SmbOptions};

fn opts(s: &Samba) -> SmbOptions {
    SmbOptions {
        password_file: Some(s.password_file()),
        timeout: Some(Duration::from_secs(5)),
        ..Default::default()
    }
}

/// `name` copied to the local `dest` by `fetch_many`, as one job.
fn fetch_one(
    share: &Share,
    name: &str,
    dest: &std::path::Path,
    max: u64,
) -> shipper::Result<Option<u64>> {
    let mut got = None;
    let jobs = [(name.to_string(), dest.to_path_buf())];
    share.fetch_many(&jobs, max, 1, &|_, _| (), &mut |_, r| {
        got = Some(r.map(|o| o.map(|(n, ())| n)));
        true
    });
    got.expect("the job ran")
}

fn exercise(share: &Share) {
    let name = format!("probe-{}.bin", std::process::id());
    assert!(!share.exists(&name).unwrap());
    assert_eq!(share.read(&name, 1 << 20).unwrap(), None);
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    share.write_atomic(&name, &data).unwrap();
    assert!(share.exists(&name).unwrap());
    assert_eq!(share.size(&name).unwrap(), Some(data.len() as u64));
    assert!(share.list().unwrap().contains(&name));
    assert_eq!(share.read(&name, 1 << 30).unwrap().unwrap(), data);
    assert_eq!(
        share.read_prefix(&name, 128).unwrap().unwrap(),
        &data[..128]
    );
    assert!(matches!(
        share.read(&name, 10),
        Err(shipper::Error::TooLarge { .. })
    ));
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("copy");
    assert_eq!(
        fetch_one(share, &name, &local, 1 << 30).unwrap(),
        Some(data.len() as u64)
    );
    assert!(matches!(
        fetch_one(share, &name, &local, 10),
        Err(shipper::Error::TooLarge { .. })
    ));
    assert_eq!(std::fs::read(&local).unwrap(), data);
    fetch_many(share, &tmp.path().join("many"));
    // Replacing an existing file is atomic and whole.
    share.write_atomic(&name, b"second").unwrap();
    assert_eq!(share.read(&name, 100).unwrap().unwrap(), b"second");
    share.remove(&name).unwrap();
    share.remove(&name).unwrap();
    assert!(!share.exists(&name).unwrap());
    assert!(!share.list().unwrap().contains(&name));
}

/// `fetch_many` on three lanes: results in job order, each file whole at
/// its destination and checked on its lane; a missing file is `None`, and
/// after `take` says stop no job starts (the jobs delivered stay a prefix).
fn fetch_many(share: &Share, local: &std::path::Path) {
    std::fs::create_dir_all(local).unwrap();
    let tag = std::process::id();
    let names: Vec<String> = (0..12).map(|i| format!("many-{tag}-{i:02}.bin")).collect();
    let body = |i: usize| -> Vec<u8> {
        (0..100_000 + i * 1000)
            .map(|b| (b * (i + 3) % 251) as u8)
            .collect()
    };
    for (i, n) in names.iter().enumerate() {
        if i != 9 {
            share.write_atomic(n, &body(i)).unwrap();
        }
    }
    share.write_atomic(&names[10], &vec![7u8; 300_000]).unwrap();
    let jobs: Vec<(String, std::path::PathBuf)> =
        names.iter().map(|n| (n.clone(), local.join(n))).collect();
    let check = |i: usize, bytes: &[u8]| (i, bytes.iter().map(|b| *b as u64).sum::<u64>());
    // Everything up to the missing file, in order.
    let mut seen = Vec::new();
    share.fetch_many(&jobs[..9], 200_000, 3, &check, &mut |i, r| {
        let (n, (j, sum)) = r.unwrap().unwrap();
        assert_eq!((i, j), (seen.len(), i), "results come in job order");
        assert_eq!(n, body(i).len() as u64);
        assert_eq!(sum, body(i).iter().map(|b| *b as u64).sum::<u64>());
        assert_eq!(std::fs::read(&jobs[i].1).unwrap(), body(i));
        seen.push(i);
        true
    });
    assert_eq!(seen, (0..9).collect::<Vec<_>>());
    // A missing file is `None`, a file over the limit `TooLarge`; stopping
    // at the gap leaves a prefix of the jobs delivered.
    let mut seen = Vec::new();
    share.fetch_many(&jobs[6..], 200_000, 3, &check, &mut |i, r| {
        seen.push(i);
        match i + 6 {
            9 => {
                assert!(matches!(r, Ok(None)), "{r:?}");
                false
            }
            10 => {
                assert!(matches!(r, Err(shipper::Error::TooLarge { .. })), "{r:?}");
                false
            }
            _ => r.unwrap().is_some(),
        }
    });
    assert!(seen.len() >= 4, "{seen:?}");
    assert_eq!(seen, (0..seen.len()).collect::<Vec<_>>());
    for n in &names {
        share.remove(n).unwrap();
    }
}

#[test]
fn a_share_behaves_the_same_over_smb_and_as_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let s = Samba::start(&Samba::share_section("data", dir.path()));
    exercise(&Share::Dir(dir.path().to_path_buf()));
    let smb = Share::open(&s.url("data"), &opts(&s)).unwrap();
    assert!(smb.reachable());
    exercise(&smb);
    // Both see the same files.
    std::fs::write(dir.path().join("local.txt"), b"from the directory").unwrap();
    assert_eq!(
        smb.read("local.txt", 100).unwrap().unwrap(),
        b"from the directory"
    );
}

#[test]
fn a_large_copy_streams_with_progress_and_resumes_after_a_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Samba::start(&Samba::share_section("data", dir.path()));
    let smb = Share::open(&s.url("data"), &opts(&s)).unwrap();
    // 12 MiB and a bit: several spans, the last one short.
    let data: Vec<u8> = (0..12 * 1024 * 1024 + 12_345u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(dir.path().join("big.db"), &data).unwrap();
    let local = tempfile::tempdir().unwrap();
    let dest = local.path().join("big.db");
    let mut seen: Vec<(u64, u64)> = Vec::new();
    let mut restarted_at = None;
    let n = smb
        .copy_to("big.db", &dest, |done, total| {
            seen.push((done, total));
            // The server goes away once the copy is under way.
            if restarted_at.is_none() && done >= 4 << 20 {
                restarted_at = Some(done);
                s.restart();
            }
        })
        .unwrap();
    assert_eq!(n, Some(data.len() as u64));
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    let restarted_at = restarted_at.expect("the copy reported progress past 4 MiB");
    assert!(restarted_at < data.len() as u64);
    // Progress came span by span, never backwards, to the end.
    assert!(seen.len() >= 6, "{seen:?}");
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "{seen:?}");
    assert!(seen.iter().all(|&(_, t)| t == data.len() as u64));
    assert_eq!(seen.last().unwrap().0, data.len() as u64);
    // A missing file is `None` and leaves nothing behind.
    assert_eq!(
        smb.copy_to("nothing.db", &local.path().join("x"), |_, _| {})
            .unwrap(),
        None
    );
    assert_eq!(std::fs::read_dir(local.path()).unwrap().count(), 1);
}

/// Samba's default, asynchronous reads (`aio read size` > 0), answers with
/// interim replies on which the SMB library loses credits; deep queues of
/// reads on one connection could then hang. The copier's depths (one read
/// in flight per lane, two in a streamed copy) must not, and every byte must
/// arrive.
#[test]
fn copies_from_a_share_with_samba_aio_on_complete_whole() {
    let dir = tempfile::tempdir().unwrap();
    let section =
        Samba::share_section("aio", dir.path()) + "    aio read size = 1\n    aio write size = 1\n";
    let s = Samba::start(&section);
    let smb = Share::open(&s.url("aio"), &opts(&s)).unwrap();
    let body = |i: usize| -> Vec<u8> {
        (0..(1 << 20) + i)
            .map(|b| (b.wrapping_mul(i + 7) >> 3) as u8)
            .collect()
    };
    let names: Vec<String> = (0..48).map(|i| format!("seg-{i:03}")).collect();
    let bodies: Vec<Vec<u8>> = (0..names.len()).map(body).collect();
    for (n, b) in names.iter().zip(&bodies) {
        std::fs::write(dir.path().join(n), b).unwrap();
    }
    let big: Vec<u8> = (0..24u32 << 20).map(|i| (i >> 5) as u8).collect();
    std::fs::write(dir.path().join("big"), &big).unwrap();
    let local = tempfile::tempdir().unwrap();
    let jobs: Vec<(String, std::path::PathBuf)> = names
        .iter()
        .map(|n| (n.clone(), local.path().join(n)))
        .collect();
    for round in 0..3 {
        let mut got = 0;
        smb.fetch_many(
            &jobs,
            2 << 20,
            3,
            &|i, bytes| bytes == bodies[i],
            &mut |i, r| {
                let (n, same) = r.unwrap().unwrap();
                assert!(
                    same && n == bodies[i].len() as u64,
                    "round {round}, file {i}"
                );
                got += 1;
                true
            },
        );
        assert_eq!(got, names.len());
        let dest = local.path().join("big");
        assert_eq!(
            smb.copy_to("big", &dest, |_, _| {}).unwrap(),
            Some(big.len() as u64)
        );
        assert!(std::fs::read(&dest).unwrap() == big, "round {round}");
    }
}

#[test]
fn a_wrong_password_and_a_missing_share_fail_fast_and_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let s = Samba::start(&Samba::share_section("data", dir.path()));
    let bad = s.root.path().join("bad-password");
    std::fs::write(&bad, "not-the-password").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o600)).unwrap();
    let o = SmbOptions {
        password_file: Some(bad.clone()),
        timeout: Some(Duration::from_secs(5)),
        ..Default::default()
    };
    let share = Share::open(&s.url("data"), &o).unwrap();
    let t = Instant::now();
    let err = share.exists("x").unwrap_err().to_string();
    assert!(
        t.elapsed() < Duration::from_secs(6),
        "took {:?}",
        t.elapsed()
    );
    assert!(err.contains(samba::USER) && err.contains("log on"), "{err}");
    assert!(
        !err.contains("not-the-password"),
        "the password must not appear: {err}"
    );

    let share = Share::open(&s.url("nosuchshare"), &opts(&s)).unwrap();
    let err = share.exists("x").unwrap_err().to_string();
    assert!(err.contains("nosuchshare"), "{err}");

    // A password file others can read is refused.
    std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = Share::open(&s.url("data"), &o).unwrap_err().to_string();
    assert!(err.contains("readable by others"), "{err}");
}

#[test]
fn the_passive_copy_follows_the_active_over_smb_through_server_restarts_seed_included() {
    use std::process::{Command, Stdio};
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path();
    let bin = env!("CARGO_BIN_EXE_logship");
    // The active's data directory first, so that its log directory exists to export.
    std::fs::create_dir_all(p.join("beta-share")).unwrap();
    let write_config = |share: &str, pw: &std::path::Path| {
        std::fs::write(
            p.join("logship.toml"),
            format!(
                "[cluster]\nname = \"smb\"\nseal-after = \"200ms\"\npassword-file = \"{pw}\"\n\n\
                 [nodes.alpha]\ndata-dir = \"{a}\"\nshare = \"{share}\"\n\n\
                 [nodes.beta]\ndata-dir = \"{b}\"\nshare = \"{bs}\"\n",
                pw = pw.display(),
                a = p.join("alpha").display(),
                b = p.join("beta").display(),
                bs = p.join("beta-share").display(),
            ),
        )
        .unwrap();
    };
    let cmd = |node: &str, args: &[&str]| {
        let mut c = Command::new(bin);
        c.args(args)
            .arg("--config")
            .arg(p.join("logship.toml"))
            .arg("--node")
            .arg(node)
            .env("RUST_LOG", "warn")
            .env_remove("LOGSHIP_SMB_PASSWORD");
        c
    };
    let ok = |node: &str, args: &[&str]| {
        let out = cmd(node, args).output().unwrap();
        assert!(
            out.status.success(),
            "logship {args:?} on {node}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    write_config("/nonexistent", std::path::Path::new("/nonexistent"));
    ok("alpha", &["init"]);
    ok(
        "alpha",
        &[
            "sql",
            "CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB NOT NULL)",
        ],
    );
    // Export alpha's log directory with the section logship prints.
    write_config(
        "smb://logshiptest@127.0.0.1:1/alphalogs",
        std::path::Path::new("/nonexistent"),
    );
    let section = ok("alpha", &["share-config", "--user", samba::USER])
        .replace("    valid users", "    force user = root\n    valid users");
    assert!(
        section.contains("[alphalogs]")
            && section.contains(&p.join("alpha").join("logs").display().to_string())
    );
    let mut s = Samba::start(&section);
    write_config(&s.url("alphalogs"), &s.password_file());

    let ship = common::Daemon(
        cmd("alpha", &["ship"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !p.join("alpha").join("control.sock").exists() {
        assert!(Instant::now() < deadline, "ship did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let load: String = (0..1500)
        .map(|i| {
            format!(
                "INSERT INTO t VALUES ({i}, randomblob({}));\n",
                400 + i % 900
            )
        })
        .collect();
    let writing = |sql: &str| {
        std::fs::write(p.join("load.sql"), sql).unwrap();
        common::Daemon(
            cmd(
                "alpha",
                &[
                    "sql",
                    "--each",
                    "--file",
                    p.join("load.sql").to_str().unwrap(),
                ],
            )
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
        )
    };
    let mut writer = writing(&load);
    let out = ok("beta", &["seed"]);
    assert!(out.contains("verified"), "{out}");
    assert!(writer.0.wait().unwrap().success());
    let replay_log = p.join("replay.log");
    let _replay = common::Daemon(
        cmd("beta", &["replay", "--poll", "20ms"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&replay_log).unwrap())
            .spawn()
            .unwrap(),
    );
    let more: String = (1500..3000)
        .map(|i| format!("INSERT INTO t VALUES ({i}, randomblob(700));\n"))
        .collect();
    // The copy daemon holds a connection once a turn has found nothing
    // more to copy (it says Healthy then): only then can a restart cut it.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = ok("beta", &["status", "--json"]);
        if st.contains("\"summary_copy_status\": \"Healthy\"") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the copy never got Healthy: {st}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut writer = writing(&more);
    // The server goes away and comes back while the copy is copying.
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(150));
        s.restart();
    }
    assert!(writer.0.wait().unwrap().success());
    ok("alpha", &["seal"]);
    let active = ok("alpha", &["verify-copy"]);
    let line = |out: &str, k: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap()
            .trim()
            .to_string()
    };
    let target: u64 = line(&active, "lsn ").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let st = ok("beta", &["status", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&st).unwrap();
        let copy = v
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["node"] == "beta")
            .cloned();
        // Caught up; a daemon that (re)started during the restarts says
        // Initializing until a turn finds nothing more to copy or replay.
        if let Some(c) = copy.as_ref().filter(|c| c["last_replayed_lsn"] == target)
            && c["summary_copy_status"] != "Initializing"
        {
            assert_eq!(c["summary_copy_status"], "Healthy");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the copy did not catch up over SMB: {st}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let copy = ok("beta", &["verify-copy"]);
    assert!(copy.contains("verdict equal"), "{copy}");
    assert_eq!(line(&copy, "lsn "), line(&active, "lsn "));
    // The restarts did cut the copy's connection, and it came back by itself.
    let log = std::fs::read_to_string(&replay_log).unwrap();
    assert!(
        log.contains("cannot reach the source share") || log.contains("copying paused"),
        "no lost connection seen:\n{log}"
    );
    common::python_compare(
        &p.join("alpha").join("store.db"),
        &p.join("beta").join("store.db"),
    );

    // A segment renamed away on the server under the copy: with a later one
    // there it is a gap, named; renamed back and resumed, nothing is lost.
    let beta = || -> serde_json::Value {
        let st = ok("beta", &["status", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&st).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .find(|c| c["node"] == "beta")
            .cloned()
            .unwrap()
    };
    let wait = |what: &str, f: &dyn Fn(&serde_json::Value) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let st = beta();
            if f(&st) {
                return st;
            }
            assert!(Instant::now() < deadline, "waiting for {what}: {st}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    ok("beta", &["suspend", "--reason", "test: rename a segment"]);
    let logs = p.join("alpha").join("logs");
    let mut sealed = Vec::new();
    for i in 0..2 {
        ok(
            "alpha",
            &[
                "sql",
                &format!("INSERT INTO t VALUES ({}, randomblob(5000))", 10_000 + i),
            ],
        );
        ok("alpha", &["seal"]);
        let newest = std::fs::read_dir(&logs)
            .unwrap()
            .filter_map(|e| {
                let n = e.unwrap().file_name().to_string_lossy().into_owned();
                shipper::format::parse_segment_file_name(&n)
            })
            .max()
            .unwrap();
        sealed.push(newest);
    }
    let missing = sealed[0];
    let name = shipper::format::segment_file_name(missing);
    let moved = logs.join(format!("{name}.moved"));
    std::fs::rename(logs.join(&name), &moved).unwrap();
    ok("beta", &["resume"]);
    let st = wait("the copy to fail on the gap", &|st| {
        st["summary_copy_status"] == "Failed"
    });
    let err = st["error"].as_str().unwrap();
    assert!(
        err.contains("gap") && err.contains(&format!("0x{:X}", missing.0)),
        "{st}"
    );
    std::fs::rename(&moved, logs.join(&name)).unwrap();
    ok("beta", &["resume"]);
    let active = ok("alpha", &["verify-copy"]);
    let target: u64 = line(&active, "lsn ").parse().unwrap();
    wait("the copy to catch up after the rename back", &|st| {
        st["last_replayed_lsn"] == target && st["summary_copy_status"] == "Healthy"
    });
    let copy = ok("beta", &["verify-copy"]);
    assert!(copy.contains("verdict equal"), "{copy}");
    drop(ship);
}

#[test]
fn one_holder_at_a_time_for_a_share_lock_over_smb_and_on_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let s = Samba::start(&Samba::share_section("data", dir.path()));
    let a = Share::open(&s.url("data"), &opts(&s)).unwrap();
    let b = Share::open(&s.url("data"), &opts(&s)).unwrap(); // a second connection
    let d1 = Share::Dir(dir.path().join("local"));
    std::fs::create_dir_all(dir.path().join("local")).unwrap();
    let d2 = Share::Dir(dir.path().join("local"));
    for (first, second) in [(&a, &b), (&d1, &d2)] {
        let held = first
            .try_lock("witness.lock")
            .unwrap()
            .expect("a free lock is taken");
        assert!(
            second.try_lock("witness.lock").unwrap().is_none(),
            "{}: two holders",
            first.display()
        );
        drop(held);
        // Released: the other side may take it now (the server deletes the
        // file when the handle closes; give it a moment, bounded).
        let deadline = Instant::now() + Duration::from_secs(5);
        let taken = loop {
            if let Some(l) = second.try_lock("witness.lock").unwrap() {
                break l;
            }
            assert!(
                Instant::now() < deadline,
                "{}: the lock was not released",
                first.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(first.try_lock("witness.lock").unwrap().is_none());
        drop(taken);
    }
}

#[test]
fn a_read_only_share_reads_and_refuses_writes_clearly() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("present.txt"), b"here").unwrap();
    let section =
        Samba::share_section("ro", dir.path()).replace("read only = no", "read only = yes");
    let s = Samba::start(&section);
    let share = Share::open(&s.url("ro"), &opts(&s)).unwrap();
    assert_eq!(share.read("present.txt", 100).unwrap().unwrap(), b"here");
    let t = Instant::now();
    let err = share.write_atomic("new.txt", b"x").unwrap_err().to_string();
    assert!(
        t.elapsed() < Duration::from_secs(6),
        "took {:?}",
        t.elapsed()
    );
    assert!(err.contains("new.txt") && err.contains("ro"), "{err}");
    assert!(!dir.path().join("new.txt").exists());
    // A path outside the share is refused before any connection.
    let err = Share::open(&format!("{}/../etc", s.url("ro")), &opts(&s))
        .unwrap_err()
        .to_string();
    assert!(err.contains("outside the share"), "{err}");
}

/// What smbstatus says about the encryption of the current sessions.
fn session_encryption(s: &Samba) -> String {
    let out = std::process::Command::new("smbstatus")
        .arg("-s")
        .arg(s.root.path().join("smb.conf"))
        .arg("-b")
        .output()
        .expect("run smbstatus");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn encryption_is_on_by_default_where_the_server_offers_it_and_can_be_required() {
    let dir = tempfile::tempdir().unwrap();
    let section = Samba::share_section("data", dir.path()) + "    smb encrypt = desired\n";
    let s = Samba::start(&section);
    let preferred = Share::open(&s.url("data"), &opts(&s)).unwrap();
    assert!(!preferred.exists("x").unwrap());
    let status = session_encryption(&s);
    assert!(
        status.contains("AES-128-GCM")
            || status.contains("AES-256-GCM")
            || status.contains("AES-128-CCM"),
        "not encrypted by default:\n{status}"
    );
    drop(preferred);
    let required = Share::open(
        &s.url("data"),
        &SmbOptions {
            encrypt: shipper::share::Encrypt::Required,
            ..opts(&s)
        },
    )
    .unwrap();
    assert!(!required.exists("x").unwrap());
    assert!(session_encryption(&s).contains("GCM"));
}

#[test]
fn a_killed_active_releases_the_smb_witness_vote_and_the_passive_takes_over() {
    let dir = tempfile::tempdir().unwrap();
    let wdir = dir.path().join("witness");
    std::fs::create_dir_all(&wdir).unwrap();
    let s = Samba::start(&Samba::share_section("witness", &wdir));
    let cluster = format!(
        "witness = \"{}\"\npassword-file = \"{}\"\nsmb-timeout = \"2s\"\nseal-after = \"200ms\"\n",
        s.url("witness"),
        s.password_file().display()
    );
    let hb = [
        format!("127.0.0.1:{}", common::trio::free_udp_port()),
        format!("127.0.0.1:{}", common::trio::free_udp_port()),
    ];
    let t = common::trio::Trio::custom(dir, &cluster, hb, None);
    let (mut alpha, _beta) = t.running_pair();
    // The vote is held over SMB: the lock file is on the server's disk.
    assert!(wdir.join("witness.lock").exists());
    let lsn = t.insert("alpha", 1).unwrap();
    t.wait_for("beta to replay it", 30, || {
        t.status("beta")["last_replayed_lsn"].as_u64() == Some(lsn)
    });
    alpha.0.kill().unwrap();
    let killed = Instant::now();
    alpha.0.wait().unwrap();
    t.wait_for("beta to take writes", 30, || t.insert("beta", 2).is_some());
    let rto = killed.elapsed();
    eprintln!("failover with an SMB witness took {} ms", rto.as_millis());
    // The server dropped the dead holder's handle at once: no keepalive wait.
    assert!(
        rto < Duration::from_millis(2 * common::trio::DEAD_MS + 2000),
        "{rto:?}"
    );
    assert_eq!(t.ids("beta"), vec![1, 2]);
    let st = t.status("beta");
    assert_eq!(st["quorum"]["witness"], true, "{st}");
}

#[test]
fn a_witness_vote_lost_to_a_server_restart_is_dropped_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Samba::start(&Samba::share_section("witness", dir.path()));
    let share = Share::open(&s.url("witness"), &opts(&s)).unwrap();
    let mut w = witness::Witness::new(share);
    assert!(w.acquire().unwrap());
    w.confirm().unwrap();
    s.restart();
    // A call on the share drops its dead connection; the lock's handle is
    // then the last thing holding the old session, and must close cleanly
    // (the SMB crate spawns on drop: outside its runtime that panicked).
    let _ = w.history(); // fails or reconnects; either way the old connection is gone
    assert!(w.confirm().is_err());
    assert!(!w.holds());
    // And the vote can be taken again on the new server.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !w.acquire().unwrap_or(false) {
        assert!(Instant::now() < deadline, "the vote was not released");
        std::thread::sleep(Duration::from_millis(50));
    }
    w.confirm().unwrap();
}

/// A pair whose active (alpha) publishes its log directory through its own
/// smbd (encrypted, as by default), with a cluster key (the block-mode
/// stream keyed and encrypted), seal-after 1 h: every row written after the
/// table stays in alpha's open segment. `cluster` adds to `[cluster]`.
fn smb_pair(cluster: &str) -> (common::trio::Trio, Samba) {
    smb_pair_keyed(cluster, true)
}

/// `smb_pair`, with a cluster key only when `keyed`.
fn smb_pair_keyed(cluster: &str, keyed: bool) -> (common::trio::Trio, Samba) {
    use common::trio::{DEAD_MS, INTERVAL_MS, Trio, cluster_key, free_udp_port};
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let alpha_logs = p.join("alpha").join("logs");
    std::fs::create_dir_all(&alpha_logs).unwrap();
    std::fs::create_dir_all(p.join("witness")).unwrap();
    let s = Samba::start(&Samba::share_section("alpha-logs", &alpha_logs));
    let config = p.join("logship.toml");
    std::fs::write(
        &config,
        format!(
            "[cluster]\nname = \"trio\"\nheartbeat-interval = \"{INTERVAL_MS}ms\"\ndead-after = \"{DEAD_MS}ms\"\n\
             witness = \"{w}\"\nseal-after = \"1h\"\n\
             password-file = \"{pw}\"\nsmb-timeout = \"2s\"\n{key}{cluster}\n\
             [nodes.alpha]\ndata-dir = \"{a}\"\nshare = \"{url}\"\nheartbeat = \"127.0.0.1:{ha}\"\n\n\
             [nodes.beta]\ndata-dir = \"{b}\"\nshare = \"{b}/logs\"\nheartbeat = \"127.0.0.1:{hb}\"\n",
            w = p.join("witness").display(),
            pw = s.password_file().display(),
            key = if keyed { cluster_key(p) } else { String::new() },
            a = p.join("alpha").display(),
            b = p.join("beta").display(),
            url = s.url("alpha-logs"),
            ha = free_udp_port(),
            hb = free_udp_port(),
        ),
    )
    .unwrap();
    (
        Trio {
            dir,
            config,
            netns: None,
        },
        s,
    )
}

/// Writes rows 1..=30 on alpha; the LSN of the last.
fn write_rows(t: &common::trio::Trio) -> u64 {
    let mut last = 0;
    for id in 1..=30 {
        last = t.write("alpha", id);
    }
    last
}

/// The last logs over SMB: alpha dies, its smbd does not; the passive copies
/// alpha's open segment from the share before the dial decides.
#[test]
fn over_smb_the_last_logs_are_copied_from_a_share_that_outlived_its_node() {
    let (t, _s) = smb_pair("mount-dial = \"lossless\"\n");
    let (mut alpha, _beta) = t.running_pair();
    write_rows(&t);
    alpha.0.kill().unwrap();
    alpha.0.wait().unwrap();
    t.takes_over_holding("beta", 1..=30, "open segment: copied to LSN");
    assert_eq!(t.status("beta")["dial"]["missing"], 0);
    t.rejoin_and_verify("alpha", "beta");
}

/// Block mode over SMB: alpha and its smbd die together (the machine is
/// gone). The passive received every acknowledged record over the keyed,
/// encrypted stream, and the new active holds them all.
#[test]
fn block_mode_keeps_every_received_write_when_the_active_and_its_smbd_die() {
    let (t, mut s) = smb_pair("mount-dial = \"good-availability\"\n");
    let (mut alpha, _beta) = t.running_pair();
    let last = write_rows(&t);
    t.wait_for("beta to receive every acknowledged record", 10, || {
        t.status("beta")["last_received_lsn"]
            .as_u64()
            .is_some_and(|l| l >= last)
    });
    let st = t.status("beta");
    assert_eq!(st["block_mode"], "receiving, encrypted", "{st}");
    assert!(st["last_replayed_lsn"].as_u64().unwrap() < last, "{st}");
    alpha.0.kill().unwrap();
    alpha.0.wait().unwrap();
    s.stop();
    t.takes_over_holding("beta", 1..=30, "received by block mode to LSN");
    // The machine comes back.
    s.start_again();
    t.rejoin_and_verify("alpha", "beta");
}

/// Synchronous commit over SMB: alpha and its smbd die together, and the
/// lossless dial activates beta by itself, losing nothing.
#[test]
fn synchronous_commit_over_smb_loses_nothing_when_the_active_and_its_smbd_die() {
    let (t, mut s) = smb_pair("mount-dial = \"lossless\"\ncommit = \"remote\"\n");
    let (mut alpha, _beta) = t.running_pair();
    t.wait_for("alpha synchronous", 30, || {
        t.status("alpha")["commit"] == "remote: synchronous"
    });
    write_rows(&t);
    // Synchronous at the end (a CPU-starved run may have gone alone for a
    // moment, said so on the witness, and come back).
    t.wait_for("alpha synchronous", 30, || {
        t.status("alpha")["commit"] == "remote: synchronous"
    });
    alpha.0.kill().unwrap();
    alpha.0.wait().unwrap();
    s.stop();
    t.takes_over_holding("beta", 1..=30, "commit was synchronous and confirmed");
    assert_eq!(t.status("beta")["dial"]["missing"], 0);
    s.start_again();
    t.rejoin_and_verify("alpha", "beta");
}

/// An encrypted share and no cluster key: the stream could not be
/// encrypted, so block mode stays off, and status says why.
#[test]
fn block_mode_stays_off_for_an_encrypted_share_without_a_cluster_key() {
    let (t, _s) = smb_pair_keyed("mount-dial = \"good-availability\"\n", false);
    let (_alpha, _beta) = t.running_pair();
    let st = t.status("beta");
    assert!(
        st["block_mode"]
            .as_str()
            .is_some_and(|m| m.contains("share is encrypted") && m.contains("key-file")),
        "{st}"
    );
    assert!(st["last_received_lsn"].is_null(), "{st}");
}
