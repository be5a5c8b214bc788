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
