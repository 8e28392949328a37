//! The renderer inside `pug serve`, with real Chromium: every tenant's Grafana (the stand-in) is
//! wired to it, a tenant's panel renders through it the way Grafana's `/render/…` does, and a
//! tenant's token renders only that tenant's own instance.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{get, png_size, wait_for, PortLease, Pug};

const T: Duration = Duration::from_secs(60);

fn chromium_installed() {
    assert!(
        pug_renderer::config::find_browser().is_some(),
        "this test needs Chromium: apt-get install chromium-headless-shell chromium (as .ci/run does)"
    );
}

/// The `[rendering]` token pug wrote into a tenant's grafana.ini (the test reads it as
/// Grafana would; pug never shows it in its API).
fn renderer_token(pug: &Pug, tenant: &str) -> String {
    let ini = std::fs::read_to_string(
        pug.data
            .join("tenants")
            .join(tenant)
            .join("replica-0")
            .join("grafana.ini"),
    )
    .unwrap();
    let mut in_rendering = false;
    for line in ini.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_rendering = line == "[rendering]";
        } else if in_rendering {
            if let Some((k, v)) = line.split_once('=') {
                if k.trim() == "renderer_token" {
                    return v.trim().trim_matches('"').to_owned();
                }
            }
        }
    }
    panic!("no [rendering] renderer_token in {tenant}'s grafana.ini:\n{ini}");
}

#[test]
fn tenants_render_through_the_embedded_renderer_and_only_their_own_pages() {
    chromium_installed();
    // Leased: pug writes the renderer's configured address into tenants' grafana.ini.
    let rport = PortLease::new();
    let listen = format!("127.0.0.1:{}", rport.port());
    let pug = Pug::start(
        (22200, 22219),
        &[
            ("PUG_RENDERER_MODE", "on"),
            ("PUG_RENDERER_LISTEN", &listen),
        ],
    );
    let renderer = format!("http://{listen}");
    wait_for(T, "the renderer to answer /healthz", || {
        support::http_get(&format!("{renderer}/healthz"))
            .ok()
            .filter(|(s, _)| *s == 200)
    });
    pug.ok(&["tenant", "create", "acme", "--version", "11.3.0"]);
    pug.ok(&["tenant", "create", "globex", "--version", "11.3.0"]);
    let acme = pug.wait_phase("acme", "ready", T);
    let globex = pug.wait_phase("globex", "ready", T);
    let endpoint = |t: &Value| t["status"]["endpoints"][0].as_str().unwrap().to_owned();
    let (acme_at, globex_at) = (endpoint(&acme), endpoint(&globex));

    // pug wired the tenant's Grafana to its renderer.
    let (status, settings) = support::http(
        "GET",
        &format!("http://{acme_at}/t/acme/api/standin/settings"),
        None,
        None,
    );
    assert_eq!(status, 200, "{settings}");
    let rendering = &settings["rendering"];
    assert_eq!(rendering["server_url"], format!("{renderer}/render"));
    assert_eq!(
        rendering["callback_url"],
        format!("http://{acme_at}/t/acme/")
    );

    // Grafana's /render/d-solo/… → pug's renderer → Chromium → the tenant's page → PNG. The
    // renderer learns a tenant's token within a second of the tenant becoming ready.
    let panel =
        format!("http://{acme_at}/t/acme/render/d-solo/binding/x?width=320&height=200&delay=0");
    let (status, ctype, body) = wait_for(T, "acme's panel to render", || {
        let r = get(&panel, None);
        (r.0 != 401).then_some(r)
    });
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(ctype, "image/png");
    assert_eq!(png_size(&body), (320, 200));

    // The renderer's own rules, with acme's token.
    let acme_token = renderer_token(&pug, "acme");
    let render = |url: &str, token: Option<&str>| {
        let q: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs([
                ("url", url),
                ("width", "100"),
                ("height", "100"),
                ("encoding", "png"),
                ("renderKey", "k"),
                ("domain", "127.0.0.1"),
            ])
            .finish();
        get(&format!("{renderer}/render?{q}"), token)
    };
    let own = format!("http://{acme_at}/t/acme/d-solo/binding/x?delay=0");
    let other = format!("http://{globex_at}/t/globex/d-solo/binding/x?delay=0");
    assert_eq!(render(&own, Some(&acme_token)).0, 200);
    let (status, _, body) = render(&other, Some(&acme_token));
    assert_eq!(status, 403, "acme's token must not render globex");
    assert!(
        String::from_utf8_lossy(&body).contains("not an address this token may render"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(render(&own, None).0, 401);
    assert_eq!(
        render(&own, Some("-")).0,
        401,
        "the reference's default token is not valid here"
    );
    assert_eq!(
        render(
            "http://169.254.169.254/latest/meta-data/",
            Some(&acme_token)
        )
        .0,
        403
    );

    // A deleted tenant's token stops working.
    pug.ok(&["tenant", "delete", "acme"]);
    wait_for(T, "acme's token to be revoked", || {
        (render(&own, Some(&acme_token)).0 == 401).then_some(())
    });

    // Prometheus finds the renderer through pug's service discovery.
    let (status, targets) = pug.api("GET", "/api/v1/prometheus/targets", None);
    assert_eq!(status, 200);
    assert!(
        targets
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["labels"]["role"] == "renderer" && g["targets"][0] == listen.as_str()),
        "{targets}"
    );

    let (status, metrics) = support::http_get(&format!("{renderer}/metrics")).unwrap();
    assert_eq!(status, 200);
    assert!(
        metrics.contains("pug_renderer_render_duration_seconds_count"),
        "{metrics}"
    );
}

/// Whether `pid` still runs (a zombie waiting for its reaper does not).
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

/// A renderer that dies without cleaning up (SIGKILL, the OOM killer) takes its Chromium with
/// it: the browser and its helper processes do not outlive pug holding their memory.
#[test]
fn a_killed_renderer_leaves_no_chromium_behind() {
    chromium_installed();
    let lease = PortLease::new();
    let port = lease.port();
    let mut child = std::process::Command::new(support::pug_bin())
        .args(["render", "--addr", &format!("127.0.0.1:{port}")])
        .env("AUTH_TOKEN", "t")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("pug render starts");
    let url = format!("http://127.0.0.1:{port}/healthz");
    wait_for(T, "pug render to answer /healthz", || {
        support::http_get(&url).ok().filter(|(s, _)| *s == 200)
    });
    let pid = child.id();
    let browser = wait_for(T, "pug render's Chromium and its helpers", || {
        let procs = pug_renderer::engine::browser::descendants(pid);
        (procs.len() >= 2).then_some(procs)
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let left = loop {
        let left: Vec<i32> = browser.iter().copied().filter(|&p| running(p)).collect();
        if left.is_empty() || std::time::Instant::now() > deadline {
            break left;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    for pid in &left {
        // Not to leave them to the next test either.
        let _ = std::process::Command::new("kill")
            .arg("-9")
            .arg(pid.to_string())
            .status();
    }
    assert!(
        left.is_empty(),
        "Chromium processes {left:?} outlived the killed renderer (pid {pid})"
    );
}

/// The security review's F9: the browser that renders tenant-controlled pages must not hold
/// pug's secrets or pug's user. Performed as an attacker who owns a renderer process would
/// look: the browser's environment (`/proc/<pid>/environ`, what a compromised renderer reads
/// first) and its user (`/proc/<pid>/status`); and its renderer processes run in Chromium's
/// sandbox (a user namespace of their own), with no `--no-sandbox` anywhere.
#[test]
fn the_browser_gets_no_secrets_no_root_and_its_sandbox() {
    chromium_installed();
    let lease = PortLease::new();
    let port = lease.port();
    let canary = "pug-master-key-canary-0123456789";
    let mut child = std::process::Command::new(support::pug_bin())
        .args(["render", "--addr", &format!("127.0.0.1:{port}")])
        .env("AUTH_TOKEN", "t")
        .env("PUG_MASTER_KEY", canary)
        .env(
            "PUG_DATABASE_URL",
            format!("postgres://pug:{canary}@db/pug"),
        )
        .env("PUG_TOKEN", canary)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("pug render starts");
    let pid = child.id();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let url = format!("http://127.0.0.1:{port}/healthz");
    wait_for(T, "pug render to answer /healthz", || {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("pug render exited at start: {status}");
        }
        support::http_get(&url).ok().filter(|(s, _)| *s == 200)
    });
    let child = Kill(child);
    let cmdline = |p: i32| {
        std::fs::read(format!("/proc/{p}/cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default()
    };
    // The spare pages have renderer processes by now (or soon).
    let procs = wait_for(T, "Chromium's renderer processes", || {
        let procs = pug_renderer::engine::browser::descendants(pid);
        procs
            .iter()
            .any(|&p| cmdline(p).contains("--type=renderer"))
            .then_some(procs)
    });
    let root = nix::unistd::geteuid().is_root();
    let own_userns = std::fs::read_link("/proc/self/ns/user").unwrap();
    for &p in &procs {
        let Ok(environ) = std::fs::read(format!("/proc/{p}/environ")) else {
            continue; // exited meanwhile
        };
        let environ = String::from_utf8_lossy(&environ).replace('\0', "\n");
        assert!(
            !environ.contains(canary) && !environ.contains("PUG_"),
            "process {p} ({}) inherited pug's environment:\n{environ}",
            cmdline(p)
        );
        assert!(!cmdline(p).contains("--no-sandbox"), "{}", cmdline(p));
        if root {
            let status = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap();
            let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
            let want = pug_renderer::engine::browser::DEFAULT_BROWSER_UID.to_string();
            assert!(
                uid.split_whitespace().skip(1).all(|u| u == want),
                "process {p} ({}) runs as {uid}, not the browser's own user {want}",
                cmdline(p)
            );
        }
    }
    let sandboxed = procs
        .iter()
        .filter(|&&p| cmdline(p).contains("--type=renderer"))
        .filter_map(|p| std::fs::read_link(format!("/proc/{p}/ns/user")).ok())
        .all(|ns| ns != own_userns);
    assert!(
        sandboxed,
        "a renderer process shares pug's user namespace: Chromium's sandbox is off"
    );
    drop(child);
}

/// Renders are activity (issue 16): a tenant whose only use is Grafana rendering its panels
/// (alerts with images, reports: the instance calls the renderer, nobody comes through the
/// gateway) stays awake past its idle timeout, and falls asleep once the renders stop.
#[test]
fn a_tenant_used_only_by_renders_stays_awake() {
    chromium_installed();
    let rport = PortLease::new();
    let listen = format!("127.0.0.1:{}", rport.port());
    let pug = Pug::start(
        (22240, 22249),
        &[
            ("PUG_RENDERER_MODE", "on"),
            ("PUG_RENDERER_LISTEN", &listen),
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
    let acme = pug.wait_phase("acme", "ready", T);
    let at = acme["status"]["endpoints"][0].as_str().unwrap().to_owned();
    // Grafana's own /render/… on the instance, not through the gateway: only the renderer
    // sees this tenant used.
    let panel = format!("http://{at}/t/acme/render/d-solo/binding/x?width=64&height=64&delay=0");
    let phase = || pug.api("GET", "/api/v1/tenants/acme", None).1["status"]["phase"].clone();
    wait_for(T, "acme's first panel to render", || {
        (get(&panel, None).0 == 200).then_some(())
    });
    // Five times the timeout and its 2 s grace, a render about every second, checking all along.
    let until = std::time::Instant::now() + Duration::from_secs(15);
    let mut renders = 0;
    while std::time::Instant::now() < until {
        let (status, _, body) = get(&panel, None);
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        renders += 1;
        assert_eq!(phase(), "ready", "asleep while its panels render");
        std::thread::sleep(Duration::from_millis(700));
    }
    assert!(renders >= 5, "only {renders} renders in 15 s");
    let (_, events) = pug.api("GET", "/api/v1/tenants/acme/events?limit=1000", None);
    assert!(
        !events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["reason"] == "Slept"),
        "{events}"
    );
    // Renders stopped: the idle timeout applies again.
    pug.wait_phase("acme", "sleeping", T);
}
