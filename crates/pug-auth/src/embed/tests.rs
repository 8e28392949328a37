//! Unit tests of embed tokens (`super`).
//!
//! Owns: key formats, claims, HS256 and EdDSA verification, refused tokens, embed identities, session lifetimes and the jti and kid checks.
//!
//! Must not: reach outside the process (no network beyond loopback, no shared state).

use super::*;

fn keys() -> Vec<(EmbedKeyInfo, SecretString)> {
    vec![
        (
            EmbedKeyInfo {
                id: "ek_any".into(),
                name: "webapp".into(),
                tenant: None,
                created_at_ms: 0,
                algorithm: HS256.into(),
            },
            SecretString::from("k1-secret".to_owned()),
        ),
        (
            EmbedKeyInfo {
                id: "ek_bob".into(),
                name: "bob only".into(),
                tenant: Some("bob".into()),
                created_at_ms: 0,
                algorithm: HS256.into(),
            },
            SecretString::from("k2-secret".to_owned()),
        ),
    ]
}

fn claims(tenant: &str, exp: i64) -> EmbedClaims {
    EmbedClaims {
        tenant: tenant.into(),
        sub: "carol".into(),
        email: "carol@example.com".into(),
        role: "Viewer".into(),
        exp,
        name: None,
        jti: None,
    }
}

#[test]
fn good_token_verifies() {
    let acme = TenantId::parse("acme").unwrap();
    let t = sign("ek_any", "k1-secret", &claims("acme", 1300));
    assert_eq!(
        verify(&t, &keys(), &acme, 1000).unwrap().claims.sub,
        "carol"
    );
}

#[test]
fn eddsa_tokens_verify_with_the_public_key_only() {
    let acme = TenantId::parse("acme").unwrap();
    let (private, public) = generate_ed25519();
    let mut keys = keys();
    keys.push((
        EmbedKeyInfo {
            id: "ek_ed".into(),
            name: "ed".into(),
            tenant: None,
            created_at_ms: 0,
            algorithm: EDDSA.into(),
        },
        SecretString::from(public.clone()),
    ));
    let good = sign_eddsa("ek_ed", private.expose_secret(), &claims("acme", 1300)).unwrap();
    assert_eq!(
        verify(&good, &keys, &acme, 1000).unwrap().claims.sub,
        "carol"
    );
    // Without a kid, the EdDSA key is found among the others.
    let (_, payload_sig) = good.split_once('.').unwrap();
    let no_kid = format!(
        "{}.{payload_sig}",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"EdDSA","typ":"JWT"}"#)
    );
    // (The header is part of what was signed, so changing it breaks the signature.)
    assert_eq!(
        verify(&no_kid, &keys, &acme, 1000),
        Err(EmbedError::BadSignature)
    );

    // Tampered claims.
    let (h, rest) = good.split_once('.').unwrap();
    let (_, sig) = rest.split_once('.').unwrap();
    let mut evil = claims("acme", 1300);
    evil.role = "Admin".into();
    let forged = format!(
        "{h}.{}.{sig}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&evil).unwrap())
    );
    assert_eq!(
        verify(&forged, &keys, &acme, 1000),
        Err(EmbedError::BadSignature)
    );

    // Another key pair's signature under this kid.
    let (other, _) = generate_ed25519();
    let wrong = sign_eddsa("ek_ed", other.expose_secret(), &claims("acme", 1300)).unwrap();
    assert_eq!(
        verify(&wrong, &keys, &acme, 1000),
        Err(EmbedError::BadSignature)
    );

    // Algorithm confusion: an HS256 token "signed" with the public key as the secret.
    let confused = sign("ek_ed", &public, &claims("acme", 1300));
    assert_eq!(
        verify(&confused, &keys, &acme, 1000),
        Err(EmbedError::UnsupportedAlgorithm("HS256".into()))
    );
    // …and an EdDSA header on an HS256 key.
    let (h_ed, _) = good.split_once('.').unwrap();
    let hs = sign("ek_any", "k1-secret", &claims("acme", 1300));
    let (_, hs_rest) = hs.split_once('.').unwrap();
    let swapped = format!("{h_ed}.{hs_rest}");
    assert!(verify(&swapped, &keys, &acme, 1000).is_err());

    assert!(parse_public_key(&public).is_ok());
    assert_eq!(parse_public_key("not a key"), Err(BadPublicKey));
    assert_eq!(parse_public_key(private.expose_secret()), Err(BadPublicKey));
}

#[test]
fn bad_tokens_are_refused() {
    let acme = TenantId::parse("acme").unwrap();
    let now = 1000;
    let cases = [
        (
            sign("ek_any", "k1-secret", &claims("acme", 900)),
            EmbedError::Expired,
        ),
        (
            sign("ek_any", "k1-secret", &claims("acme", 5000)),
            EmbedError::TooLong,
        ),
        (
            sign("ek_any", "wrong", &claims("acme", 1300)),
            EmbedError::BadSignature,
        ),
        (
            sign("ek_nope", "k1-secret", &claims("acme", 1300)),
            EmbedError::UnknownKey,
        ),
        (
            sign("ek_any", "k1-secret", &claims("bob", 1300)),
            EmbedError::WrongTenant {
                token: "bob".into(),
                url: "acme".into(),
            },
        ),
        (
            sign("ek_bob", "k2-secret", &claims("acme", 1300)),
            EmbedError::WrongTenant {
                token: "bob".into(),
                url: "acme".into(),
            },
        ),
    ];
    for (token, want) in cases {
        assert_eq!(verify(&token, &keys(), &acme, now).unwrap_err(), want);
    }
    // Tampered payload: same signature, other claims.
    let good = sign("ek_any", "k1-secret", &claims("acme", 1300));
    let evil = sign(
        "ek_any",
        "k1-secret",
        &EmbedClaims {
            role: "Admin".into(),
            ..claims("acme", 1300)
        },
    );
    let parts: Vec<&str> = good.split('.').collect();
    let evil_parts: Vec<&str> = evil.split('.').collect();
    let tampered = format!("{}.{}.{}", parts[0], evil_parts[1], parts[2]);
    assert_eq!(
        verify(&tampered, &keys(), &acme, now).unwrap_err(),
        EmbedError::BadSignature
    );
    // alg none.
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
        parts[1]
    );
    assert!(matches!(
        verify(&none, &keys(), &acme, now).unwrap_err(),
        EmbedError::UnsupportedAlgorithm(_)
    ));
    assert_eq!(
        verify("garbage", &keys(), &acme, now).unwrap_err(),
        EmbedError::Malformed
    );
}

#[test]
fn embed_identities_never_are_pug_users_the_admin_or_each_other() {
    use crate::identity::valid_login;
    // (key, sub) → (login, email)
    let cases = [
        (
            "ek_1",
            "admin",
            "embed:ek_1:admin",
            "admin+ek_1@embed.invalid",
        ),
        (
            "ek_1",
            "alice",
            "embed:ek_1:alice",
            "alice+ek_1@embed.invalid",
        ),
        (
            "ek_2",
            "alice",
            "embed:ek_2:alice",
            "alice+ek_2@embed.invalid",
        ),
        (
            "ek_1",
            "admin@localhost",
            "embed:ek_1:admin@localhost",
            "admin=localhost+ek_1@embed.invalid",
        ),
        (
            "ek_aB-_9",
            "a.b-c_d",
            "embed:ek_aB-_9:a.b-c_d",
            "a.b-c_d+ek_aB-_9@embed.invalid",
        ),
    ];
    let mut logins = std::collections::HashSet::new();
    let mut emails = std::collections::HashSet::new();
    for (key, sub, login, email) in cases {
        assert_eq!(grafana_login(key, sub), login);
        assert_eq!(grafana_email(key, sub), email);
        // No pug user can be named like this, and no email is Grafana's default admin's.
        assert!(!valid_login(login), "{login}");
        assert_ne!(email, "admin@localhost");
        assert!(login.starts_with("embed:") && email.ends_with("@embed.invalid"));
        assert!(logins.insert(login.to_owned()) && emails.insert(email.to_owned()));
    }
    // `@` → `=` keeps distinct subjects apart (a sub cannot contain `=`).
    assert_ne!(grafana_email("k", "a@b"), grafana_email("k", "a.b"));
}

#[test]
fn session_lifetime_follows_the_jti() {
    let now_ms = 1_000_000;
    let ttl = 8 * 3600 * 1000;
    let with = |jti: Option<&str>, exp: i64| EmbedClaims {
        jti: jti.map(str::to_owned),
        ..claims("acme", exp)
    };
    // (claims, expected expiry)
    let cases = [
        (with(Some("id-1"), 1300), now_ms + ttl),
        // Without a jti the session ends with the token…
        (with(None, 1300), 1_300_000),
        // …but never less than a minute from now.
        (with(None, 1010), now_ms + 60_000),
    ];
    for (c, want) in cases {
        assert_eq!(session_expiry_ms(&c, now_ms, ttl), want, "{c:?}");
    }
    assert_eq!(remember_jti_until_ms(&with(Some("x"), 1300)), 1_330_000);
}

#[test]
fn jti_and_kid_are_checked() {
    let acme = TenantId::parse("acme").unwrap();
    let with = |jti: &str| EmbedClaims {
        jti: Some(jti.to_owned()),
        ..claims("acme", 1300)
    };
    let ok = sign("ek_any", "k1-secret", &with("0b5e6f2c-1"));
    let v = verify(&ok, &keys(), &acme, 1000).unwrap();
    assert_eq!(
        (v.claims.jti.as_deref(), v.key_id.as_str()),
        (Some("0b5e6f2c-1"), "ek_any")
    );
    for bad in ["", "has space", &"x".repeat(MAX_JTI_LEN + 1), "tab\t"] {
        let t = sign("ek_any", "k1-secret", &with(bad));
        assert_eq!(
            verify(&t, &keys(), &acme, 1000),
            Err(EmbedError::BadClaim("jti")),
            "{bad:?}"
        );
    }
    assert_eq!(key_id_of(&ok).as_deref(), Some("ek_any"));
    let long = sign(&"k".repeat(MAX_KID_LEN + 1), "k1-secret", &with("a"));
    assert_eq!(key_id_of(&long), None);
    assert_eq!(key_id_of("garbage"), None);
}
