//! The command line, run as a user would: init, sql (one transaction,
//! --each, --read), verify, dump, seal, verify-copy, and the clear errors for
//! bad configs, refused tables, failing SQL and damaged segments.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::Cluster;

fn logship(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_logship"))
        .args(args)
        .output()
        .unwrap()
}

fn sealed_segments(c: &Cluster) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(c.logs())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("LS0"))
        .collect();
    v.sort();
    v
}

fn lsn_of(c: &Cluster) -> u64 {
    let out = c.ok(&["verify-copy"]);
    out.lines()
        .find_map(|l| l.strip_prefix("lsn "))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn init_prints_the_database_id_and_refuses_a_second_init() {
    let c = Cluster::new();
    let id = c.ok(&["init"]);
    let id = id.trim();
    assert_eq!(id.len(), 36, "a database id like 01234567-89ab-...: {id}");
    let err = c.err(&["init"]);
    assert!(err.contains("already holds a logship database"), "{err}");
}

#[test]
fn config_errors_name_the_key_the_node_and_the_file() {
    let c = Cluster::new();
    let text = std::fs::read_to_string(&c.config).unwrap();
    std::fs::write(&c.config, text.replace("seal-after", "seal-aftre")).unwrap();
    let err = c.err(&["init"]);
    assert!(
        err.contains("seal-aftre") && err.contains("logship.toml"),
        "{err}"
    );

    let c = Cluster::new();
    let out = Command::new(env!("CARGO_BIN_EXE_logship"))
        .args(["init", "--config"])
        .arg(&c.config)
        .args(["--node", "gamma"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("\"gamma\" is not in the config") && err.contains("alpha"),
        "{err}"
    );

    let out = logship(&[
        "init",
        "--config",
        "/nonexistent/logship.toml",
        "--node",
        "a",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("/nonexistent/logship.toml"),
        "{err}"
    );
}

/// `logship node --node alpha` on `config`, to its end.
fn node_alpha(config: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_logship"))
        .args(["node", "--config"])
        .arg(config)
        .args(["--node", "alpha"])
        .output()
        .unwrap()
}

#[test]
fn a_node_without_a_share_is_refused_at_start_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("logship.toml");
    std::fs::write(
        &config,
        format!(
            "[cluster]\nname = \"c\"\nwitness = \"{w}\"\n\
             [nodes.alpha]\ndata-dir = \"{w}/alpha\"\nshare = \"{w}/alpha/logs\"\nheartbeat = \"127.0.0.1:1\"\n\
             [nodes.beta]\ndata-dir = \"{w}/beta\"\nheartbeat = \"127.0.0.1:2\"\n",
            w = dir.path().display()
        ),
    )
    .unwrap();
    let out = node_alpha(&config);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("node beta has no `share`"),
        "{err}"
    );
}

/// Synchronous commit needs the file-share witness's records of an active
/// going alone: with an etcd arbiter the node refuses it at start, as a
/// configuration error (exit 3).
#[test]
fn synchronous_commit_with_an_etcd_arbiter_is_refused_at_start_with_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("logship.toml");
    std::fs::write(
        &config,
        format!(
            "[cluster]\nname = \"c\"\narbiter = \"etcd://127.0.0.1:2379/c\"\ncommit = \"remote\"\n\
             [nodes.alpha]\ndata-dir = \"{w}/alpha\"\nshare = \"{w}/a\"\nheartbeat = \"127.0.0.1:1\"\n\
             [nodes.beta]\ndata-dir = \"{w}/beta\"\nshare = \"{w}/b\"\nheartbeat = \"127.0.0.1:2\"\n\
             [nodes.gamma]\ndata-dir = \"{w}/gamma\"\nshare = \"{w}/g\"\nheartbeat = \"127.0.0.1:3\"\n",
            w = dir.path().display()
        ),
    )
    .unwrap();
    let out = node_alpha(&config);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("commit = \"remote\"") && err.contains("etcd arbiter"),
        "{err}"
    );
}

#[test]
fn sql_runs_one_logged_transaction_and_read_prints_tsv() {
    let c = Cluster::new();
    c.ok(&["init"]);
    let out = c.ok(&[
        "sql",
        "CREATE TABLE m (id INTEGER PRIMARY KEY, who TEXT NOT NULL, body BLOB, score REAL); \
         INSERT INTO m VALUES (1, 'a\tb', x'00ff', 1.0), (2, 'line\nbreak', NULL, 2.5);",
    ]);
    assert_eq!(out.trim(), "ok 1", "one transaction, one record");
    let rows = c.ok(&[
        "sql",
        "--read",
        "SELECT id, who, body, score FROM m ORDER BY id",
    ]);
    assert_eq!(
        rows,
        "id\twho\tbody\tscore\n1\ta\\tb\t\\x00ff\t1.0\n2\tline\\nbreak\t\\N\t2.5\n"
    );
    // --read refuses writes and logs nothing.
    let err = c.err(&["sql", "--read", "DELETE FROM m"]);
    assert!(err.contains("read-only"), "{err}");
    assert_eq!(lsn_of(&c), 1);
    // The database is a plain SQLite file that the stock client reads.
    let out = Command::new("sqlite3")
        .arg(c.database())
        .arg("SELECT count(*) FROM m")
        .output();
    let out = out.expect("the sqlite3 client is installed by the test command");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2");
}

#[test]
fn sql_each_prints_ok_lsn_after_each_statement() {
    let c = Cluster::new();
    c.ok(&["init"]);
    c.ok(&[
        "sql",
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)",
    ]);
    let file = c.dir.path().join("s.sql");
    std::fs::write(&file, "INSERT INTO t (v) VALUES ('a');\nINSERT INTO t (v) VALUES ('b');\nSELECT count(*) AS n FROM t;\nINSERT INTO t (v) VALUES ('c');\n").unwrap();
    let out = c.ok(&["sql", "--each", "--file", file.to_str().unwrap()]);
    assert_eq!(out, "ok 2\nok 3\nn\n2\nok 3\nok 4\n");
}

#[test]
fn sql_that_fails_halfway_rolls_back_everything_and_logs_nothing() {
    let c = Cluster::new();
    c.ok(&["init"]);
    c.ok(&[
        "sql",
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)",
    ]);
    let before = lsn_of(&c);
    let err = c.err(&[
        "sql",
        "INSERT INTO t VALUES (1, 'x'); INSERT INTO t VALUES (2, NULL);",
    ]);
    assert!(err.contains("NOT NULL") && err.contains("t.v"), "{err}");
    assert_eq!(c.read("SELECT count(*) FROM t"), vec!["0"]);
    assert_eq!(lsn_of(&c), before, "no record left behind");
}

#[test]
fn tables_that_cannot_replicate_are_refused_by_name() {
    let c = Cluster::new();
    c.ok(&["init"]);
    for (sql, table, why) in [
        (
            "CREATE TABLE notes (_rowid_ INTEGER, body TEXT)",
            "notes",
            "hides the rowid",
        ),
        (
            "CREATE TABLE tags (name TEXT PRIMARY KEY)",
            "tags",
            "may be NULL",
        ),
    ] {
        let err = c.err(&["sql", sql]);
        assert!(
            err.contains(&format!("table \"{table}\"")) && err.contains(why),
            "{sql}: {err}"
        );
    }
    assert_eq!(lsn_of(&c), 0);
}

#[test]
fn verify_and_dump_read_segments_and_name_every_fault() {
    let c = Cluster::new();
    c.ok(&["init"]);
    c.ok(&[
        "sql",
        "CREATE TABLE att (id INTEGER PRIMARY KEY, data BLOB NOT NULL)",
    ]);
    // A 3 MiB row: fragments across segments.
    c.ok(&["sql", "INSERT INTO att VALUES (1, randomblob(3145728))"]);
    c.ok(&["sql", "INSERT INTO att VALUES (2, x'0102')"]);
    let out = c.ok(&["seal"]);
    assert!(out.starts_with("sealed LS"), "{out}");
    let segs = sealed_segments(&c);
    assert!(segs.len() >= 4, "{segs:?}");
    let names: Vec<&str> = segs.iter().map(|p| p.to_str().unwrap()).collect();
    let mut args = vec!["verify"];
    args.extend(&names);
    let out = logship(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("ok ")).count(),
        segs.len()
    );

    // dump shows the header, the DDL and the fragments.
    let dump = String::from_utf8_lossy(&logship(&["dump", names[0]]).stdout).into_owned();
    assert!(
        dump.contains("generation     0x1") && dump.contains("ddl: CREATE TABLE att"),
        "{dump}"
    );
    assert!(dump.contains("first-fragment"), "{dump}");
    let dump =
        String::from_utf8_lossy(&logship(&["dump", "--changes", names[segs.len() - 1]]).stdout)
            .into_owned();
    assert!(
        dump.contains("Insert att") && dump.contains("last-fragment"),
        "{dump}"
    );

    // One flipped byte in a record: BAD, with file, generation and offset.
    let damaged = c.dir.path().join(segs[1].file_name().unwrap());
    let mut bytes = std::fs::read(&segs[1]).unwrap();
    bytes[5000] ^= 0x01;
    std::fs::write(&damaged, &bytes).unwrap();
    let out = logship(&["verify", damaged.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        stdout.starts_with("BAD") && stdout.contains("generation 0x2") && stdout.contains("offset"),
        "{stdout}"
    );

    // A format version from the future.
    let mut bytes = std::fs::read(&segs[0]).unwrap();
    bytes[8] = 2;
    let v2 = c.dir.path().join(segs[0].file_name().unwrap());
    std::fs::write(&v2, &bytes).unwrap();
    let stdout =
        String::from_utf8_lossy(&logship(&["verify", v2.to_str().unwrap()]).stdout).into_owned();
    assert!(stdout.contains("unsupported format version 2"), "{stdout}");

    // A gap: generations 1 and 3 without 2.
    let out = logship(&["verify", names[0], names[2]]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success() && stdout.contains("gap"), "{stdout}");

    // A segment of another database among ours.
    let other = Cluster::new();
    other.ok(&["init"]);
    other.ok(&["sql", "CREATE TABLE x (id INTEGER PRIMARY KEY)"]);
    other.ok(&["seal"]);
    let foreign = sealed_segments(&other).remove(0);
    let out = logship(&["verify", names[0], foreign.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success() && stdout.contains("belongs to database"),
        "{stdout}"
    );
}

#[test]
fn the_examples_parse_and_their_samba_sections_are_what_share_config_prints() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for node in ["alpha", "beta"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_logship"))
            .args(["share-config", "--node", node, "--config"])
            .arg(root.join("examples/two-node.toml"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let want =
            std::fs::read_to_string(root.join(format!("examples/samba/{node}.conf"))).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            want,
            "examples/samba/{node}.conf is stale"
        );
    }
}

/// A sealed segment whose times (created, sealed, a record's) are past year
/// 9999: every checksum is valid, so `verify` accepts it, and `dump` shows
/// the raw numbers instead of failing.
#[test]
fn dump_shows_times_past_year_9999_as_numbers() {
    use shipper::format::{
        self, Body, Fragment, Record, SEGMENT_SIZE, SegmentHeader, TRAILER_OFFSET, Trailer,
    };
    use shipper::{ContentHash, DatabaseId, Epoch, Generation, Lsn, SchemaHash};

    let dir = tempfile::tempdir().unwrap();
    let header = SegmentHeader {
        database_id: DatabaseId(*b"forged-far-times"),
        epoch: Epoch(2),
        generation: Generation(1),
        created_us: u64::MAX,
        prev_checksum: 0,
        prev_lsn: Lsn(0),
        hash_lsn: Lsn(0),
        base_hash: ContentHash(0),
        schema_hash: SchemaHash(0),
    };
    let record = Record {
        time_us: 253_402_300_800_000_000, // 10000-01-01T00:00:00Z
        hash: ContentHash(7),
        body: Body::Changeset(Vec::new()),
    };
    let mut seg = header.encode().to_vec();
    let mut payload = Vec::new();
    record.encode(&mut payload);
    format::encode_frame(record.kind(), Fragment::Whole, Lsn(1), &payload, &mut seg);
    let records_end = seg.len() as u32;
    seg.resize(TRAILER_OFFSET, 0);
    let trailer = Trailer {
        record_count: 1,
        records_end,
        last_lsn: Lsn(1),
        hash_lsn: Lsn(1),
        hash: record.hash,
        sealed_us: u64::MAX - 1,
        segment_checksum: crc32fast::hash(&seg),
    };
    seg.extend_from_slice(&trailer.encode());
    assert_eq!(seg.len(), SEGMENT_SIZE);
    let path = dir.path().join(format::segment_file_name(Generation(1)));
    std::fs::write(&path, &seg).unwrap();
    let p = path.to_str().unwrap();

    let out = logship(&["verify", p]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = logship(&["dump", p]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout
            .contains("created        18446744073709551615 µs since the Unix epoch (out of range"),
        "{stdout}"
    );
    assert!(
        stdout.contains("state          sealed 18446744073709551614 µs"),
        "{stdout}"
    );
    assert!(
        stdout.contains("time 253402300800000000 µs since the Unix epoch (out of range"),
        "{stdout}"
    );
}

/// Each class of failure exits with its own code (`logship --help`).
#[test]
fn each_class_of_failure_has_its_exit_code() {
    let code = |out: &std::process::Output| out.status.code().unwrap();
    // 2: usage.
    assert_eq!(code(&logship(&["--no-such-flag"])), 2);
    // 3: configuration: no config file, a node not in it.
    let out = logship(&["status", "--config", "/nonexistent/logship.toml"]);
    assert_eq!(code(&out), 3, "{}", String::from_utf8_lossy(&out.stderr));
    let c = Cluster::new();
    let out = Command::new(env!("CARGO_BIN_EXE_logship"))
        .args(["sql", "SELECT 1", "--node", "nosuch", "--config"])
        .arg(&c.config)
        .output()
        .unwrap();
    assert_eq!(code(&out), 3, "{}", String::from_utf8_lossy(&out.stderr));
    // 3 too: a node not initialised.
    let out = c.run(&["sql", "SELECT 1"]);
    assert_eq!(code(&out), 3, "{}", String::from_utf8_lossy(&out.stderr));
    c.ok(&["init"]);
    // 1: a statement the store refuses.
    let out = c.run(&["sql", "BEGIN"]);
    assert_eq!(code(&out), 1, "{}", String::from_utf8_lossy(&out.stderr));
    // 5: the data directory held by another process.
    let holder = common::hold_data_dir(&c.data_dir());
    let out = c.run(&["sql", "CREATE TABLE t (id INTEGER PRIMARY KEY NOT NULL)"]);
    assert_eq!(code(&out), 5, "{}", String::from_utf8_lossy(&out.stderr));
    holder.release();
    // 5: a cluster command with no daemon running.
    let out = c.run(&["pause-node"]);
    assert_eq!(code(&out), 5, "{}", String::from_utf8_lossy(&out.stderr));
    // 4: a damaged segment.
    c.ok(&["sql", "CREATE TABLE t (id INTEGER PRIMARY KEY NOT NULL)"]);
    c.ok(&["seal"]);
    let seg = sealed_segments(&c).pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[200] ^= 0xff;
    let bad = c.dir.path().join("bad.log");
    std::fs::write(&bad, &bytes).unwrap();
    let out = logship(&["verify", bad.to_str().unwrap()]);
    assert_eq!(code(&out), 4, "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(code(&logship(&["verify", seg.to_str().unwrap()])), 0);
}

/// The failpoints that abort the store on purpose are compiled only into
/// test builds: the product's own dependency graph leaves the feature out,
/// so a release binary never reads `LOGSHIP_FAILPOINT`.
#[test]
fn a_release_build_has_no_failpoints() {
    let tree = |edges: &str| {
        let out = Command::new(option_env!("CARGO").unwrap_or("cargo"))
            .args([
                "tree",
                "--offline",
                "-p",
                "logship",
                "-e",
                edges,
                "-f",
                "{p} [{f}]",
            ])
            .arg("--manifest-path")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
            .output()
            .expect("run cargo tree");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let shipper: Vec<String> = text
            .lines()
            .filter(|l| l.contains("shipper v"))
            .map(String::from)
            .collect();
        assert!(!shipper.is_empty(), "no shipper in:\n{text}");
        shipper
    };
    for line in tree("normal,build") {
        assert!(
            !line.contains("failpoints"),
            "the product build has failpoints: {line}"
        );
    }
    // The tests' build has them, or the crash tests would prove nothing.
    assert!(tree("normal,dev").iter().any(|l| l.contains("failpoints")));
}
