//! `logship demo`, the README's first command: it must keep every promise
//! and clean up after itself.

use std::process::Command;

#[test]
fn the_demo_keeps_every_promise_and_cleans_up() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let out = Command::new(env!("CARGO_BIN_EXE_logship"))
        .args(["demo", "--messages", "120", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("all promises kept"), "{text}");
    assert!(
        text.contains("stored exactly once on the active  120 ok"),
        "{text}"
    );
    assert!(
        text.contains("verify-copy                        alpha equal, beta equal"),
        "{text}"
    );
    assert!(
        text.contains("lost at failover (RPO)             0 transaction(s) ok"),
        "{text}"
    );
    assert!(!dir.exists(), "the demo left {} behind", dir.display());
}

/// `logship demo --copies 3`: three nodes and a private etcd; the best copy
/// takes over, the others follow it, every copy verifies equal, and
/// nothing is left behind.
#[test]
fn the_demo_with_three_copies_keeps_every_promise_and_cleans_up() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let out = Command::new(env!("CARGO_BIN_EXE_logship"))
        .args(["demo", "--copies", "3", "--messages", "120", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("all promises kept"), "{text}");
    assert!(
        text.contains("stored exactly once on the active  120 ok"),
        "{text}"
    );
    assert!(
        text.contains("verify-copy                        alpha equal, beta equal, gamma equal"),
        "{text}"
    );
    assert!(!dir.exists(), "the demo left {} behind", dir.display());
}

/// Without an `etcd` program (here: `LOGSHIP_ETCD` names none), `demo
/// --copies 3` says how to install it and starts nothing.
#[test]
fn the_demo_with_copies_names_the_package_when_etcd_is_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_logship"))
        .args(["demo", "--copies", "3", "--dir"])
        .arg(tmp.path().join("demo"))
        .env("LOGSHIP_ETCD", tmp.path().join("no-etcd"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("apt-get install etcd-server"), "{err}");
    assert!(!tmp.path().join("demo").exists());
}
