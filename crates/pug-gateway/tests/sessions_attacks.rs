//! Attacks on the gateway's embed keys and sessions with the real store (issue 14, security
//! review F12, F13): a flood of tokens with made-up key ids, and the session table's growth.
//! The binary-level attacks on sessions are in `crates/pug/tests/attacks/sessions.rs`.

mod support;

use std::time::Duration;

use pug_config::GatewayMode;
use pug_gateway::EmbedClaims;
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
        let token = pug_gateway::embed::sign(&format!("ek_made_up_{i}"), "guess", &claims());
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
        let token = pug_gateway::embed::sign(&format!("ek_made_up_{i}"), "guess", &claims());
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
    let good = pug_gateway::embed::sign(&key.id, secret.expose_secret(), &claims());
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
