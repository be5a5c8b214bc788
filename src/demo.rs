//! `logship demo`: the whole system on one machine, on local directories
//! and loopback ports: two nodes, a witness directory and the relay. It
//! seeds the passive, sends mail through the relay, kills the active and
//! shows the failover (time, mount dial, redelivery), brings the old node
//! back (rewind, then Healthy), moves the active role back, and ends with a
//! summary. It exits non-zero if a promise failed.
//!
//! `--copies 3` (to 5) runs that many nodes with a private etcd instead of
//! the witness: the copies are seeded from the active, the active is
//! killed, the best copy takes over and the others follow it, the old
//! active comes back as a copy, and every copy verifies equal.

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
    /// The private etcd of `--copies`.
    etcd: Option<harness::etcd::Etcd>,
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
            // Stopped before its directory, inside the demo's, goes.
            drop(self.etcd.take());
            let _ = std::fs::remove_dir_all(&self.p.dir);
        } else if let Some(e) = &mut self.etcd {
            e.keep();
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
        etcd: None,
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
            "\nThe cluster keeps running (--keep). Try, in {}:\n  export LOGSHIP_CONFIG={}\n  logship status\n  logship events --node alpha\n  logship sql --node alpha --read \"SELECT recipient, message_id FROM messages LIMIT 5\"\n  logship mail search --node beta --limit 5 demo message\n  logship move-cluster --to beta --comment test\n  curl smtp://{} --mail-from a@example.org --mail-rcpt b@example.com -T some.eml\nStop it with: pkill -f 'logship.*{}'",
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

/// The nodes of `demo --copies`, most preferred first.
const COPY_NAMES: [&str; 5] = ["alpha", "beta", "gamma", "delta", "epsilon"];

/// `logship demo --copies n`: n nodes, etcd arbitrating.
pub fn run_copies(dir: Option<&Path>, keep: bool, messages: usize, n: usize) -> Result<ExitCode> {
    let etcd_program = harness::etcd::program_path();
    if !etcd_program.is_file() {
        anyhow::bail!(
            "demo --copies {n} runs a private etcd, and there is no {}: on Debian or Ubuntu, `apt-get install etcd-server` (or set LOGSHIP_ETCD to the etcd program; the plain `logship demo` needs none)",
            etcd_program.display()
        );
    }
    let dir = match dir {
        Some(d) => d.to_path_buf(),
        None => std::env::temp_dir().join(format!("logship-demo-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let etcd = harness::etcd::Etcd::in_dir(&dir.join("etcd"), keep)
        .context("start the demo's private etcd")?;
    let names = &COPY_NAMES[..n];
    let smtp = format!("127.0.0.1:{}", free_tcp_port()?);
    crate::procs::write_cluster_key(&dir.join("cluster.key"))?;
    let mut text = format!(
        "[cluster]\nname = \"demo\"\narbiter = \"{}\"\nmount-dial = \"good-availability\"\nseal-after = \"1s\"\nkey-file = \"cluster.key\"\n\n",
        etcd.url("demo")
    );
    for (i, name) in names.iter().enumerate() {
        text.push_str(&format!(
            "[nodes.{name}]\ndata-dir = \"{name}\"\nshare = \"{name}/logs\"\nlmtp = \"127.0.0.1:{}\"\nactivation-preference = {}\n\n",
            free_tcp_port()?,
            i + 1
        ));
    }
    text.push_str(&format!(
        "[dumpster]\nsmtp = \"{smtp}\"\ndata-dir = \"relay\"\naccepted-domains = [\"example.com\"]\n"
    ));
    let config = dir.join("logship.toml");
    std::fs::write(&config, text)?;
    let endpoints = etcd.endpoints().join(",");
    let mut d = Demo {
        p: Procs::new(dir.clone(), config)?,
        smtp,
        etcd: Some(etcd),
    };
    d.keep = keep;
    let t0 = Instant::now();
    println!(
        "logship demo with {n} copies in {} (config: logship.toml; etcd at {})",
        dir.display(),
        endpoints
    );

    say("alpha: a new database, and its cluster daemon");
    d.run(&["init", "--node", "alpha"])?;
    d.start("alpha", &["node", "--node", "alpha"])?;
    d.wait("alpha to become active", 30, || {
        d.status("alpha")["role"] == "active"
    })?;
    for name in &names[1..] {
        say(&format!(
            "{name}: its daemon, and an online seed from alpha"
        ));
        d.start(name, &["node", "--node", name])?;
        d.run(&["seed", "--node", name, "--from", "alpha"])?;
    }
    for name in &names[1..] {
        d.wait(&format!("{name} Healthy"), 60, || {
            let s = d.status(name);
            s["summary_copy_status"] == "Healthy" && s["active_node"] == "alpha"
        })?;
    }
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

    say("SIGKILL of the active node (alpha): the best copy takes over");
    accepted.extend(d.send(half..half + 20)?);
    d.kill("alpha")?;
    let killed = Instant::now();
    let active = |d: &Demo| {
        names[1..]
            .iter()
            .find(|m| d.status(m)["role"] == "active")
            .map(|m| m.to_string())
    };
    d.wait("another node to take over", 60, || active(&d).is_some())?;
    let rto = killed.elapsed();
    let new = active(&d).context("no active node")?;
    let st = d.status(&new);
    println!(
        "{new} is active in epoch {} after {} ms (the copies rank by position, then activation-preference)",
        st["epoch"],
        rto.as_millis()
    );
    println!("mount dial: {}", st["dial"]["text"].as_str().unwrap_or("-"));
    for m in names[1..].iter().filter(|m| **m != new) {
        d.wait(&format!("{m} to follow {new}"), 30, || {
            d.status(m)["active_node"] == new.as_str()
        })?;
        println!("{m} follows {new}");
    }
    accepted.extend(d.send(half + 20..messages)?);

    say(&format!(
        "alpha comes back: it rewinds anything {new} does not hold, then follows it"
    ));
    d.start("alpha", &["node", "--node", "alpha"])?;
    d.wait("alpha Healthy as passive", 60, || {
        let s = d.status("alpha");
        s["role"] == "passive" && s["summary_copy_status"] == "Healthy"
    })?;
    d.wait(
        &format!("every accepted message stored on {new}"),
        60,
        || {
            let s: BTreeSet<String> = d.stored(&new).into_iter().collect();
            accepted.is_subset(&s)
        },
    )?;
    d.run(&["seal", "--node", &new])?;
    for m in names.iter().filter(|m| **m != new) {
        d.wait(&format!("{m} to catch up"), 60, || {
            d.stored(m).len() == d.stored(&new).len()
        })?;
    }
    d.show_status()?;

    let stored = d.stored(&new);
    let distinct: BTreeSet<String> = stored.iter().cloned().collect();
    let once = stored.len() == distinct.len() && accepted.is_subset(&distinct);
    let verified: Vec<(&str, bool)> = names.iter().map(|m| (*m, d.verify(m))).collect();
    let rto_ok = rto < Duration::from_secs(10);
    println!("\n== summary ({:.1} s)", t0.elapsed().as_secs_f64());
    println!("{:<34} {}", "messages sent (accepted)", accepted.len());
    println!(
        "{:<34} {} {}",
        "stored exactly once on the active",
        distinct.len(),
        if once { "ok" } else { "FAILED" }
    );
    println!(
        "{:<34} {} ms ({new} took over)",
        "failover (RTO)",
        rto.as_millis()
    );
    println!(
        "{:<34} {}",
        "verify-copy",
        verified
            .iter()
            .map(|(m, ok)| format!("{m} {}", if *ok { "equal" } else { "DIFFERENT" }))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let ok = once && rto_ok && verified.iter().all(|(_, ok)| *ok);
    if keep {
        println!(
            "\nThe cluster and its etcd keep running (--keep). Try, in {}:\n  export LOGSHIP_CONFIG={}\n  logship status\n  logship events --node {new}\nStop it with: pkill -f 'logship.*{}'; pkill -f 'etcd --name'",
            dir.display(),
            d.config.display(),
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
