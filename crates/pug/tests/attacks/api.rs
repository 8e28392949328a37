//! Attacks on pug's API and `/metrics` (issue 14, holes 10 and 17's tokens part): an anonymous
//! visitor reads the customer list from `/metrics`; a revoked, expired or read-only token keeps
//! (or gains) powers it should not have; a token listing leaks secrets.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{http, wait_for, Pug};

const T: Duration = Duration::from_secs(60);

/// `GET url` with an optional bearer token: (status, body as text).
fn get_text(url: &str, token: Option<&str>) -> (u16, String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut req = pug_test_support::http::client()
            .get(url)
            .timeout(Duration::from_secs(10));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    })
}

/// A new token made through the API with the local admin token: (secret, id).
fn make_token(pug: &Pug, name: &str, role: &str, expires_in: Option<&str>) -> (String, String) {
    let (code, body) = pug.api(
        "POST",
        "/api/v1/tokens",
        Some(json!({ "name": name, "role": role, "expires_in": expires_in })),
    );
    assert_eq!(code, 201, "{body}");
    (
        body["token"].as_str().unwrap().to_owned(),
        body["id"].as_str().unwrap().to_owned(),
    )
}

#[test]
fn anonymous_scrape_of_metrics_gets_401_and_no_tenant_ids() {
    let pug = Pug::start((26200, 26219), &[]);
    let tenant = "secretcustomer";
    pug.ok(&["tenant", "create", tenant, "--version", "11.3.0"]);
    pug.wait_phase(tenant, "ready", T);
    let metrics = format!("{}/metrics", pug.url);

    // The attack: anyone who reaches the public port asks for /metrics.
    for token in [None, Some("pug_not-a-token"), Some("")] {
        let (code, body) = get_text(&metrics, token);
        assert_eq!(code, 401, "token {token:?}: {body}");
        let json: Value = serde_json::from_str(&body).expect("a JSON error");
        assert!(
            json["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{body}"
        );
        assert!(!body.contains(tenant), "the 401 names a tenant: {body}");
        assert!(
            !body.contains("pug_tenant"),
            "the 401 carries series: {body}"
        );
    }

    // Prometheus with a read token (its `authorization` scrape setting) gets the series.
    let (read, _) = make_token(&pug, "prometheus", "read", None);
    let (code, body) = get_text(&metrics, Some(&read));
    assert_eq!(code, 200, "{body}");
    for needle in [
        format!("pug_tenant_ready_replicas{{tenant=\"{tenant}\"}} 1"),
        "process_resident_memory_bytes".to_owned(),
    ] {
        assert!(body.contains(&needle), "{needle} missing in:\n{body}");
    }
    // An admin token works too; /healthz stays open.
    assert_eq!(get_text(&metrics, Some(&pug.token())).0, 200);
    assert_eq!(get_text(&format!("{}/healthz", pug.url), None).0, 200);
}

#[test]
fn revoked_token_is_refused_at_once() {
    let pug = Pug::start((26220, 26229), &[]);
    let (stolen, id) = make_token(&pug, "ci", "admin", None);
    let status = format!("{}/api/v1/status", pug.url);
    assert_eq!(http("GET", &status, Some(&stolen), None).0, 200);

    // The operator learns the token leaked and revokes it by id.
    let out = pug.ok(&["token", "revoke", &id]);
    assert!(out.contains("revoked"), "{out}");

    // The thief's very next requests fail, on the API and on /metrics.
    let (code, body) = http("GET", &status, Some(&stolen), None);
    assert_eq!(code, 401, "{body}");
    assert!(body["error"].is_string(), "{body}");
    let (code, body) = http(
        "POST",
        &format!("{}/api/v1/tokens", pug.url),
        Some(&stolen),
        Some(json!({ "name": "backdoor" })),
    );
    assert_eq!(code, 401, "{body}");
    assert_eq!(
        get_text(&format!("{}/metrics", pug.url), Some(&stolen)).0,
        401
    );

    // Revoking by name works too; an unknown one is a 404 with a JSON error, a clear CLI line.
    let (_, _) = make_token(&pug, "old-script", "read", None);
    pug.ok(&["token", "revoke", "old-script"]);
    let (code, body) = pug.api("DELETE", "/api/v1/tokens/old-script", None);
    assert_eq!(code, 404, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("token list"),
        "{body}"
    );
    let err = pug.fails(&["token", "revoke", "old-script"]);
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    // The local CLI token and the first-start admin token still work.
    assert_eq!(pug.api("GET", "/api/v1/status", None).0, 200);
    let listing: Value = serde_json::from_str(&pug.ok(&["token", "list", "-o", "json"])).unwrap();
    let names: Vec<&str> = listing
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"admin") && names.iter().any(|n| n.starts_with("local-cli@")),
        "{listing}"
    );
    assert!(
        !names.contains(&"ci") && !names.contains(&"old-script"),
        "{listing}"
    );
}

#[test]
fn expired_token_is_refused() {
    let pug = Pug::start((26230, 26239), &[]);
    let status = format!("{}/api/v1/status", pug.url);
    // A token that lives one second: it stops working by itself, with no one revoking it.
    let (short, id) = make_token(&pug, "short", "admin", Some("1s"));
    let body = wait_for(Duration::from_secs(20), "the token to expire", || {
        let (code, body) = http("GET", &status, Some(&short), None);
        (code == 401).then_some(body)
    });
    assert!(
        body["error"].as_str().unwrap().contains("expired"),
        "{body}"
    );
    assert_eq!(
        get_text(&format!("{}/metrics", pug.url), Some(&short)).0,
        401
    );
    // It stays listed, marked expired, until revoked.
    let (_, listing) = pug.api("GET", "/api/v1/tokens", None);
    let listed = listing
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id.as_str())
        .unwrap_or_else(|| panic!("{listing}"));
    assert_eq!(listed["expired"], true, "{listed}");

    // The CLI makes expiring tokens; bad durations are one clear line and change nothing.
    let out = pug.cli(&[
        "token",
        "create",
        "--name",
        "week",
        "--role",
        "read",
        "--expires",
        "7d",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("expires"), "{stderr}");
    let token = String::from_utf8(out.stdout).unwrap();
    assert_eq!(http("GET", &status, Some(token.trim()), None).0, 200);
    let ids = |pug: &Pug| -> Vec<String> {
        let (_, listing) = pug.api("GET", "/api/v1/tokens", None);
        listing
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let before = ids(&pug);
    for bad in ["0s", "soon", "30", "20y"] {
        let err = pug.fails(&["token", "create", "--name", "x", "--expires", bad]);
        assert_eq!(err.trim().lines().count(), 1, "{bad}: {err}");
        assert!(err.contains("expires"), "{bad}: {err}");
        let (code, body) = pug.api(
            "POST",
            "/api/v1/tokens",
            Some(json!({ "name": "x", "expires_in": bad })),
        );
        assert_eq!(code, 422, "{bad}: {body}");
        assert_eq!(body["field"], "expires_in", "{body}");
    }
    assert_eq!(ids(&pug), before);
}

#[test]
fn read_token_cannot_list_or_revoke_tokens() {
    let pug = Pug::start((26240, 26249), &[]);
    let (read, read_id) = make_token(&pug, "prometheus", "read", None);
    let (_, admin_id) = make_token(&pug, "ops", "admin", None);
    let tokens = format!("{}/api/v1/tokens", pug.url);

    // A read token (Prometheus holds one) tries to learn which tokens exist...
    let (code, body) = http("GET", &tokens, Some(&read), None);
    assert_eq!(code, 403, "{body}");
    assert!(body["error"].is_string(), "{body}");
    assert!(!body.to_string().contains(&admin_id), "{body}");
    // ...to revoke the operator's tokens (or its own), and to make itself an admin token.
    for id in [&admin_id, &read_id] {
        let (code, body) = http("DELETE", &format!("{tokens}/{id}"), Some(&read), None);
        assert_eq!(code, 403, "{body}");
    }
    let (code, body) = http(
        "POST",
        &tokens,
        Some(&read),
        Some(json!({ "name": "mine" })),
    );
    assert_eq!(code, 403, "{body}");
    // Nothing changed.
    let (_, listing) = pug.api("GET", "/api/v1/tokens", None);
    let ids: Vec<&str> = listing
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&admin_id.as_str()) && ids.contains(&read_id.as_str()),
        "{listing}"
    );
    assert!(!listing.to_string().contains("\"mine\""), "{listing}");
}

#[test]
fn token_listing_never_contains_a_token_secret() {
    let pug = Pug::start((26250, 26259), &[]);
    let secrets: Vec<String> = vec![
        pug.token(),
        make_token(&pug, "prometheus", "read", None).0,
        make_token(&pug, "ci", "admin", Some("2h")).0,
    ];
    // Use one, so that the listing has a last-use time.
    assert_eq!(
        http(
            "GET",
            &format!("{}/api/v1/status", pug.url),
            Some(&secrets[1]),
            None
        )
        .0,
        200
    );
    let api = pug.api("GET", "/api/v1/tokens", None).1.to_string();
    let cli_json = pug.ok(&["token", "list", "-o", "json"]);
    let cli_table = pug.ok(&["token", "list"]);
    for listing in [&api, &cli_json, &cli_table] {
        for secret in &secrets {
            use sha2::Digest;
            let secret = secret.trim();
            let hash = hex::encode(sha2::Sha256::digest(secret.as_bytes()));
            // Neither the token, nor any 16-character piece of it, nor its full hash.
            assert!(!listing.contains(secret), "{listing}");
            let body = secret.trim_start_matches("pug_");
            for piece in body.as_bytes().chunks(16).filter(|c| c.len() == 16) {
                let piece = std::str::from_utf8(piece).unwrap();
                assert!(!listing.contains(piece), "a piece of a secret in {listing}");
            }
            assert!(!listing.contains(&hash), "a token hash in {listing}");
            assert!(
                !listing.contains(&hash[..20]),
                "a long hash prefix in {listing}"
            );
        }
        assert!(
            !listing.contains("pug_"),
            "something token-like in {listing}"
        );
    }
    for needle in [
        "ID",
        "NAME",
        "ROLE",
        "CREATED",
        "EXPIRES",
        "LAST USED",
        "prometheus",
        "never",
    ] {
        assert!(
            cli_table.contains(needle),
            "{needle} missing in:\n{cli_table}"
        );
    }
    let listing: Value = serde_json::from_str(&cli_json).unwrap();
    let prometheus = listing
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "prometheus")
        .unwrap();
    assert!(prometheus["last_used_at_ms"].is_i64(), "{prometheus}");
    assert_eq!(prometheus["role"], "read");

    // The token routes are in the OpenAPI document.
    let (code, doc) = http(
        "GET",
        &format!("{}/api/v1/openapi.json", pug.url),
        None,
        None,
    );
    assert_eq!(code, 200);
    for (path, method) in [
        ("/api/v1/tokens", "get"),
        ("/api/v1/tokens", "post"),
        ("/api/v1/tokens/{id}", "delete"),
    ] {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} is not documented"
        );
    }
}

#[test]
fn revoking_the_last_admin_token_is_refused() {
    let pug = Pug::start((26260, 26269), &[]);
    // Revoke every admin token but the one in use; the last one must stay.
    pug.ok(&["token", "revoke", "admin"]);
    let (code, body) = pug.api("DELETE", "/api/v1/tokens/local-cli", None);
    assert_eq!(code, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("last"), "{body}");
    let err = pug.fails(&["token", "revoke", "local-cli"]);
    assert!(err.contains("create another admin token"), "{err}");
    assert_eq!(pug.api("GET", "/api/v1/status", None).0, 200);
    // With another admin token, the local one can go.
    let (other, _) = make_token(&pug, "ops", "admin", None);
    pug.ok(&["token", "revoke", "local-cli"]);
    let (code, _) = http(
        "GET",
        &format!("{}/api/v1/tokens", pug.url),
        Some(&other),
        None,
    );
    assert_eq!(code, 200);
}
