//! Partitions, with each node daemon in a network namespace this test
//! creates: the nodes heartbeat over a veth pair of their own, and reach the
//! witness (a real smbd in the test's namespace) over one veth each. Trials
//! cut the node link both ways or one way, cut one node from the witness, or
//! isolate the active entirely, for a random time, under a write load on
//! both nodes; after each trial the cluster must settle with one active.
//!
//! The proof comes from the records, not from status: every acknowledged
//! write is found in the log of the node that acknowledged it, in a segment
//! whose header carries the epoch it was written in, and no epoch holds
//! acknowledged writes of two nodes. Each epoch's witness record names the
//! node that wrote in it.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::net::Net;
use common::proof::{Ack, start_writers, writers_by_epoch};
use common::samba::Samba;
use common::trio::{DEAD_MS, Trio};
use common::{Rng, seed};

#[derive(Clone, Copy, Debug)]
enum Fault {
    /// The node link, both ways.
    Split,
    /// The active cannot reach the passive; the passive still reaches it.
    ActiveMute,
    /// The passive cannot reach the active.
    PassiveMute,
    /// The active loses the witness only.
    ActiveWitness,
    /// The passive loses the witness only.
    PassiveWitness,
    /// The active loses both the peer and the witness.
    IsolateActive,
}

const FAULTS: [Fault; 6] = [
    Fault::Split,
    Fault::ActiveMute,
    Fault::PassiveMute,
    Fault::ActiveWitness,
    Fault::PassiveWitness,
    Fault::IsolateActive,
];

fn apply(net: &Net, f: Fault, active: usize, on: bool) {
    let passive = 1 - active;
    match f {
        Fault::Split => net.peer_link(!on),
        Fault::ActiveMute => net.one_way(active, on),
        Fault::PassiveMute => net.one_way(passive, on),
        Fault::ActiveWitness => net.witness_link(active, !on),
        Fault::PassiveWitness => net.witness_link(passive, !on),
        Fault::IsolateActive => {
            net.peer_link(!on);
            net.witness_link(active, !on);
        }
    }
}

const NODES: [&str; 2] = ["alpha", "beta"];

#[test]
fn partitions_never_let_two_nodes_write_in_one_epoch() {
    let seed = seed("partitions_never_let_two_nodes_write_in_one_epoch");
    let mut rng = Rng::new(seed);
    let trials: usize = std::env::var("LOGSHIP_PARTITION_TRIALS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let net = Net::new();
    let dir = tempfile::tempdir().unwrap();
    let wdir = dir.path().join("witness");
    std::fs::create_dir_all(&wdir).unwrap();
    let samba = Samba::start_on(&net.witness, &Samba::share_section("witness", &wdir));
    let pw = samba.password_file();
    let cluster = format!(
        "witness = \"{}\"\npassword-file = \"{}\"\nsmb-timeout = \"1s\"\nseal-after = \"300ms\"\nretention = \"1h\"\nmount-dial = \"best-availability\"\n{}",
        samba.url("witness"),
        pw.display(),
        common::trio::cluster_key(dir.path())
    );
    let hb = [
        net.heartbeat(0, common::trio::free_udp_port()),
        net.heartbeat(1, common::trio::free_udp_port()),
    ];
    let t = Trio::custom(dir, &cluster, hb, Some(net.ns.clone()));
    let mut daemons = {
        let (a, b) = t.running_pair();
        vec![Some(a), Some(b)]
    };
    // A writer per node, each with its own ids.
    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(Mutex::new(Vec::<Ack>::new()));
    let writers = start_writers(NODES.iter().map(|n| t.data_dir(n)).collect(), &stop, &acks);
    for trial in 0..trials {
        let active = (0..2)
            .find(|i| t.status(NODES[*i])["role"] == "active")
            .unwrap_or_else(|| panic!("no active node before trial {trial}\n{}", t.dump()));
        let fault = FAULTS[rng.below(FAULTS.len() as u64) as usize];
        let hold = Duration::from_millis(500 + rng.below(3 * DEAD_MS + 4000));
        eprintln!(
            "trial {trial}: {fault:?} with {} active, for {hold:?}",
            NODES[active]
        );
        apply(&net, fault, active, true);
        std::thread::sleep(hold); // the fault's duration, not a readiness wait
        apply(&net, fault, active, false);
        t.wait_for(
            "the cluster to settle: one active, a Healthy passive",
            90,
            || {
                let s: Vec<_> = NODES.iter().map(|n| t.status(n)).collect();
                let actives = s.iter().filter(|s| s["role"] == "active").count();
                let healthy = s
                    .iter()
                    .any(|s| s["role"] == "passive" && s["summary_copy_status"] == "Healthy");
                actives == 1 && healthy
            },
        );
        // A daemon that died is a failure, not a fault to recover from.
        for (i, d) in daemons.iter_mut().enumerate() {
            if let Some(st) = d.as_mut().and_then(|d| d.0.try_wait().unwrap()) {
                panic!("node {} exited ({st})\n{}", NODES[i], t.dump());
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    let acks = acks.lock().unwrap().clone();
    assert!(!acks.is_empty(), "no write was acknowledged");
    // The nodes stop first: a running node renames and truncates the very
    // files read below.
    drop(daemons);
    // Which epoch each acknowledged write went into, from the acking node's own log.
    let dirs: Vec<_> = NODES.iter().map(|n| t.data_dir(n)).collect();
    let writers_of = writers_by_epoch(&acks, &dirs, &NODES, &format!(" (seed {seed})"));
    for (epoch, nodes) in &writers_of {
        assert_eq!(
            nodes.len(),
            1,
            "epoch {epoch} holds acknowledged writes of {nodes:?} (seed {seed})"
        );
        let rec: serde_json::Value = serde_json::from_slice(
            &std::fs::read(wdir.join(format!("epoch-{epoch:016x}.json"))).unwrap(),
        )
        .unwrap();
        let writer = NODES[*nodes.iter().next().unwrap()];
        assert_eq!(rec["node"], writer, "epoch {epoch} (seed {seed})");
    }
    eprintln!(
        "{} acknowledged writes in epochs {:?} (seed {seed})",
        acks.len(),
        writers_of
    );
    drop(samba);
    drop(net);
}
