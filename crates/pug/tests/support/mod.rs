//! Test harness: runs the real `pug` binary with `grafana-standin` as Grafana.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

/// The `pug` binary under test.
pub fn pug_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pug"))
}

/// The grafana-standin binary, in a place tenants' users can run it from.
pub fn standin_bin() -> PathBuf {
    executable_by_tenant_users(&pug_test_support::standin::bin())
}

/// `bin` copied into a directory every user can traverse, 0755. With isolation on (tests run as
/// root), pug starts each instance as its tenant's uid, which cannot reach a build tree below a
/// private directory (a clone under `/root`, mode 0700). The copy's directory is named after
/// the binary's size and mtime, so a rebuilt binary gets a new copy; the copy is made under a
/// temporary name and linked into place, so concurrent test processes never see half a file
/// and never replace each other's.
pub fn executable_by_tenant_users(bin: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(bin).unwrap();
    let mtime = meta
        .modified()
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!("pug-test-bin-{}-{mtime}", meta.len()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let name = bin.file_name().unwrap();
    let dst = dir.join(name);
    if !dst.exists() {
        let tmp = dir.join(format!(
            ".{}.{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        std::fs::copy(bin, &tmp).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
        // A link, not a rename: it never replaces a copy another test process already made
        // (and may be running, which a restarted pug must recognise as the same executable).
        match std::fs::hard_link(&tmp, &dst) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => panic!("linking {} failed: {e}", dst.display()),
        }
        let _ = std::fs::remove_file(&tmp);
    }
    dst
}

pub use pug_test_support::http::set_cookie;
pub use pug_test_support::net::PortLease;
/// The shared poll, blocking: these tests drive the binary through blocking calls.
pub use pug_test_support::wait_for_blocking as wait_for;

/// The first of 1,000 tenant uids of a test pug whose instance ports start at `ports.0`.
pub fn tenant_uid_base(ports: (u16, u16)) -> u32 {
    1_000_000 + u32::from(ports.0) * 1000
}

/// One `pug serve` with its own data directory and ports.
pub struct Pug {
    pub data: PathBuf,
    pub url: String,
    /// pug's port: leased, not picked by pug, because pug derives the URLs it gives tenants'
    /// Grafana (`root_url`) from the configured `listen`. A restart binds it again.
    pub listen: u16,
    _listen: PortLease,
    pub env: Vec<(String, String)>,
    child: Option<Child>,
    _dir: Option<tempfile::TempDir>,
}

impl Pug {
    /// Starts pug with the stand-in as Grafana for every version, instance ports in
    /// `ports.0..=ports.1`, and `extra` environment.
    pub fn start(ports: (u16, u16), extra: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        searchable_by_tenant_users(dir.path());
        let data = dir.path().join("pug-data");
        let mut env = vec![
            (
                "PUG_PROCESS_GRAFANA_BIN".to_owned(),
                standin_bin().display().to_string(),
            ),
            ("PUG_PROCESS_PORT_MIN".to_owned(), ports.0.to_string()),
            ("PUG_PROCESS_PORT_MAX".to_owned(), ports.1.to_string()),
            (
                "PUG_CONTROLLER_READINESS_POLL_MS".to_owned(),
                "50".to_owned(),
            ),
            // Tests that render turn it on with a port of their own.
            ("PUG_RENDERER_MODE".to_owned(), "off".to_owned()),
            // Pugs on one host need uid ranges of their own (pug refuses an overlapping one);
            // every test has a port range of its own, so the ports name the range.
            (
                "PUG_PROCESS_TENANT_UID_BASE".to_owned(),
                tenant_uid_base(ports).to_string(),
            ),
            ("PUG_PROCESS_TENANT_UID_COUNT".to_owned(), "1000".to_owned()),
        ];
        for (k, v) in extra {
            env.retain(|(key, _)| key != k);
            env.push((k.to_string(), v.to_string()));
        }
        let lease = PortLease::new();
        let mut pug = Self {
            data,
            url: String::new(),
            listen: lease.port(),
            _listen: lease,
            env,
            child: None,
            _dir: Some(dir),
        };
        pug.spawn();
        pug
    }

    /// (Re)starts the `pug serve` process on the same data directory and port.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data.parent().unwrap().join("serve.log"))
            .unwrap();
        let child = Command::new(pug_bin())
            .args(["serve", "--data-dir"])
            .arg(&self.data)
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.listen))
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env_remove("PUG_URL")
            .env_remove("PUG_TOKEN")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .current_dir(self.data.parent().unwrap())
            .spawn()
            .expect("pug starts");
        self.child = Some(child);
        self.url = format!("http://127.0.0.1:{}", self.listen);
        let url = format!("{}/healthz", self.url);
        wait_for(Duration::from_secs(30), "pug to answer /healthz", || {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("pug exited at start ({status}):\n{}", self.log());
            }
            http_get(&url).ok().filter(|(s, _)| *s == 200)
        });
    }

    /// pug's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.parent().unwrap().join("serve.log")).unwrap_or_default()
    }

    /// SIGKILLs pug (instances keep running, as they would in production).
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Runs a CLI command against this pug (found through its data dir, as a local user would).
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(pug_bin())
            .args(args)
            .arg("--data-dir")
            .arg(&self.data)
            .env_remove("PUG_URL")
            .env_remove("PUG_TOKEN")
            .stdin(Stdio::null())
            .output()
            .expect("pug CLI runs")
    }

    /// Runs a CLI command against this pug with `input` on its stdin.
    pub fn cli_stdin(&self, args: &[&str], input: &str) -> Output {
        use std::io::Write;
        let mut child = Command::new(pug_bin())
            .args(args)
            .arg("--data-dir")
            .arg(&self.data)
            .env_remove("PUG_URL")
            .env_remove("PUG_TOKEN")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("pug CLI runs");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    /// `pug user create <name> --email <name>@example.com --password-stdin`, which must succeed.
    pub fn create_user(&self, name: &str, password: &str) {
        let email = format!("{name}@example.com");
        let out = self.cli_stdin(
            &[
                "user",
                "create",
                name,
                "--email",
                &email,
                "--password-stdin",
            ],
            &format!("{password}\n"),
        );
        assert!(
            out.status.success(),
            "pug user create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs a CLI command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "pug {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs a CLI command that must fail; returns its stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(!out.status.success(), "pug {args:?} should have failed");
        String::from_utf8(out.stderr).unwrap()
    }

    /// `pug tenant show <id> --output json`.
    pub fn tenant(&self, id: &str) -> Value {
        serde_json::from_str(&self.ok(&["tenant", "show", id, "--output", "json"])).unwrap()
    }

    /// Waits until the tenant's phase is `phase` (and the controller acted on its generation).
    pub fn wait_phase(&self, id: &str, phase: &str, timeout: Duration) -> Value {
        wait_for(timeout, &format!("tenant {id} to be {phase}"), || {
            let out = self.cli(&["tenant", "show", id, "--output", "json"]);
            if !out.status.success() {
                return None;
            }
            let t: Value = serde_json::from_slice(&out.stdout).ok()?;
            (t["status"]["phase"] == phase && t["status"]["observed_generation"] == t["generation"])
                .then_some(t)
        })
    }

    /// The admin token the CLI uses.
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.data.join("local.token")).unwrap()
    }

    /// An API call with the admin token: (status, JSON body).
    pub fn api(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        http(
            method,
            &format!("{}{path}", self.url),
            Some(&self.token()),
            body,
        )
    }

    /// The pids of this pug's Grafana instances, by `<tenant>/replica-<n>`.
    pub fn instances(&self) -> Vec<(String, u32)> {
        instances_under(&self.data.join("tenants"))
    }
}

impl Drop for Pug {
    fn drop(&mut self) {
        self.kill9();
        for (_, pid) in self.instances() {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        }
    }
}

/// Running processes whose `--pidfile` lies under `root`, as (`<tenant>/replica-<n>`, pid).
pub fn instances_under(root: &Path) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
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
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if stat
            .rsplit_once(')')
            .map(|(_, r)| r.trim_start().starts_with('Z'))
            .unwrap_or(true)
        {
            continue;
        }
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if let Some(i) = args.iter().position(|a| a == "--pidfile") {
            if let Some(rel) = args
                .get(i + 1)
                .and_then(|p| Path::new(p).strip_prefix(root).ok())
            {
                let parts: Vec<_> = rel
                    .iter()
                    .map(|c| c.to_string_lossy().into_owned())
                    .collect();
                if parts.len() == 4 {
                    out.push((format!("{}/{}", parts[0], parts[1]), pid));
                }
            }
        }
    }
    out.sort();
    out
}

/// A tiny blocking HTTP client (tests must not need a runtime for this).
pub fn http(method: &str, url: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = pug_test_support::http::client();
        let mut req = client.request(method.parse().unwrap(), url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    })
}

pub fn http_get(url: &str) -> Result<(u16, String), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let resp = pug_test_support::http::client()
            .get(url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        Ok((status, resp.text().await.map_err(|e| e.to_string())?))
    })
}

/// Makes a test's temporary dir (0700 when created) searchable by other users, as a data dir's
/// parents must be for tenants' instances to run as users of their own (process isolation).
pub fn searchable_by_tenant_users(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).unwrap();
}

/// GETs `url` (with the renderer's `X-Auth-Token` when given): status, content type, body.
pub fn get(url: &str, token: Option<&str>) -> (u16, String, Vec<u8>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut req = pug_test_support::http::client()
            .get(url)
            .timeout(Duration::from_secs(60));
        if let Some(t) = token {
            req = req.header("X-Auth-Token", t);
        }
        let res = req.send().await.expect("request sent");
        let status = res.status().as_u16();
        let ctype = res
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        (status, ctype, res.bytes().await.unwrap().to_vec())
    })
}

/// Width and height from a PNG's IHDR chunk.
pub fn png_size(png: &[u8]) -> (u32, u32) {
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    (be(&png[16..20]), be(&png[20..24]))
}

/// Signs `user` in through pug's login form at `url` (with its CSRF cookie): the session
/// cookie, or `None` when refused.
pub async fn login(url: &str, user: &str, password: &str) -> Option<String> {
    let r =
        pug_test_support::http::sign_in(&format!("{url}/login"), user, password, "/t/acme/").await;
    set_cookie(&r, "pug_session")
}
