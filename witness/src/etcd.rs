//! The etcd arbiter's client: etcd's v3 API through its JSON gateway
//! (`POST /v3/kv/…`, `/v3/lease/…`), over plain HTTP to a private network,
//! so the build needs neither `protoc` nor a TLS stack.
//!
//! What the cluster needs of etcd, and nothing else: leases granted, kept
//! alive and revoked; keys put under a lease; a key created only if it
//! does not exist (a compare-and-swap transaction only one node can win,
//! the way epochs are claimed); keys read by prefix. Every key is under the
//! cluster's prefix from `[cluster] arbiter = "etcd://HOST:PORT[,…]/PREFIX"`.
//! A request goes to the member that answered last, and to the others in
//! turn when it does not answer; every reply is bounded before it is parsed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

/// The largest reply read from etcd.
const MAX_REPLY: u64 = 4 << 20;

/// Why the arbiter could not be reached or understood.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// `[cluster] arbiter` is not `etcd://HOST:PORT[,HOST:PORT…]/PREFIX`.
    #[error("arbiter {url:?}: {why} (expected etcd://HOST:PORT[,HOST:PORT...]/PREFIX)")]
    BadUrl { url: String, why: &'static str },
    /// No member answered.
    #[error("no etcd member answered ({endpoints}): {last}")]
    Unreachable { endpoints: String, last: String },
    /// A member answered with an HTTP error.
    #[error("etcd at {endpoint} answered {path} with HTTP {status}: {body}")]
    Status {
        endpoint: String,
        path: &'static str,
        status: u16,
        body: String,
    },
    /// A member answered something that is not the gateway's JSON.
    #[error("etcd at {endpoint} answered {path} with something not understood: {why}")]
    BadReply {
        endpoint: String,
        path: &'static str,
        why: String,
    },
}

pub type Result<T, E = EtcdError> = std::result::Result<T, E>;

/// `[cluster] arbiter`, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArbiterUrl {
    /// `HOST:PORT` of each member.
    pub endpoints: Vec<String>,
    /// Every key of the cluster is under `/<prefix>/`.
    pub prefix: String,
}

impl ArbiterUrl {
    pub fn parse(url: &str) -> Result<ArbiterUrl> {
        let bad = |why| EtcdError::BadUrl {
            url: url.to_string(),
            why,
        };
        let rest = url
            .strip_prefix("etcd://")
            .ok_or(bad("not an etcd:// URL"))?;
        let (hosts, prefix) = rest.split_once('/').ok_or(bad("no /PREFIX"))?;
        let prefix = prefix.trim_matches('/');
        if prefix.is_empty() {
            return Err(bad("an empty prefix"));
        }
        if prefix
            .bytes()
            .any(|b| !(b.is_ascii_alphanumeric() || b"-_./".contains(&b)))
        {
            return Err(bad("a prefix other than letters, digits and - _ . /"));
        }
        let endpoints: Vec<String> = hosts.split(',').map(str::to_string).collect();
        for e in &endpoints {
            let Some((host, port)) = e.rsplit_once(':') else {
                return Err(bad("a member without :PORT"));
            };
            if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
                return Err(bad("a member whose HOST:PORT is not valid"));
            }
        }
        Ok(ArbiterUrl {
            endpoints,
            prefix: prefix.to_string(),
        })
    }
}

/// A lease granted by etcd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseId(pub i64);

/// One key as a range read gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: Vec<u8>,
    /// The lease it is attached to, if any.
    pub lease: Option<LeaseId>,
}

/// A client of one etcd cluster, under one prefix.
#[derive(Debug)]
pub struct Etcd {
    url: ArbiterUrl,
    agent: ureq::Agent,
    /// The member that answered last.
    current: AtomicUsize,
}

impl Etcd {
    /// A client whose every request ends within `timeout` per member.
    pub fn new(url: ArbiterUrl, timeout: Duration) -> Etcd {
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build();
        Etcd {
            url,
            agent: ureq::Agent::new_with_config(config),
            current: AtomicUsize::new(0),
        }
    }

    /// `/<prefix>/<rel>`: where the cluster keeps `rel`.
    pub fn key(&self, rel: &str) -> String {
        format!("/{}/{rel}", self.url.prefix)
    }

    fn call(&self, path: &'static str, body: Value) -> Result<Value> {
        let n = self.url.endpoints.len();
        let start = self.current.load(Ordering::Relaxed);
        let body = body.to_string();
        let mut last = String::new();
        for i in 0..n {
            let at = (start + i) % n;
            let endpoint = &self.url.endpoints[at];
            let reply = self
                .agent
                .post(format!("http://{endpoint}{path}"))
                .header("Content-Type", "application/json")
                .send(&body);
            let mut reply = match reply {
                Ok(r) => r,
                Err(e) => {
                    last = format!("{endpoint}: {e}");
                    continue;
                }
            };
            let status = reply.status().as_u16();
            let text = match reply
                .body_mut()
                .with_config()
                .limit(MAX_REPLY)
                .read_to_string()
            {
                Ok(t) => t,
                Err(e) => {
                    last = format!("{endpoint}: {e}");
                    continue;
                }
            };
            // A member without a leader answers 503: ask another.
            if status == 503 {
                last = format!("{endpoint}: HTTP 503 {}", one_line(&text));
                continue;
            }
            self.current.store(at, Ordering::Relaxed);
            if status != 200 {
                return Err(EtcdError::Status {
                    endpoint: endpoint.clone(),
                    path,
                    status,
                    body: one_line(&text),
                });
            }
            return serde_json::from_str(&text).map_err(|e| EtcdError::BadReply {
                endpoint: endpoint.clone(),
                path,
                why: e.to_string(),
            });
        }
        Err(EtcdError::Unreachable {
            endpoints: self.url.endpoints.join(","),
            last,
        })
    }

    fn bad(&self, path: &'static str, why: impl Into<String>) -> EtcdError {
        EtcdError::BadReply {
            endpoint: self.url.endpoints[self.current.load(Ordering::Relaxed)].clone(),
            path,
            why: why.into(),
        }
    }

    /// A lease of `ttl` (whole seconds, at least 1).
    pub fn grant(&self, ttl: Duration) -> Result<LeaseId> {
        const PATH: &str = "/v3/lease/grant";
        let v = self.call(PATH, json!({ "TTL": ttl.as_secs().max(1) }))?;
        if let Some(e) = v.get("error").and_then(Value::as_str)
            && !e.is_empty()
        {
            return Err(self.bad(PATH, e.to_string()));
        }
        num(&v["ID"])
            .map(LeaseId)
            .ok_or_else(|| self.bad(PATH, "no lease ID"))
    }

    /// Keeps `lease` alive once: its remaining TTL, or `None` when it has
    /// expired (or never was).
    pub fn keep_alive(&self, lease: LeaseId) -> Result<Option<Duration>> {
        const PATH: &str = "/v3/lease/keepalive";
        let v = self.call(PATH, json!({ "ID": lease.0.to_string() }))?;
        let ttl = num(&v["result"]["TTL"]).unwrap_or(0);
        Ok((ttl > 0).then(|| Duration::from_secs(ttl as u64)))
    }

    /// Ends `lease` now: its keys are deleted.
    pub fn revoke(&self, lease: LeaseId) -> Result<()> {
        self.call("/v3/lease/revoke", json!({ "ID": lease.0.to_string() }))?;
        Ok(())
    }

    /// Puts `value` at `key`, attached to `lease` when given.
    pub fn put(&self, key: &str, value: &[u8], lease: Option<LeaseId>) -> Result<()> {
        let mut req = json!({ "key": B64.encode(key), "value": B64.encode(value) });
        if let Some(l) = lease {
            req["lease"] = json!(l.0.to_string());
        }
        self.call("/v3/kv/put", req)?;
        Ok(())
    }

    /// Creates `key` only if it does not exist: true when this call made
    /// it. Of any number of callers, exactly one wins.
    pub fn create(&self, key: &str, value: &[u8], lease: Option<LeaseId>) -> Result<bool> {
        let k = B64.encode(key);
        let mut put = json!({ "key": k, "value": B64.encode(value) });
        if let Some(l) = lease {
            put["lease"] = json!(l.0.to_string());
        }
        let v = self.call(
            "/v3/kv/txn",
            json!({
                "compare": [{ "key": k, "target": "CREATE", "result": "EQUAL", "create_revision": "0" }],
                "success": [{ "request_put": put }],
            }),
        )?;
        Ok(v["succeeded"].as_bool().unwrap_or(false))
    }

    /// The value at `key`.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        const PATH: &str = "/v3/kv/range";
        let v = self.call(PATH, json!({ "key": B64.encode(key) }))?;
        match v["kvs"].as_array().and_then(|a| a.first()) {
            None => Ok(None),
            Some(kv) => self.value_of(PATH, kv).map(Some),
        }
    }

    /// Every key under `prefix`, with its value, in key order.
    pub fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        Ok(self
            .range(prefix)?
            .into_iter()
            .map(|kv| (kv.key, kv.value))
            .collect())
    }

    /// Every key under `prefix`, with its value and lease, in key order.
    pub fn range(&self, prefix: &str) -> Result<Vec<Kv>> {
        const PATH: &str = "/v3/kv/range";
        let v = self.call(
            PATH,
            json!({ "key": B64.encode(prefix), "range_end": B64.encode(prefix_end(prefix)) }),
        )?;
        let mut out = Vec::new();
        for kv in v["kvs"].as_array().map(Vec::as_slice).unwrap_or_default() {
            let key = kv["key"]
                .as_str()
                .and_then(|k| B64.decode(k).ok())
                .and_then(|k| String::from_utf8(k).ok())
                .ok_or_else(|| self.bad(PATH, "a key that is not base64 UTF-8"))?;
            out.push(Kv {
                key,
                value: self.value_of(PATH, kv)?,
                lease: num(&kv["lease"]).filter(|l| *l != 0).map(LeaseId),
            });
        }
        Ok(out)
    }

    /// Deletes `key`.
    pub fn delete(&self, key: &str) -> Result<()> {
        self.call("/v3/kv/deleterange", json!({ "key": B64.encode(key) }))?;
        Ok(())
    }

    fn value_of(&self, path: &'static str, kv: &Value) -> Result<Vec<u8>> {
        // An empty value is left out of the gateway's JSON.
        match kv.get("value").and_then(Value::as_str) {
            None => Ok(Vec::new()),
            Some(s) => B64
                .decode(s)
                .map_err(|e| self.bad(path, format!("a value that is not base64: {e}"))),
        }
    }
}

/// The gateway writes 64-bit integers as strings; either form is read.
fn num(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| v.as_str()?.parse().ok())
}

/// The end of the range of keys that start with `prefix`.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn one_line(s: &str) -> String {
    let s: String = s.chars().take(300).collect();
    s.replace(['\r', '\n'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arbiter_urls_parse_and_bad_ones_say_why() {
        let u = ArbiterUrl::parse("etcd://127.0.0.1:2379,10.0.0.2:2379/mail").unwrap();
        assert_eq!(u.endpoints, ["127.0.0.1:2379", "10.0.0.2:2379"]);
        assert_eq!(u.prefix, "mail");
        for (bad, why) in [
            ("http://127.0.0.1:2379/x", "not an etcd"),
            ("etcd://127.0.0.1:2379", "no /PREFIX"),
            ("etcd://127.0.0.1:2379/", "empty prefix"),
            ("etcd://127.0.0.1/x", "without :PORT"),
            ("etcd://127.0.0.1:0/x", "not valid"),
            ("etcd://:2379/x", "not valid"),
            ("etcd://127.0.0.1:2379/a b", "letters"),
        ] {
            let e = ArbiterUrl::parse(bad).unwrap_err().to_string();
            assert!(e.contains(why) && e.contains(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn a_prefix_range_ends_after_every_key_that_starts_with_it() {
        assert_eq!(prefix_end("/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), vec![b'a', 0x80]);
        assert_eq!(num(&json!("42")), Some(42));
        assert_eq!(num(&json!(7)), Some(7));
        assert_eq!(num(&json!(null)), None);
    }
}
