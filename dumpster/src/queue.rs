//! The relay's durable queue and dumpster, in its own SQLite database
//! (`<dumpster data-dir>/relay.db`, WAL, `synchronous=FULL`): a message is
//! acknowledged (250) only once its row is committed. A row is *queued*
//! while some recipient is pending, and in the *dumpster* once every
//! recipient is done, until age or size evicts it (oldest first). A
//! redelivery puts dumpster rows delivered since a time back in the queue.
//!
//! Times are microseconds since the Unix epoch, passed in by the caller so
//! that eviction can be tested with any clock.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS messages (
  id INTEGER PRIMARY KEY,
  message_id TEXT NOT NULL,
  sender TEXT NOT NULL,
  rcpts TEXT NOT NULL,
  pending TEXT NOT NULL,
  raw BLOB NOT NULL,
  size INTEGER NOT NULL,
  accepted_us INTEGER NOT NULL,
  delivered_us INTEGER,
  attempts INTEGER NOT NULL DEFAULT 0,
  next_us INTEGER NOT NULL,
  last_error TEXT,
  redelivery INTEGER,
  envid TEXT,
  strikes INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS queued ON messages (next_us) WHERE delivered_us IS NULL;
CREATE INDEX IF NOT EXISTS dumpster ON messages (delivered_us) WHERE delivered_us IS NOT NULL;
CREATE TABLE IF NOT EXISTS epochs (
  epoch INTEGER PRIMARY KEY,
  node TEXT NOT NULL,
  since_us INTEGER,
  at_us INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS redeliveries (
  id INTEGER PRIMARY KEY,
  at_us INTEGER NOT NULL,
  since_us INTEGER NOT NULL,
  reason TEXT NOT NULL,
  requeued INTEGER NOT NULL,
  stored INTEGER NOT NULL DEFAULT 0,
  duplicates INTEGER NOT NULL DEFAULT 0
);
";

/// The most message bytes one call of `Queue::due` returns (beyond the
/// first message): the delivery loop's share of the relay's memory bound.
pub const DUE_BYTES: u64 = 32 << 20;

/// Columns added since the first layout of `messages`, added to an older
/// database at open: (name, definition).
const ADDED_COLUMNS: [(&str, &str); 2] =
    [("envid", "TEXT"), ("strikes", "INTEGER NOT NULL DEFAULT 0")];

/// A queued message, as the delivery loop takes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Queued {
    pub id: i64,
    /// The relay's own identity of the message, assigned at acceptance and
    /// sent to the node as ENVID: a redelivery of this message carries the
    /// same one, and only it is dropped as a duplicate.
    pub envid: String,
    pub message_id: String,
    pub sender: String,
    /// Recipients not yet delivered.
    pub pending: Vec<String>,
    pub raw: Vec<u8>,
    pub attempts: u32,
    pub redelivery: Option<i64>,
    /// Consecutive attempts that failed because of this message (see
    /// `Attempt::strike`).
    pub strikes: u32,
}

/// The result of one delivery attempt of a message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attempt {
    /// Recipients still to deliver (empty: delivered).
    pub pending: Vec<String>,
    pub error: Option<String>,
    /// When to try the pending ones again.
    pub next_us: u64,
    /// Recipients newly stored, and dropped as duplicates, by the node.
    pub stored: u64,
    pub duplicates: u64,
    /// The attempt failed in a way this message may have caused (a
    /// malformed reply, the connection lost after its body was sent, a
    /// panic): counted in `strikes`, which any other outcome resets.
    pub strike: bool,
}

/// What the queue holds, for status.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueueStats {
    pub queue_length: u64,
    /// Of the queue: messages a node refused for good, kept and retried
    /// hourly (`relay::PARKED`).
    pub parked: u64,
    pub dumpster_messages: u64,
    pub dumpster_bytes: u64,
    /// When the oldest message in the dumpster was delivered (µs).
    pub dumpster_oldest_us: Option<u64>,
}

/// One redelivery and what came of it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Redelivery {
    pub id: i64,
    pub at_us: u64,
    pub since_us: u64,
    pub reason: String,
    pub requeued: u64,
    pub stored: u64,
    pub duplicates: u64,
}

#[derive(Debug)]
pub struct Queue {
    conn: Mutex<Connection>,
}

/// A failure of the relay's queue database, its SQLite error kept whole
/// (callers see it through `std::io::Error`, whose source it is).
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("the relay's queue database: {0}")]
    Sql(#[from] rusqlite::Error),
}

fn sql(e: rusqlite::Error) -> std::io::Error {
    std::io::Error::other(QueueError::Sql(e))
}

fn split(list: &str) -> Vec<String> {
    list.lines()
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

impl Queue {
    pub fn open(path: &Path) -> std::io::Result<Queue> {
        let conn = Connection::open(path).map_err(sql)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000;",
        )
        .map_err(sql)?;
        conn.execute_batch(SCHEMA).map_err(sql)?;
        for (name, def) in ADDED_COLUMNS {
            let has: bool = conn
                .query_row(
                    "SELECT count(*) FROM pragma_table_info('messages') WHERE name = ?1",
                    [name],
                    |r| r.get::<_, i64>(0),
                )
                .map_err(sql)?
                > 0;
            if has {
                continue;
            }
            conn.execute_batch(&format!("ALTER TABLE messages ADD COLUMN {name} {def}"))
                .map_err(sql)?;
            if name == "envid" {
                // Messages accepted before the relay assigned identities of
                // its own get one each now: unique and never sent before, so
                // the node stores them (a redelivery of one delivered before
                // the upgrade may be stored twice).
                conn.execute(
                    "UPDATE messages SET envid = 'legacy.' || id || '.' || lower(hex(randomblob(6)))",
                    [],
                )
                .map_err(sql)?;
            }
        }
        Ok(Queue {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().expect("queue lock")
    }

    /// Queues a message under the relay's identity `envid`; durable when
    /// this returns.
    pub fn accept(
        &self,
        envid: &str,
        message_id: &str,
        sender: &str,
        rcpts: &[String],
        raw: &[u8],
        now_us: u64,
    ) -> std::io::Result<i64> {
        let list = rcpts.join("\n");
        let c = self.conn();
        c.execute(
            "INSERT INTO messages (message_id, sender, rcpts, pending, raw, size, accepted_us, next_us, envid) VALUES (?1, ?2, ?3, ?3, ?4, ?5, ?6, ?6, ?7)",
            params![message_id, sender, list, raw, raw.len() as i64, now_us as i64, envid],
        )
        .map_err(sql)?;
        Ok(c.last_insert_rowid())
    }

    /// Queued messages due at `now_us`, oldest first: at most `max`, and
    /// at most `DUE_BYTES` of message bodies (always at least one), so that
    /// the delivery loop holds a bounded amount of mail however much is
    /// queued.
    pub fn due(&self, now_us: u64, max: usize) -> std::io::Result<Vec<Queued>> {
        let c = self.conn();
        // The size comes first: a body past the bound is never read.
        let mut st = c
            .prepare_cached(
                "SELECT size, id, message_id, sender, pending, raw, attempts, redelivery, envid, strikes FROM messages WHERE delivered_us IS NULL AND next_us <= ?1 ORDER BY id LIMIT ?2",
            )
            .map_err(sql)?;
        let mut rows = st.query(params![now_us as i64, max as i64]).map_err(sql)?;
        let mut bytes = 0u64;
        let mut out = Vec::new();
        while let Some(r) = rows.next().map_err(sql)? {
            bytes += r.get::<_, i64>(0).map_err(sql)?.max(0) as u64;
            if !out.is_empty() && bytes > DUE_BYTES {
                break;
            }
            let q = (|| {
                Ok(Queued {
                    id: r.get(1)?,
                    message_id: r.get(2)?,
                    sender: r.get(3)?,
                    pending: split(&r.get::<_, String>(4)?),
                    raw: r.get(5)?,
                    attempts: r.get(6)?,
                    redelivery: r.get(7)?,
                    envid: r.get(8)?,
                    strikes: r.get(9)?,
                })
            })()
            .map_err(sql)?;
            out.push(q);
        }
        Ok(out)
    }

    /// When the next queued message is due, if any is queued.
    pub fn next_due_us(&self) -> std::io::Result<Option<u64>> {
        self.conn()
            .query_row(
                "SELECT min(next_us) FROM messages WHERE delivered_us IS NULL",
                [],
                |r| r.get::<_, Option<i64>>(0),
            )
            .map(|v| v.map(|v| v as u64))
            .map_err(sql)
    }

    /// Records an attempt on `m`: delivered when nothing is pending, else
    /// retried at `next_us`.
    pub fn attempted(&self, m: &Queued, a: &Attempt, now_us: u64) -> std::io::Result<()> {
        let c = self.conn();
        let delivered = a.pending.is_empty().then_some(now_us as i64);
        c.execute(
            "UPDATE messages SET pending = ?2, delivered_us = ?3, attempts = attempts + 1, next_us = ?4, last_error = ?5, strikes = CASE WHEN ?6 THEN strikes + 1 ELSE 0 END WHERE id = ?1",
            params![m.id, a.pending.join("\n"), delivered, a.next_us as i64, a.error, a.strike],
        )
        .map_err(sql)?;
        if let Some(r) = m.redelivery
            && (a.stored > 0 || a.duplicates > 0)
        {
            c.execute(
                "UPDATE redeliveries SET stored = stored + ?2, duplicates = duplicates + ?3 WHERE id = ?1",
                params![r, a.stored as i64, a.duplicates as i64],
            )
            .map_err(sql)?;
        }
        Ok(())
    }

    /// Counts a strike against queued message `id` outside an attempt (the
    /// relay stopped while delivering it); parks it with `why` when that
    /// makes `park_at` strikes. Returns its envid and strikes, if queued.
    pub fn strike(
        &self,
        id: i64,
        why: &str,
        park_at: u32,
        park_until_us: u64,
    ) -> std::io::Result<Option<(String, u32)>> {
        // One statement: the strike, and at the `park_at`th the parking.
        let row: Option<(String, u32)> = self
            .conn()
            .query_row(
                "UPDATE messages SET strikes = strikes + 1, \
                 last_error = CASE WHEN strikes + 1 >= ?3 THEN ?4 ELSE ?2 END, \
                 next_us = CASE WHEN strikes + 1 >= ?3 THEN ?5 ELSE next_us END \
                 WHERE id = ?1 AND delivered_us IS NULL RETURNING envid, strikes",
                params![
                    id,
                    why,
                    park_at,
                    format!("{}{why}", crate::relay::PARKED),
                    park_until_us as i64
                ],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(sql)?;
        Ok(row)
    }

    /// Puts every message delivered since `since_us` back in the queue,
    /// for all its recipients, and every queued message that some recipient
    /// already took (that delivery may be among the lost ones too). Returns
    /// the redelivery.
    pub fn redeliver_since(
        &self,
        since_us: u64,
        reason: &str,
        now_us: u64,
    ) -> std::io::Result<Redelivery> {
        let mut c = self.conn();
        let tx = c.transaction().map_err(sql)?;
        let r = redeliver_in(&tx, since_us, reason, now_us)?;
        tx.commit().map_err(sql)?;
        Ok(r)
    }

    /// Remembers that the active node's `epoch` was seen and, the first
    /// time, when the node asked for it (`since_us`), starts the
    /// redelivery, in the same transaction: a crash cannot leave the epoch
    /// noted and its redelivery not started. `Some` when one was started.
    pub fn note_epoch(
        &self,
        epoch: u64,
        node: &str,
        since_us: Option<u64>,
        reason: &str,
        now_us: u64,
    ) -> std::io::Result<Option<Redelivery>> {
        let mut c = self.conn();
        let tx = c.transaction().map_err(sql)?;
        let first = tx
            .execute(
                "INSERT OR IGNORE INTO epochs (epoch, node, since_us, at_us) VALUES (?1, ?2, ?3, ?4)",
                params![epoch as i64, node, since_us.map(|s| s as i64), now_us as i64],
            )
            .map_err(sql)?
            == 1;
        let r = match since_us {
            Some(since) if first => Some(redeliver_in(&tx, since, reason, now_us)?),
            _ => None,
        };
        tx.commit().map_err(sql)?;
        Ok(r)
    }

    /// Evicts from the dumpster what is older than `max_age_us` or beyond
    /// `max_bytes` (oldest first), but never for size what was delivered
    /// less than `floor_us` ago: a lossy failover may ask for it back (the
    /// dumpster then holds more than `max_bytes` for a while). Returns the
    /// count evicted.
    pub fn evict(
        &self,
        now_us: u64,
        max_age_us: u64,
        max_bytes: u64,
        floor_us: u64,
    ) -> std::io::Result<u64> {
        let c = self.conn();
        let mut n = c
            .execute(
                "DELETE FROM messages WHERE delivered_us IS NOT NULL AND delivered_us < ?1",
                params![now_us.saturating_sub(max_age_us) as i64],
            )
            .map_err(sql)? as u64;
        // Newest first, keep while the running size fits.
        n += c
            .execute(
                "DELETE FROM messages WHERE id IN (SELECT id FROM (SELECT id, delivered_us, sum(size) OVER (ORDER BY delivered_us DESC, id DESC) AS running FROM messages WHERE delivered_us IS NOT NULL) WHERE running > ?1 AND delivered_us < ?2)",
                params![max_bytes as i64, now_us.saturating_sub(floor_us) as i64],
            )
            .map_err(sql)? as u64;
        Ok(n)
    }

    pub fn stats(&self) -> std::io::Result<QueueStats> {
        let c = self.conn();
        let (q, parked): (i64, i64) = c
            .query_row(
                "SELECT count(*), count(*) FILTER (WHERE last_error LIKE 'parked: %') FROM messages WHERE delivered_us IS NULL",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(sql)?;
        let (d, b, o): (i64, i64, Option<i64>) = c
            .query_row(
                "SELECT count(*), coalesce(sum(size), 0), min(delivered_us) FROM messages WHERE delivered_us IS NOT NULL",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .map_err(sql)?;
        Ok(QueueStats {
            queue_length: q as u64,
            parked: parked as u64,
            dumpster_messages: d as u64,
            dumpster_bytes: b as u64,
            dumpster_oldest_us: o.map(|o| o as u64),
        })
    }

    /// Messages of redelivery `id` still queued.
    pub fn redelivery_pending(&self, id: i64) -> std::io::Result<u64> {
        self.conn()
            .query_row(
                "SELECT count(*) FROM messages WHERE redelivery = ?1 AND delivered_us IS NULL",
                [id],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .map_err(sql)
    }

    pub fn last_redelivery(&self) -> std::io::Result<Option<Redelivery>> {
        self.conn()
            .query_row(
                "SELECT id, at_us, since_us, reason, requeued, stored, duplicates FROM redeliveries ORDER BY id DESC LIMIT 1",
                [],
                |r| {
                    Ok(Redelivery {
                        id: r.get(0)?,
                        at_us: r.get::<_, i64>(1)? as u64,
                        since_us: r.get::<_, i64>(2)? as u64,
                        reason: r.get(3)?,
                        requeued: r.get::<_, i64>(4)? as u64,
                        stored: r.get::<_, i64>(5)? as u64,
                        duplicates: r.get::<_, i64>(6)? as u64,
                    })
                },
            )
            .optional()
            .map_err(sql)
    }
}

/// The redelivery of `Queue::redeliver_since`, inside the caller's transaction.
fn redeliver_in(
    tx: &rusqlite::Transaction<'_>,
    since_us: u64,
    reason: &str,
    now_us: u64,
) -> std::io::Result<Redelivery> {
    tx.execute(
        "INSERT INTO redeliveries (at_us, since_us, reason, requeued) VALUES (?1, ?2, ?3, 0)",
        params![now_us as i64, since_us as i64, reason],
    )
    .map_err(sql)?;
    let id = tx.last_insert_rowid();
    let delivered = tx
        .execute(
            "UPDATE messages SET pending = rcpts, delivered_us = NULL, next_us = ?2, attempts = 0, strikes = 0, redelivery = ?3 WHERE delivered_us IS NOT NULL AND delivered_us >= ?1",
            params![since_us as i64, now_us as i64, id],
        )
        .map_err(sql)?;
    let partial = tx
        .execute(
            "UPDATE messages SET pending = rcpts, redelivery = ?1 WHERE delivered_us IS NULL AND pending != rcpts",
            params![id],
        )
        .map_err(sql)?;
    let n = (delivered + partial) as u64;
    tx.execute(
        "UPDATE redeliveries SET requeued = ?2 WHERE id = ?1",
        params![id, n as i64],
    )
    .map_err(sql)?;
    Ok(Redelivery {
        id,
        at_us: now_us,
        since_us,
        reason: reason.to_string(),
        requeued: n,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;

    fn deliver_all(q: &Queue, now: u64) {
        for m in q.due(now, 100).unwrap() {
            let a = Attempt {
                stored: 1,
                ..Default::default()
            };
            q.attempted(&m, &a, now).unwrap();
        }
    }

    #[test]
    fn a_queue_that_is_not_a_database_keeps_its_sqlite_error_typed() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("relay.db");
        std::fs::write(&p, vec![b'x'; 4096]).unwrap();
        let e = Queue::open(&p).unwrap_err();
        let inner = e.get_ref().and_then(|i| i.downcast_ref::<QueueError>());
        assert!(
            matches!(
                inner,
                Some(QueueError::Sql(rusqlite::Error::SqliteFailure(..)))
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("relay's queue database"), "{e}");
    }

    #[test]
    fn the_dumpster_evicts_by_age_then_by_size_oldest_first() {
        let tmp = tempfile::tempdir().unwrap();
        let q = Queue::open(&tmp.path().join("relay.db")).unwrap();
        let r = vec!["a@example.com".to_string()];
        // Five 100-byte messages delivered at t = 10, 20, 30, 40, 50 s.
        for i in 1..=5u64 {
            q.accept(
                &format!("e{i}"),
                &format!("m{i}"),
                "s",
                &r,
                &[b'x'; 100],
                i * 10 * S,
            )
            .unwrap();
            deliver_all(&q, i * 10 * S);
        }
        assert_eq!(q.stats().unwrap().dumpster_messages, 5);
        // Age: at t = 65 s with a 40 s window, t = 10 and 20 go.
        assert_eq!(q.evict(65 * S, 40 * S, 1 << 20, 0).unwrap(), 2);
        // Size, but all three were delivered in the last 40 s: they stay.
        assert_eq!(q.evict(65 * S, 3600 * S, 250, 40 * S).unwrap(), 0);
        // Size: 250 bytes keep the two newest.
        assert_eq!(q.evict(65 * S, 3600 * S, 250, 0).unwrap(), 1);
        let st = q.stats().unwrap();
        assert_eq!((st.dumpster_messages, st.dumpster_bytes), (2, 200));
        assert_eq!(st.dumpster_oldest_us, Some(40 * S));
        // Queued messages are never evicted.
        q.accept("e6", "m6", "s", &r, &[b'x'; 100], 66 * S).unwrap();
        assert_eq!(q.evict(10_000 * S, 1, 0, 0).unwrap(), 2);
        assert_eq!(q.stats().unwrap().queue_length, 1);
    }

    #[test]
    fn a_redelivery_requeues_what_was_delivered_since_and_counts_outcomes() {
        let tmp = tempfile::tempdir().unwrap();
        let q = Queue::open(&tmp.path().join("relay.db")).unwrap();
        let r = vec!["a@example.com".to_string(), "b@example.com".to_string()];
        for i in 1..=3u64 {
            q.accept(&format!("e{i}"), &format!("m{i}"), "s", &r, b"x", i * S)
                .unwrap();
            deliver_all(&q, i * S);
        }
        let red = q.redeliver_since(2 * S, "test", 10 * S).unwrap();
        assert_eq!(red.requeued, 2);
        let due = q.due(10 * S, 10).unwrap();
        assert_eq!(due.len(), 2);
        assert_eq!(due[0].pending, r);
        let done = |stored, duplicates| Attempt {
            stored,
            duplicates,
            ..Default::default()
        };
        q.attempted(&due[0], &done(1, 1), 11 * S).unwrap();
        q.attempted(&due[1], &done(0, 2), 11 * S).unwrap();
        let last = q.last_redelivery().unwrap().unwrap();
        assert_eq!((last.requeued, last.stored, last.duplicates), (2, 1, 3));
        // A new epoch that asks for a redelivery starts it, once.
        let r = q.note_epoch(5, "beta", Some(S), "epoch 5", 12 * S).unwrap();
        assert_eq!(r.map(|r| r.requeued), Some(3));
        assert!(
            q.note_epoch(5, "beta", Some(S), "epoch 5", 13 * S)
                .unwrap()
                .is_none()
        );
        assert!(
            q.note_epoch(6, "alpha", None, "epoch 6", 14 * S)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn due_messages_are_bounded_by_their_bytes_but_one_always_comes() {
        let tmp = tempfile::tempdir().unwrap();
        let q = Queue::open(&tmp.path().join("relay.db")).unwrap();
        let r = vec!["a@example.com".to_string()];
        let big = vec![b'x'; (DUE_BYTES / 2 + 1) as usize];
        for i in 0..3 {
            q.accept(&format!("e{i}"), &format!("m{i}"), "s", &r, &big, S)
                .unwrap();
        }
        let due = q.due(S, 64).unwrap();
        assert_eq!(due.len(), 1, "two would pass the byte bound");
        assert_eq!(due[0].envid, "e0");
        let huge = vec![b'y'; (DUE_BYTES + 1) as usize];
        let q2 = Queue::open(&tmp.path().join("relay2.db")).unwrap();
        q2.accept("h", "h", "s", &r, &huge, S).unwrap();
        assert_eq!(
            q2.due(S, 64).unwrap().len(),
            1,
            "a message over the bound still goes"
        );
    }

    #[test]
    fn a_redelivery_also_resends_a_queued_message_that_some_recipient_took() {
        let tmp = tempfile::tempdir().unwrap();
        let q = Queue::open(&tmp.path().join("relay.db")).unwrap();
        let r = vec!["a@example.com".to_string(), "b@example.com".to_string()];
        q.accept("e1", "m1", "s", &r, b"x", S).unwrap();
        // a took it (from the active that is about to be lost), b is retried.
        let due = q.due(S, 10).unwrap();
        let partial = Attempt {
            pending: vec!["b@example.com".to_string()],
            stored: 1,
            next_us: 100 * S,
            ..Default::default()
        };
        q.attempted(&due[0], &partial, 2 * S).unwrap();
        let red = q.redeliver_since(3 * S, "lossy failover", 4 * S).unwrap();
        assert_eq!(red.requeued, 1);
        let due = q.due(100 * S, 10).unwrap();
        assert_eq!(due[0].pending, r, "both recipients again");
    }
}
