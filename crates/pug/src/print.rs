//! How commands print: borderless tables, pretty JSON, times.
//!
//! Must not: call pug or decide an exit code.

use std::process::ExitCode;
use std::time::Duration;

use comfy_table::{presets::NOTHING, Table};

use crate::Output;

/// A borderless table; the header is left out when every column name is empty.
pub fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(NOTHING);
    if header.iter().any(|h| !h.is_empty()) {
        t.set_header(header.to_vec());
    }
    t
}

/// `v` as pretty JSON on stdout.
pub fn json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
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

/// A time of day, `HH:MM:SSZ`.
pub fn clock(ms: i64) -> String {
    let secs = ms / 1000;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    format!("{h:02}:{m:02}:{s:02}Z")
}

/// A time as RFC 3339 to the second, UTC.
pub fn time(ms: i64) -> String {
    let at = std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(at).to_string()
}

/// How long before `now` (both ms since the epoch) `at` was: `5s ago`, `3m ago`, `2h ago`,
/// `4d ago`.
pub fn ago(now: i64, at: i64) -> String {
    let secs = ((now - at).max(0)) / 1000;
    match secs {
        s if s < 60 => format!("{s}s ago"),
        s if s < 3600 => format!("{}m ago", s / 60),
        s if s < 86_400 => format!("{}h ago", s / 3600),
        s => format!("{}d ago", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ages_print_in_their_largest_unit() {
        for (ago, want) in [
            (0, "0s ago"),
            (59_999, "59s ago"),
            (60_000, "1m ago"),
            (7_200_000, "2h ago"),
            (3 * 86_400_000, "3d ago"),
            (-5, "0s ago"),
        ] {
            assert_eq!(super::ago(1_000_000_000_000, 1_000_000_000_000 - ago), want);
        }
    }

    #[test]
    fn times_print_in_utc() {
        let cases = [
            (0, "00:00:00Z", "1970-01-01T00:00:00Z"),
            (3_723_999, "01:02:03Z", "1970-01-01T01:02:03Z"),
            (86_400_000 + 59_000, "00:00:59Z", "1970-01-02T00:00:59Z"),
        ];
        for (ms, clock, time) in cases {
            assert_eq!(super::clock(ms), clock, "{ms}");
            assert_eq!(super::time(ms), time, "{ms}");
        }
        assert_eq!(
            super::time(-5),
            "1970-01-01T00:00:00Z",
            "before the epoch: clamped"
        );
    }
}
