//! Integration tests: start the real binary and talk to it over loopback.
//! Readiness = the "HTTP Server Listen" log line (printed after the port is bound, with the
//! actual address, since tests use `http_port = 0`); no fixed sleeps.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_grafana-standin");
const START_TIMEOUT: Duration = Duration::from_secs(20);

struct Standin {
    child: Child,
    lines: mpsc::Receiver<String>,
    log: Vec<String>,
    dir: tempfile::TempDir,
}

struct Opts<'a> {
    ini: &'a str,
    env: Vec<(&'a str, String)>,
    args: Vec<String>,
    program: Option<PathBuf>,
    dir: Option<tempfile::TempDir>,
}

impl<'a> Opts<'a> {
    fn new(ini: &'a str) -> Self {
        Opts {
            ini,
            env: Vec::new(),
            args: Vec::new(),
            program: None,
            dir: None,
        }
    }
    fn env(mut self, k: &'a str, v: impl Into<String>) -> Self {
        self.env.push((k, v.into()));
        self
    }
    fn spawn(self) -> Standin {
        let dir = self.dir.unwrap_or_else(|| tempfile::tempdir().unwrap());
        let ini = dir.path().join("grafana.ini");
        std::fs::write(
            &ini,
            format!(
                "[server]\nhttp_addr = 127.0.0.1\nhttp_port = 0\n{}\n",
                self.ini
            ),
        )
        .unwrap();
        let mut cmd = Command::new(self.program.as_deref().unwrap_or(Path::new(BIN)));
        cmd.arg("server")
            .arg("--homepath")
            .arg(dir.path())
            .arg("--config")
            .arg(&ini)
            .arg("--pidfile")
            .arg(dir.path().join("grafana.pid"))
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, _) in std::env::vars() {
            if k.starts_with("GF_") || k == "STANDIN_VERSION" {
                cmd.env_remove(k);
            }
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn grafana-standin");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Standin {
            child,
            lines,
            log: Vec::new(),
            dir,
        }
    }
}

impl Standin {
    /// Waits for the listen line and returns the bound address, or None if it never came
    /// within `timeout` (or the process ended).
    fn listen_addr(&mut self, timeout: Duration) -> Option<SocketAddr> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.log.push(line.clone());
                    if let Some(addr) = pug_test_support::standin::parse_listen_line(&line) {
                        return Some(addr);
                    }
                }
                Err(_) => return None,
            }
        }
    }

    fn addr(&mut self) -> SocketAddr {
        match self.listen_addr(START_TIMEOUT) {
            Some(a) => a,
            None => panic!("stand-in did not start; log:\n{}", self.log.join("\n")),
        }
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            // drain log lines while waiting (also paces the loop)
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(20)) {
                self.log.push(line);
            }
        }
    }

    fn stderr_all(&mut self) -> String {
        while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
            self.log.push(line);
        }
        self.log.join("\n")
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }
}

impl Drop for Standin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Resp {
        status,
        headers,
        body: body.to_string(),
    }
}

fn get(addr: SocketAddr, path: &str) -> Resp {
    request(addr, "GET", path, &[])
}

const SUBPATH: &str = "root_url = http://localhost:8080/t/acme/\nserve_from_sub_path = true\n";

#[test]
fn health_healthz_metrics_and_pidfile() {
    let mut s = Opts::new("").spawn();
    let addr = s.addr();
    let r = get(addr, "/api/health");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("application/json; charset=UTF-8")
    );
    let j = r.json();
    assert_eq!(j["database"], "ok");
    assert_eq!(j["version"], "11.3.0");
    assert_eq!(j["commit"], "standin");
    assert_eq!(request(addr, "HEAD", "/api/health", &[]).status, 200);
    let r = get(addr, "/healthz");
    assert_eq!((r.status, r.body.as_str()), (200, "Ok"));
    let r = get(addr, "/metrics");
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    assert!(r.body.contains("grafana_build_info{"), "{}", r.body);
    assert!(r.body.contains("version=\"11.3.0\"} 1"));
    assert!(r.body.contains("process_start_time_seconds "));
    let pid = std::fs::read_to_string(s.dir.path().join("grafana.pid")).unwrap();
    assert_eq!(pid.trim(), s.child.id().to_string());
    // paths created, sqlite file and grafana.log on disk
    let data = s.dir.path().join("data");
    assert!(data.join("grafana.db").is_file());
    assert!(data.join("plugins").is_dir());
    assert!(s.dir.path().join("conf/provisioning").is_dir());
    let log = std::fs::read_to_string(data.join("log/grafana.log")).unwrap();
    assert!(log.contains("msg=\"HTTP Server Listen\""), "{log}");
}

#[test]
fn sub_path_serving_and_404_outside() {
    let mut s = Opts::new(SUBPATH).spawn();
    let addr = s.addr();
    assert!(s.log.iter().any(|l| l.contains("subUrl=/t/acme")));
    let page = get(addr, "/t/acme/");
    assert_eq!(page.status, 200);
    assert!(page.body.contains("not signed in"), "{}", page.body);
    assert_eq!(get(addr, "/t/acme").status, 200);
    assert_eq!(get(addr, "/").status, 404);
    assert_eq!(get(addr, "/t/other/").status, 404);
    assert_eq!(get(addr, "/t/acmex/").status, 404);
    let r = get(addr, "/api/user");
    assert_eq!(
        (r.status, r.json()["message"].as_str()),
        (404, Some("Not found"))
    );
    assert_eq!(get(addr, "/t/acme/api/user").status, 401);
    // health answers at the root and under the sub path, as Grafana's middleware does
    assert_eq!(get(addr, "/api/health").status, 200);
    assert_eq!(get(addr, "/t/acme/api/health").status, 200);
    assert_eq!(get(addr, "/t/acme/healthz").status, 200);
    let h = get(addr, "/t/acme/api/standin/headers?x=1").json();
    assert_eq!(h["uri"], "/t/acme/api/standin/headers?x=1");
    assert_eq!(h["path"], "/api/standin/headers");

    // Without serve_from_sub_path Grafana serves at / (the proxy strips the prefix).
    let mut s = Opts::new("root_url = http://localhost:8080/t/acme/\n").spawn();
    let addr = s.addr();
    assert_eq!(get(addr, "/").status, 200);
    assert_eq!(get(addr, "/t/acme/").status, 404);

    // strict_sub_path = false: Grafana's TrimPrefix behaviour, both forms answer.
    let mut s = Opts::new(SUBPATH)
        .env("GF_STANDIN_STRICT_SUB_PATH", "false")
        .spawn();
    let addr = s.addr();
    assert_eq!(get(addr, "/").status, 200);
    assert_eq!(get(addr, "/t/acme/").status, 200);
}

const PROXY: &str =
    "[auth.proxy]\nenabled = true\nheaders = Email:X-WEBAUTH-EMAIL Role:X-WEBAUTH-ROLE\n";

#[test]
fn auth_proxy_whitelist() {
    let alice = [
        ("X-WEBAUTH-USER", "alice"),
        ("X-WEBAUTH-EMAIL", "alice@example.com"),
        ("X-WEBAUTH-ROLE", "Editor"),
    ];
    // From 127.0.0.1 with whitelist 10.0.0.1: refused, not served as alice.
    let mut s = Opts::new(&format!("{SUBPATH}{PROXY}whitelist = 10.0.0.1\n")).spawn();
    let addr = s.addr();
    for path in ["/t/acme/", "/t/acme/api/user"] {
        let r = request(addr, "GET", path, &alice);
        assert_eq!(r.status, 407, "{path}: {}", r.body);
        assert!(
            r.body.contains("is not from the authentication proxy"),
            "{}",
            r.body
        );
        assert!(!r.body.contains("Signed in as"));
    }
    // Without the header the same client is just anonymous.
    assert_eq!(get(addr, "/t/acme/api/user").status, 401);
    assert!(get(addr, "/t/acme/").body.contains("not signed in"));

    // Whitelisted (address, and a CIDR): the user is shown.
    for wl in ["127.0.0.1", "10.0.0.1, 127.0.0.0/8"] {
        let mut s = Opts::new(&format!("{SUBPATH}{PROXY}whitelist = {wl}\n")).spawn();
        let addr = s.addr();
        let page = request(addr, "GET", "/t/acme/", &alice);
        assert_eq!(page.status, 200);
        assert!(
            page.body
                .contains("Signed in as <span id=\"login\">alice</span>"),
            "{}",
            page.body
        );
        let u = request(addr, "GET", "/t/acme/api/user", &alice).json();
        assert_eq!(u["login"], "alice");
        assert_eq!(u["email"], "alice@example.com");
        assert_eq!(u["role"], "Editor");
    }

    // Auth proxy disabled: the header is ignored.
    let mut s = Opts::new(SUBPATH).spawn();
    let addr = s.addr();
    assert_eq!(request(addr, "GET", "/t/acme/api/user", &alice).status, 401);
}

#[test]
fn env_overrides_ini_and_file_and_cfg_args() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("admin_password");
    std::fs::write(&secret, "from-file\n").unwrap();
    let mut opts = Opts::new("[security]\nadmin_user = fromini\nadmin_password = ini-pw\n")
        .env("GF_SECURITY_ADMIN_USER", "fromenv")
        .env("GF_SECURITY_ADMIN_PASSWORD__FILE", secret.to_str().unwrap())
        .env("GF_SECURITY_SECRET_KEY", "k1")
        .env("GF_USERS_ALLOW_SIGN_UP", "true");
    opts.args = vec![
        "cfg:default.paths.data=".to_string() + dir.path().join("ignored").to_str().unwrap(),
        "cfg:auth.anonymous.hide_version=true".to_string(),
    ];
    let mut s = opts.spawn();
    let addr = s.addr();
    let settings = get(addr, "/api/standin/settings").json();
    assert_eq!(settings["admin_user"], "fromenv");
    assert_eq!(settings["allow_sign_up"], true);
    assert_eq!(settings["secret_key"]["set"], true);
    let body = get(addr, "/api/standin/settings").body;
    assert!(
        !body.contains("from-file") && !body.contains("ini-pw"),
        "{body}"
    );
    // basic auth with the password read from the __FILE (trailing newline trimmed)
    let good = format!("Basic {}", b64("fromenv:from-file"));
    let r = request(addr, "GET", "/api/user", &[("Authorization", &good)]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["isGrafanaAdmin"], true);
    let bad = format!("Basic {}", b64("fromenv:ini-pw"));
    assert_eq!(
        request(addr, "GET", "/api/user", &[("Authorization", &bad)]).status,
        401
    );
    // cfg:section.key beats everything; hide_version drops version/commit from /api/health
    let j = get(addr, "/api/health").json();
    assert!(j.get("version").is_none(), "{j}");
    // cfg:default.paths.data applies because the ini file does not set paths.data.
    assert!(dir.path().join("ignored/grafana.db").is_file());
}

#[test]
fn per_instance_secrets_differ_in_report() {
    let mut a = Opts::new("").env("GF_SECURITY_SECRET_KEY", "one").spawn();
    let mut b = Opts::new("").env("GF_SECURITY_SECRET_KEY", "two").spawn();
    let ra = get(a.addr(), "/api/standin/settings").json();
    let rb = get(b.addr(), "/api/standin/settings").json();
    assert_ne!(
        ra["secret_key"]["sha256_prefix"],
        rb["secret_key"]["sha256_prefix"]
    );
    assert_eq!(
        ra["secret_key"]["sha256_prefix"].as_str().unwrap().len(),
        12
    );
}

#[test]
fn admin_password_only_seeds_a_new_database() {
    let dir = tempfile::tempdir().unwrap();
    let dir_path = dir.path().to_path_buf();
    let mut opts = Opts::new("");
    opts.dir = Some(dir);
    opts = opts.env("GF_SECURITY_ADMIN_PASSWORD", "first");
    let mut s = opts.spawn();
    let addr = s.addr();
    let first = format!("Basic {}", b64("admin:first"));
    assert_eq!(
        request(addr, "GET", "/api/user", &[("Authorization", &first)]).status,
        200
    );
    s.signal("TERM");
    assert!(s.wait_exit(Duration::from_secs(10)).unwrap().success());
    let dir = std::mem::replace(&mut s.dir, tempfile::tempdir().unwrap());
    drop(s);

    let mut opts = Opts::new("");
    opts.dir = Some(dir);
    let mut s = opts.env("GF_SECURITY_ADMIN_PASSWORD", "second").spawn();
    let addr = s.addr();
    let second = format!("Basic {}", b64("admin:second"));
    assert_eq!(
        request(addr, "GET", "/api/user", &[("Authorization", &first)]).status,
        200
    );
    assert_eq!(
        request(addr, "GET", "/api/user", &[("Authorization", &second)]).status,
        401
    );
    assert!(dir_path.join("data/grafana.db").is_file());
}

#[test]
fn mode_crash_exits_non_zero() {
    let mut s = Opts::new("[standin]\nmode = crash\n").spawn();
    let status = s
        .wait_exit(Duration::from_secs(10))
        .expect("crash mode must exit");
    assert_eq!(status.code(), Some(1));
    let log = s.stderr_all();
    assert!(log.contains("level=error"), "{log}");
    assert!(!log.contains("HTTP Server Listen"), "{log}");

    // crash_after_ms in ok mode: serves first, then exits 1.
    let mut s = Opts::new("")
        .env("GF_STANDIN_CRASH_AFTER_MS", "300")
        .spawn();
    let addr = s.addr();
    let _ = get(addr, "/api/health");
    let status = s.wait_exit(Duration::from_secs(10)).expect("must crash");
    assert_eq!(status.code(), Some(1));
}

#[test]
fn mode_hang_never_answers() {
    let mut s = Opts::new("").env("GF_STANDIN_MODE", "hang").spawn();
    assert_eq!(s.listen_addr(Duration::from_millis(1500)), None);
    // Not a port that refuses: no listening socket at all (as the kernel sees the process).
    let listening = pug_test_support::net::listening_addrs(s.child.id());
    assert!(listening.is_empty(), "hang listens on {listening:?}");
    assert!(s.child.try_wait().unwrap().is_none(), "hang must not exit");
    // still stops on SIGTERM
    s.signal("TERM");
    assert!(s.wait_exit(Duration::from_secs(10)).unwrap().success());
}

#[test]
fn mode_unhealthy_db_and_slow_start() {
    let mut s = Opts::new("").env("GF_STANDIN_MODE", "unhealthy_db").spawn();
    let addr = s.addr();
    let r = get(addr, "/api/health");
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["database"], "failing");
    assert_eq!(get(addr, "/healthz").status, 200);

    let t0 = Instant::now();
    let mut s = Opts::new("[standin]\nmode = slow_start\nstart_delay_ms = 700\n").spawn();
    let addr = s.addr();
    assert!(t0.elapsed() >= Duration::from_millis(700));
    assert_eq!(get(addr, "/api/health").status, 200);
}

#[test]
fn postgres_reachability_is_checked_per_request() {
    // Held but closed: refused until the test opens it, and nobody else's meanwhile.
    let db = pug_test_support::net::ClosedPort::new();
    let port = db.port();
    let mut s = Opts::new(&format!(
        "[database]\ntype = postgres\nhost = 127.0.0.1:{port}\nname = g\nuser = u\npassword = \"\"\"p#w\"\"\"\n"
    ))
    .spawn();
    let addr = s.addr();
    assert_eq!(get(addr, "/api/health").status, 503);
    let _db = db.listen();
    let r = get(addr, "/api/health");
    assert_eq!((r.status, r.json()["database"].as_str()), (200, Some("ok")));
    let settings = get(addr, "/api/standin/settings").json();
    assert_eq!(settings["database"]["type"], "postgres");
    assert_eq!(settings["sections"]["database"]["password"]["set"], true);
}

#[test]
fn websocket_echo_under_sub_path() {
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, connect, Message};
    let mut s = Opts::new(&format!("{SUBPATH}{PROXY}whitelist = 127.0.0.1\n")).spawn();
    let addr = s.addr();
    let mut req = format!("ws://{addr}/t/acme/api/live/ws")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("X-WEBAUTH-USER", "alice".parse().unwrap());
    let (mut ws, _) = connect(req).unwrap();
    ws.send(Message::text("hello")).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("hello"));
    ws.send(Message::binary(vec![1u8, 2, 3])).unwrap();
    assert_eq!(ws.read().unwrap(), Message::binary(vec![1u8, 2, 3]));
    ws.close(None).unwrap();
    // anonymous: refused like Grafana Live
    let anon = format!("ws://{addr}/t/acme/api/live/ws");
    assert!(connect(anon).is_err());
}

#[test]
fn sigterm_and_sigint_exit_zero() {
    for sig in ["TERM", "INT"] {
        let mut s = Opts::new("").spawn();
        let addr = s.addr();
        assert_eq!(get(addr, "/healthz").status, 200);
        s.signal(sig);
        let status = s.wait_exit(Duration::from_secs(10)).expect("must exit");
        assert!(status.success(), "{sig}: {status:?}");
        assert!(s.stderr_all().contains("msg=\"Shutdown started\""));
    }
}

#[test]
fn version_sources_and_program_names() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "grafana version 11.3.0"
    );
    let out = Command::new(BIN)
        .args(["server", "-v"])
        .env("STANDIN_VERSION", "10.4.2")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "Version 10.4.2 (commit: standin, branch: HEAD)"
    );

    // Tarball layout: grafana-v<ver>/bin/grafana with a VERSION file in the home path.
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("grafana-v11.4.0");
    std::fs::create_dir_all(home.join("bin")).unwrap();
    std::fs::write(home.join("VERSION"), "11.4.0\n").unwrap();
    let grafana = home.join("bin/grafana");
    std::fs::copy(BIN, &grafana).unwrap();
    let mut opts = Opts::new("");
    opts.program = Some(grafana);
    opts.dir = Some(tempfile::TempDir::new_in(&home).unwrap());
    // homepath is the temp dir; put VERSION there too
    let home2 = opts.dir.as_ref().unwrap().path().to_path_buf();
    std::fs::write(home2.join("VERSION"), "11.4.0\n").unwrap();
    let mut s = opts.spawn();
    let addr = s.addr();
    assert_eq!(get(addr, "/api/health").json()["version"], "11.4.0");

    // Legacy grafana-server name with single-dash flags.
    let legacy = dir.path().join("grafana-server");
    std::fs::copy(BIN, &legacy).unwrap();
    let ini = dir.path().join("l.ini");
    std::fs::write(&ini, "[server]\nhttp_addr = 127.0.0.1\nhttp_port = 0\n").unwrap();
    let mut child = Command::new(&legacy)
        .arg(format!("-homepath={}", dir.path().display()))
        .arg("-config")
        .arg(&ini)
        .env("STANDIN_VERSION", "9.9.9")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr: SocketAddr = loop {
        let line = lines.next().expect("legacy binary exited").unwrap();
        if let Some(rest) = line.split("address=").nth(1) {
            break rest.split(' ').next().unwrap().parse().unwrap();
        }
    };
    assert_eq!(get(addr, "/api/health").json()["version"], "9.9.9");
    let _ = child.kill();
    let _ = child.wait();

    // Bad flags and bad settings fail with a clear error.
    let out = Command::new(BIN)
        .args(["server", "--bogus"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("flag provided but not defined"));
    let bad = dir.path().join("bad.ini");
    std::fs::write(&bad, "[server]\nhttp_port = nope\n").unwrap();
    let out = Command::new(BIN)
        .args(["server", "--homepath"])
        .arg(dir.path())
        .arg("--config")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("http_port"));
}

fn b64(s: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &x)| acc | (u32::from(x) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
