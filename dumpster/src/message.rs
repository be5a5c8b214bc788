//! Message bytes: the one Message-ID rule that the relay and the store
//! share (duplicates are detected by it), line-ending normalisation, and
//! adding a Message-ID to a message that has none (the relay does that at
//! acceptance; the store never does).

use mail_parser::{HeaderName, HeaderValue, MessageParser};

/// The Message-ID of `raw`: the **first** `Message-ID` header (any case),
/// without angle brackets or surrounding spaces; `None` when there is none
/// or it is empty. (mail-parser's own `message_id()` returns the last one
/// when a client sends two, as swaks does.)
pub fn message_id(raw: &[u8]) -> Option<String> {
    let msg = MessageParser::default().parse_headers(raw)?;
    let first = msg
        .headers()
        .iter()
        .find(|h| matches!(h.name, HeaderName::MessageId))?;
    let text = match &first.value {
        HeaderValue::Text(t) => t.to_string(),
        HeaderValue::TextList(l) => l.first()?.to_string(),
        _ => return None,
    };
    let id = text
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .trim();
    (!id.is_empty()).then(|| id.to_string())
}

/// How many LFs in `raw` are not preceded by a CR.
pub fn bare_lfs(raw: &[u8]) -> usize {
    raw.iter()
        .enumerate()
        .filter(|(i, b)| **b == b'\n' && (*i == 0 || raw[i - 1] != b'\r'))
        .count()
}

/// Turns every bare LF into CRLF (as Postfix does), so that the stored
/// message and any onward delivery read the same way.
pub fn normalize_line_endings(raw: Vec<u8>) -> Vec<u8> {
    let bare = bare_lfs(&raw);
    normalize_counted(raw, bare)
}

/// `normalize_line_endings` for a message whose bare LFs were counted
/// (`bare_lfs`) already.
pub fn normalize_counted(raw: Vec<u8>, bare: usize) -> Vec<u8> {
    if bare == 0 {
        return raw;
    }
    let mut out = Vec::with_capacity(raw.len() + bare);
    for (i, b) in raw.iter().enumerate() {
        if *b == b'\n' && (i == 0 || raw[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(*b);
    }
    out
}

/// Most text of one message that the search index takes, in bytes.
pub const SEARCH_TEXT_MAX: usize = 1 << 20;

/// What the mailbox's search index holds of `raw`: the decoded subject,
/// and the text of its body parts (HTML parts as text), joined and cut at
/// `SEARCH_TEXT_MAX` bytes. Empty strings for what a message lacks.
pub fn search_text(raw: &[u8]) -> (String, String) {
    let Some(msg) = MessageParser::default().parse(raw) else {
        return (String::new(), String::new());
    };
    let subject = msg.subject().unwrap_or_default().to_string();
    let mut body = String::new();
    for i in 0..msg.text_body_count() {
        let Some(text) = msg.body_text(i) else {
            continue;
        };
        if !body.is_empty() {
            body.push('\n');
        }
        body.push_str(&text);
        if body.len() >= SEARCH_TEXT_MAX {
            let mut end = SEARCH_TEXT_MAX;
            while !body.is_char_boundary(end) {
                end -= 1;
            }
            body.truncate(end);
            break;
        }
    }
    (subject, body)
}

/// Bytes as lowercase hex (delivery ids, the LMTP secret, CRAM digests).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `raw` with a `Message-ID: <id>` header first.
pub fn with_message_id(raw: &[u8], id: &str) -> Vec<u8> {
    let mut out = format!("Message-ID: <{id}>\r\n").into_bytes();
    out.extend_from_slice(raw);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn search_text_decodes_the_subject_and_takes_every_text_part() {
        let raw = b"Message-ID: <s@test>\r\nSubject: =?utf-8?q?caf=C3=A9_invoice?=\r\n\
MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=b\r\n\r\n\
--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nplease pay\r\n\
--b\r\nContent-Type: text/html\r\n\r\n<p>please <b>pay</b></p>\r\n--b--\r\n";
        let (subject, body) = super::search_text(raw);
        assert_eq!(subject, "café invoice");
        assert!(body.contains("please pay"), "{body}");
        // Headers only, or no headers at all: what there is, no panic.
        assert_eq!(super::search_text(b"Subject: x\r\n\r\n").0, "x");
        assert_eq!(super::search_text(b"").0, "");
    }

    use super::*;

    #[test]
    fn the_first_message_id_wins_and_loses_its_brackets() {
        let m = b"Subject: x\r\nMessage-Id: <a@b>\r\nMESSAGE-ID: <c@d>\r\n\r\nbody\r\n";
        assert_eq!(message_id(m).as_deref(), Some("a@b"));
        assert_eq!(message_id(b"Subject: x\r\n\r\nbody\r\n"), None);
        assert_eq!(message_id(b"Message-ID: <>\r\n\r\n"), None);
        assert_eq!(message_id(b""), None);
        let added = with_message_id(b"Subject: x\r\n\r\nbody\r\n", "n1@relay");
        assert_eq!(message_id(&added).as_deref(), Some("n1@relay"));
    }

    #[test]
    fn bare_line_feeds_become_crlf_and_crlf_stays() {
        assert_eq!(
            normalize_line_endings(b"a\nb\r\nc\n".to_vec()),
            b"a\r\nb\r\nc\r\n"
        );
        assert_eq!(normalize_line_endings(b"\n".to_vec()), b"\r\n");
        assert_eq!(normalize_line_endings(b"x\r\n".to_vec()), b"x\r\n");
    }
}
