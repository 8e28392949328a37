//! Idle tenants sleep and wake on their next request (issue 16), on the process backend,
//! against the real `pug` binary with grafana-standin as Grafana.
//!
//! Idle timeouts are a second (the controller adds a 2 s grace for the gateway's batched
//! activity writes), and every wait is a readiness poll.

mod support;

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use support::{wait_for, Pug};

/// Signs in (the session cookie), as [`support::login`] but sure to.
async fn login(url: &str, user: &str, password: &str) -> String {
    support::login(url, user, password)
        .await
        .expect("signed in")
}

const T: Duration = Duration::from_secs(60);

fn client() -> reqwest::Client {
    pug_test_support::http::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The reasons of acme's events, oldest first.
fn reasons(pug: &Pug) -> Vec<String> {
    let (s, events) = pug.api("GET", "/api/v1/tenants/acme/events?limit=1000", None);
    assert_eq!(s, 200, "{events}");
    events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["reason"].as_str().unwrap().to_owned())
        .collect()
}

/// How often `reason` was recorded after the last `after`.
fn count_after(pug: &Pug, after: &str, reason: &str) -> usize {
    let all = reasons(pug);
    let from = all.iter().rposition(|r| r == after).map_or(0, |i| i + 1);
    all[from..].iter().filter(|r| *r == reason).count()
}

fn acme_instances(pug: &Pug) -> usize {
    pug.instances()
        .iter()
        .filter(|(k, _)| k.starts_with("acme/"))
        .count()
}

/// A metric's value summed over its series, from `/metrics`.
fn metric(pug: &Pug, name: &str) -> f64 {
    let (_, body) = pug.api("GET", "/metrics", None);
    body.as_str()
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter(|l| l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn sleeping(pug: &Pug) -> Value {
    let t = pug.wait_phase("acme", "sleeping", T);
    wait_for(T, "acme's instance to be gone", || {
        (acme_instances(pug) == 0).then_some(())
    });
    t
}

#[test]
fn an_idle_tenant_sleeps_and_any_authorised_request_wakes_it_once() {
    let pug = Pug::start((27000, 27019), &[]);
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
    pug.ok(&["user", "grant", "alice", "acme", "--role", "Editor"]);
    let url = pug.url.clone();
    let rt = runtime();
    let alice = rt.block_on(login(&url, "alice", "alice-password"));

    // Unused, it falls asleep: no process, data kept, one Slept.
    let t = sleeping(&pug);
    assert_eq!(t["idle_timeout_secs"], 1);
    assert_eq!(count_after(&pug, "Created", "Slept"), 1);
    let list = pug.ok(&["tenant", "list"]);
    assert!(
        list.contains("LAST ACTIVITY") && list.contains("sleeping"),
        "{list}"
    );
    assert!(pug.data.join("tenants/acme/replica-0/data").is_dir());

    // No anonymous way to start it: the sign-in, never a wake.
    rt.block_on(async {
        let r = client()
            .get(format!("{url}/t/acme/api/health"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let r = client()
            .get(format!("{url}/t/acme/"))
            .header("accept", "text/html")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 302);
        let r = client()
            .get(format!("{url}/t/acme/_pug/wake"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    });
    assert_eq!(metric(&pug, "pug_gateway_wakes_asked_total"), 0.0);
    assert_eq!(acme_instances(&pug), 0);
    assert_eq!(pug.tenant("acme")["status"]["phase"], "sleeping");

    // 100 API requests at once: each is held until it is ready and gets 200; one start.
    let statuses = rt.block_on(async {
        let c = client();
        let all = (0..100).map(|_| {
            let (c, alice) = (c.clone(), alice.clone());
            let url = format!("{url}/t/acme/api/health");
            async move {
                let r = c.get(url).header("cookie", alice).send().await.unwrap();
                r.status().as_u16()
            }
        });
        futures::future::join_all(all).await
    });
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(count_after(&pug, "Slept", "InstanceStarted"), 1);
    wait_for(T, "the Woke event", || {
        (count_after(&pug, "Slept", "Woke") == 1).then_some(())
    });
    assert_eq!(metric(&pug, "pug_gateway_wakes_asked_total"), 1.0);
    assert_eq!(metric(&pug, "pug_tenant_wakes_total"), 1.0);
    let (_, events) = pug.api("GET", "/api/v1/tenants/acme/events?limit=5", None);
    let woke = events
        .as_array()
        .unwrap()
        .iter()
        .rfind(|e| e["reason"] == "Woke")
        .unwrap();
    assert!(
        woke["message"]
            .as_str()
            .unwrap()
            .contains("woken by a request through the gateway"),
        "{woke}"
    );

    // A browser navigation gets pug's waking page, which holds a request until it is ready
    // and then goes on to the URL it asked for (done here as the page's script does it).
    sleeping(&pug);
    rt.block_on(async {
        let c = client();
        let r = c
            .get(format!("{url}/t/acme/?orgId=1"))
            .header("accept", "text/html,application/xhtml+xml")
            .header("cookie", &alice)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503);
        assert!(r.headers().contains_key("retry-after"));
        let page = r.text().await.unwrap();
        assert!(page.contains("Waking acme's Grafana…"), "{page}");
        assert!(
            !page.contains("http-equiv=\"refresh\""),
            "no fixed refresh: {page}"
        );
        let js_string = |var: &str| -> String {
            let start = page.find(&format!("{var}=")).unwrap() + var.len() + 1;
            let rest = &page[start..];
            let end = rest[1..].find('"').unwrap() + 2;
            serde_json::from_str(&rest[..end]).unwrap()
        };
        let (wait, next) = (js_string("wait"), js_string("next"));
        assert_eq!(
            (wait.as_str(), next.as_str()),
            ("/t/acme/_pug/wake", "/t/acme/?orgId=1")
        );
        let r = c
            .get(format!("{url}{wait}"))
            .header("accept", "application/json")
            .header("cookie", &alice)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.json::<Value>().await.unwrap()["ready"], true);
        let r = c
            .get(format!("{url}{next}"))
            .header("accept", "text/html")
            .header("cookie", &alice)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.text().await.unwrap().contains("grafana-standin"));
    });
    assert_eq!(count_after(&pug, "Slept", "InstanceStarted"), 1);

    // An open WebSocket (Grafana Live) keeps it awake past its timeout; closed, it sleeps.
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;
    let mut ws = rt.block_on(async {
        let mut req = format!(
            "ws://{}/t/acme/api/live/ws",
            url.trim_start_matches("http://")
        )
        .into_client_request()
        .unwrap();
        req.headers_mut().insert("cookie", alice.parse().unwrap());
        let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        ws.send(Message::text("ping")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("ping"));
        ws
    });
    // Three times the timeout and its grace, checking all along that it stays awake.
    let until = Instant::now() + Duration::from_secs(9);
    while Instant::now() < until {
        let (_, t) = pug.api("GET", "/api/v1/tenants/acme", None);
        assert_eq!(
            t["status"]["phase"], "ready",
            "asleep with a WebSocket open"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    rt.block_on(async { ws.close(None).await.unwrap() });
    drop(ws);
    assert_eq!(acme_instances(&pug), 1);
    sleeping(&pug);
}

#[test]
fn suspended_tenants_do_not_wake_and_an_upgrade_asked_while_asleep_applies_at_wake() {
    let pug = Pug::start((27020, 27039), &[]);
    pug.ok(&[
        "tenant",
        "create",
        "acme",
        "--version",
        "11.3.0",
        "--idle-timeout",
        "1s",
    ]);
    sleeping(&pug);

    // Asked while asleep: recorded, not started.
    pug.ok(&["tenant", "upgrade", "acme", "--version", "11.4.0"]);
    let t = pug.wait_phase("acme", "sleeping", T);
    assert_eq!(t["spec"]["version"], "11.4.0");
    assert_eq!(t["status"]["running_version"], "11.3.0");
    assert_eq!(acme_instances(&pug), 0);
    assert_eq!(count_after(&pug, "Slept", "InstanceStarted"), 0);

    // An explicit wake starts it with the current spec.
    let out = pug.ok(&["tenant", "wake", "acme", "--wait"]);
    assert!(out.contains("ready") && out.contains("11.4.0"), "{out}");
    assert_eq!(pug.tenant("acme")["status"]["running_version"], "11.4.0");
    assert!(reasons(&pug).iter().any(|r| r == "Woke"));

    // Never sleeps with 0.
    pug.ok(&["tenant", "update", "acme", "--idle-timeout", "0"]);
    assert_eq!(pug.tenant("acme")["idle_timeout_secs"], 0);
    let err = pug.fails(&["tenant", "update", "acme", "--idle-timeout", "soon"]);
    assert!(err.contains("90s, 30m, 2h"), "{err}");

    // Suspended: neither a request nor the API wakes it.
    pug.ok(&["tenant", "suspend", "acme", "--wait"]);
    pug.create_user("alice", "alice-password");
    pug.ok(&["user", "grant", "alice", "acme", "--role", "Viewer"]);
    let url = pug.url.clone();
    let rt = runtime();
    rt.block_on(async {
        let alice = login(&url, "alice", "alice-password").await;
        let r = client()
            .get(format!("{url}/t/acme/api/health"))
            .header("cookie", &alice)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503);
        let r = client()
            .get(format!("{url}/t/acme/_pug/wake"))
            .header("cookie", &alice)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 409);
    });
    let err = pug.fails(&["tenant", "wake", "acme"]);
    assert!(err.contains("suspended") && err.contains("resume"), "{err}");
    let (s, body) = pug.api("POST", "/api/v1/tenants/acme/wake", None);
    assert_eq!(s, 409, "{body}");
    assert_eq!(acme_instances(&pug), 0);
    assert_eq!(pug.tenant("acme")["status"]["phase"], "suspended");
}

#[test]
fn killing_pug_mid_wake_converges_on_restart() {
    let mut pug = Pug::start((27040, 27059), &[]);
    pug.ok(&[
        "tenant",
        "create",
        "acme",
        "--version",
        "11.3.0",
        "--idle-timeout",
        "1s",
    ]);
    sleeping(&pug);
    // Long enough now that it stays awake across the restart.
    pug.ok(&["tenant", "update", "acme", "--idle-timeout", "5m"]);
    let (s, _) = pug.api("POST", "/api/v1/tenants/acme/wake", None);
    assert_eq!(s, 202);
    pug.kill9();
    pug.spawn();
    pug.wait_phase("acme", "ready", T);
    wait_for(T, "the Woke event", || {
        (count_after(&pug, "Slept", "Woke") == 1).then_some(())
    });
    assert_eq!(acme_instances(&pug), 1);
    // The wake is finished: an explicit wake now records no second Woke.
    let (s, _) = pug.api("POST", "/api/v1/tenants/acme/wake", None);
    assert_eq!(s, 202);
    pug.wait_phase("acme", "ready", T);
    assert_eq!(count_after(&pug, "Slept", "Woke"), 1);
}
