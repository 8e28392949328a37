//! Render-test pages: what a renderer sees when Grafana asks it to render a panel, a dashboard
//! or a CSV export (research/renderer.md §3 and §7). Test double only: the pages imitate the
//! *signals* Grafana's frontend gives a renderer, not Grafana's UI.
//!
//! Routes (relative to the sub path), all stateless except the request log:
//! - `GET /d-solo/{style}/{slug}?delay=MS&qdelay=MS&probe=HOST:PORT&frame=HOST:PORT` — one panel filling the
//!   viewport. Its query (`/api/ds/query`) answers after `qdelay` ms, then the chart is drawn
//!   `delay` ms later (a timer, so network idleness alone would capture a blank panel), in solid
//!   red `#e02f44`. `style` is how the page reports readiness:
//!   `binding` (Grafana ≥ 12: `__grafanaRenderBindingSupported` + `REPORT_RENDER_COMPLETE` through
//!   `__grafanaImageRendererMessageChannel`), `scenes` (`__grafanaSceneContext` +
//!   `__grafanaRunningQueryCount`), `legacy` (`.panel-solo` + `window.panelsRendered`), `never`
//!   (binding supported, never reports), or `tz` (reports its timezone, offset, language and any
//!   storage or cookie an earlier page left to `/render-test/report`, leaves some itself, then draws; readiness as `legacy`). `probe` adds an image from another host, `frame` an iframe of another host's panel, to see where
//!   the `renderKey` cookie goes.
//! - `GET /d/{style}/{slug}?panels=N&qdelay=MS` — a dashboard of N panels (300 px each, under a
//!   40 px header) inside Grafana's `#page-scrollbar`; each panel runs its query only when it
//!   scrolls into view (lazy, as Grafana's), then draws red. `style`: `scenes` or `binding`
//!   (both signals, as Grafana 12).
//! - `GET /d-csv/{uid}/{slug}?delay=MS&name=FILE` — after `delay` ms the page downloads a CSV
//!   file named `name` (default `data.csv`), as Grafana's panel "Download CSV" does.
//! - `GET /api/ds/query?delay=MS` — the data source query: JSON after `delay` ms.
//! - `GET /render-test/redirect?to=URL` — 302 to `URL`.
//! - `GET /render-test/probe.png` — a 1×1 PNG.
//! - `GET /render-test/report?…` — pages report what they see here (logged).
//! - `GET /render-test/log` — JSON list of every request above: host, path and query, cookie
//!   header, `Accept-Language`.
//!
//! Authentication, as Grafana's `render` auth client: the `/d*` pages need a `renderKey` cookie
//! (any value here; Grafana checks it against its cache) and otherwise serve a grey login page
//! with no chart.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

/// Every request to these routes, oldest first.
#[derive(Default)]
pub struct RenderLog {
    hits: Mutex<Vec<Value>>,
}

/// The render-test routes, with their own request log.
pub fn routes() -> Router {
    let log = Arc::new(RenderLog::default());
    Router::new()
        .route("/d-solo/{style}/{slug}", get(solo))
        .route("/d/{style}/{slug}", get(dashboard))
        .route("/d-csv/{uid}/{slug}", get(csv_page))
        .route("/api/ds/query", get(query))
        .route("/render-test/redirect", get(redirect))
        .route("/render-test/probe.png", get(probe))
        .route(
            "/render-test/report",
            get(|| async { StatusCode::NO_CONTENT }),
        )
        .route("/render-test/log", get(show_log))
        .route_layer(middleware::from_fn_with_state(log.clone(), record))
        .with_state(log)
}

async fn record(State(log): State<Arc<RenderLog>>, req: Request, next: Next) -> Response {
    let h = req.headers();
    let text = |name: header::HeaderName| {
        h.get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let hit = json!({
        "host": text(header::HOST),
        "path": req.uri().path(),
        "query": req.uri().query().unwrap_or_default(),
        "cookie": text(header::COOKIE),
        "accept_language": text(header::ACCEPT_LANGUAGE),
    });
    if req.uri().path() != "/render-test/log" {
        if let Ok(mut hits) = log.hits.lock() {
            hits.push(hit);
        }
    }
    next.run(req).await
}

async fn show_log(State(log): State<Arc<RenderLog>>) -> Json<Value> {
    let hits = log.hits.lock().map(|h| h.clone()).unwrap_or_default();
    Json(Value::Array(hits))
}

fn has_render_key(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .any(|c| c.trim().starts_with("renderKey=") && c.trim().len() > "renderKey=".len())
}

const LOGIN_PAGE: &str = "<!doctype html><html><head><title>Grafana</title></head>\
<body style=\"margin:0;background:#888\"><h1>Log in</h1></body></html>";

/// Script shared by the pages: the sub path, parameters, drawing, and the readiness signals.
const COMMON_JS: &str = r#"
const params = new URLSearchParams(location.search);
const num = (name, dflt) => { const v = params.get(name); return v === null ? dflt : Number(v); };
const base = location.pathname.replace(/\/(d|d-solo|d-csv)\/.*$/, '');
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
function draw(canvas) {
  const r = canvas.getBoundingClientRect();
  canvas.width = Math.max(1, Math.round(r.width));
  canvas.height = Math.max(1, Math.round(r.height));
  const c = canvas.getContext('2d');
  c.fillStyle = '#e02f44';
  c.fillRect(0, 0, canvas.width, canvas.height);
}
function reportComplete() {
  window.__grafanaImageRendererMessageChannel(
    JSON.stringify({ type: 'REPORT_RENDER_COMPLETE', data: { success: true } }));
}
async function runQuery() {
  const res = await fetch(base + '/api/ds/query?delay=' + num('qdelay', 0));
  return res.json();
}
"#;

async fn solo(Path((style, _slug)): Path<(String, String)>, headers: HeaderMap) -> Response {
    if !has_render_key(&headers) {
        return Html(LOGIN_PAGE).into_response();
    }
    let style_js = serde_json::to_string(&style).unwrap_or_default();
    Html(format!(
        r#"<!doctype html><html><head><title>panel</title><style>
html, body {{ margin: 0; height: 100%; background: #ffffff; }}
.panel-solo {{ width: 100vw; height: 100vh; }}
canvas {{ display: block; width: 100%; height: 100%; }}
</style></head><body><div class="panel-solo"><canvas id="chart"></canvas></div>
<script>{COMMON_JS}
const style = {style_js};
if (params.get('probe')) {{
  const img = new Image(); img.src = 'http://' + params.get('probe') + '/render-test/probe.png';
  img.style.position = 'absolute'; img.style.width = '1px'; document.body.appendChild(img);
}}
if (params.get('frame')) {{
  const f = document.createElement('iframe');
  f.src = 'http://' + params.get('frame') + '/d-solo/scenes/framed?delay=0';
  f.style.position = 'absolute'; f.style.width = '10px'; f.style.height = '10px';
  document.body.appendChild(f);
}}
if (style === 'binding' || style === 'never') window.__grafanaRenderBindingSupported = true;
if (style === 'scenes') {{ window.__grafanaSceneContext = {{}}; window.__grafanaRunningQueryCount = 0; }}
if (style === 'legacy' || style === 'tz') window.panelsRendered = 0;
(async () => {{
  if (style === 'never') return;
  if (style === 'scenes') window.__grafanaRunningQueryCount++;
  // As Grafana's query runner: a failed query ends too (the panel shows the error), it does
  // not leave the running count up forever.
  try {{ await runQuery(); }} catch (e) {{ console.error('query failed', e); }}
  await sleep(num('delay', 300));
  if (style === 'tz') {{
    const jan = new Date(Date.UTC(2024, 0, 15, 12)).getTimezoneOffset();
    // What an earlier page may have left (a renderer must not let it through), then leave
    // some of the same for the next one.
    const q = new URLSearchParams({{
      tz: Intl.DateTimeFormat().resolvedOptions().timeZone, offset: String(jan),
      language: navigator.language,
      stored: (localStorage.getItem('left') || '') + (sessionStorage.getItem('left') || ''),
      cookies: document.cookie,
    }});
    localStorage.setItem('left', 'local');
    sessionStorage.setItem('left', 'session');
    document.cookie = 'left=1; path=/; max-age=3600';
    await fetch(base + '/render-test/report?' + q);
  }}
  draw(document.getElementById('chart'));
  if (style === 'binding') reportComplete();
  if (style === 'scenes') window.__grafanaRunningQueryCount--;
  if (style === 'legacy' || style === 'tz') window.panelsRendered++;
}})();
</script></body></html>"#
    ))
    .into_response()
}

async fn dashboard(Path((style, _slug)): Path<(String, String)>, headers: HeaderMap) -> Response {
    if !has_render_key(&headers) {
        return Html(LOGIN_PAGE).into_response();
    }
    let style_js = serde_json::to_string(&style).unwrap_or_default();
    Html(format!(
        r#"<!doctype html><html><head><title>dashboard</title><style>
html, body {{ margin: 0; height: 100%; overflow: hidden; background: #ffffff; }}
#page-scrollbar {{ height: 100vh; overflow-y: auto; }}
header {{ height: 40px; background: #ffffff; }}
.panel-container {{ height: 300px; box-sizing: border-box; padding: 10px; }}
canvas {{ display: block; width: 100%; height: 100%; }}
</style></head><body><div id="page-scrollbar"><header></header><div id="grid"></div></div>
<script>{COMMON_JS}
const style = {style_js};
window.__grafanaSceneContext = {{}};
window.__grafanaRunningQueryCount = 0;
if (style === 'binding') window.__grafanaRenderBindingSupported = true;
const grid = document.getElementById('grid');
let reported = false;
function maybeReport() {{
  if (style === 'binding' && !reported && window.__grafanaRunningQueryCount === 0) {{
    reported = true; reportComplete();
  }}
}}
const observer = new IntersectionObserver((entries) => {{
  for (const e of entries) {{
    if (!e.isIntersecting || e.target.dataset.started) continue;
    e.target.dataset.started = '1';
    window.__grafanaRunningQueryCount++;
    runQuery().then(() => {{
      draw(e.target.querySelector('canvas'));
      window.__grafanaRunningQueryCount--;
      maybeReport();
    }});
  }}
}});
for (let i = 0; i < num('panels', 6); i++) {{
  const p = document.createElement('div');
  p.className = 'panel-container';
  p.appendChild(document.createElement('canvas'));
  grid.appendChild(p);
  observer.observe(p);
}}
</script></body></html>"#
    ))
    .into_response()
}

async fn csv_page(headers: HeaderMap) -> Response {
    if !has_render_key(&headers) {
        return Html(LOGIN_PAGE).into_response();
    }
    Html(format!(
        r#"<!doctype html><html><head><title>csv</title></head><body>
<script>{COMMON_JS}
(async () => {{
  await sleep(num('delay', 200));
  const rows = await runQuery();
  const text = 'time,value\n' + rows.values.map((v, i) => i + ',' + v).join('\n') + '\n';
  const a = document.createElement('a');
  a.href = URL.createObjectURL(new Blob([text], {{ type: 'text/csv' }}));
  a.download = params.get('name') || 'data.csv';
  document.body.appendChild(a);
  a.click();
}})();
</script></body></html>"#
    ))
    .into_response()
}

#[derive(serde::Deserialize)]
struct DelayQuery {
    delay: Option<u64>,
}

async fn query(Query(q): Query<DelayQuery>) -> Json<Value> {
    let delay = q.delay.unwrap_or(0).min(60_000);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    Json(json!({ "values": [1.5, 2.5, 4.0] }))
}

#[derive(serde::Deserialize)]
struct RedirectQuery {
    to: String,
}

async fn redirect(Query(q): Query<RedirectQuery>) -> Response {
    (StatusCode::FOUND, [(header::LOCATION, q.to)]).into_response()
}

/// A 1×1 transparent PNG.
const PIXEL_PNG: [u8; 67] = [
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x15, 0xc4,
    0x89, 0x00, 0x00, 0x00, 0x0a, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0x00, 0x01, 0x00, 0x00,
    0x05, 0x00, 0x01, 0x0d, 0x0a, 0x2d, 0xb4, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae,
    0x42, 0x60, 0x82,
];

async fn probe() -> Response {
    ([(header::CONTENT_TYPE, "image/png")], PIXEL_PNG.as_slice()).into_response()
}
