//! The gateway's user story against the real `pug` binary, with grafana-standin as Grafana:
//! users, grants, login through the gateway, embed tokens, WebSockets, metrics, revocation.

mod support;

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use pug_types::ExposeSecret;
use serde_json::Value;
use support::{login, set_cookie, Pug};

const T: Duration = Duration::from_secs(60);

async fn get(url: &str, cookie: &str) -> (u16, Value) {
    let r = pug_test_support::http::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(url)
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
fn people_reach_their_own_tenant_through_the_gateway() {
    let pug = Pug::start((22000, 22099), &[]);
    pug.ok(&["tenant", "create", "acme", "--version", "11.3.0"]);
    pug.ok(&["tenant", "create", "bob", "--version", "11.3.0"]);
    pug.wait_phase("acme", "ready", T);
    pug.wait_phase("bob", "ready", T);

    pug.create_user("alice", "alice-password");
    pug.create_user("bob", "bob-password");
    let out = pug.ok(&["user", "grant", "alice", "acme", "--role", "Editor"]);
    assert!(out.contains("alice is Editor in acme"), "{out}");
    pug.ok(&["user", "grant", "bob", "bob", "--role", "Viewer"]);
    let list = pug.ok(&["user", "list"]);
    assert!(
        list.contains("alice") && list.contains("acme (Editor)"),
        "{list}"
    );

    // Bad input is refused with a clear message and changes nothing.
    let err = pug.fails(&["user", "grant", "alice", "nosuch", "--role", "Editor"]);
    assert!(err.contains("nosuch"), "{err}");
    let err = pug.fails(&["user", "grant", "alice", "bob", "--role", "Superuser"]);
    assert!(err.contains("Viewer, Editor or Admin"), "{err}");
    let err = pug.fails(&["user", "create", "x", "--email", "x@example.com"]);
    assert!(err.contains("--password-stdin"), "{err}");

    let key: Value = serde_json::from_str(&pug.ok(&[
        "embed-key",
        "create",
        "--name",
        "webapp",
        "--tenant",
        "acme",
        "-o",
        "json",
    ]))
    .unwrap();
    let keys = pug.ok(&["embed-key", "list"]);
    assert!(keys.contains("webapp") && !keys.contains(key["key"].as_str().unwrap()));

    // An EdDSA key: the webapp keeps its Ed25519 private key; pug gets only the public key.
    let (ed_private, ed_public) = pug_auth::embed::generate_ed25519();
    let public_file = pug.data.parent().unwrap().join("webapp.pub");
    std::fs::write(&public_file, &ed_public).unwrap();
    let ed_key: Value = serde_json::from_str(&pug.ok(&[
        "embed-key",
        "create",
        "--name",
        "webapp-ed",
        "--algorithm",
        "EdDSA",
        "--public-key",
        public_file.to_str().unwrap(),
        "-o",
        "json",
    ]))
    .unwrap();
    assert_eq!(ed_key["algorithm"], "EdDSA");
    assert!(ed_key.get("private_key").is_none() && ed_key.get("key").is_none());
    std::fs::write(&public_file, "-----BEGIN PUBLIC KEY-----\nnope\n").unwrap();
    let err = pug.fails(&[
        "embed-key",
        "create",
        "--algorithm",
        "EdDSA",
        "--public-key",
        public_file.to_str().unwrap(),
    ]);
    assert!(err.contains("Ed25519 public key"), "{err}");

    let url = pug.url.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let alice = login(&url, "alice", "alice-password")
            .await
            .expect("alice signs in");
        let bob = login(&url, "bob", "bob-password")
            .await
            .expect("bob signs in");
        assert!(login(&url, "alice", "wrong-password").await.is_none());

        let (s, u) = get(&format!("{url}/t/acme/api/user"), &alice).await;
        assert_eq!(s, 200, "{u}");
        assert_eq!(u["login"], "alice");
        assert_eq!(u["role"], "Editor");
        let (s, u) = get(&format!("{url}/t/bob/api/user"), &bob).await;
        assert_eq!((s, u["login"].as_str()), (200, Some("bob")));
        assert_eq!(get(&format!("{url}/t/bob/api/user"), &alice).await.0, 403);
        assert_eq!(get(&format!("{url}/t/acme/api/user"), &bob).await.0, 403);
        assert_eq!(
            get(&format!("{url}/t/acme/%2e%2e/bob/api/user"), &alice)
                .await
                .0,
            403
        );

        // Grafana's page is served under the tenant's sub path, signed in as alice.
        let (s, page) = get(&format!("{url}/t/acme/"), &alice).await;
        assert_eq!(s, 200);
        let page = page.as_str().unwrap().to_owned();
        assert!(page.contains("<span id=\"login\">alice</span>"), "{page}");

        // An embed token from the webapp signs carol in to acme.
        let claims = pug_auth::EmbedClaims {
            tenant: "acme".into(),
            sub: "carol".into(),
            email: "carol@example.com".into(),
            role: "Viewer".into(),
            exp: pug_store_now_secs() + 300,
            name: None,
            jti: None,
        };
        let token = pug_auth::embed::sign(
            key["id"].as_str().unwrap(),
            key["key"].as_str().unwrap(),
            &claims,
        );
        let r = pug_test_support::http::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
            .get(format!("{url}/t/acme/?pug_token={token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303);
        assert_eq!(r.headers()["location"], "/t/acme/");
        let carol = set_cookie(&r, "pug_session").unwrap();
        let (s, u) = get(&format!("{url}/t/acme/api/user"), &carol).await;
        let carol_login = format!("embed:{}:carol", key["id"].as_str().unwrap());
        assert_eq!((s, u["login"].as_str()), (200, Some(carol_login.as_str())));
        assert_eq!(get(&format!("{url}/t/bob/"), &carol).await.0, 403);

        // …and an EdDSA token signs dave in.
        let dave = pug_auth::EmbedClaims {
            sub: "dave".into(),
            email: "dave@example.com".into(),
            ..claims.clone()
        };
        let token = pug_auth::embed::sign_eddsa(
            ed_key["id"].as_str().unwrap(),
            ed_private.expose_secret(),
            &dave,
        )
        .unwrap();
        let r = pug_test_support::http::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
            .get(format!("{url}/t/acme/?pug_token={token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303);
        let dave = set_cookie(&r, "pug_session").unwrap();
        let (s, u) = get(&format!("{url}/t/acme/api/user"), &dave).await;
        let dave_login = format!("embed:{}:dave", ed_key["id"].as_str().unwrap());
        assert_eq!((s, u["login"].as_str()), (200, Some(dave_login.as_str())));

        // Grafana Live's WebSocket passes through.
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        use tokio_tungstenite::tungstenite::Message;
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

        // pug's own endpoints are still pug's.
        assert_eq!(get(&format!("{url}/healthz"), "").await.0, 200);
        // /metrics takes an API token (issue 14, hole 10).
        assert_eq!(get(&format!("{url}/metrics"), "").await.0, 401);
        let metrics = pug_test_support::http::client()
            .get(format!("{url}/metrics"))
            .bearer_auth(pug.token())
            .send()
            .await
            .unwrap();
        assert_eq!(metrics.status().as_u16(), 200);
        let metrics = metrics.text().await.unwrap();
        assert!(
            metrics.contains("pug_gateway_requests_total{tenant=\"acme\",code_class=\"2xx\"}"),
            "{metrics}"
        );
        assert!(metrics.contains("pug_gateway_logins_total{result=\"success\"} 2"));
        assert!(metrics.contains("pug_gateway_requests_in_flight"));
    });

    // Revoking access takes effect within the gateway's cache time.
    pug.ok(&["user", "revoke", "alice", "acme"]);
    rt.block_on(async {
        let alice = login(&url, "alice", "alice-password").await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            if get(&format!("{url}/t/acme/api/user"), &alice).await.0 == 403 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "revocation never took effect"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

fn pug_store_now_secs() -> i64 {
    pug_store::now_ms() / 1000
}
