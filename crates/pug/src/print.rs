//! How commands print: a [`View`] as lines and borderless tables, or pretty JSON.
//!
//! Must not: call pug, decide an exit code, or choose what a view shows (`pug_client::view`).

use std::process::ExitCode;

use comfy_table::{presets::NOTHING, Table};
use pug_client::view::{Block, View};

use crate::Output;

/// `v` as pretty JSON on stdout.
pub fn json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// A view on stdout: each line, and each table without borders (and without a header when
/// every column name is empty).
pub fn view(view: &View) {
    for block in view {
        match block {
            Block::Line(line) => println!("{line}"),
            Block::Table { header, rows } => {
                let mut t = Table::new();
                t.load_preset(NOTHING);
                if header.iter().any(|h| !h.is_empty()) {
                    t.set_header(header.clone());
                }
                for row in rows {
                    t.add_row(row.clone());
                }
                println!("{t}");
            }
        }
    }
}

/// `v` as JSON (`--output json`) or as `table` prints it; then success.
pub fn out<T: serde::Serialize>(
    output: Output,
    v: &T,
    table: impl FnOnce(&T),
) -> anyhow::Result<ExitCode> {
    match output {
        Output::Json => json(v)?,
        Output::Table => table(v),
    }
    Ok(ExitCode::SUCCESS)
}
