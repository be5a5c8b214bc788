//! The `logship` command line: one binary with a subcommand for every job.
//! It parses arguments and the config file, sets up logging, and calls into
//! the library crates; the work itself lives there.

mod bench;
mod bench_copy;
mod bench_failover;
mod bench_mail;
mod bench_rpo;
mod control;
mod copy;
mod daemon;
mod daemons;
mod demo;
mod events;
mod http_api;
mod inspect;
mod metrics;
mod node;
mod node_status;
mod procs;
mod relay_cmd;
mod shares;
mod sql;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use logship::config;

/// Keep a warm copy of a SQLite database on a second node by shipping
/// transaction logs, as Exchange Cluster Continuous Replication does.
///
/// Every write goes through the store: it is captured as a changeset, made
/// durable in a 1 MiB log segment, and only then committed to SQLite. Sealed
/// segments are what a passive copy pulls, verifies and replays.
#[derive(Debug, Parser)]
#[command(
    name = "logship",
    version,
    max_term_width = 100,
    after_help = "Exit codes: 0 success; 1 refused by a check (move-cluster refused, the mount \
dial, a statement the store refuses) or a failure of no other class; 2 usage; 3 configuration \
(the config file, a node not in it, a secret file, a share URL, a node not initialised); \
4 corruption (a damaged or diverged log, copy or state file; verify and verify-copy finding a \
difference); 5 unavailable or fenced (no daemon running, a share or disk failing, a store \
locked, fenced or stopped)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,

    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum MailAction {
    /// Full-text search of the mailbox's subjects and bodies, on this
    /// node's own database: the active, or any copy.
    ///
    /// The query is FTS5's syntax: words are all required (`invoice march`),
    /// `OR` between them, `"an exact phrase"`, `pay*` for a prefix,
    /// `subject:invoice` for one column. Best matches first, one tab-separated
    /// line a message: id, received time, recipient, sender, Message-ID,
    /// subject.
    Search {
        #[command(flatten)]
        node: NodeArgs,
        /// Only this recipient's messages.
        #[arg(long)]
        recipient: Option<String>,
        /// At most this many messages.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// The query (several words are joined with spaces).
        #[arg(required = true)]
        query: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum DumpsterAction {
    /// Queue again every message the relay delivered since a time (the
    /// active node drops those it already holds).
    Redeliver {
        /// An RFC 3339 time, e.g. 2026-11-30T19:00:00Z.
        #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
        since: std::time::SystemTime,
    },
}

/// Which node of which cluster a command acts for.
#[derive(Debug, Args)]
struct NodeArgs {
    /// The cluster config file.
    #[arg(long, env = "LOGSHIP_CONFIG", default_value_os_t = config::default_path())]
    config: PathBuf,
    /// The node this process is (a [nodes.NAME] of the config); defaults to the host name.
    #[arg(long, env = "LOGSHIP_NODE")]
    node: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The whole system on this machine, in under a minute: two nodes, a
    /// witness and the relay on local directories and loopback ports. It
    /// seeds, sends mail, kills the active, shows the failover, brings the
    /// old node back (rewind), moves back, and checks every promise.
    Demo {
        /// Where to put the cluster (default: a new temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Leave the cluster running afterwards, and print what to try.
        #[arg(long)]
        keep: bool,
        /// Messages to send through the relay.
        #[arg(long, default_value_t = 300)]
        messages: usize,
        /// Copies of the store: 2 (the default) is two nodes and a witness
        /// directory; 3 to 5 run that many nodes with a private etcd
        /// arbitrating (Debian: apt-get install etcd-server).
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(2..=5))]
        copies: u8,
    },
    /// Create a node's data directory, database and log; print the database id.
    Init {
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Run SQL through the store: each transaction is logged before it commits.
    ///
    /// By default all statements run as one transaction. Schema statements
    /// (CREATE/ALTER/DROP) are logged as DDL records. Tables that cannot be
    /// replicated faithfully (a nullable key column, a virtual table other
    /// than FTS5, ...) are refused, with the reason; see the README's
    /// "Tables logship can replicate".
    Sql(sql::SqlArgs),
    /// Recompute the content hash of a node's database by a full scan and
    /// compare it with the hash its log holds at the same LSN.
    VerifyCopy {
        #[command(flatten)]
        node: NodeArgs,
    },
    /// The active's daemon: owns the store (sealing full and idle segments),
    /// answers seed requests with snapshots, and truncates the log once every
    /// copy has replayed it.
    ///
    /// While it runs, `logship sql` on this node goes through it. Runs until
    /// SIGTERM or SIGINT.
    Ship {
        #[command(flatten)]
        node: NodeArgs,
    },
    /// The cluster daemon: runs this node's role (active: the store and the
    /// ship duties; passive: the replay daemon), heartbeats the peer, holds
    /// quorum through the witness, fails over when the active is gone, and
    /// fences itself when it loses quorum.
    ///
    /// Needs cluster.witness and both nodes' heartbeat addresses. Runs until
    /// SIGTERM or SIGINT. Its state is in `<data-dir>/node.json`.
    Node {
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Make this passive node active now, when the active is gone: the
    /// copy replays what it can reach, the mount dial is checked, and a new
    /// epoch begins. --force overrides the mount dial (transactions the copy
    /// never received are lost; the dumpster re-delivers mail).
    Activate {
        #[command(flatten)]
        node: NodeArgs,
        /// Activate even if the mount dial forbids it.
        #[arg(long)]
        force: bool,
        /// For a lagged copy (`replay-lag`): replay everything it holds
        /// first, then activate. A lagged copy is never activated without it.
        #[arg(long)]
        play_down: bool,
    },
    /// A planned, lossless move of the active role to another node, as
    /// Move-ClusteredMailboxServer does.
    ///
    /// It checks first and refuses with the reason: the target must be a
    /// Healthy copy (not paused, failed or seeding) with a copy queue of at
    /// most 10 and a replay queue of at most 50, and the witness reachable.
    /// Then the active stops intake, seals, waits until the target has
    /// replayed its last LSN, and hands over the epoch. Prints how long the
    /// handoff took. Run it where the active node runs.
    ///
    /// Past two nodes (etcd arbitrating) the target must be a live, Healthy
    /// copy that is neither paused nor lagged; the active stops taking
    /// writes, records the move in etcd and hands `leader` over, and the
    /// target takes everything from its share before it claims the epoch.
    MoveCluster {
        #[arg(long, env = "LOGSHIP_CONFIG", default_value_os_t = config::default_path())]
        config: PathBuf,
        /// The node to make active; without it, the best copy (position,
        /// then activation-preference), or the only other node.
        #[arg(long)]
        to: Option<String>,
        /// Why (goes into the node's event log).
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Print a node's event log (`<data-dir>/events.jsonl`): role changes,
    /// fencing, failovers with their dial decision, moves, rewinds.
    Events {
        #[command(flatten)]
        node: NodeArgs,
        /// The raw JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// The relay (Exchange's transport dumpster): takes SMTP for the accepted
    /// domains, queues each message durably before answering 250, delivers
    /// over LMTP to the active node, keeps what it delivered for `max-age` /
    /// `max-size`, and re-delivers after a lossy failover.
    ///
    /// Without a subcommand it runs the relay until SIGTERM or SIGINT.
    Dumpster {
        #[arg(long, global = true, env = "LOGSHIP_CONFIG", default_value_os_t = config::default_path())]
        config: PathBuf,
        #[command(subcommand)]
        action: Option<DumpsterAction>,
    },
    /// The mailbox the nodes store mail in.
    Mail {
        #[command(subcommand)]
        action: MailAction,
    },
    /// Pause a node: it keeps its role's duties but never becomes active.
    PauseNode {
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Undo `pause-node`.
    ResumeNode {
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Seed this node's copy from the active: an online snapshot, copied
    /// through the active's share with progress, checked by a full scan.
    ///
    /// Needs `logship ship` running on the active, and `logship replay`
    /// stopped here. Replacing an existing copy needs --force.
    Seed {
        #[command(flatten)]
        node: NodeArgs,
        /// The node to seed from (default: the only other node).
        #[arg(long)]
        from: Option<String>,
        /// Replace an existing copy.
        #[arg(long)]
        force: bool,
        /// How long to wait for the active's snapshot.
        #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// The passive's daemon: copy sealed segments from the active's share,
    /// inspect each one whole, and replay them into this node's copy.
    ///
    /// Runs until SIGTERM or SIGINT. The copy's state is in
    /// `<data-dir>/copy.json`; its status is also published on this node's
    /// share as `copy-status.json`, where the active reads it.
    Replay {
        #[command(flatten)]
        node: NodeArgs,
        /// The node to copy from (default: the only other node).
        #[arg(long)]
        from: Option<String>,
        /// How often to look for a new segment when idle.
        #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
        poll: std::time::Duration,
    },
    /// Copy status, as Exchange's Get-StorageGroupCopyStatus shows it.
    ///
    /// Per copy: SummaryCopyStatus (Healthy, Initializing, Seeding,
    /// Suspended, Failed, Disconnected), copy and replay queue lengths
    /// (CQL = generated − inspected, RQL = inspected − replayed), the last log
    /// generated, copied, inspected and replayed, the last replayed LSN with
    /// its content hash, and the error of a failed copy.
    Status {
        #[arg(long, env = "LOGSHIP_CONFIG", default_value_os_t = config::default_path())]
        config: PathBuf,
        /// Only this node's copy.
        #[arg(long)]
        node: Option<String>,
        /// JSON for machines (snake_case keys).
        #[arg(long)]
        json: bool,
    },
    /// Suspend a copy: copying and replay stop until `resume`. A suspended
    /// copy holds back log truncation on the active.
    Suspend {
        #[command(flatten)]
        node: NodeArgs,
        /// Why (shown by `status`).
        #[arg(long, default_value = "suspended by an operator")]
        reason: String,
    },
    /// Resume a suspended copy, or retry a failed one.
    Resume {
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Print the Samba share definition that exports a node's log directory,
    /// to paste into smb.conf (the test harness uses it too).
    ShareConfig {
        #[command(flatten)]
        node: NodeArgs,
        /// The Samba user allowed to read it (default: the user in the
        /// node's smb:// URL, else `logship`).
        #[arg(long)]
        user: Option<String>,
    },
    /// Seal the node's current segment now (if it holds any record).
    Seal {
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Check log segments, like `eseutil /ml`: one line a file; exit 0 only if all are sound.
    ///
    /// Sealed segments are verified whole (header, every record CRC, LSN
    /// order, zero padding, trailer, segment checksum); the current segment
    /// (LS.log) up to its last record. Files given together are also checked
    /// as a chain: no generation gap, each header's previous-segment checksum.
    Verify {
        /// Segment files (LS<generation>.log, or LS.log).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print a segment's header and records.
    Dump {
        file: PathBuf,
        /// Also decode each changeset into its row changes.
        #[arg(long)]
        changes: bool,
    },
    /// Benchmarks that compare logship with a baseline in the same run.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

fn main() -> ExitCode {
    // First of all: files a daemon creates are private to its user
    // (ARCHITECTURE.md, "private files").
    logship::private::restrict_umask();
    // Die quietly on a closed pipe (`logship dump F | head`), as Unix tools do.
    // SAFETY: setting a signal disposition to its default before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("logship: error: {e:#}");
            logship::exit::classify(&e).exit()
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sspi=warn,smb=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Init { node } => {
            let (name, node_cfg, _) = node.resolve()?;
            let id = shipper::Store::init(&node_cfg.data_dir)
                .with_context(|| format!("initialise node {name}"))?;
            println!("{id}");
            eprintln!(
                "initialised node {name}: database {} with log in {}",
                node_cfg
                    .data_dir
                    .join(shipper::store::DATABASE_FILE)
                    .display(),
                node_cfg.data_dir.join(shipper::store::LOG_DIR).display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Sql(args) => sql::run(args),
        Command::Mail {
            action:
                MailAction::Search {
                    node,
                    recipient,
                    limit,
                    query,
                },
        } => {
            let (_, node_cfg, _) = node.resolve()?;
            let db = node_cfg.data_dir.join(shipper::store::DATABASE_FILE);
            let hits =
                dumpster::mailbox::search(&db, &query.join(" "), recipient.as_deref(), limit)?;
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "id\treceived_at\trecipient\tsender\tmessage_id\tsubject"
            )?;
            for h in &hits {
                let clean = |s: &str| s.replace(['\t', '\r', '\n'], " ");
                writeln!(
                    out,
                    "{}\t{}\t{}\t{}\t{}\t{}",
                    h.id,
                    h.received_at,
                    clean(&h.recipient),
                    clean(&h.sender),
                    clean(&h.message_id),
                    clean(&h.subject)
                )?;
            }
            eprintln!("{} message(s)", hits.len());
            Ok(ExitCode::SUCCESS)
        }
        Command::ShareConfig { node, user } => {
            let (name, node_cfg, cfg) = node.resolve()?;
            print!("{}", copy::share_config(&name, &node_cfg, user.as_deref()));
            if let Some(w) = copy::witness_share_config(&cfg) {
                print!("{w}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Ship { node } => {
            let (name, node_cfg, cfg) = node.resolve()?;
            daemons::ship(&name, &node_cfg, &cfg)
        }
        Command::Demo {
            dir,
            keep,
            messages,
            copies: 2,
        } => demo::run(dir.as_deref(), keep, messages.max(40)),
        Command::Demo {
            dir,
            keep,
            messages,
            copies,
        } => demo::run_copies(dir.as_deref(), keep, messages.max(40), copies as usize),
        Command::Node { node } => {
            let (name, node_cfg, cfg) = node.resolve()?;
            node::run(&name, &node_cfg, &cfg)
        }
        Command::Activate {
            node,
            force,
            play_down,
        } => {
            let (name, node_cfg, _) = node.resolve()?;
            cluster_request(
                &name,
                &node_cfg,
                &control::Op::Activate { force, play_down },
            )
        }
        Command::MoveCluster {
            config,
            to,
            comment,
        } => {
            let cfg = config::Config::load(&config)?;
            if let Some(t) = &to {
                cfg.node(t)?;
            }
            let active = copy::node_statuses(&cfg, None)
                .into_iter()
                .find(|n| n.role == witness::Role::Active)
                .context("no active node runs on this machine: run move-cluster where the active node runs")?;
            let node_cfg = cfg.node(&active.node)?;
            // No target: the only other node, or (past two nodes) the best
            // copy, which the active picks ("").
            let to = match to {
                Some(t) => t,
                None if cfg.cluster.arbiter.is_some() => String::new(),
                None => cfg
                    .nodes
                    .keys()
                    .find(|n| **n != active.node)
                    .cloned()
                    .context("the config has no other node to move the role to")?,
            };
            let op = control::Op::MoveCluster { to, comment };
            cluster_request(&active.node, node_cfg, &op)
        }
        Command::Events { node, json } => {
            let (name, node_cfg, _) = node.resolve()?;
            let p = events::path(&node_cfg.data_dir);
            let text = match std::fs::read_to_string(&p) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    println!("no events recorded for node {name} yet");
                    return Ok(ExitCode::SUCCESS);
                }
                Err(e) => return Err(e).with_context(|| format!("read {}", p.display())),
            };
            for line in text.lines() {
                if json {
                    println!("{line}");
                    continue;
                }
                match events::parse_line(line) {
                    Ok(e) => println!("{}", e.summary()),
                    Err(shipper::state_file::StateFileError::Newer { found, .. }) => {
                        println!("{line} (format version {found}, newer than this build reads)")
                    }
                    Err(_) => println!("{line}"),
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Dumpster { config, action } => {
            let cfg = config::Config::load(&config)?;
            match action {
                None => relay_cmd::run(&cfg),
                Some(DumpsterAction::Redeliver { since }) => relay_cmd::redeliver(&cfg, since),
            }
        }
        Command::PauseNode { node } => {
            let (name, node_cfg, _) = node.resolve()?;
            cluster_request(&name, &node_cfg, &control::Op::Pause { paused: true })
        }
        Command::ResumeNode { node } => {
            let (name, node_cfg, _) = node.resolve()?;
            cluster_request(&name, &node_cfg, &control::Op::Pause { paused: false })
        }
        Command::Seed {
            node,
            from,
            force,
            timeout,
        } => {
            let (name, node_cfg, cfg) = node.resolve()?;
            daemons::seed(&name, &node_cfg, &cfg, from.as_deref(), force, timeout)
        }
        Command::Replay { node, from, poll } => {
            let (name, node_cfg, cfg) = node.resolve()?;
            copy::replay(&name, &node_cfg, &cfg, from.as_deref(), poll)
        }
        Command::Status { config, node, json } => {
            let cfg = config::Config::load(&config)?;
            if let Some(n) = &node {
                cfg.node(n)?;
            }
            copy::status(&cfg, node.as_deref(), json)
        }
        Command::Suspend { node, reason } => {
            let (name, node_cfg, _) = node.resolve()?;
            copy::suspend(&name, &node_cfg, &reason)
        }
        Command::Resume { node } => {
            let (name, node_cfg, _) = node.resolve()?;
            copy::resume(&name, &node_cfg)
        }
        Command::VerifyCopy { node } => {
            let (name, node_cfg, cfg) = node.resolve()?;
            let paths = replayer::state::CopyPaths::new(&node_cfg.data_dir);
            if paths.state.exists() {
                return copy::verify_copy(&name, &node_cfg, &cfg);
            }
            let op = control::Op::Check;
            if control::run_on_node(&name, &node_cfg, &cfg, &op)? {
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("logship: the database does not match its log");
                Ok(logship::exit::Class::Corrupt.exit())
            }
        }
        Command::Seal { node } => {
            let (name, node_cfg, cfg) = node.resolve()?;
            control::run_on_node(&name, &node_cfg, &cfg, &control::Op::Seal)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify { files } => inspect::verify(&files),
        Command::Dump { file, changes } => inspect::dump(&file, changes),
        Command::Bench(cmd) => bench::run(cmd),
    }
}

/// Sends a cluster request to the node daemon of `name`.
fn cluster_request(name: &str, node: &config::Node, op: &control::Op) -> Result<ExitCode> {
    if !control::socket_path(&node.data_dir).exists() {
        return Err(logship::exit::error(
            logship::exit::Class::Unavailable,
            format!(
                "no daemon runs node {name} (no control socket in {}): start `logship node --node {name}`",
                node.data_dir.display()
            ),
        ));
    }
    if control::forward(&node.data_dir, op)? {
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(ExitCode::from(1))
    }
}

impl NodeArgs {
    /// Loads the config and finds this node in it.
    fn resolve(&self) -> Result<(String, config::Node, config::Config)> {
        let cfg = config::Config::load(&self.config)?;
        let name = match &self.node {
            Some(n) => n.clone(),
            None => {
                config::host_name().context("no --node given and no host name to default to")?
            }
        };
        let node = cfg
            .node(&name)
            .with_context(|| format!("config file {}", self.config.display()))?;
        let node = node.clone();
        Ok((name, node, cfg))
    }
}
