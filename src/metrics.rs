//! The admin endpoint of a node or of the relay (its `admin` address):
//! `GET /metrics` in the Prometheus text format and `GET /status` as JSON,
//! served by a small thread of its own (tiny_http). What is shown comes
//! from a closure the daemon gives, called per request.

use std::fmt::Write as _;
use std::sync::Arc;

use anyhow::{Context, Result};

/// Renders a page: (content type, body).
pub type Render = Arc<dyn Fn() -> (String, String) + Send + Sync>;

/// Serves `/metrics` and `/status` on `addr` until the process ends.
pub fn serve(addr: &str, metrics: Render, status: Render) -> Result<()> {
    let server = tiny_http::Server::http(addr)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("listen on the admin address {addr}"))?;
    std::thread::Builder::new()
        .name("logship-admin".into())
        .spawn(move || {
            for req in server.incoming_requests() {
                let page = match (req.method(), req.url()) {
                    (tiny_http::Method::Get, "/metrics") => Some(metrics()),
                    (tiny_http::Method::Get, "/status") => Some(status()),
                    _ => None,
                };
                let resp = match page {
                    Some((ctype, body)) => {
                        let header =
                            tiny_http::Header::from_bytes(&b"Content-Type"[..], ctype.as_bytes())
                                .expect("a valid header");
                        tiny_http::Response::from_string(body).with_header(header)
                    }
                    None => {
                        tiny_http::Response::from_string("not found: try /metrics or /status\n")
                            .with_status_code(404)
                    }
                };
                let _ = req.respond(resp);
            }
        })?;
    Ok(())
}

/// Builds a Prometheus text exposition.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    /// One metric with its help and type, and one sample per label set.
    pub fn metric(&mut self, name: &str, kind: &str, help: &str, samples: &[(&str, f64)]) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
        for (labels, v) in samples {
            if labels.is_empty() {
                let _ = writeln!(self.out, "{name} {v}");
            } else {
                let _ = writeln!(self.out, "{name}{{{labels}}} {v}");
            }
        }
    }

    pub fn gauge(&mut self, name: &str, help: &str, labels: &str, v: f64) {
        self.metric(name, "gauge", help, &[(labels, v)]);
    }

    pub fn counter(&mut self, name: &str, help: &str, labels: &str, v: f64) {
        self.metric(name, "counter", help, &[(labels, v)]);
    }

    /// A histogram (seconds) with `le` buckets.
    pub fn histogram(
        &mut self,
        name: &str,
        help: &str,
        labels: &str,
        h: &shipper::metrics::Snapshot,
    ) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} histogram");
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, c) in h.cumulative.iter().enumerate() {
            let le = shipper::metrics::BOUNDS
                .get(i)
                .map(|b| b.to_string())
                .unwrap_or_else(|| "+Inf".into());
            let _ = writeln!(self.out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {c}");
        }
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(self.out, "{name}_sum{braces} {}", h.sum_seconds);
        let _ = writeln!(self.out, "{name}_count{braces} {}", h.count);
    }

    pub fn finish(self) -> (String, String) {
        ("text/plain; version=0.0.4".into(), self.out)
    }
}
