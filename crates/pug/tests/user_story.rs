//! The user story of the core issue, line by line, against the real `pug` binary with
//! grafana-standin as Grafana.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::{http_get, wait_for, Pug};

const T: Duration = Duration::from_secs(60);

/// What the tenant's instance reports about its effective settings.
fn instance_settings(endpoint: &str, tenant: &str) -> Value {
    let (status, body) = http_get(&format!(
        "http://{endpoint}/t/{tenant}/api/standin/settings"
    ))
    .unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[test]
fn the_core_user_story() {
    let pug = Pug::start((21000, 21099), &[]);

    // `pug tenant create` returns at once; the tenant converges in the background.
    let out = pug.ok(&["tenant", "create", "acme", "--version", "11.3.0"]);
    assert!(out.contains("converges in the background"), "{out}");
    let t = pug.wait_phase("acme", "ready", T);
    assert_eq!(t["status"]["ready_replicas"], 1);
    assert_eq!(t["url"], format!("{}/t/acme/", pug.url));
    let endpoint = t["status"]["endpoints"][0].as_str().unwrap().to_owned();

    // The instance got Grafana's own settings: root_url, sub path, auth proxy, no sign-up.
    let s = instance_settings(&endpoint, "acme");
    let text = s.to_string();
    assert!(text.contains(&format!("{}/t/acme/", pug.url)), "{text}");
    let sections = &s["sections"];
    assert_eq!(sections["server"]["serve_from_sub_path"], "true", "{text}");
    assert_eq!(sections["auth.proxy"]["enabled"], "true", "{text}");
    assert_eq!(
        sections["auth.proxy"]["whitelist"], "127.0.0.1, ::1",
        "{text}"
    );
    assert_eq!(sections["users"]["allow_sign_up"], "false", "{text}");
    assert_eq!(
        sections["analytics"]["check_for_updates"], "false",
        "{text}"
    );
    assert_eq!(sections["plugins"]["preinstall_disabled"], "true", "{text}");
    assert_eq!(s["secret_key"]["set"], true, "{text}");

    // `pug tenant list`: a table with id, phase, version, ready/desired and url.
    let list = pug.ok(&["tenant", "list"]);
    for needle in ["ID", "PHASE", "acme", "ready", "11.3.0", "1/1", "/t/acme/"] {
        assert!(list.contains(needle), "{needle} missing in:\n{list}");
    }
    let list_json: Value =
        serde_json::from_str(&pug.ok(&["tenant", "list", "-o", "json"])).unwrap();
    assert_eq!(list_json[0]["id"], "acme");

    // `pug tenant show --output json`: spec, status, events — and never a secret.
    let show = pug.ok(&["tenant", "show", "acme", "--output", "json"]);
    let shown: Value = serde_json::from_str(&show).unwrap();
    assert_eq!(shown["spec"]["version"], "11.3.0");
    assert!(shown["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["reason"] == "InstanceStarted"));
    for word in ["password", "secret_key", "renderer_token"] {
        assert!(
            !show.contains(word),
            "{word} appears in tenant show: {show}"
        );
    }
    let ini = std::fs::read_to_string(pug.data.join("tenants/acme/replica-0/grafana.ini")).unwrap();
    let admin_password = ini
        .lines()
        .find_map(|l| l.strip_prefix("admin_password = "))
        .unwrap()
        .trim_matches('"');
    assert!(admin_password.len() >= 32);
    assert!(!show.contains(admin_password));
    assert!(
        !pug.log().contains(admin_password),
        "a secret reached pug's log"
    );
    let events = pug
        .api("GET", "/api/v1/tenants/acme/events", None)
        .1
        .to_string();
    assert!(!events.contains(admin_password));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(pug.data.join("tenants/acme/replica-0/grafana.ini"))
        .unwrap()
        .permissions()
        .mode();
    // Private to pug's user, and (isolated, as root) readable by the tenant's own group only.
    assert_eq!(
        mode & 0o037,
        0,
        "grafana.ini must be private to pug's and the tenant's user"
    );

    // `pug tenant update --set` → a rolling restart with the override applied.
    let pid_before = pug.instances();
    pug.ok(&[
        "tenant",
        "update",
        "acme",
        "--set",
        "server.enable_gzip=true",
        "--wait",
    ]);
    let t = pug.tenant("acme");
    let endpoint = t["status"]["endpoints"][0].as_str().unwrap().to_owned();
    assert_eq!(
        instance_settings(&endpoint, "acme")["sections"]["server"]["enable_gzip"],
        "true"
    );
    assert_ne!(pug.instances(), pid_before, "the instance was restarted");

    // `pug tenant upgrade --wait` waits until ready.
    let out = pug.ok(&["tenant", "upgrade", "acme", "--version", "11.4.0", "--wait"]);
    assert!(out.contains("ready"), "{out}");
    let t = pug.tenant("acme");
    assert_eq!(t["spec"]["version"], "11.4.0");
    assert_eq!(t["status"]["running_version"], "11.4.0");
    // No silent downgrade.
    let err = pug.fails(&["tenant", "upgrade", "acme", "--version", "11.3.0"]);
    assert!(err.contains("forward-only"), "{err}");

    // `pug tenant suspend` stops the instance and keeps its data; `resume` starts it again.
    let marker = pug.data.join("tenants/acme/replica-0/data/kept.txt");
    std::fs::write(&marker, "dashboards live here").unwrap();
    pug.ok(&["tenant", "suspend", "acme", "--wait"]);
    assert_eq!(pug.tenant("acme")["status"]["phase"], "suspended");
    wait_for(T, "the instance to stop", || {
        pug.instances().is_empty().then_some(())
    });
    assert!(marker.exists());
    pug.ok(&["tenant", "resume", "acme", "--wait"]);
    assert_eq!(pug.instances().len(), 1);
    assert!(marker.exists());

    // `pug status`: tenants by phase, queue depth, backend.
    let status = pug.ok(&["status"]);
    for needle in ["process", "ready", "queue"] {
        assert!(status.contains(needle), "{needle} missing in:\n{status}");
    }
    let (code, st) = pug.api("GET", "/api/v1/status", None);
    assert_eq!(code, 200);
    assert_eq!(st["tenants_by_phase"]["ready"], 1);

    // /metrics: process metrics, tenants by phase, queue depth, reconcile histogram, operations.
    // It takes an API token (issue 14, hole 10): the admin token here, a read token in Prometheus.
    let (code, metrics) = support::http(
        "GET",
        &format!("{}/metrics", pug.url),
        Some(&pug.token()),
        None,
    );
    assert_eq!(code, 200);
    let metrics = metrics.as_str().unwrap().to_owned();
    for needle in [
        "process_resident_memory_bytes",
        "pug_tenants{phase=\"ready\"} 1",
        "pug_reconcile_queue_depth",
        "pug_reconcile_duration_seconds_bucket",
        "pug_reconcile_operations_total{result=\"converged\"}",
        "pug_tenant_ready_replicas{tenant=\"acme\"} 1",
    ] {
        assert!(
            metrics.contains(needle),
            "{needle} missing in /metrics:\n{metrics}"
        );
    }

    // The metrics pass `promtool check metrics` (Debian's prometheus package).
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("promtool is missing ({e}): apt-get install prometheus"));
    use std::io::Write;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success() && checked.stdout.is_empty() && checked.stderr.is_empty(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    // Prometheus service discovery, with a read-only token: pug itself and the ready instance.
    let read = pug.ok(&["token", "create", "--name", "prometheus", "--role", "read"]);
    let (code, sd) = support::http(
        "GET",
        &format!("{}/api/v1/prometheus/targets", pug.url),
        Some(read.trim()),
        None,
    );
    assert_eq!(code, 200, "{sd}");
    let groups = sd.as_array().unwrap();
    assert!(groups.iter().any(|g| g["labels"]["role"] == "pug"), "{sd}");
    let grafana: Vec<_> = groups
        .iter()
        .filter(|g| g["labels"]["role"] == "grafana")
        .collect();
    assert_eq!(grafana.len(), 1, "{sd}");
    assert_eq!(grafana[0]["labels"]["tenant"], "acme");
    assert_eq!(grafana[0]["labels"]["replica"], "0");
    assert_eq!(grafana[0]["labels"]["version"], "11.4.0");
    assert_eq!(grafana[0]["labels"]["backend"], "process");
    let target = grafana[0]["targets"][0].as_str().unwrap();
    let (code, body) = http_get(&format!("http://{target}/metrics")).unwrap();
    assert_eq!(code, 200, "the instance's own /metrics answers: {body}");

    // `pug tenant delete`: instances stopped, data archived under pug-data/archive.
    pug.ok(&["tenant", "delete", "acme"]);
    wait_for(T, "the tenant to disappear", || {
        (!pug.cli(&["tenant", "show", "acme"]).status.success()).then_some(())
    });
    assert!(pug.instances().is_empty());
    let archived: Vec<_> = std::fs::read_dir(pug.data.join("archive"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(archived.len(), 1);
    assert!(archived[0].path().join("replica-0/data/kept.txt").exists());
    let err = pug.fails(&["tenant", "show", "acme"]);
    assert!(
        err.starts_with("error: tenant acme does not exist"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "one clear line: {err}");
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let pug = Pug::start((21100, 21149), &[]);
    pug.ok(&["tenant", "create", "acme", "--version", "11.3.0", "--wait"]);
    let before = pug.tenant("acme");
    let cases: Vec<(&str, &str, Value, u16, &str)> = vec![
        (
            "POST",
            "/api/v1/tenants",
            json!({"id": "Not_A_Label", "version": "11.3.0"}),
            422,
            "id",
        ),
        (
            "POST",
            "/api/v1/tenants",
            json!({"id": "ok", "version": "latest"}),
            422,
            "version",
        ),
        (
            "POST",
            "/api/v1/tenants",
            json!({"id": "ok", "version": "9.5.0"}),
            422,
            "version",
        ),
        (
            "POST",
            "/api/v1/tenants",
            json!({"id": "ok", "version": "11.3.0", "set": ["paths.data=/"]}),
            422,
            "overrides",
        ),
        (
            "POST",
            "/api/v1/tenants",
            json!({"id": "ok", "version": "11.3.0", "set": ["nonsense"]}),
            422,
            "overrides",
        ),
        (
            "POST",
            "/api/v1/tenants",
            json!({"id": "ok", "version": "11.3.0", "replicas": 2}),
            422,
            "replicas",
        ),
        (
            "POST",
            "/api/v1/tenants",
            json!({"id": "ok", "version": "11.3.0", "replicas": 0}),
            422,
            "replicas",
        ),
        (
            "POST",
            "/api/v1/tenants",
            json!({"id": "acme", "version": "11.3.0"}),
            409,
            "",
        ),
        ("POST", "/api/v1/tenants", json!({"id": "ok"}), 400, ""),
        (
            "POST",
            "/api/v1/tenants",
            json!({"id": "ok", "version": "11.3.0", "bogus": 1}),
            400,
            "",
        ),
        (
            "PATCH",
            "/api/v1/tenants/acme",
            json!({"set": ["auth.proxy.whitelist=0.0.0.0/0"]}),
            422,
            "overrides",
        ),
        (
            "PATCH",
            "/api/v1/tenants/acme",
            json!({"set": ["server.x=a\nb"]}),
            422,
            "overrides",
        ),
        ("PATCH", "/api/v1/tenants/acme", json!({}), 400, ""),
        (
            "POST",
            "/api/v1/tenants/acme/upgrade",
            json!({"version": "10.0.0"}),
            422,
            "version",
        ),
        ("POST", "/api/v1/tenants/nope/suspend", json!({}), 404, "id"),
    ];
    for (method, path, body, code, field) in cases {
        let (got, answer) = pug.api(method, path, Some(body.clone()));
        assert_eq!(got, code, "{method} {path} {body}: {answer}");
        let error = answer["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error field: {answer}"));
        assert!(!error.is_empty());
        if !field.is_empty() {
            assert_eq!(answer["field"], field, "{answer}");
        }
    }
    // Without a token: 401 with a JSON error.
    let (code, answer) = support::http("GET", &format!("{}/api/v1/tenants", pug.url), None, None);
    assert_eq!(code, 401);
    assert!(answer["error"].as_str().unwrap().contains("token"));
    let (code, _) = support::http(
        "GET",
        &format!("{}/api/v1/tenants", pug.url),
        Some("pug_wrong"),
        None,
    );
    assert_eq!(code, 401);

    // Nothing changed.
    let after = pug.tenant("acme");
    assert_eq!(before["generation"], after["generation"]);
    assert_eq!(before["spec"], after["spec"]);
    let (_, list) = pug.api("GET", "/api/v1/tenants", None);
    assert_eq!(list.as_array().unwrap().len(), 1);

    // Read-only tokens read but cannot write; `pug token create` makes tokens.
    let read = pug.ok(&["token", "create", "--name", "prom", "--role", "read"]);
    let read = read.trim();
    let (code, _) = support::http(
        "GET",
        &format!("{}/api/v1/tenants", pug.url),
        Some(read),
        None,
    );
    assert_eq!(code, 200);
    let (code, _) = support::http(
        "POST",
        &format!("{}/api/v1/tenants/acme/suspend", pug.url),
        Some(read),
        None,
    );
    assert_eq!(code, 403);

    // The OpenAPI document is served.
    let (code, doc) = http_get(&format!("{}/api/v1/openapi.json", pug.url)).unwrap();
    assert_eq!(code, 200);
    let doc: Value = serde_json::from_str(&doc).unwrap();
    for (path, method) in [
        ("/api/v1/tenants/{id}/upgrade", "post"),
        ("/api/v1/tenants/{id}/wake", "post"),
        ("/api/v1/swarm", "get"),
        ("/api/v1/prometheus/targets", "get"),
        ("/api/v1/embed-keys", "post"),
    ] {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} is not documented"
        );
    }
}

#[test]
fn failure_paths_are_reported() {
    let pug = Pug::start(
        (21150, 21199),
        &[
            ("PUG_CONTROLLER_READY_TIMEOUT_SECS", "2"),
            ("PUG_CONTROLLER_MAX_BACKOFF_SECS", "1"),
        ],
    );
    // A crash loop ends in phase failed, with the reason.
    pug.ok(&[
        "tenant",
        "create",
        "crashy",
        "--version",
        "11.3.0",
        "--set",
        "standin.mode=crash",
    ]);
    let t = pug.wait_phase("crashy", "failed", T);
    let why = t["status"]["last_error"].as_str().unwrap();
    assert!(why.contains("exited with code 1"), "{why}");
    // An instance that answers but whose database fails is degraded.
    pug.ok(&[
        "tenant",
        "create",
        "sick",
        "--version",
        "11.3.0",
        "--set",
        "standin.mode=unhealthy_db",
    ]);
    let t = pug.wait_phase("sick", "degraded", T);
    assert!(
        t["status"]["last_error"]
            .as_str()
            .unwrap()
            .contains("failing"),
        "{t}"
    );
    // One that never starts listening is failed.
    pug.ok(&[
        "tenant",
        "create",
        "stuck",
        "--version",
        "11.3.0",
        "--set",
        "standin.mode=hang",
    ]);
    let t = pug.wait_phase("stuck", "failed", T);
    assert!(
        t["status"]["last_error"]
            .as_str()
            .unwrap()
            .contains("not healthy"),
        "{t}"
    );
    // Fixing the spec heals it.
    pug.ok(&[
        "tenant",
        "update",
        "crashy",
        "--unset",
        "standin.mode",
        "--wait",
    ]);
    assert_eq!(pug.tenant("crashy")["status"]["phase"], "ready");
    // `--wait` on a failing change exits non-zero with the reason on one line.
    let err = pug.fails(&[
        "tenant",
        "update",
        "crashy",
        "--set",
        "standin.mode=crash",
        "--wait",
        "--timeout",
        "60",
    ]);
    assert!(err.starts_with("error: tenant crashy is failed"), "{err}");
}
