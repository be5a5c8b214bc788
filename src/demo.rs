//! `logship demo`: the whole system on one machine, on local directories
//! and loopback ports: two nodes, a witness directory and the relay. It
//! seeds the passive, sends mail through the relay, kills the active and
//! shows the failover (time, mount dial, redelivery), brings the old node
//! back (rewind, then Healthy), moves the active role back, and ends with a
//! summary. It exits non-zero if a promise failed.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use dumpster::lmtp_client::{Client, Outcome};
use harness::sys::{free_tcp_port, free_udp_port};

use crate::procs::Procs;

/// The demo's processes, and where the relay listens.
struct Demo {
    p: Procs,
    smtp: String,
}

impl std::ops::Deref for Demo {
    type Target = Procs;
    fn deref(&self) -> &Procs {
        &self.p
    }
}

impl std::ops::DerefMut for Demo {
    fn deref_mut(&mut self) -> &mut Procs {
        &mut self.p
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if !self.p.keep {
            self.p.kill_all();
            let _ = std::fs::remove_dir_all(&self.p.dir);
        }
    }
}

fn say(what: &str) {
    println!("\n== {what}");
}

impl Demo {
    fn show_status(&self) -> Result<()> {
        print!("{}", self.run(&["status"])?);
        Ok(())
    }

    /// Sends `ids` through the relay; returns those it accepted.
    fn send(&self, ids: std::ops::Range<usize>) -> Result<Vec<String>> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let mut c = Client::connect_as(&self.smtp, Duration::from_secs(5), "EHLO").await?;
            let mut accepted = Vec::new();
            let rcpt = ["inbox@example.com".to_string()];
            for i in ids {
                let id = format!("demo{i}@logship");
                let msg = format!(
                    "Message-ID: <{id}>\r\nFrom: demo@example.org\r\nTo: inbox@example.com\r\nSubject: demo message {i}\r\n\r\nHello from the logship demo ({i}).\r\n"
                );
                if let (Outcome::PerRecipient(r), _) = c
                    .send(&self.smtp, "demo@example.org", &rcpt, None, msg.as_bytes())
                    .await?
                    && r.iter().all(|r| r.code == 250)
                {
                    accepted.push(id);
                }
            }
            c.quit().await;
            Ok::<_, anyhow::Error>(accepted)
        })
    }

    fn stored(&self, node: &str) -> Vec<String> {
        dumpster::mailbox::stored_message_ids(&self.dir.join(node).join("store.db"))
    }

    fn verify(&self, node: &str) -> bool {
        self.cmd(&["verify-copy", "--node", node])
            .output()
            .is_ok_and(|o| o.status.success())
    }
}

/// The last transaction committed in the store of `data_dir` (its guard
/// row), read while its node is down.
fn last_committed(data_dir: &Path) -> Result<u64> {
    let db = data_dir.join(shipper::store::DATABASE_FILE);
    let conn = shipper::store::open_read_only(&db)?;
    Ok(shipper::apply::read_guard(&conn)?.0.0)
}

pub fn run(dir: Option<&Path>, keep: bool, messages: usize) -> Result<ExitCode> {
    let dir = match dir {
        Some(d) => d.to_path_buf(),
        None => std::env::temp_dir().join(format!("logship-demo-{}", std::process::id())),
    };
    std::fs::create_dir_all(dir.join("witness"))
        .with_context(|| format!("create {}", dir.display()))?;
    let smtp = format!("127.0.0.1:{}", free_tcp_port()?);
    crate::procs::write_cluster_key(&dir.join("cluster.key"))?;
    let config = dir.join("logship.toml");
    std::fs::write(
        &config,
        format!(
            "[cluster]\nname = \"demo\"\nwitness = \"{w}\"\nmount-dial = \"good-availability\"\nseal-after = \"1s\"\nkey-file = \"cluster.key\"\n\n\
             [nodes.alpha]\ndata-dir = \"alpha\"\nshare = \"alpha/logs\"\nheartbeat = \"127.0.0.1:{h1}\"\nlmtp = \"127.0.0.1:{l1}\"\n\n\
             [nodes.beta]\ndata-dir = \"beta\"\nshare = \"beta/logs\"\nheartbeat = \"127.0.0.1:{h2}\"\nlmtp = \"127.0.0.1:{l2}\"\n\n\
             [dumpster]\nsmtp = \"{smtp}\"\ndata-dir = \"relay\"\naccepted-domains = [\"example.com\"]\n",
            w = dir.join("witness").display(),
            h1 = free_udp_port()?,
            h2 = free_udp_port()?,
            l1 = free_tcp_port()?,
            l2 = free_tcp_port()?,
        ),
    )?;
    let mut d = Demo {
        p: Procs::new(dir.clone(), config)?,
        smtp,
    };
    d.keep = keep;
    let t0 = Instant::now();
    println!("logship demo in {} (config: logship.toml)", dir.display());

    say("alpha: a new database, and its cluster daemon");
    d.run(&["init", "--node", "alpha"])?;
    d.start("alpha", &["node", "--node", "alpha"])?;
    d.wait("alpha to become active", 30, || {
        d.status("alpha")["role"] == "active"
    })?;
    say("beta: its daemon, and an online seed from alpha");
    d.start("beta", &["node", "--node", "beta"])?;
    d.run(&["seed", "--node", "beta"])?;
    d.wait("beta Healthy", 60, || {
        let s = d.status("beta");
        s["summary_copy_status"] == "Healthy" && s["peer"]["role"] == "active"
    })?;
    say("the relay, and mail through it");
    d.start("relay", &["dumpster"])?;
    d.wait("the relay to listen", 30, || {
        std::net::TcpStream::connect(&d.smtp).is_ok()
    })?;
    let half = messages / 2;
    let mut accepted: BTreeSet<String> = d.send(0..half)?.into_iter().collect();
    d.wait("the first messages stored on alpha", 30, || {
        d.stored("alpha").len() >= accepted.len()
    })?;
    println!(
        "{} messages accepted by the relay and stored on alpha",
        accepted.len()
    );
    d.show_status()?;

    say("SIGKILL of the active node (alpha)");
    let more = d.send(half..half + 20)?;
    accepted.extend(more);
    d.kill("alpha")?;
    let killed = Instant::now();
    // What alpha had committed when it died: every acknowledged
    // transaction is at or below it.
    let alpha_lsn = last_committed(&dir.join("alpha"))?;
    d.wait("beta to take over", 60, || {
        d.status("beta")["role"] == "active"
    })?;
    let rto = killed.elapsed();
    // Where beta's epoch began: what it held of alpha's log.
    let start = witness::Witness::new(shipper::share::Share::Dir(dir.join("witness")))
        .latest()?
        .map(|r| r.start_lsn.0)
        .unwrap_or(0);
    let rpo = alpha_lsn.saturating_sub(start);
    let beta = d.status("beta");
    println!(
        "beta is active in epoch {} after {} ms",
        beta["epoch"],
        rto.as_millis()
    );
    println!(
        "mount dial: {}",
        beta["dial"]["text"].as_str().unwrap_or("-")
    );
    accepted.extend(d.send(half + 20..messages)?);

    say("alpha comes back: it rewinds anything beta does not hold, then follows beta");
    d.start("alpha", &["node", "--node", "alpha"])?;
    d.wait("alpha Healthy as passive", 60, || {
        let s = d.status("alpha");
        s["role"] == "passive" && s["summary_copy_status"] == "Healthy"
    })?;
    if let Some(b) = d.status("alpha")["blocked"].as_str() {
        println!("alpha: {b}");
    }
    d.wait("every accepted message stored on beta", 60, || {
        let s: BTreeSet<String> = d.stored("beta").into_iter().collect();
        accepted.is_subset(&s)
    })?;
    let relay: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("relay/relay.json")).unwrap_or_default())
            .unwrap_or_default();
    println!("relay's last redelivery: {}", relay["last_redelivery"]);
    d.show_status()?;

    say("planned move back to alpha");
    d.wait("beta to know alpha is Healthy", 30, || {
        let p = &d.status("beta")["peer"];
        p["role"] == "passive" && p["copy"] == "Healthy"
    })?;
    let (out, move_ms) = d.move_cluster("alpha", "demo: back home")?;
    print!("{out}");
    d.wait("beta Healthy again", 60, || {
        let s = d.status("beta");
        s["role"] == "passive" && s["summary_copy_status"] == "Healthy"
    })?;
    d.wait("beta to catch up", 30, || {
        d.stored("beta").len() == d.stored("alpha").len()
    })?;

    let stored = d.stored("alpha");
    let distinct: BTreeSet<String> = stored.iter().cloned().collect();
    let once = stored.len() == distinct.len() && accepted.is_subset(&distinct);
    let (va, vb) = (d.verify("alpha"), d.verify("beta"));
    let rto_ok = rto < Duration::from_secs(10);
    println!("\n== summary ({:.1} s)", t0.elapsed().as_secs_f64());
    println!("{:<34} {}", "messages sent (accepted)", accepted.len());
    println!(
        "{:<34} {} {}",
        "stored exactly once on the active",
        distinct.len(),
        if once { "ok" } else { "FAILED" }
    );
    println!("{:<34} {} ms", "failover (RTO)", rto.as_millis());
    println!(
        "{:<34} {rpo} transaction(s) {}",
        "lost at failover (RPO)",
        if rpo == 0 { "ok" } else { "FAILED" }
    );
    println!("{:<34} {move_ms} ms", "planned move");
    println!(
        "{:<34} alpha {}, beta {}",
        "verify-copy",
        if va { "equal" } else { "DIFFERENT" },
        if vb { "equal" } else { "DIFFERENT" }
    );
    let ok = once && va && vb && rto_ok && rpo == 0 && move_ms > 0;
    if keep {
        println!(
            "\nThe cluster keeps running (--keep). Try, in {}:\n  export LOGSHIP_CONFIG={}\n  logship status\n  logship events --node alpha\n  logship sql --node alpha --read \"SELECT recipient, message_id FROM messages LIMIT 5\"\n  logship move-cluster --to beta --comment test\n  curl smtp://{} --mail-from a@example.org --mail-rcpt b@example.com -T some.eml\nStop it with: pkill -f 'logship.*{}'",
            dir.display(),
            d.config.display(),
            d.smtp,
            dir.display()
        );
    }
    if ok {
        println!("\nall promises kept");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("\nA PROMISE FAILED: logs are in {}", dir.display());
        d.keep = true;
        Ok(ExitCode::from(1))
    }
}
