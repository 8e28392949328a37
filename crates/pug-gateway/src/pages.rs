//! pug's own pages at the gateway (login, logout, errors): small, self-contained HTML for
//! browsers, `{"error": …}` JSON for API clients.

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

const STYLE: &str = "body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;background:#f4f5f7;\
color:#1f2328;margin:0;display:flex;min-height:100vh;align-items:center;justify-content:center}\
main{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:2rem 2.5rem;max-width:26rem;\
width:100%;box-shadow:0 1px 3px rgba(0,0,0,.06)}h1{font-size:1.25rem;margin:0 0 1rem}\
p{line-height:1.5}label{display:block;margin:.75rem 0 .25rem;font-size:.9rem}\
input[type=text],input[type=password]{width:100%;box-sizing:border-box;padding:.5rem;border:1px solid #d0d7de;\
border-radius:6px;font-size:1rem}button{margin-top:1.25rem;width:100%;padding:.6rem;border:0;border-radius:6px;\
background:#1f6feb;color:#fff;font-size:1rem;cursor:pointer}.err{color:#cf222e}.muted{color:#656d76;font-size:.85rem}";

/// Escapes text for HTML element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn page(title: &str, body: &str, refresh_secs: Option<u32>) -> String {
    let refresh = refresh_secs
        .map(|s| format!("<meta http-equiv=\"refresh\" content=\"{s}\">"))
        .unwrap_or_default();
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">{refresh}\
         <title>{} · pug</title><style>{STYLE}</style></head>\n<body><main>\n<h1>{}</h1>\n{body}\n\
         </main></body></html>\n",
        escape(title),
        escape(title)
    )
}

/// Whether the client is a browser (asks for HTML) rather than an API client.
pub fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"))
}

fn no_store(mut r: Response) -> Response {
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The headers of pug's sign-in and sign-out pages: never framed (a tenant's Grafana, or any
/// other site, cannot put pug's login form in a frame and overlay or script around it), and no
/// script, image or other resource of any origin (the pages have none). Error pages do not get
/// them: they are shown inside customers' embed iframes (a tenant starting, a refused link).
fn unframed(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; frame-ancestors 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// An error as a page for browsers or `{"error": message, …extra}` for API clients.
pub fn error(
    html: bool,
    status: StatusCode,
    title: &str,
    message: &str,
    extra: serde_json::Value,
) -> Response {
    let r = if html {
        let refresh = (status == StatusCode::SERVICE_UNAVAILABLE).then_some(5);
        let mut body = format!("<p>{}</p>", escape(message));
        if refresh.is_some() {
            body.push_str("<p class=\"muted\">This page reloads itself every few seconds.</p>");
        }
        (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            page(title, &body, refresh),
        )
            .into_response()
    } else {
        let mut json = serde_json::json!({ "error": message });
        if let (Some(obj), serde_json::Value::Object(more)) = (json.as_object_mut(), extra) {
            obj.extend(more);
        }
        (status, axum::Json(json)).into_response()
    };
    no_store(r)
}

/// The page a browser gets while its tenant wakes: its script holds a request to `wait_url`
/// (answered the moment the tenant is ready) and then continues to `next`, with no refresh
/// interval of its own. 503 with `Retry-After`, never cached. `next` is a path of the same
/// origin (anything else becomes `/`).
pub fn waking(tenant: &pug_types::TenantId, wait_url: &str, next: &str) -> Response {
    let next = if next.starts_with('/') && !next.starts_with("//") && !next.contains('\\') {
        next
    } else {
        "/"
    };
    // JSON strings inside <script>: `<` escaped, so no value can close the element.
    let js = |s: &str| {
        serde_json::to_string(s)
            .unwrap_or_default()
            .replace('<', "\\u003c")
    };
    let body = format!(
        "<p>Waking {t}'s Grafana…</p>\n<p class=\"muted\" id=\"pug-wake\">It was asleep because \
         nobody used it for a while. This page goes on by itself as soon as it is ready.</p>\n\
         <noscript><p><a href=\"{href}\">Continue</a> in a few seconds.</p></noscript>\n\
         <script>(function(){{var wait={wait},next={next_js};\
         function say(m){{document.getElementById(\"pug-wake\").textContent=m}}\
         function ask(){{var t=Date.now();fetch(wait,{{credentials:\"same-origin\",cache:\"no-store\",\
         headers:{{Accept:\"application/json\"}}}}).then(function(r){{\
         if(r.status===200){{location.replace(next);return}}\
         if(r.status===503){{setTimeout(ask,Date.now()-t<1000?1000:0);return}}\
         return r.json().then(function(b){{say(b.error||(\"cannot wake: HTTP \"+r.status))}})}})\
         .catch(function(){{setTimeout(ask,1000)}})}}ask()}})();</script>",
        t = escape(tenant.as_str()),
        href = escape(next),
        wait = js(wait_url),
        next_js = js(next),
    );
    let mut r = (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        page(&format!("Waking {tenant}"), &body, None),
    )
        .into_response();
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    no_store(r)
}

/// The sign-in form.
pub fn login(
    action: &str,
    tenant_hint: Option<&str>,
    next: &str,
    csrf: &str,
    message: Option<&str>,
    user: &str,
) -> String {
    let intro = match tenant_hint {
        Some(t) => format!(
            "<p>Sign in to reach <strong>{}</strong>'s Grafana.</p>",
            escape(t)
        ),
        None => "<p>Sign in to reach your Grafana.</p>".to_owned(),
    };
    let message = message
        .map(|m| format!("<p class=\"err\" role=\"alert\">{}</p>", escape(m)))
        .unwrap_or_default();
    let body = format!(
        "{intro}{message}<form method=\"post\" action=\"{action}\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <input type=\"hidden\" name=\"next\" value=\"{next}\">\
         <label for=\"user\">User</label><input type=\"text\" id=\"user\" name=\"user\" value=\"{user}\" \
         autocomplete=\"username\" autofocus required>\
         <label for=\"password\">Password</label><input type=\"password\" id=\"password\" name=\"password\" \
         autocomplete=\"current-password\" required>\
         <button type=\"submit\">Sign in</button></form>",
        action = escape(action),
        csrf = escape(csrf),
        next = escape(next),
        user = escape(user),
    );
    page("Sign in", &body, None)
}

/// The sign-out confirmation form.
pub fn logout(action: &str, csrf: &str) -> String {
    let body = format!(
        "<p>Sign out of pug? You will need to sign in again to reach your Grafana.</p>\
         <form method=\"post\" action=\"{}\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <button type=\"submit\">Sign out</button></form>",
        escape(action),
        escape(csrf)
    );
    page("Sign out", &body, None)
}

/// The page after signing out.
pub fn signed_out(login_url: &str) -> String {
    page(
        "Signed out",
        &format!(
            "<p>You are signed out.</p><p><a href=\"{}\">Sign in again</a></p>",
            escape(login_url)
        ),
        None,
    )
}

/// An HTML page of pug's own (sign-in, sign-out) with `status`.
pub fn html(status: StatusCode, body: String) -> Response {
    unframed(no_store(
        Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
            .body(Body::from(body))
            .expect("static headers are valid"),
    ))
}
