//! Files a daemon creates are private to its user, whatever umask it was
//! started with: real `logship` commands run under umask 000 (init, a write,
//! a seal, the node daemon, the relay taking a message), and no file or
//! directory they made grants anything to group or others. A data
//! directory found open gets a WARN naming it at start.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::Daemon;
use common::trio::Trio;

/// Runs the command under umask 000, as a careless service manager might.
fn under_umask_000(c: &mut Command) -> &mut Command {
    // SAFETY: umask(2) is async-signal-safe and touches no memory.
    unsafe {
        c.pre_exec(|| {
            libc::umask(0);
            Ok(())
        })
    }
}

fn ok(t: &Trio, node: &str, args: &[&str]) -> String {
    let out = under_umask_000(&mut t.cmd(node, args)).output().unwrap();
    assert!(
        out.status.success(),
        "logship {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Every path under `dir` (not `dir` itself) with its mode.
fn walk(dir: &Path) -> Vec<(PathBuf, u32)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let Ok(meta) = std::fs::symlink_metadata(&p) else {
                continue; // gone meanwhile (a temporary file)
            };
            if meta.is_dir() {
                stack.push(p.clone());
            }
            out.push((p, meta.permissions().mode()));
        }
    }
    out
}

fn start_relay(t: &Trio) -> Daemon {
    t.start_relay_with(|c| {
        under_umask_000(c);
    })
}

const SEND: &str = r#"
import smtplib, sys
c = smtplib.SMTP(sys.argv[1], int(sys.argv[2]), timeout=10)
refused = c.sendmail("a@example.org", ["box@example.com"],
    "Message-ID: <private1@test>\r\nSubject: private\r\n\r\nsecret body\r\n")
c.quit()
assert refused == {}, refused
"#;

#[test]
fn files_made_under_umask_000_are_private_and_an_open_data_directory_is_warned_of() {
    // The harness really runs them under umask 000.
    let out = under_umask_000(Command::new("sh").args(["-c", "umask"]))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0000");

    let t = Trio::with_mail("good-availability");
    ok(&t, "alpha", &["init"]);
    ok(
        &t,
        "alpha",
        &[
            "sql",
            "CREATE TABLE t (id INTEGER PRIMARY KEY NOT NULL, v TEXT NOT NULL)",
        ],
    );
    ok(&t, "alpha", &["sql", "INSERT INTO t VALUES (1, 'one')"]);
    ok(&t, "alpha", &["seal"]);
    let log = std::fs::File::create(t.dir.path().join("alpha.log")).unwrap();
    let mut c = t.cmd("alpha", &["node"]);
    c.stdout(Stdio::null()).stderr(log);
    let _alpha = Daemon(under_umask_000(&mut c).spawn().unwrap());
    t.wait_for("alpha active", 30, || t.status("alpha")["role"] == "active");
    let _relay = start_relay(&t);
    let (host, port) = common::trio::split_addr(&t.smtp());
    t.python(SEND, &[&host, &port]);
    t.wait_for("the message stored on alpha", 30, || {
        t.status("alpha")["mail_stored"].as_u64() == Some(1)
    });
    ok(&t, "alpha", &["seal"]);

    let relay_dir = t.dir.path().join("relay");
    let mut seen = Vec::new();
    for dir in [t.data_dir("alpha"), relay_dir.clone()] {
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        seen.push((dir.clone(), mode));
        seen.extend(walk(&dir));
    }
    // The witness directory is the operator's; what the node made in it is private.
    seen.extend(walk(&t.dir.path().join("witness")));
    let names: Vec<String> = seen
        .iter()
        .filter_map(|(p, _)| p.file_name()?.to_str().map(String::from))
        .collect();
    for expected in ["store.db", "relay.db", "events.jsonl", "logs"] {
        assert!(
            names.iter().any(|n| n == expected),
            "no {expected} among {names:?}"
        );
    }
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("LS") && n.ends_with(".log") && n != "LS.log"),
        "no sealed segment among {names:?}"
    );
    assert!(
        names.iter().any(|n| n.starts_with("epoch-")),
        "no epoch record among {names:?}"
    );
    let open: Vec<String> = seen
        .iter()
        .filter(|(_, mode)| mode & 0o077 != 0)
        .map(|(p, mode)| format!("{:04o} {}", mode & 0o7777, p.display()))
        .collect();
    assert!(
        open.is_empty(),
        "made under umask 000, open to group or others:\n{}",
        open.join("\n")
    );
    eprintln!("{} paths checked, all private", seen.len());

    // A relay data directory someone opened up is named at start.
    drop(_relay);
    std::fs::set_permissions(&relay_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let _relay = start_relay(&t);
    let shown = relay_dir.display().to_string();
    t.wait_for("the relay to warn of its open data directory", 30, || {
        let log = std::fs::read_to_string(t.dir.path().join("relay.log")).unwrap_or_default();
        log.lines()
            .any(|l| l.contains("WARN") && l.contains(&shown) && l.contains("0755"))
    });
}
