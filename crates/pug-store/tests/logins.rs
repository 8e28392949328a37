//! Host mode's sign-in codes against a real SQLite file (security review F8): a code is good
//! once, for its own tenant only, only while its sign-in lasts; signing out anywhere ends every
//! session of the sign-in.

use pug_store::{EmbedScope, EmbedSessionOutcome, SessionRecord, Store};
use pug_types::{TenantId, TenantSpec};

async fn open(dir: &std::path::Path) -> Store {
    let url = format!("sqlite://{}", dir.join("pug.db").display());
    Store::open_data_dir(dir, &url).await.unwrap()
}

fn person(user: &str) -> SessionRecord {
    SessionRecord {
        user: user.into(),
        email: format!("{user}@example.com"),
        display_name: user.into(),
        scope: None,
        expires_at_ms: pug_store::now_ms() + 3_600_000,
    }
}

#[tokio::test]
async fn a_code_is_good_once_and_only_on_its_tenants_host() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let (acme, bravo) = (
        TenantId::parse("acme").unwrap(),
        TenantId::parse("bravo").unwrap(),
    );
    let origin = store.create_session(&person("alice")).await.unwrap();

    let code = store
        .create_login_code(&origin, &acme)
        .await
        .unwrap()
        .unwrap();
    // Another tenant's host cannot use it, and trying spends it.
    assert!(store
        .redeem_login_code(&code, &bravo)
        .await
        .unwrap()
        .is_none());
    assert!(store
        .redeem_login_code(&code, &acme)
        .await
        .unwrap()
        .is_none());

    let code = store
        .create_login_code(&origin, &acme)
        .await
        .unwrap()
        .unwrap();
    let on_acme = store
        .redeem_login_code(&code, &acme)
        .await
        .unwrap()
        .unwrap();
    let s = store.session(&on_acme).await.unwrap().unwrap();
    assert_eq!((s.user.as_str(), s.scope.is_none()), ("alice", true));
    // Replayed: refused.
    assert!(store
        .redeem_login_code(&code, &acme)
        .await
        .unwrap()
        .is_none());
    // A made-up code: refused.
    let guess = pug_store::generate_secret();
    assert!(store
        .redeem_login_code(&guess, &acme)
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn signing_out_on_one_host_ends_the_sign_in_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let (acme, bravo) = (
        TenantId::parse("acme").unwrap(),
        TenantId::parse("bravo").unwrap(),
    );
    let origin = store.create_session(&person("alice")).await.unwrap();
    let other_device = store.create_session(&person("alice")).await.unwrap();
    let code = store
        .create_login_code(&origin, &acme)
        .await
        .unwrap()
        .unwrap();
    let on_acme = store
        .redeem_login_code(&code, &acme)
        .await
        .unwrap()
        .unwrap();
    let code = store
        .create_login_code(&origin, &bravo)
        .await
        .unwrap()
        .unwrap();
    let on_bravo = store
        .redeem_login_code(&code, &bravo)
        .await
        .unwrap()
        .unwrap();
    let unused = store
        .create_login_code(&origin, &acme)
        .await
        .unwrap()
        .unwrap();

    assert_eq!(store.end_login(&on_bravo).await.unwrap(), 3);
    for gone in [&origin, &on_acme, &on_bravo] {
        assert!(store.session(gone).await.unwrap().is_none());
    }
    // Its codes end with it; another sign-in of the same person does not.
    assert!(store
        .redeem_login_code(&unused, &acme)
        .await
        .unwrap()
        .is_none());
    assert!(store.session(&other_device).await.unwrap().is_some());
    // An ended sign-in makes no more codes.
    assert!(store
        .create_login_code(&origin, &acme)
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn embed_sessions_make_no_codes_and_expired_codes_are_swept() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let acme = TenantId::parse("acme").unwrap();
    let spec: TenantSpec = serde_json::from_value(serde_json::json!({
        "display_name": "acme", "version": "11.3.0", "replicas": 1, "desired_state": "active",
    }))
    .unwrap();
    store.create_tenant(&acme, &spec, &[]).await.unwrap();
    let (key, _) = store.create_embed_key("webapp", None).await.unwrap();
    let mut embed = person("embed:k:carol");
    embed.scope = Some(EmbedScope {
        tenant: acme.clone(),
        role: "Viewer".into(),
        key_id: key.id,
    });
    let EmbedSessionOutcome::Created(embed) =
        store.create_embed_session(&embed, None).await.unwrap()
    else {
        panic!("no embed session")
    };
    assert!(store
        .create_login_code(&embed, &acme)
        .await
        .unwrap()
        .is_none());

    let origin = store.create_session(&person("alice")).await.unwrap();
    store
        .create_login_code(&origin, &acme)
        .await
        .unwrap()
        .unwrap();
    let later = pug_store::now_ms() + pug_store::LOGIN_CODE_TTL_MS + 1;
    assert_eq!(store.sweep_sessions(later).await.unwrap().login_codes, 1);
}
