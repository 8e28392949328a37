//! The claim a pug holds on its range of tenant user ids, so that two pugs on one host never
//! give the same uid to two tenants.
//!
//! A tenant's uid is its only boundary on the process backend: whoever shares it reads the
//! tenant's files, and pug kills every process of a deleted tenant's uid. Two pugs with the same
//! `process.tenant_uid_base` would each hand out the same uids, so one pug's tenant could read
//! the other's files and one pug's delete would kill the other's Grafana. Each isolating pug
//! therefore holds an exclusive `flock` on a claim file named after its range in a directory of
//! the host (`/run/pug/tenant-uids` by default: `/run` is cleared at boot, so claims of a crashed
//! host never outlive it) for as long as it runs; a pug whose range overlaps a held claim refuses
//! to start. A claim whose lock nobody holds is a dead pug's and is removed.
//!
//! Owns: the claim directory's files and their locks, and [`overlaps`] (pure).
//!
//! Must not: read the store or decide which uid a tenant gets (the store allocates them).

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// Where pugs claim their ranges unless told otherwise.
pub const DEFAULT_DIR: &str = "/run/pug/tenant-uids";

/// A held claim on `base..base+count`; released when dropped (or when pug dies).
#[derive(Debug)]
pub struct UidClaim {
    path: PathBuf,
    _lock: Flock<File>,
}

impl UidClaim {
    /// The claim file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for UidClaim {
    fn drop(&mut self) {
        // Unlinked while still locked: no other pug can take the lock of a file about to go.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether the half-open ranges `a` and `b` (base, count) share an id.
pub fn overlaps(a: (u32, u32), b: (u32, u32)) -> bool {
    let end = |(base, count): (u32, u32)| u64::from(base) + u64::from(count);
    u64::from(a.0) < end(b) && u64::from(b.0) < end(a)
}

/// `<base>-<count>.claim` → (base, count).
fn parse_name(name: &str) -> Option<(u32, u32)> {
    let (base, count) = name.strip_suffix(".claim")?.split_once('-')?;
    Some((base.parse().ok()?, count.parse().ok()?))
}

/// Claims `range` (base, count) for the pug serving `data_dir`, in `dir`. `Err` says which pug
/// holds an overlapping range and how to choose another.
pub fn claim(dir: &Path, range: (u32, u32), data_dir: &Path) -> Result<UidClaim, String> {
    let io = |what: &str, path: &Path, e: std::io::Error| {
        format!("cannot {what} {}: {e}", path.display())
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| io("create", dir, e))?;
    // One pug at a time looks at the claims and adds its own.
    let guard_path = dir.join(".lock");
    let guard = open(&guard_path).map_err(|e| io("open", &guard_path, e))?;
    let _guard = Flock::lock(guard, FlockArg::LockExclusive)
        .map_err(|(_, e)| io("lock", &guard_path, e.into()))?;

    let entries = std::fs::read_dir(dir).map_err(|e| io("list", dir, e))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(theirs) = name.to_str().and_then(parse_name) else {
            continue;
        };
        let path = entry.path();
        let Ok(file) = open(&path) else { continue };
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            // Nobody holds it: its pug is gone.
            Ok(_stale) => {
                let _ = std::fs::remove_file(&path);
            }
            Err((mut file, _)) if overlaps(theirs, range) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let who = if Path::new(holder) == data_dir {
                    format!(
                        "another pug serving this data dir ({holder}) is running; stop it first"
                    )
                } else {
                    format!(
                        "they are held by the pug serving {holder}; give each pug on a host a range of its own \
                         (process.tenant_uid_base and process.tenant_uid_count, e.g. PUG_PROCESS_TENANT_UID_BASE={}), \
                         or one pug's tenants could read the other's files and be stopped by it",
                        u64::from(theirs.0) + u64::from(theirs.1)
                    )
                };
                return Err(format!(
                    "tenant user ids {}..{} overlap ids {}..{} claimed in {}: {who}",
                    range.0,
                    u64::from(range.0) + u64::from(range.1),
                    theirs.0,
                    u64::from(theirs.0) + u64::from(theirs.1),
                    dir.display()
                ));
            }
            Err(_) => {}
        }
    }
    let path = dir.join(format!("{}-{}.claim", range.0, range.1));
    let file = open(&path).map_err(|e| io("create", &path, e))?;
    let mut lock = Flock::lock(file, FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| io("lock", &path, e.into()))?;
    lock.set_len(0).map_err(|e| io("write", &path, e))?;
    lock.write_all(data_dir.to_string_lossy().as_bytes())
        .map_err(|e| io("write", &path, e))?;
    Ok(UidClaim { path, _lock: lock })
}

fn open(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_overlap_when_they_share_an_id() {
        for (a, b, want) in [
            ((200_000, 100), (200_000, 100), true),
            ((200_000, 100), (200_099, 1), true),
            ((200_000, 100), (200_100, 100), false),
            ((200_100, 100), (200_000, 100), false),
            ((200_050, 10), (200_000, 100), true),
            ((u32::MAX - 1, 1), (u32::MAX - 1, 1), true),
            ((1000, 1), (1001, 1), false),
        ] {
            assert_eq!(overlaps(a, b), want, "{a:?} {b:?}");
            assert_eq!(overlaps(b, a), want, "{b:?} {a:?}");
        }
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(parse_name("200000-100000.claim"), Some((200_000, 100_000)));
        assert_eq!(parse_name(".lock"), None);
        assert_eq!(parse_name("x-1.claim"), None);
    }

    #[test]
    fn a_held_overlapping_range_is_refused_and_a_released_one_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let a = claim(dir.path(), (300_000, 100), Path::new("/srv/a")).unwrap();
        let err = claim(dir.path(), (300_050, 100), Path::new("/srv/b")).unwrap_err();
        assert!(
            err.contains("/srv/a") && err.contains("PUG_PROCESS_TENANT_UID_BASE=300100"),
            "{err}"
        );
        let same = claim(dir.path(), (300_000, 100), Path::new("/srv/a")).unwrap_err();
        assert!(same.contains("this data dir"), "{same}");
        let b = claim(dir.path(), (300_100, 100), Path::new("/srv/b")).unwrap();
        drop(a);
        assert!(!dir.path().join("300000-100.claim").exists());
        let c = claim(dir.path(), (300_000, 100), Path::new("/srv/c")).unwrap();
        assert!(c.path().exists() && b.path().exists());
    }

    #[test]
    fn a_dead_pugs_claim_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        // A claim file nobody holds a lock on: what a killed pug leaves.
        std::fs::write(dir.path().join("300000-100.claim"), "/srv/dead").unwrap();
        let claim = claim(dir.path(), (300_000, 100), Path::new("/srv/new")).unwrap();
        assert_eq!(std::fs::read_to_string(claim.path()).unwrap(), "/srv/new");
    }
}
