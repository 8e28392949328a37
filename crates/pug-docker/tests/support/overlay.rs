//! Running pug the way it runs on a swarm, for tests: a single-node swarm joined for the test
//! ([`SwarmGuard`]), and an image to run a process of this build in a container on an overlay
//! network ([`build_runner_image`], [`host_mounts`]): an empty image whose `/usr`, `/lib`,
//! `/lib64` and `/bin` are the host's, mounted read-only, so the test binaries and `pug` run
//! in it as they are.
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
