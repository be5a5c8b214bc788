//! The chaos suite, bounded: two nodes (each in a network namespace of its
//! own), a witness served by a real smbd, and the relay, under a continuous
//! SMTP load from a real client (Python's smtplib), with random faults from
//! a printed seed: SIGKILL of the active, of the passive or of the relay,
//! smbd restarted, the link between the nodes cut, and a full disk on the
//! passive (its data directory is a small tmpfs the test fills, then
//! frees). After every fault the cluster must settle (one active, a Healthy
//! passive, `verify-copy` equal on both); at the end every accepted message
//! is stored exactly once, nothing the client did not send is there, no
//! process panicked, and no epoch was started twice.
//!
//! `LOGSHIP_CHAOS_FAULTS` sets the number of faults (default 6, what CI
//! runs); `LOGSHIP_TEST_SEED` replays a run.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use common::net::Net;
use common::samba::Samba;
use common::trio::{Submitter, Trio, free_tcp_port, free_udp_port, stored_ids};
use common::{Daemon, Rng, seed};

#[derive(Clone, Copy, Debug)]
enum Fault {
    KillActive,
    KillPassive,
    KillRelay,
    FullDiskOnPassive,
    RestartSmbd,
    Partition,
}

const FAULTS: [Fault; 6] = [
    Fault::KillActive,
    Fault::KillPassive,
    Fault::KillRelay,
    Fault::FullDiskOnPassive,
    Fault::RestartSmbd,
    Fault::Partition,
];

fn mount_tmpfs(dir: &std::path::Path, size: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .output()
        .expect("run mount");
    assert!(
        out.status.success(),
        "mount a tmpfs on {} (the chaos suite needs root): {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Unmount(Vec<std::path::PathBuf>);

impl Drop for Unmount {
    fn drop(&mut self) {
        for d in &self.0 {
            let _ = Command::new("umount").arg("-l").arg(d).status();
        }
    }
}

#[test]
fn chaos_under_mail_load_keeps_every_promise() {
    let seed = seed("chaos_under_mail_load_keeps_every_promise");
    let mut rng = Rng::new(seed);
    let faults: usize = std::env::var("LOGSHIP_CHAOS_FAULTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    let net = Net::new();
    let dir = tempfile::tempdir().unwrap();
    let wdir = dir.path().join("witness");
    std::fs::create_dir_all(&wdir).unwrap();
    let mut samba = Samba::start_on(&net.witness, &Samba::share_section("witness", &wdir));
    let cluster = format!(
        "witness = \"{}\"\npassword-file = \"{}\"\nsmb-timeout = \"1s\"\nseal-after = \"200ms\"\nmount-dial = \"best-availability\"\n{}",
        samba.url("witness"),
        samba.password_file().display(),
        common::trio::cluster_key(dir.path())
    );
    let node_extra = |i: usize| {
        format!(
            "lmtp = \"{}:{}\"\nadmin = \"{}:{}\"\n",
            net.outer(i),
            free_tcp_port(),
            net.outer(i),
            free_tcp_port()
        )
    };
    let t = Trio::custom_full(
        dir,
        &cluster,
        [
            net.heartbeat(0, free_udp_port()),
            net.heartbeat(1, free_udp_port()),
        ],
        Some(net.ns.clone()),
        [node_extra(0), node_extra(1)],
        &format!(
            "\n[dumpster]\naccepted-domains = [\"example.com\"]\nsmtp = \"127.0.0.1:{}\"\ndata-dir = \"relay\"\n",
            free_tcp_port()
        ),
    );
    // Both data directories on small tmpfs mounts, so a disk can fill.
    let _mounts = Unmount(vec![t.data_dir("alpha"), t.data_dir("beta")]);
    mount_tmpfs(&t.data_dir("alpha"), "256m");
    mount_tmpfs(&t.data_dir("beta"), "256m");
    let nodes = ["alpha", "beta"];
    let (a, b) = t.running_pair();
    let mut daemons: [Option<Daemon>; 2] = [Some(a), Some(b)];
    let mut relay = Some(t.start_relay());
    let submitter = Submitter::start(&t, "c");
    for n in 0..faults {
        let active = (0..2)
            .find(|i| t.status(nodes[*i])["role"] == "active")
            .unwrap_or_else(|| {
                panic!(
                    "no active node before fault {n} (seed {seed})\n{}",
                    t.dump()
                )
            });
        let passive = 1 - active;
        // Let mail flow first.
        let before = stored_ids(&t, nodes[active]).len();
        t.wait_for("mail flowing into the active", 60, || {
            stored_ids(&t, nodes[active]).len() > before + 3 + rng.below(20) as usize
        });
        let fault = FAULTS[rng.below(FAULTS.len() as u64) as usize];
        eprintln!("fault {n}: {fault:?} ({} active)", nodes[active]);
        match fault {
            Fault::KillActive | Fault::KillPassive => {
                let i = if matches!(fault, Fault::KillActive) {
                    active
                } else {
                    passive
                };
                let mut d = daemons[i].take().unwrap();
                d.0.kill().unwrap();
                d.0.wait().unwrap();
                if matches!(fault, Fault::KillActive) {
                    t.wait_for("the other node active", 60, || {
                        t.status(nodes[passive])["role"] == "active"
                    });
                }
                daemons[i] = Some(t.start(nodes[i]));
            }
            Fault::KillRelay => {
                let mut r = relay.take().unwrap();
                r.0.kill().unwrap();
                r.0.wait().unwrap();
                relay = Some(t.start_relay());
            }
            Fault::RestartSmbd => samba.restart(),
            Fault::Partition => {
                net.peer_link(false);
                // The cut lasts a random time; the cluster must ride it out.
                std::thread::sleep(std::time::Duration::from_millis(500 + rng.below(3000)));
                net.peer_link(true);
            }
            Fault::FullDiskOnPassive => {
                let filler = t.data_dir(nodes[passive]).join("filler");
                // dd stops at ENOSPC; that is the point.
                let _ = Command::new("dd")
                    .args(["if=/dev/zero", "bs=1M"])
                    .arg(format!("of={}", filler.display()))
                    .output();
                // Keep it full while the active writes a good many records
                // (the passive can store none of them meanwhile).
                let lsn = |n: &str| stored_ids(&t, n).len();
                let start = lsn(nodes[active]);
                t.wait_for(
                    "the active to move on while the passive's disk is full",
                    60,
                    || lsn(nodes[active]) > start + 30,
                );
                std::fs::remove_file(&filler).unwrap();
            }
        }
        // Settle: one active holding all three votes again (the passive's
        // and the witness's: statuses alone may be a heartbeat old), and a
        // Healthy passive that hears it.
        t.wait_for("the cluster to settle", 120, || {
            let s: Vec<_> = nodes.iter().map(|n| t.status(n)).collect();
            let actives: Vec<usize> = (0..2).filter(|i| s[*i]["role"] == "active").collect();
            actives.len() == 1 && {
                let a = &s[actives[0]];
                let p = &s[1 - actives[0]];
                a["quorum"]["peer"] == true
                    && a["quorum"]["witness"] == true
                    && p["role"] == "passive"
                    && p["summary_copy_status"] == "Healthy"
                    && p["peer"]["role"] == "active"
                    && p["error"].is_null()
            }
        });
        for node in nodes {
            let out = t.cmd(node, &["verify-copy"]).output().unwrap();
            assert!(
                out.status.success(),
                "verify-copy on {node} after fault {n} ({fault:?}, seed {seed}): {}{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                t.dump()
            );
        }
    }
    let (accepted, sent) = submitter.stop();
    let active = (0..2)
        .find(|i| t.status(nodes[*i])["role"] == "active")
        .map(|i| nodes[i])
        .expect("an active node at the end");
    t.wait_for("every accepted message delivered", 120, || {
        let s: BTreeSet<String> = stored_ids(&t, active).into_iter().collect();
        accepted.is_subset(&s)
    });
    let all = stored_ids(&t, active);
    let distinct: BTreeSet<String> = all.iter().cloned().collect();
    assert_eq!(
        all.len(),
        distinct.len(),
        "a message stored twice (seed {seed})"
    );
    let extra: Vec<_> = distinct.difference(&sent).collect();
    assert!(
        extra.is_empty(),
        "stored but never sent: {extra:?} (seed {seed})"
    );
    for name in ["alpha", "beta", "relay"] {
        let log =
            std::fs::read_to_string(t.dir.path().join(format!("{name}.log"))).unwrap_or_default();
        assert!(
            !log.contains("panicked"),
            "{name} panicked (seed {seed}):\n{log}"
        );
    }
    // At most one active per epoch: no epoch in which both nodes became
    // active (their event logs), and each such epoch is the one the witness
    // records for that node.
    let activations = |node: &str| -> BTreeSet<u64> {
        std::fs::read_to_string(t.data_dir(node).join("events.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["event"] == "active")
            .filter_map(|v| v["epoch"].as_u64())
            .collect()
    };
    let (ea, eb) = (activations("alpha"), activations("beta"));
    assert!(
        ea.is_disjoint(&eb),
        "both nodes active in epochs {:?} (seed {seed})",
        ea.intersection(&eb).collect::<Vec<_>>()
    );
    for (node, epochs) in [("alpha", &ea), ("beta", &eb)] {
        for e in epochs {
            let rec: serde_json::Value = serde_json::from_slice(
                &std::fs::read(wdir.join(format!("epoch-{e:016x}.json"))).unwrap(),
            )
            .unwrap();
            assert_eq!(rec["node"], node, "epoch {e} (seed {seed})");
        }
    }
    eprintln!(
        "{faults} faults: {} accepted, {} stored once (seed {seed})",
        accepted.len(),
        distinct.len()
    );
    drop(relay);
    drop(daemons);
    drop(samba);
    drop(net);
}
