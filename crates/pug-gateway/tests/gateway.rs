//! The gateway against real grafana-standin replicas: who reaches which tenant, what headers
//! arrive, traversal variants, embed tokens, WebSockets, failover, streaming, 503s, login
//! throttling, CSRF, logout, host mode and metrics.

mod support;

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use pug_auth::EmbedClaims;
use pug_config::GatewayMode;
use pug_types::{Phase, TenantId};
use serde_json::{json, Value};
use support::{no_redirects, raw_get, set_cookie, sign_in_on_host, Env, Standin, Trap};

/// acme (alice, Editor) and bob (bob, Viewer), each with one stand-in replica.
async fn two_tenants() -> (Env, Standin, Standin) {
    let env = Env::start(GatewayMode::Path).await;
    let acme = Standin::start(&env.root_url("acme"), true).await;
    let bob = Standin::start(&env.root_url("bob"), true).await;
    env.tenant("acme", Phase::Ready, &[&acme.addr]).await;
    env.tenant("bob", Phase::Ready, &[&bob.addr]).await;
    env.user("alice", "password-alice", &[("acme", "Editor")])
        .await;
    env.user("bob", "password-bob", &[("bob", "Viewer")]).await;
    (env, acme, bob)
}

async fn get_json(url: &str, cookie: &str) -> (u16, Value) {
    let r = no_redirects()
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_person_reaches_only_their_tenant() {
    let (env, _acme, _bob) = two_tenants().await;
    let alice = env.login("alice").await;
    let bob = env.login("bob").await;

    let (s, u) = get_json(&format!("{}/t/acme/api/user", env.url), &alice).await;
    assert_eq!(s, 200, "{u}");
    assert_eq!(u["login"], "alice");
    assert_eq!(u["email"], "alice@example.com");
    assert_eq!(u["role"], "Editor");
    assert_eq!(u["authenticatedBy"], "auth.proxy");

    let (s, u) = get_json(&format!("{}/t/bob/api/user", env.url), &bob).await;
    assert_eq!(s, 200, "{u}");
    assert_eq!(u["login"], "bob");
    assert_eq!(u["role"], "Viewer");

    // Each is refused at the other's tenant, with a clear message.
    let (s, body) = get_json(&format!("{}/t/bob/api/user", env.url), &alice).await;
    assert_eq!(s, 403);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("not a member of tenant bob"),
        "{body}"
    );
    let (s, _) = get_json(&format!("{}/t/acme/", env.url), &bob).await;
    assert_eq!(s, 403);

    // No session: browsers go to the login page, API clients get 401.
    let r = no_redirects()
        .get(format!("{}/t/acme/d/abc?orgId=1", env.url))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    assert_eq!(
        r.headers()["location"],
        "/login?next=%2Ft%2Facme%2Fd%2Fabc%3ForgId%3D1"
    );
    let (s, body) = get_json(&format!("{}/t/acme/api/user", env.url), "").await;
    assert_eq!(s, 401, "{body}");

    // The login redirect goes back where the person wanted to go.
    let (s, _) = env
        .try_login("alice", "password-alice", "/t/acme/d/abc")
        .await;
    assert_eq!(s, 303);

    // `/t/acme` gets its trailing slash, like Grafana.
    let r = no_redirects()
        .get(format!("{}/t/acme?x=1", env.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 301);
    assert_eq!(r.headers()["location"], "/t/acme/?x=1");

    // A forged or foreign cookie is no session.
    let (s, _) = get_json(
        &format!("{}/t/acme/api/user", env.url),
        "pug_session=abc.def",
    )
    .await;
    assert_eq!(s, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_members_are_refused_before_any_upstream_contact() {
    let env = Env::start(GatewayMode::Path).await;
    let trap = Trap::start().await;
    env.tenant("vault", Phase::Ready, &[&trap.addr]).await;
    env.tenant("acme", Phase::Ready, &[&trap.addr]).await;
    env.user("alice", "password-alice", &[("acme", "Viewer")])
        .await;
    let alice = env.login("alice").await;
    for path in ["/t/vault/", "/t/vault/api/user", "/t/vault/api/live/ws"] {
        let (s, _) = get_json(&format!("{}{path}", env.url), &alice).await;
        assert_eq!(s, 403, "{path}");
        let (s, _) = get_json(&format!("{}{path}", env.url), "").await;
        assert_eq!(s, 401, "{path}");
    }
    // Spoofed identity headers without a session are not a session either.
    let (s, _) = raw_get(
        env.addr,
        "/t/vault/api/user",
        "X-WEBAUTH-USER: admin\r\nX-WEBAUTH-ROLE: Admin\r\nAuthorization: Basic YWRtaW46YWRtaW4=\r\n",
    )
    .await;
    assert_eq!(s, 401);
    assert_eq!(trap.count(), 0, "the trap instance was contacted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_identity_headers_never_arrive() {
    let (env, _acme, _bob) = two_tenants().await;
    let alice = env.login("alice").await;
    let r = no_redirects()
        .get(format!("{}/t/acme/api/standin/headers", env.url))
        .header(
            "cookie",
            format!("{alice}; grafana_session_acme=g1; grafana_session=g0; pug_csrf=zzz"),
        )
        .header("X-WEBAUTH-USER", "admin")
        .header("x-webauth-user", "root")
        .header("X-WebAuth-Role", "Admin")
        .header("X-WEBAUTH-EMAIL", "admin@evil")
        .header("X-WEBAUTH-GROUPS", "admins")
        .header("X-WEBAUTH-LOGIN", "admin")
        .header("Authorization", "Basic YWRtaW46YWRtaW4=")
        .header("Proxy-Authorization", "Basic YWRtaW46YWRtaW4=")
        .header("X-Forwarded-For", "10.9.8.7")
        .header("X-Real-IP", "127.0.0.1")
        .header("Connection", "keep-alive, X-Hop")
        .header("X-Hop", "must go")
        .header("Keep-Alive", "timeout=5")
        .header("TE", "trailers")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let report: Value = r.json().await.unwrap();
    let h = &report["headers"];
    assert_eq!(h["x-webauth-user"], "alice", "{report}");
    assert_eq!(h["x-webauth-role"], "Editor");
    assert_eq!(h["x-webauth-email"], "alice@example.com");
    assert_eq!(h["x-webauth-name"], "alice");
    assert_eq!(report["identity"]["user"], "alice");
    for gone in [
        "x-webauth-groups",
        "x-webauth-login",
        "authorization",
        "proxy-authorization",
        "x-real-ip",
        "x-hop",
        "keep-alive",
        "te",
    ] {
        assert!(
            h.get(gone).is_none(),
            "{gone} reached the instance: {report}"
        );
    }
    let cookie = h["cookie"].as_str().unwrap();
    // Only the tenant's own Grafana cookies (see sessions_attacks.rs and proxy.rs).
    assert_eq!(cookie, "grafana_session_acme=g1", "{report}");
    assert_eq!(h["x-forwarded-for"], "10.9.8.7, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], env.addr.to_string());
    assert_eq!(report["uri"], "/t/acme/api/standin/headers");
}

/// Tenants that trust the gateway's signature (`[auth.jwt]`, the swarm backend): the gateway
/// sends its signed token instead of auth-proxy headers; a token is good only at its own
/// tenant's Grafana; a client's own token or header never arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_identity_signs_in_at_its_tenant_only_and_cannot_be_forged() {
    let env = Env::start_with(GatewayMode::Path, |s| s.signed_identity = true).await;
    let secret = env.store.gateway_identity_secret().await.unwrap();
    let key = pug_auth::IdentitySigner::from_secret(&secret).public_key_pem();
    let acme = Standin::start_jwt(&env.root_url("acme"), "acme", &key).await;
    let bob = Standin::start_jwt(&env.root_url("bob"), "bob", &key).await;
    env.tenant("acme", Phase::Ready, &[&acme.addr]).await;
    env.tenant("bob", Phase::Ready, &[&bob.addr]).await;
    env.user("alice", "password-alice", &[("acme", "Editor")])
        .await;
    let alice = env.login("alice").await;
    let forged = pug_auth::IdentitySigner::from_secret(&pug_types::SecretString::from(
        "not the store's".to_owned(),
    ))
    .sign(
        &pug_types::TenantId::parse("acme").unwrap(),
        "admin",
        "admin@localhost",
        "x",
        pug_auth::GrafanaRole::Admin,
        pug_store::now_ms() / 1000,
    );
    let r = no_redirects()
        .get(format!("{}/t/acme/api/standin/headers", env.url))
        .header("cookie", &alice)
        .header("X-Pug-Identity", &forged)
        .header("X-WEBAUTH-USER", "admin")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let report: Value = r.json().await.unwrap();
    let h = &report["headers"];
    assert_eq!(report["identity"]["user"], "alice", "{report}");
    assert!(h.get("x-webauth-user").is_none(), "{report}");
    let token = h["x-pug-identity"]
        .as_str()
        .expect("the gateway's token")
        .to_owned();
    assert_ne!(token, forged, "the client's token reached the instance");
    let (status, user) = get_json(&format!("{}/t/acme/api/user", env.url), &alice).await;
    assert_eq!(
        (
            status,
            &user["login"],
            &user["role"],
            &user["authenticatedBy"]
        ),
        (200, &json!("alice"), &json!("Editor"), &json!("jwt")),
        "{user}"
    );

    // At the instances directly (what another tenant's Grafana on the same network can do).
    let direct = |addr: &str, tenant: &str, header: &'static str, value: String| {
        let url = format!("http://{addr}/t/{tenant}/api/user");
        async move {
            let r = pug_test_support::http::client()
                .get(url)
                .header(header, value)
                .send()
                .await
                .unwrap();
            r.status().as_u16()
        }
    };
    assert_eq!(
        direct(&acme.addr, "acme", "X-Pug-Identity", token.clone()).await,
        200,
        "the gateway's token is good at its own tenant (so the refusals below can fail)"
    );
    for (what, addr, tenant, header, value) in [
        (
            "acme's token at bob's Grafana",
            &bob.addr,
            "bob",
            "X-Pug-Identity",
            token.clone(),
        ),
        (
            "a token signed with another key",
            &acme.addr,
            "acme",
            "X-Pug-Identity",
            forged.clone(),
        ),
        (
            "an auth-proxy header",
            &acme.addr,
            "acme",
            "X-WEBAUTH-USER",
            "alice".to_owned(),
        ),
    ] {
        assert_eq!(
            direct(addr, tenant, header, value).await,
            401,
            "{what} signed in"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traversal_and_encoding_variants_never_cross_tenants() {
    let env = Env::start(GatewayMode::Path).await;
    let acme = Standin::start(&env.root_url("acme"), true).await;
    let trap = Trap::start().await;
    env.tenant("acme", Phase::Ready, &[&acme.addr]).await;
    env.tenant("vault", Phase::Ready, &[&trap.addr]).await;
    env.user("alice", "password-alice", &[("acme", "Viewer")])
        .await;
    let alice = env.login("alice").await;
    let cookie = format!("Cookie: {alice}\r\n");
    let absolute = format!("http://{}/t/vault/api/user", env.addr);
    let variants = [
        "/t/acme/../vault/api/user",
        "/t/acme/%2e%2e/vault/api/user",
        "/t/acme/%2E%2E/vault/api/user",
        "/t/acme/.%2e/vault/api/user",
        "/t/acme/%2e./vault/api/user",
        "/t/acme%2f..%2fvault/api/user",
        "/t/acme/..%2fvault/api/user",
        "/t/acme/..%2Fvault/api/user",
        "/t/acme/%252e%252e/vault/api/user",
        "/t/acme/%252fvault",
        "/t/acme//../vault/api/user",
        "//t/vault/api/user",
        "/t//vault/api/user",
        "/t/acme\\..\\vault/api/user",
        "/t/acme/..\\vault/api/user",
        "/t/acme/..%5cvault/api/user",
        "/t/acme/..%5Cvault/api/user",
        "/t/acme;/../vault/api/user",
        "/t/acme/..;/vault/api/user",
        "/t/vault;/api/user",
        "/t/%76ault/api/user",
        "/t/acme/%c0%ae%c0%ae/vault/api/user",
        "/t/acme/%e2%80%a4%e2%80%a4/vault/api/user",
        "/t/acme/%ef%bc%8e%ef%bc%8e/vault/api/user",
        "/t/acme/./../vault/",
        "/t/acme/x/../../vault/api/user",
        "/t/VAULT/api/user",
        "/t/acme/%2e%2e%2fvault",
        "/t/acme%00/../vault",
        "/t/acme/%2e%2e/%2e%2e/t/vault/api/user",
        "/t/acme/.../vault/api/user",
        "/%74/vault/api/user",
        "/t/acme/%2e%2e%2f%2e%2e%2fvault",
        "/t/./vault/api/user",
        "/t/acme/../../t/vault/api/user",
        "/t/acme/%u002e%u002e/vault",
        absolute.as_str(),
    ];
    assert!(variants.len() >= 20);
    for v in variants {
        let (status, body) = raw_get(env.addr, v, &cookie).await;
        assert!(
            [200, 301, 400, 403, 404].contains(&status),
            "{v}: unexpected {status}: {body}"
        );
        if status == 200 {
            // Served, but only ever by acme's Grafana, to alice.
            assert!(
                !body.contains("vault") || body.contains("alice"),
                "{v}: {body}"
            );
        }
    }
    assert_eq!(trap.count(), 0, "a variant reached tenant vault's instance");
    // A sanity check that the trap works: vault's member gets through to it.
    env.user("val", "password-val", &[("vault", "Viewer")])
        .await;
    let val = env.login("val").await;
    let _ = raw_get(env.addr, "/t/vault/api/user", &format!("Cookie: {val}\r\n")).await;
    assert!(trap.count() >= 1);
}

fn claims(tenant: &str, exp_in: i64) -> EmbedClaims {
    EmbedClaims {
        tenant: tenant.into(),
        sub: "carol".into(),
        email: "carol@customer.example".into(),
        role: "Editor".into(),
        exp: pug_store::now_ms() / 1000 + exp_in,
        name: Some("Carol C.".into()),
        jti: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embed_tokens_sign_people_in_and_bad_ones_are_refused() {
    use pug_types::ExposeSecret;
    let (env, _acme, _bob) = two_tenants().await;
    let (info, key) = env.store.create_embed_key("webapp", None).await.unwrap();
    let key = key.expose_secret().to_owned();
    let token = pug_auth::embed::sign(&info.id, &key, &claims("acme", 300));

    let r = no_redirects()
        .get(format!("{}/t/acme/d/x?orgId=1&pug_token={token}", env.url))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/t/acme/d/x?orgId=1");
    let cookie = set_cookie(&r, "pug_session").unwrap();
    let raw = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        raw.contains("HttpOnly") && raw.contains("SameSite=Lax"),
        "{raw}"
    );

    let (s, u) = get_json(&format!("{}/t/acme/api/user", env.url), &cookie).await;
    assert_eq!(s, 200, "{u}");
    // Known to Grafana in the key's namespace, never as a pug user (see sessions_attacks.rs).
    assert_eq!(u["login"], format!("embed:{}:carol", info.id));
    assert_eq!(u["role"], "Editor");
    assert_eq!(u["email"], format!("carol+{}@embed.invalid", info.id));
    assert_eq!(u["name"], "Carol C.");
    // The embed session is for acme only.
    let (s, _) = get_json(&format!("{}/t/bob/api/user", env.url), &cookie).await;
    assert_eq!(s, 403);

    // API clients may send the token as a bearer token.
    let r = pug_test_support::http::client()
        .get(format!("{}/t/acme/api/user", env.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Refused: expired, tampered, other tenant's, too long-lived, unknown key, key scoped elsewhere.
    let (scoped, scoped_key) = env
        .store
        .create_embed_key("bob's app", Some(&TenantId::parse("bob").unwrap()))
        .await
        .unwrap();
    // A key made after an unknown key id was looked up is seen at the next refresh.
    env.gateway.refresh().await.unwrap();
    let good = pug_auth::embed::sign(&info.id, &key, &claims("acme", 300));
    let admin = pug_auth::embed::sign(
        &info.id,
        &key,
        &EmbedClaims {
            role: "Admin".into(),
            ..claims("acme", 300)
        },
    );
    let g: Vec<&str> = good.split('.').collect();
    let a: Vec<&str> = admin.split('.').collect();
    let tampered = format!("{}.{}.{}", g[0], a[1], g[2]);
    let bad = [
        (
            pug_auth::embed::sign(&info.id, &key, &claims("acme", -120)),
            "expired",
        ),
        (tampered, "signature"),
        (
            pug_auth::embed::sign(&info.id, &key, &claims("bob", 300)),
            "for tenant",
        ),
        (
            pug_auth::embed::sign(&info.id, &key, &claims("acme", 3600)),
            "longer than",
        ),
        (
            pug_auth::embed::sign("ek_unknown", &key, &claims("acme", 300)),
            "does not know",
        ),
        (
            pug_auth::embed::sign(&scoped.id, scoped_key.expose_secret(), &claims("acme", 300)),
            "for tenant",
        ),
        ("not-a-token".to_owned(), "not a JWT"),
    ];
    for (token, why) in bad {
        let r = no_redirects()
            .get(format!("{}/t/acme/?pug_token={token}", env.url))
            .header("accept", "text/html")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{why}");
        assert!(set_cookie(&r, "pug_session").is_none());
        let page = r.text().await.unwrap();
        assert!(
            page.contains("Sign-in link refused") && page.contains(why),
            "{why}: {page}"
        );
    }
    let m = env.metrics().await;
    assert!(
        m.contains("pug_gateway_logins_total{result=\"embed_success\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("pug_gateway_logins_total{result=\"embed_failure\"} 7"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_frames_round_trip() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;
    let (env, _acme, _bob) = two_tenants().await;
    let alice = env.login("alice").await;
    let url = format!("ws://{}/t/acme/api/live/ws", env.addr);
    let mut req = url.clone().into_client_request().unwrap();
    req.headers_mut().insert("cookie", alice.parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(resp.status(), 101);
    for i in 0..20 {
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        let echo = ws.next().await.unwrap().unwrap();
        assert_eq!(echo, Message::text(format!("hello {i}")));
    }
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::binary(vec![0u8, 1, 2, 255])
    );
    ws.close(None).await.unwrap();

    // Without a session the upgrade is refused by pug.
    let err = tokio_tungstenite::connect_async(url).await.unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_two_replicas_loses_no_get() {
    let env = Env::start(GatewayMode::Path).await;
    let mut r1 = Standin::start(&env.root_url("duo"), true).await;
    let r2 = Standin::start(&env.root_url("duo"), true).await;
    env.tenant("duo", Phase::Ready, &[&r1.addr, &r2.addr]).await;
    env.user("alice", "password-alice", &[("duo", "Viewer")])
        .await;
    let alice = env.login("alice").await;
    let client = pug_test_support::http::client();
    let url = format!("{}/t/duo/api/standin/settings", env.url);

    // Both replicas serve (round robin); each has a home of its own (they bind port 0, so the
    // port they were configured with is the same).
    let mut homes = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let v: Value = client
            .get(&url)
            .header("cookie", &alice)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        homes.insert(v["paths"]["home"].to_string());
    }
    assert_eq!(homes.len(), 2, "{homes:?}");

    // Four clients stream GETs; one replica is killed in the middle; none may fail.
    let total = 400;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (client, url, alice, done) = (client.clone(), url.clone(), alice.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            for _ in 0..total / 4 {
                let r = client.get(&url).header("cookie", &alice).send().await;
                match r {
                    Ok(r) if r.status() == 200 => {}
                    Ok(r) => failures.push(r.status().to_string()),
                    Err(e) => failures.push(e.to_string()),
                }
                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            failures
        }));
    }
    support::wait_for(Duration::from_secs(60), "a quarter of the requests", || {
        let n = done.load(std::sync::atomic::Ordering::SeqCst);
        async move { (n >= total / 4).then_some(()) }
    })
    .await;
    r1.kill();
    let mut failures = Vec::new();
    for t in tasks {
        failures.extend(t.await.unwrap());
    }
    assert!(failures.is_empty(), "lost requests: {failures:?}");
    assert_eq!(done.load(std::sync::atomic::Ordering::SeqCst), total);
    let m = env.metrics().await;
    assert!(
        m.contains("pug_gateway_upstream_connect_errors_total{tenant=\"duo\"}"),
        "{m}"
    );
    drop(r2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_without_ready_replica_gets_a_503_naming_its_phase() {
    let env = Env::start(GatewayMode::Path).await;
    env.tenant("sleepy", Phase::Provisioning, &[]).await;
    env.user("alice", "password-alice", &[("sleepy", "Viewer")])
        .await;
    let alice = env.login("alice").await;
    let r = no_redirects()
        .get(format!("{}/t/sleepy/", env.url))
        .header("cookie", &alice)
        .header("accept", "text/html,application/xhtml+xml")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "5");
    let page = r.text().await.unwrap();
    assert!(
        page.contains("phase: provisioning") && page.contains("http-equiv=\"refresh\""),
        "{page}"
    );
    let (s, body) = get_json(&format!("{}/t/sleepy/api/health", env.url), &alice).await;
    assert_eq!(s, 503);
    assert_eq!(body["phase"], "provisioning");
    assert_eq!(body["tenant"], "sleepy");
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("no ready instance"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_and_requests_stream_without_buffering() {
    use axum::body::Body;
    use axum::routing::{get, post};
    let env = Env::start(GatewayMode::Path).await;
    // An upstream that sends one chunk, then waits for the test to have received it.
    let (release_tx, release_rx) = tokio::sync::mpsc::channel::<()>(1);
    let release_rx = std::sync::Arc::new(tokio::sync::Mutex::new(release_rx));
    let app = axum::Router::new()
        .route(
            "/t/live/stream",
            get(move || {
                let rx = release_rx.clone();
                async move {
                    let stream = futures::stream::unfold(0u8, move |i| {
                        let rx = rx.clone();
                        async move {
                            match i {
                                0 => {
                                    Some((Ok::<_, std::io::Error>(bytes::Bytes::from("first;")), 1))
                                }
                                1 => {
                                    rx.lock().await.recv().await;
                                    Some((Ok(bytes::Bytes::from("second")), 2))
                                }
                                _ => None,
                            }
                        }
                    });
                    Body::from_stream(stream)
                }
            }),
        )
        .route(
            "/t/live/upload",
            post(|body: Body| async move {
                let mut n = 0usize;
                let mut s = body.into_data_stream();
                while let Some(chunk) = s.next().await {
                    n += chunk.unwrap().len();
                }
                n.to_string()
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    env.tenant("live", Phase::Ready, &[&upstream]).await;
    env.user("alice", "password-alice", &[("live", "Viewer")])
        .await;
    let alice = env.login("alice").await;

    let mut r = pug_test_support::http::client()
        .get(format!("{}/t/live/stream", env.url))
        .header("cookie", &alice)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The first chunk arrives while the upstream is still holding the rest back.
    assert_eq!(r.chunk().await.unwrap().unwrap(), "first;");
    release_tx.send(()).await.unwrap();
    assert_eq!(r.chunk().await.unwrap().unwrap(), "second");

    // A 20 MB upload streams through.
    let chunks =
        futures::stream::iter((0..20).map(|_| Ok::<_, std::io::Error>(vec![7u8; 1 << 20])));
    let r = pug_test_support::http::client()
        .post(format!("{}/t/live/upload", env.url))
        .header("cookie", &alice)
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), (20usize << 20).to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_is_csrf_protected_and_throttled() {
    let (env, _acme, _bob) = two_tenants().await;
    let client = no_redirects();
    // No CSRF token: refused even with the right password.
    let r = client
        .post(format!("{}/login", env.url))
        .form(&[
            ("user", "alice"),
            ("password", "password-alice"),
            ("csrf", "x"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(set_cookie(&r, "pug_session").is_none());

    // Five wrong passwords, then even the right one is refused for a while.
    for _ in 0..5 {
        let (s, c) = env.try_login("alice", "wrong-password", "/").await;
        assert_eq!(s, 401);
        assert!(c.is_none());
    }
    let (s, c) = env.try_login("alice", "password-alice", "/").await;
    assert_eq!(s, 429);
    assert!(c.is_none());
    // Other users are not locked out by alice's failures.
    let (s, _) = env.try_login("bob", "password-bob", "/").await;
    assert_eq!(s, 303);
    // Unknown users fail like wrong passwords.
    let (s, _) = env.try_login("mallory", "whatever-pass", "/").await;
    assert_eq!(s, 401);
    // Open redirects are not possible through `next`.
    let (s, _) = env
        .try_login("bob", "password-bob", "//evil.example/")
        .await;
    assert_eq!(s, 303);

    let m = env.metrics().await;
    assert!(
        m.contains("pug_gateway_logins_total{result=\"throttled\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("pug_gateway_logins_total{result=\"success\"} 2"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_ends_the_session() {
    let (env, _acme, _bob) = two_tenants().await;
    let alice = env.login("alice").await;
    let (s, _) = get_json(&format!("{}/t/acme/api/user", env.url), &alice).await;
    assert_eq!(s, 200);
    let client = no_redirects();
    let page = client
        .get(format!("{}/logout", env.url))
        .header("cookie", &alice)
        .send()
        .await
        .unwrap();
    let csrf = set_cookie(&page, "pug_csrf").unwrap();
    let html = page.text().await.unwrap();
    assert!(html.contains("Sign out"));
    let value = csrf.split_once('=').unwrap().1.to_owned();
    let r = client
        .post(format!("{}/logout", env.url))
        .header("cookie", format!("{alice}; {csrf}"))
        .form(&[("csrf", value.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    let (s, _) = get_json(&format!("{}/t/acme/api/user", env.url), &alice).await;
    assert_eq!(s, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_mode_routes_by_host_and_isolates_origins() {
    let env = Env::start(GatewayMode::Host).await;
    let acme = Standin::start("http://acme.pug.test/", false).await;
    let bob = Standin::start("http://bob.pug.test/", false).await;
    env.tenant("acme", Phase::Ready, &[&acme.addr]).await;
    env.tenant("bob", Phase::Ready, &[&bob.addr]).await;
    env.user("alice", "password-alice", &[("acme", "Admin")])
        .await;
    let client = no_redirects();
    let host = |t: &str| format!("{t}.pug.test:{}", env.addr.port());

    // Not signed in: sent to pug's own origin to sign in, never to a form on the tenant's host.
    let r = client
        .get(format!("{}/api/user", env.url))
        .header("host", host("acme"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    assert_eq!(
        r.headers()["location"],
        format!("{}/login?tenant=acme&next=%2Fapi%2Fuser", env.url).as_str()
    );
    let alice = sign_in_on_host(&env, "acme", "alice", "password-alice", "/").await;

    let r = client
        .get(format!("{}/api/user", env.url))
        .header("host", host("acme"))
        .header("cookie", &alice)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let u: Value = r.json().await.unwrap();
    assert_eq!(u["login"], "alice");
    assert_eq!(u["role"], "Admin");

    // bob's host refuses alice (and her cookie would not even be sent there by a browser).
    let r = client
        .get(format!("{}/api/user", env.url))
        .header("host", host("bob"))
        .header("cookie", &alice)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // In host mode the path cannot pick the tenant.
    let r = client
        .get(format!("{}/t/bob/api/user", env.url))
        .header("host", host("acme"))
        .header("cookie", &alice)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        404,
        "served by acme's Grafana, which has no /t/bob"
    );
    // Other hosts are pug's own (here: nothing).
    let r = client
        .get(format!("{}/api/user", env.url))
        .header("host", "evil.example")
        .header("cookie", &alice)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = client
        .get(format!("{}/api/user", env.url))
        .header("host", format!("x.acme.pug.test:{}", env.addr.port()))
        .header("cookie", &alice)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_registered_and_counted() {
    let (env, _acme, _bob) = two_tenants().await;
    let alice = env.login("alice").await;
    for _ in 0..3 {
        get_json(&format!("{}/t/acme/api/user", env.url), &alice).await;
    }
    get_json(&format!("{}/t/bob/api/user", env.url), &alice).await;
    get_json(&format!("{}/t/nosuch/api/user", env.url), &alice).await;
    let m = env.metrics().await;
    for needle in [
        "pug_gateway_requests_total{tenant=\"acme\",code_class=\"2xx\"} 3",
        "pug_gateway_requests_total{tenant=\"bob\",code_class=\"4xx\"} 1",
        "pug_gateway_requests_total{tenant=\"unknown\",code_class=\"4xx\"} 1",
        "pug_gateway_request_duration_seconds_bucket{le=\"0.001\",tenant=\"acme\",code_class=\"2xx\"}",
        "pug_gateway_request_duration_seconds_count{tenant=\"acme\",code_class=\"2xx\"} 3",
        "pug_gateway_requests_in_flight 0",
        "pug_gateway_logins_total{result=\"success\"} 1",
    ] {
        assert!(m.contains(needle), "{needle} missing:\n{m}");
    }
}

/// A use from elsewhere in the process (the embedded renderer's renders) is written with the
/// gateway's batched activity flush, for that tenant only.
#[tokio::test]
async fn a_tenant_marked_used_outside_the_gateway_is_flushed_as_its_activity() {
    let env = Env::start(GatewayMode::Path).await;
    env.tenant("acme", Phase::Ready, &["127.0.0.1:9"]).await;
    env.tenant("globex", Phase::Ready, &["127.0.0.1:9"]).await;
    let (acme, globex) = (
        TenantId::parse("acme").unwrap(),
        TenantId::parse("globex").unwrap(),
    );
    env.gateway.mark_used(&acme);
    env.gateway.mark_used(&TenantId::parse("nobody").unwrap());
    // The background flush may have taken it first: either way it is in the store now.
    env.gateway.flush_activity().await.unwrap();
    let used = env.store.activity(&acme).await.unwrap();
    assert!(used.last_activity_ms.is_some(), "acme was used: {used:?}");
    assert_eq!(
        env.store.activity(&globex).await.unwrap().last_activity_ms,
        None,
        "globex was not"
    );
}
