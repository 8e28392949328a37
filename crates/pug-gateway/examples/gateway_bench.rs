//! The gateway as `bench/gateway/run.sh` measures it: a real store (SQLite in a temp dir) with
//! `--tenants` tenants registered, all ready on `--upstream`, one user who is a member of
//! every tenant, and the real gateway on `--listen`. Prints `cookie=<pug_session=…>` and
//! `ready` on stdout, then serves until killed.
//!
//! `cargo run --release -p pug-gateway --example gateway_bench -- --upstream 127.0.0.1:18090
//!  --listen 127.0.0.1:18092 --tenants 1000 [--workers N]`

use std::net::SocketAddr;
use std::time::Duration;

use pug_config::Config;
use pug_gateway::{Gateway, GatewaySettings};
use pug_store::{MasterKey, Store};
use pug_types::{Phase, TenantId, TenantSpec, TenantStatus};

/// The allocator `pug` itself uses (see `crates/pug/src/main.rs`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    let mut upstream = String::from("127.0.0.1:18090");
    let mut listen: SocketAddr = "127.0.0.1:18092".parse().unwrap();
    let mut tenants = 1000usize;
    let mut workers = 0usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().expect("every flag takes a value");
        match a.as_str() {
            "--upstream" => upstream = v,
            "--listen" => listen = v.parse().expect("--listen host:port"),
            "--tenants" => tenants = v.parse().expect("--tenants N"),
            "--workers" => workers = v.parse().expect("--workers N (0: one per core)"),
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
        status.endpoints = vec![upstream.clone()];
        store.set_status(&id, &status).await.unwrap();
        store.grant("bench", &id, "Viewer").await.unwrap();
    }
    let config = Config {
        listen,
        ..Config::default()
    };
    let settings = GatewaySettings::from_config(&config);
    let mut registry = pug_metrics::new_registry();
    let gateway = Gateway::new(store.clone(), settings, &mut registry)
        .await
        .unwrap();
    // Served as `pug serve` serves its port.
    let listener = tokio::net::TcpListener::bind(listen).await.unwrap();
    let app = gateway.service(axum::Router::new());
    tokio::spawn(pug_gateway::server::serve(
        listener,
        app,
        pug_gateway::server::worker_count(workers),
        tokio_util::sync::CancellationToken::new(),
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
