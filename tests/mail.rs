//! The node's LMTP endpoint with real clients (swaks, Python's smtplib):
//! per-recipient replies after DATA, duplicates dropped by (Message-ID,
//! recipient), a passive node answering 451 with the active node's
//! address, and the mailbox rows replicated to the passive copy.

mod common;

use std::process::Command;

use common::trio::Trio;

fn swaks(args: &[&str]) -> (bool, String) {
    let out = Command::new("swaks")
        .args(args)
        .output()
        .expect("run swaks (tools/test.sh installs it)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn rows(t: &Trio, node: &str, sql: &str) -> Vec<String> {
    let conn = rusqlite::Connection::open_with_flags(
        t.data_dir(node).join("store.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut st = conn.prepare(sql).unwrap();
    st.query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
}

#[test]
fn lmtp_delivers_per_recipient_drops_duplicates_and_a_passive_names_the_active() {
    let t = Trio::with_mail("good-availability");
    let (_alpha, _beta) = t.running_pair();
    let (host, port) = t
        .lmtp("alpha")
        .rsplit_once(':')
        .map(|(h, p)| (h.to_string(), p.to_string()))
        .unwrap();
    // Two local recipients, one foreign (refused at RCPT); pipelined.
    let send = |id: &str| {
        swaks(&[
            "--protocol",
            "LMTP",
            "--server",
            &host,
            "--port",
            &port,
            "--pipeline",
            "--from",
            "sender@example.org",
            "--to",
            "ann@example.com,bob@example.com,eve@elsewhere.net",
            "--header",
            &format!("Message-Id: <{id}>"),
            "--body",
            "hello from swaks",
        ])
    };
    let (ok, out) = send("m1@test");
    assert!(out.contains("550 5.1.2"), "{out}");
    assert!(out.contains("<ann@example.com> stored <m1@test>"), "{out}");
    assert!(out.contains("<bob@example.com> stored <m1@test>"), "{out}");
    let _ = ok; // swaks exits non-zero when any recipient is refused
    let (_, again) = send("m1@test");
    assert!(again.contains("duplicate dropped"), "{again}");
    assert_eq!(
        rows(
            &t,
            "alpha",
            "SELECT recipient || ' ' || message_id FROM messages ORDER BY recipient"
        ),
        vec!["ann@example.com m1@test", "bob@example.com m1@test"]
    );
    // Python's smtplib.LMTP, one recipient: the message is stored byte for byte.
    let script = r#"
import smtplib, sys
msg = b"Message-ID: <py1@test>\r\nSubject: caf\xc3\xa9\r\n\r\nline one\r\n.dot line\r\nlast\r\n"
c = smtplib.LMTP(sys.argv[1], int(sys.argv[2]))
refused = c.sendmail("p@example.org", ["cat@example.com"], msg)
c.quit()
assert refused == {}, refused
"#;
    let out = Command::new("python3")
        .args(["-c", script, &host, &port])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let conn = rusqlite::Connection::open_with_flags(
        t.data_dir("alpha").join("store.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let raw: Vec<u8> = conn
        .query_row(
            "SELECT raw FROM messages WHERE message_id = 'py1@test'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        raw,
        b"Message-ID: <py1@test>\r\nSubject: caf\xc3\xa9\r\n\r\nline one\r\n.dot line\r\nlast\r\n"
    );
    // No Message-ID: refused for good (the relay assigns them, never the store).
    let (_, out) = swaks(&[
        "--protocol",
        "LMTP",
        "--server",
        &host,
        "--port",
        &port,
        "--to",
        "ann@example.com",
        "--data",
        "Subject: no id\r\n\r\nbody\r\n",
    ]);
    assert!(out.contains("550 5.6.0"), "{out}");
    // The passive answers 451 and names the active's LMTP address.
    let (bh, bp) = t
        .lmtp("beta")
        .rsplit_once(':')
        .map(|(h, p)| (h.to_string(), p.to_string()))
        .unwrap();
    let (ok, out) = swaks(&[
        "--protocol",
        "LMTP",
        "--server",
        &bh,
        "--port",
        &bp,
        "--to",
        "ann@example.com",
        "--header",
        "Message-Id: <m2@test>",
    ]);
    assert!(!ok);
    assert!(
        out.contains(&format!(
            "451 4.3.2 node beta is not active; active={}",
            t.lmtp("alpha")
        )),
        "{out}"
    );
    // Deliveries are store transactions: they reach the passive copy.
    t.wait_for("the messages on beta", 30, || {
        rows(&t, "beta", "SELECT message_id FROM messages ORDER BY id").len() == 3
    });
}
