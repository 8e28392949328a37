//! Several `pug serve` on one store, with the real binary: a SQLite store takes one pug (a
//! second refuses to start with one clear line, and starts once the first is gone, even
//! killed), and the process backend is not shared on a PostgreSQL store (a second pug on it
//! refuses while the first is alive). `/readyz` says a pug can serve. Roles run what was asked.
//! Gateways are interchangeable: a session signed in on one pug works on another on the same
//! PostgreSQL store, requests through one never fail while the other is killed, and a sign-out
//! on one is honoured by the other within 5 s. A pug cut off from PostgreSQL (a TCP forwarder
//! in between, cut) reports not ready, and ready again once the store is back.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::{pug_bin, set_cookie, wait_for, Pug};

/// Starts `pug serve` on `pug`'s data directory (and environment) on a port of its own, and
/// returns how it exited and its stderr; panics if it is still running after 30 s.
fn second_serve(pug: &Pug, extra: &[(&str, &str)]) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(pug_bin())
        .args(["serve", "--data-dir"])
        .arg(&pug.data)
        .arg("--listen")
        // Port 0: it is to refuse before it binds; if it ever did bind, no port is raced for.
        .arg("127.0.0.1:0")
        .envs(pug.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .envs(extra.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_for(Duration::from_secs(30), "the second pug to exit", || {
        child.try_wait().unwrap()
    });
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    (status, err)
}

#[test]
fn a_second_pug_on_one_sqlite_store_refuses_to_start() {
    let mut pug = Pug::start((21580, 21589), &[]);
    let (status, err) = second_serve(&pug, &[]);
    assert!(!status.success());
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {err}");
    assert!(
        lines[0].contains("another pug is running on the SQLite store")
            && lines[0].contains("database_url"),
        "{err}"
    );
    // The first one still serves, and is ready (its store answers, its controller's heartbeat
    // reaches it).
    assert_eq!(pug.api("GET", "/api/v1/tenants", None).0, 200);
    let readyz = format!("{}/readyz", pug.url);
    let (_, body) = wait_for(Duration::from_secs(10), "pug to be ready", || {
        support::http_get(&readyz).ok().filter(|(s, _)| *s == 200)
    });
    assert!(body.contains(r#""ready":true"#), "{body}");

    // Killed, it holds nothing: the next pug starts on the same store.
    pug.kill9();
    pug.spawn();
    assert_eq!(pug.api("GET", "/api/v1/tenants", None).0, 200);
}

/// A fresh database for a pug store on the tests' PostgreSQL server; its URL.
fn postgres_store(tag: &str) -> String {
    let name = format!("pug_e2e_{tag}_{}", std::process::id());
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(pug_test_support::postgres::fresh_database(&name))
}

#[test]
fn the_process_backend_is_not_shared_by_pugs_on_one_postgres_store() {
    let store = postgres_store("process");
    let key = "a".repeat(64);
    let env = [
        ("PUG_DATABASE_URL", store.as_str()),
        ("PUG_MASTER_KEY", key.as_str()),
    ];
    let pug = Pug::start((21590, 21599), &env);
    // Its controller's first heartbeat registered it on the store before it answered.
    let (status, err) = second_serve(&pug, &[]);
    assert!(!status.success(), "{err}");
    assert!(
        err.contains("another pug") && err.contains("backend = \"docker\" or \"swarm\""),
        "{err}"
    );
    assert_eq!(pug.api("GET", "/api/v1/tenants", None).0, 200);
}

#[test]
fn roles_run_what_was_asked_and_say_so() {
    // API and controller, no gateway: tenant paths are not routed, the banner says which run.
    let pug = Pug::start((21600, 21609), &[("PUG_ROLES", "controller,api")]);
    assert!(
        pug.log().contains("roles      api, controller"),
        "{}",
        pug.log()
    );
    assert_eq!(pug.api("GET", "/api/v1/tenants", None).0, 200);
    let get = |path: &str| support::http_get(&format!("{}{path}", pug.url)).unwrap();
    wait_for(
        Duration::from_secs(10),
        "the controller role healthy",
        || (get("/healthz/controller").0 == 200).then_some(()),
    );
    assert_eq!(get("/healthz/api").0, 200);
    let (status, body) = get("/healthz/gateway");
    assert_eq!(status, 404);
    assert!(body.contains("does not run the gateway role"), "{body}");
    assert_eq!(get("/healthz/bogus").0, 404);
    assert_eq!(
        get("/t/acme/").0,
        404,
        "no gateway: tenant paths are not routed"
    );
    assert_eq!(get("/login").0, 404);

    // The gateway alone: no API, ready without a controller.
    let gw = Pug::start((21610, 21619), &[("PUG_ROLES", "gateway")]);
    assert!(gw.log().contains("roles      gateway"), "{}", gw.log());
    assert_eq!(gw.api("GET", "/api/v1/tenants", None).0, 404);
    let (status, body) = support::http_get(&format!("{}/readyz", gw.url)).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("not run here"), "{body}");
    assert_eq!(
        support::http_get(&format!("{}/healthz/gateway", gw.url))
            .unwrap()
            .0,
        200
    );

    // An unknown role: one line, non-zero.
    let out = Command::new(pug_bin())
        .args(["serve", "--role", "api", "--role", "dns", "--data-dir"])
        .arg(&pug.data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("unknown role \"dns\""), "{err}");
}

fn client() -> reqwest::Client {
    pug_test_support::http::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The csrf cookie and its value, from the form at `url`.
async fn csrf(url: &str) -> (String, String) {
    let page = client().get(url).send().await.unwrap();
    let cookie = set_cookie(&page, "pug_csrf").unwrap();
    let value = cookie.split_once('=').unwrap().1.to_owned();
    (cookie, value)
}

async fn status(url: &str, cookie: &str) -> u16 {
    client()
        .get(url)
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[test]
fn a_session_signed_in_on_one_gateway_works_and_ends_on_another() {
    let store = postgres_store("gateways");
    let key = "b".repeat(64);
    let env = [
        ("PUG_DATABASE_URL", store.as_str()),
        ("PUG_MASTER_KEY", key.as_str()),
    ];
    let mut a = Pug::start((21620, 21639), &env);
    a.ok(&["tenant", "create", "acme", "--version", "11.3.0"]);
    a.wait_phase("acme", "ready", Duration::from_secs(60));
    a.create_user("alice", "alice-password");
    a.ok(&["user", "grant", "alice", "acme", "--role", "Viewer"]);
    // A second pug on the same store: gateway and API only (the process backend's controller
    // is not shared).
    let mut env_b = env.to_vec();
    env_b.push(("PUG_ROLES", "gateway,api"));
    let b = Pug::start((21640, 21649), &env_b);

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // Signed in through b.
        let (csrf_cookie, csrf_value) = csrf(&format!("{}/login", b.url)).await;
        let r = client()
            .post(format!("{}/login", b.url))
            .header("cookie", &csrf_cookie)
            .form(&[
                ("user", "alice"),
                ("password", "alice-password"),
                ("csrf", csrf_value.as_str()),
                ("next", "/t/acme/"),
            ])
            .send()
            .await
            .unwrap();
        let session = set_cookie(&r, "pug_session").expect("alice signs in on b");
        let user_on = |pug: &Pug| format!("{}/t/acme/api/user", pug.url);
        // b routes to a's tenant as soon as its route table has it (refreshed from the store).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while status(&user_on(&b), &session).await != 200 {
            assert!(std::time::Instant::now() < deadline, "b never routed acme");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The same session works on a.
        assert_eq!(status(&user_on(&a), &session).await, 200);

        // Steady load through b while a (holding the controller) is killed: b never fails.
        use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let done = std::sync::Arc::new(AtomicU32::new(0));
        let mut load = Vec::new();
        for _ in 0..4 {
            let (stop, done) = (stop.clone(), done.clone());
            let (url, session) = (user_on(&b), session.clone());
            load.push(tokio::spawn(async move {
                let (mut ok, mut failed) = (0u32, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    match status(&url, &session).await {
                        200 => ok += 1,
                        other => failed.push(other),
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
                (ok, failed)
            }));
        }
        // 100 requests before the kill, 400 after it.
        let requests = |n: u32| {
            let done = done.clone();
            async move {
                while done.load(Ordering::Relaxed) < n {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        };
        requests(100).await;
        a.kill9();
        let at_kill = done.load(Ordering::Relaxed);
        requests(at_kill + 400).await;
        stop.store(true, Ordering::Relaxed);
        for task in load {
            let (ok, failed) = task.await.unwrap();
            assert!(ok > 0);
            assert_eq!(
                failed,
                Vec::<u16>::new(),
                "requests to the surviving gateway failed"
            );
        }
        tokio::task::block_in_place(|| a.spawn());

        // Signed out on a: b refuses the session within 5 s (its cache's bound).
        let (csrf_cookie, csrf_value) = csrf(&format!("{}/logout", a.url)).await;
        let r = client()
            .post(format!("{}/logout", a.url))
            .header("cookie", format!("{csrf_cookie}; {session}"))
            .form(&[("csrf", csrf_value.as_str())])
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_redirection() || r.status().is_success(),
            "{}",
            r.status()
        );
        let signed_out = std::time::Instant::now();
        assert_ne!(status(&user_on(&a), &session).await, 200, "a ended it");
        while status(&user_on(&b), &session).await == 200 {
            assert!(
                signed_out.elapsed() < Duration::from_secs(7),
                "b still honours a session ended on a"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!(
            "b refused the ended session {:?} after the sign-out on a",
            signed_out.elapsed()
        );
    });
}

/// A TCP forwarder (threads) to `upstream` that the test can cut (every connection shut
/// down, new ones closed at once) and restore: a partition between one pug and PostgreSQL.
struct Forwarder {
    port: u16,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Forwarder {
    fn start(upstream: String) -> Self {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let conns: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>> = Default::default();
        let (o, c) = (open.clone(), conns.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if !o.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = std::net::TcpStream::connect(&upstream) else {
                    continue;
                };
                c.lock().unwrap().push(client.try_clone().unwrap());
                c.lock().unwrap().push(server.try_clone().unwrap());
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Self { port, open, conns }
    }

    fn cut(&self) {
        self.open.store(false, std::sync::atomic::Ordering::SeqCst);
        for conn in self.conns.lock().unwrap().drain(..) {
            let _ = conn.shutdown(std::net::Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[test]
fn a_pug_cut_off_from_postgres_is_not_ready_until_it_is_back() {
    let store = postgres_store("partition");
    let direct = url::Url::parse(&store).unwrap();
    let upstream = format!(
        "{}:{}",
        direct.host_str().unwrap(),
        direct.port_or_known_default().unwrap()
    );
    let forwarder = Forwarder::start(upstream);
    let mut via = direct.clone();
    via.set_port(Some(forwarder.port)).unwrap();
    let key = "c".repeat(64);
    let pug = Pug::start(
        (21650, 21659),
        &[
            ("PUG_DATABASE_URL", via.as_str()),
            ("PUG_MASTER_KEY", key.as_str()),
        ],
    );
    let readyz = format!("{}/readyz", pug.url);
    let ready = || support::http_get(&readyz).map(|(s, _)| s).unwrap_or(0);
    wait_for(Duration::from_secs(10), "pug ready", || {
        (ready() == 200).then_some(())
    });

    forwarder.cut();
    // Within its lease (3 s by default) and the store check's 2 s, it reports not ready.
    let (_, body) = wait_for(Duration::from_secs(10), "pug not ready", || {
        support::http_get(&readyz).ok().filter(|(s, _)| *s == 503)
    });
    assert!(body.contains(r#""ready":false"#), "{body}");

    forwarder.restore();
    wait_for(Duration::from_secs(30), "pug ready again", || {
        (ready() == 200).then_some(())
    });
}
