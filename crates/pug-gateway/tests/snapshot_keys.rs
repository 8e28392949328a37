//! The gateway fed by a status snapshot (`Gateway::background_on`, as `pug serve` runs it):
//! the poller publishes only a fleet that changed, yet a deleted embed key stops verifying
//! bearer tokens within a refresh interval, however still the fleet is.

mod support;

use std::sync::Arc;
use std::time::Duration;

use pug_auth::embed::EmbedClaims;
use pug_config::Config;
use pug_gateway::{Gateway, GatewaySettings, StatusSnapshot};
use pug_store::{MasterKey, Store};
use pug_types::{ExposeSecret, Phase, TenantId, TenantSpec, TenantStatus};
use support::{no_redirects, wait_for};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_embed_key_stops_bearer_tokens_without_a_new_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        &format!("sqlite://{}", dir.path().join("pug.db").display()),
        MasterKey::generate(),
    )
    .await
    .unwrap();
    let acme = TenantId::parse("acme").unwrap();
    let spec: TenantSpec = serde_json::from_value(serde_json::json!({
        "display_name": "acme", "version": "11.3.0", "replicas": 1, "desired_state": "active",
    }))
    .unwrap();
    store.create_tenant(&acme, &spec, &[]).await.unwrap();
    // Ready on a port nothing listens on: an accepted token gets 502, a refused one 401.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let mut status = TenantStatus::pending();
    status.phase = Phase::Ready;
    status.ready_replicas = 1;
    status.endpoints = vec![closed];
    store.set_status(&acme, &status).await.unwrap();
    let (info, key) = store.create_embed_key("webapp", None).await.unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = Config {
        listen: addr,
        ..Config::default()
    };
    let mut settings = GatewaySettings::from_config(&config);
    settings.refresh_interval = Duration::from_millis(200);
    let mut registry = pug_metrics::new_registry();
    let gateway = Gateway::open(store.clone(), settings, &mut registry)
        .await
        .unwrap();
    // A snapshot that never changes: the fleet stands still.
    let snapshot: StatusSnapshot = Arc::new(store.tenant_statuses().await.unwrap());
    let (_publisher, statuses) = tokio::sync::watch::channel(snapshot);
    let shutdown = CancellationToken::new();
    tokio::spawn(gateway.background_on(statuses, shutdown.clone()));
    tokio::spawn(pug_gateway::server::serve(
        listener,
        gateway.service(axum::Router::new()),
        1,
        shutdown.clone(),
    ));

    let token = pug_auth::embed::sign(
        &info.id,
        key.expose_secret(),
        &EmbedClaims {
            tenant: "acme".into(),
            sub: "carol".into(),
            email: "carol@customer.example".into(),
            role: "Viewer".into(),
            exp: pug_store::now_ms() / 1000 + 300,
            name: None,
            jti: None,
        },
    );
    let status_of = || async {
        no_redirects()
            .get(format!("http://{addr}/t/acme/api/health"))
            .header("authorization", format!("Bearer {token}"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(status_of().await, 502, "the key's token is accepted");
    assert!(store.delete_embed_key(&info.id).await.unwrap());
    wait_for(
        Duration::from_secs(10),
        "the deleted key's token refused",
        || async { (status_of().await == 401).then_some(()) },
    )
    .await;
    shutdown.cancel();
}
