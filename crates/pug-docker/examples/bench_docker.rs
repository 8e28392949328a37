//! Benchmark of the docker backend (see `bench/docker/README.md`): N tenants on the real
//! engine, driven by pug's controller with an in-process store.
//!
//! Reports the time from nothing to every tenant ready, the time to recover after every
//! container was removed by hand (a "total failure"), and the peak number of container
//! operations in flight against `docker.max_concurrent_ops`.
//!
//! Usage: `cargo run -p pug-docker --example bench_docker -- [TENANTS] [MAX_CONCURRENT_OPS]`
//! (defaults 50 and 8). Needs the test images (`crates/pug-docker/tests/images/build.sh`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use pug_config::{Config, DockerConfig};
use pug_controller::{Controller, ControllerMetrics, ControllerSettings};
use pug_docker::DockerBackend;
use pug_store::{generate_secret, secret, Store};
use pug_types::{Phase, TenantId, TenantSpec};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let tenants: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(50);
    let limit: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(8);
    let namespace = format!("bench{}", std::process::id());
    let docker_config = DockerConfig {
        namespace: namespace.clone(),
        image: "pug-test/grafana:{version}".into(),
        network: format!("{namespace}-net"),
        memory_mb: 128,
        cpus: 0.25,
        healthcheck: vec![
            "CMD".into(),
            "/usr/bin/healthcheck".into(),
            "http://127.0.0.1:{port}{path}api/health".into(),
        ],
        max_concurrent_ops: limit,
        ..DockerConfig::default()
    };
    let backend = DockerBackend::new(docker_config.clone()).await?;
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}", dir.path().join("pug.db").display());
    let store = Store::open_data_dir(dir.path(), &url).await?;
    let mut config = Config::default();
    config.controller.resync_interval_secs = 5;
    config.controller.readiness_poll_ms = 250;
    let controller = Controller::new(
        store.clone(),
        backend.clone(),
        ControllerSettings::from_config(&config),
        ControllerMetrics::register(&mut pug_metrics::new_registry()),
        None,
    );
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(pug_controller::run(controller.clone(), shutdown.clone()));

    let result = bench(&store, &controller, &backend, &namespace, tenants).await;

    shutdown.cancel();
    let _ = run.await;
    cleanup(&backend, &namespace, &docker_config.network).await;
    let (create, recover) = result?;
    println!();
    println!(
        "| tenants | max_concurrent_ops | empty → all ready | all containers removed → all ready | peak concurrent container ops |"
    );
    println!("|---|---|---|---|---|");
    println!(
        "| {tenants} | {limit} | {:.1} s | {:.1} s | {} (limit {limit}) |",
        create.as_secs_f64(),
        recover.as_secs_f64(),
        backend.engine().peak_concurrent_ops()
    );
    assert!(backend.engine().peak_concurrent_ops() <= limit);
    Ok(())
}

async fn bench(
    store: &Store,
    controller: &Controller,
    backend: &Arc<DockerBackend>,
    namespace: &str,
    n: usize,
) -> Result<(Duration, Duration), Box<dyn std::error::Error>> {
    let ids: Vec<TenantId> = (0..n)
        .map(|i| TenantId::parse(&format!("t{i:03}")).expect("valid id"))
        .collect();
    let started = Instant::now();
    for id in &ids {
        let spec: TenantSpec = serde_json::from_value(serde_json::json!({
            "display_name": id.to_string(), "version": "11.3.0", "replicas": 1,
            "desired_state": "active",
        }))?;
        let secrets = [
            (secret::ADMIN_PASSWORD, generate_secret()),
            (secret::SECRET_KEY, generate_secret()),
        ];
        store.create_tenant(id, &spec, &secrets).await?;
        controller.enqueue(id).await?;
    }
    wait_all_ready(store, &ids).await?;
    let create = started.elapsed();
    eprintln!("{n} tenants ready in {create:?}");

    // Total failure: every container removed at once, behind pug's back.
    let containers = list(backend, namespace).await?;
    let old: std::collections::HashSet<String> =
        containers.iter().filter_map(|c| c.id.clone()).collect();
    let started = Instant::now();
    let removals = containers.iter().filter_map(|c| c.id.clone()).map(|id| {
        let docker = backend.engine().docker.clone();
        async move {
            docker
                .remove_container(
                    &id,
                    Some(bollard::query_parameters::RemoveContainerOptions {
                        force: true,
                        ..Default::default()
                    }),
                )
                .await
        }
    });
    futures::future::join_all(removals).await;
    eprintln!("removed {} containers", old.len());
    // Ready again means: n new containers running and every tenant ready.
    loop {
        let now = list(backend, namespace).await?;
        let fresh = now.iter().filter(|c| {
            c.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING)
                && c.id.as_ref().is_some_and(|id| !old.contains(id))
        });
        if fresh.count() == n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    wait_all_ready(store, &ids).await?;
    let recover = started.elapsed();
    eprintln!("recovered in {recover:?}");
    Ok((create, recover))
}

async fn list(
    backend: &Arc<DockerBackend>,
    namespace: &str,
) -> Result<Vec<bollard::models::ContainerSummary>, bollard::errors::Error> {
    backend
        .engine()
        .docker
        .list_containers(Some(bollard::query_parameters::ListContainersOptions {
            all: true,
            filters: Some(
                [(
                    "label".to_owned(),
                    vec![format!("pug.namespace={namespace}")],
                )]
                .into(),
            ),
            ..Default::default()
        }))
        .await
}

/// Waits until every tenant is ready with its latest spec, checking the phases in the store.
async fn wait_all_ready(store: &Store, ids: &[TenantId]) -> Result<(), Box<dyn std::error::Error>> {
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let mut ready = 0;
        for id in ids {
            if let Some(t) = store.tenant(id).await? {
                if t.status.phase == Phase::Ready && t.status.observed_generation == t.generation {
                    ready += 1;
                }
            }
        }
        if ready == ids.len() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(
                format!("only {ready}/{} tenants ready after 15 minutes", ids.len()).into(),
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn cleanup(backend: &Arc<DockerBackend>, namespace: &str, network: &str) {
    let docker = &backend.engine().docker;
    let filter = || {
        Some(
            [(
                "label".to_owned(),
                vec![format!("pug.namespace={namespace}")],
            )]
            .into(),
        )
    };
    if let Ok(containers) = docker
        .list_containers(Some(bollard::query_parameters::ListContainersOptions {
            all: true,
            filters: filter(),
            ..Default::default()
        }))
        .await
    {
        for c in containers.into_iter().filter_map(|c| c.id) {
            let _ = docker
                .remove_container(
                    &c,
                    Some(bollard::query_parameters::RemoveContainerOptions {
                        force: true,
                        ..Default::default()
                    }),
                )
                .await;
        }
    }
    if let Ok(volumes) = docker
        .list_volumes(Some(bollard::query_parameters::ListVolumesOptions {
            filters: filter(),
        }))
        .await
    {
        for v in volumes.volumes.unwrap_or_default() {
            let _ = docker
                .remove_volume(
                    &v.name,
                    None::<bollard::query_parameters::RemoveVolumeOptions>,
                )
                .await;
        }
    }
    let _ = docker.remove_network(network).await;
}
