//! Splitting SQL text into single statements, so that a script can route
//! each statement to the right path (DML through the session, schema changes
//! as DDL parts). Uses SQLite's own `sqlite3_complete` to find statement
//! ends, so semicolons inside strings, comments and trigger bodies are safe.

use std::ffi::CString;

/// Splits `sql` into complete statements (each with its terminating `;`
/// when there is one). Whitespace-only and comment-only pieces are dropped.
/// A trailing statement without `;` is returned as is.
pub fn split_statements(sql: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let bytes = sql.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b';' {
            let candidate = &sql[start..=i];
            if is_complete(candidate) {
                push_statement(&mut out, candidate);
                start = i + 1;
            }
        }
        i += 1;
    }
    if start < sql.len() {
        push_statement(&mut out, &sql[start..]);
    }
    out
}

fn push_statement<'a>(out: &mut Vec<&'a str>, piece: &'a str) {
    if has_code(piece) {
        out.push(piece.trim());
    }
}

fn is_complete(sql: &str) -> bool {
    let Ok(c) = CString::new(sql) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call;
    // sqlite3_complete only reads it.
    unsafe { rusqlite::ffi::sqlite3_complete(c.as_ptr()) != 0 }
}

/// True when `piece` holds something other than whitespace, `;` and comments.
fn has_code(piece: &str) -> bool {
    let b = piece.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' | b';' => i += 1,
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                    i += 1;
                }
                i += 2;
            }
            _ => return true,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_on_statement_ends_only() {
        let sql = "CREATE TABLE t(a TEXT PRIMARY KEY NOT NULL); INSERT INTO t VALUES('x;y');\n\
                   -- a comment; with a semicolon\n\
                   CREATE TRIGGER tr AFTER INSERT ON t BEGIN DELETE FROM t WHERE a='z'; END;\n\
                   SELECT 1";
        let parts = split_statements(sql);
        assert_eq!(parts.len(), 4, "{parts:?}");
        assert_eq!(parts[1], "INSERT INTO t VALUES('x;y');");
        assert!(parts[2].ends_with("END;"));
        assert_eq!(parts[3], "SELECT 1");
    }

    #[test]
    fn drops_empty_and_comment_only_pieces() {
        assert!(split_statements(" ; -- nothing\n /* x */ ;").is_empty());
        assert_eq!(split_statements("SELECT 1;;").len(), 1);
    }
}
