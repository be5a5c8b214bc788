//! The etcd arbiter's client against a real etcd (Debian's `etcd-server`,
//! started privately on loopback): leases, keys under a lease, the create
//! that only one caller wins, and a three-member cluster that loses one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::etcd::Etcd as Server;
use witness::etcd::{ArbiterUrl, Etcd};

fn client(server: &Server, prefix: &str) -> Etcd {
    Etcd::new(
        ArbiterUrl::parse(&server.url(prefix)).unwrap(),
        Duration::from_secs(3),
    )
}

fn wait_for(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn leases_keys_and_a_create_that_exactly_one_caller_wins() {
    let server = Server::start(1);
    let etcd = Arc::new(client(&server, "mail"));
    let lease = etcd.grant(Duration::from_secs(10)).unwrap();
    assert!(etcd.keep_alive(lease).unwrap().is_some());
    etcd.put(&etcd.key("nodes/alpha"), b"{\"lsn\":3}", Some(lease))
        .unwrap();
    etcd.put(&etcd.key("nodes/beta"), b"", None).unwrap();
    let listed = etcd.list(&etcd.key("nodes/")).unwrap();
    assert_eq!(
        listed,
        vec![
            ("/mail/nodes/alpha".to_string(), b"{\"lsn\":3}".to_vec()),
            ("/mail/nodes/beta".to_string(), Vec::new()),
        ]
    );
    // Another prefix sees nothing of this one.
    assert!(client(&server, "other").list("/other/").unwrap().is_empty());

    // Eight nodes claim the same epoch at once: one wins.
    let key = etcd.key("epochs/0000000000000007");
    let winners: usize = (0..8)
        .map(|i| {
            let etcd = etcd.clone();
            let key = key.clone();
            std::thread::spawn(move || {
                etcd.create(&key, format!("node{i}").as_bytes(), None)
                    .unwrap()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| usize::from(h.join().unwrap()))
        .sum();
    assert_eq!(winners, 1);
    assert!(!etcd.create(&key, b"late", None).unwrap());
    assert!(etcd.get(&key).unwrap().unwrap().starts_with(b"node"));

    // Revoking the lease deletes its keys, and it cannot be kept alive.
    etcd.revoke(lease).unwrap();
    assert_eq!(etcd.get(&etcd.key("nodes/alpha")).unwrap(), None);
    assert_eq!(etcd.keep_alive(lease).unwrap(), None);
    assert_eq!(etcd.list(&etcd.key("nodes/")).unwrap().len(), 1);
}

#[test]
fn a_lease_not_kept_alive_expires_with_its_keys() {
    let server = Server::start(1);
    let etcd = client(&server, "c");
    let lease = etcd.grant(Duration::from_secs(2)).unwrap();
    etcd.put(&etcd.key("active"), b"alpha", Some(lease))
        .unwrap();
    let kept = etcd.grant(Duration::from_secs(2)).unwrap();
    etcd.put(&etcd.key("kept"), b"beta", Some(kept)).unwrap();
    let granted = Instant::now();
    wait_for("the lease to expire", Duration::from_secs(15), || {
        // One lease is kept alive, the other not.
        assert!(etcd.keep_alive(kept).unwrap().is_some());
        etcd.get(&etcd.key("active")).unwrap().is_none()
    });
    assert!(granted.elapsed() >= Duration::from_secs(1), "expired early");
    assert_eq!(etcd.keep_alive(lease).unwrap(), None);
    assert_eq!(etcd.get(&etcd.key("kept")).unwrap(), Some(b"beta".to_vec()));
}

#[test]
fn three_members_go_on_when_one_is_killed() {
    let mut server = Server::start(3);
    let etcd = client(&server, "c");
    assert!(etcd.create(&etcd.key("epochs/1"), b"alpha", None).unwrap());
    // Kill each member in turn (the one the client used last among them);
    // the two left keep a quorum.
    for i in 0..3 {
        server.kill(i);
        let key = etcd.key(&format!("epochs/{}", i + 2));
        let mut created = None;
        wait_for(
            "the cluster to answer without a member",
            Duration::from_secs(20),
            || {
                created = etcd.create(&key, b"beta", None).ok();
                created.is_some()
            },
        );
        assert_eq!(created, Some(true));
        assert_eq!(
            etcd.get(&etcd.key("epochs/1")).unwrap(),
            Some(b"alpha".to_vec())
        );
        assert!(!etcd.create(&etcd.key("epochs/1"), b"gamma", None).unwrap());
        server.restart(i).unwrap();
    }
    // Unknown members answer nothing: the error names every endpoint.
    drop(server);
    let e = etcd.get(&etcd.key("epochs/1")).unwrap_err().to_string();
    assert!(e.contains("no etcd member answered"), "{e}");
}

/// The lease argument against a real etcd: the `leader` key of a holder
/// that stops keeping its lease alive disappears only after the holder's
/// own reckoning of its lease (`dcs::Lease::valid_until`) has run out, so a
/// holder that fences then has stopped before anyone else can take over.
#[test]
fn the_leader_key_outlives_the_holders_own_reckoning_of_its_lease() {
    use witness::dcs::Lease;
    let server = Server::start(1);
    let alpha = client(&server, "c");
    let beta = client(&server, "c");
    let ttl = Duration::from_secs(2);
    let lease = alpha.grant(ttl).unwrap();
    let sent = Instant::now();
    assert!(alpha.keep_alive(lease).unwrap().is_some());
    let reckoned = Lease {
        ttl,
        confirmed_sent: Some(sent),
    };
    let leader = alpha.key("leader");
    assert!(alpha.create(&leader, b"alpha", Some(lease)).unwrap());
    assert!(!beta.create(&leader, b"beta", None).unwrap());
    // alpha stops keeping its lease alive; beta watches the key.
    wait_for("the leader key to lapse", Duration::from_secs(15), || {
        beta.get(&leader).unwrap().is_none()
    });
    let gone = Instant::now();
    let until = reckoned.valid_until().unwrap();
    assert!(
        gone >= until,
        "the key went {:?} before alpha's lease ran out by its own reckoning",
        until - gone
    );
    let next = beta.grant(ttl).unwrap();
    assert!(beta.create(&leader, b"beta", Some(next)).unwrap());
}
