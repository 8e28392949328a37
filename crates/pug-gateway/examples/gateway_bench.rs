//! The gateway as `bench/gateway/run.sh` measures it: a real store (SQLite in a temp dir) with
//! `--tenants` tenants registered, all ready on `--upstream`, one user who is a member of
//! every tenant, and the real gateway on `--listen`. Prints `cookie=<pug_session=…>` and
//! `ready` on stdout, then serves until killed.
//!
//! `cargo run --release -p pug-gateway --example gateway_bench -- --upstream 127.0.0.1:18090
//!  --listen 127.0.0.1:18092 --tenants 1000 [--workers N] [--sleeping N] [--snapshot 1]
//!  [--upstream-ports K] [--poll-all 1]`
//!
//! `--upstream-ports K` spreads the tenants over K upstream ports (tenant i on the upstream's
//! port plus i mod K), as every tenant has its own instance. `--sleeping N` registers N more
//! tenants (`s00000`…), asleep and not the user's, as a fleet whose most tenants sleep
//! (`bench/gateway/scale.sh`); `--snapshot 1` feeds the gateway's routes from a status snapshot
//! polled every second, as `pug serve` does (`Gateway::background_on`), instead of the
//! gateway's own refresh.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pug_config::Config;
use pug_gateway::{Gateway, GatewaySettings};
use pug_store::{MasterKey, Store};
use pug_types::{Phase, TenantId, TenantSpec, TenantStatus};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The allocator `pug` itself uses (see `crates/pug/src/main.rs`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    let mut upstream = String::from("127.0.0.1:18090");
    let mut listen: SocketAddr = "127.0.0.1:18092".parse().unwrap();
    let mut tenants = 1000usize;
    let mut workers = 0usize;
    let mut sleeping = 0usize;
    let mut upstream_ports = 1usize;
    let mut snapshot = false;
    let mut poll_all = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().expect("every flag takes a value");
        match a.as_str() {
            "--upstream" => upstream = v,
            "--listen" => listen = v.parse().expect("--listen host:port"),
            "--tenants" => tenants = v.parse().expect("--tenants N"),
            "--workers" => workers = v.parse().expect("--workers N (0: one per core)"),
            "--sleeping" => sleeping = v.parse().expect("--sleeping N"),
            "--upstream-ports" => upstream_ports = v.parse().expect("--upstream-ports K"),
            "--snapshot" => snapshot = v == "1",
            "--poll-all" => poll_all = v == "1",
            other => panic!("unknown flag {other}"),
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        &format!("sqlite://{}", dir.path().join("pug.db").display()),
        MasterKey::generate(),
    )
    .await
    .unwrap();
    store
        .create_user(
            "bench",
            "bench@example.com",
            "bench",
            &pug_auth::hash_password("bench-password"),
        )
        .await
        .unwrap();
    for i in 0..tenants {
        let id = TenantId::parse(&format!("t{i:04}")).unwrap();
        let spec: TenantSpec = serde_json::from_value(serde_json::json!({
            "display_name": id.as_str(), "version": "11.3.0", "replicas": 1, "desired_state": "active",
        }))
        .unwrap();
        store.create_tenant(&id, &spec, &[]).await.unwrap();
        let mut status = TenantStatus::pending();
        status.phase = Phase::Ready;
        status.ready_replicas = 1;
        status.endpoints = vec![upstream_of(&upstream, i % upstream_ports.max(1))];
        store.set_status(&id, &status).await.unwrap();
        store.grant("bench", &id, "Viewer").await.unwrap();
    }
    for i in 0..sleeping {
        let id = TenantId::parse(&format!("s{i:05}")).unwrap();
        let spec: TenantSpec = serde_json::from_value(serde_json::json!({
            "display_name": id.as_str(), "version": "11.3.0", "replicas": 1,
            "desired_state": "active", "idle_timeout_secs": 1,
        }))
        .unwrap();
        store.create_tenant(&id, &spec, &[]).await.unwrap();
        let mut status = TenantStatus::pending();
        status.phase = Phase::Sleeping;
        store.set_status(&id, &status).await.unwrap();
    }
    let config = Config {
        listen,
        ..Config::default()
    };
    let settings = GatewaySettings::from_config(&config);
    let mut registry = pug_metrics::new_registry();
    let gateway = if snapshot {
        let gateway = Gateway::open(store.clone(), settings, &mut registry)
            .await
            .unwrap();
        let (tx, rx) = watch::channel(Arc::new(store.tenant_statuses().await.unwrap()));
        tokio::spawn(gateway.background_on(rx, CancellationToken::new()));
        // As pug-server's poller (`fleet.rs`): reads the statuses only when the store's status
        // version moved (`--poll-all 1`: every second, as before), parses only those whose text
        // changed and publishes only a fleet that changed.
        let store = store.clone();
        tokio::spawn(async move {
            let mut parsed: HashMap<TenantId, (String, TenantStatus)> = HashMap::new();
            let (mut polls, mut read_s, mut rest_s) = (0u32, 0f64, 0f64);
            let mut seen = None;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let started = std::time::Instant::now();
                let Ok(version) = store.status_version().await else {
                    continue;
                };
                if !poll_all && seen == Some(version) {
                    continue;
                }
                seen = Some(version);
                let Ok(texts) = store.tenant_status_texts().await else {
                    continue;
                };
                let read = started.elapsed();
                let mut next = HashMap::with_capacity(texts.len());
                let mut statuses = Vec::with_capacity(texts.len());
                for (id, text) in texts {
                    let status = match parsed.remove(&id) {
                        Some((old, status)) if old == text => status,
                        _ => pug_store::parse_status(&id, &text).unwrap(),
                    };
                    statuses.push((id.clone(), status.clone()));
                    next.insert(id, (text, status));
                }
                parsed = next;
                tx.send_if_modified(|current| {
                    if **current == statuses {
                        return false;
                    }
                    *current = Arc::new(statuses);
                    true
                });
                // What one poll costs (wall time; the poll is alone on its thread).
                polls += 1;
                read_s += read.as_secs_f64();
                rest_s += (started.elapsed() - read).as_secs_f64();
                if polls % 10 == 0 {
                    eprintln!(
                        "poll: {:.2} ms read + {:.2} ms compare, average of {polls}",
                        read_s * 1e3 / f64::from(polls),
                        rest_s * 1e3 / f64::from(polls)
                    );
                }
            }
        });
        gateway
    } else {
        Gateway::new(store.clone(), settings, &mut registry)
            .await
            .unwrap()
    };
    // Served as `pug serve` serves its port.
    let listener = tokio::net::TcpListener::bind(listen).await.unwrap();
    let app = gateway.service(axum::Router::new());
    tokio::spawn(pug_gateway::server::serve(
        listener,
        app,
        pug_gateway::server::worker_count(workers),
        CancellationToken::new(),
    ));
    // Sign in through the real login form, as a browser would.
    let client = pug_test_support::http::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let page = client
        .get(format!("http://{listen}/login"))
        .send()
        .await
        .unwrap();
    let csrf = cookie(&page, "pug_csrf");
    let value = csrf.split_once('=').unwrap().1.to_owned();
    let resp = client
        .post(format!("http://{listen}/login"))
        .header("cookie", &csrf)
        .form(&[
            ("user", "bench"),
            ("password", "bench-password"),
            ("csrf", &value),
            ("next", "/"),
        ])
        .send()
        .await
        .unwrap();
    let session = cookie(&resp, "pug_session");
    println!("cookie={session}");
    println!("ready");
    loop {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

/// `host:port` moved `offset` ports up (tenant i's own upstream with `--upstream-ports`).
fn upstream_of(upstream: &str, offset: usize) -> String {
    let (host, port) = upstream.rsplit_once(':').expect("--upstream host:port");
    let port: usize = port.parse().expect("--upstream host:port");
    format!("{host}:{}", port + offset)
}

fn cookie(resp: &reqwest::Response, name: &str) -> String {
    resp.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .find(|p| p.starts_with(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} cookie"))
        .to_owned()
}
