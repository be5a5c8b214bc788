//! The mailbox store: two tables in the replicated database, written only
//! through the store (so every delivery is a logged, shipped transaction).
//!
//! ```sql
//! CREATE TABLE mailboxes (address TEXT PRIMARY KEY NOT NULL, created_at TEXT NOT NULL);
//! CREATE TABLE messages (
//!   id INTEGER PRIMARY KEY,       -- delivery order
//!   recipient TEXT NOT NULL,      -- lower-cased address
//!   message_id TEXT NOT NULL,     -- the Message-ID rule of `message::message_id`
//!   sender TEXT NOT NULL,         -- the envelope sender ('' for <>)
//!   received_at TEXT NOT NULL,    -- RFC 3339, UTC, milliseconds
//!   size INTEGER NOT NULL,        -- bytes of raw
//!   raw BLOB NOT NULL,            -- the message as delivered, CRLF line ends
//!   delivery_id TEXT,             -- the relay's identity of the message (ENVID)
//!   UNIQUE (delivery_id, recipient)
//! );
//! -- Full-text search over subject and body: contentless (the message is
//! -- in messages.raw already), one row per message, rowid = messages.id.
//! -- Filled by `index_pending` on the active, in batches, shortly after
//! -- delivery (FTS5 writes a segment per savepoint: one a delivery would
//! -- cost deliveries most of their speed).
//! CREATE VIRTUAL TABLE message_search USING fts5(subject, body, content='',
//!   contentless_delete=1, tokenize='unicode61 remove_diacritics 2');
//! ```
//!
//! A delivery is stored at most once per recipient: a second delivery with
//! the same (delivery id, recipient) is a redelivery, acknowledged and
//! dropped. The delivery id is the relay's (`relay::delivery_id`), so two
//! different messages that share a Message-ID are both stored. A delivery
//! without one (a client other than the relay, on a node without a cluster
//! key) is stored as it comes.
//!
//! A database made before delivery ids has `UNIQUE (message_id, recipient)`
//! instead; it gains the column and a unique index on it, and keeps its old
//! constraint (SQLite cannot drop one without copying the table): there a
//! second message with a Message-ID the recipient already has is refused
//! (`Outcome::MessageIdTaken`), never dropped in silence.

use std::sync::Arc;

use shipper::Store;

/// The schema, created by the first active node that delivers mail.
pub const SCHEMA: [&str; 2] = [
    "CREATE TABLE IF NOT EXISTS mailboxes (address TEXT PRIMARY KEY NOT NULL, created_at TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS messages (id INTEGER PRIMARY KEY, recipient TEXT NOT NULL, message_id TEXT NOT NULL, sender TEXT NOT NULL, received_at TEXT NOT NULL, size INTEGER NOT NULL, raw BLOB NOT NULL, delivery_id TEXT, UNIQUE (delivery_id, recipient))",
];

/// The search index (FTS5: its shadow tables replicate like any table).
pub const SEARCH_SCHEMA: &str = "CREATE VIRTUAL TABLE IF NOT EXISTS message_search USING fts5(subject, body, content='', contentless_delete=1, tokenize='unicode61 remove_diacritics 2')";

/// `search_indexed_to`: the last message id the search index holds (all
/// below it too), so that indexing resumes where it stopped.
const META_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS mailbox_meta (key TEXT PRIMARY KEY NOT NULL, value INTEGER NOT NULL)";

/// Messages indexed per transaction.
const INDEX_BATCH: i64 = 500;

/// What a database made before delivery ids gains.
const UPGRADE: [&str; 2] = [
    "ALTER TABLE messages ADD COLUMN delivery_id TEXT",
    "CREATE UNIQUE INDEX IF NOT EXISTS messages_delivery ON messages (delivery_id, recipient)",
];

/// What became of one recipient's copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Stored,
    /// Already stored (same delivery id and recipient): dropped.
    Duplicate,
    /// Refused: a database made before delivery ids already holds another
    /// message with this Message-ID for this recipient.
    MessageIdTaken,
}

/// Creates the mailbox tables if the database lacks them.
pub fn ensure_schema(store: &Store) -> shipper::Result<()> {
    let (missing, old) = {
        let conn = store.reader()?;
        let n: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name IN ('mailboxes', 'messages')",
                [],
                |r| r.get(0),
            )
            .map_err(|e| shipper::Error::sql("look for the mailbox tables", e))?;
        let has_id: i64 = conn
            .query_row(
                "SELECT count(*) FROM pragma_table_info('messages') WHERE name = 'delivery_id'",
                [],
                |r| r.get(0),
            )
            .map_err(|e| shipper::Error::sql("look for the mailbox's delivery ids", e))?;
        (n < 2, n == 2 && has_id == 0)
    };
    let searchable = {
        let conn = store.reader()?;
        conn.query_row(
            "SELECT count(*) FROM sqlite_schema WHERE name = 'message_search'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map_err(|e| shipper::Error::sql("look for the mailbox's search index", e))?
            > 0
    };
    if missing {
        store.transaction(|tx| {
            for sql in SCHEMA {
                tx.ddl(sql)?;
            }
            Ok(())
        })?;
        tracing::info!("created the mailbox tables");
    } else if old {
        store.transaction(|tx| {
            for sql in UPGRADE {
                tx.ddl(sql)?;
            }
            Ok(())
        })?;
        tracing::warn!(
            "the mailbox tables gained delivery ids; their old one-message-per-Message-ID rule stays (a second message with a Message-ID a recipient has is refused)"
        );
    }
    if !searchable {
        store.transaction(|tx| {
            tx.ddl(SEARCH_SCHEMA)?;
            tx.ddl(META_SCHEMA)?;
            tx.conn()
                .execute(
                    "INSERT OR REPLACE INTO mailbox_meta (key, value) VALUES ('search_indexed_to', 0)",
                    [],
                )
                .map_err(|e| shipper::Error::sql("plan the search index", e))?;
            Ok(())
        })?;
        tracing::info!(
            "created the mailbox's search index (the messages already stored are indexed in the background)"
        );
    }
    Ok(())
}

/// Adds the messages stored since the last call to the search index, a
/// batch a transaction; how many. Nothing (0) while the database has no
/// search index. The active node calls it every few hundred milliseconds.
pub fn index_pending(store: &Store) -> shipper::Result<u64> {
    let reader = store.reader()?;
    let has_meta: i64 = reader
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE name = 'mailbox_meta'",
            [],
            |r| r.get(0),
        )
        .map_err(|e| shipper::Error::sql("look for the mailbox's search index", e))?;
    if has_meta == 0 {
        return Ok(0);
    }
    let mut total = 0u64;
    loop {
        // Read and parse on this thread; the store's writer only inserts.
        let after: i64 = reader
            .query_row(
                "SELECT coalesce((SELECT value FROM mailbox_meta WHERE key = 'search_indexed_to'), 0)",
                [],
                |r| r.get(0),
            )
            .map_err(|e| shipper::Error::sql("read how far the search index got", e))?;
        let rows: Vec<(i64, (String, String))> = {
            let mut st = reader
                .prepare_cached("SELECT id, raw FROM messages WHERE id > ?1 ORDER BY id LIMIT ?2")
                .map_err(|e| shipper::Error::sql("read messages to index", e))?;
            st.query_map((after, INDEX_BATCH), |r| {
                Ok((
                    r.get(0)?,
                    crate::message::search_text(&r.get::<_, Vec<u8>>(1)?),
                ))
            })
            .and_then(|rows| rows.collect())
            .map_err(|e| shipper::Error::sql("read messages to index", e))?
        };
        let Some(&(last, _)) = rows.last() else {
            return Ok(total);
        };
        let n = rows.len() as u64;
        let rows = Arc::new(rows);
        store.transaction(move |tx| {
            let conn = tx.conn();
            // Only from where it was read (a node that was active a moment
            // ago may have gone on meanwhile).
            let now: i64 = conn
                .query_row(
                    "SELECT coalesce((SELECT value FROM mailbox_meta WHERE key = 'search_indexed_to'), 0)",
                    [],
                    |r| r.get(0),
                )
                .map_err(|e| shipper::Error::sql("read how far the search index got", e))?;
            if now != after {
                return Ok(());
            }
            let mut st = conn
                .prepare_cached("INSERT INTO message_search (rowid, subject, body) VALUES (?1, ?2, ?3)")
                .map_err(|e| shipper::Error::sql("index the message for search", e))?;
            for (id, (subject, body)) in rows.iter() {
                st.execute((id, subject, body))
                    .map_err(|e| shipper::Error::sql("index the message for search", e))?;
            }
            conn.execute(
                "INSERT OR REPLACE INTO mailbox_meta (key, value) VALUES ('search_indexed_to', ?1)",
                [last],
            )
            .map_err(|e| shipper::Error::sql("record how far the search index got", e))?;
            Ok(())
        })?;
        total += n;
        if n < INDEX_BATCH as u64 {
            return Ok(total);
        }
        if total.is_multiple_of(INDEX_BATCH as u64 * 20) {
            tracing::info!(messages = total, "indexing the mailbox for search");
        }
    }
}

/// One message found by `search`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hit {
    pub id: i64,
    pub recipient: String,
    pub received_at: String,
    pub sender: String,
    pub message_id: String,
    pub subject: String,
}

/// Why `search` found nothing to search in.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("cannot open the database {path}: {source}")]
    Open {
        path: std::path::PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "the database {path} has no mailbox search index yet: an active node creates it when it starts taking mail"
    )]
    NoIndex { path: std::path::PathBuf },
    #[error("the query {query:?} is not FTS5 query syntax: {message}")]
    Query { query: String, message: String },
    #[error("searching {path}: {source}")]
    Sql {
        path: std::path::PathBuf,
        source: rusqlite::Error,
    },
}

/// The messages of the database file `db` whose subject or body match
/// `query` (FTS5 query syntax: words are ANDed, `OR`, `"a phrase"`,
/// `subject:word`, `pre*`), best first, at most `limit`, only
/// `recipient`'s when given. Read-only, so it works on any copy.
pub fn search(
    db: &std::path::Path,
    query: &str,
    recipient: Option<&str>,
    limit: u32,
) -> Result<Vec<Hit>, SearchError> {
    let path = db.to_path_buf();
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|source| SearchError::Open {
                path: path.clone(),
                source,
            })?;
    let sql_err = |source| SearchError::Sql {
        path: path.clone(),
        source,
    };
    let has: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE name = 'message_search'",
            [],
            |r| r.get(0),
        )
        .map_err(sql_err)?;
    if has == 0 {
        return Err(SearchError::NoIndex { path });
    }
    let mut st = conn
        .prepare(
            "SELECT m.id, m.recipient, m.received_at, m.sender, m.message_id, m.raw \
             FROM message_search s JOIN messages m ON m.id = s.rowid \
             WHERE message_search MATCH ?1 AND (?2 IS NULL OR m.recipient = ?2) \
             ORDER BY s.rank, m.id LIMIT ?3",
        )
        .map_err(sql_err)?;
    let recipient = recipient.map(normalize_address);
    let rows = st.query_map((query, &recipient, limit), |r| {
        let raw: Vec<u8> = r.get(5)?;
        Ok(Hit {
            id: r.get(0)?,
            recipient: r.get(1)?,
            received_at: r.get(2)?,
            sender: r.get(3)?,
            message_id: r.get(4)?,
            subject: crate::message::search_text(&raw).0,
        })
    });
    let hits: rusqlite::Result<Vec<Hit>> = rows.and_then(|rows| rows.collect());
    // The statement prepared, so a plain SQL error now is the MATCH
    // expression's (FTS5 parses it as the statement runs).
    hits.map_err(|e| match e {
        rusqlite::Error::SqliteFailure(f, Some(m)) if f.code == rusqlite::ErrorCode::Unknown => {
            SearchError::Query {
                query: query.to_string(),
                message: m,
            }
        }
        source => SearchError::Sql { path, source },
    })
}

/// The Message-IDs stored in the database file `db`, read with a
/// read-only connection of its own; empty when it has none (yet).
pub fn stored_message_ids(db: &std::path::Path) -> Vec<String> {
    let Ok(conn) =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return Vec::new();
    };
    let Ok(mut st) = conn.prepare("SELECT message_id FROM messages") else {
        return Vec::new();
    };
    st.query_map([], |r| r.get::<_, String>(0))
        .map(|rows| rows.filter_map(|r| r.ok()).collect())
        .unwrap_or_default()
}

/// The address as stored: trimmed and lower-cased.
pub fn normalize_address(a: &str) -> String {
    a.trim().to_lowercase()
}

/// Stores `raw` for every recipient in one transaction (one log record),
/// dropping redeliveries of `delivery_id`. Acknowledged only once durable.
pub async fn deliver(
    store: &Arc<Store>,
    sender: &str,
    recipients: &[String],
    message_id: &str,
    delivery_id: Option<&str>,
    raw: Arc<Vec<u8>>,
) -> shipper::Result<Vec<Outcome>> {
    let received_at = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    let sender = sender.to_string();
    let message_id = message_id.to_string();
    let delivery_id = delivery_id.map(String::from);
    let recipients: Vec<String> = recipients.iter().map(|r| normalize_address(r)).collect();
    let done = store
        .transaction_async(move |tx| {
            let conn = tx.conn();
            let mut outcomes = Vec::with_capacity(recipients.len());
            for r in &recipients {
                conn.execute(
                    "INSERT OR IGNORE INTO mailboxes (address, created_at) VALUES (?1, ?2)",
                    (r, &received_at),
                )
                .map_err(|e| shipper::Error::sql("create the mailbox", e))?;
                let n = conn
                    .execute(
                        "INSERT OR IGNORE INTO messages (recipient, message_id, sender, received_at, size, raw, delivery_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                        (r, &message_id, &sender, &received_at, raw.len() as i64, &raw[..], &delivery_id),
                    )
                    .map_err(|e| shipper::Error::sql("store the message", e))?;
                if n == 1 {
                    outcomes.push(Outcome::Stored);
                    continue;
                }
                // Ignored: the same delivery again, or (only by an old
                // database's (Message-ID, recipient) rule) a new delivery
                // whose Message-ID is taken.
                let again = match &delivery_id {
                    Some(d) => conn
                        .query_row(
                            "SELECT count(*) FROM messages WHERE delivery_id = ?1 AND recipient = ?2",
                            (d, r),
                            |row| row.get::<_, i64>(0),
                        )
                        .map_err(|e| shipper::Error::sql("look for the delivery", e))?
                        > 0,
                    None => false,
                };
                outcomes.push(if again {
                    Outcome::Duplicate
                } else {
                    Outcome::MessageIdTaken
                });
            }
            Ok(outcomes)
        })
        .await?;
    Ok(done.value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &std::path::Path) -> Arc<Store> {
        Store::init(dir).unwrap();
        Arc::new(Store::open(dir, shipper::StoreOptions::default()).unwrap())
    }

    fn raw(subject: &str, body: &str) -> Arc<Vec<u8>> {
        Arc::new(
            format!("Message-ID: <{subject}@t>\r\nSubject: {subject}\r\n\r\n{body}\r\n")
                .into_bytes(),
        )
    }

    /// The ids of the messages found, sorted (the order is by rank).
    fn ids(db: &std::path::Path, q: &str) -> Vec<i64> {
        let mut ids: Vec<i64> = search(db, q, None, 100)
            .unwrap()
            .iter()
            .map(|h| h.id)
            .collect();
        ids.sort_unstable();
        ids
    }

    #[test]
    fn delivered_mail_is_searchable_by_subject_and_body() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let store = store(tmp.path());
        ensure_schema(&store).unwrap();
        let to = ["ann@example.com".to_string()];
        for (s, b) in [
            ("invoice", "please pay by friday"),
            ("lunch", "café at noon"),
            ("report", "the invoice is attached"),
        ] {
            rt.block_on(deliver(&store, "s@example.org", &to, s, Some(s), raw(s, b)))
                .unwrap();
        }
        // A redelivery is dropped, and not indexed twice.
        rt.block_on(deliver(
            &store,
            "s@example.org",
            &to,
            "lunch",
            Some("lunch"),
            raw("lunch", "café at noon"),
        ))
        .unwrap();
        let db = tmp.path().join(shipper::store::DATABASE_FILE);
        // Indexed after delivery, by the active's indexer.
        assert!(ids(&db, "invoice").is_empty());
        assert_eq!(index_pending(&store).unwrap(), 3);
        assert_eq!(index_pending(&store).unwrap(), 0);
        assert_eq!(ids(&db, "invoice"), [1, 3]);
        assert_eq!(ids(&db, "subject:invoice"), [1]);
        assert_eq!(ids(&db, "cafe"), [2], "diacritics are folded");
        assert_eq!(ids(&db, "\"please pay\""), [1]);
        assert_eq!(ids(&db, "pay* OR noon"), [1, 2]);
        assert!(ids(&db, "nothing").is_empty());
        let hit = &search(&db, "lunch", Some("ANN@example.com"), 10).unwrap()[0];
        assert_eq!(
            (hit.subject.as_str(), hit.message_id.as_str()),
            ("lunch", "lunch")
        );
        assert!(
            search(&db, "lunch", Some("bob@example.com"), 10)
                .unwrap()
                .is_empty()
        );
        for bad in ["AND OR", "bad\"", "nocolumn:x"] {
            let e = search(&db, bad, None, 10).unwrap_err().to_string();
            assert!(e.contains("is not FTS5 query syntax"), "{bad}: {e}");
        }
    }

    /// A mailbox made before search gains its index at the next start, and
    /// an indexing cut short resumes where it stopped.
    #[test]
    fn a_mailbox_made_before_search_is_indexed_and_an_interrupted_indexing_resumes() {
        let tmp = tempfile::tempdir().unwrap();
        let store = store(tmp.path());
        store
            .transaction(|tx| {
                for sql in SCHEMA {
                    tx.ddl(sql)?;
                }
                Ok(())
            })
            .unwrap();
        let n = INDEX_BATCH * 2 + 7;
        store
            .transaction(move |tx| {
                for i in 1..=n {
                    let word = if i % 2 == 0 { "even" } else { "odd" };
                    tx.conn()
                        .execute(
                            "INSERT INTO messages (recipient, message_id, sender, received_at, size, raw) VALUES ('a@x', ?1, '', '', 0, ?2)",
                            (i.to_string(), raw(word, &format!("number{i}"))[..].to_vec()),
                        )
                        .map_err(|e| shipper::Error::sql("insert", e))?;
                }
                Ok(())
            })
            .unwrap();
        ensure_schema(&store).unwrap();
        assert_eq!(index_pending(&store).unwrap(), n as u64);
        let db = tmp.path().join(shipper::store::DATABASE_FILE);
        assert_eq!(ids(&db, "number7"), [7]);
        assert_eq!(ids(&db, &format!("number{n}")), [n]);
        assert_eq!(search(&db, "even", None, 1000).unwrap().len() as i64, n / 2);
        // Cut short after the first batch (as a crash would leave it): the
        // next run goes on from there.
        store
            .transaction(move |tx| {
                let c = tx.conn();
                c.execute_batch(&format!(
                    "DELETE FROM message_search WHERE rowid > {INDEX_BATCH};
                     UPDATE mailbox_meta SET value = {INDEX_BATCH} WHERE key = 'search_indexed_to';"
                ))
                .map_err(|e| shipper::Error::sql("cut", e))
            })
            .unwrap();
        assert!(ids(&db, &format!("number{n}")).is_empty());
        assert_eq!(index_pending(&store).unwrap(), (n - INDEX_BATCH) as u64);
        assert_eq!(ids(&db, &format!("number{n}")), [n]);
        assert_eq!(
            search(&db, "odd", None, 1000).unwrap().len() as i64,
            n - n / 2
        );
    }
}
