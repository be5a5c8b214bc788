//! A node's share as the config describes it (a directory or `smb://`,
//! with the cluster's SMB options), and which node a passive copies from.

use anyhow::{Context, Result, bail};
use logship::config::{Config, Node};
use shipper::share::Share;

/// The node a passive copies from: `--from`, or the only other node.
pub fn source_node<'a>(
    cfg: &'a Config,
    me: &str,
    from: Option<&str>,
) -> Result<(String, &'a Node)> {
    if let Some(f) = from {
        return Ok((f.to_string(), cfg.node(f)?));
    }
    let others: Vec<&String> = cfg.nodes.keys().filter(|n| n.as_str() != me).collect();
    match others.as_slice() {
        [one] => Ok(((*one).clone(), cfg.node(one)?)),
        [] => bail!("node {me} is the only node in the config: there is nothing to copy from"),
        _ => bail!("more than one other node in the config; say which to copy from with --from"),
    }
}

pub fn share_of(name: &str, node: &Node, cfg: &Config) -> Result<Share> {
    let spec = node.share.as_deref().with_context(|| {
        format!("node {name} has no `share` in the config: where do its peers read its segments?")
    })?;
    let opts = shipper::share::SmbOptions {
        password_file: cfg.cluster.password_file.clone(),
        file_only: false,
        encrypt: match node.encrypt {
            logship::config::EncryptSetting::Required => shipper::share::Encrypt::Required,
            logship::config::EncryptSetting::Preferred => shipper::share::Encrypt::Preferred,
            logship::config::EncryptSetting::Off => shipper::share::Encrypt::Off,
        },
        timeout: Some(cfg.cluster.smb_timeout),
    };
    Share::open(spec, &opts).with_context(|| format!("the share of node {name}"))
}
