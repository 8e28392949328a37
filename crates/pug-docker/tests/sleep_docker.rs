//! Idle tenants sleep and wake on the docker backend (issue 16), driven by pug's controller
//! against the real engine: asleep, the tenant's container is stopped and kept, with its data
//! volume; a wake starts that same container again; an upgrade asked for while it sleeps starts
//! nothing and applies at the wake, in a new container on the same volume.
//! (The gateway's side of a wake is backend-independent; `crates/pug/tests/sleep_process.rs`
//! drives it end to end.)

mod support;

use std::time::Duration;

use pug_docker::DockerBackend;
use pug_types::{GrafanaVersion, Phase};
use support::*;

const READY: Duration = Duration::from_secs(90);

/// The ids of the tenant's containers, running ones only unless `all`.
fn containers(namespace: &str, tenant: &str, all: bool) -> Vec<String> {
    docker(&[
        "ps",
        if all { "-aq" } else { "-q" },
        "--no-trunc",
        "--filter",
        &format!("label=pug.namespace={namespace}"),
        "--filter",
        &format!("label=pug.tenant={tenant}"),
    ])
    .lines()
    .filter(|l| !l.is_empty())
    .map(str::to_owned)
    .collect()
}

fn volumes(namespace: &str, tenant: &str) -> Vec<String> {
    docker(&[
        "volume",
        "ls",
        "-q",
        "--filter",
        &format!("name={namespace}-{tenant}-"),
    ])
    .lines()
    .filter(|l| !l.is_empty())
    .map(str::to_owned)
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tenant_sleeps_keeps_its_volume_and_wakes_with_its_current_spec() {
    require_images();
    let tenant = format!("sl{}", unique());
    let namespace = format!("pt{}", unique());
    let mut config = docker_config(&format!("{namespace}-net"));
    config.namespace = namespace.clone();
    let _cleanup = Cleanup {
        tenants: vec![tenant.clone()],
        network: config.network.clone(),
    };
    let backend = DockerBackend::new(config).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pug = Pug::start(store(&dir).await, backend.clone());

    let id = pug.create(&tenant, "11.3.0", 1).await;
    pug.wait_phase(&id, Phase::Ready, READY).await;
    let volume = volumes(&namespace, &tenant);
    assert_eq!(volume.len(), 1, "{volume:?}");

    let first = containers(&namespace, &tenant, true);
    assert_eq!(first.len(), 1, "{first:?}");

    // Idle for its timeout (1 s, plus the 2 s grace): the container stopped and kept, the
    // volume too.
    pug.change(&id, |s| s.idle_timeout_secs = Some(1)).await;
    pug.wait_phase(&id, Phase::Sleeping, READY).await;
    wait_for(READY, "the container to stop", || async {
        containers(&namespace, &tenant, false)
            .is_empty()
            .then_some(())
    })
    .await;
    assert_eq!(containers(&namespace, &tenant, true), first);
    assert_eq!(volumes(&namespace, &tenant), volume);
    assert!(pug
        .events(&id)
        .await
        .iter()
        .any(|e| e.starts_with("Slept:")));

    // A wake (what the gateway asks for on a request) starts the same container again: no
    // crash restart counted, nothing recreated.
    let wake = || async {
        assert!(pug
            .store
            .wake(&id, "request", pug_store::now_ms())
            .await
            .unwrap());
        pug.controller.wake();
    };
    pug.change(&id, |s| s.idle_timeout_secs = Some(300)).await;
    wake().await;
    let t = pug.wait_phase(&id, Phase::Ready, READY).await;
    assert_eq!(containers(&namespace, &tenant, false), first);
    assert_eq!(
        health_version(&t.status.endpoints[0]).await.as_deref(),
        Some("11.3.0")
    );
    let events = pug.events(&id).await;
    assert!(
        events
            .iter()
            .any(|e| e.contains("started again after sleep")),
        "{events:#?}"
    );
    assert!(
        !events.iter().any(|e| e.starts_with("InstanceRestarted")),
        "{events:#?}"
    );

    // Asleep again, an upgrade: recorded, nothing started.
    pug.change(&id, |s| s.idle_timeout_secs = Some(1)).await;
    pug.wait_phase(&id, Phase::Sleeping, READY).await;
    wait_for(READY, "the container to stop again", || async {
        containers(&namespace, &tenant, false)
            .is_empty()
            .then_some(())
    })
    .await;
    pug.change(&id, |s| {
        s.version = GrafanaVersion::parse("11.4.0").unwrap()
    })
    .await;
    let t = pug.wait_phase(&id, Phase::Sleeping, READY).await;
    assert_eq!(t.status.running_version.as_deref(), Some("11.3.0"));
    assert!(containers(&namespace, &tenant, false).is_empty());

    // The wake starts the current spec in a new container on the same volume, and records how
    // long it took.
    pug.change(&id, |s| s.idle_timeout_secs = Some(300)).await;
    wake().await;
    let t = pug.wait_phase(&id, Phase::Ready, READY).await;
    assert_eq!(
        health_version(&t.status.endpoints[0]).await.as_deref(),
        Some("11.4.0")
    );
    assert_eq!(volumes(&namespace, &tenant), volume);
    let now = containers(&namespace, &tenant, true);
    assert_eq!(now.len(), 1, "{now:?}");
    assert_ne!(now, first, "an upgrade runs in a new container");
    wait_for(READY, "a Woke event", || async {
        pug.events(&id)
            .await
            .iter()
            .any(|e| e.starts_with("Woke: woke in "))
            .then_some(())
    })
    .await;
}
