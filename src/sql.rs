//! `logship sql`: statements through the store (one transaction, or one per
//! statement with `--each`), and read-only queries on any node (`--read`),
//! printed as tab-separated rows under a header line.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;
use rusqlite::types::ValueRef;

use crate::NodeArgs;

#[derive(Debug, Args)]
pub struct SqlArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// The statements (or use --file).
    sql: Option<String>,
    /// Read the statements from a file (`-` for standard input).
    #[arg(long, short = 'f')]
    file: Option<PathBuf>,
    /// Run each statement as its own transaction and print `ok <lsn>` as soon as it is durable.
    #[arg(long, conflicts_with = "read")]
    each: bool,
    /// Run a read-only query without going through the store (works on any node, also a passive copy).
    #[arg(long)]
    read: bool,
}

pub fn run(args: SqlArgs) -> Result<ExitCode> {
    let text = match (&args.sql, &args.file) {
        (Some(s), None) => s.clone(),
        (None, Some(f)) if f.as_os_str() == "-" => {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                .context("read standard input")?;
            s
        }
        (None, Some(f)) => {
            std::fs::read_to_string(f).with_context(|| format!("read {}", f.display()))?
        }
        (Some(_), Some(_)) => bail!("give the SQL either as an argument or with --file, not both"),
        (None, None) => bail!("no SQL given: pass it as an argument or with --file"),
    };
    let stdout = std::io::stdout();
    if args.read {
        let (_, node, _) = args.node.resolve()?;
        let path = node.data_dir.join(shipper::store::DATABASE_FILE);
        let conn = shipper::store::open_read_only(&path)?;
        let mut out = stdout.lock();
        for stmt_sql in shipper::script::split_statements(&text) {
            let mut stmt = conn
                .prepare(stmt_sql)
                .with_context(|| format!("prepare {stmt_sql}"))?;
            if !stmt.readonly() {
                bail!(
                    "--read runs read-only queries only; {stmt_sql:?} writes (drop --read to log it)"
                );
            }
            let names: Vec<String> = stmt.column_names().map(|s| s.to_string()).collect();
            writeln!(out, "{}", names.join("\t"))?;
            let mut rows = stmt.raw_query();
            while let Some(row) = rows.next()? {
                write_row(&mut out, names.len(), row)?;
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let (name, node, cfg) = args.node.resolve()?;
    let op = crate::control::Op::Sql {
        sql: text,
        each: args.each,
    };
    crate::control::run_on_node(&name, &node, &cfg, &op)?;
    Ok(ExitCode::SUCCESS)
}

/// Runs `text` through `store` (one transaction, or one per statement with
/// `each`), handing the output (rows, then `ok <lsn>` once durable) to `out`.
pub fn execute(
    store: &shipper::Store,
    text: &str,
    each: bool,
    out: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
) -> Result<()> {
    if each {
        for stmt_sql in shipper::script::split_statements(text) {
            let owned = stmt_sql.to_string();
            let done = store
                .transaction(move |tx| {
                    let mut out = Vec::new();
                    tx.execute_one(&owned, &mut |names, i, row| {
                        print_rows(&mut out, names, i, row)
                    })?;
                    Ok(out)
                })
                .with_context(|| format!("statement {stmt_sql:?}"))?;
            let mut buf = done.value;
            writeln!(buf, "ok {}", done.lsn)?;
            out(&buf)?;
        }
    } else {
        let owned = text.to_string();
        let done = store.transaction(move |tx| {
            let mut out = Vec::new();
            tx.execute_script(&owned, |names, i, row| print_rows(&mut out, names, i, row))?;
            Ok(out)
        })?;
        let mut buf = done.value;
        writeln!(buf, "ok {}", done.lsn)?;
        out(&buf)?;
    }
    Ok(())
}

/// Buffers one row (with a header line before the first row of a statement).
fn print_rows(
    out: &mut Vec<u8>,
    names: &[String],
    index: usize,
    row: &rusqlite::Row<'_>,
) -> shipper::Result<()> {
    if index == 0 {
        let _ = writeln!(out, "{}", names.join("\t"));
    }
    write_row(out, names.len(), row).map_err(|e| shipper::Error::Aborted(e.to_string()))
}

fn write_row(out: &mut dyn Write, n: usize, row: &rusqlite::Row<'_>) -> Result<()> {
    for i in 0..n {
        if i > 0 {
            out.write_all(b"\t")?;
        }
        write_value(out, row.get_ref(i)?)?;
    }
    out.write_all(b"\n")?;
    Ok(())
}

/// NULL is `\N`; text escapes tab, newline, CR and backslash; blobs are `\x` + hex.
fn write_value(out: &mut dyn Write, v: ValueRef<'_>) -> std::io::Result<()> {
    match v {
        ValueRef::Null => out.write_all(b"\\N"),
        ValueRef::Integer(i) => write!(out, "{i}"),
        ValueRef::Real(f) => {
            if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e15 {
                write!(out, "{f:.1}")
            } else {
                write!(out, "{f}")
            }
        }
        ValueRef::Text(t) => {
            for &b in t {
                match b {
                    b'\t' => out.write_all(b"\\t")?,
                    b'\n' => out.write_all(b"\\n")?,
                    b'\r' => out.write_all(b"\\r")?,
                    b'\\' => out.write_all(b"\\\\")?,
                    _ => out.write_all(&[b])?,
                }
            }
            Ok(())
        }
        ValueRef::Blob(b) => {
            out.write_all(b"\\x")?;
            for byte in b {
                write!(out, "{byte:02x}")?;
            }
            Ok(())
        }
    }
}
