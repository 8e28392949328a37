//! The HTTP contract and every refusal: auth (401), parameters (400), URL policy (403, including
//! redirects and token scopes), timeout (408), full queue (429), and the service endpoints.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;

use pug_renderer::{Scope, TokenScopes};
use support::*;

fn render_query(url: String) -> Vec<(&'static str, String)> {
    vec![
        ("url", url),
        ("width", "200".to_owned()),
        ("height", "100".to_owned()),
        ("renderKey", "k".to_owned()),
        ("domain", "127.0.0.1".to_owned()),
        ("encoding", "png".to_owned()),
    ]
}

async fn expect(res: reqwest::Response, status: u16, reason: &str) {
    let got = res.status();
    let ct = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = res.text().await.unwrap();
    assert_eq!(got, status, "body: {body}");
    assert!(ct.starts_with("text/plain"), "{ct}");
    assert!(
        body.contains(reason),
        "{body:?} does not mention {reason:?}"
    );
}

#[tokio::test]
async fn service_endpoints() {
    let pages = pages().await;
    let h = Harness::start().await;
    let ok = render_query(format!("http://{pages}/d-solo/scenes/x?delay=0"));
    assert_eq!(h.get("/render", &ok).await.status(), 200);
    let version: serde_json::Value = pug_test_support::http::get(h.url("/render/version"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let v = version["version"].as_str().unwrap();
    let parts: Vec<u64> = v.split('.').map(|p| p.parse().unwrap()).collect();
    assert!(
        parts >= vec![3, 10, 0],
        "{v} must be ≥ 3.10.0 for Grafana to enable PDF"
    );

    let root = pug_test_support::http::get(h.url("/"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(root.contains("pug renderer"), "{root}");
    let health = pug_test_support::http::get(h.url("/healthz"))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.unwrap(), "OK");

    let metrics = pug_test_support::http::get(h.url("/metrics"))
        .await
        .unwrap();
    assert_eq!(metrics.headers()["content-type"], pug_metrics::CONTENT_TYPE);
    let text = metrics.text().await.unwrap();
    // promtool (Debian's `prometheus` package) judges the exposition by Prometheus' conventions.
    let promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is needed: apt-get install prometheus");
    use std::io::Write as _;
    let mut child = promtool;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for family in [
        "# TYPE http_request_duration_seconds histogram",
        "http_request_duration_seconds_bucket{le=\"0.5\",status_code=\"200\"}",
        "http_request_duration_seconds_bucket{le=\"60.0\",status_code=\"200\"}",
        "http_request_duration_seconds_bucket{le=\"7.0\",status_code=\"200\"}",
        "up 1",
        "process_resident_memory_bytes ",
        "# TYPE pug_renderer_renders_in_flight gauge",
        "# TYPE pug_renderer_queued_renders gauge",
        "# TYPE pug_renderer_render_duration_seconds histogram",
        "pug_renderer_render_duration_seconds_count{encoding=\"png\",result=\"success\"} 1",
        "pug_renderer_browser_restarts_total{reason=\"crashed\"} 0",
        "pug_renderer_readiness_mode_total{mode=\"queries\"} 1",
        "pug_renderer_readiness_mode_total{mode=\"binding\"} 0",
    ] {
        assert!(text.contains(family), "{family} missing");
    }
    h.shutdown().await;
}

#[tokio::test]
async fn metrics_can_be_disabled() {
    let h = Harness::start_with(|c| c.metrics_enabled = false).await;
    assert_eq!(
        pug_test_support::http::get(h.url("/metrics"))
            .await
            .unwrap()
            .status(),
        404
    );
    h.shutdown().await;
}

#[tokio::test]
async fn tokens_are_required_and_several_are_accepted() {
    let pages = pages().await;
    let h = Harness::start_with(|c| c.auth_tokens = vec![TOKEN.into(), "second".into()]).await;
    let q = render_query(format!("http://{pages}/d-solo/scenes/x?delay=0"));
    let res = h
        .client
        .get(h.url("/render"))
        .query(&q)
        .send()
        .await
        .unwrap();
    expect(res, 401, "Missing X-Auth-Token header").await;
    let res = h
        .client
        .get(h.url("/render/csv"))
        .header("X-Auth-Token", "wrong")
        .query(&q)
        .send()
        .await
        .unwrap();
    expect(res, 401, "Unauthorized").await;
    let res = h
        .client
        .get(h.url("/render"))
        .header("X-Auth-Token", "second")
        .query(&q)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    h.shutdown().await;
}

#[tokio::test]
async fn bad_parameters_are_400_with_a_reason() {
    let pages = pages().await;
    let h = Harness::start().await;
    let page = format!("http://{pages}/d-solo/scenes/x");
    for (query, reason) in [
        (vec![("width", "1")], "missing url"),
        (vec![("url", page.as_str()), ("width", "wide")], "width"),
        (vec![("url", page.as_str()), ("timeout", "-5")], "timeout"),
        (
            vec![("url", page.as_str()), ("timezone", "Mars/Base")],
            "timezone",
        ),
        (
            vec![("url", page.as_str()), ("encoding", "gif")],
            "encoding",
        ),
        (
            vec![("url", page.as_str()), ("deviceScaleFactor", "-1")],
            "deviceScaleFactor",
        ),
    ] {
        let q: Vec<(&str, String)> = query.iter().map(|(k, v)| (*k, v.to_string())).collect();
        expect(h.get("/render", &q).await, 400, reason).await;
    }
    h.shutdown().await;
}

#[tokio::test]
async fn refused_urls_are_403() {
    let pages = pages().await;
    let h = Harness::start().await;
    let redirect = |to: &str| {
        format!(
            "http://{pages}/render-test/redirect?to={}",
            url::form_urlencoded::byte_serialize(to.as_bytes()).collect::<String>()
        )
    };
    for (url, reason) in [
        ("file:///etc/passwd".to_owned(), "only http and https"),
        ("chrome://version".to_owned(), "only http and https"),
        (
            "http://169.254.169.254/latest/meta-data/".to_owned(),
            "link-local",
        ),
        (
            "http://metadata.google.internal/computeMetadata/v1/".to_owned(),
            "metadata",
        ),
        ("http://[fd00:ec2::254]/".to_owned(), "metadata"),
        // Allowed URL, redirected by the site to the metadata service: checked again.
        (
            redirect("http://169.254.169.254/latest/meta-data/"),
            "link-local",
        ),
    ] {
        expect(
            h.get("/render", &render_query(url.clone())).await,
            403,
            reason,
        )
        .await;
    }
    let mut csv = render_query("file:///etc/passwd".to_owned());
    csv.retain(|(k, _)| *k != "encoding");
    expect(h.get("/render/csv", &csv).await, 403, "only http and https").await;
    h.shutdown().await;
}

#[tokio::test]
async fn allow_list_applies_to_the_url_and_to_redirects() {
    let other = support::pages().await;
    let pages = support::pages().await;
    let h = Harness::start_with(|c| c.allowed_hosts = vec![pages.to_string()]).await;
    let ok = render_query(format!("http://{pages}/d-solo/scenes/x?delay=0"));
    assert_eq!(h.get("/render", &ok).await.status(), 200);
    let elsewhere = render_query(format!("http://{other}/d-solo/scenes/x?delay=0"));
    expect(
        h.get("/render", &elsewhere).await,
        403,
        "not in the renderer's allowed hosts",
    )
    .await;
    let to_other = format!(
        "http://{pages}/render-test/redirect?to=http%3A%2F%2F{other}%2Fd-solo%2Fscenes%2Fx"
    );
    expect(
        h.get("/render", &render_query(to_other)).await,
        403,
        "not in the renderer's allowed hosts",
    )
    .await;
    let log = page_log(other).await;
    assert!(log.is_empty(), "the refused host was contacted: {log:?}");
    h.shutdown().await;
}

/// An iframe is a document too: one from a host outside the list is never loaded, and the
/// render still completes (its blocked frame once left the page "loading" until the timeout,
/// about one render in four).
#[tokio::test]
async fn allow_list_applies_to_iframes() {
    let same_site = support::pages().await;
    let other_site = support::pages_on_another_site().await;
    let pages = support::pages().await;
    let h = Harness::start_with(|c| c.allowed_hosts = vec![pages.to_string()]).await;
    for other in [same_site, other_site, same_site, other_site] {
        let page = format!("http://{pages}/d-solo/scenes/x?delay=200&frame={other}");
        let res = h.get("/render", &render_query(page)).await;
        assert_eq!(res.status(), 200);
        let log = page_log(other).await;
        assert!(log.is_empty(), "an iframe loaded a refused host: {log:?}");
    }
    h.shutdown().await;
}

/// An iframe of another allowed site loads and the render completes (in a process of its own,
/// such a frame left the page "busy" until every render's timeout).
#[tokio::test]
async fn an_allowed_iframe_of_another_origin_renders() {
    let other = support::pages_on_another_site().await;
    let pages = support::pages().await;
    let h =
        Harness::start_with(|c| c.allowed_hosts = vec![pages.to_string(), other.to_string()]).await;
    for _ in 0..3 {
        let page = format!("http://{pages}/d-solo/scenes/x?delay=200&frame={other}");
        let res = h.get("/render", &render_query(page)).await;
        assert_eq!(res.status(), 200);
    }
    let log = page_log(other).await;
    assert!(!log.is_empty(), "the allowed iframe was not loaded");
    h.shutdown().await;
}

/// Two tenants, each token bound to its own Grafana.
struct Tenants {
    a: SocketAddr,
    b: SocketAddr,
}

impl TokenScopes for Tenants {
    fn scope(&self, token: &str) -> Option<Scope> {
        match token {
            "tenant-a" => Some(Scope::Hosts(vec![self.a.to_string()])),
            "tenant-b" => Some(Scope::Hosts(vec![self.b.to_string()])),
            _ => None,
        }
    }
}

#[tokio::test]
async fn a_tenant_token_renders_only_its_own_grafana() {
    let a = pages().await;
    let b = pages().await;
    let temp = tempfile::tempdir().unwrap();
    let c = config(&temp);
    let h = Harness::start_scoped(temp, c, Arc::new(Tenants { a, b })).await;
    let get = |token: &'static str, target: SocketAddr| {
        h.client
            .get(h.url("/render"))
            .header("X-Auth-Token", token)
            .query(&render_query(format!(
                "http://{target}/d-solo/scenes/x?delay=0"
            )))
            .send()
    };
    assert_eq!(get("tenant-a", a).await.unwrap().status(), 200);
    assert_eq!(get("tenant-b", b).await.unwrap().status(), 200);
    expect(
        get("tenant-a", b).await.unwrap(),
        403,
        "not an address this token may render",
    )
    .await;
    expect(
        get("tenant-b", a).await.unwrap(),
        403,
        "not an address this token may render",
    )
    .await;
    // A redirect from tenant A's Grafana to tenant B's is refused too.
    let hop = format!("http://{a}/render-test/redirect?to=http%3A%2F%2F{b}%2Fd-solo%2Fscenes%2Fx");
    let res = h
        .client
        .get(h.url("/render"))
        .header("X-Auth-Token", "tenant-a")
        .query(&render_query(hop))
        .send()
        .await
        .unwrap();
    expect(res, 403, "not an address this token may render").await;
    let b_pages = page_log(b)
        .await
        .into_iter()
        .filter(|hit| hit["path"] == "/d-solo/scenes/x")
        .count();
    assert_eq!(
        b_pages, 1,
        "tenant B's Grafana was reached with tenant A's token"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn a_page_that_never_gets_ready_is_408() {
    let pages = pages().await;
    let h = Harness::start().await;
    let mut q = render_query(format!("http://{pages}/d-solo/never/x"));
    // Long enough for the page to load on a loaded machine, so the time runs out waiting for
    // readiness, which the 408 names.
    q.push(("timeout", "5".to_owned()));
    expect(
        h.get("/render", &q).await,
        408,
        "did not finish within 5s: it was waiting for the page to be ready (Grafana has not reported the render complete)",
    )
    .await;
    // The renderer is fine afterwards.
    let ok = render_query(format!("http://{pages}/d-solo/scenes/x?delay=0"));
    assert_eq!(h.get("/render", &ok).await.status(), 200);
    h.shutdown().await;
}

#[tokio::test]
async fn a_full_queue_is_429_with_retry_after() {
    let pages = pages().await;
    let h = Harness::start_with(|c| {
        c.max_concurrency = 1;
        c.max_queue = 1;
    })
    .await;
    let mut slow = render_query(format!("http://{pages}/d-solo/never/x"));
    slow.push(("timeout", "20".to_owned()));
    let running = tokio::spawn({
        let (client, url, q) = (h.client.clone(), h.url("/render"), slow.clone());
        async move {
            client
                .get(url)
                .header("X-Auth-Token", TOKEN)
                .query(&q)
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    wait_for_metric(
        &h,
        |l| l == "pug_renderer_renders_in_flight 1",
        "one render in flight",
    )
    .await;
    let queued = tokio::spawn({
        let (client, url, q) = (h.client.clone(), h.url("/render"), slow.clone());
        async move {
            client
                .get(url)
                .header("X-Auth-Token", TOKEN)
                .query(&q)
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    wait_for_metric(
        &h,
        |l| l == "pug_renderer_queued_renders 1",
        "one queued render",
    )
    .await;

    let res = h.get("/render", &slow).await;
    assert_eq!(res.headers()["retry-after"], "5");
    expect(res, 429, "too busy").await;
    running.abort();
    queued.abort();
    h.shutdown().await;
}
