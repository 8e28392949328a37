//! Helpers for the monitoring pack's tests (this crate ships nothing; its tests live in `tests/`).
//!
//! The pack is `deploy/prometheus` (scrape config, alert rules and their `promtool` unit tests),
//! `deploy/grafana` (dashboards and provisioning) and the chat example's own Prometheus and
//! Grafana files. The tests run Debian's `promtool` (package `prometheus`) on all of it and check
//! the Grafana JSON by shape, since Grafana itself cannot run here; one runs Debian's
//! `prometheus` on the shipped `prometheus.yml` against a real `pug serve` and checks that it
//! scrapes a tenant's instance through pug.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The workspace root, found from this crate's manifest dir.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("testing/monitoring-pack sits two levels below the root")
        .to_path_buf()
}

/// The path to `promtool`; fails the test, naming the package to install, when it is missing.
pub fn promtool() -> PathBuf {
    let path = PathBuf::from("/usr/bin/promtool");
    assert!(
        path.is_file(),
        "/usr/bin/promtool not found: these tests need the Debian package `prometheus` \
         (install it with `apt-get install prometheus`)"
    );
    path
}

/// Runs `promtool` with `args` (and `stdin`, if given) in `dir`.
pub fn run_promtool(dir: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(promtool())
        .args(args)
        .current_dir(dir)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting promtool");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(input.as_bytes())
            .expect("writing to promtool");
    }
    child.wait_with_output().expect("waiting for promtool")
}

/// Asserts that `output` is a success, printing everything promtool said when it is not.
pub fn assert_success(what: &str, output: &Output) {
    assert!(
        output.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Reads a YAML file into a JSON value (easier to walk than YAML's own value type).
pub fn read_yaml(path: &Path) -> serde_json::Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// Reads a JSON file.
pub fn read_json(path: &Path) -> serde_json::Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// The files in `dir` whose names end in `suffix`, sorted.
pub fn files_ending(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|entry| entry.expect("reading a directory entry").path())
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.ends_with(suffix))
        })
        .collect();
    files.sort();
    files
}
