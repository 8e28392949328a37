//! Unit tests of the proxy module (`super`).
//!
//! Owns: the header hygiene, which cookies pass to a tenant, and which requests are WebSocket upgrades.
//!
//! Must not: reach outside the process (no network beyond loopback, no shared state).

use super::*;

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

#[test]
fn only_grafanas_cookies_for_this_tenant_pass() {
    let acme = TenantId::parse("my-acme").unwrap();
    // (Cookie lines, what reaches Grafana)
    let cases: &[(&[&str], Option<&str>)] = &[
        (
            &["grafana_session_my_acme=s1"],
            Some("grafana_session_my_acme=s1"),
        ),
        (
            &["_oauth2_proxy=secret; grafana_session_my_acme=s1; CF_Authorization=x"],
            Some("grafana_session_my_acme=s1"),
        ),
        (&["pug_session=p; pug_csrf=c"], None),
        // Another tenant's Grafana session (path mode: one host) stays out.
        (&["grafana_session_bob=s2; grafana_session=s3"], None),
        (
            &[
                "redirect_to=%2Ft%2Fmy-acme%2F",
                "renderKey=r; grafana_session_expiry=1",
            ],
            Some("redirect_to=%2Ft%2Fmy-acme%2F; renderKey=r; grafana_session_expiry=1"),
        ),
        (
            &["oauth_state=a; oauth_code_verifier=b; login_error=c; sticky=lb"],
            Some("oauth_state=a; oauth_code_verifier=b; login_error=c"),
        ),
        // Names are case-sensitive, as Go's `Request.Cookie` reads them.
        (&["RenderKey=r; Grafana_session_my_acme=s"], None),
        (
            &["grafana_session_my-acme=s; grafana_session_my_acm=s"],
            None,
        ),
        (
            &["; ;grafana_session_expiry=1;"],
            Some("grafana_session_expiry=1"),
        ),
    ];
    for (lines, want) in cases {
        let pairs: Vec<(&str, &str)> = lines.iter().map(|l| ("cookie", *l)).collect();
        let mut h = headers(&pairs);
        filter_cookies(&mut h, &acme);
        let got: Vec<&str> = h
            .get_all(header::COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(got, want.iter().copied().collect::<Vec<_>>(), "{lines:?}");
    }
}

/// (method, headers, passed on as an upgrade)
type UpgradeCase<'a> = (Method, &'a [(&'a str, &'a str)], bool);

#[test]
fn only_websocket_handshakes_are_upgrades() {
    let cases: &[UpgradeCase] = &[
        (
            Method::GET,
            &[("connection", "Upgrade"), ("upgrade", "websocket")],
            true,
        ),
        (
            Method::GET,
            &[
                ("connection", "keep-alive, upgrade"),
                ("upgrade", "WebSocket"),
            ],
            true,
        ),
        (
            Method::GET,
            &[
                ("connection", "Upgrade, HTTP2-Settings"),
                ("upgrade", "h2c"),
            ],
            false,
        ),
        (
            Method::GET,
            &[("connection", "upgrade"), ("upgrade", "TLS/1.0")],
            false,
        ),
        (Method::GET, &[("upgrade", "websocket")], false),
        (
            Method::POST,
            &[("connection", "upgrade"), ("upgrade", "websocket")],
            false,
        ),
    ];
    for (method, pairs, want) in cases {
        let got = upgrade_of(method, &headers(pairs));
        assert_eq!(got.is_some(), *want, "{method} {pairs:?}");
        if let Some(v) = got {
            assert_eq!(v, "websocket");
        }
    }
}
