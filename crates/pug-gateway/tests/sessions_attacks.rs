//! Attacks on the gateway's embed keys and sessions with the real store (issue 14, security
//! review F8, F12, F13): cookies tossed from a sibling host, a flood of tokens with made-up key ids, and the session table's growth.
//! The binary-level attacks on sessions are in `crates/pug/tests/attacks/sessions.rs`.

mod support;

use std::time::Duration;

use pug_auth::EmbedClaims;
use pug_config::GatewayMode;
use pug_store::SessionRecord;
use support::{no_redirects, Env};

fn claims() -> EmbedClaims {
    EmbedClaims {
        tenant: "acme".into(),
        sub: "mallory".into(),
        email: "mallory@example.com".into(),
        role: "Admin".into(),
        exp: pug_store::now_ms() / 1000 + 300,
        name: None,
        jti: None,
    }
}

/// The value of the counter `name` in the gateway's metrics.
async fn counter(env: &Env, name: &str) -> u64 {
    let text = env.metrics().await;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_key_ids_read_the_store_at_most_once_per_interval() {
    // An interval longer than the test: every read the flood causes is counted, none is the
    // periodic refresh's.
    let env = Env::start_with(GatewayMode::Path, |s| {
        s.refresh_interval = Duration::from_secs(3600)
    })
    .await;
    let (key, secret) = env.store.create_embed_key("webapp", None).await.unwrap();
    let before = counter(&env, "pug_gateway_embed_key_reads_total").await;

    // 64 anonymous requests at once, each with a key id of its own, as bearer tokens and as
    // `?pug_token=`: each once read and decrypted every key.
    let client = no_redirects();
    let flood = (0..64).map(|i| {
        let token = pug_auth::embed::sign(&format!("ek_made_up_{i}"), "guess", &claims());
        let client = client.clone();
        let url = env.url.clone();
        async move {
            let r = if i % 2 == 0 {
                client
                    .get(format!("{url}/t/acme/api/user"))
                    .bearer_auth(&token)
            } else {
                client.get(format!("{url}/t/acme/?pug_token={token}"))
            };
            r.send().await.unwrap().status().as_u16()
        }
    });
    let statuses = futures::future::join_all(flood).await;
    assert!(statuses.iter().all(|s| *s == 401), "{statuses:?}");
    let after = counter(&env, "pug_gateway_embed_key_reads_total").await;
    assert!(
        after - before <= 1,
        "{} store reads of the embed keys for one flood",
        after - before
    );
    // The same ids again: remembered as unknown, no read at all.
    for i in 0..8 {
        let token = pug_auth::embed::sign(&format!("ek_made_up_{i}"), "guess", &claims());
        let r = client
            .get(format!("{}/t/acme/api/user", env.url))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
    assert_eq!(
        counter(&env, "pug_gateway_embed_key_reads_total").await,
        after
    );

    // A real key still verifies (the read found it), without another read.
    use pug_types::ExposeSecret;
    let good = pug_auth::embed::sign(&key.id, secret.expose_secret(), &claims());
    let r = client
        .get(format!("{}/t/acme/api/user", env.url))
        .bearer_auth(&good)
        .send()
        .await
        .unwrap();
    // Verified; acme has no route in this test, so the answer is the gateway's 404.
    assert_eq!(r.status(), 404);
    assert_eq!(
        counter(&env, "pug_gateway_embed_key_reads_total").await,
        after
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_sessions_are_swept_instead_of_piling_up() {
    let env = Env::start(GatewayMode::Path).await;
    let now = pug_store::now_ms();
    let person = |expires_at_ms| SessionRecord {
        user: "alice".into(),
        email: "alice@example.com".into(),
        display_name: "Alice".into(),
        scope: None,
        expires_at_ms,
    };
    // What every embed page view used to leave behind, forever.
    for _ in 0..3 {
        env.store.create_session(&person(now - 1)).await.unwrap();
    }
    let live = env
        .store
        .create_session(&person(now + 60_000))
        .await
        .unwrap();

    let swept = env.gateway.sweep().await.unwrap();
    assert_eq!(swept.expired_sessions, 3);
    // Gone, not merely ignored: a second sweep finds nothing.
    assert_eq!(env.gateway.sweep().await.unwrap(), Default::default());
    assert!(env.store.session(&live).await.unwrap().is_some());
    assert_eq!(counter(&env, "pug_gateway_swept_rows_total").await, 3);
}

/// Review F8 (cookie tossing): over https pug's cookies carry the `__Host-` prefix, which a
/// browser only accepts from the very host, `Secure`, `Path=/`, without `Domain`, so script on
/// a sibling tenant host (`bob.example.com` setting `Domain=example.com`) cannot plant one. A
/// cookie under the unprefixed name is therefore never taken as pug's, even with a value pug
/// signed itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_tossed_from_a_sibling_host_is_not_pugs_cookie_over_https() {
    let env = Env::start_with(GatewayMode::Path, |s| {
        s.public_url = "https://pug.test".into();
    })
    .await;
    env.tenant("acme", pug_types::Phase::Ready, &[]).await;
    env.user("alice", "password-alice", &[("acme", "Viewer")])
        .await;
    let client = no_redirects();

    let page = client
        .get(format!("{}/login", env.url))
        .send()
        .await
        .unwrap();
    let raw: Vec<String> = page
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    let csrf_line = raw
        .iter()
        .find(|l| l.starts_with("__Host-pug_csrf="))
        .unwrap_or_else(|| panic!("no __Host-pug_csrf cookie in {raw:?}"));
    assert!(csrf_line.contains("; Secure"), "{csrf_line}");
    assert!(csrf_line.contains("Path=/;"), "{csrf_line}");
    assert!(
        !csrf_line.to_ascii_lowercase().contains("domain="),
        "{csrf_line}"
    );
    assert!(!raw.iter().any(|l| l.starts_with("pug_csrf=")), "{raw:?}");
    let value = support::set_cookie(&page, "__Host-pug_csrf")
        .unwrap()
        .split_once('=')
        .unwrap()
        .1
        .to_owned();

    let post = |cookie: String| {
        let client = client.clone();
        let url = format!("{}/login", env.url);
        let value = value.clone();
        async move {
            client
                .post(url)
                .header("cookie", cookie)
                .form(&[
                    ("user", "alice"),
                    ("password", "password-alice"),
                    ("csrf", value.as_str()),
                    ("next", "/t/acme/"),
                ])
                .send()
                .await
                .unwrap()
        }
    };
    // The same signed CSRF value, tossed under the unprefixed name: refused.
    let tossed = post(format!("pug_csrf={value}")).await;
    assert_ne!(tossed.status(), 303, "a tossed CSRF cookie was accepted");
    assert!(support::set_cookie(&tossed, "__Host-pug_session").is_none());
    // Under pug's own name: signed in, with a prefixed session cookie.
    let ok = post(format!("__Host-pug_csrf={value}")).await;
    assert_eq!(ok.status(), 303);
    let session = support::set_cookie(&ok, "__Host-pug_session").expect("a session cookie");
    let session_value = session.split_once('=').unwrap().1;

    let tenant_page = |cookie: String| {
        let client = client.clone();
        let url = format!("{}/t/acme/", env.url);
        async move {
            client
                .get(url)
                .header("cookie", cookie)
                .send()
                .await
                .unwrap()
        }
    };
    // Not signed in: 401 (an API client) or a redirect to the sign-in page (a browser).
    let to_login = |r: &reqwest::Response| {
        r.status() == 401
            || r.status() == 303
                && r.headers()
                    .get("location")
                    .and_then(|l| l.to_str().ok())
                    .is_some_and(|l| l.contains("login"))
    };
    // The session, tossed under the unprefixed name (session fixation): not signed in.
    let r = tenant_page(format!("pug_session={session_value}")).await;
    assert!(
        to_login(&r),
        "a tossed session cookie signed in: {}",
        r.status()
    );
    let r = tenant_page(session).await;
    assert!(!to_login(&r), "pug's own session cookie was not honoured");
}
