//! The node's LMTP endpoint with real clients (swaks, Python's smtplib,
//! Postfix's smtp-source):
//! per-recipient replies after DATA, redeliveries dropped by (delivery id,
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

/// swaks speaking LMTP to `host:port`, proving `secret` with CRAM-MD5 as
/// the relay does when one is given, with `extra` arguments.
fn lmtp_swaks(host: &str, port: &str, secret: Option<&str>, extra: &[&str]) -> (bool, String) {
    let mut args = vec!["--protocol", "LMTP", "--server", host, "--port", port];
    if let Some(secret) = secret {
        args.extend([
            "--auth",
            "CRAM-MD5",
            "--auth-user",
            "relay",
            "--auth-password",
            secret,
        ]);
    }
    args.extend(extra);
    swaks(&args)
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

/// The CRAM-MD5 secret a relay proves to the nodes of `t` (from its
/// cluster key), as the text an LMTP client is given as its password.
fn lmtp_secret(t: &Trio) -> String {
    let key = shipper::secret::cluster_key(&t.dir.path().join("cluster.key")).unwrap();
    String::from_utf8(
        dumpster::lmtp::LmtpSecret::from_cluster_key(&key)
            .bytes()
            .to_vec(),
    )
    .unwrap()
}

#[test]
fn lmtp_delivers_per_recipient_drops_duplicates_and_a_passive_names_the_active() {
    let t = Trio::with_mail("good-availability");
    let (_alpha, _beta) = t.running_pair();
    let (host, port) = common::trio::split_addr(&t.lmtp("alpha"));
    let secret = lmtp_secret(&t);
    // Two local recipients, one foreign (refused at RCPT); pipelined; the
    // client proves the cluster key as the relay does (CRAM-MD5).
    let send = |id: &str, auth: bool| {
        let header = format!("Message-Id: <{id}>");
        lmtp_swaks(
            &host,
            &port,
            auth.then_some(secret.as_str()),
            &[
                "--pipeline",
                "--from",
                "sender@example.org",
                "--to",
                "ann@example.com,bob@example.com,eve@elsewhere.net",
                "--header",
                &header,
                "--body",
                "hello from swaks",
            ],
        )
    };
    // Without the proof, nothing is taken: only the relay delivers.
    let (ok, out) = send("m0@test", false);
    assert!(!ok && out.contains("530 5.7.0"), "{out}");
    let (ok, out) = send("m1@test", true);
    assert!(out.contains("235 2.7.0"), "{out}");
    assert!(out.contains("550 5.1.2"), "{out}");
    assert!(out.contains("<ann@example.com> stored"), "{out}");
    assert!(out.contains("<bob@example.com> stored"), "{out}");
    let _ = ok; // swaks exits non-zero when any recipient is refused
    assert_eq!(
        rows(
            &t,
            "alpha",
            "SELECT recipient || ' ' || message_id FROM messages ORDER BY recipient"
        ),
        vec!["ann@example.com m1@test", "bob@example.com m1@test"]
    );
    // Python's smtplib.LMTP, one recipient: the message is stored byte for
    // byte; the same delivery (ENVID) again is dropped as a duplicate, and
    // a different message with the same Message-ID is stored.
    let script = r#"
import smtplib, sys
msg = b"Message-ID: <py1@test>\r\nSubject: caf\xc3\xa9\r\n\r\nline one\r\n.dot line\r\nlast\r\n"
other = b"Message-ID: <py1@test>\r\nSubject: another message, the same id\r\n\r\nbody\r\n"
def send(m, envid):
    c = smtplib.LMTP(sys.argv[1], int(sys.argv[2]))
    c.ehlo_or_helo_if_needed()
    c.login("relay", sys.argv[3])
    c.mail("p@example.org", ["ENVID=" + envid])
    c.rcpt("cat@example.com")
    code, text = c.data(m)
    c.quit()
    return code, text.decode()
print(send(msg, "d1"))
print(send(msg, "d1"))
print(send(other, "d2"))
"#;
    let out = Command::new("python3")
        .args(["-c", script, &host, &port, &secret])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(
        lines.len(),
        3,
        "{said} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        lines[0].contains("250") && lines[0].contains("stored"),
        "{said}"
    );
    assert!(lines[1].contains("duplicate dropped"), "{said}");
    assert!(
        lines[2].contains("250") && lines[2].contains("stored"),
        "{said}"
    );
    let conn = rusqlite::Connection::open_with_flags(
        t.data_dir("alpha").join("store.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let raw: Vec<u8> = conn
        .query_row(
            "SELECT raw FROM messages WHERE message_id = 'py1@test' ORDER BY id LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        raw,
        b"Message-ID: <py1@test>\r\nSubject: caf\xc3\xa9\r\n\r\nline one\r\n.dot line\r\nlast\r\n"
    );
    // No Message-ID: refused for good (the relay assigns them, never the store).
    let (_, out) = lmtp_swaks(
        &host,
        &port,
        Some(&secret),
        &[
            "--to",
            "ann@example.com",
            "--data",
            "Subject: no id\r\n\r\nbody\r\n",
        ],
    );
    assert!(out.contains("550 5.6.0"), "{out}");
    // The passive answers 451 and names the active's LMTP address.
    let (bh, bp) = common::trio::split_addr(&t.lmtp("beta"));
    let (ok, out) = lmtp_swaks(
        &bh,
        &bp,
        Some(&secret),
        &[
            "--to",
            "ann@example.com",
            "--header",
            "Message-Id: <m2@test>",
        ],
    );
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
        rows(&t, "beta", "SELECT message_id FROM messages ORDER BY id").len() == 4
    });
    // Full-text search, on the active and on the copy alike: the subject
    // (decoded, diacritics folded) and the body. The active indexes new
    // mail within a second, and the index reaches the copy as any write.
    for node in ["alpha", "beta"] {
        t.wait_for(&format!("every message in the index on {node}"), 30, || {
            rows(
                &t,
                node,
                "SELECT CAST(coalesce((SELECT value FROM mailbox_meta WHERE key = 'search_indexed_to') \
                 = (SELECT max(id) FROM messages), 0) AS TEXT)",
            ) == ["1"]
        });
        let out = t.ok(node, &["mail", "search", "cafe"]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{node}: {out}");
        assert!(
            lines[1].ends_with("\tcat@example.com\tp@example.org\tpy1@test\tcafé"),
            "{node}: {out}"
        );
        let out = t.ok(node, &["mail", "search", "hello", "swaks"]);
        assert_eq!(out.lines().count(), 3, "{node}: {out}");
        let out = t.ok(
            node,
            &["mail", "search", "--recipient", "bob@example.com", "swaks"],
        );
        assert_eq!(out.lines().count(), 2, "{node}: {out}");
        assert!(out.contains("\tbob@example.com\t"), "{node}: {out}");
        let out = t.ok(node, &["mail", "search", "nowhere"]);
        assert_eq!(out.lines().count(), 1, "{node}: {out}");
    }
    let out = t
        .cmd("beta", &["mail", "search", "AND", "OR"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not FTS5 query syntax"), "{err}");
}

fn curl(args: &[&str]) -> (bool, String) {
    let out = Command::new("curl").args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// curl submits the file `f` to `url` from s@example.org for `rcpts`, with
/// `extra` arguments; whether it succeeded, and what it said.
fn submit(url: &str, rcpts: &[&str], f: &std::path::Path, extra: &[&str]) -> (bool, String) {
    let mut args = vec![url, "--mail-from", "s@example.org"];
    for r in rcpts {
        args.extend(["--mail-rcpt", r]);
    }
    args.extend(["-T", f.to_str().unwrap(), "-sS"]);
    args.extend(extra);
    curl(&args)
}

#[test]
fn the_relay_takes_mail_from_real_clients_and_delivers_it_to_the_active() {
    let t = Trio::with_mail("good-availability");
    let (_alpha, _beta) = t.running_pair();
    let _relay = t.start_relay();
    let url = format!("smtp://{}", t.smtp());
    let dir = t.dir.path();
    // curl: CRLF file, LF file without and with --crlf, an empty file (no Message-ID).
    std::fs::write(
        dir.join("crlf.eml"),
        "Message-ID: <c1@test>\r\nSubject: a\r\n\r\n.leading dot\r\nbody\r\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("lf.eml"),
        "Message-ID: <c2@test>\nSubject: b\n\nline\n.dot\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("lf2.eml"),
        "Message-ID: <c3@test>\nSubject: c\n\nline\n",
    )
    .unwrap();
    std::fs::write(dir.join("empty.eml"), "").unwrap();
    for (file, extra) in [
        ("crlf.eml", None),
        ("lf.eml", None),
        ("lf2.eml", Some("--crlf")),
        ("empty.eml", None),
    ] {
        let f = dir.join(file);
        let (ok, out) = submit(&url, &["ann@example.com"], &f, extra.as_slice());
        assert!(ok, "curl {file}: {out}");
    }
    // Not an open relay.
    let f = dir.join("crlf.eml");
    let (ok, out) = submit(&url, &["x@elsewhere.net"], &f, &[]);
    assert!(!ok && out.contains("550"), "{out}");
    // A quoted local part cannot be relayed as it was written: refused
    // before acceptance, never accepted and dropped.
    let (ok, out) = submit(&url, &["\"ann smith\"@example.com"], &f, &[]);
    assert!(!ok && out.contains("553"), "{out}");
    // smtplib with SMTPUTF8, and swaks pipelining two recipients.
    let (host, port) = common::trio::split_addr(&t.smtp());
    let script = r#"
import smtplib, sys
from email.message import EmailMessage
m = EmailMessage()
m["From"] = "jörg@exämple.org"
m["To"] = "zoë@example.com"
m["Subject"] = "grüße"
m["Message-ID"] = "<u1@test>"
m.set_content("ça va\n")
with smtplib.SMTP(sys.argv[1], int(sys.argv[2])) as s:
    s.send_message(m, mail_options=["SMTPUTF8"])
"#;
    t.python(script, &[&host, &port]);
    let (ok, out) = swaks(&[
        "--server",
        &host,
        "--port",
        &port,
        "--pipeline",
        "--to",
        "bob@example.com,cat@example.com",
        "--header",
        "Message-Id: <w1@test>",
    ]);
    assert!(ok, "{out}");
    let want = 1 + 1 + 1 + 1 + 1 + 2; // curl ×4, smtplib, swaks ×2 recipients
    t.wait_for("every message in the active store", 30, || {
        rows(&t, "alpha", "SELECT message_id FROM messages").len() == want
    });
    let conn = rusqlite::Connection::open_with_flags(
        t.data_dir("alpha").join("store.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let raw = |id: &str| -> Vec<u8> {
        conn.query_row(
            "SELECT raw FROM messages WHERE message_id = ?1",
            [id],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert_eq!(
        raw("c1@test"),
        b"Message-ID: <c1@test>\r\nSubject: a\r\n\r\n.leading dot\r\nbody\r\n"
    );
    // Bare LF from curl is normalised to CRLF (its unstuffed dot line kept
    // as sent; curl ends such a file with an extra CRLF of its own).
    assert_eq!(
        raw("c2@test"),
        b"Message-ID: <c2@test>\r\nSubject: b\r\n\r\nline\r\n.dot\r\n\r\n"
    );
    assert_eq!(
        raw("c3@test"),
        b"Message-ID: <c3@test>\r\nSubject: c\r\n\r\nline\r\n"
    );
    // The empty message got its Message-ID from the relay, not the store.
    let assigned = rows(
        &t,
        "alpha",
        "SELECT message_id FROM messages WHERE message_id NOT LIKE '%@test'",
    );
    assert_eq!(assigned.len(), 1, "{assigned:?}");
    let empty = raw(&assigned[0]);
    assert_eq!(
        empty,
        format!("Message-ID: <{}>\r\n", assigned[0]).into_bytes()
    );
    let u = String::from_utf8(raw("u1@test")).unwrap();
    assert!(u.contains("zoë@example.com") && u.contains("ça va"), "{u}");
    assert_eq!(
        rows(
            &t,
            "alpha",
            "SELECT recipient FROM messages WHERE message_id = 'u1@test'"
        ),
        vec!["zoë@example.com"]
    );
    // Status shows the relay, its queue empty once it has counted the last
    // delivery (which the store may hold a moment before).
    let status = || {
        let out = Command::new(env!("CARGO_BIN_EXE_logship"))
            .args(["status", "--config"])
            .arg(&t.config)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    t.wait_for("status to show the relay with its queue empty", 30, || {
        let text = status();
        text.contains("relay 127.0.0.1:") && text.contains("queue 0")
    });
    // An operator's redelivery: everything comes back, and is dropped.
    let out = Command::new(env!("CARGO_BIN_EXE_logship"))
        .args([
            "dumpster",
            "redeliver",
            "--since",
            "2000-01-01T00:00:00Z",
            "--config",
        ])
        .arg(&t.config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Six messages (swaks sent one to two recipients).
    assert!(
        text.contains(&format!("queued {} message(s)", want - 1)),
        "{text}"
    );
    t.wait_for("the redelivered copies dropped as duplicates", 30, || {
        t.status("alpha")["mail_duplicates"].as_u64() == Some(want as u64)
    });
    assert_eq!(
        rows(&t, "alpha", "SELECT message_id FROM messages").len(),
        want
    );
}

#[test]
fn every_accepted_message_is_stored_exactly_once_through_repeated_failovers() {
    let seed =
        common::seed("every_accepted_message_is_stored_exactly_once_through_repeated_failovers");
    let mut rng = common::Rng::new(seed);
    let t = Trio::with_mail("best-availability");
    let (alpha, beta) = t.running_pair();
    let mut daemons = [Some(alpha), Some(beta)];
    let _relay = t.start_relay();
    let submitter = common::trio::Submitter::start(&t, "x");
    let nodes = ["alpha", "beta"];
    for round in 0..5 {
        let active = (0..2)
            .find(|i| t.status(nodes[*i])["role"] == "active")
            .unwrap_or_else(|| panic!("no active before round {round}\n{}", t.dump()));
        let other = 1 - active;
        t.wait_for(
            "the passive Healthy, and hearing the active, before the kill",
            60,
            || {
                let s = t.status(nodes[other]);
                s["role"] == "passive"
                    && s["summary_copy_status"] == "Healthy"
                    && s["peer"]["role"] == "active"
            },
        );
        // Let some mail flow into the active, sealed or not, then kill it.
        let before = rows(&t, nodes[active], "SELECT message_id FROM messages").len();
        t.wait_for("mail flowing into the active", 30, || {
            rows(&t, nodes[active], "SELECT message_id FROM messages").len()
                > before + 3 + rng.below(10) as usize
        });
        let mut d = daemons[active].take().unwrap();
        d.0.kill().unwrap();
        d.0.wait().unwrap();
        eprintln!("round {round}: killed {}", nodes[active]);
        t.wait_for("the other node active", 60, || {
            t.status(nodes[other])["role"] == "active"
        });
        daemons[active] = Some(t.start(nodes[active]));
    }
    let (accepted, sent) = submitter.stop();
    assert!(
        accepted.len() > 20,
        "too few messages accepted: {}",
        accepted.len()
    );
    let active = (0..2)
        .find(|i| t.status(nodes[*i])["role"] == "active")
        .map(|i| nodes[i])
        .expect("an active node at the end");
    let relay_queue = || {
        let st: serde_json::Value = serde_json::from_slice(
            &std::fs::read(t.dir.path().join("relay").join("relay.json")).unwrap_or_default(),
        )
        .unwrap_or(serde_json::Value::Null);
        st["queue_length"].as_u64()
    };
    t.wait_for("the relay to deliver everything", 120, || {
        relay_queue() == Some(0)
    });
    let stored = rows(
        &t,
        active,
        "SELECT message_id FROM messages ORDER BY message_id",
    );
    let distinct =
        common::trio::assert_stored_exactly_once(&stored, &accepted, &sent, seed, || t.dump());
    let relay_status: serde_json::Value = serde_json::from_slice(
        &std::fs::read(t.dir.path().join("relay").join("relay.json")).unwrap(),
    )
    .unwrap();
    eprintln!(
        "{} accepted, {} stored once; last redelivery {} (seed {seed})",
        accepted.len(),
        distinct.len(),
        relay_status["last_redelivery"]
    );
    assert!(
        !relay_status["last_redelivery"].is_null(),
        "no redelivery happened"
    );
    // Both sides report the counts.
    let log = |n: &str| {
        std::fs::read_to_string(t.dir.path().join(format!("{n}.log"))).unwrap_or_default()
    };
    t.wait_for("the relay to report the last redelivery done", 30, || {
        log("relay").contains("redelivery done")
    });
    assert!(
        log("alpha").contains("dropped as duplicates")
            || log("beta").contains("dropped as duplicates"),
        "no node reported its duplicates"
    );
}

#[test]
fn a_relay_killed_with_mail_queued_loses_nothing() {
    let t = Trio::with_mail("good-availability");
    // No node runs yet: what the relay accepts stays queued.
    let mut relay = t.start_relay();
    let url = format!("smtp://{}", t.smtp());
    for i in 1..=5 {
        let f = t.dir.path().join(format!("q{i}.eml"));
        std::fs::write(
            &f,
            format!("Message-ID: <q{i}@test>\r\nSubject: {i}\r\n\r\nqueued\r\n"),
        )
        .unwrap();
        let (ok, out) = submit(&url, &["ann@example.com"], &f, &[]);
        assert!(ok, "{out}");
    }
    relay.0.kill().unwrap();
    relay.0.wait().unwrap();
    let _relay = t.start_relay();
    t.ok("alpha", &["init"]);
    let _alpha = t.start("alpha");
    t.wait_for("the queued mail in alpha's store", 60, || {
        std::fs::metadata(t.data_dir("alpha").join("store.db")).is_ok()
            && rows(
                &t,
                "alpha",
                "SELECT name FROM sqlite_schema WHERE name = 'messages'",
            )
            .len()
                == 1
            && rows(&t, "alpha", "SELECT message_id FROM messages").len() == 5
    });
    assert_eq!(
        rows(
            &t,
            "alpha",
            "SELECT message_id FROM messages ORDER BY message_id"
        ),
        (1..=5).map(|i| format!("q{i}@test")).collect::<Vec<_>>()
    );
}

#[test]
fn the_relays_lmtp_client_gets_dovecots_per_recipient_replies() {
    let d = harness::dovecot::Dovecot::start(&["b@example.com", "c@example.com"]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let raw = b"Message-ID: <d1@test>\r\nSubject: to dovecot\r\n\r\n.starts with a dot\r\nend\r\n";
    let (outcome, _) = rt.block_on(async {
        let mut c =
            dumpster::lmtp_client::Client::connect(&d.addr(), std::time::Duration::from_secs(5))
                .await
                .unwrap();
        let rcpts = ["b@example.com", "nobody@example.com", "c@example.com"].map(String::from);
        let r = c
            .send(&d.addr(), "s@example.org", &rcpts, Some("d1"), raw)
            .await
            .unwrap();
        c.quit().await;
        r
    });
    let dumpster::lmtp_client::Outcome::PerRecipient(replies) = outcome else {
        panic!("{outcome:?}");
    };
    let codes: Vec<u16> = replies.iter().map(|r| r.code).collect();
    assert_eq!(codes, vec![250, 550, 250], "{replies:?}");
    for u in ["b@example.com", "c@example.com"] {
        let got = d.delivered(u);
        assert_eq!(got.len(), 1, "{u}");
        // Dovecot adds Return-Path and Received and keeps LF line ends in
        // its Maildir; the message is otherwise byte for byte (unstuffed).
        let lf = String::from_utf8_lossy(raw).replace("\r\n", "\n");
        assert!(
            got[0].ends_with(lf.as_bytes()),
            "{}",
            String::from_utf8_lossy(&got[0])
        );
    }
}

/// A metric's value from a Prometheus text page.
fn metric(page: &str, name_and_labels: &str) -> f64 {
    page.lines()
        .find_map(|l| {
            l.strip_prefix(name_and_labels)
                .and_then(|v| v.strip_prefix(' '))
        })
        .unwrap_or_else(|| panic!("no {name_and_labels} in\n{page}"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn the_admin_endpoints_serve_metrics_that_match_status() {
    let t = Trio::with_mail("good-availability");
    let (_alpha, _beta) = t.running_pair();
    let _relay = t.start_relay();
    let url = format!("smtp://{}", t.smtp());
    let f = t.dir.path().join("m.eml");
    std::fs::write(&f, "Message-ID: <met1@test>\r\nSubject: m\r\n\r\nx\r\n").unwrap();
    let (ok, out) = submit(&url, &["ann@example.com"], &f, &[]);
    assert!(ok, "{out}");
    t.wait_for("the message on alpha", 30, || {
        t.status("alpha")["mail_stored"].as_u64() == Some(1)
    });
    let scrape = |who: &str, path: &str| {
        let (ok, body) = curl(&["-sS", &format!("http://{}{path}", t.admin(who))]);
        assert!(ok, "{body}");
        body
    };
    for node in ["alpha", "beta"] {
        let st = t.status(node);
        let page = scrape(node, "/metrics");
        let l = format!("{{node=\"{node}\"");
        let role = st["role"].as_str().unwrap();
        assert_eq!(
            metric(&page, &format!("logship_role{l},role=\"{role}\"}}")),
            1.0,
            "{page}"
        );
        assert_eq!(
            metric(&page, &format!("logship_epoch{l}}}")),
            st["epoch"].as_f64().unwrap()
        );
        assert_eq!(
            metric(&page, &format!("logship_quorum_votes{l}}}")),
            st["quorum"]["votes"].as_f64().unwrap()
        );
        assert_eq!(
            metric(&page, &format!("logship_mail_stored_total{l}}}")),
            st["mail_stored"].as_f64().unwrap()
        );
        let json: serde_json::Value = serde_json::from_str(&scrape(node, "/status")).unwrap();
        assert_eq!(json["role"], st["role"]);
    }
    let page = scrape("beta", "/metrics");
    let st = t.status("beta");
    assert_eq!(
        metric(&page, "logship_copy_queue_length{node=\"beta\"}"),
        st["copy_queue_length"].as_f64().unwrap()
    );
    // Block mode's position, as status shows it (both move only on writes).
    assert_eq!(
        metric(&page, "logship_received_lsn{node=\"beta\"}"),
        st["last_received_lsn"].as_f64().unwrap(),
        "{page}"
    );
    // Histograms: the active's fsyncs, the passive's seal-to-replay lag.
    let page = scrape("alpha", "/metrics");
    assert!(
        metric(&page, "logship_fsync_seconds_count{node=\"alpha\"}") > 0.0,
        "{page}"
    );
    t.wait_for(
        "beta to replay a segment (lag observed, bytes copied)",
        30,
        || {
            let page = scrape("beta", "/metrics");
            metric(&page, "logship_replay_lag_seconds_count{node=\"beta\"}") > 0.0
                && metric(&page, "logship_copied_bytes_total{node=\"beta\"}") >= 1048576.0
                && metric(
                    &page,
                    "logship_replay_lag_seconds_bucket{node=\"beta\",le=\"+Inf\"}",
                ) > 0.0
        },
    );
    t.wait_for("the relay's status to count the message", 30, || {
        let page = scrape("dumpster", "/metrics");
        metric(&page, "logship_relay_accepted_total") == 1.0
            && metric(&page, "logship_dumpster_messages") == 1.0
            && metric(&page, "logship_relay_queue_length") == 0.0
    });
}

/// Postfix's own test client, `smtp-source`: concurrent SMTP sessions
/// through the relay, and LMTP (`-L`) straight to the active node, several
/// recipients a message. Every message is stored once per recipient, and an
/// LMTP 250 means stored.
#[test]
fn postfix_smtp_source_through_the_relay_and_over_lmtp_stores_every_message_once() {
    // No cluster key: smtp-source cannot prove one to the node's endpoint.
    let t = Trio::with_mail_keyed("good-availability", false);
    let (_alpha, _beta) = t.running_pair();
    // Without a key the endpoint takes anyone's mail, and status says so.
    let warnings = t.status("alpha")["warnings"].to_string();
    assert!(
        warnings.contains("the LMTP endpoint takes mail from anyone"),
        "{warnings}"
    );
    let _relay = t.start_relay();
    let source = |args: &[&str], to: &str| {
        let out = Command::new(harness::sys::program("smtp-source"))
            .args(args)
            .arg(to)
            .output()
            .expect("run smtp-source (tools/test.sh installs postfix for it)");
        assert!(
            out.status.success(),
            "smtp-source {args:?} {to}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let count = |sql: &str| -> usize { rows(&t, "alpha", sql).len() };

    // LMTP to the active: 40 messages, two recipients each, on two sessions.
    source(
        &[
            "-L",
            "-s",
            "2",
            "-m",
            "40",
            "-r",
            "2",
            "-N",
            "-l",
            "3000",
            "-M",
            "lmtp.test",
            "-f",
            "sender@example.org",
            "-t",
            "bob@example.com",
        ],
        &t.lmtp("alpha"),
    );
    // Answered 250 only once stored: no waiting.
    assert_eq!(
        count(
            "SELECT message_id || ' ' || recipient FROM messages WHERE message_id LIKE '%@lmtp.test'"
        ),
        80
    );
    assert_eq!(
        count("SELECT DISTINCT message_id FROM messages WHERE message_id LIKE '%@lmtp.test'"),
        40
    );

    // SMTP through the relay: 150 messages on four concurrent sessions,
    // three recipients each.
    source(
        &[
            "-s",
            "4",
            "-m",
            "150",
            "-r",
            "3",
            "-N",
            "-l",
            "2000",
            "-M",
            "smtp.test",
            "-f",
            "sender@example.org",
            "-t",
            "ann@example.com",
        ],
        &t.smtp(),
    );
    t.wait_for("the relay to deliver everything", 60, || {
        count("SELECT message_id FROM messages WHERE message_id LIKE '%@smtp.test'") >= 450
    });
    assert_eq!(
        count(
            "SELECT message_id || ' ' || recipient FROM messages WHERE message_id LIKE '%@smtp.test'"
        ),
        450
    );
    assert_eq!(
        count("SELECT DISTINCT message_id FROM messages WHERE message_id LIKE '%@smtp.test'"),
        150
    );
    // Each stored message is the one sent: its headers and its size.
    let raw = rows(
        &t,
        "alpha",
        "SELECT CAST(raw AS TEXT) FROM messages WHERE message_id LIKE '%@smtp.test' LIMIT 1",
    );
    assert!(
        raw[0].contains("From: <sender@example.org>\r\n") && raw[0].contains("XXXX"),
        "{}",
        raw[0]
    );
    // Not an open relay, whatever the client.
    let out = Command::new(harness::sys::program("smtp-source"))
        .args([
            "-m",
            "1",
            "-f",
            "sender@example.org",
            "-t",
            "x@elsewhere.net",
        ])
        .arg(t.smtp())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("550"), "{text}");
}

/// The redelivery a lossy failover asks for is kept on disk: if the new
/// active restarts before any relay has heard it, it asks again.
#[test]
fn a_new_active_restarted_before_the_relay_heard_it_still_asks_for_the_redelivery() {
    use std::io::{BufRead, BufReader};
    let t = Trio::with_mail("best-availability");
    let (alpha, beta) = t.running_pair();
    let greeting = |node: &str| -> String {
        let s = std::net::TcpStream::connect(t.lmtp(node)).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        line
    };
    let since = |g: &str| -> Option<String> {
        g.split_whitespace()
            .find_map(|w| w.strip_prefix("redeliver-since="))
            .map(str::to_string)
    };
    drop(alpha); // SIGKILL: a failover to beta, which asks for a redelivery
    t.wait_for("beta active", 60, || t.status("beta")["role"] == "active");
    let first = greeting("beta");
    let asked = since(&first).unwrap_or_else(|| panic!("no redelivery asked: {first}"));
    // beta's daemon restarts at once (no relay has connected).
    drop(beta);
    let _beta = t.start("beta");
    t.wait_for("beta active again", 60, || {
        t.status("beta")["role"] == "active"
    });
    let again = greeting("beta");
    assert_eq!(since(&again).as_deref(), Some(asked.as_str()), "{again}");
    assert_ne!(first, again, "a new epoch: {again}");
}

/// A recipient the delivering server refuses for good after the relay has
/// accepted the message (here Dovecot, which knows no such user) is kept in
/// the queue, parked and shown, never dropped; the others are delivered.
#[test]
fn a_recipient_refused_for_good_after_acceptance_is_parked_not_dropped() {
    let d = harness::dovecot::Dovecot::start(&["b@example.com"]);
    let t = Trio::with_mail("good-availability");
    // The relay delivers to Dovecot in alpha's place.
    let text = std::fs::read_to_string(&t.config).unwrap();
    let alpha_lmtp = t.lmtp("alpha");
    std::fs::write(&t.config, text.replace(&alpha_lmtp, &d.addr())).unwrap();
    let _relay = t.start_relay();
    let f = t.dir.path().join("m.eml");
    std::fs::write(
        &f,
        "Message-ID: <parked@test>\r\nSubject: p\r\n\r\nbody\r\n",
    )
    .unwrap();
    let (ok, out) = submit(
        &format!("smtp://{}", t.smtp()),
        &["b@example.com", "nobody@example.com"],
        &f,
        &[],
    );
    assert!(ok, "accepted by the relay: {out}");
    let status = || -> serde_json::Value {
        std::fs::read(t.dir.path().join("relay").join("relay.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    };
    t.wait_for("b delivered and nobody parked", 30, || {
        d.delivered("b@example.com").len() == 1 && status()["parked"] == 1
    });
    assert_eq!(status()["queue_length"], 1, "{}", status());
    let out = Command::new(env!("CARGO_BIN_EXE_logship"))
        .args(["status", "--config"])
        .arg(&t.config)
        .output()
        .unwrap();
    let human = String::from_utf8_lossy(&out.stdout);
    assert!(human.contains("1 parked"), "{human}");
}

/// An idle relay (nothing queued) still hears of a lossy failover soon: it
/// greets the active again every few seconds.
#[test]
fn an_idle_relay_hears_a_failover_without_mail_to_send() {
    let t = Trio::with_mail("best-availability");
    let (alpha, _beta) = t.running_pair();
    let _relay = t.start_relay();
    let last = || -> serde_json::Value {
        std::fs::read(t.dir.path().join("relay").join("relay.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .map(|v| v["last_redelivery"].clone())
            .unwrap_or_default()
    };
    assert!(last().is_null(), "{}", last());
    drop(alpha); // SIGKILL: beta takes over and asks for a redelivery
    t.wait_for("beta active", 60, || t.status("beta")["role"] == "active");
    t.wait_for("the idle relay to start the redelivery", 30, || {
        last()["reason"]
            .as_str()
            .is_some_and(|r| r.contains("node beta became active"))
    });
}
