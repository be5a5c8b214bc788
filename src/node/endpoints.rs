//! The node's endpoints: LMTP (its mail), the control socket (the
//! operator's commands), the admin endpoint (`/metrics`, `/status`), and the
//! publisher of its status on its own share.

use super::*;

/// The node's admin endpoint: `/metrics` (Prometheus) and `/status` (JSON).
pub(super) fn serve_admin(
    name: &str,
    node: &Node,
    addr: &str,
    snapshot: Arc<Mutex<Option<NodeStatus>>>,
    serving: Arc<Mutex<Option<Arc<Store>>>>,
) -> Result<()> {
    let (n, data_dir) = (name.to_string(), node.data_dir.clone());
    let snap = snapshot.clone();
    let metrics = Arc::new(move || {
        let st = snap
            .lock()
            .expect("snapshot lock")
            .clone()
            .unwrap_or_default();
        let l = format!("node=\"{n}\"");
        let mut e = crate::metrics::Exposition::default();
        let roles = [Role::Starting, Role::Passive, Role::Active, Role::Fenced];
        let samples: Vec<(String, f64)> = roles
            .iter()
            .map(|r| {
                (
                    format!("{l},role=\"{}\"", r.name()),
                    f64::from(u8::from(st.role == *r)),
                )
            })
            .collect();
        let samples: Vec<(&str, f64)> = samples.iter().map(|(a, b)| (a.as_str(), *b)).collect();
        e.metric(
            "logship_role",
            "gauge",
            "1 for the node's current role",
            &samples,
        );
        e.gauge(
            "logship_epoch",
            "The epoch the node is active in, or the newest it knows",
            &l,
            st.epoch.0 as f64,
        );
        e.gauge(
            "logship_quorum_votes",
            "Votes this node holds (itself, the peer, the witness)",
            &l,
            f64::from(st.quorum.votes),
        );
        e.gauge(
            "logship_witness_reachable",
            "1 when the witness answers",
            &l,
            f64::from(u8::from(st.witness_reachable)),
        );
        e.gauge(
            "logship_lsn",
            "The node's LSN (active) or replayed LSN (passive)",
            &l,
            st.lsn.0 as f64,
        );
        e.counter(
            "logship_failovers_total",
            "Activations after the peer failed, since the daemon started",
            &l,
            st.failovers as f64,
        );
        e.counter(
            "logship_mail_stored_total",
            "Recipients stored over LMTP since the daemon started",
            &l,
            st.mail_stored as f64,
        );
        e.counter(
            "logship_mail_duplicates_total",
            "Recipients dropped as duplicates since the daemon started",
            &l,
            st.mail_duplicates as f64,
        );
        if let Some(c) = &st.commit {
            e.gauge(
                "logship_commit_synchronous",
                "With commit = \"remote\": 1 while every acknowledgement waits for the passive, 0 while the active goes on alone",
                &l,
                f64::from(u8::from(c == "remote: synchronous")),
            );
        }
        if let Some(lsn) = st.last_received_lsn {
            e.gauge(
                "logship_received_lsn",
                "Block mode: the last record received and durable on this passive",
                &l,
                lsn.0 as f64,
            );
        }
        if let Some(n) = st.copy_queue_records {
            e.gauge(
                "logship_copy_queue_records",
                "Block mode: records durable on the active not yet received here",
                &l,
                n as f64,
            );
        }
        if let Some(n) = st.copy_queue_bytes {
            e.gauge(
                "logship_copy_queue_bytes",
                "Block mode: bytes of log durable on the active not yet received here",
                &l,
                n as f64,
            );
        }
        // Past two nodes: one series per copy, as etcd has them.
        if !st.copies.is_empty() {
            let label = |c: &crate::node_status::CopyLine| format!("{l},copy=\"{}\"", c.node);
            let series = |f: &dyn Fn(&crate::node_status::CopyLine) -> Option<f64>| {
                st.copies
                    .iter()
                    .filter_map(|c| f(c).map(|v| (label(c), v)))
                    .collect::<Vec<_>>()
            };
            let per_copy = [
                (
                    "logship_copy_replayed_lsn",
                    "The last record each copy has replayed (etcd's member values)",
                    series(&|c| Some(c.replayed.0 as f64)),
                ),
                (
                    "logship_copy_behind_records",
                    "Records each copy is behind the active",
                    series(&|c| c.behind.map(|b| b as f64)),
                ),
                (
                    "logship_copy_healthy",
                    "1 when the copy is Healthy (the active counts as healthy)",
                    series(&|c| {
                        Some(f64::from(u8::from(
                            c.role == Role::Active || c.copy_status.as_deref() == Some("Healthy"),
                        )))
                    }),
                ),
            ];
            for (name, help, samples) in &per_copy {
                let samples: Vec<(&str, f64)> =
                    samples.iter().map(|(a, b)| (a.as_str(), *b)).collect();
                e.metric(name, "gauge", help, &samples);
            }
        }
        let paths = CopyPaths::new(&data_dir);
        if let Ok(Some(state)) = CopyState::load(&paths) {
            let c = replayer::status::status(&n, &paths, &state, witness::witness::now_us());
            e.gauge(
                "logship_copy_queue_length",
                "Generations generated but not yet inspected",
                &l,
                c.copy_queue_length as f64,
            );
            e.gauge(
                "logship_replay_queue_length",
                "Generations inspected but not yet replayed",
                &l,
                c.replay_queue_length as f64,
            );
            e.gauge(
                "logship_inspection_failures",
                "Failed inspections of the next segment so far",
                &l,
                f64::from(c.inspection_failures),
            );
        }
        if let Some(store) = serving.lock().expect("serving lock").clone() {
            e.histogram(
                "logship_fsync_seconds",
                "Latency of the log's fdatasync per group commit",
                &l,
                &store.fsync_latency(),
            );
        }
        e.histogram(
            "logship_replay_lag_seconds",
            "From a segment's seal on the active to its replay here",
            &l,
            &replayer::REPLAY_LAG.snapshot(),
        );
        e.counter(
            "logship_copied_bytes_total",
            "Bytes of segments copied from the active's share",
            &l,
            replayer::BYTES_COPIED.load(Ordering::Relaxed) as f64,
        );
        e.finish()
    });
    let status = Arc::new(move || {
        let st = snapshot
            .lock()
            .expect("snapshot lock")
            .clone()
            .unwrap_or_default();
        (
            "application/json".to_string(),
            serde_json::to_string_pretty(&st).expect("status serialises"),
        )
    });
    crate::metrics::serve(addr, metrics, status)?;
    tracing::info!(node = %name, admin = %addr, "admin endpoint listening (/metrics, /status)");
    Ok(())
}

/// A thread that writes each status it is handed to the node's share.
pub(super) fn status_publisher(
    share: shipper::share::Share,
) -> Result<std::sync::mpsc::SyncSender<Vec<u8>>> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(1);
    std::thread::Builder::new()
        .name("logship-status".into())
        .spawn(move || {
            let mut failing = false;
            for json in rx {
                match share.write_atomic(PUBLISHED_NODE_STATUS, &json) {
                    Ok(()) => failing = false,
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!(share = %share.display(), error = %e, "cannot publish the node status");
                    }
                    Err(_) => {}
                }
            }
        })?;
    Ok(tx)
}

/// Binds the node's LMTP address and serves it from a thread of its own
/// (a current-thread runtime: the store's writer does the heavy work).
pub(super) fn start_lmtp(
    name: &str,
    addr: &str,
    mail: Arc<dumpster::lmtp::NodeMail>,
) -> Result<()> {
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("listen for LMTP on {addr} (node {name}'s `lmtp`)"))?;
    listener.set_nonblocking(true)?;
    let hostname = name.to_string();
    std::thread::Builder::new()
        .name("logship-lmtp".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("start the LMTP runtime");
            rt.block_on(async move {
                let listener =
                    tokio::net::TcpListener::from_std(listener).expect("a bound listener converts");
                dumpster::lmtp::run(listener, mail, dumpster::protocol::Limits::node(), hostname)
                    .await;
            });
        })?;
    tracing::info!(node = %name, lmtp = %addr, "LMTP endpoint listening");
    Ok(())
}

/// How often the active indexes new mail for search.
const INDEX_EVERY: std::time::Duration = std::time::Duration::from_millis(300);

/// Indexes new mail for search while this node is active, a few times a
/// second, in batches (one FTS5 segment a batch, not one a delivery).
/// It runs as long as the process lives.
pub(super) fn start_search_indexer(mail: Arc<dumpster::lmtp::NodeMail>) -> Result<()> {
    std::thread::Builder::new()
        .name("logship-search".into())
        .spawn(move || {
            let mut warned: Option<std::time::Instant> = None;
            loop {
                std::thread::sleep(INDEX_EVERY);
                let Some(store) = mail.store() else { continue };
                match dumpster::mailbox::index_pending(&store) {
                    Ok(n) if n > 0 => tracing::debug!(messages = n, "indexed for search"),
                    Ok(_) => {}
                    // A store that stopped taking writes (fenced, or a
                    // failover) is not this thread's to report.
                    Err(shipper::Error::Fenced(_) | shipper::Error::Stopped(_)) => {}
                    Err(e) => {
                        if warned.is_none_or(|t| t.elapsed() > std::time::Duration::from_secs(60)) {
                            tracing::warn!(error = %e, "indexing mail for search (retried)");
                            warned = Some(std::time::Instant::now());
                        }
                    }
                }
            }
        })?;
    Ok(())
}

/// The control socket: statements go to the store while active; cluster
/// requests go to the daemon's loop.
pub(super) fn serve_control(
    name: &str,
    peer: &str,
    node: &Node,
    serving: Arc<Mutex<Option<Arc<Store>>>>,
    requests: Sender<Request>,
) -> Result<()> {
    let (name, peer) = (name.to_string(), peer.to_string());
    let requests = Mutex::new(requests);
    crate::control::serve(
        &node.data_dir,
        Arc::new(
            move |op: &Op, out: &mut dyn FnMut(&[u8]) -> std::io::Result<()>| match op {
                Op::Sql { .. } | Op::Seal | Op::Check => {
                    let store = serving.lock().expect("serving lock").clone();
                    match store {
                        Some(s) => crate::control::run_op(&s, op, out),
                        None => bail!(
                            "node {name} is not active: send writes to the active node (normally {peer}; see `logship status`)"
                        ),
                    }
                }
                Op::Activate { .. } | Op::Pause { .. } | Op::MoveCluster { .. } => {
                    let (reply, answer) = channel();
                    requests
                        .lock()
                        .expect("requests lock")
                        .send(Request {
                            op: op.clone(),
                            reply,
                        })
                        .map_err(|_| anyhow::anyhow!("the node daemon is stopping"))?;
                    match answer.recv_timeout(Duration::from_secs(120)) {
                        Ok(Ok(text)) => {
                            out(text.as_bytes())?;
                            Ok(true)
                        }
                        Ok(Err(e)) => bail!("{e}"),
                        Err(_) => bail!("no answer from the node daemon"),
                    }
                }
            },
        ),
        &SHUTDOWN,
    )
}
