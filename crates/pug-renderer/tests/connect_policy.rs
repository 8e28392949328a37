//! The connect-time URL policy with real Chromium (security review F9): a page's WebSocket,
//! which request interception never sees, to a name of the metadata address reaches pug's proxy
//! and is refused there; so do a page's service worker's fetches of the metadata address
//! (which request interception never sees either); and Grafana's `X-Access-Token` reaches the
//! page's own origin, never another one.

mod support;

use std::sync::{Arc, Mutex};

use axum::http::{header, HeaderMap};
use axum::response::IntoResponse;
use axum::routing::get;
use support::Harness;

const PAGE: &str = r#"<!doctype html><html><body><script>
window.__grafanaRenderBindingSupported = true;
const done = () => window.__grafanaImageRendererMessageChannel(
  JSON.stringify({type: 'REPORT_RENDER_COMPLETE', data: {success: true}}));
const ws = new WebSocket('ws://169.254.169.254.nip.io/socket');
(async () => {
  let state = 'ws';
  await fetch('/token-probe?state=' + encodeURIComponent(state));
  await fetch('http://127.0.0.2:' + location.port + '/token-probe').catch(() => {});
  done();
})();
</script></body></html>"#;

#[tokio::test]
async fn a_pages_websocket_cannot_reach_a_refused_address_and_the_access_token_stays_home() {
    let tokens = Arc::new(Mutex::new(Vec::<(String, Option<String>)>::new()));
    let app = axum::Router::new()
        .route(
            "/page",
            get(|| async { ([(header::CONTENT_TYPE, "text/html")], PAGE) }),
        )
        .route(
            "/token-probe",
            get({
                let tokens = tokens.clone();
                move |headers: HeaderMap, uri: axum::http::Uri| {
                    let tokens = tokens.clone();
                    async move {
                        let host = headers
                            .get(header::HOST)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_owned();
                        if let Some(q) = uri.query() {
                            eprintln!("page state: {q}");
                        }
                        let token = headers
                            .get("x-access-token")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned);
                        tokens.lock().unwrap().push((host, token));
                        "ok".into_response()
                    }
                }
            }),
        );
    // One server on every loopback address, so 127.0.0.2 is another origin of the same port.
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let h = Harness::start().await;
    let res = h
        .client
        .get(h.url("/render"))
        .header("X-Auth-Token", support::TOKEN)
        .header("X-Access-Token", "grafana-access-token")
        .query(&[
            ("url", format!("http://127.0.0.1:{port}/page")),
            ("width", "200".to_owned()),
            ("height", "100".to_owned()),
            ("encoding", "png".to_owned()),
            ("timeout", "20".to_owned()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());

    let engine = h.renderer.as_ref().unwrap().engine();
    let refusals = engine.proxy_refusals();
    assert!(
        refusals
            .iter()
            .any(|l| l.starts_with("CONNECT 169.254.169.254.nip.io:80 ")),
        "the page's WebSocket did not reach the proxy: {refusals:?}"
    );

    // X-Access-Token went to the page's own origin only.
    let seen = tokens.lock().unwrap().clone();
    let own = format!("127.0.0.1:{port}");
    assert!(
        seen.iter()
            .any(|(host, t)| *host == own && t.as_deref() == Some("grafana-access-token")),
        "{seen:?}"
    );
    assert!(
        seen.iter().all(|(host, t)| *host == own || t.is_none()),
        "the access token reached another origin: {seen:?}"
    );
    h.shutdown().await;
}

/// The attack page: registers `/sw.js`, waits until the worker is active and controls the page,
/// then asks for `/through-worker` (an allowed, same-origin URL, which the worker answers with
/// a fetch of the metadata address), and reports each step to the test server.
const SW_PAGE: &str = r#"<!doctype html><html><body><script>
window.__grafanaRenderBindingSupported = true;
const done = () => window.__grafanaImageRendererMessageChannel(
  JSON.stringify({type: 'REPORT_RENDER_COMPLETE', data: {success: true}}));
const report = (what) => fetch('/report?' + new URLSearchParams({from: 'page', what}));
(async () => {
  try {
    await report('registering');
    await navigator.serviceWorker.register('/sw.js');
    await report('registered');
    await navigator.serviceWorker.ready;
    if (!navigator.serviceWorker.controller) {
      await new Promise((r) => navigator.serviceWorker.addEventListener('controllerchange', r));
    }
    await report('controlled');
    const answer = await (await fetch('/through-worker')).text();
    await report('through-worker: ' + answer);
  } catch (e) {
    await report('failed: ' + e);
  }
  done();
})();
</script></body></html>"#;

/// The worker: its install step fetches the metadata address (by address and by a name that
/// spells it), and its fetch handler answers `/through-worker` with another such fetch. Each
/// outcome is reported.
const SW_SCRIPT: &str = r#"
const report = (what) => fetch('/report?' + new URLSearchParams({from: 'worker', what}));
const attempt = (url) => fetch(url).then((r) => 'reached ' + r.status, (e) => 'failed ' + e);
self.addEventListener('install', (e) => e.waitUntil((async () => {
  for (const url of ['http://169.254.169.254/latest/meta-data/',
                     'http://169.254.169.254.nip.io/latest/meta-data/']) {
    await report('install ' + url + ' ' + await attempt(url));
  }
  await self.skipWaiting();
})()));
self.addEventListener('activate', (e) => e.waitUntil(self.clients.claim()));
self.addEventListener('fetch', (e) => {
  if (new URL(e.request.url).pathname === '/through-worker') {
    e.respondWith(attempt('http://169.254.169.254/latest/user-data').then((r) => new Response(r)));
  }
});
"#;

#[tokio::test]
async fn a_pages_service_worker_runs_and_its_fetches_of_a_refused_address_are_refused_by_the_proxy()
{
    let reports = Arc::new(Mutex::new(Vec::<String>::new()));
    let record = {
        let reports = reports.clone();
        move |q: axum::extract::Query<std::collections::HashMap<String, String>>| {
            let reports = reports.clone();
            async move {
                let from = q.get("from").map_or("", String::as_str);
                let what = q.get("what").map_or("", String::as_str);
                reports.lock().unwrap().push(format!("{from}: {what}"));
                "ok"
            }
        }
    };
    let app = axum::Router::new()
        .route(
            "/page",
            get(|| async { ([(header::CONTENT_TYPE, "text/html")], SW_PAGE) }),
        )
        .route(
            "/sw.js",
            get(|| async { ([(header::CONTENT_TYPE, "text/javascript")], SW_SCRIPT) }),
        )
        // Only the worker answers it: the server answering means the worker did not.
        .route(
            "/through-worker",
            get(|| async { "the server, not the worker" }),
        )
        .route("/report", get(record));
    let pages = support::serve(app).await;

    let h = Harness::start().await;
    let res = h
        .get(
            "/render",
            &[
                ("url", format!("http://{pages}/page")),
                ("width", "200".to_owned()),
                ("height", "100".to_owned()),
                ("encoding", "png".to_owned()),
                ("timeout", "20".to_owned()),
            ],
        )
        .await;
    let status = res.status();
    let body = res.text().await.unwrap();
    // The page reports its last step before it reports the render complete, so every report
    // is in when the render has returned.
    let seen = reports.lock().unwrap().clone();
    assert_eq!(status, 200, "{body}; reports: {seen:?}");

    // The worker registered, installed, took control of the page and answered its request:
    // the attack ran, in pug's render context.
    let refused = "failed TypeError: Failed to fetch";
    let expected = [
        "page: registering".to_owned(),
        "page: registered".to_owned(),
        format!("worker: install http://169.254.169.254/latest/meta-data/ {refused}"),
        format!("worker: install http://169.254.169.254.nip.io/latest/meta-data/ {refused}"),
        "page: controlled".to_owned(),
        format!("page: through-worker: {refused}"),
    ];
    for step in &expected {
        assert!(seen.contains(step), "missing {step:?}; reports: {seen:?}");
    }
    assert_eq!(seen.len(), expected.len(), "{seen:?}");

    // Each of the worker's fetches reached pug's proxy, which refused it. The page's own request
    // interception never saw them (it would have failed them before they reached the network,
    // so the proxy would never have seen them either).
    let refusals = h.renderer.as_ref().unwrap().engine().proxy_refusals();
    for url in [
        "http://169.254.169.254/latest/meta-data/",
        "http://169.254.169.254.nip.io/latest/meta-data/",
        "http://169.254.169.254/latest/user-data",
    ] {
        assert!(
            refusals.contains(&format!("GET {url} HTTP/1.1")),
            "the worker's fetch of {url} did not reach the proxy: {refusals:?}"
        );
    }
    h.shutdown().await;
}
