//! The mail path against hostile or broken peers, with the real relay and
//! nodes: a poison message (a folded, non-ASCII Message-ID) through a relay
//! restart, a Message-ID reused to suppress someone else's mail, and Python
//! LMTP servers that greet or reply with bytes that are not replies, or
//! hang on one message while the relay is killed. The relay must stay up,
//! park what keeps failing with its reason, and keep delivering the rest.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Daemon;
use common::trio::Trio;

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/hostile")
        .join(name)
}

/// Sends `msg` through the relay of `t` to `rcpts` with Python's smtplib;
/// returns what it printed (the data reply, then a NOOP's code).
fn send(t: &Trio, rcpts: &str, msg: &[u8]) -> String {
    let f = tempfile::NamedTempFile::new_in(t.dir.path()).unwrap();
    std::fs::write(f.path(), msg).unwrap();
    let (host, port) = common::trio::split_addr(&t.smtp());
    let out = Command::new("python3")
        .arg(script("smtp_send.py"))
        .args([&host, &port, "s@example.org", rcpts])
        .arg(f.path())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    said
}

fn relay_status(t: &Trio) -> serde_json::Value {
    std::fs::read(t.dir.path().join("relay").join("relay.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// (last_error, strikes) of the relay's queued messages.
fn queued(t: &Trio) -> Vec<(Option<String>, i64)> {
    let c = rusqlite::Connection::open_with_flags(
        t.dir.path().join("relay").join("relay.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut st = c
        .prepare("SELECT last_error, strikes FROM messages WHERE delivered_us IS NULL")
        .unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
}

fn count(t: &Trio, node: &str, sql: &str) -> i64 {
    let c = rusqlite::Connection::open_with_flags(
        t.data_dir(node).join("store.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    c.query_row(sql, [], |r| r.get(0)).unwrap_or(0)
}

const POISON: &[u8] =
    b"Message-ID: <poison.1@probe\r\n x\xe2\x82\xac>\r\nSubject: poison\r\n\r\nPOISON body\r\n";

#[test]
fn a_poison_message_is_stored_once_and_the_relay_survives_a_restart() {
    let t = Trio::with_mail("good-availability");
    let (_alpha, _beta) = t.running_pair();
    let mut relay = t.start_relay();
    let said = send(&t, "ann@example.com,bob@example.com", POISON);
    // One reply line for the data, and the session still in step.
    assert!(said.contains("data-reply 250"), "{said}");
    assert!(said.contains("noop 250"), "{said}");
    assert!(
        !said.contains("poison.1"),
        "the relay echoed the Message-ID: {said}"
    );
    let poison = "SELECT count(*) FROM messages WHERE message_id LIKE 'poison.1@probe%'";
    t.wait_for("the poison message stored for both", 30, || {
        count(&t, "alpha", poison) == 2
    });
    assert!(
        relay.0.try_wait().unwrap().is_none(),
        "the relay died\n{}",
        t.dump()
    );
    // Killed and started again: it stays up, stores nothing twice, and
    // other mail flows.
    let _ = relay.0.kill();
    let _ = relay.0.wait();
    let _relay = t.start_relay();
    let said = send(
        &t,
        "ann@example.com",
        b"Message-ID: <after@test>\r\nSubject: after\r\n\r\nfine\r\n",
    );
    assert!(said.contains("data-reply 250"), "{said}");
    t.wait_for("the next message stored", 30, || {
        count(
            &t,
            "alpha",
            "SELECT count(*) FROM messages WHERE message_id = 'after@test'",
        ) == 1
    });
    assert_eq!(count(&t, "alpha", poison), 2);
    assert_eq!(relay_status(&t)["parked"], 0);
}

#[test]
fn a_reused_message_id_never_suppresses_another_message() {
    let t = Trio::with_mail("good-availability");
    let (_alpha, _beta) = t.running_pair();
    let _relay = t.start_relay();
    let first = b"Message-ID: <same@test>\r\nSubject: the victim's\r\n\r\nmeet at noon\r\n";
    let forged = b"Message-ID: <same@test>\r\nSubject: the attacker's, sent first\r\n\r\nx\r\n";
    assert!(send(&t, "ann@example.com", forged).contains("data-reply 250"));
    assert!(send(&t, "ann@example.com", first).contains("data-reply 250"));
    // The same message again (a client that missed the 250): one copy.
    assert!(send(&t, "ann@example.com", first).contains("data-reply 250"));
    let same = "SELECT count(*) FROM messages WHERE message_id = 'same@test' AND recipient = 'ann@example.com'";
    // The node counts the resend as a duplicate (its status is written
    // every few hundred ms, so this is waited for, not read once).
    t.wait_for("both messages stored, the resend dropped", 30, || {
        count(&t, "alpha", same) == 2 && t.status("alpha")["mail_duplicates"] == 1
    });
    let victim = "SELECT count(*) FROM messages WHERE raw LIKE '%meet at noon%'";
    assert_eq!(count(&t, "alpha", victim), 1);
    assert_eq!(count(&t, "alpha", same), 2);
}

/// A Python LMTP server on `node`'s LMTP address of `t`, misbehaving as
/// `mode` says; its state directory.
fn fake_node(t: &Trio, node: &str, mode: &str) -> (Daemon, PathBuf) {
    let state = t.dir.path().join(format!("fake-{node}"));
    std::fs::create_dir_all(&state).unwrap();
    let addr = t.lmtp(node);
    let (host, port) = common::trio::split_addr(&addr);
    let d = Daemon(
        Command::new("python3")
            .arg(script("fake_lmtp.py"))
            .args([&host, &port, mode])
            .arg(&state)
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    t.wait_for("the fake node to listen", 30, || {
        state.join("ready").exists()
    });
    (d, state)
}

fn files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn a_node_whose_greeting_is_not_a_reply_cannot_stop_the_relay() {
    let t = Trio::with_mail("good-availability");
    let (_fake, state) = fake_node(&t, "alpha", "bad-greeting");
    let mut relay = t.start_relay();
    // Queued mail makes the relay try the node again and again.
    assert!(send(&t, "ann@example.com", b"Subject: q\r\n\r\nx\r\n").contains("data-reply 250"));
    t.wait_for("three greetings read", 30, || {
        std::fs::read_to_string(state.join("connections")).is_ok_and(|s| s.lines().count() >= 3)
    });
    assert!(
        relay.0.try_wait().unwrap().is_none(),
        "the relay died\n{}",
        t.dump()
    );
    // SMTP intake goes on.
    assert!(send(&t, "bob@example.com", b"Subject: r\r\n\r\ny\r\n").contains("data-reply 250"));
    let log = std::fs::read_to_string(t.dir.path().join("relay.log")).unwrap();
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn a_message_that_keeps_breaking_the_replies_is_parked_and_the_rest_flows() {
    let t = Trio::with_mail("good-availability");
    let (_fake, state) = fake_node(&t, "alpha", "poison");
    let mut relay = t.start_relay();
    assert!(send(&t, "ann@example.com,bob@example.com", POISON).contains("data-reply 250"));
    for i in 0..2 {
        let m = format!("Message-ID: <ok{i}@test>\r\nSubject: ok\r\n\r\nfine {i}\r\n");
        assert!(send(&t, "ann@example.com", m.as_bytes()).contains("data-reply 250"));
    }
    t.wait_for("the poison parked, the others delivered", 60, || {
        files(&state.join("stored")) == 2 && relay_status(&t)["parked"] == 1
    });
    let q = queued(&t);
    assert_eq!(q.len(), 1, "{q:?}");
    let (error, strikes) = &q[0];
    let error = error.clone().unwrap_or_default();
    assert!(
        error.starts_with("parked: 3 attempts in a row failed")
            && error.contains("malformed reply"),
        "{error}"
    );
    assert_eq!(*strikes, 3);
    assert!(
        relay.0.try_wait().unwrap().is_none(),
        "the relay died\n{}",
        t.dump()
    );
}

#[test]
fn a_relay_killed_while_delivering_the_same_message_parks_it_instead_of_looping() {
    let t = Trio::with_mail("good-availability");
    let (_fake, state) = fake_node(&t, "alpha", "hang");
    let mut relay = t.start_relay();
    assert!(send(&t, "ann@example.com", POISON).contains("data-reply 250"));
    // Each time the node holds the message, the relay process dies.
    for k in 1..=3 {
        let seen = state.join(format!("poison-{k}"));
        t.wait_for(&format!("delivery {k} of the poison message"), 30, || {
            seen.exists()
        });
        let _ = relay.0.kill();
        let _ = relay.0.wait();
        relay = t.start_relay();
    }
    t.wait_for("the poison message parked", 30, || {
        relay_status(&t)["parked"] == 1
    });
    let q = queued(&t);
    let error = q[0].0.clone().unwrap_or_default();
    assert!(error.starts_with("parked: "), "{error}");
    assert!(q[0].1 >= 3, "{q:?}");
    // It is not tried again (an hour away), and other mail flows.
    let started = Instant::now();
    assert!(
        send(
            &t,
            "bob@example.com",
            b"Message-ID: <next@test>\r\n\r\nnext\r\n"
        )
        .contains("data-reply 250")
    );
    t.wait_for("the next message delivered", 30, || {
        files(&state.join("stored")) == 1
    });
    assert!(
        !state.join("poison-4").exists(),
        "the parked message was tried again"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(
        relay.0.try_wait().unwrap().is_none(),
        "the relay died\n{}",
        t.dump()
    );
}

/// A client that cannot prove the cluster key gets nothing past a node's
/// LMTP endpoint: MAIL before AUTH is refused, a wrong proof is refused,
/// and the third wrong one ends the session. Nothing is stored.
#[test]
fn only_a_client_holding_the_cluster_key_delivers_to_a_node() {
    let t = Trio::with_mail("good-availability");
    let (_alpha, _beta) = t.running_pair();
    let (host, port) = common::trio::split_addr(&t.lmtp("alpha"));
    let script = r#"
import smtplib, sys
host, port = sys.argv[1], int(sys.argv[2])
c = smtplib.LMTP(host, port)
c.ehlo_or_helo_if_needed()
print("offers", c.has_extn("auth") and "CRAM-MD5" in c.esmtp_features["auth"].upper())
print("mail", c.mail("x@example.org")[0])
for i in range(3):
    try:
        c.login("relay", "not-the-secret")
        print("login ok")
    except smtplib.SMTPAuthenticationError as e:
        print("login", e.smtp_code)
    except smtplib.SMTPServerDisconnected:
        print("closed")
        break
try:
    print("after", c.noop()[0])
except smtplib.SMTPServerDisconnected:
    print("after closed")
"#;
    let out = Command::new("python3")
        .args(["-c", script, &host, &port])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        said.contains("offers True"),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("mail 530"), "{said}");
    assert!(!said.contains("login ok"), "{said}");
    assert!(said.contains("login 535"), "{said}");
    // The third failure ends the session (421, then the server closes).
    assert!(
        said.contains("login 421") || said.contains("closed"),
        "{said}"
    );
    assert_eq!(
        count(
            &t,
            "alpha",
            "SELECT count(*) FROM messages WHERE sender = 'x@example.org'"
        ),
        0
    );
}
