//! Rejoin: a node whose store is behind a newer epoch of its peer undoes
//! its records past the fork and follows the peer; when that is impossible
//! its database is set aside and the copy reseeded. A passive copy that
//! replayed an old active's records past such a fork does the same before
//! it follows the new active (`undo_past_fork`).

use super::*;

impl Daemon<'_> {
    /// The peer began a newer epoch while this node held the store: undo
    /// what this node wrote past the point where that epoch began (the
    /// fork), then follow the peer as a passive copy. When undoing is
    /// impossible, the database is set aside and the copy is reseeded.
    pub(super) fn rejoin(&mut self, history: &[EpochRecord]) -> Result<()> {
        let (lsn, fork) = self.position_and_fork(history)?;
        let Some(fork) = fork else {
            self.m.blocked = Some(Blocked::Rejoin(
                "waiting for the witness's epoch history".into(),
            ));
            return Ok(());
        };
        tracing::warn!(node = %self.name, lsn = %lsn, fork = %fork, "rejoining as passive after another node became active");
        let (to, hash) = match shipper::rewind::rewind(&self.node.data_dir, fork) {
            Ok(r) => {
                if r.records > 0 {
                    self.m.blocked = Some(Blocked::Rejoin(format!(
                        "rewound {} transaction(s) past LSN {}: see {}",
                        r.records,
                        r.to,
                        r.report.display()
                    )));
                } else {
                    self.m.blocked = None;
                }
                (r.to, r.hash)
            }
            Err(e) => return self.reseed_after(&e.to_string()),
        };
        self.save_copy_at(to, hash)?;
        tracing::info!(node = %self.name, lsn = %to, source = %self.peer, "rejoined as a passive copy");
        crate::events::append(
            &self.node.data_dir,
            &self.name,
            "rejoin",
            serde_json::json!({"from_lsn": lsn.0, "fork": fork.0, "rewound": lsn.0 - to.0, "source": self.peer}),
        );
        Ok(())
    }

    /// Where this node's log ends, and where the oldest epoch newer than its
    /// log's, begun by another node, starts (the fork), if there is one.
    fn position_and_fork(&self, history: &[EpochRecord]) -> Result<(Lsn, Option<Lsn>)> {
        let paths = shipper::store::StorePaths::new(&self.node.data_dir);
        let (lsn, log_epoch, _) = log_position(&paths)?;
        let fork = witness::core::fork(
            history
                .iter()
                .map(|r| (r.epoch, r.node.as_str(), r.start_lsn.0)),
            log_epoch,
            &self.name,
        );
        Ok((lsn, fork.map(Lsn)))
    }

    /// The copy's state after a rewind to `to`: it follows `self.peer` from
    /// there.
    fn save_copy_at(&self, to: Lsn, hash: shipper::ContentHash) -> Result<()> {
        let paths = shipper::store::StorePaths::new(&self.node.data_dir);
        let conn = shipper::store::open_read_only(&paths.database)?;
        let (_, db) = shipper::apply::read_guard(&conn)?;
        drop(conn);
        let state = CopyState {
            source: self.peer.clone(),
            database_id: db.to_string(),
            replayed_lsn: to,
            replayed_hash: Some(hash.to_string()),
            ..Default::default()
        };
        state.save(&self.copy_paths())?;
        Ok(())
    }

    /// A passive copy about to follow a new active: if it holds records of
    /// an older epoch past where a newer epoch began (an old active's,
    /// copied from its share or stream after another node took over), it
    /// undoes them first, or its log would not chain with the new
    /// active's. When undoing is impossible, it is reseeded. Its replay
    /// must be stopped.
    pub(super) fn undo_past_fork(&mut self, history: &[EpochRecord]) -> Result<()> {
        if !shipper::store::StorePaths::new(&self.node.data_dir)
            .database
            .exists()
        {
            return Ok(());
        }
        let (lsn, Some(fork)) = self.position_and_fork(history)? else {
            return Ok(());
        };
        if lsn <= fork {
            return Ok(());
        }
        tracing::warn!(node = %self.name, lsn = %lsn, fork = %fork, source = %self.peer, "this copy holds an old active's records past the new epoch's start: undoing them");
        match shipper::rewind::rewind_copy(&self.node.data_dir, fork) {
            Ok(r) => {
                self.save_copy_at(r.to, r.hash)?;
                crate::events::append(
                    &self.node.data_dir,
                    &self.name,
                    "copy-rewind",
                    serde_json::json!({"from_lsn": lsn.0, "fork": fork.0, "rewound": r.records, "source": self.peer, "report": r.report}),
                );
                Ok(())
            }
            Err(e) => self.reseed_after(&e.to_string()),
        }
    }

    /// Rewinding was impossible: the database is set aside (for an
    /// operator) and the copy is seeded again from the active.
    pub(super) fn reseed_after(&mut self, why: &str) -> Result<()> {
        tracing::error!(reason = %why, "cannot rewind; reseeding from the active");
        let aside = self
            .node
            .data_dir
            .join(shipper::rewind::REWOUND_DIR)
            .join(format!("store-{}", witness::witness::now_us()));
        std::fs::create_dir_all(&aside).with_context(|| format!("create {}", aside.display()))?;
        let paths = shipper::store::StorePaths::new(&self.node.data_dir);
        for suffix in ["", "-wal", "-shm"] {
            let name = format!("{}{suffix}", shipper::store::DATABASE_FILE);
            let p = self.node.data_dir.join(&name);
            if p.exists() {
                std::fs::rename(&p, aside.join(&name))
                    .with_context(|| format!("move {} into {}", p.display(), aside.display()))?;
            }
        }
        if paths.logs.exists() {
            std::fs::rename(&paths.logs, aside.join(shipper::store::LOG_DIR)).with_context(
                || format!("move {} into {}", paths.logs.display(), aside.display()),
            )?;
        }
        self.m.blocked = Some(Blocked::Rejoin(format!(
            "rewind impossible ({why}); the old database is in {}; reseeding",
            aside.display()
        )));
        crate::events::append(
            &self.node.data_dir,
            &self.name,
            "reseed",
            serde_json::json!({"reason": why, "old_database": aside.display().to_string(), "source": self.peer}),
        );
        self.write_status(true);
        crate::daemons::seed(
            &self.name,
            self.node,
            self.cfg,
            Some(&self.peer),
            true,
            Duration::from_secs(300),
        )
        .context("reseed after an impossible rewind")?;
        self.m.blocked = None;
        Ok(())
    }
}
