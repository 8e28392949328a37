//! Logging: Grafana-style logfmt lines (`logger=… t=… level=… msg="…" key=value`) written to
//! stderr and, once the logs directory is known, also appended to `<paths.logs>/grafana.log`.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

static FILE: OnceLock<Mutex<std::fs::File>> = OnceLock::new();

/// Also write every following line to `<dir>/grafana.log` (appending).
pub fn open_file(dir: &Path) -> std::io::Result<()> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("grafana.log"))?;
    let _ = FILE.set(Mutex::new(file));
    Ok(())
}

/// RFC 3339 UTC timestamp with milliseconds, computed without a date library.
pub fn timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

fn push_value(out: &mut String, v: &str) {
    if !v.is_empty() && !v.contains([' ', '=', '"', '\n', '\t']) {
        out.push_str(v);
    } else {
        let _ = write!(out, "{v:?}");
    }
}

/// One logfmt line.
pub fn format_line(logger: &str, level: &str, msg: &str, kv: &[(&str, &str)]) -> String {
    let mut line = format!(
        "logger={logger} t={} level={level} msg=",
        timestamp(SystemTime::now())
    );
    push_value(&mut line, msg);
    for (k, v) in kv {
        let _ = write!(line, " {k}=");
        push_value(&mut line, v);
    }
    line
}

/// Writes one line to stderr and the log file.
pub fn log(logger: &str, level: &str, msg: &str, kv: &[(&str, &str)]) {
    let line = format_line(logger, level, msg, kv);
    eprintln!("{line}");
    if let Some(file) = FILE.get() {
        if let Ok(mut f) = file.lock() {
            let _ = writeln!(f, "{line}");
        }
    }
}

pub fn info(logger: &str, msg: &str, kv: &[(&str, &str)]) {
    log(logger, "info", msg, kv);
}

pub fn warn(logger: &str, msg: &str, kv: &[(&str, &str)]) {
    log(logger, "warn", msg, kv);
}

pub fn error(logger: &str, msg: &str, kv: &[(&str, &str)]) {
    log(logger, "error", msg, kv);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps() {
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_709_251_199_123); // 2024-02-29T23:59:59.123Z
        assert_eq!(timestamp(t), "2024-02-29T23:59:59.123Z");
    }

    #[test]
    fn logfmt_quoting() {
        let l = format_line(
            "x",
            "info",
            "HTTP Server Listen",
            &[("address", "1.2.3.4:5"), ("e", "")],
        );
        assert!(
            l.ends_with("msg=\"HTTP Server Listen\" address=1.2.3.4:5 e=\"\""),
            "{l}"
        );
    }
}
