//! `logship bench mail`: messages per second, durable end to end, in three
//! legs on one machine, each with the same small messages (one recipient)
//! from `clients` concurrent pipelining connections:
//! 1. SMTP into the relay, until all are stored in the active node's store;
//! 2. LMTP straight into the active node (each reply means durable);
//! 3. LMTP into Dovecot (Maildir, which fsyncs each message).
//!
//! The last line is `ratio <leg 2 / leg 3>`.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use dumpster::lmtp_client::{Client, Outcome};
use harness::sys::free_tcp_port;

use crate::procs::Procs;

fn message(leg: &str, i: usize) -> Vec<u8> {
    format!(
        "Message-ID: <{leg}{i}@bench>\r\nFrom: load@example.org\r\nTo: box@example.com\r\nSubject: bench {i}\r\n\r\nA small message for the benchmark, number {i}.\r\nSecond line.\r\n"
    )
    .into_bytes()
}

/// Sends `n` messages over `clients` connections; returns the seconds taken
/// until every reply came back, failing on any refusal.
/// With `secret`, proves the cluster key as the relay does and sends each
/// message under its delivery id, as the relay does.
fn drive(
    addr: &str,
    hello: &str,
    leg: &str,
    n: usize,
    clients: usize,
    secret: Option<&dumpster::lmtp::LmtpSecret>,
) -> Result<f64> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let started = Instant::now();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for c in 0..clients {
            let (addr, hello, leg) = (addr.to_string(), hello.to_string(), leg.to_string());
            let secret = secret.cloned();
            tasks.push(tokio::spawn(async move {
                let mut client = Client::connect_with(
                    &addr,
                    Duration::from_secs(10),
                    &hello,
                    secret.as_ref().map(|s| s.bytes()),
                )
                .await?;
                let rcpt = ["box@example.com".to_string()];
                for i in (c..n).step_by(clients) {
                    let raw = message(&leg, i);
                    let envid = secret
                        .is_some()
                        .then(|| dumpster::relay::delivery_id("load@example.org", &raw));
                    let (o, _) = client
                        .send(&addr, "load@example.org", &rcpt, envid.as_deref(), &raw)
                        .await?;
                    match o {
                        Outcome::PerRecipient(r) if r.iter().all(|r| r.code / 100 == 2) => {}
                        other => anyhow::bail!("message {i} refused: {other:?}"),
                    }
                }
                client.quit().await;
                Ok::<_, anyhow::Error>(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(started.elapsed().as_secs_f64())
}

fn stored(db: &Path) -> usize {
    rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .and_then(|c| c.query_row("SELECT count(*) FROM messages", [], |r| r.get::<_, i64>(0)))
        .map(|n| n as usize)
        .unwrap_or(0)
}

pub fn mail(dir: &Path, n: usize, clients: usize) -> Result<ExitCode> {
    let (lmtp, smtp) = (free_tcp_port()?, free_tcp_port()?);
    let config = crate::procs::write_bench_config(
        dir,
        &format!("lmtp = \"127.0.0.1:{lmtp}\"\n"),
        &format!(
            "\n[dumpster]\nsmtp = \"127.0.0.1:{smtp}\"\ndata-dir = \"{d}/relay\"\naccepted-domains = [\"example.com\"]\n",
            d = dir.display()
        ),
    )?;
    let mut procs = Procs::new(dir.to_path_buf(), config)?;
    procs.run(&["init", "--node", "alpha"])?;
    procs.start("alpha", &["node", "--node", "alpha"])?;
    let lmtp_addr = format!("127.0.0.1:{lmtp}");
    // The node takes mail only from a client that proves the cluster key.
    let key = shipper::secret::cluster_key(&dir.join("cluster.key"))?;
    let secret = dumpster::lmtp::LmtpSecret::from_cluster_key(&key);
    // Active once its greeting names an epoch.
    procs.wait("alpha to take mail", 30, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        rt.is_ok_and(|rt| {
            rt.block_on(Client::connect_with(
                &lmtp_addr,
                Duration::from_secs(1),
                "LHLO",
                Some(secret.bytes()),
            ))
            .is_ok_and(|c| c.greeting.contains("epoch="))
        })
    })?;
    procs.start("relay", &["dumpster"])?;
    let smtp_addr = format!("127.0.0.1:{smtp}");
    procs.wait("the relay to listen", 30, || {
        std::net::TcpStream::connect(&smtp_addr).is_ok()
    })?;
    let db = dir.join("alpha/store.db");
    println!("{n} messages of ~200 bytes, one recipient, {clients} concurrent clients");

    // 1. Through the relay, until stored.
    let started = Instant::now();
    drive(&smtp_addr, "EHLO", "r", n, clients, None).context("leg 1: SMTP into the relay")?;
    procs.wait("the relay's messages in the store", 300, || {
        stored(&db) >= n
    })?;
    let e2e = n as f64 / started.elapsed().as_secs_f64();
    println!("relay (SMTP, durable in its queue) -> LMTP -> store: {e2e:>8.0} msg/s end to end");

    // 2. Straight into our LMTP endpoint.
    let secs = drive(&lmtp_addr, "LHLO", "l", n, clients, Some(&secret))
        .context("leg 2: LMTP into the node")?;
    let ours = n as f64 / secs;
    println!("LMTP into the logship node (group commit):       {ours:>8.0} msg/s");

    // 3. Into Dovecot's LMTP (Maildir).
    let dovecot = harness::dovecot::Dovecot::try_start(&["box@example.com"])?;
    let secs = drive(&dovecot.addr(), "LHLO", "d", n, clients, None)
        .context("leg 3: LMTP into Dovecot")?;
    let theirs = n as f64 / secs;
    println!("LMTP into Dovecot 2.3 (Maildir, fsync):          {theirs:>8.0} msg/s");
    if dovecot.delivered("box@example.com").len() != n {
        bail!(
            "Dovecot holds {} messages, not {n}",
            dovecot.delivered("box@example.com").len()
        );
    }
    drop(dovecot);
    drop(procs);
    let _ = std::fs::remove_dir_all(dir);
    println!("ratio {:.2}", ours / theirs);
    Ok(ExitCode::SUCCESS)
}
