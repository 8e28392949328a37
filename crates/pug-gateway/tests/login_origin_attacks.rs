//! Attacks on host mode's sign-in (issue 14 hole 8, security review F8). Each tenant has an
//! origin of its own, shared with whatever runs in its Grafana (a plugin, a panel's script):
//! - a password form served there could be read by that script, and a pug password opens every
//!   tenant of its person; so no tenant host serves the form or accepts a password;
//! - the one-time code that brings a sign-in to a tenant host must not open another tenant's
//!   host, nor work twice;
//! - signing out anywhere must end the sign-in on every host.

mod support;

use pug_config::GatewayMode;
use pug_types::Phase;
use support::{no_redirects, redeem, set_cookie, sign_in_on_origin, Env, Standin};

async fn two_tenant_hosts() -> (Env, Standin, Standin) {
    let env = Env::start(GatewayMode::Host).await;
    let acme = Standin::start("http://acme.pug.test/", false).await;
    let bob = Standin::start("http://bob.pug.test/", false).await;
    env.tenant("acme", Phase::Ready, &[&acme.addr]).await;
    env.tenant("bob", Phase::Ready, &[&bob.addr]).await;
    env.user(
        "alice",
        "password-alice",
        &[("acme", "Admin"), ("bob", "Viewer")],
    )
    .await;
    (env, acme, bob)
}

fn host(env: &Env, tenant: &str) -> String {
    format!("{tenant}.pug.test:{}", env.addr.port())
}

async fn api_user(env: &Env, tenant: &str, cookie: &str) -> u16 {
    no_redirects()
        .get(format!("{}/api/user", env.url))
        .header("host", host(env, tenant))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_host_never_serves_the_password_form_nor_takes_a_password() {
    let (env, _acme, _bob) = two_tenant_hosts().await;
    let client = no_redirects();
    let r = client
        .get(format!("{}/_pug/login?next=/d/x", env.url))
        .header("host", host(&env, "acme"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    assert_eq!(
        r.headers()["location"],
        format!("{}/login?tenant=acme&next=%2Fd%2Fx", env.url).as_str()
    );
    assert!(set_cookie(&r, "pug_csrf").is_none());
    assert!(!r.text().await.unwrap().contains("password"));

    // A password posted to the tenant host is not checked, and makes no session.
    let r = client
        .post(format!("{}/_pug/login", env.url))
        .header("host", host(&env, "acme"))
        .form(&[
            ("user", "alice"),
            ("password", "password-alice"),
            ("next", "/"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert!(r.headers()["location"]
        .to_str()
        .unwrap()
        .starts_with(&format!("{}/login?tenant=acme", env.url)));
    assert!(set_cookie(&r, "pug_session").is_none());
    let m = env.metrics().await;
    assert!(
        !m.contains("pug_gateway_logins_total{result=\"success\"}"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_code_is_good_once_and_only_on_its_own_tenants_host() {
    let (env, _acme, _bob) = two_tenant_hosts().await;
    let (origin, on_acme) = sign_in_on_origin(&env, "acme", "alice", "password-alice", "/").await;
    assert_eq!(api_user(&env, "acme", &on_acme).await, 200);
    // (acme's cookie is host-only and HttpOnly, and the gateway strips it before Grafana: no
    // script or Grafana of acme's can carry it to bob's host.)

    // Already signed in on pug's origin: a code for acme comes at once.
    let code_for = |tenant: &'static str| {
        let (env, origin) = (&env, origin.clone());
        async move {
            let r = no_redirects()
                .get(format!("{}/login?tenant={tenant}&next=/d/x", env.url))
                .header("cookie", origin)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 302);
            r.headers()["location"].to_str().unwrap().to_owned()
        }
    };
    let to_acme = code_for("acme").await;
    assert!(to_acme.starts_with(&format!(
        "http://{}/_pug/callback?code=",
        host(&env, "acme")
    )));
    assert!(to_acme.ends_with("&next=%2Fd%2Fx"), "{to_acme}");
    // Taken to bob's host (a script in acme's Grafana that learnt it): refused there, and spent.
    let to_bob_instead = to_acme.replace("acme.pug.test", "bob.pug.test");
    assert_eq!(redeem(&env, &to_bob_instead).await, None);
    assert_eq!(redeem(&env, &to_acme).await, None);

    // Good once on its own host; replayed: refused.
    let to_acme = code_for("acme").await;
    let again = redeem(&env, &to_acme).await.expect("a fresh code is good");
    assert_eq!(api_user(&env, "acme", &again).await, 200);
    assert_eq!(redeem(&env, &to_acme).await, None);
    // A made-up code: refused, and the refusal says where to sign in.
    let r = no_redirects()
        .get(format!("{}/_pug/callback?code=guess&next=/", env.url))
        .header("host", host(&env, "acme"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(set_cookie(&r, "pug_session").is_none());

    // A code for bob gives bob's host a session of its own.
    let on_bob = redeem(&env, &code_for("bob").await).await.unwrap();
    assert_eq!(api_user(&env, "bob", &on_bob).await, 200);
    // `next` never leaves the tenant's host.
    let r = no_redirects()
        .get(format!(
            "{}/login?tenant=bob&next=//evil.example/x",
            env.url
        ))
        .header("cookie", &origin)
        .send()
        .await
        .unwrap();
    let to = r.headers()["location"].to_str().unwrap();
    assert!(to.ends_with("&next=%2F"), "{to}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_out_on_one_tenant_host_ends_the_sign_in_on_every_host() {
    let (env, _acme, _bob) = two_tenant_hosts().await;
    let (origin, on_acme) = sign_in_on_origin(&env, "acme", "alice", "password-alice", "/").await;
    let r = no_redirects()
        .get(format!("{}/login?tenant=bob", env.url))
        .header("cookie", &origin)
        .send()
        .await
        .unwrap();
    let on_bob = redeem(&env, r.headers()["location"].to_str().unwrap())
        .await
        .unwrap();
    // Another sign-in of the same person (another browser) is not this one.
    let (_, elsewhere) = sign_in_on_origin(&env, "acme", "alice", "password-alice", "/").await;
    assert_eq!(api_user(&env, "acme", &on_acme).await, 200);
    assert_eq!(api_user(&env, "bob", &on_bob).await, 200);

    // Sign out on bob's host (its form, its CSRF cookie).
    let client = no_redirects();
    let page = client
        .get(format!("{}/_pug/logout", env.url))
        .header("host", host(&env, "bob"))
        .send()
        .await
        .unwrap();
    let csrf = set_cookie(&page, "pug_csrf").unwrap();
    assert!(page
        .text()
        .await
        .unwrap()
        .contains("action=\"/_pug/logout\""));
    let value = csrf.split_once('=').unwrap().1.to_owned();
    let r = client
        .post(format!("{}/_pug/logout", env.url))
        .header("host", host(&env, "bob"))
        .header("cookie", format!("{csrf}; {on_bob}"))
        .form(&[("csrf", value.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains(&format!("{}/login", env.url)));

    for (tenant, cookie) in [("bob", &on_bob), ("acme", &on_acme)] {
        assert_eq!(api_user(&env, tenant, cookie).await, 401, "{tenant}");
    }
    // pug's origin session ended too: no more codes from it.
    let r = no_redirects()
        .get(format!("{}/login?tenant=acme", env.url))
        .header("cookie", &origin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the form again, not a code");
    assert_eq!(api_user(&env, "acme", &elsewhere).await, 200);
}
