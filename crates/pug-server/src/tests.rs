//! The server's own decisions (roles, the SQLite lock) and one whole start and stop: it serves,
//! writes the files the CLI finds it by, and after the stop signal no background loop remains.

use std::time::Duration;

use pug_config::{Config, IsolationMode, RendererMode};

use super::{bound_listen, lock_sqlite_store, Roles, ServeError, Server};

#[test]
fn port_zero_becomes_the_bound_port_and_the_host_stays_as_configured() {
    let a = |s: &str| s.parse::<std::net::SocketAddr>().unwrap();
    for (configured, bound, want) in [
        ("127.0.0.1:0", "127.0.0.1:40123", "127.0.0.1:40123"),
        ("0.0.0.0:0", "0.0.0.0:40123", "0.0.0.0:40123"),
        ("127.0.0.1:8080", "127.0.0.1:8080", "127.0.0.1:8080"),
        ("[::]:0", "[::]:40124", "[::]:40124"),
    ] {
        assert_eq!(
            bound_listen(a(configured), a(bound)),
            a(want),
            "{configured}"
        );
    }
}

fn strings(roles: &[&str]) -> Vec<String> {
    roles.iter().map(|r| (*r).to_owned()).collect()
}

#[test]
fn roles_come_in_their_canonical_order_and_unknown_ones_are_named() {
    let all = strings(&pug_api::ROLES);
    let cases: &[(&[&str], Option<&[&str]>)] = &[
        (&[], Some(&pug_api::ROLES)),
        (&["", " "], Some(&pug_api::ROLES)),
        (&["controller", "api"], Some(&["api", "controller"])),
        (&["gateway", " gateway "], Some(&["gateway"])),
        (&["api", "web"], None),
    ];
    for (asked, want) in cases {
        let got = Roles::parse(&strings(asked));
        match (want, got) {
            (Some(want), Ok(roles)) => assert_eq!(roles.as_slice(), strings(want), "{asked:?}"),
            (None, Err(e)) => assert_eq!(
                e.to_string(),
                format!(
                    "unknown role \"web\"; roles are {} (--role, PUG_ROLES)",
                    all.join(", ")
                )
            ),
            (want, got) => panic!("{asked:?}: want {want:?}, got {got:?}"),
        }
    }
    let roles = Roles::parse(&strings(&["api"])).unwrap();
    assert!(roles.runs("api") && !roles.runs("controller"));
}

#[test]
fn a_sqlite_store_takes_one_pug() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("pug.db").display());
    let held = lock_sqlite_store(&url).unwrap();
    assert!(held.is_some());
    let e = lock_sqlite_store(&url).unwrap_err();
    assert!(matches!(e, ServeError::SqliteTaken { .. }), "{e:?}");
    assert!(e
        .to_string()
        .starts_with("another pug is running on the SQLite store"));
    drop(held);
    assert!(lock_sqlite_store(&url).unwrap().is_some(), "free again");
    assert!(lock_sqlite_store("postgres://db/pug").unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_stop_signal_no_background_loop_remains() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        data_dir: dir.path().join("data"),
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Config::default()
    };
    config.renderer.mode = RendererMode::Off;
    config.process.isolation = IsolationMode::Off;
    config.process.stop_on_exit = true;
    config.gateway.workers = 1;
    let server = Server::start(config, Roles::parse(&[]).unwrap())
        .await
        .unwrap();
    let banner = server.banner().to_string();
    assert!(banner.starts_with("pug is running\n"), "{banner}");
    assert!(
        banner.contains("admin token (shown once"),
        "a new store: {banner}"
    );
    let running = server.background.running();
    assert!(
        running >= 2,
        "the gateway's loops and the controller: {running}"
    );

    let data = dir.path().join("data").canonicalize().unwrap();
    let url = std::fs::read_to_string(data.join(pug_client::URL_FILE)).unwrap();
    assert_eq!(url, server.banner().api_url);
    // Listening on port 0 names the port the kernel picked, in tenants' URLs too.
    assert_eq!(server.banner().public_url, url);
    assert_eq!(server.banner().tenant_url, format!("{url}/t/<tenant>/"));
    assert!(data.join(pug_client::TOKEN_FILE).is_file());

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = server.run(async move {
        let _ = stopped.await;
    });
    let client = async {
        let health = pug_test_support::http::get(format!("{url}/healthz"))
            .await
            .unwrap();
        assert!(health.status().is_success(), "{}", health.status());
        stop.send(()).unwrap();
    };
    let (stragglers, ()) =
        tokio::time::timeout(Duration::from_secs(60), async { tokio::join!(run, client) })
            .await
            .expect("serve ends after the stop signal");
    let stragglers = stragglers.unwrap();
    assert_eq!(stragglers, 0, "every loop ended on the signal by itself");
    assert!(
        pug_test_support::http::get(format!("{url}/healthz"))
            .await
            .is_err(),
        "nothing listens any more"
    );
}
