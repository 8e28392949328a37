//! The docker backend against the real engine, driven by pug's controller.

mod support;

use std::sync::Arc;
use std::time::Duration;

use pug_docker::DockerBackend;
use pug_orchestrator::Orchestrator;
use pug_store::secret;
use pug_types::{DesiredState, ExposeSecret, GrafanaVersion, Phase};
use support::*;

const READY: Duration = Duration::from_secs(90);

struct Setup {
    namespace: String,
    config: pug_config::DockerConfig,
    _cleanup: Cleanup,
    _dir: tempfile::TempDir,
    store: pug_store::Store,
}

async fn setup(tenants: &[&str]) -> (Setup, Arc<DockerBackend>) {
    require_images();
    let namespace = format!("pt{}", unique());
    let mut config = docker_config(&format!("{namespace}-net"));
    config.namespace = namespace.clone();
    let cleanup = Cleanup {
        tenants: tenants.iter().map(|t| t.to_string()).collect(),
        network: config.network.clone(),
    };
    let backend = DockerBackend::new(config.clone()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    (
        Setup {
            namespace,
            config,
            _cleanup: cleanup,
            _dir: dir,
            store,
        },
        backend,
    )
}

fn containers(namespace: &str, tenant: &str) -> Vec<String> {
    docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("label=pug.namespace={namespace}"),
        "--filter",
        &format!("label=pug.tenant={tenant}"),
        "--format",
        "{{.Names}} {{.State}}",
    ])
    .lines()
    .map(str::to_owned)
    .collect()
}

/// Attack (security review F1/F18 on the docker backend): a process in tenant A's container
/// sends `X-WEBAUTH-USER` straight to tenant B's Grafana on the shared network. B's Grafana
/// trusts auth-proxy headers only from the network's gateway (where pug connects from), so the
/// request from A's address is refused; from pug's side the same request is accepted (the
/// control that the attack would work if the check were missing). No Grafana port is published
/// on the host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_container_cannot_sign_in_to_another_tenants_grafana() {
    let a = format!("da{}", unique());
    let b = format!("db{}", unique());
    let (s, backend) = setup(&[&a, &b]).await;
    let pug = Pug::start(s.store.clone(), backend.clone());
    let ida = pug.create(&a, GOOD, 1).await;
    let idb = pug.create(&b, GOOD, 1).await;
    pug.wait_phase(&ida, Phase::Ready, READY).await;
    let tb = pug.wait_phase(&idb, Phase::Ready, READY).await;
    let url = format!("http://{}/t/{b}/api/user", tb.status.endpoints[0]);
    let from_pug = pug_test_support::http::client()
        .get(&url)
        .header("X-WEBAUTH-USER", "carol")
        .send()
        .await
        .unwrap();
    assert_eq!(from_pug.status(), 200, "pug's requests are trusted");
    // From tenant A's container (its own network namespace and address on the pug network).
    let out = std::process::Command::new("docker")
        .args([
            "exec",
            &backend.container_name(&ida, 0),
            "/usr/bin/healthcheck",
            &url,
        ])
        .arg("X-WEBAUTH-USER: carol")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("status 407"),
        "A's container signed in to B's Grafana: {stderr}"
    );
    for id in [&ida, &idb] {
        let ports = docker(&[
            "inspect",
            "-f",
            "{{json .HostConfig.PortBindings}} {{json .NetworkSettings.Ports}}",
            &backend.container_name(id, 0),
        ]);
        assert!(
            !ports.contains("HostPort"),
            "a Grafana port is published on the host: {ports}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_scale_upgrade_suspend_resume_delete() {
    let tenant = format!("dl{}", unique());
    let (s, backend) = setup(&[&tenant]).await;
    let pug = Pug::start(s.store.clone(), backend.clone());

    // A version whose image is not on the engine is refused with what to do.
    backend
        .check_version(&GrafanaVersion::parse(GOOD).unwrap())
        .await
        .unwrap();
    let err = backend
        .check_version(&GrafanaVersion::parse("99.0.0").unwrap())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("pug-test/grafana:99.0.0") && err.contains("docker pull"),
        "{err}"
    );

    // Create: one container, labelled, healthy, on the pug network.
    let id = pug.create(&tenant, GOOD, 1).await;
    let t = pug.wait_phase(&id, Phase::Ready, READY).await;
    assert_eq!(t.status.endpoints.len(), 1);
    assert_eq!(
        health_version(&t.status.endpoints[0]).await.as_deref(),
        Some(GOOD)
    );
    let name = backend.container_name(&id, 0);
    let labels = docker(&["inspect", "-f", "{{json .Config.Labels}}", &name]);
    for expected in [
        "\"pug.managed\":\"true\"",
        &format!("\"pug.tenant\":\"{tenant}\""),
        "\"pug.replica\":\"0\"",
        "\"pug.spec-hash\":",
    ] {
        assert!(labels.contains(expected), "{expected} not in {labels}");
    }
    assert_eq!(
        docker(&[
            "inspect",
            "-f",
            "{{.HostConfig.Memory}} {{.HostConfig.NanoCpus}} {{.HostConfig.RestartPolicy.Name}}",
            &name
        ]),
        "134217728 500000000 unless-stopped"
    );
    assert!(
        docker(&["inspect", "-f", "{{json .Config.Healthcheck}}", &name]).contains("/api/health")
    );

    // Secrets never appear in the container's configuration, only the __FILE paths.
    let inspect = docker(&["inspect", &name]);
    for key in [secret::ADMIN_PASSWORD, secret::SECRET_KEY] {
        let value = s.store.secret(&id, key).await.unwrap().unwrap();
        assert!(
            !inspect.contains(value.expose_secret()),
            "secret {key} is visible in docker inspect"
        );
    }
    assert!(inspect
        .contains("GF_SECURITY_ADMIN_PASSWORD__FILE=/run/secrets/pug-security-admin-password"));
    assert!(!inspect.contains("GF_SECURITY_ADMIN_PASSWORD="));
    // …and Grafana did read them: the admin password works.
    let password = s
        .store
        .secret(&id, secret::ADMIN_PASSWORD)
        .await
        .unwrap()
        .unwrap();
    let user = pug_test_support::http::client()
        .get(format!(
            "http://{}/t/{tenant}/api/user",
            t.status.endpoints[0]
        ))
        .basic_auth(
            pug_orchestrator::InstanceSpec::ADMIN_LOGIN,
            Some(password.expose_secret()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(user.status(), 200, "{:?}", user.text().await);

    // Provisioning files are in the container (copied like the secrets, never in its config).
    let copy = tempfile::tempdir().unwrap();
    let target = copy.path().join("datasources.yaml");
    docker(&[
        "cp",
        &format!("{name}:/etc/grafana/provisioning/datasources/pug.yaml"),
        target.to_str().unwrap(),
    ]);
    let datasources = std::fs::read_to_string(&target).expect("provisioning file in the container");
    assert!(datasources.contains("\"apiVersion\": 1"), "{datasources}");
    assert!(!inspect.contains("secureJsonData"));

    // Scale to 2.
    pug.change(&id, |spec| {
        spec.replicas = pug_types::Replicas::new(2).unwrap()
    })
    .await;
    let t = pug.wait_phase(&id, Phase::Ready, READY).await;
    assert_eq!(t.status.endpoints.len(), 2);
    assert_eq!(containers(&s.namespace, &tenant).len(), 2);

    // Upgrade: every replica replaced, one at a time, by a container of the new image.
    pug.change(&id, |spec| {
        spec.version = GrafanaVersion::parse(NEWER).unwrap()
    })
    .await;
    let t = wait_for(READY, "the upgrade to finish", || async {
        let t = pug.tenant(&id).await?;
        (t.status.phase == Phase::Ready && t.status.running_version.as_deref() == Some(NEWER))
            .then_some(t)
    })
    .await;
    for endpoint in &t.status.endpoints {
        assert_eq!(health_version(endpoint).await.as_deref(), Some(NEWER));
    }
    let events = pug.events(&id).await;
    assert!(
        events.iter().any(|e| e.starts_with("InstanceReplaced")),
        "{events:?}"
    );

    // Scale back to 1.
    pug.change(&id, |spec| spec.replicas = pug_types::Replicas::ONE)
        .await;
    pug.wait_phase(&id, Phase::Ready, READY).await;
    assert_eq!(containers(&s.namespace, &tenant).len(), 1);

    // Suspend: no container, the volume stays; resume brings it back.
    pug.change(&id, |spec| spec.desired_state = DesiredState::Suspended)
        .await;
    pug.wait_phase(&id, Phase::Suspended, READY).await;
    assert!(containers(&s.namespace, &tenant).is_empty());
    let volumes = docker(&[
        "volume",
        "ls",
        "-q",
        "--filter",
        &format!("label=pug.tenant={tenant}"),
    ]);
    assert_eq!(volumes.lines().count(), 1, "{volumes}");
    pug.change(&id, |spec| spec.desired_state = DesiredState::Active)
        .await;
    pug.wait_phase(&id, Phase::Ready, READY).await;

    // Delete: containers go; the volume stays as the archive.
    pug.change(&id, |spec| spec.desired_state = DesiredState::Deleted)
        .await;
    wait_for(READY, "the tenant to be deleted", || async {
        pug.tenant(&id).await.is_none().then_some(())
    })
    .await;
    assert!(containers(&s.namespace, &tenant).is_empty());
    assert!(backend.instances(&id).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_upgrade_is_rolled_back() {
    let tenant = format!("dr{}", unique());
    let (s, backend) = setup(&[&tenant]).await;
    let pug = Pug::start(s.store.clone(), backend.clone());
    let id = pug.create(&tenant, GOOD, 1).await;
    pug.wait_phase(&id, Phase::Ready, READY).await;

    pug.change(&id, |spec| {
        spec.version = GrafanaVersion::parse(BROKEN).unwrap()
    })
    .await;
    let t = wait_for(Duration::from_secs(120), "the rollback", || async {
        let t = pug.tenant(&id).await?;
        (t.spec.version.to_string() == GOOD
            && t.status.phase == Phase::Ready
            && t.status.observed_generation == t.generation)
            .then_some(t)
    })
    .await;
    assert_eq!(t.status.running_version.as_deref(), Some(GOOD));
    assert_eq!(
        health_version(&t.status.endpoints[0]).await.as_deref(),
        Some(GOOD)
    );
    let events = pug.events(&id).await;
    eprintln!("{events:#?}");
    assert!(
        events.iter().any(|e| e.starts_with("UpgradeRolledBack")),
        "{events:?}"
    );
    assert_eq!(containers(&s.namespace, &tenant).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn total_failure_and_orphans_are_repaired() {
    let tenants: Vec<String> = (0..3).map(|i| format!("dt{i}{}", unique())).collect();
    let refs: Vec<&str> = tenants.iter().map(String::as_str).collect();
    let (s, backend) = setup(&refs).await;
    let pug = Pug::start(s.store.clone(), backend.clone());
    let mut ids = Vec::new();
    for t in &tenants {
        ids.push(pug.create(t, GOOD, 1).await);
    }
    for id in &ids {
        pug.wait_phase(id, Phase::Ready, READY).await;
    }

    // Total failure: every container removed by hand. The next passes bring all back.
    let all = docker(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=pug.namespace={}", s.namespace),
    ]);
    assert_eq!(all.lines().count(), 3);
    for c in all.lines() {
        docker(&["rm", "-f", c]);
    }
    for id in &ids {
        wait_for(READY, "every tenant to be back", || async {
            let t = pug.tenant(id).await?;
            let running = containers(&s.namespace, id.as_str());
            (t.status.phase == Phase::Ready
                && running.len() == 1
                && running[0].ends_with("running"))
            .then_some(())
        })
        .await;
    }
    assert!(backend.engine().peak_concurrent_ops() <= s.config.max_concurrent_ops);

    // Orphans: a pug with an empty store on the same namespace removes them all.
    let store = pug.kill().await;
    let dir = tempfile::tempdir().unwrap();
    let empty = support::store(&dir).await;
    let other = Pug::start(empty.clone(), backend.clone());
    wait_for(READY, "the orphans to be removed", || async {
        docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=pug.namespace={}", s.namespace),
        ])
        .is_empty()
        .then_some(())
    })
    .await;
    let events = other.events(&ids[0]).await;
    assert!(
        events.iter().any(|e| e.starts_with("OrphanRemoved")),
        "{events:?}"
    );
    drop(store);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pug_killed_mid_upgrade_converges() {
    let tenant = format!("dk{}", unique());
    let (s, backend) = setup(&[&tenant]).await;
    let pug = Pug::start(s.store.clone(), backend.clone());
    let id = pug.create(&tenant, GOOD, 2).await;
    pug.wait_phase(&id, Phase::Ready, READY).await;

    pug.change(&id, |spec| {
        spec.version = GrafanaVersion::parse(NEWER).unwrap()
    })
    .await;
    // Kill pug as soon as the upgrade has begun (the first replica replaced).
    wait_for(READY, "the upgrade to begin", || async {
        pug.events(&id)
            .await
            .iter()
            .any(|e| e.starts_with("InstanceReplaced"))
            .then_some(())
    })
    .await;
    let store = pug.kill().await;
    drop(backend);

    // A new pug process: new backend, same store and engine.
    let backend = DockerBackend::new(s.config.clone()).await.unwrap();
    let pug = Pug::start(store, backend.clone());
    let t = wait_for(READY, "the upgrade to converge", || async {
        let t = pug.tenant(&id).await?;
        (t.status.phase == Phase::Ready && t.status.running_version.as_deref() == Some(NEWER))
            .then_some(t)
    })
    .await;
    assert_eq!(t.status.endpoints.len(), 2);
    for endpoint in &t.status.endpoints {
        assert_eq!(health_version(endpoint).await.as_deref(), Some(NEWER));
    }
    let running = containers(&s.namespace, &tenant);
    assert_eq!(running.len(), 2, "{running:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_engine_is_a_clear_error() {
    let mut config = docker_config("unused");
    config.host = "unix:///nonexistent/docker.sock".into();
    let err = DockerBackend::new(config).await.unwrap_err().to_string();
    assert!(err.contains("no Docker engine is reachable"), "{err}");
    assert!(err.contains("docker.host"), "{err}");
}
