//! The client against small in-process axum servers: what it sends, how it reads answers and
//! failures, how it finds pug, and when a followed change has settled.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method as HttpMethod, Uri};
use axum::routing::{any, patch};
use axum::{Json, Router};
use pug_api::{TenantDetail, UpdateTenant};
use pug_types::{Phase, Tenant};

use super::{outcome, Action, Client, ClientError, Outcome, Target};

fn target(url: String, token: Option<&str>, data_dir: &std::path::Path) -> Target {
    Target {
        url: Some(url),
        token: token.map(str::to_owned),
        data_dir: data_dir.to_owned(),
    }
}

/// A pug at a fresh loopback port serving `app`.
async fn serving(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// A pug that answers every request with `status` and `body`.
async fn answering(status: u16, body: &'static str) -> String {
    let status = axum::http::StatusCode::from_u16(status).unwrap();
    serving(Router::new().fallback(move || async move { (status, body) })).await
}

fn tenant(generation: i64, observed: i64, phase: Phase, version: &str) -> Tenant {
    serde_json::from_value(serde_json::json!({
        "id": "acme",
        "spec": {
            "display_name": "Acme",
            "version": version,
            "replicas": 1,
            "desired_state": "active",
        },
        "generation": generation,
        "status": {
            "phase": phase,
            "ready_replicas": 0,
            "endpoints": [],
            "running_version": null,
            "observed_generation": observed,
            "last_error": null,
            "updated_at_ms": 0,
        },
        "created_at_ms": 0,
    }))
    .unwrap()
}

fn detail(t: Tenant) -> TenantDetail {
    TenantDetail {
        tenant: t,
        url: "http://acme.pug.localhost:8080/".into(),
        events: Vec::new(),
        last_activity_ms: None,
        idle_timeout_secs: 0,
    }
}

#[tokio::test]
async fn requests_carry_the_token_and_the_apis_own_types() {
    type Seen = Arc<Mutex<Vec<(String, String, Option<String>)>>>;
    let seen: Seen = Arc::default();
    async fn update(
        State(seen): State<Seen>,
        Path(id): Path<String>,
        headers: HeaderMap,
        Json(body): Json<UpdateTenant>,
    ) -> Json<Tenant> {
        let auth = headers
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_owned());
        seen.lock()
            .unwrap()
            .push(("PATCH".into(), format!("{id} {:?}", body.replicas), auth));
        Json(tenant(2, 1, Phase::Ready, "11.3.0"))
    }
    async fn other(State(seen): State<Seen>, method: HttpMethod, uri: Uri) -> Json<Tenant> {
        seen.lock()
            .unwrap()
            .push((method.to_string(), uri.to_string(), None));
        Json(tenant(3, 3, Phase::Ready, "11.3.0"))
    }
    let app = Router::new()
        .route("/api/v1/tenants/{id}", patch(update).delete(other))
        .route("/api/v1/tenants/{id}/{action}", any(other))
        .with_state(seen.clone());
    let url = serving(app).await;
    let dir = tempfile::tempdir().unwrap();
    let api = Client::new(&target(url, Some("secret"), dir.path())).unwrap();

    let body = UpdateTenant {
        replicas: Some(3),
        ..Default::default()
    };
    let t = api.update_tenant("acme", &body).await.unwrap();
    assert_eq!(t.generation, 2);
    api.tenant_action("acme", Action::Wake).await.unwrap();
    api.delete_tenant("acme", true).await.unwrap();
    api.delete_tenant("acme", false).await.unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            (
                "PATCH".into(),
                "acme Some(3)".into(),
                Some("Bearer secret".into())
            ),
            ("POST".into(), "/api/v1/tenants/acme/wake".into(), None),
            (
                "DELETE".into(),
                "/api/v1/tenants/acme?purge=true".into(),
                None
            ),
            ("DELETE".into(), "/api/v1/tenants/acme".into(), None),
        ]
    );
}

#[tokio::test]
async fn failures_are_one_line_that_says_what_to_do() {
    let empty = tempfile::tempdir().unwrap();
    let error = r#"{"error":"tenant acme does not exist","field":"id"}"#;
    let cases = [
        (404, error, Some("t"), "tenant acme does not exist".to_owned()),
        (500, "upstream broke", Some("t"), "upstream broke".to_owned()),
        (
            401,
            r#"{"error":"a token is needed"}"#,
            None,
            "a token is needed (no token found: pass --token or PUG_TOKEN, or run on the machine of `pug serve` with --data-dir)".to_owned(),
        ),
        (401, r#"{"error":"bad token"}"#, Some("t"), "bad token".to_owned()),
    ];
    for (status, body, token, want) in cases {
        let url = answering(status, body).await;
        let api = Client::new(&target(url, token, empty.path())).unwrap();
        let e = api.tenant("acme").await.unwrap_err();
        assert_eq!(e.to_string(), want, "{status} {body}");
        assert_eq!(
            e.status().map(|s| s.as_u16()),
            Some(status),
            "{status} {body}"
        );
    }

    // Not running: how to reach it, with the cause kept as the error's source.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let api = Client::new(&target(url.clone(), None, empty.path())).unwrap();
    let e = api.status().await.unwrap_err();
    assert!(matches!(e, ClientError::Unreachable { .. }), "{e:?}");
    assert!(std::error::Error::source(&e).is_some());
    let e = e.to_string();
    assert!(
        e.starts_with(&format!("cannot reach pug at {url}: ")),
        "{e}"
    );
    assert!(
        e.ends_with("; is `pug serve` running? (set --url or PUG_URL)"),
        "{e}"
    );

    // A success that is not the expected type names the URL.
    let url = answering(200, "[]").await;
    let api = Client::new(&target(url.clone(), None, empty.path())).unwrap();
    let e = api.status().await.unwrap_err().to_string();
    assert_eq!(e, format!("unexpected answer from {url}/api/v1/status"));
}

#[test]
fn pug_is_found_through_the_files_serve_writes() {
    let dir = tempfile::tempdir().unwrap();
    let found = |target: &Target| {
        let c = Client::new(target).unwrap();
        (c.url, c.token)
    };
    let mut none = target(String::new(), None, dir.path());
    none.url = None;
    assert_eq!(found(&none), (super::DEFAULT_URL.to_owned(), None));
    std::fs::write(dir.path().join(super::URL_FILE), "http://127.0.0.1:9/\n").unwrap();
    std::fs::write(dir.path().join(super::TOKEN_FILE), "local-secret\n").unwrap();
    assert_eq!(
        found(&none),
        (
            "http://127.0.0.1:9".to_owned(),
            Some("local-secret".to_owned())
        )
    );
    let flags = target("http://pug.example/".into(), Some("flag"), dir.path());
    assert_eq!(
        found(&flags),
        ("http://pug.example".to_owned(), Some("flag".to_owned()))
    );
}

#[test]
fn path_segments_are_encoded() {
    let cases = [
        (&["status"][..], "/api/v1/status"),
        (
            &["tenants", "acme", "upgrade"][..],
            "/api/v1/tenants/acme/upgrade",
        ),
        (
            &["users", "a@b.c", "tenants", "acme"][..],
            "/api/v1/users/a@b.c/tenants/acme",
        ),
        (&["tokens", "../status"][..], "/api/v1/tokens/..%2Fstatus"),
        (&["tenants", "a b?c"][..], "/api/v1/tenants/a%20b%3Fc"),
    ];
    for (segments, want) in cases {
        assert_eq!(Client::path(segments), want, "{segments:?}");
    }
}

#[test]
fn a_change_has_settled_once_the_controller_acted_on_it() {
    let submitted = tenant(5, 4, Phase::Provisioning, "11.3.0");
    let cases = [
        ("not seen yet", tenant(5, 4, Phase::Ready, "11.3.0"), None),
        (
            "seen, still going",
            tenant(5, 5, Phase::Provisioning, "11.3.0"),
            None,
        ),
        (
            "ready",
            tenant(5, 5, Phase::Ready, "11.3.0"),
            Some(Outcome::Settled),
        ),
        (
            "a later change",
            tenant(6, 6, Phase::Ready, "11.3.0"),
            Some(Outcome::Settled),
        ),
        (
            "failed",
            tenant(5, 5, Phase::Failed, "11.3.0"),
            Some(Outcome::Failed),
        ),
        (
            "rolled back",
            tenant(6, 6, Phase::Ready, "11.2.0"),
            Some(Outcome::RolledBack),
        ),
        (
            "failed on the old version",
            tenant(6, 6, Phase::Failed, "11.2.0"),
            Some(Outcome::RolledBack),
        ),
    ];
    for (what, now, want) in cases {
        assert_eq!(
            outcome(&detail(now), &submitted, Phase::is_settled),
            want,
            "{what}"
        );
    }
    // A wake settles only once awake.
    let asleep = detail(tenant(5, 5, Phase::Sleeping, "11.3.0"));
    let awake = |p: Phase| matches!(p, Phase::Ready | Phase::Failed);
    assert_eq!(outcome(&asleep, &submitted, awake), None);
}

#[tokio::test]
async fn following_gives_up_after_its_timeout_and_says_where_to_look() {
    let body: &'static str = Box::leak(
        serde_json::to_string(&detail(tenant(1, 0, Phase::Pending, "11.3.0")))
            .unwrap()
            .into_boxed_str(),
    );
    let url = answering(200, body).await;
    let dir = tempfile::tempdir().unwrap();
    let api = Client::new(&target(url, None, dir.path())).unwrap();
    let submitted = tenant(1, 0, Phase::Pending, "11.3.0");
    let mut looks = 0;
    let e = api
        .follow(
            "acme",
            &submitted,
            Phase::is_settled,
            Duration::ZERO,
            |_| looks += 1,
        )
        .await
        .unwrap_err();
    assert_eq!(looks, 1);
    assert_eq!(
        e.to_string(),
        "tenant acme did not settle within 0s (phase pending); see `pug tenant show acme`"
    );
}
