//! The gateway's identity tokens: who a request is from, as the tenant's Grafana is told when
//! it trusts a signature instead of an address (`[auth.jwt]`, the swarm backend).
//!
//! Why: Grafana's auth proxy trusts whoever sends its header from a whitelisted address. On a
//! swarm, tasks of pug's own service get no fixed addresses, so several pug replicas cannot be
//! whitelisted without whitelisting the overlay, which every tenant's Grafana shares. Instead
//! each request carries a short-lived JWT signed by the gateway's Ed25519 key (one key for
//! every pug replica, kept encrypted in the store), and each tenant's Grafana verifies it with
//! the public key (`key_file`) and requires `iss = pug` and `aud = pug:<tenant>`
//! (`expect_claims`), so a token one tenant's Grafana sees is worth nothing at another's.
//!
//! Grafana (`pkg/services/auth/jwt`) parses the token with go-jose, which accepts `EdDSA`, and
//! reads a `PUBLIC KEY` PEM with `x509.ParsePKIXPublicKey`; it checks `exp` and refuses a
//! token issued in the future, so `iat` is set a minute back to absorb clock skew between
//! pug's host and the swarm's nodes.
//!
//! Written by hand (as the embed tokens are): signing a fixed header and a handful of claims
//! with ed25519-dalek is a few lines, and a JWT crate would bring a second Ed25519 stack.
//!
//! Must not: do IO, or sign for a login or role the gateway has not authorised (callers sign
//! only after authorisation).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::EncodePublicKey;
use ed25519_dalek::{Signer as _, SigningKey};
use pug_types::{ExposeSecret, SecretString, TenantId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::GrafanaRole;

/// The token's issuer, and what every tenant's Grafana expects as `iss`.
pub const ISSUER: &str = "pug";
/// The header the gateway sends the token in (Grafana's `[auth.jwt] header_name`).
pub const HEADER: &str = "X-Pug-Identity";
/// How long a token is valid, in seconds.
pub const LIFETIME_SECS: i64 = 300;
/// How far back `iat` is set, in seconds (clock skew between pug and the tenant's node).
pub const SKEW_SECS: i64 = 60;

/// The audience of a tenant's tokens: what its Grafana expects as `aud`.
pub fn audience(tenant: &TenantId) -> String {
    format!("pug:{tenant}")
}

/// The claims the gateway signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityClaims {
    pub iss: String,
    pub aud: String,
    /// The person's Grafana login.
    pub sub: String,
    pub email: String,
    pub name: String,
    /// `Viewer`, `Editor` or `Admin` (Grafana's `role_attribute_path = role`).
    pub role: String,
    pub iat: i64,
    pub exp: i64,
}

/// The gateway's signing key.
pub struct IdentitySigner {
    key: SigningKey,
}

impl std::fmt::Debug for IdentitySigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentitySigner")
            .field(
                "public_key",
                &URL_SAFE_NO_PAD.encode(self.key.verifying_key().as_bytes()),
            )
            .finish()
    }
}

impl IdentitySigner {
    /// The key derived from `secret` (a random secret kept in the store): every pug replica
    /// with the same store derives the same key.
    pub fn from_secret(secret: &SecretString) -> Self {
        let mut h = Sha256::new();
        h.update(b"pug gateway identity key v1\0");
        h.update(secret.expose_secret().as_bytes());
        let seed: [u8; 32] = h.finalize().into();
        Self {
            key: SigningKey::from_bytes(&seed),
        }
    }

    /// The public key as a `PUBLIC KEY` PEM (SubjectPublicKeyInfo), Grafana's `key_file`.
    pub fn public_key_pem(&self) -> String {
        self.key
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .expect("an Ed25519 public key always encodes")
    }

    /// A token saying that `login` (with `email`, `name`) is `role` in `tenant`, valid from
    /// `now_secs - SKEW_SECS` to `now_secs + LIFETIME_SECS`.
    pub fn sign(
        &self,
        tenant: &TenantId,
        login: &str,
        email: &str,
        name: &str,
        role: GrafanaRole,
        now_secs: i64,
    ) -> String {
        let claims = IdentityClaims {
            iss: ISSUER.to_owned(),
            aud: audience(tenant),
            sub: login.to_owned(),
            email: email.to_owned(),
            name: name.to_owned(),
            role: role.as_str().to_owned(),
            iat: now_secs - SKEW_SECS,
            exp: now_secs + LIFETIME_SECS,
        };
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"EdDSA","typ":"JWT"}"#);
        let payload =
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("claims serialise"));
        let signing_input = format!("{header}.{payload}");
        let signature = self.key.sign(signing_input.as_bytes());
        format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.to_bytes())
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::pkcs8::DecodePublicKey;
    use ed25519_dalek::{Signature, Verifier, VerifyingKey};

    fn parts(token: &str) -> (serde_json::Value, IdentityClaims, Vec<u8>, String) {
        let p: Vec<&str> = token.split('.').collect();
        assert_eq!(p.len(), 3, "{token}");
        let header = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p[0]).unwrap()).unwrap();
        let claims = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p[1]).unwrap()).unwrap();
        (
            header,
            claims,
            URL_SAFE_NO_PAD.decode(p[2]).unwrap(),
            format!("{}.{}", p[0], p[1]),
        )
    }

    #[test]
    fn a_token_verifies_with_the_published_key_and_says_who_for_which_tenant() {
        let signer = IdentitySigner::from_secret(&SecretString::from("s3cret".to_owned()));
        let acme = TenantId::parse("acme").unwrap();
        let token = signer.sign(
            &acme,
            "alice",
            "alice@example.com",
            "Alice",
            GrafanaRole::Editor,
            1_000_000,
        );
        let (header, claims, signature, input) = parts(&token);
        assert_eq!(header, serde_json::json!({"alg": "EdDSA", "typ": "JWT"}));
        assert_eq!(
            claims,
            IdentityClaims {
                iss: "pug".into(),
                aud: "pug:acme".into(),
                sub: "alice".into(),
                email: "alice@example.com".into(),
                name: "Alice".into(),
                role: "Editor".into(),
                iat: 1_000_000 - SKEW_SECS,
                exp: 1_000_000 + LIFETIME_SECS,
            }
        );
        let public = VerifyingKey::from_public_key_pem(&signer.public_key_pem()).unwrap();
        let signature = Signature::from_slice(&signature).unwrap();
        public.verify(input.as_bytes(), &signature).unwrap();
        // Any change to the claims breaks the signature.
        let forged = input.replace('.', ".x");
        assert!(public.verify(forged.as_bytes(), &signature).is_err());
    }

    #[test]
    fn the_key_follows_the_stored_secret_and_only_it() {
        let pem = |s: &str| {
            IdentitySigner::from_secret(&SecretString::from(s.to_owned())).public_key_pem()
        };
        assert_eq!(pem("one"), pem("one"), "every replica derives the same key");
        assert_ne!(pem("one"), pem("two"));
        assert!(
            pem("one").starts_with("-----BEGIN PUBLIC KEY-----\n"),
            "{}",
            pem("one")
        );
    }
}
