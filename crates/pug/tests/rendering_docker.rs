//! `pug serve` on the docker backend, end to end with a real Docker engine (tenants' Grafana is
//! the stand-in image of `pug-docker`'s tests):
//! - the renderer inside it, with real Chromium: every tenant container's Grafana is wired to
//!   the renderer on pug's network's gateway, a panel renders through the tenant's Grafana the
//!   way Grafana's `/render/…` does, and one tenant's token cannot render another tenant's
//!   container;
//! - sleep and wake through the gateway (issue 16): an idle tenant's container is stopped and
//!   kept, and a signed-in request wakes that same container.

mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::{get, png_size, wait_for, PortLease, Pug};

const T: Duration = Duration::from_secs(90);

/// Builds the stand-in images of the docker tests (the engine here cannot pull Grafana).
fn require_images() {
    let engine = Command::new("docker")
        .args(["version", "--format", "{{.Server.APIVersion}}"])
        .output();
    assert!(
        engine.is_ok_and(|o| o.status.success()),
        "this test needs a Docker engine: start Docker (or set DOCKER_HOST) and run it again"
    );
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../pug-docker/tests/images/build.sh"
    );
    let status = Command::new(script).status().expect("build.sh runs");
    assert!(
        status.success(),
        "building the test images with {script} failed"
    );
}

fn docker(args: &[&str]) -> String {
    Command::new("docker")
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// Removes the test's containers, volumes and network, pass or fail.
struct Cleanup {
    namespace: String,
    network: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let label = format!("label=pug.namespace={}", self.namespace);
        for id in docker(&["ps", "-aq", "--filter", &label]).lines() {
            docker(&["rm", "-f", id]);
        }
        for v in docker(&["volume", "ls", "-q", "--filter", &label]).lines() {
            docker(&["volume", "rm", "-f", v]);
        }
        docker(&["network", "rm", &self.network]);
    }
}

/// A container's `GF_*` variable, as Grafana reads it.
fn container_env(container: &str, name: &str) -> String {
    let env = docker(&[
        "inspect",
        "--format",
        "{{range .Config.Env}}{{println .}}{{end}}",
        container,
    ]);
    env.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("{container} has no {name}:\n{env}"))
        .to_owned()
}

/// The tenant's renderer token as its Grafana reads it (a file copied into the container).
fn container_file(container: &str, path: &str) -> String {
    let out = Command::new("docker")
        .args(["cp", &format!("{container}:{path}"), "-"])
        .output()
        .expect("docker cp runs");
    assert!(out.status.success(), "docker cp {container}:{path} failed");
    let mut archive = tar::Archive::new(&out.stdout[..]);
    let mut entry = archive.entries().unwrap().next().unwrap().unwrap();
    let mut s = String::new();
    std::io::Read::read_to_string(&mut entry, &mut s).unwrap();
    s.trim().to_owned()
}

#[test]
fn docker_tenants_render_through_the_embedded_renderer_and_only_their_own_pages() {
    assert!(
        pug_renderer::config::find_browser().is_some(),
        "this test needs Chromium: apt-get install chromium-headless-shell chromium (as .ci/run does)"
    );
    require_images();
    let suffix = format!("{:x}", std::process::id());
    let namespace = format!("pugrd{suffix}");
    let network = format!("pug-render-{suffix}");
    let _cleanup = Cleanup {
        namespace: namespace.clone(),
        network: network.clone(),
    };
    // Leased: pug writes the renderer's configured address into tenants' grafana.ini.
    let rport = PortLease::new();
    let listen = format!("127.0.0.1:{}", rport.port());
    let pug = Pug::start(
        (22220, 22239),
        &[
            ("PUG_BACKEND", "docker"),
            ("PUG_DOCKER_IMAGE", "pug-test/grafana:{version}"),
            ("PUG_DOCKER_NETWORK", &network),
            ("PUG_DOCKER_NAMESPACE", &namespace),
            ("PUG_RENDERER_MODE", "on"),
            ("PUG_RENDERER_LISTEN", &listen),
        ],
    );
    let gateway = docker(&[
        "network",
        "inspect",
        "--format",
        "{{range .IPAM.Config}}{{.Gateway}}{{end}}",
        &network,
    ]);
    assert!(!gateway.is_empty(), "pug created its network {network}");
    pug.ok(&["tenant", "create", "acme", "--version", "11.3.0"]);
    pug.ok(&["tenant", "create", "globex", "--version", "11.3.0"]);
    let acme = pug.wait_phase("acme", "ready", T);
    let globex = pug.wait_phase("globex", "ready", T);
    let endpoint = |t: &Value| t["status"]["endpoints"][0].as_str().unwrap().to_owned();
    let (acme_at, globex_at) = (endpoint(&acme), endpoint(&globex));
    let acme_port = acme_at.rsplit_once(':').unwrap().1.to_owned();
    let container = format!("{namespace}-acme-0");

    // pug wired the container's Grafana to the renderer on the network's gateway, with the
    // container's own name on that network as its callback, and a token of its own.
    assert_eq!(
        container_env(&container, "GF_RENDERING_SERVER_URL"),
        format!("http://{gateway}:{}/render", rport.port())
    );
    assert_eq!(
        container_env(&container, "GF_RENDERING_CALLBACK_URL"),
        format!("http://{container}:{acme_port}/t/acme/")
    );
    let token_file = container_env(&container, "GF_RENDERING_RENDERER_TOKEN__FILE");
    let acme_token = container_file(&container, &token_file);
    let globex_token = container_file(&format!("{namespace}-globex-0"), &token_file);
    assert!(acme_token.len() >= 32 && acme_token != globex_token);

    // Grafana's /render/d-solo/… (inside the container) → the renderer on the gateway →
    // Chromium on the host → the container's page → PNG.
    let panel =
        format!("http://{acme_at}/t/acme/render/d-solo/binding/x?width=320&height=200&delay=0");
    let (status, ctype, body) = wait_for(T, "acme's panel to render", || {
        let r = get(&panel, None);
        (r.0 != 401 && r.0 != 403).then_some(r)
    });
    assert_eq!(
        status,
        200,
        "{}\n{}",
        String::from_utf8_lossy(&body),
        pug.log()
    );
    assert_eq!(ctype, "image/png");
    assert_eq!(png_size(&body), (320, 200));

    // Tenant A's token cannot render tenant B's container, by name or by address.
    let renderer = format!("http://{listen}");
    let render = |url: &str, domain: &str, token: &str| {
        let q: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs([
                ("url", url),
                ("width", "100"),
                ("height", "100"),
                ("encoding", "png"),
                ("renderKey", "k"),
                ("domain", domain),
            ])
            .finish();
        get(&format!("{renderer}/render?{q}"), Some(token))
    };
    let globex_port = globex_at.rsplit_once(':').unwrap().1;
    let globex_name = format!("{namespace}-globex-0");
    let by_name = format!("http://{globex_name}:{globex_port}/t/globex/d-solo/binding/x?delay=0");
    let by_address = format!("http://{globex_at}/t/globex/d-solo/binding/x?delay=0");
    let (status, _, body) = render(&by_name, &globex_name, &acme_token);
    assert_eq!(
        status,
        403,
        "acme's token rendered globex by name: {}",
        String::from_utf8_lossy(&body)
    );
    let (status, _, body) = render(&by_address, &globex_at, &acme_token);
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&body));
    assert!(
        String::from_utf8_lossy(&body).contains("not an address this token may render"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    // globex's own token renders globex by its name.
    let (status, ctype, body) = render(&by_name, &globex_name, &globex_token);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(ctype, "image/png");
}

#[test]
fn a_sleeping_docker_tenant_wakes_through_the_gateway_in_its_kept_container() {
    require_images();
    let suffix = format!("{:x}", std::process::id());
    let namespace = format!("pugsd{suffix}");
    let network = format!("pug-sleep-{suffix}");
    let _cleanup = Cleanup {
        namespace: namespace.clone(),
        network: network.clone(),
    };
    let pug = Pug::start(
        (22250, 22259),
        &[
            ("PUG_BACKEND", "docker"),
            ("PUG_DOCKER_IMAGE", "pug-test/grafana:{version}"),
            ("PUG_DOCKER_NETWORK", &network),
            ("PUG_DOCKER_NAMESPACE", &namespace),
        ],
    );
    pug.ok(&[
        "tenant",
        "create",
        "acme",
        "--version",
        "11.3.0",
        "--idle-timeout",
        "1s",
    ]);
    pug.create_user("alice", "alice-password");
    pug.ok(&["user", "grant", "alice", "acme", "--role", "Viewer"]);
    let container = format!("{namespace}-acme-0");
    let state = || {
        docker(&[
            "inspect",
            "--format",
            "{{.Id}} {{.State.Running}}",
            &container,
        ])
    };
    // Ready once, then unused: asleep, its container stopped and kept.
    wait_for(T, "acme's container to run", || {
        state().ends_with(" true").then_some(())
    });
    let id = state().split(' ').next().unwrap_or_default().to_owned();
    pug.wait_phase("acme", "sleeping", T);
    wait_for(T, "acme's container to stop", || {
        (state() == format!("{id} false")).then_some(())
    });

    // A signed-in API request wakes it: held until ready, answered by the same container.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (status, body) = rt.block_on(async {
        let alice = support::login(&pug.url, "alice", "alice-password")
            .await
            .expect("signed in");
        let r = pug_test_support::http::no_redirects()
            .get(format!("{}/t/acme/api/health", pug.url))
            .header("cookie", alice)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    });
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("11.3.0"), "{body}");
    assert_eq!(state(), format!("{id} true"), "woken in its kept container");
    // `Woke` is recorded right after the status the gateway waited for.
    let reasons = wait_for(T, "a Woke event", || {
        let (_, events) = pug.api("GET", "/api/v1/tenants/acme/events?limit=1000", None);
        let reasons: Vec<String> = events
            .as_array()?
            .iter()
            .filter_map(|e| e["reason"].as_str().map(str::to_owned))
            .collect();
        reasons.iter().any(|r| r == "Woke").then_some(reasons)
    });
    assert!(
        !reasons.iter().any(|r| r == "InstanceRestarted"),
        "{reasons:?}"
    );
}
