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
//!   UNIQUE (message_id, recipient)
//! );
//! ```
//!
//! A message is stored at most once per recipient: a second delivery of
//! the same (Message-ID, recipient) is a duplicate, acknowledged and dropped.

use std::sync::Arc;

use shipper::Store;

/// The schema, created by the first active node that delivers mail.
pub const SCHEMA: [&str; 2] = [
    "CREATE TABLE IF NOT EXISTS mailboxes (address TEXT PRIMARY KEY NOT NULL, created_at TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS messages (id INTEGER PRIMARY KEY, recipient TEXT NOT NULL, message_id TEXT NOT NULL, sender TEXT NOT NULL, received_at TEXT NOT NULL, size INTEGER NOT NULL, raw BLOB NOT NULL, UNIQUE (message_id, recipient))",
];

/// What became of one recipient's copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Stored,
    /// Already stored (same Message-ID and recipient): dropped.
    Duplicate,
}

/// Creates the mailbox tables if the database lacks them.
pub fn ensure_schema(store: &Store) -> shipper::Result<()> {
    let missing = {
        let conn = store.reader()?;
        let n: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name IN ('mailboxes', 'messages')",
                [],
                |r| r.get(0),
            )
            .map_err(|e| shipper::Error::sql("look for the mailbox tables", e))?;
        n < 2
    };
    if missing {
        store.transaction(|tx| {
            for sql in SCHEMA {
                tx.ddl(sql)?;
            }
            Ok(())
        })?;
        tracing::info!("created the mailbox tables");
    }
    Ok(())
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
/// dropping duplicates. Acknowledged only once durable.
pub async fn deliver(
    store: &Arc<Store>,
    sender: &str,
    recipients: &[String],
    message_id: &str,
    raw: Arc<Vec<u8>>,
) -> shipper::Result<Vec<Outcome>> {
    let received_at = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    let sender = sender.to_string();
    let message_id = message_id.to_string();
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
                        "INSERT OR IGNORE INTO messages (recipient, message_id, sender, received_at, size, raw) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        (r, &message_id, &sender, &received_at, raw.len() as i64, &raw[..]),
                    )
                    .map_err(|e| shipper::Error::sql("store the message", e))?;
                outcomes.push(if n == 1 {
                    Outcome::Stored
                } else {
                    Outcome::Duplicate
                });
            }
            Ok(outcomes)
        })
        .await?;
    Ok(done.value)
}
