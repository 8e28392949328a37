//! Attacks on sessions and what the gateway forwards (issue 14 holes 3 embed side, 7, 9, 15;
//! security review F3, F7, F10, F16), against the real `pug` binary with grafana-standin as
//! Grafana. The store- and gateway-level attacks on sessions (F12 key-id flood, F13 table
//! growth) are in `crates/pug-gateway/tests/sessions_attacks.rs` and
//! `crates/pug-store/tests/sessions.rs`.

use std::time::Duration;

use pug_auth::EmbedClaims;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{wait_for, Pug};

const T: Duration = Duration::from_secs(60);
/// How long a revocation may take to reach a request: the gateway's 5 s session cache plus
/// its 1 s refresh.
const REVOCATION: Duration = Duration::from_secs(7);

/// pug with tenant acme ready, pug user alice (Editor there, `alice@example.com`) and an
/// HS256 embed key for any tenant: (pug, key id, key).
fn setup(ports: (u16, u16)) -> (Pug, String, String) {
    let pug = Pug::start(ports, &[]);
    pug.ok(&["tenant", "create", "acme", "--version", "11.3.0"]);
    pug.wait_phase("acme", "ready", T);
    let (s, b) = pug.api(
        "POST",
        "/api/v1/users",
        Some(json!({"name": "alice", "email": "alice@example.com", "password": "alice-password"})),
    );
    assert_eq!(s, 201, "{b}");
    let (s, b) = pug.api(
        "PUT",
        "/api/v1/users/alice/tenants/acme",
        Some(json!({"role": "Editor"})),
    );
    assert!(s < 300, "{b}");
    let (s, key) = pug.api(
        "POST",
        "/api/v1/embed-keys",
        Some(json!({"name": "webapp"})),
    );
    assert_eq!(s, 201, "{key}");
    let (id, secret) = (
        key["id"].as_str().unwrap().to_owned(),
        key["key"].as_str().unwrap().to_owned(),
    );
    (pug, id, secret)
}

fn claims(sub: &str, email: &str, jti: Option<&str>) -> EmbedClaims {
    EmbedClaims {
        tenant: "acme".into(),
        sub: sub.into(),
        email: email.into(),
        role: "Viewer".into(),
        exp: pug_store::now_ms() / 1000 + 300,
        name: None,
        jti: jti.map(str::to_owned),
    }
}

fn client() -> reqwest::Client {
    pug_test_support::http::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Opens `/t/acme/?pug_token=<token>` as a browser does: (status, `pug_session=…`, page).
async fn sign_in(url: &str, token: &str) -> (u16, Option<String>, String) {
    let r = client()
        .get(format!("{url}/t/acme/?pug_token={token}"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let cookie = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .find(|p| p.starts_with("pug_session=") && p.len() > "pug_session=".len())
        .map(str::to_owned);
    (status, cookie, r.text().await.unwrap())
}

/// GET `path` under acme with `cookie`: (status, JSON body).
async fn get(url: &str, path: &str, cookie: &str) -> (u16, Value) {
    let r = client()
        .get(format!("{url}/t/acme{path}"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[test]
fn embed_subject_admin_or_a_pug_users_name_does_not_become_them_in_grafana() {
    let (pug, kid, key) = setup((26400, 26419));
    rt().block_on(async {
        let attempts = [
            ("admin", "admin@localhost"),
            ("Admin", "admin@localhost"),
            ("alice", "alice@example.com"),
            ("mallory", "admin@localhost"),
            ("mallory", "alice@example.com"),
        ];
        for (sub, email) in attempts {
            let token = pug_auth::embed::sign(&kid, &key, &claims(sub, email, None));
            let (status, cookie, page) = sign_in(&pug.url, &token).await;
            let Some(cookie) = cookie else {
                // Refused outright (`Admin` is not a valid subject): not admin either.
                assert_eq!(status, 401, "{sub}: {page}");
                continue;
            };
            let (s, user) = get(&pug.url, "/api/user", &cookie).await;
            assert_eq!(s, 200, "{user}");
            let login = user["login"].as_str().unwrap().to_ascii_lowercase();
            let got_email = user["email"].as_str().unwrap_or("").to_ascii_lowercase();
            assert!(
                login != "admin" && login != "alice",
                "token sub {sub:?} reached Grafana as login {login:?}"
            );
            assert!(
                got_email != "admin@localhost" && got_email != "alice@example.com",
                "token email {email:?} reached Grafana as {got_email:?}"
            );
            assert_eq!(user["isGrafanaAdmin"], false, "{user}");
            // What Grafana's auth proxy was told, header by header.
            let (_, seen) = get(&pug.url, "/api/standin/headers", &cookie).await;
            let h = &seen["headers"];
            assert_eq!(
                h["x-webauth-user"],
                format!("embed:{kid}:{}", sub),
                "{seen}"
            );
            assert_eq!(
                h["x-webauth-email"],
                format!("{}+{kid}@embed.invalid", sub),
                "{seen}"
            );
        }
    });
}

#[test]
fn parent_domain_sso_cookie_never_reaches_grafana() {
    let (pug, kid, key) = setup((26420, 26439));
    rt().block_on(async {
        let token = pug_auth::embed::sign(&kid, &key, &claims("carol", "c@example.com", None));
        let (_, cookie, _) = sign_in(&pug.url, &token).await;
        let cookie = cookie.expect("carol signs in");
        let jar = format!(
            "_oauth2_proxy=secret-sso; {cookie}; grafana_session_acme=gs; CF_Authorization=cf; \
             grafana_session_expiry=1; grafana_session_bob=other-tenant"
        );
        let (s, seen) = get(&pug.url, "/api/standin/headers", &jar).await;
        assert_eq!(s, 200, "{seen}");
        assert_eq!(
            seen["headers"]["cookie"], "grafana_session_acme=gs; grafana_session_expiry=1",
            "only Grafana's own cookies of this tenant reach it: {seen}"
        );
    });
}

#[test]
fn deleting_an_embed_key_ends_the_sessions_it_minted() {
    let (pug, kid, key) = setup((26440, 26459));
    let url = pug.url.clone();
    let cookie = rt().block_on(async {
        let token = pug_auth::embed::sign(&kid, &key, &claims("carol", "c@example.com", None));
        let (_, cookie, page) = sign_in(&url, &token).await;
        let cookie = cookie.unwrap_or_else(|| panic!("carol signs in: {page}"));
        assert_eq!(get(&url, "/api/user", &cookie).await.0, 200);
        cookie
    });
    let (s, b) = pug.api("DELETE", &format!("/api/v1/embed-keys/{kid}"), None);
    assert_eq!(s, 204, "{b}");
    wait_for(REVOCATION, "the session to end with its key", || {
        let (s, _) = rt().block_on(get(&url, "/api/user", &cookie));
        (s != 200).then_some(())
    });
    let (s, _) = rt().block_on(get(&url, "/api/user", &cookie));
    assert_eq!(s, 401);
}

#[test]
fn a_tenant_created_again_does_not_honour_the_old_tenants_sessions() {
    let (pug, kid, key) = setup((26460, 26479));
    let url = pug.url.clone();
    let cookie = rt().block_on(async {
        let token = pug_auth::embed::sign(&kid, &key, &claims("carol", "c@example.com", None));
        let (_, cookie, page) = sign_in(&url, &token).await;
        cookie.unwrap_or_else(|| panic!("carol signs in: {page}"))
    });
    assert_eq!(rt().block_on(get(&url, "/api/user", &cookie)).0, 200);
    pug.ok(&["tenant", "delete", "acme"]);
    wait_for(T, "acme to be gone", || {
        (!pug.cli(&["tenant", "show", "acme"]).status.success()).then_some(())
    });
    pug.ok(&["tenant", "create", "acme", "--version", "11.3.0"]);
    pug.wait_phase("acme", "ready", T);
    wait_for(REVOCATION, "the old session to be refused", || {
        let (s, _) = rt().block_on(get(&url, "/api/user", &cookie));
        (s != 200).then_some(())
    });
    rt().block_on(async {
        assert_eq!(get(&url, "/api/user", &cookie).await.0, 401);
        // The new acme's own sessions work.
        let token = pug_auth::embed::sign(&kid, &key, &claims("carol", "c@example.com", None));
        let (_, fresh, page) = sign_in(&url, &token).await;
        let fresh = fresh.unwrap_or_else(|| panic!("carol signs in again: {page}"));
        assert_eq!(get(&url, "/api/user", &fresh).await.0, 200);
    });
}

#[test]
fn a_replayed_embed_token_is_refused() {
    let (pug, kid, key) = setup((26480, 26499));
    rt().block_on(async {
        let once = pug_auth::embed::sign(
            &kid,
            &key,
            &claims("carol", "c@example.com", Some("4f1c0a7e-replay")),
        );
        let (s, first, _) = sign_in(&pug.url, &once).await;
        assert_eq!((s, first.is_some()), (303, true));
        // The same link again (browser history, a shared URL, a proxy log).
        let (s, second, page) = sign_in(&pug.url, &once).await;
        assert_eq!((s, second), (401, None), "{page}");
        assert!(page.contains("already used"), "{page}");
        // The first session still works.
        assert_eq!(get(&pug.url, "/api/user", &first.unwrap()).await.0, 200);

        // Without a jti a token still signs in, but its session ends with the token.
        let loose = pug_auth::embed::sign(&kid, &key, &claims("dave", "d@example.com", None));
        let r = client()
            .get(format!("{}/t/acme/?pug_token={loose}", pug.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303);
        let max_age: u64 = r
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with("pug_session="))
            .and_then(|v| v.split("Max-Age=").nth(1))
            .and_then(|v| v.split(';').next())
            .and_then(|v| v.parse().ok())
            .expect("a session cookie with Max-Age");
        assert!(
            max_age <= 300,
            "a jti-less token's session lives {max_age} s"
        );
    });
}

/// Sends `request` as is on a fresh connection to `addr`; returns everything answered until
/// the connection closes (bounded by a timeout: a pinned request fails the test).
async fn raw(addr: &str, request: String) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    assert!(read.is_ok(), "the request was pinned; got so far: {text}");
    text
}

/// The JSON body of a raw HTTP/1.1 answer (plain or chunked).
fn body_json(answer: &str) -> Value {
    let (head, body) = answer.split_once("\r\n\r\n").expect("a complete answer");
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            out.push_str(&tail[..n]);
            rest = &tail[n + 2..];
        }
        out
    } else {
        body.to_owned()
    };
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {answer}"))
}

#[test]
fn upgrade_requests_neither_pin_grafana_nor_tunnel_anything_but_websockets() {
    let (pug, kid, key) = setup((26500, 26519));
    let addr = pug.url.trim_start_matches("http://").to_owned();
    rt().block_on(async {
        let token = pug_auth::embed::sign(&kid, &key, &claims("carol", "c@example.com", None));
        let (_, cookie, _) = sign_in(&pug.url, &token).await;
        let cookie = cookie.expect("carol signs in");

        // A WebSocket handshake to a path that is no WebSocket, promising a body it never
        // sends: Grafana must not be told to wait for 100000 bytes.
        let answer = raw(
            &addr,
            format!(
                "GET /t/acme/api/standin/headers HTTP/1.1\r\nHost: {addr}\r\nCookie: {cookie}\r\n\
                 Connection: Upgrade, close\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nContent-Length: 100000\r\n\r\n"
            ),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let seen = body_json(&answer);
        let h = &seen["headers"];
        assert!(
            h.get("content-length").is_none() && h.get("transfer-encoding").is_none(),
            "the upstream was promised a body: {seen}"
        );
        assert_eq!(h["upgrade"], "websocket", "{seen}");

        // Any other upgrade is not passed on: Grafana sees a plain request.
        let answer = raw(
            &addr,
            format!(
                "GET /t/acme/api/standin/headers HTTP/1.1\r\nHost: {addr}\r\nCookie: {cookie}\r\n\
                 Connection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\n\
                 HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
            ),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let seen = body_json(&answer);
        let h = &seen["headers"];
        assert!(
            h.get("upgrade").is_none() && h.get("http2-settings").is_none(),
            "an h2c upgrade reached Grafana: {seen}"
        );
        assert!(
            !h["connection"]
                .as_str()
                .unwrap_or("")
                .to_ascii_lowercase()
                .contains("upgrade"),
            "{seen}"
        );

        // WebSockets still pass (Grafana Live).
        use futures::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        use tokio_tungstenite::tungstenite::Message;
        let mut req = format!("ws://{addr}/t/acme/api/live/ws")
            .into_client_request()
            .unwrap();
        req.headers_mut().insert("cookie", cookie.parse().unwrap());
        let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
        assert_eq!(resp.status(), 101);
        ws.send(Message::Text("ping".into())).await.unwrap();
        let echoed = ws.next().await.unwrap().unwrap();
        assert!(echoed.to_text().unwrap().contains("ping"), "{echoed:?}");
    });
}
