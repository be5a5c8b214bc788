//! Crash test of the real binary: `logship sql --each` over thousands of
//! statements, killed with SIGKILL at random moments. After each restart
//! every transaction acknowledged with `ok <lsn>` is present, none twice,
//! the present ones form a prefix of the statements, and the content hash
//! of a full scan equals the one in the log.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Cluster, Rng, seed};

const STATEMENTS: usize = 6000;
const KILLS: usize = 24;

fn statement(i: usize) -> String {
    // Rows of 0.5-4 KiB so that segments fill and seal during the run.
    let pad = 512 + (i * 7919) % 3584;
    format!("INSERT INTO t (k, pad) VALUES ('k{i}', zeroblob({pad}));")
}

/// Runs recovery (by opening the store) and checks the content hash; returns the LSN.
fn recover_and_verify(c: &Cluster) -> u64 {
    let out = c.ok(&["verify-copy"]);
    assert!(
        out.contains("verdict equal"),
        "content hash differs after recovery:\n{out}"
    );
    out.lines()
        .find_map(|l| l.strip_prefix("lsn "))
        .and_then(|s| s.trim().parse().ok())
        .expect("verify-copy prints the lsn")
}

/// Statement indexes present in the database, each with its count.
fn present(c: &Cluster) -> HashMap<usize, u64> {
    c.read("SELECT substr(k, 2), count(*) FROM t GROUP BY k")
        .into_iter()
        .map(|l| {
            let (k, n) = l.split_once('\t').expect("two columns");
            (k.parse().expect("index"), n.parse().expect("count"))
        })
        .collect()
}

#[test]
fn sigkill_at_random_moments_loses_no_acknowledged_transaction() {
    let seed = seed("crash");
    let mut rng = Rng::new(seed);
    let c = Cluster::new();
    c.ok(&["init"]);
    c.ok(&[
        "sql",
        "CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT NOT NULL, pad BLOB NOT NULL)",
    ]);
    let base_lsn = recover_and_verify(&c);

    let mut next = 0usize;
    let mut acked_total: Vec<usize> = Vec::new();
    let mut kills = 0;
    let mut last_lsn = base_lsn;
    // More statements while kills remain to be done, so that a fast machine
    // cannot finish the work before the kills are in.
    let mut total = STATEMENTS;
    loop {
        if next >= total {
            if kills >= KILLS {
                break;
            }
            total += STATEMENTS / 2;
        }
        let file = c.dir.path().join("batch.sql");
        let text: String = (next..total).map(statement).collect::<Vec<_>>().join("\n");
        std::fs::write(&file, text).unwrap();
        let mut child = c
            .cmd(&["sql", "--each", "--file", file.to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn logship");
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .filter_map(|l| {
                    l.strip_prefix("ok ")
                        .map(|s| s.parse::<u64>().expect("lsn"))
                })
                .collect::<Vec<u64>>()
        });
        let killed = if kills < KILLS {
            // A random moment: the process is killed wherever it is.
            let wait = Duration::from_millis(5 + rng.below(150));
            let start = Instant::now();
            while start.elapsed() < wait {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            let _ = child.kill(); // SIGKILL
            kills += 1;
            true
        } else {
            false
        };
        let status = child.wait().unwrap();
        let lsns = reader.join().unwrap();
        if !killed {
            assert!(
                status.success(),
                "the final uninterrupted run failed: {status}"
            );
        }
        // Acknowledged LSNs are dense and continue the log.
        for (j, lsn) in lsns.iter().enumerate() {
            assert_eq!(
                *lsn,
                last_lsn + 1 + j as u64,
                "acknowledged LSNs must be dense (seed {seed})"
            );
        }
        let acked: Vec<usize> = (next..next + lsns.len()).collect();
        acked_total.extend(&acked);

        let lsn = recover_and_verify(&c);
        let rows = present(&c);
        for i in &acked_total {
            assert_eq!(
                rows.get(i),
                Some(&1),
                "acknowledged statement {i} must be present once (seed {seed})"
            );
        }
        assert!(
            rows.values().all(|n| *n == 1),
            "a statement is present twice (seed {seed})"
        );
        // What is present is exactly a prefix of the statements, and the LSN counts it.
        let count = rows.len();
        assert!(
            (0..count).all(|i| rows.contains_key(&i)),
            "present statements are not a prefix (seed {seed})"
        );
        assert!(
            count >= next + acked.len(),
            "lost an acknowledged statement (seed {seed})"
        );
        assert_eq!(
            lsn,
            base_lsn + count as u64,
            "one LSN per present statement (seed {seed})"
        );
        last_lsn = lsn;
        next = count;
    }
    assert!(kills >= 20, "only {kills} kills");
    let sealed = std::fs::read_dir(c.logs())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("LS0")
        })
        .count();
    assert!(
        sealed >= 3,
        "the run should have sealed several segments, sealed {sealed}"
    );
    // Every segment left behind verifies.
    let mut files: Vec<String> = std::fs::read_dir(c.logs())
        .unwrap()
        .map(|e| e.unwrap().path().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let mut args = vec!["verify"];
    args.extend(files.iter().map(String::as_str));
    let verify = std::process::Command::new(env!("CARGO_BIN_EXE_logship"))
        .args(&args)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "verify failed:\n{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}
