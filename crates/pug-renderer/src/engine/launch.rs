//! How a Chromium process is started: the launch script that clears its environment, drops
//! root to the browser's own user and ties the browser's life to pug's, and the profile handed
//! to that user.
//!
//! Owns: who the browser runs as ([`browser_uid`]), the script ([`launch_script`], pure) and
//! preparing the profile directory for it ([`launcher`]).
//!
//! Must not: talk CDP or keep the process (that is [`super::browser`]).

use std::path::PathBuf;

/// The uid (and gid) Chromium runs as when pug runs as root and `browser_uid` is not set: a
/// user of its own, below the process backend's default tenant uids (200000…).
pub const DEFAULT_BROWSER_UID: u32 = pug_config::DEFAULT_BROWSER_UID;

/// Who Chromium runs as: `None` (pug's own user) unless pug is root; as root, an unprivileged
/// user of the browser's own, so that a compromised renderer process owns nothing of pug's.
pub fn browser_uid(euid_is_root: bool, configured: Option<u32>) -> Option<u32> {
    euid_is_root.then(|| configured.unwrap_or(DEFAULT_BROWSER_UID))
}

/// The launch script: the browser starts with a cleared environment (only `HOME`, `PATH`,
/// `TZ`: pug's own, holding `PUG_MASTER_KEY`, database URLs or tokens, never reaches it), with
/// a parent-death signal, and as `uid` when given. It `exec`s, so the process pug holds is
/// the browser (its pid, its descendants, its exit).
pub fn launch_script(
    chrome: &std::path::Path,
    home: &std::path::Path,
    timezone: &str,
    uid: Option<u32>,
) -> String {
    let q = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
    let user = match uid {
        Some(uid) => format!("--reuid={uid} --regid={uid} --clear-groups "),
        None => String::new(),
    };
    format!(
        "#!/bin/sh\nexec {ENV} -i {} {} {} {SETPRIV} {user}--pdeathsig KILL -- {} \"$@\"\n",
        q(&format!("HOME={}", home.display())),
        q("PATH=/usr/local/bin:/usr/bin:/bin"),
        q(&format!("TZ={timezone}")),
        q(&chrome.display().to_string()),
    )
}

const SETPRIV: &str = "/usr/bin/setpriv";
const ENV: &str = "/usr/bin/env";

/// What is started for `chrome`: a script in the profile directory ([`launch_script`]) that
/// `exec`s the browser through util-linux's `setpriv`, so that the kernel kills the browser
/// when pug dies (killed, out of memory) instead of leaving it running with its memory. The
/// kernel sends the signal when the *thread* that started the browser ends: launches run on
/// async runtime workers, which live as long as the runtime; never launch from
/// `spawn_blocking`, whose threads end when idle. As root, the profile is handed to the
/// browser's user first.
///
/// Written by hand: chromiumoxide starts the browser itself and offers no hook into the child
/// before `exec` (where `prctl(PR_SET_PDEATHSIG)` would go) and no way to clear its
/// environment, and `setpriv` must come before the browser's arguments, which chromiumoxide
/// puts first.
pub(super) fn launcher(
    profile: &std::path::Path,
    chrome: &std::path::Path,
    timezone: &str,
    uid: Option<u32>,
) -> std::io::Result<PathBuf> {
    let missing = |what: &str| {
        std::io::Error::other(format!(
            "{what} is needed to start Chromium with a cleared environment (and, as root, as an unprivileged user); install util-linux and coreutils"
        ))
    };
    if !std::path::Path::new(SETPRIV).is_file() {
        return Err(missing(SETPRIV));
    }
    if !std::path::Path::new(ENV).is_file() {
        return Err(missing(ENV));
    }
    let noexec = nix::sys::statvfs::statvfs(profile)
        .is_ok_and(|s| s.flags().contains(nix::sys::statvfs::FsFlags::ST_NOEXEC));
    if noexec {
        return Err(std::io::Error::other(format!(
            "{} is mounted noexec, so the browser's launch script cannot run there; set the renderer's temp_dir to another file system",
            profile.display()
        )));
    }
    if let (Some(uid), Some(parent)) = (uid, profile.parent()) {
        use std::os::unix::fs::PermissionsExt;
        let searchable =
            std::fs::metadata(parent).is_ok_and(|m| m.permissions().mode() & 0o001 != 0);
        if !searchable {
            return Err(std::io::Error::other(format!(
                "the browser's user (uid {uid}) cannot reach its profile in {}: make that directory searchable by others (chmod o+x) or set the renderer's temp_dir elsewhere",
                parent.display()
            )));
        }
    }
    // A browser given by name is looked up on PATH by setpriv, as chromiumoxide would.
    let script = profile.join("launch-browser");
    std::fs::write(&script, launch_script(chrome, profile, timezone, uid))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o700))?;
    if let Some(uid) = uid {
        // The profile (and the download directory in it) belongs to the browser's user; the
        // script stays root's and is run by root, before the browser drops to that user.
        chown_tree(profile, uid)?;
        std::os::unix::fs::chown(&script, Some(0), Some(0))?;
    }
    Ok(script)
}

/// `chown -R uid:uid dir`.
fn chown_tree(dir: &std::path::Path, uid: u32) -> std::io::Result<()> {
    std::os::unix::fs::chown(dir, Some(uid), Some(uid))?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            chown_tree(&entry.path(), uid)?;
        } else {
            std::os::unix::fs::lchown(entry.path(), Some(uid), Some(uid))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn as_root_the_browser_runs_as_a_user_of_its_own() {
        assert_eq!(browser_uid(false, None), None);
        assert_eq!(browser_uid(false, Some(5000)), None);
        assert_eq!(browser_uid(true, None), Some(DEFAULT_BROWSER_UID));
        assert_eq!(browser_uid(true, Some(5000)), Some(5000));
    }

    #[test]
    fn the_launch_script_clears_the_environment_and_drops_root() {
        let script = launch_script(
            Path::new("/usr/bin/chromium"),
            Path::new("/tmp/pug-renderer-x"),
            "Europe/Berlin",
            Some(199_999),
        );
        assert_eq!(
            script,
            "#!/bin/sh\nexec /usr/bin/env -i 'HOME=/tmp/pug-renderer-x' \
             'PATH=/usr/local/bin:/usr/bin:/bin' 'TZ=Europe/Berlin' /usr/bin/setpriv \
             --reuid=199999 --regid=199999 --clear-groups --pdeathsig KILL -- \
             '/usr/bin/chromium' \"$@\"\n"
        );
        let unprivileged = launch_script(Path::new("/o'dd/chrome"), Path::new("/p"), "UTC", None);
        assert!(
            unprivileged.contains("/usr/bin/setpriv --pdeathsig KILL -- '/o'\\''dd/chrome'"),
            "{unprivileged}"
        );
        assert!(!unprivileged.contains("reuid"));
    }
}
