//! SQL over HTTP in rqlite's dialect, against a real two-node cluster:
//! curl for each endpoint and shape, and pyrqlite (from PyPI, installed by
//! tools/test.sh into target/python) through its DB-API.

mod common;

use std::process::Command;

use common::trio::{Trio, free_tcp_port, ground};

/// A running pair whose nodes serve the API; their addresses.
fn http_pair() -> (Trio, [String; 2]) {
    http_pair_with("")
}

/// `http_pair`, with `extra` in the cluster section.
fn http_pair_with(extra: &str) -> (Trio, [String; 2]) {
    let (dir, w, hb) = ground();
    let http = [
        format!("127.0.0.1:{}", free_tcp_port()),
        format!("127.0.0.1:{}", free_tcp_port()),
    ];
    let cluster = format!(
        "witness = \"{}\"\nseal-after = \"200ms\"\n{extra}",
        w.display()
    );
    let t = Trio::custom_full(
        dir,
        &cluster,
        hb,
        None,
        [
            format!("http = \"{}\"\n", http[0]),
            format!("http = \"{}\"\n", http[1]),
        ],
        "",
    );
    (t, http)
}

/// `curl ARGS`: the status code and the body.
fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

fn execute(addr: &str, query: &str, body: &str) -> (u16, String) {
    curl(&[
        "-XPOST",
        &format!("http://{addr}/db/execute{query}"),
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        body,
    ])
}

#[test]
fn curl_gets_rqlites_shapes_and_a_passive_forwards_or_redirects_writes() {
    let (t, http) = http_pair();
    let (alpha, _beta) = t.running_pair();
    let (code, body) = execute(
        &http[0],
        "?transaction",
        r#"[["INSERT INTO t VALUES (?, ?)", 1, "one"], ["INSERT INTO t VALUES (:id, :v)", {"id": 2, "v": "two"}]]"#,
    );
    assert_eq!(code, 200, "{body}");
    let v = json(&body);
    assert_eq!(v["results"][0]["last_insert_id"], 1, "{v}");
    assert_eq!(v["results"][0]["rows_affected"], 1, "{v}");
    assert_eq!(v["results"][1]["last_insert_id"], 2, "{v}");
    let (code, body) = curl(&[
        "-G",
        &format!("http://{}/db/query", http[0]),
        "--data-urlencode",
        "q=SELECT id, v FROM t ORDER BY id",
        "--data-urlencode",
        "timings",
    ]);
    assert_eq!(code, 200, "{body}");
    let v = json(&body);
    let r = &v["results"][0];
    assert_eq!(r["columns"], serde_json::json!(["id", "v"]), "{v}");
    assert_eq!(r["types"], serde_json::json!(["integer", "text"]), "{v}");
    assert_eq!(
        r["values"],
        serde_json::json!([[1, "one"], [2, "two"]]),
        "{v}"
    );
    assert!(v["time"].as_f64().is_some(), "{v}");
    // One request, one transaction: an error rolls the whole of it back.
    let (code, body) = execute(
        &http[0],
        "?transaction",
        r#"["INSERT INTO t VALUES (3, 'three')", "INSERT INTO nope VALUES (1)"]"#,
    );
    assert_eq!(code, 200, "{body}");
    let v = json(&body);
    assert!(
        v["results"][1]["error"]
            .as_str()
            .is_some_and(|e| e.contains("no such table")),
        "{v}"
    );
    assert_eq!(t.ids("alpha"), [1, 2]);
    // Without ?transaction, as rqlite: the failing statement answers its
    // error alone (its own changes undone), the others commit.
    let (code, body) = execute(
        &http[0],
        "",
        r#"["INSERT INTO t VALUES (3, 'three')", "INSERT INTO t VALUES (1, 'again')",
            "INSERT INTO t VALUES (4, 'four')"]"#,
    );
    assert_eq!(code, 200, "{body}");
    let v = json(&body);
    assert_eq!(v["results"][0]["last_insert_id"], 3, "{v}");
    assert!(
        v["results"][1]["error"]
            .as_str()
            .is_some_and(|e| e.contains("UNIQUE")),
        "{v}"
    );
    assert_eq!(v["results"][2]["last_insert_id"], 4, "{v}");
    assert_eq!(t.ids("alpha"), [1, 2, 3, 4]);
    let (code, body) = execute(&http[0], "", r#"["DELETE FROM t WHERE id > 2"]"#);
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["results"][0]["rows_affected"], 2, "{body}");
    // A statement that writes nothing affected no rows (not the count of
    // the write before it).
    let (code, body) = execute(
        &http[0],
        "",
        r#"["UPDATE t SET v = v WHERE id = 1", "SELECT count(*) FROM t"]"#,
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["results"][0]["rows_affected"], 1, "{body}");
    assert_eq!(json(&body)["results"][1]["rows_affected"], 0, "{body}");
    // A malformed body is a 400 that says why.
    let (code, body) = execute(&http[0], "", "{}");
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("JSON array"), "{body}");
    // The passive: reads of its copy at level none; writes go to the active.
    t.ok("alpha", &["seal"]);
    t.wait_for("beta to hold rows 1 and 2", 30, || t.ids("beta") == [1, 2]);
    let (code, body) = curl(&[
        "-G",
        &format!("http://{}/db/query", http[1]),
        "--data-urlencode",
        "q=SELECT count(*) AS n FROM t",
        "--data-urlencode",
        "level=none",
    ]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        json(&body)["results"][0]["values"],
        serde_json::json!([[2]])
    );
    // A write to the passive is forwarded to the active, as rqlite's
    // followers do; with ?redirect it is a 301 to the active.
    let (code, body) = execute(&http[1], "", r#"["INSERT INTO t VALUES (4, 'four')"]"#);
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["results"][0]["rows_affected"], 1, "{body}");
    assert_eq!(t.ids("alpha"), [1, 2, 4]);
    let headers = Command::new("curl")
        .args(["-s", "-D", "-", "-o", "/dev/null", "-XPOST", "--data", "[]"])
        .arg(format!("http://{}/db/execute?redirect", http[1]))
        .output()
        .unwrap();
    let headers = String::from_utf8_lossy(&headers.stdout).to_ascii_lowercase();
    assert!(headers.starts_with("http/1.1 301"), "{headers}");
    assert!(
        headers.contains(&format!("location: http://{}/db/execute?redirect", http[0])),
        "{headers}"
    );
    // A copy too stale for the reader's bound says by how much.
    let (code, body) = curl(&[
        "-G",
        &format!("http://{}/db/query", http[1]),
        "--data-urlencode",
        "q=SELECT 1",
        "--data-urlencode",
        "level=none",
        "--data-urlencode",
        "freshness=1ns",
    ]);
    assert_eq!(code, 200, "{body}");
    assert!(
        json(&body)["results"][0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("stale read") && e.contains("freshness 1ns")),
        "{body}"
    );
    // /db/request: reads and writes in one transaction; ?associative rows.
    let (code, body) = curl(&[
        "-XPOST",
        &format!("http://{}/db/request?associative", http[0]),
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        r#"[["INSERT INTO t VALUES (?, ?)", 5, "five"], "SELECT id, v FROM t WHERE id = 5"]"#,
    ]);
    assert_eq!(code, 200, "{body}");
    let v = json(&body);
    assert_eq!(v["results"][0]["last_insert_id"], 5, "{v}");
    assert_eq!(
        v["results"][1]["rows"],
        serde_json::json!([{"id": 5, "v": "five"}]),
        "{v}"
    );
    assert_eq!(v["results"][1]["types"]["v"], "text", "{v}");
    let (code, body) = curl(&[&format!("http://{}/nodes", http[1])]);
    assert_eq!(code, 200, "{body}");
    let v = json(&body);
    assert_eq!(v["alpha"]["leader"], true, "{v}");
    assert_eq!(v["beta"]["api_addr"], format!("http://{}", http[1]), "{v}");
    let (code, body) = curl(&[&format!("http://{}/readyz", http[1])]);
    assert_eq!(code, 200, "{body}");
    let (code, body) = curl(&[&format!("http://{}/status?pretty", http[0])]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["logship"]["role"], "active", "{body}");
    // No node active (beta paused, so it will not take over; alpha
    // killed): a write to beta is a 503 with Retry-After, not a hang.
    t.ok("beta", &["pause-node"]);
    drop(alpha);
    t.wait_for("beta to know alpha is gone", 30, || {
        t.status("beta")["active_node"].is_null()
    });
    let out = Command::new("curl")
        .args([
            "-s",
            "-D",
            "-",
            "-XPOST",
            "--data",
            r#"["INSERT INTO t VALUES (9, 'x')"]"#,
        ])
        .arg(format!("http://{}/db/execute", http[1]))
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 503"), "{answer}");
    assert!(answer.contains("retry-after: 1"), "{answer}");
    assert!(answer.contains("no active node is known"), "{answer}");
}

const PYRQLITE: &str = r#"
import sys
sys.path.insert(0, sys.argv[3])
import pyrqlite.dbapi2 as dbapi2
conn = dbapi2.connect(host=sys.argv[1], port=int(sys.argv[2]))
cur = conn.cursor()
cur.execute("CREATE TABLE foo (id integer NOT NULL PRIMARY KEY, name text, score real)")
cur.execute("INSERT INTO foo (name, score) VALUES (?, ?)", ("a", 1.5))
assert cur.lastrowid == 1, cur.lastrowid
cur.execute("INSERT INTO foo (name, score) VALUES (:name, :score)", {"name": "b", "score": 2.5})
assert cur.lastrowid == 2, cur.lastrowid
cur.executemany("INSERT INTO foo (name, score) VALUES (?, ?)", [("c", 3.0), ("d", 4.0)])
cur.execute("SELECT id, name, score FROM foo ORDER BY id")
rows = [tuple(r) for r in cur.fetchall()]
assert rows == [(1, "a", 1.5), (2, "b", 2.5), (3, "c", 3.0), (4, "d", 4.0)], rows
assert [type(x) for x in rows[0]] == [int, str, float], rows
cur.execute("UPDATE foo SET score = 0 WHERE id > 2")
assert cur.rowcount == 2, cur.rowcount
cur.execute("DELETE FROM foo WHERE id = 1")
assert cur.rowcount == 1, cur.rowcount
try:
    cur.execute("INSERT INTO nope VALUES (1)")
    raise SystemExit("an error was not raised")
except dbapi2.Error as e:
    assert "no such table" in str(e), e
# A misuse of parameters is a ProgrammingError (pyrqlite binds them on
# the client; an error the server reports is its base class, Error).
for bad in [("INSERT INTO foo (name) VALUES (?)", ("x", "y")),
            ("INSERT INTO foo (name) VALUES (:name)", {"other": 1})]:
    try:
        cur.execute(*bad)
        raise SystemExit("no ProgrammingError for %r" % (bad,))
    except dbapi2.ProgrammingError:
        pass
print("ok")
"#;

#[test]
fn pyrqlite_drives_the_active_through_its_db_api() {
    let (t, http) = http_pair();
    let _nodes = t.running_pair();
    let lib = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/python");
    assert!(
        lib.join("pyrqlite").is_dir(),
        "pyrqlite is not in {}: tools/test.sh installs it",
        lib.display()
    );
    let (host, port) = common::trio::split_addr(&http[0]);
    let out = t.python(PYRQLITE, &[&host, &port, lib.to_str().unwrap()]);
    assert_eq!(out.trim(), "ok");
    assert_eq!(
        t.ok("alpha", &["sql", "--read", "SELECT count(*) FROM foo"])
            .lines()
            .last(),
        Some("3")
    );
}

const SQLALCHEMY: &str = r#"
import sys
sys.path.insert(0, sys.argv[3])
from sqlalchemy import Column, Integer, String, create_engine, select
from sqlalchemy.orm import Session, declarative_base
engine = create_engine("rqlite+pyrqlite://%s:%s/" % (sys.argv[1], sys.argv[2]))
Base = declarative_base()
class User(Base):
    __tablename__ = "users"
    id = Column(Integer, primary_key=True)
    name = Column(String(50), nullable=False)
Base.metadata.create_all(engine)
with Session(engine) as s:
    s.add_all([User(name="ann"), User(name="bob")])
    s.commit()
    bob = s.scalars(select(User).where(User.name == "bob")).one()
    assert bob.id == 2, bob.id
    bob.name = "bobby"
    s.commit()
    s.delete(s.get(User, 1))
    s.commit()
    names = [u.name for u in s.scalars(select(User).order_by(User.id))]
    assert names == ["bobby"], names
print("ok")
"#;

/// SQLAlchemy with the sqlalchemy-rqlite dialect: `create_all`, then an
/// ORM insert, query, update and delete.
#[test]
fn sqlalchemy_runs_create_all_and_an_orm_round_trip() {
    let (t, http) = http_pair();
    let _nodes = t.running_pair();
    let lib = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/python");
    assert!(
        lib.join("sqlalchemy_rqlite").is_dir(),
        "sqlalchemy-rqlite is not in {}: tools/test.sh installs it",
        lib.display()
    );
    let (host, port) = common::trio::split_addr(&http[0]);
    let out = t.python(SQLALCHEMY, &[&host, &port, lib.to_str().unwrap()]);
    assert_eq!(out.trim(), "ok");
    assert_eq!(
        t.ok("alpha", &["sql", "--read", "SELECT name FROM users"])
            .lines()
            .last(),
        Some("bobby")
    );
}

const PYRQLITE_LOAD: &str = r#"
import sys, time
sys.path.insert(0, sys.argv[3])
import pyrqlite.dbapi2 as dbapi2
log = open(sys.argv[4], "a", buffering=1)
conn = dbapi2.connect(host=sys.argv[1], port=int(sys.argv[2]))
cur = conn.cursor()
for i in range(1, int(sys.argv[5]) + 1):
    deadline = time.time() + 60
    while True:
        try:
            cur.execute("INSERT OR REPLACE INTO t VALUES (?, ?)", (i, "p"))
            log.write("%d\n" % i)
            break
        except dbapi2.Error as e:
            if time.time() > deadline:
                raise
            time.sleep(0.05)
"#;

/// pyrqlite on the passive's API (which forwards to the active) through a
/// SIGKILL of the active: the client retries what was not acknowledged,
/// and every row it saw acknowledged is on the new active.
#[test]
fn pyrqlite_writes_through_a_sigkill_failover_and_loses_no_acknowledged_row() {
    let (t, http) = http_pair();
    let (alpha, _beta) = t.running_pair();
    let mut alpha = Some(alpha);
    let lib = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/python");
    let log = t.dir.path().join("acked.txt");
    let (host, port) = common::trio::split_addr(&http[1]);
    let mut client = Command::new("python3")
        .args(["-c", PYRQLITE_LOAD, &host, &port, lib.to_str().unwrap()])
        .arg(&log)
        .arg("150")
        .spawn()
        .unwrap();
    let acked = || -> Vec<u64> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.parse().ok())
            .collect()
    };
    t.wait_for("the client to have 40 rows acknowledged", 60, || {
        acked().len() >= 40
    });
    let mut d = alpha.take().unwrap();
    d.0.kill().unwrap();
    d.0.wait().unwrap();
    t.wait_for("beta active", 30, || t.status("beta")["role"] == "active");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    let status = loop {
        if let Some(s) = client.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the client did not finish\n{}",
            t.dump()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.success(), "the client failed\n{}", t.dump());
    let acked = acked();
    assert_eq!(acked.len(), 150, "{acked:?}");
    let have: std::collections::BTreeSet<u64> = t.ids("beta").into_iter().collect();
    let missing: Vec<&u64> = acked.iter().filter(|i| !have.contains(i)).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but missing: {missing:?}\n{}",
        t.dump()
    );
}

/// Basic authentication from rqlite's users file: no or wrong credentials
/// are a 401, a missing permission a 403; a passive forwards the client's
/// credentials with its write. A users file others can read is refused.
#[test]
fn the_users_file_decides_who_may_execute_and_query() {
    use std::os::unix::fs::PermissionsExt;
    let users_dir = tempfile::tempdir().unwrap();
    let users = users_dir.path().join("users.json");
    std::fs::write(
        &users,
        r#"[{"username": "alice", "password": "s3cret-a", "perms": ["all"]},
            {"username": "reader", "password": "s3cret-r", "perms": ["query"]}]"#,
    )
    .unwrap();
    std::fs::set_permissions(&users, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (t, http) = http_pair_with(&format!("http-users = \"{}\"\n", users.display()));
    let nodes = t.running_pair();
    let insert = r#"["INSERT INTO t VALUES (1, 'a')"]"#;
    let as_user = |user: &str, node: usize, body: &str| {
        curl(&[
            "-u",
            user,
            "-XPOST",
            &format!("http://{}/db/execute", http[node]),
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            body,
        ])
    };
    let (code, body) = execute(&http[0], "", insert);
    assert_eq!(code, 401, "{body}");
    let (code, body) = as_user("alice:wrong", 0, insert);
    assert_eq!(code, 401, "{body}");
    let (code, body) = as_user("reader:s3cret-r", 0, insert);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("\"execute\""), "{body}");
    let (code, body) = as_user("alice:s3cret-a", 1, insert);
    assert_eq!(code, 200, "forwarded by the passive: {body}");
    let (code, body) = curl(&[
        "-u",
        "reader:s3cret-r",
        "-G",
        &format!("http://{}/db/query", http[0]),
        "--data-urlencode",
        "q=SELECT v FROM t",
    ]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        json(&body)["results"][0]["values"],
        serde_json::json!([["a"]])
    );
    // Readable by others: the node refuses to start, naming the file.
    drop(nodes);
    std::fs::set_permissions(&users, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = t.cmd("alpha", &["node"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("users.json"), "{err}");
}

/// A read that runs past `[cluster] http-timeout` is interrupted, and the
/// answer names the limit.
#[test]
fn a_read_or_a_write_past_the_time_limit_is_interrupted_and_says_so() {
    let (t, http) = http_pair_with("http-timeout = \"300ms\"\n");
    let _nodes = t.running_pair();
    let (code, body) = curl(&[
        "-G",
        &format!("http://{}/db/query", http[0]),
        "--data-urlencode",
        "q=WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c",
    ]);
    assert_eq!(code, 200, "{body}");
    let e = json(&body)["results"][0]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(e.contains("interrupted") && e.contains("300ms"), "{body}");
    // A write too: its statements run on the store's writer, which stops
    // them at the limit and rolls the request back; the store goes on.
    let (code, body) = execute(
        &http[0],
        "?transaction",
        r#"["INSERT INTO t VALUES (1, 'kept?')",
            "INSERT INTO t SELECT x + 1, 'x' FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c)"]"#,
    );
    assert_eq!(code, 200, "{body}");
    let e = json(&body)["results"][1]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(e.contains("interrupted") && e.contains("300ms"), "{body}");
    assert!(t.ids("alpha").is_empty(), "the request was rolled back");
    let (code, body) = execute(&http[0], "", r#"["INSERT INTO t VALUES (2, 'two')"]"#);
    assert_eq!(code, 200, "{body}");
    assert_eq!(t.ids("alpha"), [2]);
}

/// Sixteen keep-alive clients at once, each with its own connection: every
/// request is answered (a server whose thread pool lost a wake-up under
/// such a burst once left connections unread for good).
#[test]
fn sixteen_keep_alive_clients_at_once_are_all_answered() {
    let (t, http) = http_pair();
    let _nodes = t.running_pair();
    let url = format!("http://{}/db/execute", http[0]);
    let clients: Vec<_> = (0..16u64)
        .map(|c| {
            let url = url.clone();
            std::thread::spawn(move || {
                let agent = ureq::Agent::new_with_config(
                    ureq::Agent::config_builder()
                        .http_status_as_error(false)
                        .timeout_global(Some(std::time::Duration::from_secs(30)))
                        .build(),
                );
                for i in 0..25u64 {
                    let id = c * 1000 + i;
                    let body = format!(r#"[["INSERT INTO t VALUES (?, 'k')", {id}]]"#);
                    let mut r = agent
                        .post(&url)
                        .header("Content-Type", "application/json")
                        .send(body.as_bytes())
                        .unwrap_or_else(|e| panic!("client {c}, request {i}: {e}"));
                    let text = r.body_mut().read_to_string().unwrap();
                    assert_eq!(r.status().as_u16(), 200, "{text}");
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("a client failed");
    }
    assert_eq!(t.ids("alpha").len(), 16 * 25);
}

/// The rows of `sql` on the node at `addr`, read at level `none` (its own
/// database), as rqlite's `values`.
fn rows(addr: &str, sql: &str) -> serde_json::Value {
    let (code, body) = curl(&[
        "-G",
        &format!("http://{addr}/db/query"),
        "--data-urlencode",
        &format!("q={sql}"),
        "--data-urlencode",
        "level=none",
    ]);
    assert_eq!(code, 200, "{sql}: {body}");
    let v = json(&body);
    assert!(v["results"][0]["error"].is_null(), "{sql}: {body}");
    v["results"][0]["values"].clone()
}

/// Django-shaped tables (`AUTOINCREMENT`), a table with no key and an FTS5
/// table, written over HTTP on the active, which is then SIGKILLed: the new
/// active has the same rows under the same rowids, the same
/// `sqlite_sequence` and the same `MATCH` answers; its next id follows the
/// old active's counter, and `verify-copy` is equal on both nodes once the
/// old active rejoins.
#[test]
fn django_keyless_and_fts5_tables_come_through_a_sigkill_failover_equal() {
    let (t, http) = http_pair();
    let (alpha, _beta) = t.running_pair();
    for body in [
        r#"["CREATE TABLE \"app_note\" (\"id\" integer NOT NULL PRIMARY KEY AUTOINCREMENT, \"title\" varchar(100) NOT NULL)",
            "CREATE TABLE \"app_tag\" (\"id\" integer NOT NULL PRIMARY KEY AUTOINCREMENT, \"note_id\" bigint NOT NULL REFERENCES \"app_note\" (\"id\") DEFERRABLE INITIALLY DEFERRED)",
            "CREATE TABLE events (at TEXT, what TEXT)",
            "CREATE VIRTUAL TABLE search USING fts5(subject, body)"]"#,
        r#"[["INSERT INTO app_note (title) VALUES (?)", "one"],
            ["INSERT INTO app_note (title) VALUES (?)", "two"],
            ["INSERT INTO app_note (title) VALUES (?)", "three"],
            ["INSERT INTO app_tag (note_id) VALUES (?)", 1],
            ["INSERT INTO events VALUES (?, ?)", "t1", "x"],
            ["INSERT INTO events VALUES (?, ?)", "t1", "x"],
            ["INSERT INTO events VALUES (?, ?)", "t2", "y"],
            ["INSERT INTO search (subject, body) VALUES (?, ?)", "hello", "world of mail"],
            ["INSERT INTO search (subject, body) VALUES (?, ?)", "invoice", "please pay"],
            ["INSERT INTO search (subject, body) VALUES (?, ?)", "lunch", "hello again"]]"#,
        r#"["DELETE FROM app_note WHERE id = 3",
            "UPDATE events SET what = 'z' WHERE rowid = 2",
            "DELETE FROM events WHERE rowid = 1",
            "DELETE FROM search WHERE subject = 'invoice'",
            "INSERT INTO search (search) VALUES ('optimize')"]"#,
    ] {
        let (code, out) = execute(&http[0], "?transaction", body);
        assert_eq!(code, 200, "{out}");
        assert!(
            json(&out)["results"]
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r["error"].is_null()),
            "{body}: {out}"
        );
    }
    let reads = [
        "SELECT name, seq FROM sqlite_sequence ORDER BY name",
        "SELECT id, title FROM app_note ORDER BY id",
        "SELECT rowid, at, what FROM events ORDER BY rowid",
        "SELECT rowid, subject FROM search WHERE search MATCH 'hello' ORDER BY rowid",
        "SELECT rowid FROM search WHERE search MATCH 'mail OR pay' ORDER BY rowid",
    ];
    let on_alpha: Vec<serde_json::Value> = reads.iter().map(|q| rows(&http[0], q)).collect();
    assert_eq!(
        on_alpha[0],
        serde_json::json!([["app_note", 3], ["app_tag", 1]])
    );
    assert_eq!(on_alpha[3], serde_json::json!([[1, "hello"], [3, "lunch"]]));
    let mut d = alpha;
    d.0.kill().unwrap();
    d.0.wait().unwrap();
    t.wait_for("beta active", 30, || t.status("beta")["role"] == "active");
    let on_beta: Vec<serde_json::Value> = reads.iter().map(|q| rows(&http[1], q)).collect();
    assert_eq!(on_beta, on_alpha, "{}", t.dump());
    // The next id follows the counter, not the highest row left (2).
    let (code, out) = execute(
        &http[1],
        "",
        r#"["INSERT INTO app_note (title) VALUES ('four')"]"#,
    );
    assert_eq!(code, 200, "{out}");
    assert_eq!(json(&out)["results"][0]["last_insert_id"], 4, "{out}");
    let out = t.ok("beta", &["verify-copy"]);
    assert!(out.contains("verdict equal"), "verify-copy on beta: {out}");
    let _alpha = t.rejoin_and_verify("alpha", "beta");
    assert_eq!(
        rows(
            &http[0],
            "SELECT name, seq FROM sqlite_sequence ORDER BY name"
        ),
        serde_json::json!([["app_note", 4], ["app_tag", 1]])
    );
}

/// With `http-cert` and `http-key` the API speaks TLS only: curl trusting
/// the certificate gets answers, without it fails verification, and plain
/// HTTP gets none; a passive forwards a write to the active over TLS, and
/// `/nodes` gives `https` addresses.
#[test]
fn with_a_certificate_the_api_speaks_tls_and_a_passive_forwards_over_it() {
    use std::os::unix::fs::PermissionsExt;
    let tls = tempfile::tempdir().unwrap();
    let p = |f: &str| tls.path().join(f).to_str().unwrap().to_string();
    let (ca, ca_key, cert, key, csr, ext) = (
        p("ca.pem"),
        p("ca-key.pem"),
        p("cert.pem"),
        p("key.pem"),
        p("node.csr"),
        p("ext.cnf"),
    );
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    for args in [
        // A CA, and the nodes' certificate signed by it.
        &[
            &["req", "-x509"][..],
            &ec,
            &["-days", "2", "-subj", "/CN=logship test CA"],
            &["-keyout", &ca_key, "-out", &ca],
        ][..],
        &[
            &["req"][..],
            &ec,
            &["-subj", "/CN=logship-node", "-keyout", &key, "-out", &csr],
        ],
        &[
            &["x509", "-req", "-in", &csr, "-CA", &ca, "-CAkey", &ca_key][..],
            &[
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &ext,
                "-out",
                &cert,
            ],
        ],
    ] {
        let args: Vec<&str> = args.concat();
        let out = Command::new("openssl")
            .args(&args)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (cert, key) = (
        std::path::PathBuf::from(cert),
        std::path::PathBuf::from(key),
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (dir, w, hb) = ground();
    let http = [
        format!("127.0.0.1:{}", free_tcp_port()),
        format!("127.0.0.1:{}", free_tcp_port()),
    ];
    let node = |addr: &str| {
        format!(
            "http = \"{addr}\"\nhttp-cert = \"{}\"\nhttp-key = \"{}\"\n",
            cert.display(),
            key.display()
        )
    };
    let t = Trio::custom_full(
        dir,
        &format!(
            "witness = \"{}\"\nseal-after = \"200ms\"\nhttp-ca = \"{ca}\"\n",
            w.display()
        ),
        hb,
        None,
        [node(&http[0]), node(&http[1])],
        "",
    );
    let (alpha, _beta) = t.running_pair();
    let cacert = ca.as_str();
    let post = |addr: &str, body: &str, trust: bool| {
        let url = format!("https://{addr}/db/execute");
        let mut args = vec![
            "-XPOST",
            url.as_str(),
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            body,
        ];
        if trust {
            args.extend(["--cacert", cacert]);
        }
        curl(&args)
    };
    let (code, body) = post(&http[0], r#"["INSERT INTO t VALUES (1, 'one')"]"#, true);
    assert_eq!(code, 200, "{body}");
    // Untrusted: curl refuses the certificate (no answer, code 0).
    let (code, _) = post(&http[0], r#"["INSERT INTO t VALUES (2, 'two')"]"#, false);
    assert_eq!(code, 0);
    // Plain HTTP on the TLS port: no HTTP answer.
    let (code, _) = execute(&http[0], "", r#"["INSERT INTO t VALUES (3, 'three')"]"#);
    assert_ne!(code, 200);
    // The passive forwards over TLS, trusting the cluster's CA.
    let (code, body) = post(&http[1], r#"["INSERT INTO t VALUES (4, 'four')"]"#, true);
    assert_eq!(code, 200, "{body}\n{}", t.dump());
    assert_eq!(t.ids("alpha"), [1, 4]);
    let (code, body) = curl(&["--cacert", cacert, &format!("https://{}/nodes", http[1])]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        json(&body)["alpha"]["api_addr"],
        format!("https://{}", http[0]),
        "{body}"
    );
    // A key others can read is refused at start, naming the file.
    drop(alpha);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = t.cmd("alpha", &["node"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("key.pem") && err.contains("TLS"), "{err}");
}

/// A long read on a copy (`level=none`) does not hold replay back: the
/// copy's database is in WAL mode, where a reader never blocks the writer,
/// and the read itself ends at the time limit.
#[test]
fn a_long_read_on_a_copy_does_not_hold_replay_back() {
    let (t, http) = http_pair_with("http-timeout = \"8s\"\n");
    let _nodes = t.running_pair();
    let url = format!("http://{}/db/query", http[1]);
    let started = std::time::Instant::now();
    let reader = std::thread::spawn(move || {
        let answer = curl(&[
            "-G",
            &url,
            "--data-urlencode",
            "q=WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c",
            "--data-urlencode",
            "level=none",
        ]);
        (answer, started.elapsed())
    });
    for id in 1..=20 {
        t.write("alpha", id);
    }
    t.ok("alpha", &["seal"]);
    t.wait_for("beta to replay the 20 rows during the read", 30, || {
        t.ids("beta").len() == 20
    });
    let replayed_after = started.elapsed();
    let ((code, body), read_took) = reader.join().unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(
        json(&body)["results"][0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("interrupted")),
        "{body}"
    );
    assert!(
        replayed_after < read_took,
        "replay ({replayed_after:?}) waited for the read ({read_took:?})"
    );
}
