//! `logship dumpster`: the relay daemon (the `dumpster` crate does the
//! work; this reads the config and checks it), and `logship dumpster
//! redeliver --since`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use dumpster::relay::{self, RelayConfig};
use logship::config::Config;

use crate::daemon::{SHUTDOWN, install_shutdown_handler};

/// Parses a size: a number with an optional B, KB, MB or GB suffix
/// (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n
        .parse()
        .with_context(|| format!("size {s:?}: no number"))?;
    let mul = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "KB" | "K" | "KIB" => 1 << 10,
        "MB" | "M" | "MIB" => 1 << 20,
        "GB" | "G" | "GIB" => 1 << 30,
        u => bail!("size {s:?}: unknown unit {u:?} (B, KB, MB, GB)"),
    };
    n.checked_mul(mul)
        .with_context(|| format!("size {s:?} is too large"))
}

pub fn relay_config(cfg: &Config) -> Result<RelayConfig> {
    let d = cfg
        .dumpster
        .as_ref()
        .context("the config has no [dumpster] section")?;
    if d.accepted_domains.is_empty() {
        bail!(
            "dumpster.accepted-domains is empty: the relay accepts mail only for listed domains (it is never an open relay)"
        );
    }
    let data_dir = d
        .data_dir
        .clone()
        .context("dumpster.data-dir is not set: where does the relay keep its queue?")?;
    let smtp = d.smtp.as_deref().unwrap_or("127.0.0.1:2525");
    let smtp = std::net::ToSocketAddrs::to_socket_addrs(smtp)
        .with_context(|| format!("dumpster.smtp {smtp:?}"))?
        .next()
        .with_context(|| format!("dumpster.smtp {smtp:?} resolves to nothing"))?;
    let nodes: Vec<(String, String)> = cfg
        .nodes
        .iter()
        .filter_map(|(n, node)| node.lmtp.clone().map(|a| (n.clone(), a)))
        .collect();
    if nodes.is_empty() {
        bail!("no node has an `lmtp` address: the relay has nowhere to deliver");
    }
    let max_age = match &d.max_age {
        Some(a) => {
            humantime::parse_duration(a).with_context(|| format!("dumpster.max-age {a:?}"))?
        }
        None => relay::DEFAULT_MAX_AGE,
    };
    let max_size = match &d.max_size {
        Some(s) => parse_size(s).context("dumpster.max-size")?,
        None => relay::DEFAULT_MAX_SIZE,
    };
    Ok(RelayConfig {
        smtp,
        data_dir,
        accepted_domains: d.accepted_domains.clone(),
        nodes,
        max_age,
        max_size,
        limits: Default::default(),
        lmtp_secret: match &cfg.cluster.key_file {
            Some(f) => Some(dumpster::lmtp::LmtpSecret::from_cluster_key(
                &shipper::secret::cluster_key(f)?,
            )),
            None => {
                tracing::warn!(
                    "no [cluster] key-file: the relay cannot prove itself to the nodes, and a node with a key refuses its mail; the nodes' LMTP endpoints take mail from anyone"
                );
                None
            }
        },
        hostname: logship::config::host_name().unwrap_or_else(|| "logship-relay".into()),
    })
}

pub fn run(cfg: &Config) -> Result<ExitCode> {
    let rc = relay_config(cfg)?;
    std::fs::create_dir_all(&rc.data_dir)
        .with_context(|| format!("create {}", rc.data_dir.display()))?;
    logship::private::warn_if_open("the relay's data directory", &[rc.data_dir.as_path()]);
    let _lock =
        shipper::store::lock_file(&rc.data_dir.join("relay.lock"), &rc.data_dir).map_err(|e| {
            match e {
                shipper::Error::Locked { pid, .. } => {
                    anyhow::anyhow!(
                        "another relay (pid {pid}) runs on {}",
                        rc.data_dir.display()
                    )
                }
                e => e.into(),
            }
        })?;
    if let Some(addr) = cfg.dumpster.as_ref().and_then(|d| d.admin.clone()) {
        serve_admin(&addr, rc.data_dir.join(relay::STATUS_FILE))?;
    }
    install_shutdown_handler();
    fixed_mmap_threshold();
    relay::run(rc.clone(), &SHUTDOWN).with_context(|| format!("the relay on {}", rc.smtp))?;
    Ok(ExitCode::SUCCESS)
}

/// Message buffers (DATA, up to 25 MiB each, reserved from the SMTP
/// engine's budget) are allocated with mmap and given back to the system
/// when freed. glibc's default raises its mmap threshold to the size of the
/// last large block freed, after which such buffers come from the heap:
/// copied as they grow and kept after they are freed, so the relay's RSS
/// drifts above the bound the README states.
fn fixed_mmap_threshold() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator parameter; called before the
    // relay starts its threads.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// The relay's admin endpoint, from the status it writes twice a second.
fn serve_admin(addr: &str, status_file: std::path::PathBuf) -> Result<()> {
    let file = status_file.clone();
    let metrics = std::sync::Arc::new(move || {
        let st: relay::RelayStatus = shipper::state_file::read_file(&file, relay::MAX_STATUS_FILE)
            .ok()
            .flatten()
            .and_then(|b| relay::RelayStatus::parse(&b).ok())
            .unwrap_or_default();
        let last = st.last_redelivery.clone().unwrap_or_default();
        let num = |k: &str| last[k].as_f64().unwrap_or(0.0);
        let mut e = crate::metrics::Exposition::default();
        e.gauge(
            "logship_relay_queue_length",
            "Messages accepted and not yet delivered",
            "",
            st.queue_length as f64,
        );
        e.gauge(
            "logship_relay_parked",
            "Queued messages a node refused for good, kept and retried hourly",
            "",
            st.parked as f64,
        );
        e.gauge(
            "logship_dumpster_messages",
            "Delivered messages kept for redelivery",
            "",
            st.dumpster_messages as f64,
        );
        e.gauge(
            "logship_dumpster_bytes",
            "Bytes of the messages in the dumpster",
            "",
            st.dumpster_bytes as f64,
        );
        e.counter(
            "logship_relay_accepted_total",
            "Messages accepted since the relay started",
            "",
            st.accepted as f64,
        );
        e.gauge(
            "logship_last_redelivery_requeued",
            "Messages the last redelivery queued again",
            "",
            num("requeued"),
        );
        e.gauge(
            "logship_last_redelivery_stored",
            "Recipients the last redelivery newly stored",
            "",
            num("stored"),
        );
        e.gauge(
            "logship_last_redelivery_duplicates",
            "Recipients the last redelivery found already stored",
            "",
            num("duplicates"),
        );
        e.finish()
    });
    let status = std::sync::Arc::new(move || {
        (
            "application/json".to_string(),
            std::fs::read_to_string(&status_file).unwrap_or_else(|_| "{}".into()),
        )
    });
    crate::metrics::serve(addr, metrics, status)
}

pub fn redeliver(cfg: &Config, since: std::time::SystemTime) -> Result<ExitCode> {
    let rc = relay_config(cfg)?;
    let q = dumpster::queue::Queue::open(&rc.data_dir.join(relay::QUEUE_FILE))
        .with_context(|| format!("open the relay's queue in {}", rc.data_dir.display()))?;
    let since_us = since
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_micros() as u64;
    let r = q.redeliver_since(since_us, "requested by an operator", relay::now_us())?;
    println!(
        "queued {} message(s) delivered since {} for redelivery; the node drops duplicates",
        r.requeued,
        humantime::format_rfc3339_seconds(since)
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("18MB").unwrap(), 18 << 20);
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("2 GB").unwrap(), 2 << 30);
        assert!(parse_size("MB").is_err());
        assert!(parse_size("3 parsecs").is_err());
    }
}
