//! Recognising pug's instances among the machine's processes: the `--pidfile` each one carries
//! (`<root>/<tenant>/replica-<n>/run/<port>-<spec hash>.pid`, see [`super`]) read back from
//! `/proc`, whether a pid is alive, and the last line an instance logged.
//!
//! Owns: reading `/proc` and an instance's console log.
//!
//! Must not: signal, start or adopt anything (the backend decides what a found process is).

use std::collections::HashMap;
use std::path::Path;

use pug_types::TenantId;

use super::{now_ms, Key, Proc};
use crate::isolation;

/// Finds running processes whose `--pidfile` lies under `root`: pug's instances.
pub(super) fn scan_proc(root: &Path) -> HashMap<Key, Proc> {
    let mut found = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let Some(pidfile) = args
            .windows(2)
            .find(|w| w[0] == b"--pidfile")
            .and_then(|w| std::str::from_utf8(w[1]).ok())
        else {
            continue;
        };
        if let Some((key, port, hash)) = parse_pidfile(root, Path::new(pidfile)) {
            if is_alive(pid) {
                found.insert(
                    key,
                    Proc {
                        pid,
                        port,
                        spec_hash: hash,
                        started_at_ms: now_ms(),
                        owned: false,
                        uid: isolation::process_uid(pid),
                        exited: None,
                    },
                );
            }
        }
    }
    found
}

/// `<root>/<tenant>/replica-<n>/run/<port>-<hash>.pid` → ((tenant, n), port, hash).
pub(super) fn parse_pidfile(root: &Path, pidfile: &Path) -> Option<(Key, u16, String)> {
    let rest = pidfile.strip_prefix(root).ok()?;
    let parts: Vec<&str> = rest.iter().filter_map(|c| c.to_str()).collect();
    let [tenant, replica, "run", file] = parts.as_slice() else {
        return None;
    };
    let tenant = TenantId::parse(tenant).ok()?;
    let replica = replica.strip_prefix("replica-")?.parse().ok()?;
    let (port, hash) = file.strip_suffix(".pid")?.split_once('-')?;
    Some(((tenant, replica), port.parse().ok()?, hash.to_owned()))
}

/// Whether `pid` is a live process (a zombie counts as dead).
pub(super) fn is_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may itself hold spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

pub(super) fn last_log_line(path: &Path) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(4096))).ok()?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    let line = text.lines().rev().find(|l| !l.trim().is_empty())?;
    Some(line.chars().take(300).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pidfiles_carry_the_labels() {
        let root = Path::new("/data/tenants");
        let (key, port, hash) = parse_pidfile(
            root,
            Path::new("/data/tenants/acme/replica-2/run/20001-abcd.pid"),
        )
        .unwrap();
        assert_eq!(key, (TenantId::parse("acme").unwrap(), 2));
        assert_eq!((port, hash.as_str()), (20001, "abcd"));
        assert!(parse_pidfile(root, Path::new("/other/acme/replica-2/run/1-a.pid")).is_none());
        assert!(
            parse_pidfile(root, Path::new("/data/tenants/Bad/replica-2/run/1-a.pid")).is_none()
        );
    }

    #[test]
    fn liveness_of_self_and_nonexistent() {
        assert!(is_alive(std::process::id()));
        assert!(!is_alive(u32::MAX - 1));
    }
}
