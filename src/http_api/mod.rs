//! SQL over HTTP in rqlite's dialect, so that rqlite's clients (pyrqlite,
//! its SQLAlchemy dialect, rqlite-js, gorqlite) work against a node:
//! `POST /db/execute` (one store transaction per request), `GET`/`POST
//! /db/query` (read-only statements on the node's own database), `POST
//! /db/request` (both, in one transaction), `GET /status`, `/nodes` and
//! `/readyz`. `[nodes.X] http` turns it on; `http` is the HTTP/1.1 of one
//! connection.
//!
//! The statement forms are rqlite's: a bare string, `[sql, positional…]`
//! and `[sql, {named}]`. The answer is `{"results": [...]}`, each result
//! with `last_insert_id` and `rows_affected` for a write, or `columns`,
//! `types` (the declared types, lower case) and `values` for a read, or
//! `error`; blobs are base64 strings, as rqlite sends them. `?timings`
//! adds `time`, `?pretty` indents.
//!
//! With `[cluster] http-users` (rqlite's users file), requests need HTTP
//! basic credentials with the endpoint's permission. With `[nodes.X]
//! http-cert` and `http-key` the API speaks TLS only (rustls on ring), and
//! a passive forwards over TLS trusting `[cluster] http-ca`.
//!
//! A passive forwards writes and `weak`/`strong` reads to the active (with
//! `?redirect`, answers `301` to it; `503` with `Retry-After` while no
//! node is active), and reads its own copy at `level=none`, refusing one
//! staler than `?freshness`. A request is one store transaction (one
//! record, one fsync). With `?transaction` the first error rolls the whole
//! request back and ends it; without, as rqlite does, a failing statement
//! is undone alone (each runs in a savepoint) and the next ones still run.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};
use base64::Engine;
use rusqlite::types::{Value, ValueRef};
use serde_json::{Map, Value as Json, json};
use shipper::{Params, Store};

use crate::node_status::NodeStatus;
use http::{Method, Request, Response};

mod http;

/// The largest request body read.
const MAX_BODY: u64 = 16 << 20;
/// The most statements one request may carry.
const MAX_STATEMENTS: usize = 10_000;

/// What the API serves from.
#[derive(Clone)]
pub struct Api {
    pub node: String,
    pub data_dir: PathBuf,
    /// The store while this node is active.
    pub serving: Arc<Mutex<Option<Arc<Store>>>>,
    /// The node's last status (role, the active's name).
    pub snapshot: Arc<Mutex<Option<NodeStatus>>>,
    /// Each node's API, to send clients to the active.
    pub peers: Vec<Peer>,
    /// TLS, when `[nodes.X] http-cert` and `http-key` are set.
    pub tls: Option<Tls>,
    /// The client a passive forwards with, made on first use and kept (its
    /// connections and TLS set-up are reused).
    pub forwarder: Arc<std::sync::OnceLock<ureq::Agent>>,
    /// Who may do what (`[cluster] http-users`); `None`: anyone anything.
    pub users: Option<Arc<Users>>,
    /// `[cluster] http-timeout`: how long a request's statements may run.
    pub timeout: std::time::Duration,
}

/// A node's API, as the config gives it.
#[derive(Clone, Debug)]
pub struct Peer {
    pub name: String,
    /// host:port
    pub addr: String,
    /// Whether it serves TLS (it has `http-cert`).
    pub tls: bool,
}

impl Peer {
    /// `http://host:port` or `https://host:port`.
    pub fn base(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }
}

/// The API's TLS: what it serves with, and whom it trusts when it
/// forwards to an active that serves TLS.
#[derive(Clone)]
pub struct Tls {
    server: Arc<rustls::ServerConfig>,
    roots: Arc<Vec<ureq::tls::Certificate<'static>>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("roots", &self.roots.len())
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// The certificate chain in `cert` and the key in `key` (owner-only,
    /// as every secret file), trusting the CA certificates in `ca` (default:
    /// `cert` itself) when forwarding.
    pub fn load(
        cert: &std::path::Path,
        key: &std::path::Path,
        ca: Option<&std::path::Path>,
    ) -> Result<Tls> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .and_then(|certs| certs.collect())
            .with_context(|| format!("read the certificates in {}", cert.display()))?;
        anyhow::ensure!(!chain.is_empty(), "{} holds no certificate", cert.display());
        let key_pem = shipper::secret::read_private(key, "the SQL-over-HTTP TLS key")?;
        let key_der = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .with_context(|| format!("read the private key in {}", key.display()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_single_cert(chain.clone(), key_der)
            .with_context(|| {
                format!(
                    "the TLS certificate {} and key {} do not go together",
                    cert.display(),
                    key.display()
                )
            })?;
        let roots: Vec<ureq::tls::Certificate<'static>> = match ca {
            Some(ca) => CertificateDer::pem_file_iter(ca)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .with_context(|| format!("read the CA certificates in {}", ca.display()))?
                .iter()
                .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
                .collect(),
            None => chain
                .iter()
                .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
                .collect(),
        };
        Ok(Tls {
            server: Arc::new(server),
            roots: Arc::new(roots),
        })
    }
}

/// Interrupts `conn`'s statements once `deadline` passes (SQLite then
/// answers "interrupted"): reads, on the API's own connections. A write's
/// statements run on the store's writer, limited by `Tx::interrupt_after`.
fn limit(conn: &mut rusqlite::Connection, deadline: Instant) {
    // It fails only for a handler SQLite cannot take: none here.
    let _ = conn.progress_handler(10_000, Some(move || Instant::now() > deadline));
}

/// What an interrupted statement says, with the limit that stopped it.
fn timed_out(e: impl std::fmt::Display, timeout: std::time::Duration) -> String {
    let e = e.to_string();
    if e.contains("interrupted") {
        format!(
            "{e}: the request ran past its time limit of {} ([cluster] http-timeout)",
            humantime::format_duration(timeout)
        )
    } else {
        e
    }
}

/// rqlite's users file: `[{"username", "password", "perms": [...]}]`, the
/// permissions `all`, `execute`, `query`, `status`, `ready`, `nodes`.
#[derive(Debug, Default)]
pub struct Users {
    users: Vec<User>,
}

#[derive(Debug, serde::Deserialize)]
struct User {
    username: String,
    password: String,
    perms: Vec<String>,
}

impl Users {
    /// Reads and checks the users file (owner-only, as every secret).
    pub fn load(path: &std::path::Path) -> Result<Users> {
        let text = shipper::secret::read_private(path, "HTTP users file")?;
        let users: Vec<User> = serde_json::from_str(&text).with_context(|| {
            format!(
                "{}: not a users file ([{{\"username\", \"password\", \"perms\": [...]}}])",
                path.display()
            )
        })?;
        const PERMS: [&str; 6] = ["all", "execute", "query", "status", "ready", "nodes"];
        for u in &users {
            if let Some(p) = u.perms.iter().find(|p| !PERMS.contains(&p.as_str())) {
                anyhow::bail!(
                    "{}: user {:?} has the permission {p:?}; the permissions are {}",
                    path.display(),
                    u.username,
                    PERMS.join(", ")
                );
            }
        }
        Ok(Users { users })
    }

    /// Whether the request's `Authorization` allows `perm`; the user's
    /// name, or why not.
    fn allows(&self, authorization: Option<&str>, perm: &str) -> Result<String, &'static str> {
        let Some(b64) = authorization.and_then(|a| a.strip_prefix("Basic ")) else {
            return Err("authentication required (HTTP basic)");
        };
        let Some((name, password)) = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| {
                s.split_once(':')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
            })
        else {
            return Err("malformed basic credentials");
        };
        let user = self
            .users
            .iter()
            .find(|u| {
                u.username == name && constant_time_eq(u.password.as_bytes(), password.as_bytes())
            })
            .ok_or("wrong user name or password")?;
        if user.perms.iter().any(|p| p == "all" || p == perm) {
            Ok(name)
        } else {
            Err("this user lacks the permission")
        }
    }
}

/// Compares without stopping at the first difference.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// One statement of a request.
#[derive(Clone, Debug, PartialEq)]
pub struct Statement {
    pub sql: String,
    pub params: Params,
}

/// Starts the API on `addr`: a thread per connection (at most
/// `MAX_CONNECTIONS`), HTTP/1.1 with keep-alive. It serves until `stop`.
pub fn serve(addr: &str, api: Api, stop: Arc<std::sync::atomic::AtomicBool>) -> Result<()> {
    use std::sync::atomic::Ordering;
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("listen for SQL over HTTP on {addr}"))?;
    listener
        .set_nonblocking(true)
        .with_context(|| format!("the SQL-over-HTTP listener on {addr}"))?;
    let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let node = api.node.clone();
    let tls = api.tls.is_some();
    std::thread::Builder::new()
        .name("logship-http".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let stream = match listener.accept() {
                    Ok((s, _)) => s,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(std::time::Duration::from_millis(10));
                        continue;
                    }
                    Err(_) => continue,
                };
                let _ = stream.set_nonblocking(false);
                let (api, open) = (api.clone(), open.clone());
                if open.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                    open.fetch_sub(1, Ordering::SeqCst);
                    let mut s = stream;
                    let busy = Response::text(503, "too many connections\n".into());
                    let _ = http::write(&mut s, &busy, false);
                    continue;
                }
                let _ = std::thread::Builder::new()
                    .name("logship-http-conn".into())
                    .spawn(move || {
                        http::prepare(&stream);
                        match &api.tls {
                            Some(tls) => {
                                // The handshake runs on the first read.
                                if let Ok(conn) = rustls::ServerConnection::new(tls.server.clone())
                                {
                                    let tls_stream = rustls::StreamOwned::new(conn, stream);
                                    http::serve_connection(tls_stream, |req| answer(&api, req));
                                }
                            }
                            None => http::serve_connection(stream, |req| answer(&api, req)),
                        }
                        open.fetch_sub(1, Ordering::SeqCst);
                    });
            }
        })?;
    tracing::info!(node = %node, http = %addr, tls, "SQL over HTTP listening (/db/execute, /db/query)");
    Ok(())
}

/// The most connections served at once.
const MAX_CONNECTIONS: usize = 512;

/// The URL's path and its query parameters (a flag has an empty value).
fn split_url(url: &str) -> (&str, Vec<(String, String)>) {
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let params = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect();
    (path, params)
}

/// Percent-decoding (and `+` as a space), as forms encode query strings.
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn respond(status: u16, body: String, headers: &[(&str, String)]) -> Response {
    Response {
        status,
        body,
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    }
}

fn json_header() -> (&'static str, String) {
    ("Content-Type", "application/json".to_string())
}

fn answer(api: &Api, req: Request) -> Response {
    let url = req.url.clone();
    let (path, params) = split_url(&url);
    let flag = |k: &str| params.iter().any(|(p, _)| p == k);
    let auth = req.header("Authorization").map(str::to_string);
    let Request { method, body, .. } = req;
    if let Some(users) = &api.users {
        let perm = match path {
            "/db/execute" => "execute",
            "/db/query" => "query",
            "/db/request" => "execute",
            "/status" => "status",
            "/nodes" => "nodes",
            "/readyz" => "ready",
            _ => "all",
        };
        if let Err(why) = users.allows(auth.as_deref(), perm) {
            let status = if auth.is_some() && why.contains("permission") {
                403
            } else {
                401
            };
            return respond(
                status,
                format!("{why}: {path} needs the permission {perm:?}\n"),
                &[("WWW-Authenticate", "Basic realm=\"logship\"".into())],
            );
        }
    }
    let started = Instant::now();
    let outcome = match (method, path) {
        (Method::Post, "/db/execute" | "/db/request") => parse_statements(&body).map(|s| (true, s)),
        (Method::Get | Method::Post, "/db/query") => {
            let from_url: Vec<Statement> = params
                .iter()
                .filter(|(k, _)| k == "q")
                .map(|(_, q)| Statement {
                    sql: q.clone(),
                    params: Params::None,
                })
                .collect();
            if !from_url.is_empty() || body.is_empty() {
                Ok((false, from_url))
            } else {
                parse_statements(&body).map(|s| (false, s))
            }
        }
        (Method::Get, "/status") => {
            let st = api.snapshot.lock().expect("snapshot lock").clone();
            let v = json!({ "logship": st, "node": { "name": api.node } });
            return respond(200, pretty(&v, flag("pretty")), &[json_header()]);
        }
        (Method::Get, "/nodes") => {
            let v = nodes(api);
            return respond(200, pretty(&v, flag("pretty")), &[json_header()]);
        }
        (Method::Get, "/readyz") => {
            let ready = api.serving.lock().expect("serving lock").is_some()
                || api.data_dir.join(shipper::store::DATABASE_FILE).exists();
            return if ready {
                respond(200, "[+]node ok\n".into(), &[])
            } else {
                respond(503, "[-]node: no database yet\n".into(), &[])
            };
        }
        _ => return respond(404, format!("no such endpoint: {path}\n"), &[]),
    };
    let (write, statements) = match outcome {
        Ok(x) => x,
        Err(why) => return respond(400, format!("{why}\n"), &[]),
    };
    let level = params
        .iter()
        .find(|(k, _)| k == "level")
        .map(|(_, v)| v.as_str())
        .unwrap_or("weak");
    let store = api.serving.lock().expect("serving lock").clone();
    // A passive takes reads at level none; the rest goes to the active:
    // forwarded, or with `?redirect` a 301 to it.
    if store.is_none() && (write || level != "none") {
        return match active_of(api) {
            Some(peer) if !flag("redirect") => forward(api, method, &peer, &url, body, auth),
            _ => send_to_active(api, &url),
        };
    }
    let shape = Shape {
        associative: flag("associative"),
    };
    let results = if write {
        let store = store.expect("checked above");
        let mode = Mode {
            mixed: path == "/db/request",
            atomic: flag("transaction"),
        };
        match execute(&store, statements, mode, shape, api.timeout) {
            Ok(r) => r,
            // The store stopped taking writes (fenced, or stopping during a
            // failover): come back shortly, to whichever node is active.
            Err(why) => {
                return respond(503, format!("{why}\n"), &[("Retry-After", "1".into())]);
            }
        }
    } else {
        if store.is_none()
            && let Some(f) = params.iter().find(|(k, _)| k == "freshness")
            && let Some(why) = too_stale(api, &f.1)
        {
            return respond(
                200,
                pretty(&json!({ "results": [error(why)] }), flag("pretty")),
                &[json_header()],
            );
        }
        let read = match query(api, store.as_deref(), &statements, shape, api.timeout) {
            Ok(r) => r,
            Err(e) => return respond(503, format!("{e:#}\n"), &[]),
        };
        // `strong`: the answer stands only if this node still held the
        // active role's lease once it had read (no other node could have
        // committed meanwhile).
        if level == "strong"
            && let Some(store) = &store
            && let Err(why) = store.holds_lease()
        {
            return respond(
                503,
                format!(
                    "node {} cannot confirm it is still active: {why}; retry\n",
                    api.node
                ),
                &[("Retry-After", "1".into())],
            );
        }
        read
    };
    let mut out = Map::new();
    out.insert("results".into(), Json::Array(results));
    if flag("timings") {
        out.insert("time".into(), json!(started.elapsed().as_secs_f64()));
    }
    respond(
        200,
        pretty(&Json::Object(out), flag("pretty")),
        &[json_header()],
    )
}

fn pretty(v: &Json, pretty: bool) -> String {
    if pretty {
        serde_json::to_string_pretty(v).expect("JSON values serialise")
    } else {
        v.to_string()
    }
}

/// The active node's API, when this node knows one.
fn active_of(api: &Api) -> Option<Peer> {
    let active = api
        .snapshot
        .lock()
        .expect("snapshot lock")
        .as_ref()
        .and_then(|s| s.active_node.clone())
        .filter(|a| *a != api.node)?;
    api.peers.iter().find(|p| p.name == active).cloned()
}

/// The request, sent on to the active's API as it came; its answer, as
/// the active gave it (or `503` when the active does not answer).
fn forward(
    api: &Api,
    method: Method,
    peer: &Peer,
    url: &str,
    body: Vec<u8>,
    auth: Option<String>,
) -> Response {
    let agent = api.forwarder.get_or_init(|| {
        let mut config = ureq::Agent::config_builder()
            .timeout_global(Some(std::time::Duration::from_secs(30)))
            .http_status_as_error(false)
            .max_redirects(0);
        if let Some(tls) = &api.tls {
            config = config.tls_config(
                ureq::tls::TlsConfig::builder()
                    .provider(ureq::tls::TlsProvider::Rustls)
                    .root_certs(ureq::tls::RootCerts::Specific(tls.roots.clone()))
                    .unversioned_rustls_crypto_provider(Arc::new(
                        rustls::crypto::ring::default_provider(),
                    ))
                    .build(),
            );
        }
        ureq::Agent::new_with_config(config.build())
    });
    let addr = &peer.addr;
    let target = format!("{}{url}", peer.base());
    // The client's credentials go with it: the active checks them too.
    let auth = auth.unwrap_or_default();
    let reply = match method {
        Method::Get => agent.get(&target).header("Authorization", &auth).call(),
        _ => agent
            .post(&target)
            .header("Content-Type", "application/json")
            .header("Authorization", &auth)
            .send(&body[..]),
    };
    match reply {
        Ok(mut r) => {
            let status = r.status().as_u16();
            let text = r
                .body_mut()
                .with_config()
                .limit(MAX_BODY)
                .read_to_string()
                .unwrap_or_default();
            respond(status, text, &[json_header()])
        }
        Err(e) => respond(
            503,
            format!("the active node's API at {addr} did not answer: {e}\n"),
            &[("Retry-After", "1".into())],
        ),
    }
}

/// `301` to the active's API, or `503` while no node is.
fn send_to_active(api: &Api, url: &str) -> Response {
    match active_of(api) {
        Some(peer) => respond(
            301,
            format!("node {} is active\n", peer.name),
            &[("Location", format!("{}{url}", peer.base()))],
        ),
        None => respond(
            503,
            format!(
                "node {} is not active, and no active node is known\n",
                api.node
            ),
            &[("Retry-After", "1".into())],
        ),
    }
}

/// Parses rqlite's statement forms from a JSON body.
pub fn parse_statements(body: &[u8]) -> Result<Vec<Statement>, String> {
    let v: Json = serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    let Json::Array(items) = v else {
        return Err("the body must be a JSON array of statements".into());
    };
    if items.len() > MAX_STATEMENTS {
        return Err(format!(
            "{} statements in one request; the most is {MAX_STATEMENTS}",
            items.len()
        ));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| match item {
            Json::String(sql) => Ok(Statement {
                sql,
                params: Params::None,
            }),
            Json::Array(mut parts) if !parts.is_empty() => {
                let Json::String(sql) = parts.remove(0) else {
                    return Err(format!(
                        "statement {i}: its first element is not the SQL text"
                    ));
                };
                let params = match parts.as_slice() {
                    [] => Params::None,
                    [Json::Object(named)] => Params::Named(
                        named
                            .iter()
                            .map(|(k, v)| Ok((k.clone(), to_value(v, i)?)))
                            .collect::<Result<_, String>>()?,
                    ),
                    values => {
                        Params::Positional(values.iter().map(|v| to_value(v, i)).collect::<Result<
                            _,
                            String,
                        >>(
                        )?)
                    }
                };
                Ok(Statement { sql, params })
            }
            _ => Err(format!(
                "statement {i} is neither a string nor [sql, parameters…]"
            )),
        })
        .collect()
}

fn to_value(v: &Json, i: usize) -> Result<Value, String> {
    Ok(match v {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Integer(i64::from(*b)),
        Json::Number(n) => match n.as_i64() {
            Some(x) => Value::Integer(x),
            None => Value::Real(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => Value::Text(s.clone()),
        Json::Array(bytes) => Value::Blob(
            bytes
                .iter()
                .map(|b| {
                    b.as_u64()
                        .filter(|b| *b < 256)
                        .map(|b| b as u8)
                        .ok_or_else(|| {
                            format!("statement {i}: a blob parameter holds {b}, not a byte")
                        })
                })
                .collect::<Result<_, String>>()?,
        ),
        Json::Object(_) => {
            return Err(format!(
                "statement {i}: a parameter is an object; named parameters are one object after the SQL"
            ));
        }
    })
}

/// A result's error, as rqlite words it.
fn error(e: impl std::fmt::Display) -> Json {
    json!({ "error": e.to_string() })
}

/// How rows are given back.
#[derive(Clone, Copy, Debug, Default)]
struct Shape {
    /// `?associative`: each row an object, `types` a map.
    associative: bool,
}

/// How `execute` runs a request's statements.
#[derive(Clone, Copy, Debug)]
struct Mode {
    /// `/db/request`: read-only statements answer their rows.
    mixed: bool,
    /// `?transaction`: all or nothing; the first error ends the request.
    atomic: bool,
}

/// The savepoint around each statement of a request without
/// `?transaction`.
const STATEMENT_SAVEPOINT: &str = "logship_http_statement";

/// Runs the statements as one store transaction. With `mode.atomic` all of
/// them commit or none does (the first error ends the request); without,
/// a failing statement answers its error and the others commit.
fn execute(
    store: &Store,
    statements: Vec<Statement>,
    mode: Mode,
    shape: Shape,
    timeout: std::time::Duration,
) -> Result<Vec<Json>, String> {
    let deadline = Instant::now() + timeout;
    // Which statement failed, and why: the store only sees the request fail.
    let failed: Arc<Mutex<Option<(usize, String)>>> = Default::default();
    let slot = failed.clone();
    let run = store.transaction(move |tx| {
        // (A request may run again at the head of a group commit.)
        *slot.lock().expect("failed lock") = None;
        tx.interrupt_after(deadline);
        run_all(tx, &statements, mode, shape).map_err(|(at, why)| {
            *slot.lock().expect("failed lock") = Some((at, why));
            shipper::Error::Aborted("a statement of the request failed".into())
        })
    });
    if let Some((at, why)) = failed.lock().expect("failed lock").take() {
        // rqlite's shape: an error result at the failing statement.
        let mut out: Vec<Json> = (0..at).map(|_| json!({})).collect();
        out.push(error(timed_out(why, timeout)));
        return Ok(out);
    }
    match run {
        Ok(c) => Ok(c
            .value
            .into_iter()
            .map(|r| match r.get("error").and_then(Json::as_str) {
                Some(e) if e.contains("interrupted") => error(timed_out(e, timeout)),
                _ => r,
            })
            .collect()),
        Err(e @ (shipper::Error::Fenced(_) | shipper::Error::Stopped(_))) => Err(format!(
            "this node no longer takes writes ({e}); retry: the active node answers"
        )),
        Err(e) => Ok(vec![error(e)]),
    }
}

/// The statements of one store transaction, in order. With `mode.atomic`
/// the first error ends it, with the failing statement's index; without,
/// each statement runs in a savepoint, and one that fails is rolled back to
/// it and answers its error in its place.
fn run_all(
    tx: &mut shipper::Tx<'_>,
    statements: &[Statement],
    mode: Mode,
    shape: Shape,
) -> Result<Vec<Json>, (usize, String)> {
    let mut results = Vec::with_capacity(statements.len());
    for (i, s) in statements.iter().enumerate() {
        if mode.atomic {
            results.push(run_one(tx, s, mode, shape).map_err(|e| (i, e))?);
            continue;
        }
        let savepoint = |tx: &mut shipper::Tx<'_>, sql: &str| {
            tx.conn()
                .execute_batch(sql)
                .map_err(|e| (i, format!("{sql}: {e}")))
        };
        savepoint(tx, &format!("SAVEPOINT {STATEMENT_SAVEPOINT}"))?;
        match run_one(tx, s, mode, shape) {
            Ok(r) => {
                savepoint(tx, &format!("RELEASE {STATEMENT_SAVEPOINT}"))?;
                results.push(r);
            }
            Err(e) => {
                savepoint(
                    tx,
                    &format!("ROLLBACK TO {STATEMENT_SAVEPOINT}; RELEASE {STATEMENT_SAVEPOINT}"),
                )?;
                results.push(error(e));
            }
        }
    }
    Ok(results)
}

/// One statement of a request: its rows (a read in `/db/request`), or its
/// last insert id and row count.
fn run_one(
    tx: &mut shipper::Tx<'_>,
    s: &Statement,
    mode: Mode,
    shape: Shape,
) -> Result<Json, String> {
    if mode.mixed && tx.conn().prepare(&s.sql).is_ok_and(|st| st.readonly()) {
        let r = read_one(tx.conn(), s, shape);
        return match r.get("error").and_then(Json::as_str) {
            Some(e) => Err(e.to_string()),
            None => Ok(r),
        };
    }
    let mut ignore = |_: &[String], _: usize, _: &rusqlite::Row<'_>| Ok(());
    let before = tx.conn().total_changes();
    tx.execute_with(&s.sql, &s.params, &mut ignore)
        .map_err(|e| e.to_string())?;
    let c = tx.conn();
    // `changes()` keeps the last writing statement's count: a statement
    // that wrote nothing (a SELECT, a schema change) affected no rows.
    let affected = if c.total_changes() == before {
        0
    } else {
        c.changes()
    };
    Ok(json!({
        "last_insert_id": c.last_insert_rowid(),
        "rows_affected": affected,
    }))
}

/// Runs read-only statements on this node's database: the store's reader
/// while active, the copy's file while passive.
fn query(
    api: &Api,
    store: Option<&Store>,
    statements: &[Statement],
    shape: Shape,
    timeout: std::time::Duration,
) -> Result<Vec<Json>> {
    let mut conn = match store {
        Some(s) => s.reader()?,
        None => shipper::store::open_read_only(&api.data_dir.join(shipper::store::DATABASE_FILE))?,
    };
    limit(&mut conn, Instant::now() + timeout);
    Ok(statements
        .iter()
        .map(|s| {
            let r = read_one(&conn, s, shape);
            match r.get("error").and_then(Json::as_str) {
                Some(e) => error(timed_out(e, timeout)),
                None => r,
            }
        })
        .collect())
}

/// `?freshness=`: why this copy is too stale to answer, if it is (its last
/// replayed segment's seal is older than the bound allows).
fn too_stale(api: &Api, freshness: &str) -> Option<String> {
    let bound = match humantime::parse_duration(freshness) {
        Ok(d) => d,
        Err(e) => return Some(format!("freshness {freshness:?}: {e}")),
    };
    let paths = replayer::state::CopyPaths::new(&api.data_dir);
    let state = replayer::state::CopyState::load(&paths).ok().flatten()?;
    let at = state.last_replayed.map(|m| m.time_us).unwrap_or(0);
    let lag = std::time::Duration::from_micros(witness::witness::now_us().saturating_sub(at));
    (lag > bound).then(|| {
        format!(
            "stale read: node {} last replayed a segment sealed {} ago, more than freshness {}",
            api.node,
            humantime::format_duration(std::time::Duration::from_secs(lag.as_secs())),
            freshness
        )
    })
}

/// Every node of the config with its API address, and which is active.
fn nodes(api: &Api) -> Json {
    let active = api
        .snapshot
        .lock()
        .expect("snapshot lock")
        .as_ref()
        .and_then(|s| s.active_node.clone());
    let mut out = Map::new();
    for p in &api.peers {
        let n = &p.name;
        out.insert(
            n.clone(),
            json!({
                "api_addr": p.base(),
                "addr": p.addr,
                "leader": active.as_deref() == Some(n.as_str()),
                "reachable": *n == api.node || active.as_deref() == Some(n.as_str()),
            }),
        );
    }
    Json::Object(out)
}

fn read_one(conn: &rusqlite::Connection, s: &Statement, shape: Shape) -> Json {
    let mut stmt = match conn.prepare(&s.sql) {
        Ok(st) => st,
        Err(e) => return error(e),
    };
    if !stmt.readonly() {
        return error(format!(
            "{:?} is not a read-only statement: send it to /db/execute",
            s.sql
        ));
    }
    if let Err(e) = s.params.bind(&mut stmt) {
        return error(e);
    }
    let columns: Vec<String> = stmt.column_names().map(|c| c.to_string()).collect();
    let types: Vec<String> = stmt
        .columns()
        .map(|c| c.decl_type().unwrap_or("").to_ascii_lowercase())
        .collect();
    let mut rows = stmt.raw_query();
    let mut values = Vec::new();
    loop {
        match rows.next() {
            Ok(Some(row)) => {
                let mut out = Vec::with_capacity(columns.len());
                for i in 0..columns.len() {
                    out.push(match row.get_ref(i) {
                        Ok(ValueRef::Null) | Err(_) => Json::Null,
                        Ok(ValueRef::Integer(x)) => json!(x),
                        Ok(ValueRef::Real(x)) => json!(x),
                        Ok(ValueRef::Text(t)) => {
                            Json::String(String::from_utf8_lossy(t).into_owned())
                        }
                        Ok(ValueRef::Blob(b)) => {
                            Json::String(base64::engine::general_purpose::STANDARD.encode(b))
                        }
                    });
                }
                values.push(if shape.associative {
                    Json::Object(columns.iter().cloned().zip(out).collect())
                } else {
                    Json::Array(out)
                });
            }
            Ok(None) => break,
            Err(e) => return error(e),
        }
    }
    let mut r = Map::new();
    if shape.associative {
        let types: Map<String, Json> = columns
            .iter()
            .cloned()
            .zip(types.into_iter().map(Json::String))
            .collect();
        r.insert("types".into(), Json::Object(types));
        r.insert("rows".into(), Json::Array(values));
        return Json::Object(r);
    }
    r.insert("columns".into(), json!(columns));
    r.insert("types".into(), json!(types));
    if !values.is_empty() {
        r.insert("values".into(), Json::Array(values));
    }
    Json::Object(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `level=strong` is answered only while the store's lease holds;
    /// `weak` reads the active's database either way. (A node whose lease
    /// runs out soon stops serving altogether; this is the moment between.)
    #[test]
    fn a_strong_read_needs_the_lease_and_a_weak_one_does_not() {
        let tmp = tempfile::tempdir().unwrap();
        Store::init(tmp.path()).unwrap();
        let fence = Arc::new(shipper::Fence::new());
        fence.extend(Instant::now() + std::time::Duration::from_secs(3600));
        let opts = shipper::StoreOptions {
            fence: Some(fence.clone()),
            ..Default::default()
        };
        let store = Arc::new(Store::open(tmp.path(), opts).unwrap());
        let api = Api {
            node: "alpha".into(),
            data_dir: tmp.path().to_path_buf(),
            serving: Arc::new(Mutex::new(Some(store))),
            snapshot: Default::default(),
            peers: Vec::new(),
            tls: None,
            forwarder: Default::default(),
            users: None,
            timeout: std::time::Duration::from_secs(5),
        };
        let get = |level: &str| {
            answer(
                &api,
                Request {
                    method: Method::Get,
                    url: format!("/db/query?q=SELECT%2042&level={level}"),
                    headers: Vec::new(),
                    body: Vec::new(),
                },
            )
        };
        let r = get("strong");
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(r.body.contains("42"), "{}", r.body);
        fence.revoke();
        let r = get("strong");
        assert_eq!(r.status, 503, "{}", r.body);
        assert!(
            r.body
                .contains("node alpha cannot confirm it is still active"),
            "{}",
            r.body
        );
        assert!(r.headers.iter().any(|(k, _)| k == "Retry-After"));
        let r = get("weak");
        assert_eq!(r.status, 200, "{}", r.body);
    }

    #[test]
    fn the_three_statement_forms_parse_and_bad_ones_say_why() {
        let s = parse_statements(
            br#"["CREATE TABLE t (id INTEGER)", ["INSERT INTO t VALUES (?, ?)", 1, "a"], ["SELECT :x", {"x": 2.5}]]"#,
        )
        .unwrap();
        assert_eq!(s[0].params, Params::None);
        assert_eq!(
            s[1].params,
            Params::Positional(vec![Value::Integer(1), Value::Text("a".into())])
        );
        assert_eq!(
            s[2].params,
            Params::Named(vec![("x".into(), Value::Real(2.5))])
        );
        for (bad, why) in [
            (&b"{}"[..], "JSON array"),
            (b"[1]", "neither a string"),
            (b"[[1]]", "first element"),
            (b"nope", "not JSON"),
            (br#"[["SELECT ?", {"a": 1}, 2]]"#, "an object"),
        ] {
            let e = parse_statements(bad).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
    }

    #[test]
    fn query_strings_decode() {
        let (path, p) = split_url("/db/query?q=SELECT%20*%20FROM+t&level=none&pretty");
        assert_eq!(path, "/db/query");
        assert_eq!(
            p,
            vec![
                ("q".into(), "SELECT * FROM t".into()),
                ("level".into(), "none".into()),
                ("pretty".into(), String::new())
            ]
        );
    }
}
