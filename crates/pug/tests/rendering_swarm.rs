//! Rendering on the swarm backend, with real Chromium and a real single-node swarm. pug runs
//! as it does on a swarm: in a container on the tenants' overlay network (an empty image with
//! the host's `/usr` mounted read-only, the engine's socket and this build's `pug`), so the
//! test drives it with `docker exec` ([`SwarmPug`]).
//!
//! - The renderer embedded in pug: a tenant task's Grafana (the stand-in image of
//!   `pug-docker`'s tests) is wired to the renderer on pug's overlay address, and a panel
//!   renders through the task's Grafana the way Grafana's `/render/…` does; one tenant's token
//!   cannot render another's task; and (issue 16) an idle tenant's service scales to 0 and a
//!   signed-in request through pug's gateway wakes it.
//! - The renderer service (`renderer.swarm.replicas = 1`): pug creates `<ns>--renderer` from an
//!   image built here out of the host's Chromium headless shell, tenants render through it,
//!   one tenant's token cannot render another's task, its token table refuses every other
//!   credential, and the service removed, scaled or changed by hand comes back as pug wants it.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

#[path = "../../pug-docker/tests/support/overlay.rs"]
mod overlay;
use overlay::{
    build_renderer_image, build_runner_image, docker_ok as ok, docker_out as docker, host_mounts,
    SwarmGuard, RENDERER_IMAGE, RUNNER_IMAGE,
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

fn require_chromium_and_docker() {
    assert!(
        pug_renderer::config::find_browser().is_some(),
        "this test needs Chromium: apt-get install chromium-headless-shell chromium (as .ci/run does)"
    );
    let (engine, _) = docker(&["version", "--format", "{{.Server.APIVersion}}"]);
    assert!(
        engine,
        "this test needs a Docker engine: start Docker (or set DOCKER_HOST) and run it again"
    );
}

/// `pug serve` on the swarm backend, in a container on a fresh overlay network of a swarm
/// joined for the test; everything it made is removed when dropped.
struct SwarmPug {
    namespace: String,
    network: String,
    /// pug's container.
    name: String,
    bin: String,
    bin_dir: String,
    // Dropped in this order: pug's objects, then the swarm.
    _cleanup: Cleanup,
    _swarm: SwarmGuard,
}

impl SwarmPug {
    /// Starts pug with the settings every swarm test gives it and `extra` (`NAME=value`, later
    /// ones win), and waits until its CLI answers.
    fn start(tag: &str, extra: &[String]) -> Self {
        let suffix = format!("{:x}", std::process::id());
        let namespace = format!("pug{tag}{suffix}");
        let network = format!("pug-{tag}-{suffix}");
        let name = format!("{namespace}-pug");
        let swarm = SwarmGuard::new();
        let cleanup = Cleanup {
            namespace: namespace.clone(),
            network: network.clone(),
            pug: name.clone(),
        };
        ok(&[
            "network",
            "create",
            "--driver",
            "overlay",
            "--attachable",
            &network,
        ]);
        let bin = env!("CARGO_BIN_EXE_pug").to_owned();
        let bin_dir = std::path::Path::new(&bin)
            .parent()
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        let healthcheck =
            r#"["CMD", "/usr/bin/healthcheck", "http://127.0.0.1:{port}{path}api/health"]"#;
        let mut env = vec![
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
        env.extend(extra.iter().cloned());
        let mut args: Vec<String> = [
            "run",
            "-d",
            "--name",
            &name,
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
        args.extend([RUNNER_IMAGE.to_owned(), bin.clone(), "serve".to_owned()]);
        ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let pug = Self {
            namespace,
            network,
            name,
            bin,
            bin_dir,
            _cleanup: cleanup,
            _swarm: swarm,
        };
        let deadline = Instant::now() + T;
        while !pug.cli(&["tenant", "list"]).0 {
            assert!(
                Instant::now() < deadline,
                "pug did not start:\n{}",
                pug.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        pug
    }

    /// pug's output: its banner (stdout) and its log (stderr).
    fn logs(&self) -> String {
        let out = Command::new("docker")
            .args(["logs", &self.name])
            .output()
            .expect("docker runs");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// `docker exec` in pug's container.
    fn exec(&self, args: &[&str]) -> (bool, String) {
        let mut a = vec!["exec", self.name.as_str()];
        a.extend_from_slice(args);
        docker(&a)
    }

    /// The CLI inside pug's container (it finds pug through /data).
    fn cli(&self, cmd: &[&str]) -> (bool, String) {
        let mut a = vec!["exec", "-e", "PUG_DATA_DIR=/data", &self.name, &self.bin];
        a.extend_from_slice(cmd);
        docker(&a)
    }

    /// Creates a tenant and waits until it is ready; its `tenant show` as JSON.
    fn create_tenant(&self, id: &str) -> Value {
        let (created, out) = self.cli(&["tenant", "create", id, "--version", "11.3.0", "--wait"]);
        assert!(created, "{out}\n{}", self.logs());
        let (_, shown) = self.cli(&["tenant", "show", id, "--output", "json"]);
        serde_json::from_str(&shown).unwrap_or_else(|e| panic!("{e}: {shown}"))
    }

    /// The tenant's service.
    fn service(&self, tenant: &str) -> String {
        format!("{}-{tenant}", self.namespace)
    }

    /// The environment of the tenant's tasks (`["NAME=value", …]` as JSON).
    fn task_env(&self, tenant: &str) -> String {
        ok(&[
            "service",
            "inspect",
            "--format",
            "{{json .Spec.TaskTemplate.ContainerSpec.Env}}",
            &self.service(tenant),
        ])
    }

    /// pug's own address on the overlay.
    fn own_address(&self) -> String {
        ok(&[
            "inspect",
            "--format",
            &format!(
                "{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
                self.network
            ),
            &self.name,
        ])
    }

    /// The renderer token of `tenant`, as its task's Grafana reads it: the Docker secret its
    /// `__FILE` variable names, inside its task.
    fn renderer_token(&self, tenant: &str) -> String {
        let env = self.task_env(tenant);
        let file = env
            .trim_matches(|c| c == '[' || c == ']')
            .split(',')
            .map(|e| e.trim().trim_matches('"'))
            .find_map(|e| e.strip_prefix("GF_RENDERING_RENDERER_TOKEN__FILE="))
            .unwrap_or_else(|| panic!("no renderer token file in {env}"))
            .to_owned();
        self.secret_in_task(&self.service(tenant), &file)
    }

    /// The value of the secret mounted at `file` in a task of `service`. The images have no
    /// shell, and Docker never hands a secret's value out: read the file the engine mounts
    /// into the task, from the host (a one-node swarm, tests run as root).
    fn secret_in_task(&self, service: &str, file: &str) -> String {
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
            .unwrap_or_else(|| panic!("no running task of {service}"))
            .to_owned();
        let secrets: Value = serde_json::from_str(&ok(&[
            "service",
            "inspect",
            "--format",
            "{{json .Spec.TaskTemplate.ContainerSpec.Secrets}}",
            service,
        ]))
        .unwrap();
        let secret_id = secrets
            .as_array()
            .unwrap()
            .iter()
            .find(|s| {
                let name = s["File"]["Name"].as_str().unwrap_or_default();
                name == file || format!("/run/secrets/{name}") == file
            })
            .and_then(|s| s["SecretID"].as_str())
            .unwrap_or_else(|| panic!("no secret at {file} in {secrets}"))
            .to_owned();
        std::fs::read_to_string(format!(
            "/var/lib/docker/containers/{task}/mounts/secrets/{secret_id}"
        ))
        .unwrap_or_else(|e| panic!("{service}'s secret {file}: {e}"))
        .trim()
        .to_owned()
    }

    /// Renders `panel` (a task's `/render/d-solo/…`: the stand-in calls its renderer as
    /// Grafana does) from inside pug's container into `/tmp/panel.png`, until the renderer
    /// answers something but "not yet" (401/403 before its token table has the tenant, 000 or
    /// 5xx before it runs); `"<status> <content type>"`, and the PNG's width and height.
    fn render_panel(&self, panel: &str) -> (String, Option<(u32, u32)>) {
        let deadline = Instant::now() + T;
        let status = loop {
            let (_, out) = self.exec(&[
                "curl",
                "-sS",
                "--max-time",
                "60",
                "-o",
                "/tmp/panel.png",
                "-w",
                "%{http_code} %{content_type}",
                panel,
            ]);
            let not_yet = ["401", "403", "000", "5"]
                .iter()
                .any(|p| out.starts_with(p));
            if !not_yet || Instant::now() > deadline {
                break out;
            }
            std::thread::sleep(Duration::from_millis(250));
        };
        let header = self
            .exec(&["od", "-An", "-tx1", "-j16", "-N8", "/tmp/panel.png"])
            .1;
        let bytes: Vec<u32> = header
            .split_whitespace()
            .filter_map(|b| u32::from_str_radix(b, 16).ok())
            .collect();
        let size = (bytes.len() == 8).then(|| {
            let n = |b: &[u32]| b.iter().fold(0, |acc, x| acc << 8 | x);
            (n(&bytes[..4]), n(&bytes[4..]))
        });
        (status, size)
    }

    /// The status a renderer at `base` (`http://host:port`) answers a render of `url` with,
    /// asked from inside pug's container with `token`.
    fn render_status(&self, base: &str, token: &str, url: &str, domain: &str) -> String {
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
        self.exec(&[
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            &format!("X-Auth-Token: {token}"),
            &format!("{base}/render?{q}"),
        ])
        .1
    }
}

/// The first endpoint of a tenant's `tenant show`.
fn endpoint(tenant: &Value) -> String {
    tenant["status"]["endpoints"][0]
        .as_str()
        .unwrap_or_else(|| panic!("no endpoint: {tenant}"))
        .to_owned()
}

#[test]
fn swarm_tenants_render_through_the_embedded_renderer_on_the_overlay() {
    require_chromium_and_docker();
    require_images();
    let pug = SwarmPug::start("rs", &[]);
    let logs = || pug.logs();
    let acme = pug.create_tenant("acme");
    let at = endpoint(&acme);

    // The task's Grafana is wired to the renderer on pug's overlay address, with its service's
    // name as its callback (every task of a service runs one template).
    let own = pug.own_address();
    let service = pug.service("acme");
    let spec = pug.task_env("acme");
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
    let (status, size) = pug.render_panel(&panel);
    assert_eq!(status, "200 image/png", "{}", logs());
    assert_eq!(size, Some((320, 200)), "the PNG's header");

    // Tenant A's token cannot render tenant B's task, by its service's name or by its
    // address.
    let globex_at = endpoint(&pug.create_tenant("globex"));
    let acme_token = pug.renderer_token("acme");
    assert!(acme_token.len() >= 32, "{acme_token:?}");
    let renderer = format!("http://{own}:8081");
    let globex_service = pug.service("globex");
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
            pug.render_status(&renderer, &acme_token, &url, domain),
            "403",
            "acme's token must not render {url}"
        );
    }
    // The same token still renders acme's own task.
    let acme_ip = at.rsplit_once(':').unwrap().0;
    assert_eq!(
        pug.render_status(
            &renderer,
            &acme_token,
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
            &pug.name,
            "bash",
            "-c",
            &format!("export PATH={}:$PATH; {script}", pug.bin_dir),
        ])
    };
    let (created, out) = sh(
        "printf 'alice-password\\n' | pug user create alice --email alice@example.com --password-stdin \
         && pug user grant alice acme --role Viewer",
    );
    assert!(created, "{out}");
    let (updated, out) = pug.cli(&["tenant", "update", "acme", "--idle-timeout", "1s"]);
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
    let (_, events) = pug.cli(&["tenant", "show", "acme", "--output", "json"]);
    assert!(events.contains("Slept"), "{events}");

    // A token that is no tenant's renders nothing.
    assert_eq!(
        pug.render_status(
            &renderer,
            "not-a-tenants-token",
            &format!("http://{at}/t/acme/"),
            acme_ip
        ),
        "401"
    );
}

/// The renderer service's tasks that run, by `docker service ps`.
fn running_tasks(service: &str) -> usize {
    docker(&[
        "service",
        "ps",
        "--filter",
        "desired-state=running",
        "--format",
        "{{.CurrentState}}",
        service,
    ])
    .1
    .lines()
    .filter(|l| l.starts_with("Running"))
    .count()
}

#[test]
fn swarm_tenants_render_through_the_renderer_service_pug_keeps() {
    require_chromium_and_docker();
    require_images();
    build_renderer_image(env!("CARGO_BIN_EXE_pug"));
    let pug = SwarmPug::start(
        "rsvc",
        &[
            // The service reads its token table from pug's API over the overlay.
            "PUG_LISTEN=0.0.0.0:8080".to_owned(),
            "PUG_RENDERER_SWARM_REPLICAS=1".to_owned(),
            format!("PUG_RENDERER_SWARM_IMAGE={RENDERER_IMAGE}"),
            // Healing happens at every resync.
            "PUG_CONTROLLER_RESYNC_INTERVAL_SECS=2".to_owned(),
        ],
    );
    let logs = || pug.logs();
    let service = format!("{}--renderer", pug.namespace);
    let wait_running = |what: &str| {
        let deadline = Instant::now() + T;
        while running_tasks(&service) < 1 {
            assert!(
                Instant::now() < deadline,
                "{what}: the renderer service has no running task:\n{}\n{}\n{}",
                docker(&["service", "ps", "--no-trunc", &service]).1,
                docker(&["service", "logs", &service]).1,
                logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    wait_running("at pug's start");
    let spec: Value = serde_json::from_str(&ok(&[
        "service",
        "inspect",
        "--format",
        "{{json .Spec}}",
        &service,
    ]))
    .unwrap();
    assert_eq!(spec["Labels"]["pug.namespace"], pug.namespace.as_str());
    assert_eq!(spec["Mode"]["Replicated"]["Replicas"], 1);
    assert_eq!(spec["UpdateConfig"]["Order"], "start-first");
    assert_eq!(
        spec["TaskTemplate"]["Placement"]["Preferences"][0]["Spread"]["SpreadDescriptor"],
        "node.id"
    );
    let text = spec.to_string();
    assert!(
        !text.contains("PUG_MASTER_KEY") && !text.contains("DATABASE_URL"),
        "the renderer gets no store: {text}"
    );

    // The tenant's Grafana calls the service by its name; its panel renders there.
    let acme = pug.create_tenant("acme");
    let at = endpoint(&acme);
    let env = pug.task_env("acme");
    assert!(
        env.contains(&format!(
            "GF_RENDERING_SERVER_URL=http://{service}:8081/render"
        )),
        "{env}"
    );
    let panel = format!("http://{at}/t/acme/render/d-solo/binding/x?width=320&height=200&delay=0");
    let (status, size) = pug.render_panel(&panel);
    assert_eq!(
        status,
        "200 image/png",
        "{}\n{}",
        docker(&["service", "logs", &service]).1,
        logs()
    );
    assert_eq!(size, Some((320, 200)), "the PNG's header");

    // acme's token renders acme's task and not globex's, by name or address.
    let globex_at = endpoint(&pug.create_tenant("globex"));
    let acme_token = pug.renderer_token("acme");
    let renderer = format!("http://{service}:8081");
    let globex_service = pug.service("globex");
    let globex_ip = globex_at.rsplit_once(':').unwrap().0;
    let deadline = Instant::now() + T;
    // globex becomes known to the service's table within a second or so; before that, a
    // refusal proves nothing, so wait until globex's own token renders globex.
    let globex_token = pug.renderer_token("globex");
    let globex_own = format!("http://{globex_at}/t/globex/d-solo/binding/x?delay=0");
    let last_activity = |tenant: &str| {
        let (_, shown) = pug.cli(&["tenant", "show", tenant, "--output", "json"]);
        let shown: Value = serde_json::from_str(&shown).unwrap_or_else(|e| panic!("{e}: {shown}"));
        shown["last_activity_ms"].as_i64()
    };
    let globex_before = last_activity("globex");
    while pug.render_status(&renderer, &globex_token, &globex_own, globex_ip) != "200" {
        assert!(
            Instant::now() < deadline,
            "globex never rendered:\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // That render went to the service alone (no request through pug's gateway): the service
    // reports it, and it is globex's activity, as a render by the embedded renderer is.
    let deadline = Instant::now() + T;
    while last_activity("globex") <= globex_before {
        assert!(
            Instant::now() < deadline,
            "the service's render never became globex's activity ({globex_before:?}):\n{}\n{}",
            docker(&["service", "logs", &service]).1,
            logs()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    for (url, domain) in [
        (
            format!("http://{globex_service}:3000/t/globex/d-solo/binding/x?delay=0"),
            globex_service.as_str(),
        ),
        (globex_own.clone(), globex_ip),
    ] {
        assert_eq!(
            pug.render_status(&renderer, &acme_token, &url, domain),
            "403",
            "acme's token must not render {url}"
        );
    }
    let acme_ip = at.rsplit_once(':').unwrap().0;
    assert_eq!(
        pug.render_status(
            &renderer,
            &acme_token,
            &format!("http://{at}/t/acme/d-solo/binding/x?delay=0"),
            acme_ip
        ),
        "200"
    );
    assert_eq!(
        pug.render_status(&renderer, "not-a-tenants-token", &globex_own, globex_ip),
        "401"
    );

    // The token table: the service's credential reads it (digests, not tokens); no other
    // credential does.
    let credential = pug.secret_in_task(&service, "pug-renderer-credential");
    let table = |token: Option<&str>| {
        let header = token.map(|t| format!("Authorization: Bearer {t}"));
        let mut args = vec![
            "curl",
            "-s",
            "-w",
            "\n%{http_code}",
            "http://127.0.0.1:8080/api/v1/renderer/tenants",
        ];
        if let Some(header) = &header {
            args.extend(["-H", header.as_str()]);
        }
        let out = pug.exec(&args).1;
        let (body, code) = out.rsplit_once('\n').unwrap_or(("", &out));
        (code.to_owned(), body.to_owned())
    };
    let (code, body) = table(Some(&credential));
    assert_eq!(code, "200", "{body}");
    let read: Value = serde_json::from_str(&body).unwrap();
    let tenants = read["tenants"].as_array().unwrap();
    assert!(tenants.iter().any(|t| t["tenant"] == "acme"), "{body}");
    assert!(
        !body.contains(&acme_token),
        "the table holds no token: {body}"
    );
    let admin = pug.exec(&["cat", "/data/local.token"]).1;
    let (_, made) = pug.cli(&["token", "create", "--name", "prometheus", "--role", "read"]);
    let read_token = made
        .split_whitespace()
        .find(|w| w.starts_with("pug_"))
        .unwrap_or_else(|| panic!("no token in {made}"))
        .to_owned();
    for (who, token, want) in [
        ("no credential", None, "401"),
        (
            "a tenant's renderer token",
            Some(acme_token.as_str()),
            "401",
        ),
        ("pug's admin token", Some(admin.as_str()), "403"),
        ("Prometheus' read token", Some(read_token.as_str()), "403"),
    ] {
        let (code, body) = table(token);
        assert_eq!(code, want, "{who}: {body}");
        let error: Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{who}: {e}: {body}"));
        assert!(error["error"].is_string(), "{who}: {body}");
    }
    // And the credential reads nothing else.
    let out = pug.exec(&[
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        &format!("Authorization: Bearer {credential}"),
        "http://127.0.0.1:8080/api/v1/tenants",
    ]);
    assert_eq!(out.1, "403");

    // Scaled to 0 by hand, then removed by hand: pug restores it at its next resync.
    ok(&["service", "scale", "--detach", &format!("{service}=0")]);
    let deadline = Instant::now() + T;
    while ok(&[
        "service",
        "inspect",
        "--format",
        "{{.Spec.Mode.Replicated.Replicas}}",
        &service,
    ]) != "1"
    {
        assert!(Instant::now() < deadline, "never scaled back:\n{}", logs());
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_running("scaled back");
    let before = ok(&["service", "inspect", "--format", "{{.ID}}", &service]);
    ok(&["service", "rm", &service]);
    let deadline = Instant::now() + T;
    loop {
        let (exists, id) = docker(&["service", "inspect", "--format", "{{.ID}}", &service]);
        if exists && id != before {
            break;
        }
        assert!(Instant::now() < deadline, "never re-created:\n{}", logs());
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_running("re-created");
    assert!(
        logs().contains("renderer service created"),
        "pug says what it did:\n{}",
        logs()
    );
    // Another spec than pug's (its hash label says so): rolled back to pug's spec.
    let label = || {
        ok(&[
            "service",
            "inspect",
            "--format",
            "{{index .Spec.Labels \"pug.spec-hash\"}}",
            &service,
        ])
    };
    let hash = label();
    ok(&[
        "service",
        "update",
        "--detach",
        "--label-add",
        "pug.spec-hash=not-pugs",
        &service,
    ]);
    let deadline = Instant::now() + T;
    while label() != hash {
        assert!(Instant::now() < deadline, "never updated back:\n{}", logs());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        logs().contains("renderer service updated to pug's spec"),
        "{}",
        logs()
    );
    wait_running("updated");
    // The re-created (and updated) service renders again.
    let (status, _) = pug.render_panel(&panel);
    assert_eq!(status, "200 image/png", "{}", logs());
}
