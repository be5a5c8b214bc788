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
