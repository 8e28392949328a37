//! Several pugs on one swarm (issue 18), as `deploy/swarm-stack.yml` runs them: pug as a
//! replicated swarm service (2 replicas here) on the tenants' overlay, one PostgreSQL store, the
//! same master key. Each replica's gateway signs people in at a tenant's task (the task trusts
//! the gateway's signature, not an address), and a rolling update of pug's own service
//! (`docker service update`, start-first) under steady signed-in traffic through the service's
//! name fails no request.
//!
//! pug's image is the test runner image with the host's `/usr` mounted read-only and this
//! build's `pug`; PostgreSQL runs the same way from the host's PostgreSQL binaries (no image
//! can be pulled here).

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
/// A fixed master key: every replica must have the same one.
const MASTER_KEY: &str = "cHVnLXN3YXJtLXJlcGxpY2FzLXRlc3QtbWFzdGVyLWs=";

/// Polls `f` every 200 ms until it returns `Some`, for at most `limit`.
fn wait<V>(
    limit: Duration,
    what: &str,
    mut f: impl FnMut() -> Option<V>,
    why: impl Fn() -> String,
) -> V {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}:\n{}",
            why()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A container's whole log, stdout and stderr.
fn container_log(name: &str) -> String {
    let out = Command::new("docker")
        .args(["logs", name])
        .output()
        .expect("docker runs");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Removes pug's service, the containers, the tenants' objects and the overlay.
struct Cleanup {
    namespace: String,
    network: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let ns = &self.namespace;
        docker(&["service", "rm", &format!("{ns}-pug")]);
        docker(&["rm", "-f", &format!("{ns}-pg"), &format!("{ns}-load")]);
        let label = format!("label=pug.namespace={ns}");
        for kind in ["service", "secret", "config"] {
            for id in docker(&[kind, "ls", "-q", "--filter", &label]).1.lines() {
                docker(&[kind, "rm", id]);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let busy = || {
            !docker(&["ps", "-aq", "--filter", &label]).1.is_empty()
                || !docker(&[
                    "ps",
                    "-aq",
                    "--filter",
                    &format!("label=com.docker.swarm.service.name={ns}-pug"),
                ])
                .1
                .is_empty()
        };
        while busy() && Instant::now() < deadline {
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

/// The host's PostgreSQL server binaries (`/usr/lib/postgresql/<major>/bin`).
fn postgres_bin() -> String {
    let dir = std::fs::read_dir("/usr/lib/postgresql")
        .expect("this test needs PostgreSQL's server: apt-get install postgresql (as .ci/run does)")
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin"))
        .find(|p| p.join("postgres").exists())
        .expect("no postgres binary under /usr/lib/postgresql/*/bin: apt-get install postgresql");
    dir.display().to_string()
}

#[test]
fn pug_replicas_on_a_swarm_share_one_store_and_a_rolling_update_of_pug_fails_no_request() {
    let (engine, _) = docker(&["version", "--format", "{{.Server.APIVersion}}"]);
    assert!(
        engine,
        "this test needs a Docker engine: start Docker (or set DOCKER_HOST) and run it again"
    );
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../pug-docker/tests/images/build.sh"
    );
    let built = Command::new(script).status().expect("build.sh runs");
    assert!(
        built.success(),
        "building the test images with {script} failed"
    );
    build_runner_image();
    let pg_bin = postgres_bin();
    let pg_user = String::from_utf8(
        Command::new("id")
            .args(["-u", "postgres"])
            .output()
            .expect("id runs")
            .stdout,
    )
    .unwrap()
    .trim()
    .to_owned();
    assert!(
        !pg_user.is_empty(),
        "no postgres user: apt-get install postgresql"
    );

    let suffix = format!("{:x}", std::process::id());
    let namespace = format!("pugsr{suffix}");
    let network = format!("pug-sr-{suffix}");
    let service = format!("{namespace}-pug");
    let _swarm = SwarmGuard::new();
    let _cleanup = Cleanup {
        namespace: namespace.clone(),
        network: network.clone(),
    };
    ok(&[
        "network",
        "create",
        "--driver",
        "overlay",
        "--attachable",
        &network,
    ]);

    // PostgreSQL on the overlay, from the host's binaries, as the postgres user (root makes
    // its directories, then drops to that user).
    let pg = format!("{namespace}-pg");
    let mut args: Vec<String> = [
        "run",
        "-d",
        "--name",
        &pg,
        "--network",
        &network,
        "-v",
        "/etc/passwd:/etc/passwd:ro",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(host_mounts());
    args.extend([
        RUNNER_IMAGE.to_owned(),
        "/bin/bash".into(),
        "-c".into(),
        format!(
            "mkdir -p /tmp/pg /tmp/sock && chown {pg_user} /tmp/pg /tmp/sock \
             && exec setpriv --reuid={pg_user} --regid={pg_user} --clear-groups /bin/bash -c \
             \"{pg_bin}/initdb -D /tmp/pg -U pug --auth=trust -E UTF8 --locale=C >/dev/null \
               && echo 'host all all all trust' >> /tmp/pg/pg_hba.conf \
               && exec {pg_bin}/postgres -D /tmp/pg -c listen_addresses='*' \
                    -c unix_socket_directories=/tmp/sock\""
        ),
    ]);
    ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    wait(
        T,
        "PostgreSQL on the overlay",
        || {
            docker(&[
                "exec",
                &pg,
                &format!("{pg_bin}/pg_isready"),
                "-h",
                "127.0.0.1",
                "-U",
                "pug",
            ])
            .0
            .then_some(())
        },
        || docker(&["logs", &pg]).1,
    );

    // pug, as a replicated service on the overlay.
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
        "PUG_LISTEN=0.0.0.0:8080".to_owned(),
        "PUG_DATA_DIR=/data".to_owned(),
        format!("PUG_DATABASE_URL=postgres://pug@{pg}:5432/postgres"),
        format!("PUG_MASTER_KEY={MASTER_KEY}"),
        format!("PUG_DOCKER_NETWORK={network}"),
        format!("PUG_DOCKER_NAMESPACE={namespace}"),
        "PUG_DOCKER_IMAGE=pug-test/grafana:{version}".to_owned(),
        format!("PUG_DOCKER_HEALTHCHECK={healthcheck}"),
        "PUG_DOCKER_UPDATE_MONITOR_SECS=3".to_owned(),
        "PUG_RENDERER_MODE=off".to_owned(),
    ];
    let mut args: Vec<String> = [
        "service", "create", "--detach", "--name", &service, "--replicas", "2",
        "--network", &network,
        // DNS round robin over the replicas: a single-node swarm advertised on loopback (as
        // here) does not route virtual IPs; a real stack's routing mesh and VIP spread
        // connections instead.
        "--endpoint-mode", "dnsrr",
        "--health-cmd",
        "bash -c 'exec 3<>/dev/tcp/127.0.0.1/8080 && printf \"GET /healthz HTTP/1.0\\r\\n\\r\\n\" >&3 && grep -q Ok <&3'",
        "--health-interval", "1s", "--health-timeout", "3s", "--health-retries", "3",
        "--update-order", "start-first", "--update-parallelism", "1",
        "--update-failure-action", "rollback", "--update-monitor", "3s",
        "--stop-grace-period", "10s",
        "--mount", &format!("type=bind,src={bin_dir},dst={bin_dir},readonly"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // host_mounts() is `-v src:dst[:ro]` pairs for `docker run`: as `--mount`s for a service.
    for spec in host_mounts().chunks(2).map(|p| p[1].clone()) {
        let parts: Vec<&str> = spec.split(':').collect();
        let mut m = format!("type=bind,src={},dst={}", parts[0], parts[1]);
        if parts.get(2) == Some(&"ro") {
            m.push_str(",readonly");
        }
        args.extend(["--mount".to_owned(), m]);
    }
    for e in &env {
        args.extend(["--env".to_owned(), e.clone()]);
    }
    args.extend([RUNNER_IMAGE.to_owned(), bin.to_owned(), "serve".to_owned()]);
    ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let logs = || docker(&["service", "logs", "--raw", "--tail", "80", &service]).1;
    // The running, healthy replicas' containers, once there are `n`.
    let replicas = |n: usize| {
        wait(
            T,
            &format!("{n} healthy pug replicas"),
            || {
                let ids = docker(&[
                    "ps",
                    "-q",
                    "--filter",
                    &format!("label=com.docker.swarm.service.name={service}"),
                    "--filter",
                    "health=healthy",
                ])
                .1;
                let ids: Vec<String> = ids.lines().map(str::to_owned).collect();
                (ids.len() == n).then_some(ids)
            },
            logs,
        )
    };
    let pugs = replicas(2);
    let sh = |container: &str, script: &str| {
        docker(&[
            "exec",
            "-e",
            "PUG_DATA_DIR=/data",
            container,
            "bash",
            "-c",
            &format!("export PATH={bin_dir}:$PATH; {script}"),
        ])
    };
    for p in &pugs {
        wait(
            T,
            "each replica's CLI",
            || sh(p, "pug tenant list").0.then_some(()),
            logs,
        );
    }
    let (created, out) = sh(&pugs[0], "pug tenant create acme --version 11.3.0 --wait");
    assert!(created, "{out}\n{}", logs());
    let (granted, out) = sh(
        &pugs[1],
        "printf 'alice-password\\n' | pug user create alice --email alice@example.com --password-stdin \
         && pug user grant alice acme --role Viewer",
    );
    assert!(granted, "{out}");
    // Both replicas' CLIs still work: one's start did not revoke the other's local token.
    for p in &pugs {
        assert!(sh(p, "pug tenant list").0, "a replica's CLI was logged out");
    }

    // Sign in and ask acme's Grafana who we are, through one gateway at `base`.
    let whoami = |container: &str, base: &str| {
        sh(
            container,
            &format!(
                "j=$(mktemp) && curl -sS -c $j -o /dev/null {base}/login \
                 && csrf=$(sed -n 's/.*\\tpug_csrf\\t//p' $j) \
                 && curl -sS -b $j -c $j -o /dev/null --data-urlencode user=alice \
                      --data-urlencode password=alice-password --data-urlencode csrf=$csrf \
                      --data-urlencode next=/ {base}/login \
                 && curl -sS -b $j --max-time 30 -w ' %{{http_code}}' {base}/t/acme/api/user"
            ),
        )
    };
    // Each replica's own gateway: its token is one the task trusts. (A replica whose
    // controller did not start the tenant sees it ready at its next read of the store's
    // statuses, within a second.)
    for p in &pugs {
        let answer = wait(
            T,
            "the tenant through each replica's gateway",
            || {
                let (done, answer) = whoami(p, "http://127.0.0.1:8080");
                (done && answer.ends_with(" 200")).then_some(answer)
            },
            logs,
        );
        let user: Value = serde_json::from_str(answer.trim_end_matches(" 200")).unwrap_or_default();
        assert_eq!(
            (&user["login"], &user["authenticatedBy"]),
            (&serde_json::json!("alice"), &serde_json::json!("jwt")),
            "{answer}"
        );
    }

    // Steady signed-in traffic through the service's name (which resolves to the replicas)
    // while pug's own service is updated, one replica at a time.
    let base = format!("http://{service}:8080");
    let mut args: Vec<String> = [
        "run",
        "-d",
        "--name",
        &format!("{namespace}-load"),
        "--network",
        &network,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(host_mounts());
    args.extend([
        RUNNER_IMAGE.to_owned(),
        "/bin/bash".into(),
        "-c".into(),
        format!(
            "j=/tmp/jar && curl -sS -c $j -o /dev/null {base}/login \
             && csrf=$(sed -n 's/.*\\tpug_csrf\\t//p' $j) \
             && curl -sS -b $j -c $j -o /dev/null --data-urlencode user=alice \
                  --data-urlencode password=alice-password --data-urlencode csrf=$csrf \
                  --data-urlencode next=/ {base}/login \
             && end=$(( $(date +%s) + 240 )) \
             && while [ ! -e /tmp/stop ] && [ $(date +%s) -lt $end ]; do \
                  c=$(curl -s -o /tmp/body -b $j --max-time 10 -w '%{{http_code}}' {base}/t/acme/api/health); \
                  echo \"code $c\"; [ \"$c\" = 200 ] || echo \"body $(head -c 300 /tmp/body)\"; \
                done; echo done"
        ),
    ]);
    ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let load = format!("{namespace}-load");
    let answered = || {
        docker(&["logs", &load])
            .1
            .lines()
            .filter(|l| l.starts_with("code "))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    wait(
        T,
        "the load to be answered",
        || (answered().len() >= 20).then_some(()),
        || container_log(&load),
    );
    let before = ok(&[
        "service",
        "inspect",
        "--format",
        "{{.Version.Index}}",
        &format!("{namespace}-acme"),
    ]);
    ok(&["service", "update", "--detach", "--force", &service]);
    wait(
        Duration::from_secs(180),
        "pug's rolling update to complete",
        || {
            (ok(&[
                "service",
                "inspect",
                "--format",
                "{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}",
                &service,
            ]) == "completed")
                .then_some(())
        },
        logs,
    );
    let renewed = replicas(2);
    assert!(
        renewed.iter().all(|c| !pugs.contains(c)),
        "every replica was replaced"
    );
    // Some requests after the last replacement, then stop.
    let seen = answered().len();
    wait(
        T,
        "requests after the update",
        || (answered().len() >= seen + 20).then_some(()),
        logs,
    );
    ok(&["exec", &load, "touch", "/tmp/stop"]);
    wait(
        T,
        "the load to stop",
        || docker(&["logs", &load]).1.ends_with("done").then_some(()),
        || container_log(&load),
    );
    let codes = answered();
    let failed: Vec<&String> = codes.iter().filter(|c| *c != "code 200").collect();
    eprintln!(
        "rolling update of pug: {} requests, {} failed",
        codes.len(),
        failed.len()
    );
    if !failed.is_empty() {
        let bodies: Vec<String> = docker(&["logs", &load])
            .1
            .lines()
            .filter(|l| l.starts_with("body "))
            .take(5)
            .map(str::to_owned)
            .collect();
        let events = sh(&renewed[0], "pug tenant show acme").1;
        panic!(
            "{} of {} requests failed during pug's rolling update: {:?}\n{bodies:#?}\n{events}",
            failed.len(),
            codes.len(),
            &failed[..failed.len().min(10)]
        );
    }
    // The tenant's service was not touched by the replicas taking over from each other.
    assert_eq!(
        ok(&[
            "service",
            "inspect",
            "--format",
            "{{.Version.Index}}",
            &format!("{namespace}-acme")
        ]),
        before,
        "a new pug replica changed the tenant's service"
    );
}
