//! The cluster configuration file: one TOML file, identical on every node,
//! that describes the cluster, its nodes and the dumpster relay. Unknown keys
//! are errors (a typo must not silently fall back to a default). Every key
//! and its default is documented in the README.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, bail};
use serde::Deserialize;

/// Default for `cluster.seal-after`.
pub const DEFAULT_SEAL_AFTER: Duration = Duration::from_secs(10);
/// Default for `cluster.heartbeat-interval`.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);
/// Default for `cluster.dead-after`.
pub const DEFAULT_DEAD_AFTER: Duration = Duration::from_secs(2);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// A hash of the file's text: the nodes exchange it in heartbeats and
    /// refuse a peer whose configuration differs.
    #[serde(skip)]
    pub source_hash: String,
    pub cluster: Cluster,
    #[serde(default)]
    pub nodes: BTreeMap<String, Node>,
    pub dumpster: Option<Dumpster>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Cluster {
    /// The cluster's name (required).
    pub name: String,
    /// The witness directory: a path or an smb:// URL.
    pub witness: Option<String>,
    /// lossless | good-availability (default) | best-availability.
    #[serde(default)]
    pub mount_dial: MountDial,
    /// Heartbeat interval between the nodes (default 500ms).
    #[serde(default = "default_heartbeat", with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// A peer silent this long is dead (default 2s).
    #[serde(default = "default_dead_after", with = "humantime_serde")]
    pub dead_after: Duration,
    /// Seal a segment this long after its first unsealed record (default 10s).
    #[serde(default = "default_seal_after", with = "humantime_serde")]
    pub seal_after: Duration,
    /// Keep sealed segments at least this long on the active, even once
    /// every copy has replayed them (default 0s: truncate at once).
    #[serde(default, with = "humantime_serde")]
    pub retention: Duration,
    /// A file holding the SMB password, readable by its owner only
    /// (`LOGSHIP_SMB_PASSWORD` wins). Never put a password in a URL.
    pub password_file: Option<PathBuf>,
    /// A file holding the cluster key (owner-only, its first line, at least
    /// 16 bytes), the same on both nodes: heartbeats are authenticated with
    /// it. Without it they are not, and the node says so when it starts.
    pub key_file: Option<PathBuf>,
    /// SQL over HTTP: the users and their permissions, in rqlite's users
    /// file format (owner-only, as the password file). Without it, the API
    /// takes requests from anyone who can reach it.
    pub http_users: Option<PathBuf>,
    /// SQL over HTTP over TLS: the CA certificates (PEM) a passive trusts
    /// when it forwards to an active that serves TLS. Default: the node's
    /// own `http-cert` (one certificate shared by the nodes).
    pub http_ca: Option<PathBuf>,
    /// SQL over HTTP: the longest a request's statements may run (default
    /// 30s); past it they are interrupted and the request answers why.
    #[serde(default = "default_http_timeout", with = "humantime_serde")]
    pub http_timeout: Duration,
    /// Per-call timeout for SMB shares (default 5s).
    #[serde(default = "default_smb_timeout", with = "humantime_serde")]
    pub smb_timeout: Duration,
    /// When a transaction is acknowledged: `local` (default), once its
    /// record is durable on the active; `remote`, once the passive also
    /// reports it durable (block mode), as PostgreSQL's
    /// `synchronous_commit = remote_write`.
    #[serde(default)]
    pub commit: CommitMode,
    /// With `commit = "remote"`: how long the active waits for the passive
    /// before it goes on alone, recorded on the witness (default 5s).
    #[serde(default = "default_sync_timeout", with = "humantime_serde")]
    pub sync_timeout: Duration,
    /// The arbiter past two nodes: `etcd://HOST:PORT[,HOST:PORT...]/PREFIX`.
    /// Without it, two nodes and the file-share witness (the default).
    pub arbiter: Option<String>,
    /// `off` (default) or `preferred`: move the role back to the most
    /// preferred node once it is a Healthy copy again (etcd clusters).
    #[serde(default)]
    pub failback: Failback,
    /// When failback may happen, local time: `HH:MM-HH:MM` (default: any time).
    pub failback_window: Option<String>,
    /// How long the preferred node must have been Healthy first (default 5m).
    #[serde(default = "default_failback_after", with = "humantime_serde")]
    pub failback_after: Duration,
}

/// `[cluster] failback`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Failback {
    #[default]
    Off,
    Preferred,
}

fn default_http_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_failback_after() -> Duration {
    Duration::from_secs(300)
}

/// The most nodes a cluster may have (a DAG's limit).
pub const MAX_NODES: usize = 16;

/// When a transaction is acknowledged.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum CommitMode {
    #[default]
    Local,
    Remote,
}

fn default_sync_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_smb_timeout() -> Duration {
    Duration::from_secs(5)
}

pub use witness::MountDial;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Node {
    /// The node's data directory: `store.db`, `logs/`.
    pub data_dir: PathBuf,
    /// Where peers read this node's sealed segments: a path or an smb:// URL.
    pub share: Option<String>,
    /// Heartbeat address (host:port).
    pub heartbeat: Option<String>,
    /// LMTP address (host:port).
    pub lmtp: Option<String>,
    /// Admin (status, /metrics) address (host:port).
    pub admin: Option<String>,
    /// SQL over HTTP in rqlite's dialect (host:port); off when unset.
    pub http: Option<String>,
    /// TLS for `http`: the certificate chain (PEM). With `http-key`.
    pub http_cert: Option<PathBuf>,
    /// TLS for `http`: the private key (PEM), owner-only or refused.
    pub http_key: Option<PathBuf>,
    /// Block mode: the TCP address (host:port) on which this node, while
    /// active, streams its open segment to its copies as each record
    /// becomes durable. Default: the heartbeat address, over TCP; `"off"`
    /// turns block mode off (copies then get sealed segments only).
    pub block: Option<String>,
    /// SMB encryption for this node's share: required | preferred (default) | off.
    #[serde(default)]
    pub encrypt: EncryptSetting,
    /// A lagged copy (Exchange's ReplayLagTime): segments are copied and
    /// inspected at once but replayed only this long after they were
    /// sealed (default 0s). A lagged copy is never activated automatically.
    #[serde(default, with = "humantime_serde")]
    pub replay_lag: Duration,
    /// Which copy takes the role when copies are equally current: 1 is the
    /// most preferred (unset: after every node that sets it).
    pub activation_preference: Option<u32>,
}

impl Node {
    /// The block-mode address, if block mode is on for this node.
    pub fn block_addr(&self) -> Option<&str> {
        match self.block.as_deref() {
            Some("off") => None,
            Some(a) => Some(a),
            None => self.heartbeat.as_deref(),
        }
    }

    /// Whether this node's share is encrypted (an SMB share with encryption
    /// not turned off): its block-mode stream must then be too.
    pub fn share_encrypted(&self) -> bool {
        self.share
            .as_deref()
            .is_some_and(|s| s.starts_with("smb://"))
            && self.encrypt != EncryptSetting::Off
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum EncryptSetting {
    Required,
    #[default]
    Preferred,
    Off,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Dumpster {
    pub smtp: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub admin: Option<String>,
    #[serde(default)]
    pub accepted_domains: Vec<String>,
    pub max_age: Option<String>,
    pub max_size: Option<String>,
}

fn default_heartbeat() -> Duration {
    DEFAULT_HEARTBEAT_INTERVAL
}
fn default_dead_after() -> Duration {
    DEFAULT_DEAD_AFTER
}
fn default_seal_after() -> Duration {
    DEFAULT_SEAL_AFTER
}

impl Config {
    /// Reads and checks the file. Relative paths in it are relative to the
    /// file's own directory, not to the working directory.
    pub fn load(path: &Path) -> Result<Config> {
        use crate::exit::{Class, error};
        let text = std::fs::read_to_string(path).map_err(|e| {
            error(
                Class::Config,
                format!("read config file {}: {e}", path.display()),
            )
        })?;
        let mut config = Self::parse(&text).map_err(|e| {
            error(
                Class::Config,
                format!("config file {}: {e:#}", path.display()),
            )
        })?;
        config.source_hash = format!("{:016x}", xxhash_rust::xxh3::xxh3_64(text.as_bytes()));
        // Absolute first: a config named by a relative path would otherwise
        // give relative paths, read against whatever directory a daemon
        // later runs in.
        let path = std::path::absolute(path).map_err(|e| {
            error(
                Class::Config,
                format!("config file {}: {e}", path.display()),
            )
        })?;
        let base = path.parent().unwrap_or(Path::new("/"));
        // A share or witness given as a relative path is a directory
        // relative to the file too (an smb:// URL is left alone).
        let resolve = |spec: &mut String| {
            if !spec.starts_with("smb://") && Path::new(spec.as_str()).is_relative() {
                *spec = base.join(spec.as_str()).display().to_string();
            }
        };
        for node in config.nodes.values_mut() {
            if node.data_dir.is_relative() {
                node.data_dir = base.join(&node.data_dir);
            }
            if let Some(s) = node.share.as_mut() {
                resolve(s);
            }
            for f in [node.http_cert.as_mut(), node.http_key.as_mut()]
                .into_iter()
                .flatten()
            {
                if f.is_relative() {
                    *f = base.join(&*f);
                }
            }
        }
        if let Some(w) = config.cluster.witness.as_mut() {
            resolve(w);
        }
        for f in [
            config.cluster.password_file.as_mut(),
            config.cluster.key_file.as_mut(),
            config.cluster.http_users.as_mut(),
            config.cluster.http_ca.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            if f.is_relative() {
                *f = base.join(&*f);
            }
        }
        if let Some(d) = config.dumpster.as_mut()
            && let Some(dir) = d.data_dir.as_mut()
            && dir.is_relative()
        {
            *dir = base.join(&*dir);
        }
        Ok(config)
    }

    pub fn parse(text: &str) -> Result<Config> {
        let config: Config = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        if config.nodes.is_empty() {
            bail!("no [nodes.NAME] section: a cluster needs at least one node");
        }
        if config.cluster.dead_after <= config.cluster.heartbeat_interval {
            bail!(
                "cluster.dead-after ({}) must be longer than cluster.heartbeat-interval ({})",
                humantime::format_duration(config.cluster.dead_after),
                humantime::format_duration(config.cluster.heartbeat_interval)
            );
        }
        if config.nodes.len() > MAX_NODES {
            bail!(
                "{} [nodes.NAME] sections: a cluster has at most {MAX_NODES} nodes",
                config.nodes.len()
            );
        }
        if let Some(a) = &config.cluster.arbiter {
            witness::etcd::ArbiterUrl::parse(a)
                .map_err(|e| anyhow::anyhow!("cluster.arbiter: {e}"))?;
        } else if config.nodes.len() > 2 {
            bail!(
                "{} nodes need an arbiter that is a consensus service: set [cluster] arbiter = \"etcd://HOST:PORT[,HOST:PORT...]/PREFIX\" (the file-share witness serves two nodes)",
                config.nodes.len()
            );
        }
        if let Some(w) = &config.cluster.failback_window {
            witness::failback::Window::parse(w)
                .map_err(|e| anyhow::anyhow!("cluster.failback-window: {e}"))?;
        }
        if config.cluster.failback == Failback::Preferred {
            if config.cluster.arbiter.is_none() {
                bail!(
                    "cluster.failback = \"preferred\" needs an etcd arbiter in this build (set [cluster] arbiter)"
                );
            }
            if config
                .nodes
                .values()
                .all(|n| n.activation_preference.is_none())
            {
                bail!(
                    "cluster.failback = \"preferred\" needs a preferred node: set [nodes.X] activation-preference = 1 on it"
                );
            }
        }
        for (name, node) in &config.nodes {
            if node.activation_preference == Some(0) {
                bail!("nodes.{name}.activation-preference is 0: 1 is the most preferred");
            }
            if node.http_cert.is_some() != node.http_key.is_some() {
                bail!(
                    "nodes.{name}: TLS for SQL over HTTP needs both http-cert and http-key (one is set)"
                );
            }
            if node.http_cert.is_some() && node.http.is_none() {
                bail!("nodes.{name}: http-cert is set but http (the API's address) is not");
            }
        }
        let with_api = config.nodes.values().filter(|n| n.http.is_some());
        let tls = with_api.clone().filter(|n| n.http_cert.is_some()).count();
        if tls > 0 && tls != with_api.count() {
            bail!(
                "SQL over HTTP: some nodes have http-cert and some do not; a passive forwards to the active, so give every node with http a certificate (or none)"
            );
        }
        Ok(config)
    }

    /// The node called `name`, or an error that lists the nodes there are.
    pub fn node(&self, name: &str) -> Result<&Node> {
        self.nodes.get(name).ok_or_else(|| {
            crate::exit::error(
                crate::exit::Class::Config,
                format!(
                    "node {name:?} is not in the config (its nodes: {})",
                    self.nodes.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            )
        })
    }
}

/// The config file path: `--config`, else `LOGSHIP_CONFIG` (clap reads
/// both), else `/etc/logship/logship.toml`.
pub fn default_path() -> PathBuf {
    PathBuf::from("/etc/logship/logship.toml")
}

/// This machine's host name, the default node name.
pub fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
[cluster]
name = "mail"
witness = "/srv/witness/mail"
mount-dial = "good-availability"
heartbeat-interval = "500ms"
dead-after = "2s"
seal-after = "10s"

[nodes.alpha]
data-dir = "/var/lib/logship/alpha"
share = "/srv/alpha-logs"
heartbeat = "127.0.0.1:7101"
lmtp = "127.0.0.1:2401"
admin = "127.0.0.1:7201"

[nodes.beta]
data-dir = "/var/lib/logship/beta"

[dumpster]
smtp = "127.0.0.1:2525"
data-dir = "/var/lib/logship/dumpster"
admin = "127.0.0.1:7203"
accepted-domains = ["example.com"]
max-age = "7d"
max-size = "18MB"
"#;

    #[test]
    fn parses_the_documented_example() {
        let c = Config::parse(EXAMPLE).unwrap();
        assert_eq!(c.cluster.name, "mail");
        assert_eq!(c.cluster.seal_after, Duration::from_secs(10));
        assert_eq!(c.cluster.mount_dial, MountDial::GoodAvailability);
        assert_eq!(
            c.node("alpha").unwrap().data_dir,
            PathBuf::from("/var/lib/logship/alpha")
        );
    }

    #[test]
    fn unknown_keys_are_errors_that_name_the_key() {
        let text = EXAMPLE.replace("seal-after = \"10s\"", "seal-aftr = \"10s\"");
        let err = format!("{:#}", Config::parse(&text).unwrap_err());
        assert!(err.contains("seal-aftr"), "{err}");
    }

    #[test]
    fn unknown_node_lists_the_known_ones() {
        let c = Config::parse(EXAMPLE).unwrap();
        let err = format!("{:#}", c.node("gamma").unwrap_err());
        assert!(
            err.contains("gamma") && err.contains("alpha, beta"),
            "{err}"
        );
    }

    #[test]
    fn defaults_apply() {
        let c = Config::parse("[cluster]\nname = \"x\"\n[nodes.a]\ndata-dir = \"/d\"\n").unwrap();
        assert_eq!(c.cluster.seal_after, DEFAULT_SEAL_AFTER);
        assert_eq!(c.cluster.dead_after, DEFAULT_DEAD_AFTER);
    }

    /// Every path a loaded config holds is absolute, whatever way the file
    /// itself was named: a daemon never reads a path against its working
    /// directory.
    #[test]
    fn a_config_named_by_a_relative_path_gives_absolute_paths() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("logship.toml");
        std::fs::write(
            &file,
            r#"
[cluster]
name = "mail"
witness = "witness"
key-file = "cluster.key"
password-file = "smb.pass"
[nodes.alpha]
data-dir = "alpha"
share = "alpha-share"
heartbeat = "127.0.0.1:7001"
[nodes.beta]
data-dir = "beta"
share = "smb://u@127.0.0.1/beta"
heartbeat = "127.0.0.1:7002"
[dumpster]
smtp = "127.0.0.1:2525"
data-dir = "relay"
accepted-domains = ["example.com"]
"#,
        )
        .unwrap();
        // The same file, named relative to the working directory.
        let cwd = std::env::current_dir().unwrap();
        let up = "../".repeat(cwd.components().count() - 1);
        let relative = PathBuf::from(up).join(file.strip_prefix("/").unwrap());
        assert!(relative.is_relative());
        let c = Config::load(&relative).unwrap();
        let mut paths: Vec<PathBuf> = vec![
            c.cluster.key_file.clone().unwrap(),
            c.cluster.password_file.clone().unwrap(),
            PathBuf::from(c.cluster.witness.clone().unwrap()),
            c.dumpster.as_ref().unwrap().data_dir.clone().unwrap(),
        ];
        for n in c.nodes.values() {
            paths.push(n.data_dir.clone());
        }
        paths.push(PathBuf::from(c.nodes["alpha"].share.clone().unwrap()));
        for p in &paths {
            assert!(p.is_absolute(), "{} is relative", p.display());
        }
        assert_eq!(
            c.nodes["beta"].share.as_deref(),
            Some("smb://u@127.0.0.1/beta")
        );
    }

    /// Past two nodes the cluster needs etcd; at most sixteen; a bad arbiter
    /// URL or preference is refused by name.
    #[test]
    fn more_than_two_nodes_need_an_etcd_arbiter_and_sixteen_is_the_most() {
        let nodes = |n: usize| {
            (0..n)
                .map(|i| format!("[nodes.n{i}]\ndata-dir = \"/d/{i}\"\n"))
                .collect::<String>()
        };
        let with =
            |arbiter: &str, n: usize| format!("[cluster]\nname = \"c\"\n{arbiter}\n{}", nodes(n));
        assert!(Config::parse(&with("", 2)).is_ok());
        let e = Config::parse(&with("", 3)).unwrap_err().to_string();
        assert!(
            e.contains("3 nodes need an arbiter") && e.contains("etcd://"),
            "{e}"
        );
        let c = Config::parse(&with("arbiter = \"etcd://127.0.0.1:2379/mail\"", 3)).unwrap();
        assert_eq!(
            c.cluster.arbiter.as_deref(),
            Some("etcd://127.0.0.1:2379/mail")
        );
        assert!(Config::parse(&with("arbiter = \"etcd://127.0.0.1:2379/m\"", 16)).is_ok());
        let e = Config::parse(&with("arbiter = \"etcd://127.0.0.1:2379/m\"", 17))
            .unwrap_err()
            .to_string();
        assert!(e.contains("at most 16"), "{e}");
        let e = Config::parse(&with("arbiter = \"http://x:1/m\"", 3))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cluster.arbiter") && e.contains("not an etcd"),
            "{e}"
        );
        let pref =
            "[cluster]\nname = \"c\"\n[nodes.a]\ndata-dir = \"/a\"\nactivation-preference = 0\n";
        let e = Config::parse(pref).unwrap_err().to_string();
        assert!(e.contains("nodes.a.activation-preference"), "{e}");
        let pref = pref.replace("= 0", "= 2");
        assert_eq!(
            Config::parse(&pref).unwrap().nodes["a"].activation_preference,
            Some(2)
        );
    }
}
