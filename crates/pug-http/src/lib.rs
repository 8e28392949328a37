//! The one way pug builds an HTTP client.
//!
//! Owns: the TLS of every reqwest client pug builds, production and test alike. [`builder`]
//! is `reqwest::Client::builder()` with a ready rustls config ([`tls_config`]): the ring
//! provider and the Mozilla roots compiled in (webpki-roots), as reqwest 0.12's `rustls-tls`
//! was. pug's reqwest (0.13, `rustls-no-provider`) otherwise builds a
//! rustls-platform-verifier config for each client, which needs a process-wide provider
//! installed first and reads the system certificate store; a scratch image has none, and
//! building the client then fails ("No CA certificates were loaded from the system").
//!
//! Must not: depend on any `pug-*` crate (every crate may depend on this one, the test
//! support too), set anything besides TLS (timeouts, redirects, pools stay with the caller),
//! read the system certificate store, or install a process-wide rustls provider. A
//! `reqwest::Client::new()` or `reqwest::get` anywhere in pug bypasses it and would fail as
//! above: use [`builder`]. (chromiumoxide builds such a client only in `Browser::connect`
//! to an `http` URL; pug only uses `Browser::launch`.)

#![forbid(unsafe_code)]

use std::sync::Arc;

/// rustls on the ring provider, trusting the Mozilla roots compiled in (webpki-roots) and
/// nothing from the host.
pub fn tls_config() -> rustls::ClientConfig {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// `reqwest::Client::builder()` with [`tls_config`] as its TLS backend. Use it for every
/// client. (reqwest ignores its own TLS options, such as `add_root_certificate`, on it.)
pub fn builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder().tls_backend_preconfigured(tls_config())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client builds with no process-wide provider installed, and building installs none
    /// (each test is its own process under nextest, and this crate installs none).
    #[test]
    fn builds_without_a_process_provider() {
        assert!(rustls::crypto::CryptoProvider::get_default().is_none());
        builder()
            .build()
            .expect("a client on the preconfigured TLS");
        assert!(rustls::crypto::CryptoProvider::get_default().is_none());
    }
}
