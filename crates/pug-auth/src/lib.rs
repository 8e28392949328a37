//! Who a person is to pug, as pure functions the API and the gateway share: valid logins,
//! emails and Grafana roles (and the identities reserved for Grafana's built-in admin),
//! password hashes, signed cookie values, embed tokens, and the gateway's identity tokens for
//! tenants' Grafanas that trust a signature ([`gateway_token`]).
//!
//! Owns: [`identity`], [`password`], [`signer`], [`embed`], [`gateway_token`].
//!
//! Must not: do IO (the store hands in embed keys; the gateway keeps sessions and throttles),
//! or depend on the gateway or the API.

#![forbid(unsafe_code)]

pub mod embed;
pub mod gateway_token;
pub mod identity;
pub mod password;
pub mod signer;

pub use embed::{EmbedClaims, EmbedError};
pub use gateway_token::IdentitySigner;
pub use identity::{validate_new_user, GrafanaRole};
pub use password::{hash_password, random_token, verify_password};
pub use signer::Signer;
