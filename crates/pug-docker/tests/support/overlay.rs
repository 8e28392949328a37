//! Running pug the way it runs on a swarm, for tests: a single-node swarm joined for the test
//! ([`SwarmGuard`]), and an image to run a process of this build in a container on an overlay
//! network ([`build_runner_image`], [`host_mounts`]): an empty image whose `/usr`, `/lib`,
//! `/lib64` and `/bin` are the host's, mounted read-only, so the test binaries and `pug` run
//! in it as they are; and the swarm renderer service's image ([`build_renderer_image`]), made
//! of the host's Chromium headless shell and the libraries it needs.
//!
//! Shared by `pug-docker`'s swarm test and `pug`'s swarm tests (included by path), with the
//! `docker` helpers they use ([`docker_out`], [`docker_ok`]).
#![allow(dead_code)]

use std::process::Command;

/// The runner image's tag.
pub const RUNNER_IMAGE: &str = "pug-test/overlay-runner:1";

fn docker(args: &[&str]) -> (bool, String) {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("docker runs");
    let text = if out.status.success() {
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    } else {
        String::from_utf8_lossy(&out.stderr).trim().to_owned()
    };
    (out.status.success(), text)
}

/// Runs `docker <args>`: (success, stdout; with stderr after it on failure).
pub fn docker_out(args: &[&str]) -> (bool, String) {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("docker runs");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let err = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    (
        out.status.success(),
        if out.status.success() {
            text
        } else {
            format!("{text}\n{err}")
        },
    )
}

/// Runs `docker <args>` and returns its stdout; a failure fails the test with docker's words.
pub fn docker_ok(args: &[&str]) -> String {
    let (success, out) = docker_out(args);
    assert!(success, "docker {args:?}: {out}");
    out
}

/// Leaves the swarm when dropped, if it joined one (an active swarm is used as found).
pub struct SwarmGuard {
    initialised: bool,
    /// Whether `docker_gwbridge` (which `swarm init` creates) was there before.
    had_gwbridge: bool,
}

impl SwarmGuard {
    pub fn new() -> Self {
        let had_gwbridge = !docker(&["network", "ls", "-q", "--filter", "name=^docker_gwbridge$"])
            .1
            .is_empty();
        if docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"]).1 == "active" {
            return Self {
                initialised: false,
                had_gwbridge,
            };
        }
        let (ok, err) = docker(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
        assert!(ok, "docker swarm init failed: {err}");
        Self {
            initialised: true,
            had_gwbridge,
        }
    }
}

impl Drop for SwarmGuard {
    fn drop(&mut self) {
        if self.initialised {
            docker(&["swarm", "leave", "--force"]);
            if !self.had_gwbridge {
                docker(&["network", "rm", "docker_gwbridge"]);
            }
        }
    }
}

/// Builds [`RUNNER_IMAGE`]: nothing but a `/tmp`, a `/data` and mount points.
pub fn build_runner_image() {
    let ctx = tempfile::tempdir().unwrap();
    for dir in ["rootfs/tmp", "rootfs/etc", "rootfs/root", "rootfs/data"] {
        std::fs::create_dir_all(ctx.path().join(dir)).unwrap();
    }
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM scratch\nCOPY rootfs/ /\nENV HOME=/root PATH=/usr/local/bin:/usr/bin:/bin\n",
    )
    .unwrap();
    let (ok, err) = docker(&[
        "build",
        "--quiet",
        "-t",
        RUNNER_IMAGE,
        ctx.path().to_str().unwrap(),
    ]);
    assert!(ok, "cannot build {RUNNER_IMAGE}: {err}");
}

/// `docker run` arguments that give a runner container the host's programs and libraries
/// (read-only) and the engine's socket.
pub fn host_mounts() -> Vec<String> {
    [
        "-v",
        "/var/run/docker.sock:/var/run/docker.sock",
        "-v",
        "/usr:/usr:ro",
        "-v",
        "/lib:/lib:ro",
        "-v",
        "/lib64:/lib64:ro",
        "-v",
        "/bin:/bin:ro",
        "-v",
        "/etc/fonts:/etc/fonts:ro",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The tag of the renderer service's test image ([`build_renderer_image`]).
pub const RENDERER_IMAGE: &str = "pug-test/renderer:1";

/// The uid the renderer drops Chromium to when it runs as root
/// (`pug_config::DEFAULT_BROWSER_UID`), given a name in the image's `/etc/passwd`.
const BROWSER_UID: u32 = 199_999;

/// Builds [`RENDERER_IMAGE`], the swarm renderer service's image for tests, `FROM scratch`
/// out of this host's files (no image can be pulled, no package downloaded): `pug` (this
/// build's, at `pug_bin`) as `/usr/local/bin/pug` and the entrypoint, Chromium's headless
/// shell with its data files (`/usr/lib/chromium`, without the full browser), what the
/// renderer's launch script runs (`/bin/sh`, `/usr/bin/env`, `/usr/bin/setpriv`), every
/// shared library `ldd` names for those, fonts (`/etc/fonts`, DejaVu), a world-writable
/// `/tmp`, and an `/etc/passwd` with the unprivileged user the renderer runs Chromium as.
/// (Chosen over a root file system assembled from Debian packages and `docker import`ed: the
/// packages would have to be downloaded, while the host's headless shell is the one every
/// other renderer test runs. `deploy/renderer/Dockerfile` stays the production build.)
pub fn build_renderer_image(pug_bin: &str) {
    use std::collections::BTreeSet;
    use std::path::{Path, PathBuf};
    let ctx = tempfile::tempdir().unwrap();
    let root = ctx.path().join("rootfs");
    let chromium = Path::new("/usr/lib/chromium");
    assert!(
        chromium.join("chromium-headless-shell").is_file(),
        "the renderer image needs Chromium's headless shell: apt-get install chromium-headless-shell"
    );
    // The host's files, each at its own path (symlinks followed: the image has the content).
    let copy = |from: &Path, to: &Path| {
        let dest = root.join(to.strip_prefix("/").unwrap());
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(from, &dest).unwrap_or_else(|e| panic!("copy {from:?} → {dest:?}: {e}"));
    };
    let copy_dir = |dir: &Path| {
        let dest = root.join(dir.strip_prefix("/").unwrap());
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        let status = Command::new("cp")
            .args(["-a", "-L"])
            .arg(dir)
            .arg(&dest)
            .status()
            .expect("cp runs");
        assert!(status.success(), "cp -a -L {dir:?} {dest:?}");
    };
    let mut elves: Vec<PathBuf> = ["/usr/bin/setpriv", "/usr/bin/env"]
        .iter()
        .map(PathBuf::from)
        .collect();
    for entry in std::fs::read_dir(chromium).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().is_some_and(|n| n == "chromium") {
            continue; // the full browser: the headless shell is what the renderer runs
        }
        if path.is_dir() {
            copy_dir(&path);
        } else {
            copy(&path, &path);
            if path.extension().is_some_and(|e| e == "so")
                || path
                    .file_name()
                    .is_some_and(|n| n == "chromium-headless-shell")
            {
                elves.push(path);
            }
        }
    }
    copy(Path::new("/usr/bin/setpriv"), Path::new("/usr/bin/setpriv"));
    copy(Path::new("/usr/bin/env"), Path::new("/usr/bin/env"));
    let sh = std::fs::canonicalize("/bin/sh").unwrap();
    copy(&sh, Path::new("/bin/sh"));
    elves.push(sh);
    copy(Path::new(pug_bin), Path::new("/usr/local/bin/pug"));
    elves.push(PathBuf::from(pug_bin));
    let mut libraries = BTreeSet::new();
    for elf in &elves {
        let out = Command::new("ldd").arg(elf).output().expect("ldd runs");
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            // "libx.so.1 => /lib/x86_64-linux-gnu/libx.so.1 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)"
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next(),
                None => line.split_whitespace().next(),
            };
            if let Some(path) = path.filter(|p| p.starts_with('/')) {
                libraries.insert(PathBuf::from(path));
            }
        }
    }
    for lib in &libraries {
        copy(lib, lib);
    }
    for dir in [
        "/etc/fonts",
        "/usr/share/fonts/truetype/dejavu",
        "/usr/share/fontconfig",
    ] {
        if Path::new(dir).exists() {
            copy_dir(Path::new(dir));
        }
    }
    std::fs::create_dir_all(root.join("root")).unwrap();
    std::fs::write(
        root.join("etc/passwd"),
        format!(
            "root:x:0:0:root:/root:/bin/sh\npug-browser:x:{BROWSER_UID}:{BROWSER_UID}::/nonexistent:/bin/false\n"
        ),
    )
    .unwrap();
    std::fs::write(
        root.join("etc/group"),
        format!("root:x:0:\npug-browser:x:{BROWSER_UID}:\n"),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(root.join("tmp")).unwrap();
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM scratch\nCOPY rootfs/ /\n\
         ENV HOME=/root TMPDIR=/tmp PATH=/usr/local/bin:/usr/bin:/bin \
         CHROME_BIN=/usr/lib/chromium/chromium-headless-shell\n\
         LABEL org.opencontainers.image.title=\"pug's renderer, for tests (the host's Chromium headless shell)\"\n\
         EXPOSE 8081\nENTRYPOINT [\"/usr/local/bin/pug\"]\nCMD [\"render\"]\n",
    )
    .unwrap();
    let (ok, err) = docker(&[
        "build",
        "--quiet",
        "-t",
        RENDERER_IMAGE,
        ctx.path().to_str().unwrap(),
    ]);
    assert!(ok, "cannot build {RENDERER_IMAGE}: {err}");
}
