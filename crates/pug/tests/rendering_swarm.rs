//! The renderer inside `pug serve` on the swarm backend, with real Chromium and a real
//! single-node swarm. pug runs as it does on a swarm: in a container on the tenants' overlay
//! network (an empty image with the host's `/usr` mounted read-only, the engine's socket and
//! this build's `pug`), so the test drives it with `docker exec`. A tenant task's Grafana (the
//! stand-in image of `pug-docker`'s tests) is wired to the renderer on pug's overlay address, and
//! a panel renders through the task's Grafana the way Grafana's `/render/…` does; one tenant's
//! token cannot render another's task; and (issue 16) an idle tenant's service scales to 0 and
//! a signed-in request through pug's gateway wakes it.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

#[path = "../../pug-docker/tests/support/overlay.rs"]
mod overlay;
use overlay::{
    build_runner_image, docker_ok as ok, docker_out as docker, host_mounts, SwarmGuard,
    RUNNER_IMAGE,
};

const T: Duration = Duration::from_secs(120);

/// Removes pug's container, the tenants' services, secrets, configs, volumes and the overlay.
struct Cleanup {
    namespace: String,
    network: String,
    pug: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        docker(&["rm", "-f", &self.pug]);
        let label = format!("label=pug.namespace={}", self.namespace);
        for kind in ["service", "secret", "config"] {
            for id in docker(&[kind, "ls", "-q", "--filter", &label]).1.lines() {
                docker(&[kind, "rm", id]);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while !docker(&["ps", "-aq", "--filter", &label]).1.is_empty() && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(200));
        }
        for v in docker(&["volume", "ls", "-q", "--filter", &label])
            .1
            .lines()
        {
            docker(&["volume", "rm", "-f", v]);
        }
        docker(&["network", "rm", &self.network]);
    }
}

fn require_images() {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../pug-docker/tests/images/build.sh"
    );
    let status = Command::new(script).status().expect("build.sh runs");
    assert!(
        status.success(),
        "building the test images with {script} failed"
    );
    build_runner_image();
}

#[test]
fn swarm_tenants_render_through_the_embedded_renderer_on_the_overlay() {
    assert!(
        pug_renderer::config::find_browser().is_some(),
        "this test needs Chromium: apt-get install chromium-headless-shell chromium (as .ci/run does)"
    );
    let (engine, _) = docker(&["version", "--format", "{{.Server.APIVersion}}"]);
    assert!(
        engine,
        "this test needs a Docker engine: start Docker (or set DOCKER_HOST) and run it again"
    );
    require_images();
    let suffix = format!("{:x}", std::process::id());
    let namespace = format!("pugrs{suffix}");
    let network = format!("pug-rs-{suffix}");
    let pug = format!("{namespace}-pug");
    let _swarm = SwarmGuard::new();
    let _cleanup = Cleanup {
        namespace: namespace.clone(),
        network: network.clone(),
        pug: pug.clone(),
    };
    ok(&[
        "network",
        "create",
        "--driver",
        "overlay",
        "--attachable",
        &network,
    ]);

    let bin = env!("CARGO_BIN_EXE_pug");
    let bin_dir = std::path::Path::new(bin)
        .parent()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let healthcheck =
        r#"["CMD", "/usr/bin/healthcheck", "http://127.0.0.1:{port}{path}api/health"]"#;
    let env = [
        "PUG_BACKEND=swarm".to_owned(),
        "PUG_DATA_DIR=/data".to_owned(),
        format!("PUG_DOCKER_NETWORK={network}"),
        format!("PUG_DOCKER_NAMESPACE={namespace}"),
        "PUG_DOCKER_IMAGE=pug-test/grafana:{version}".to_owned(),
        format!("PUG_DOCKER_HEALTHCHECK={healthcheck}"),
        "PUG_DOCKER_UPDATE_MONITOR_SECS=3".to_owned(),
        "PUG_RENDERER_MODE=on".to_owned(),
        // Docker's default seccomp profile gives a container no user namespaces.
        "PUG_RENDERER_NO_SANDBOX=true".to_owned(),
    ];
    let mut args: Vec<String> = [
        "run",
        "-d",
        "--name",
        &pug,
        "--network",
        &network,
        "-v",
        &format!("{bin_dir}:{bin_dir}:ro"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(host_mounts());
    for e in &env {
        args.push("-e".into());
        args.push(e.clone());
    }
    args.extend([RUNNER_IMAGE.to_owned(), bin.to_owned(), "serve".to_owned()]);
    ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let logs = || docker(&["logs", &pug]).1;
    // The CLI inside pug's container (it finds pug through /data).
    let cli = |cmd: &[&str]| {
        let mut a = vec!["exec", "-e", "PUG_DATA_DIR=/data", &pug, bin];
        a.extend_from_slice(cmd);
        docker(&a)
    };
    let deadline = Instant::now() + T;
    while !cli(&["tenant", "list"]).0 {
        assert!(Instant::now() < deadline, "pug did not start:\n{}", logs());
        std::thread::sleep(Duration::from_millis(200));
    }
    let (created, out) = cli(&["tenant", "create", "acme", "--version", "11.3.0", "--wait"]);
    assert!(created, "{out}\n{}", logs());
    let (_, shown) = cli(&["tenant", "show", "acme", "--output", "json"]);
    let acme: Value = serde_json::from_str(&shown).unwrap_or_else(|e| panic!("{e}: {shown}"));
    let at = acme["status"]["endpoints"][0].as_str().unwrap().to_owned();

    // The task's Grafana is wired to the renderer on pug's overlay address, with its service's
    // name as its callback (every task of a service runs one template).
    let own = ok(&[
        "inspect",
        "--format",
        &format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}"),
        &pug,
    ]);
    let service = format!("{namespace}-acme");
    let spec = ok(&[
        "service",
        "inspect",
        "--format",
        "{{json .Spec.TaskTemplate.ContainerSpec.Env}}",
        &service,
    ]);
    assert!(
        spec.contains(&format!("GF_RENDERING_SERVER_URL=http://{own}:8081/render")),
        "{spec}"
    );
    assert!(
        spec.contains(&format!(
            "GF_RENDERING_CALLBACK_URL=http://{service}:3000/t/acme/"
        )),
        "{spec}"
    );

    // Grafana's /render/d-solo/… (in the task) → the renderer on pug's overlay address →
    // Chromium in pug's container → the task's page → PNG.
    let panel = format!("http://{at}/t/acme/render/d-solo/binding/x?width=320&height=200&delay=0");
    let deadline = Instant::now() + T;
    let status = loop {
        let (_, out) = docker(&[
            "exec",
            &pug,
            "curl",
            "-sS",
            "--max-time",
            "60",
            "-o",
            "/tmp/panel.png",
            "-w",
            "%{http_code} %{content_type}",
            &panel,
        ]);
        if !(out.starts_with("401") || out.starts_with("403") || out.starts_with("000"))
            || Instant::now() > deadline
        {
            break out;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(status, "200 image/png", "{}", logs());
    let png = ok(&[
        "exec",
        &pug,
        "od",
        "-An",
        "-tx1",
        "-j16",
        "-N8",
        "/tmp/panel.png",
    ]);
    // Width 320 (0x140) and height 200 (0xc8) from the PNG's header.
    assert_eq!(
        png.split_whitespace().collect::<Vec<_>>(),
        ["00", "00", "01", "40", "00", "00", "00", "c8"]
    );

    // Tenant A's token cannot render tenant B's task, by its service's name or by its
    // address. The token is read as the task's Grafana reads it: the Docker secret its
    // `__FILE` variable names, inside acme's task.
    let (created, out) = cli(&[
        "tenant",
        "create",
        "globex",
        "--version",
        "11.3.0",
        "--wait",
    ]);
    assert!(created, "{out}\n{}", logs());
    let (_, shown) = cli(&["tenant", "show", "globex", "--output", "json"]);
    let globex: Value = serde_json::from_str(&shown).unwrap_or_else(|e| panic!("{e}: {shown}"));
    let globex_at = globex["status"]["endpoints"][0]
        .as_str()
        .unwrap()
        .to_owned();
    let token_file = spec
        .trim_matches(|c| c == '[' || c == ']')
        .split(',')
        .map(|e| e.trim().trim_matches('"'))
        .find_map(|e| e.strip_prefix("GF_RENDERING_RENDERER_TOKEN__FILE="))
        .unwrap_or_else(|| panic!("no renderer token file in {spec}"))
        .to_owned();
    let task = ok(&[
        "ps",
        "-q",
        "--no-trunc",
        "--filter",
        &format!("label=com.docker.swarm.service.name={service}"),
    ]);
    let task = task
        .lines()
        .next()
        .expect("acme's task container")
        .to_owned();
    // The task's image has no shell, and Docker never hands a secret's value out: read the
    // file the engine mounts into the task, from the host (a one-node swarm, tests run as root).
    let secrets: Value = serde_json::from_str(&ok(&[
        "service",
        "inspect",
        "--format",
        "{{json .Spec.TaskTemplate.ContainerSpec.Secrets}}",
        &service,
    ]))
    .unwrap();
    let secret_id = secrets
        .as_array()
        .unwrap()
        .iter()
        .find(|s| {
            let name = s["File"]["Name"].as_str().unwrap_or_default();
            name == token_file || format!("/run/secrets/{name}") == token_file
        })
        .and_then(|s| s["SecretID"].as_str())
        .unwrap_or_else(|| panic!("no secret at {token_file} in {secrets}"))
        .to_owned();
    let acme_token = std::fs::read_to_string(format!(
        "/var/lib/docker/containers/{task}/mounts/secrets/{secret_id}"
    ))
    .expect("the task's renderer token file")
    .trim()
    .to_owned();
    assert!(acme_token.len() >= 32, "{acme_token:?}");
    // The renderer's answer to a render asked from inside pug's container (on the overlay).
    let render_status = |token: &str, query: &str| {
        docker(&[
            "exec",
            &pug,
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            &format!("X-Auth-Token: {token}"),
            &format!("http://{own}:8081/render?{query}"),
        ])
        .1
    };
    let render_as_acme = |url: &str, domain: &str| {
        let q: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs([
                ("url", url),
                ("width", "64"),
                ("height", "64"),
                ("encoding", "png"),
                ("renderKey", "k"),
                ("domain", domain),
            ])
            .finish();
        render_status(&acme_token, &q)
    };
    let globex_service = format!("{namespace}-globex");
    let globex_ip = globex_at.rsplit_once(':').unwrap().0;
    for (url, domain) in [
        (
            format!("http://{globex_service}:3000/t/globex/d-solo/binding/x?delay=0"),
            globex_service.as_str(),
        ),
        (
            format!("http://{globex_at}/t/globex/d-solo/binding/x?delay=0"),
            globex_ip,
        ),
    ] {
        assert_eq!(
            render_as_acme(&url, domain),
            "403",
            "acme's token must not render {url}"
        );
    }
    // The same token still renders acme's own task.
    let acme_ip = at.rsplit_once(':').unwrap().0;
    assert_eq!(
        render_as_acme(
            &format!("http://{at}/t/acme/d-solo/binding/x?delay=0"),
            acme_ip
        ),
        "200"
    );

    // Sleep and wake through the gateway (issue 16): idle, acme's service scales to 0; a
    // signed-in request to pug's gateway (from inside pug's container) wakes it and is answered.
    let sh = |script: &str| {
        docker(&[
            "exec",
            "-e",
            "PUG_DATA_DIR=/data",
            &pug,
            "bash",
            "-c",
            &format!("export PATH={bin_dir}:$PATH; {script}"),
        ])
    };
    let (created, out) = sh(
        "printf 'alice-password\\n' | pug user create alice --email alice@example.com --password-stdin \
         && pug user grant alice acme --role Viewer",
    );
    assert!(created, "{out}");
    let (updated, out) = cli(&["tenant", "update", "acme", "--idle-timeout", "1s"]);
    assert!(updated, "{out}");
    let replicas = || {
        ok(&[
            "service",
            "inspect",
            "--format",
            "{{.Spec.Mode.Replicated.Replicas}}",
            &service,
        ])
    };
    let deadline = Instant::now() + T;
    while replicas() != "0" {
        assert!(
            Instant::now() < deadline,
            "acme's service never scaled to 0:\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (woke, answer) = sh(
        "j=$(mktemp) && curl -sS -c $j -o /dev/null http://127.0.0.1:8080/login \
         && csrf=$(sed -n 's/.*\\tpug_csrf\\t//p' $j) \
         && curl -sS -b $j -c $j -o /dev/null --data-urlencode user=alice \
              --data-urlencode password=alice-password --data-urlencode csrf=$csrf \
              --data-urlencode next=/ http://127.0.0.1:8080/login \
         && curl -sS -b $j --max-time 90 -w ' %{http_code}' http://127.0.0.1:8080/t/acme/api/health",
    );
    assert!(woke, "{answer}\n{}", logs());
    assert!(answer.ends_with(" 200"), "{answer}\n{}", logs());
    assert!(answer.contains("11.3.0"), "{answer}");
    assert_eq!(replicas(), "1", "woken: the service is scaled back");
    let (_, events) = cli(&["tenant", "show", "acme", "--output", "json"]);
    assert!(events.contains("Slept"), "{events}");

    // A token that is no tenant's renders nothing.
    assert_eq!(
        render_status(
            "not-a-tenants-token",
            &format!("url=http://{at}/t/acme/&encoding=png")
        ),
        "401"
    );
}
