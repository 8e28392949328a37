//! What a deleted tenant's Unix user left outside its own directory, removed before its uid
//! goes to the next tenant.
//!
//! Owns: the machine's shared writable directories ([`SHARED_DIRS`]: `/tmp`, `/var/tmp`,
//! `/dev/shm`) and removing, from them, every file and directory owned by one uid.
//!
//! Why: the process backend gives a freed uid to the next tenant created (the range is
//! finite). A file the old tenant's Grafana left in `/tmp` (a plugin's cache, a crash dump, a
//! rendered image) would then belong to the new tenant. Instances get `TMPDIR` inside their own
//! replica directory, which is archived with the tenant; this removes what was written to the
//! shared directories anyway.
//!
//! Must not: follow symbolic links, leave the filesystem of the directory it cleans (a mount
//! below `/tmp` is someone else's), touch anything another uid owns, or enter the directories
//! it is told to keep (pug's own data dir may well be under `/tmp`: the tenant's files there
//! are archived, not removed).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The directories any user may write to on a Linux machine.
pub const SHARED_DIRS: &[&str] = &["/tmp", "/var/tmp", "/dev/shm"];

/// How deep [`remove_owned_by`] looks for `uid`'s entries in directories of other users.
const MAX_DEPTH: usize = 8;

/// Removes every entry owned by `uid` below `dir` (not `dir` itself), on `dir`'s filesystem,
/// outside the directories in `keep`; returns how many entries it removed. Entries it cannot
/// read or remove are skipped.
pub fn remove_owned_by(dir: &Path, uid: u32, keep: &[&Path]) -> usize {
    let Ok(meta) = std::fs::symlink_metadata(dir) else {
        return 0;
    };
    let keep: Vec<std::path::PathBuf> = keep
        .iter()
        .map(|k| std::fs::canonicalize(k).unwrap_or_else(|_| k.to_path_buf()))
        .collect();
    walk(dir, uid, meta.dev(), 0, &keep)
}

fn walk(dir: &Path, uid: u32, dev: u64, depth: usize, keep: &[std::path::PathBuf]) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        if keep.iter().any(|k| k == &path) {
            continue;
        }
        // Not followed: a link is an entry of its own, owned by whoever made it.
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.dev() != dev {
            continue;
        }
        if meta.uid() == uid {
            let gone = if meta.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            if gone.is_ok() {
                removed += 1;
            }
        } else if meta.is_dir() && depth < MAX_DEPTH {
            removed += walk(&path, uid, dev, depth + 1, keep);
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    /// As root (CI): entries of the uid go, wherever they are below the directory; entries of
    /// others, and what a link of the uid points to, stay.
    #[test]
    fn removes_what_the_uid_owns_and_nothing_else() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: needs root to give files to another uid");
            return;
        }
        let uid = 4_000_123;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let own = |p: &Path| std::os::unix::fs::lchown(p, Some(uid), Some(uid)).unwrap();
        std::fs::write(d.join("left.txt"), "secret").unwrap();
        own(&d.join("left.txt"));
        std::fs::create_dir_all(d.join("cache/deep")).unwrap();
        std::fs::write(d.join("cache/deep/x"), "x").unwrap();
        own(&d.join("cache"));
        own(&d.join("cache/deep"));
        own(&d.join("cache/deep/x"));
        // Someone else's directory with one file of the uid inside.
        std::fs::create_dir(d.join("other")).unwrap();
        std::fs::write(d.join("other/mine"), "m").unwrap();
        own(&d.join("other/mine"));
        std::fs::write(d.join("other/theirs"), "t").unwrap();
        // A link of the uid to a file it does not own.
        std::fs::write(d.join("target"), "keep").unwrap();
        symlink(d.join("target"), d.join("link")).unwrap();
        own(&d.join("link"));

        // A kept directory (pug's data dir) with the uid's files inside.
        std::fs::create_dir_all(d.join("pug-data/tenants/t/data")).unwrap();
        std::fs::write(d.join("pug-data/tenants/t/data/grafana.db"), "db").unwrap();
        own(&d.join("pug-data/tenants/t/data"));
        own(&d.join("pug-data/tenants/t/data/grafana.db"));

        assert_eq!(remove_owned_by(d, uid, &[&d.join("pug-data")]), 4);
        for gone in ["left.txt", "cache", "other/mine", "link"] {
            assert!(
                !d.join(gone).exists() && d.join(gone).symlink_metadata().is_err(),
                "{gone}"
            );
        }
        for kept in [
            "other",
            "other/theirs",
            "target",
            "pug-data/tenants/t/data/grafana.db",
        ] {
            assert!(d.join(kept).exists(), "{kept}");
        }
        assert_eq!(std::fs::read_to_string(d.join("target")).unwrap(), "keep");
        assert_eq!(remove_owned_by(d, uid, &[&d.join("pug-data")]), 0);
        assert_eq!(remove_owned_by(&d.join("missing"), uid, &[]), 0);
    }
}
