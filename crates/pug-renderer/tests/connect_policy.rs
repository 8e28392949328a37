//! The connect-time URL policy with real Chromium (security review F9): a page's WebSocket,
//! which request interception never sees, to a name of the metadata address reaches pug's proxy
//! and is refused there; and Grafana's `X-Access-Token` reaches the page's own origin, never
//! another one.

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
