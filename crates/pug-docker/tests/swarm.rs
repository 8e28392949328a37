//! The swarm backend against the real engine as a single-node swarm, driven by pug's
//! controller. The swarm is initialised by the test when inactive and left again at the end
//! (pass or fail); an active swarm is used as found and left active.
//!
//! One test function on purpose: swarm membership is engine-wide, so the scenarios run in
//! sequence under one guard.
//!
//! pug reaches tasks over the overlay network only (nothing is published on the node), so the
//! scenarios run the way pug runs on a swarm: inside a container attached to the overlay. The
//! test prepares the swarm, the overlay and the images on the host, then runs itself again in
//! a container on the overlay (an empty image with the host's `/usr` mounted read-only, the
//! engine's socket and this test binary), and checks from outside what an attacker can reach.

mod support;

use std::sync::Arc;
use std::time::Duration;

use pug_docker::{SwarmBackend, SwarmObserver};
use pug_orchestrator::Orchestrator;
use pug_store::secret;
use pug_types::{DesiredState, ExposeSecret, GrafanaVersion, Phase};
use support::overlay::{build_runner_image, host_mounts, SwarmGuard, RUNNER_IMAGE};
use support::*;

const READY: Duration = Duration::from_secs(120);

/// Prints `seen` when it differs from the last thing printed (what a wait saw, for its failure).
fn note(last: &std::sync::Mutex<String>, seen: String) {
    let mut last = last.lock().unwrap();
    if *last != seen {
        eprintln!("{seen}");
        *last = seen;
    }
}

fn service(namespace: &str, tenant: &str) -> String {
    format!("{namespace}-{tenant}")
}

fn inspect(namespace: &str, tenant: &str, format: &str) -> String {
    docker(&[
        "service",
        "inspect",
        "-f",
        format,
        &service(namespace, tenant),
    ])
}

/// The gateway's identity-token signer of this test's pug (as `pug serve` derives it from its
/// store's secret).
fn signer() -> pug_auth::IdentitySigner {
    pug_auth::IdentitySigner::from_secret(&pug_types::SecretString::from(
        "swarm test gateway key".to_owned(),
    ))
}

/// Set (to `<namespace> <tenant a> <tenant b>`) when this test runs inside the overlay.
const INSIDE: &str = "PUG_SWARM_TEST_INSIDE";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swarm_backend_end_to_end() {
    match std::env::var(INSIDE) {
        Ok(names) => {
            let names: Vec<&str> = names.split(' ').collect();
            scenarios(names[0], names[1], names[2]).await
        }
        Err(_) => from_outside().await,
    }
}

/// Prepares the swarm, overlay and images, runs the scenarios on the overlay, then attacks.
async fn from_outside() {
    require_images();
    let namespace = format!("ps{}", unique());
    let a = format!("sa{}", unique());
    let b = format!("sb{}", unique());
    let network = format!("{namespace}-net");
    // Declared first, dropped last: the swarm is left after everything else is cleaned up.
    let _swarm = SwarmGuard::new();
    let _cleanup = Cleanup {
        tenants: vec![a.clone(), b.clone()],
        network: network.clone(),
    };
    let created = docker_status(&[
        "network",
        "create",
        "--driver",
        "overlay",
        "--attachable",
        &network,
    ]);
    assert!(
        created.0,
        "cannot create the overlay {network}: {}",
        created.1
    );

    // Outside the overlay there is no pug: the backend refuses to start and says why.
    let err = SwarmBackend::new(docker_config(&network), signer().public_key_pem())
        .await
        .expect_err("the swarm backend must refuse to run outside the overlay");
    assert!(err.to_string().contains("must run in a container"), "{err}");

    build_runner_image();
    let exe = std::env::current_exe().unwrap();
    let exe_dir = exe.parent().unwrap().to_str().unwrap().to_owned();
    let workspace = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let mut args: Vec<String> = [
        "run",
        "--rm",
        "--name",
        &format!("{namespace}-runner"),
        "--network",
        &network,
        "-v",
        &format!("{workspace}:{workspace}:ro"),
        "-v",
        &format!("{exe_dir}:{exe_dir}:ro"),
        "-e",
        &format!("{INSIDE}={namespace} {a} {b}"),
        "-e",
        "RUST_BACKTRACE=1",
        "-e",
        "TMPDIR=/tmp",
        RUNNER_IMAGE,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let image = args.pop().expect("the image is last");
    args.extend(host_mounts());
    args.push(image);
    args.extend([
        exe.to_str().unwrap().to_owned(),
        "--exact".into(),
        "swarm_backend_end_to_end".into(),
        "--nocapture".into(),
    ]);
    let out = std::process::Command::new("docker")
        .args(&args)
        .output()
        .expect("docker runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "the scenarios on the overlay failed (output above)"
    );
    // libtest exits 0 when no test matched: make sure the scenarios did run.
    assert!(
        stdout.contains("test result: ok. 1 passed"),
        "the scenarios did not run on the overlay (output above)"
    );
}

/// Runs `docker <args>`: (success, stderr).
fn docker_status(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new("docker")
        .args(args)
        .output()
        .expect("docker runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every scenario, as pug: in a container on the overlay.
async fn scenarios(namespace: &str, a: &str, b: &str) {
    let (namespace, a, b) = (namespace.to_owned(), a.to_owned(), b.to_owned());
    let mut config = docker_config(&format!("{namespace}-net"));
    config.namespace = namespace.clone();
    let backend = SwarmBackend::new(config.clone(), signer().public_key_pem())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    let pug = Pug::start(store.clone(), backend.clone());

    // Create: one service with three tasks, each probed through its published port.
    let id = pug.create(&a, GOOD, 3).await;
    let t = pug.wait_phase(&id, Phase::Ready, READY).await;
    assert_eq!(t.status.endpoints.len(), 3, "{:?}", t.status);
    for endpoint in &t.status.endpoints {
        assert_eq!(health_version(endpoint).await.as_deref(), Some(GOOD));
    }
    assert_eq!(
        inspect(&namespace, &a, "{{.Spec.Mode.Replicated.Replicas}}"),
        "3"
    );
    assert_eq!(
        inspect(
            &namespace,
            &a,
            "{{.Spec.UpdateConfig.FailureAction}} {{.Spec.UpdateConfig.Order}} {{.Spec.UpdateConfig.Parallelism}}"
        ),
        "rollback stop-first 1"
    );
    assert!(inspect(&namespace, &a, "{{json .Spec.Labels}}").contains("\"pug.spec-hash\""));
    let volumes = docker(&[
        "volume",
        "ls",
        "-q",
        "--filter",
        &format!("label=pug.tenant={a}"),
    ]);
    assert_eq!(
        volumes.lines().count(),
        1,
        "the tenant's volume is labelled: {volumes}"
    );

    // Secrets are Docker secrets read through __FILE, never plain environment.
    let spec = docker(&["service", "inspect", &service(&namespace, &a)]);
    let task_container = docker(&[
        "ps",
        "-q",
        "--filter",
        &format!(
            "label=com.docker.swarm.service.name={}",
            service(&namespace, &a)
        ),
    ]);
    let container = docker(&["inspect", task_container.lines().next().unwrap()]);
    for key in [secret::ADMIN_PASSWORD, secret::SECRET_KEY] {
        let value = store.secret(&id, key).await.unwrap().unwrap();
        assert!(
            !spec.contains(value.expose_secret()),
            "{key} in the service spec"
        );
        assert!(
            !container.contains(value.expose_secret()),
            "{key} in docker inspect"
        );
    }
    assert!(
        spec.contains("GF_SECURITY_ADMIN_PASSWORD__FILE=/run/secrets/pug-security-admin-password")
    );
    let secrets = docker(&[
        "secret",
        "ls",
        "-q",
        "--filter",
        &format!("label=pug.tenant={a}"),
    ]);
    // admin password, secret_key, and the (empty) datasources provisioning file
    assert_eq!(secrets.lines().count(), 3, "{secrets}");

    // Attack (security review, finding 16): Grafana reachable without the gateway. Nothing is
    // published on the node, the endpoint is DNS round robin (no virtual IP), and tasks run
    // without NET_RAW (so they cannot answer ARP for pug's address on the overlay).
    assert_eq!(
        inspect(
            &namespace,
            &a,
            "{{json .Endpoint.Ports}} {{.Spec.EndpointSpec.Mode}}"
        ),
        "null dnsrr"
    );
    assert_eq!(
        inspect(
            &namespace,
            &a,
            "{{json .Spec.TaskTemplate.ContainerSpec.CapabilityDrop}}"
        ),
        "[\"CAP_NET_RAW\"]"
    );
    // Attack: another container on the overlay (what a tenant's own Grafana is) tries to sign
    // in at a tenant's task. The task trusts no address, only the gateway's signature
    // (`[auth.jwt]`): the gateway's token signs in as its person; an auth-proxy header (from
    // anywhere, pug's own address included), a token signed with another key, and a token the
    // gateway signed for another tenant (what tenant B's Grafana sees of its own users) are
    // all refused, from pug's container and from another container on the overlay alike.
    let endpoint = t.status.endpoints[0].clone();
    let url = format!("http://{endpoint}/t/{a}/api/user");
    let tenant_a = pug_types::TenantId::parse(&a).unwrap();
    let tenant_b = pug_types::TenantId::parse(&b).unwrap();
    let now = pug_store::now_ms() / 1000;
    let role = pug_auth::GrafanaRole::Viewer;
    let good = signer().sign(&tenant_a, "alice", "alice@example.com", "Alice", role, now);
    let for_b = signer().sign(&tenant_b, "alice", "alice@example.com", "Alice", role, now);
    let forged = pug_auth::IdentitySigner::from_secret(&pug_types::SecretString::from(
        "an attacker's key".to_owned(),
    ))
    .sign(
        &tenant_a,
        "admin",
        "admin@localhost",
        "x",
        pug_auth::GrafanaRole::Admin,
        now,
    );
    let get = |header: &'static str, value: String| {
        let url = url.clone();
        async move {
            let r = pug_test_support::http::client()
                .get(&url)
                .header(header, value)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (status, body) = get("X-Pug-Identity", good.clone()).await;
    let user: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    assert_eq!(
        (status, &user["login"], &user["authenticatedBy"]),
        (200, &serde_json::json!("alice"), &serde_json::json!("jwt")),
        "the gateway's token: {body}"
    );
    for (what, header, value) in [
        (
            "an auth-proxy header from pug's address",
            "X-WEBAUTH-USER",
            "alice".to_owned(),
        ),
        (
            "a token signed with another key",
            "X-Pug-Identity",
            forged.clone(),
        ),
        (
            "the gateway's token for another tenant",
            "X-Pug-Identity",
            for_b.clone(),
        ),
    ] {
        let (status, body) = get(header, value).await;
        assert!(
            status == 401 && !body.contains("\"login\""),
            "{what} signed in: {status} {body}"
        );
    }
    for (what, header) in [
        ("an auth-proxy header", "X-WEBAUTH-USER: admin".to_owned()),
        ("a forged token", format!("X-Pug-Identity: {forged}")),
        ("another tenant's token", format!("X-Pug-Identity: {for_b}")),
    ] {
        let attacker = std::process::Command::new("docker")
            .args([
                "run",
                "--rm",
                "--network",
                &config.network,
                "-v",
                "/usr:/usr:ro",
                "-v",
                "/lib:/lib:ro",
                "-v",
                "/lib64:/lib64:ro",
                RUNNER_IMAGE,
                "/usr/bin/curl",
                "-sS",
                "--max-time",
                "10",
                "-H",
                &header,
                "-o",
                "/dev/stdout",
                "-w",
                "\nstatus=%{http_code}",
                &url,
            ])
            .output()
            .expect("docker runs");
        let seen = String::from_utf8_lossy(&attacker.stdout);
        assert!(
            seen.contains("status=401") && !seen.contains("\"login\""),
            "a container on the overlay signed in with {what}: {seen} {}",
            String::from_utf8_lossy(&attacker.stderr)
        );
    }

    // Observation: nodes, leader, tasks.
    let mut registry = pug_metrics::new_registry();
    let observer = SwarmObserver::new(backend.engine().clone(), &namespace, &mut registry);
    let status = observer.observe().await.unwrap();
    assert!(status.leader.is_some());
    assert_eq!(status.managers_reachable, 1);
    let tenant = status.tenants.iter().find(|t| t.tenant == a).unwrap();
    assert_eq!((tenant.running, tenant.desired), (3, 3));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(text.contains("pug_swarm_leader 1"), "{text}");
    // A single-node swarm: this node is the routing mesh's one peer.
    assert_eq!(
        status.ingress_peers.as_ref().map(Vec::len),
        Some(1),
        "{status:?}"
    );
    assert!(text.contains("pug_swarm_ingress_peers 1"), "{text}");
    assert!(
        text.contains(
            "pug_swarm_nodes{state=\"ready\",availability=\"active\",role=\"manager\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains(&format!("pug_tenant_running_tasks{{tenant=\"{a}\"}} 3")),
        "{text}"
    );
    assert!(text.contains("pug_swarm_tasks{node="), "{text}");

    // Scale to 2.
    pug.change(&id, |s| s.replicas = pug_types::Replicas::new(2).unwrap())
        .await;
    let t = wait_for(READY, "the scale-down", || async {
        let t = pug.tenant(&id).await?;
        (t.status.phase == Phase::Ready && t.status.endpoints.len() == 2).then_some(t)
    })
    .await;
    assert_eq!(t.status.ready_replicas, 2);
    assert_eq!(
        inspect(&namespace, &a, "{{.Spec.Mode.Replicated.Replicas}}"),
        "2"
    );

    // Upgrade, with pug killed as soon as Swarm has started rolling: a new pug converges.
    pug.change(&id, |s| s.version = GrafanaVersion::parse(NEWER).unwrap())
        .await;
    wait_for(READY, "the rolling update to start", || async {
        (inspect(&namespace, &a, "{{.Spec.TaskTemplate.ContainerSpec.Image}}")
            == format!("pug-test/grafana:{NEWER}"))
        .then_some(())
    })
    .await;
    let store = pug.kill().await;
    drop(backend);
    let backend = SwarmBackend::new(config.clone(), signer().public_key_pem())
        .await
        .unwrap();
    let pug = Pug::start(store.clone(), backend.clone());
    let t = wait_for(READY, "the upgrade to converge", || async {
        let t = pug.tenant(&id).await?;
        (t.status.phase == Phase::Ready
            && t.status.running_version.as_deref() == Some(NEWER)
            && t.status.endpoints.len() == 2)
            .then_some(t)
    })
    .await;
    for endpoint in &t.status.endpoints {
        assert_eq!(health_version(endpoint).await.as_deref(), Some(NEWER));
    }

    // A failed upgrade is rolled back (by Swarm, then by pug's spec).
    pug.change(&id, |s| s.version = GrafanaVersion::parse(BROKEN).unwrap())
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    let t = loop {
        let t = pug.tenant(&id).await.unwrap();
        if t.spec.version.to_string() == NEWER
            && t.status.phase == Phase::Ready
            && t.status.observed_generation == t.generation
        {
            break t;
        }
        if std::time::Instant::now() > deadline {
            panic!(
                "no rollback after 240s: {:?}\nevents: {:#?}\nservice: {}\ntasks:\n{}",
                t.status,
                pug.events(&id).await,
                inspect(
                    &namespace,
                    &a,
                    "{{json .UpdateStatus}} {{json .Spec.Labels}}"
                ),
                docker(&["service", "ps", "--no-trunc", &service(&namespace, &a)])
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for endpoint in &t.status.endpoints {
        assert_eq!(health_version(endpoint).await.as_deref(), Some(NEWER));
    }
    let events = pug.events(&id).await;
    assert!(
        events.iter().any(|e| e.starts_with("UpgradeRolledBack")),
        "{events:?}"
    );

    // Suspend: replicas 0, service and secrets kept; resume.
    pug.change(&id, |s| s.desired_state = DesiredState::Suspended)
        .await;
    pug.wait_phase(&id, Phase::Suspended, READY).await;
    assert_eq!(
        inspect(&namespace, &a, "{{.Spec.Mode.Replicated.Replicas}}"),
        "0"
    );
    pug.change(&id, |s| s.desired_state = DesiredState::Active)
        .await;
    let t = pug.wait_phase(&id, Phase::Ready, READY).await;
    assert_eq!(t.status.endpoints.len(), 2);

    // Sleep (issue 16): idle past its timeout, the service is scaled to 0, with the service,
    // its secrets and its volume kept; a wake scales it back.
    let secrets_before = docker(&[
        "secret",
        "ls",
        "-q",
        "--filter",
        &format!("label=pug.tenant={a}"),
    ]);
    pug.change(&id, |s| s.idle_timeout_secs = Some(1)).await;
    pug.wait_phase(&id, Phase::Sleeping, READY).await;
    wait_for(READY, "the sleeping service to have no task", || async {
        (inspect(&namespace, &a, "{{.Spec.Mode.Replicated.Replicas}}") == "0"
            && docker(&[
                "ps",
                "-q",
                "--filter",
                &format!(
                    "label=com.docker.swarm.service.name={}",
                    service(&namespace, &a)
                ),
            ])
            .is_empty())
        .then_some(())
    })
    .await;
    // Passes go on while it sleeps (its queue row is its idle timer): the service stays.
    pug.controller.wake();
    let t = pug.wait_phase(&id, Phase::Sleeping, READY).await;
    assert!(t.status.endpoints.is_empty(), "{:?}", t.status);
    assert!(
        !inspect(&namespace, &a, "{{.ID}}").is_empty(),
        "the sleeping service was deleted"
    );
    let secrets_after = docker(&[
        "secret",
        "ls",
        "-q",
        "--filter",
        &format!("label=pug.tenant={a}"),
    ]);
    assert_eq!(secrets_before, secrets_after);
    pug.change(&id, |s| s.idle_timeout_secs = Some(300)).await;
    assert!(pug
        .store
        .wake(&id, "request", pug_store::now_ms())
        .await
        .unwrap());
    pug.controller.wake();
    let t = pug.wait_phase(&id, Phase::Ready, READY).await;
    assert_eq!(t.status.endpoints.len(), 2, "{:?}", t.status);
    for endpoint in &t.status.endpoints {
        assert_eq!(health_version(endpoint).await.as_deref(), Some(NEWER));
    }

    // Delete: the service goes.
    pug.change(&id, |s| s.desired_state = DesiredState::Deleted)
        .await;
    wait_for(READY, "the tenant to be deleted", || async {
        pug.tenant(&id).await.is_none().then_some(())
    })
    .await;
    assert!(inspect(&namespace, &a, "{{.ID}}").is_empty());

    // Provisioning: the dashboards are Docker configs, the datasources file (it holds the
    // credentials) a Docker secret, both mounted where Grafana reads them.
    let id_b = pug.create(&b, GOOD, 1).await;
    pug.wait_phase(&id_b, Phase::Ready, READY).await;
    let password = "swarm-ds-password-1234";
    store
        .put_secret(
            &id_b,
            "datasource/prom/basicAuthPassword",
            &password.to_owned().into(),
        )
        .await
        .unwrap();
    pug.change(&id_b, |s| {
        s.datasources = serde_json::from_value(serde_json::json!([{
            "name": "prom", "type": "prometheus", "url": "http://prometheus:9090",
            "basic_auth_user": "grafana", "secure_fields": ["basicAuthPassword"]
        }]))
        .unwrap();
        s.dashboards = serde_json::from_value(serde_json::json!([{
            "name": "fleet", "json": {"uid": "fleet", "title": "Fleet", "panels": []}
        }]))
        .unwrap();
    })
    .await;
    // Grafana (the stand-in) reads them from where pug put them.
    let last = std::sync::Mutex::new(String::new());
    let provisioned = wait_for(READY, "the task to see the provisioning files", || async {
        let t = pug.tenant(&id_b).await?;
        note(
            &last,
            format!("{:?} {:?}", t.status, pug.events(&id_b).await),
        );
        if t.status.phase != Phase::Ready || t.status.observed_generation != t.generation {
            return None;
        }
        let endpoint = t.status.endpoints.first()?;
        let report: serde_json::Value = pug_test_support::http::get(format!(
            "http://{endpoint}/t/{b}/api/standin/provisioning"
        ))
        .await
        .ok()?
        .json()
        .await
        .ok()?;
        note(&last, report.to_string());
        (report["datasources"][0]["name"] == "prom").then_some(report)
    })
    .await;
    drop(last);
    assert_eq!(
        provisioned["errors"],
        serde_json::json!([]),
        "{provisioned}"
    );
    // While Swarm replaced the task (stop-first), the slot was pending, not "started" again
    // on every pass.
    let events = pug.events(&id_b).await;
    let started = events
        .iter()
        .filter(|e| e.starts_with("InstanceStarted"))
        .count();
    assert!(started <= 2, "{events:?}");
    let ds = &provisioned["datasources"][0];
    assert_eq!(ds["basicAuthUser"], "grafana");
    assert_eq!(ds["secureJsonData"]["basicAuthPassword"]["set"], true);
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(password.as_bytes()));
    assert_eq!(
        ds["secureJsonData"]["basicAuthPassword"]["sha256_prefix"],
        digest[..12]
    );
    assert_eq!(
        provisioned["dashboards"][0]["title"], "Fleet",
        "{provisioned}"
    );
    let spec_b = docker(&["service", "inspect", &service(&namespace, &b)]);
    assert!(spec_b.contains("\"Configs\""), "{spec_b}");
    assert!(
        !spec_b.contains(password),
        "a datasource password in the service spec"
    );
    let configs = docker(&[
        "config",
        "ls",
        "-q",
        "--filter",
        &format!("label=pug.tenant={b}"),
    ]);
    assert!(configs.lines().count() >= 2, "{configs}");

    // Orphans: a pug with an empty store removes the services it does not know.
    let _store = pug.kill().await;
    let dir2 = tempfile::tempdir().unwrap();
    let empty = support::store(&dir2).await;
    let other = Pug::start(empty, backend.clone() as Arc<dyn Orchestrator>);
    wait_for(READY, "the orphan service to be removed", || async {
        docker(&[
            "service",
            "ls",
            "-q",
            "--filter",
            &format!("label=pug.namespace={namespace}"),
        ])
        .is_empty()
        .then_some(())
    })
    .await;
    let events = other.events(&id_b).await;
    assert!(
        events.iter().any(|e| e.starts_with("OrphanRemoved")),
        "{events:?}"
    );
}
