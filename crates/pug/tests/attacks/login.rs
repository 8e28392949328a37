//! Attacks on login and on pug's public port (issue 14, holes 3, 4, 5, 6 and 8; review
//! findings F3, F4, F5, F6, F8), each against the real `pug` binary.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{wait_for, Pug};

const PASSWORD: &str = "alice-password-1";

/// Instance ports of this module's tests (no tenant is started, but each pug gets its own range).
fn ports(n: u16) -> (u16, u16) {
    (41000 + n * 10, 41000 + n * 10 + 9)
}

fn create_alice(pug: &Pug) {
    let (status, body) = pug.api(
        "POST",
        "/api/v1/users",
        Some(json!({"name": "alice", "email": "alice@example.com", "password": PASSWORD})),
    );
    assert_eq!(status, 201, "{body}");
}

/// pug's pid, found by its data directory on its command line.
fn pid_of(pug: &Pug) -> u32 {
    let data = pug.data.display().to_string();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.iter().any(|a| a == "serve") && args.contains(&data) {
            return pid;
        }
    }
    panic!("pug's process not found");
}

/// A `/proc/<pid>/status` field in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} not in /proc/{pid}/status"))
}

/// A browser's login form: the CSRF cookie and the form token (`GET /login`).
async fn csrf(client: &reqwest::Client, url: &str) -> (String, String) {
    let resp = client.get(format!("{url}/login")).send().await.unwrap();
    let cookie = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.split(';').next().filter(|c| c.starts_with("pug_csrf=")))
        .expect("a csrf cookie")
        .to_owned();
    let body = resp.text().await.unwrap();
    let token = body
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("a csrf field")
        .to_owned();
    (cookie, token)
}

/// `POST /login`; the status (303 is a sign-in).
async fn post_login(
    client: &reqwest::Client,
    url: &str,
    (cookie, token): &(String, String),
    user: &str,
    password: &str,
    forwarded_for: Option<&str>,
) -> reqwest::Result<u16> {
    let mut req = client
        .post(format!("{url}/login"))
        .header("cookie", cookie)
        .form(&[("user", user), ("password", password), ("csrf", token)]);
    if let Some(xff) = forwarded_for {
        req = req.header("x-forwarded-for", xff);
    }
    Ok(req.send().await?.status().as_u16())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn no_redirects() -> reqwest::Client {
    pug_test_support::http::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Hole 3 (F3): Grafana's auth proxy maps `X-WEBAUTH-USER: admin` onto its built-in server
/// administrator, so a pug user `admin` granted only Viewer would own the tenant's Grafana.
/// pug refuses the name in any case, and Grafana's default admin email, over the API and the
/// CLI, and creates nothing.
#[test]
fn viewer_named_admin_cannot_become_grafana_server_admin() {
    let pug = Pug::start(ports(0), &[]);
    let attempts = [
        ("admin", "someone@example.com", "name"),
        ("Admin", "someone@example.com", "name"),
        ("ADMIN", "someone@example.com", "name"),
        ("mallory", "admin@localhost", "email"),
        ("mallory", "ADMIN@LocalHost", "email"),
    ];
    for (name, email, field) in attempts {
        let (status, body) = pug.api(
            "POST",
            "/api/v1/users",
            Some(json!({"name": name, "email": email, "password": PASSWORD})),
        );
        assert!(
            (400..500).contains(&status),
            "{name} {email}: {status} {body}"
        );
        let error = body["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(field) || error.contains("reserved") || error.contains("not valid"),
            "{name} {email}: {body}"
        );
    }
    // The CLI: one clear line, non-zero exit.
    let out = pug.cli_stdin(
        &[
            "user",
            "create",
            "admin",
            "--email",
            "a@example.com",
            "--password-stdin",
        ],
        PASSWORD,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the CLI created admin: {stderr}");
    assert!(stderr.contains("reserved"), "{stderr}");
    // Nobody was created, so no Viewer of any tenant is sent to Grafana as `admin`.
    let (status, users) = pug.api("GET", "/api/v1/users", None);
    assert_eq!(status, 200);
    assert_eq!(users.as_array().map(Vec::len), Some(0), "{users}");
}

/// Hole 4 (F4): 2,000 concurrent wrong-password logins (with a valid CSRF cookie and token, as
/// a browser has them, over keep-alive) used to run one argon2 hash (19 MiB) each, in
/// parallel: pug ran out of memory. Now the password checks are bounded globally and the rest
/// are answered at once: pug stays small and a correct login succeeds right after.
#[test]
fn login_flood_of_2000_wrong_passwords_leaves_pug_responsive_and_small() {
    // The per-client connection cap would otherwise close most of the flood's connections
    // (that defence has its own test): here the password-check bound is what is attacked.
    let pug = Pug::start(
        ports(1),
        &[("PUG_GATEWAY_MAX_CONNECTIONS_PER_CLIENT", "10000")],
    );
    create_alice(&pug);
    let pid = pid_of(&pug);
    let url = pug.url.clone();
    let rt = runtime();
    let (statuses, flood_time) = rt.block_on(async {
        let client = pug_test_support::http::builder()
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(2000)
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap();
        let form = csrf(&client, &url).await;
        let start = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..2000 {
            let (client, url, form) = (client.clone(), url.clone(), form.clone());
            tasks.push(tokio::spawn(async move {
                // Different users, so that the per-user delay does not answer for the bound.
                post_login(&client, &url, &form, &format!("user{i}"), "wrong", None).await
            }));
        }
        let mut statuses = BTreeMap::<String, u32>::new();
        for t in tasks {
            let key = match t.await.unwrap() {
                Ok(s) => s.to_string(),
                Err(e) if e.is_timeout() => "timeout".to_owned(),
                Err(_) => "connection error".to_owned(),
            };
            *statuses.entry(key).or_default() += 1;
        }
        (statuses, start.elapsed())
    });
    assert!(
        statuses
            .keys()
            .all(|k| ["401", "429", "503"].contains(&k.as_str())),
        "{statuses:?}"
    );
    // Within 5 s of the flood's end, alice signs in.
    let deadline = Instant::now() + Duration::from_secs(5);
    let signed_in = rt.block_on(async {
        let client = no_redirects();
        loop {
            let form = csrf(&client, &url).await;
            if matches!(
                post_login(&client, &url, &form, "alice", PASSWORD, None).await,
                Ok(303)
            ) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let hwm_kib = status_kib(pid, "VmHWM:");
    eprintln!(
        "login flood: 2000 wrong-password POST /login in {flood_time:?}: {statuses:?}; \
         pug's peak RSS (VmHWM) {} MiB",
        hwm_kib / 1024
    );
    assert!(signed_in, "alice could not sign in within 5 s of the flood");
    assert!(
        hwm_kib < 300 * 1024,
        "pug's peak RSS was {} MiB (limit 300)",
        hwm_kib / 1024
    );
}

/// Hole 5 (F5): without hyper's timer there was no header timeout: a Slowloris client sending
/// one header byte at a time, or a client that connects and says nothing, held its connection
/// (and a file descriptor) for ever. Both are closed after the header timeout now.
#[test]
fn slowloris_header_bytes_and_silent_connections_are_closed_after_the_header_timeout() {
    let pug = Pug::start(ports(2), &[("PUG_GATEWAY_HEADER_READ_TIMEOUT_SECS", "2")]);
    let addr: SocketAddr = format!("127.0.0.1:{}", pug.listen).parse().unwrap();
    // A connection that sends nothing.
    let mut silent = TcpStream::connect(addr).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // A connection that sends its headers one byte every 300 ms.
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_millis(10)))
        .unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let header = b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let closed = |s: &mut TcpStream| {
        let mut buf = [0u8; 512];
        match s.read(&mut buf) {
            Ok(0) => true,
            // A 408 (or any answer) before the close also means pug gave up on the request.
            Ok(_) => false,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        }
    };
    let mut sent = 0;
    let mut last = Instant::now();
    wait_for(
        Duration::from_secs(20),
        "pug to close the Slowloris connection",
        || {
            if last.elapsed() >= Duration::from_millis(300) && sent < header.len() {
                last = Instant::now();
                if slow.write_all(&header[sent..sent + 1]).is_err() {
                    return Some(());
                }
                sent += 1;
            }
            closed(&mut slow).then_some(())
        },
    );
    assert!(
        sent < header.len(),
        "the whole header was sent before pug closed the connection"
    );
    wait_for(
        Duration::from_secs(10),
        "pug to close the silent connection",
        || closed(&mut silent).then_some(()),
    );
    // The port still serves.
    assert_eq!(
        crate::support::http_get(&format!("{}/healthz", pug.url))
            .unwrap()
            .0,
        200
    );
}

/// `prlimit --nofile` on a process.
fn set_nofile(pid: u32, limit: u64) {
    let ok = Command::new("prlimit")
        .arg("--pid")
        .arg(pid.to_string())
        .arg(format!("--nofile={limit}:{limit}"))
        .status()
        .expect("prlimit runs")
        .success();
    assert!(ok, "prlimit --nofile={limit} failed");
}

/// Hole 5 (F5): 5,000 connections that never send a byte exhausted pug's file descriptors
/// (no cap, no timeout): `accept` failed and nobody else was served. pug caps connections in
/// total (below its open-file limit) and per client address now, so a new client is served.
#[test]
fn five_thousand_idle_connections_do_not_stop_new_requests() {
    // pug runs with an open-file limit of 4096 (a common hard limit, lowered under the
    // running process), which the test's 5,000 connections exceed.
    let pug = Pug::start(ports(3), &[]);
    set_nofile(pid_of(&pug), 4096);
    let addr: SocketAddr = format!("127.0.0.1:{}", pug.listen).parse().unwrap();
    let mut idle = Vec::with_capacity(5000);
    let mut refused = 0;
    // Bounded in time too: an exhausted pug stops accepting, and each connect then waits.
    let opening = Instant::now();
    for _ in 0..5000 {
        if opening.elapsed() > Duration::from_secs(30) {
            refused += 1;
            continue;
        }
        match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            Ok(s) => idle.push(s),
            Err(_) => refused += 1,
        }
    }
    eprintln!(
        "idle connections: {} open, {refused} not accepted",
        idle.len()
    );
    // A new client (another loopback address) is served.
    let rt = runtime();
    let served = rt.block_on(async {
        let client = pug_test_support::http::builder()
            .local_address(Some("127.0.0.2".parse().unwrap()))
            .timeout(Duration::from_secs(3))
            .build()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(r) = client.get(format!("{}/healthz", pug.url)).send().await {
                if r.status() == 200 {
                    return true;
                }
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    assert!(
        served,
        "a new client was not served while 5,000 idle connections were open"
    );
    drop(idle);
}

/// Hole 6 (F6): behind the TLS terminator every client had the terminator's address, so 20 bad
/// logins from one client locked everybody out for 15 minutes. With `gateway.trusted_proxies`
/// the client is the one `X-Forwarded-For` names, and the address bucket never refuses a
/// correct password.
#[test]
fn bad_logins_from_one_client_behind_a_trusted_proxy_do_not_lock_out_another() {
    let pug = Pug::start(
        ports(4),
        &[("PUG_GATEWAY_TRUSTED_PROXIES", "[\"127.0.0.1\"]")],
    );
    create_alice(&pug);
    let url = pug.url.clone();
    runtime().block_on(async {
        let client = no_redirects();
        let form = csrf(&client, &url).await;
        let attacker = Some("198.51.100.66");
        // A password sprayer: one wrong password for 25 different users.
        for i in 0..25 {
            let s = post_login(&client, &url, &form, &format!("u{i}"), "wrong", attacker)
                .await
                .unwrap();
            assert!(s == 401 || s == 429, "{s}");
        }
        // Another client behind the same proxy signs in.
        let other = Some("203.0.113.7, 198.51.100.1");
        let s = post_login(&client, &url, &form, "alice", PASSWORD, other)
            .await
            .unwrap();
        assert_eq!(s, 303, "another client behind the proxy was locked out");
        // The attacker's own address bucket is full, but a correct password still works.
        let s = post_login(&client, &url, &form, "alice", PASSWORD, attacker)
            .await
            .unwrap();
        assert_eq!(s, 303, "the address bucket refused a correct password");
    });
}

/// Hole 6 (F6): 5 bad passwords for a named user locked that user out for 15 minutes: anyone
/// could keep `alice` (or the operator) out for ever. Now further attempts are delayed, and
/// alice's correct password works after at most a short, growing delay.
#[test]
fn five_bad_passwords_for_alice_do_not_lock_alice_out() {
    let pug = Pug::start(ports(5), &[]);
    create_alice(&pug);
    let url = pug.url.clone();
    runtime().block_on(async {
        let client = no_redirects();
        let form = csrf(&client, &url).await;
        for _ in 0..5 {
            let s = post_login(&client, &url, &form, "alice", "wrong", None)
                .await
                .unwrap();
            assert_eq!(s, 401);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = post_login(&client, &url, &form, "alice", PASSWORD, None)
                .await
                .unwrap();
            if s == 303 {
                break;
            }
            assert_eq!(s, 429, "alice's correct password got {s}");
            assert!(
                Instant::now() < deadline,
                "alice is still locked out after 10 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
}

/// Hole 8 (F8): pug's login page could be framed (no CSP, no X-Frame-Options), so a page of a
/// tenant's Grafana or any site could overlay it and capture the password. It refuses frames now.
#[test]
fn login_page_refuses_to_be_framed() {
    let pug = Pug::start(ports(6), &[]);
    let rt = runtime();
    rt.block_on(async {
        let r = pug_test_support::http::get(format!("{}/login", pug.url))
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let h = r.headers();
        let csp = h
            .get("content-security-policy")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(csp.contains("frame-ancestors 'none'"), "CSP: {csp:?}");
        assert_eq!(
            h.get("x-frame-options").and_then(|v| v.to_str().ok()),
            Some("DENY")
        );
    });
}
