//! Unit tests of the process backend's pure parts.
//!
//! Owns: the check that every setting the backend writes itself is reserved.
//!
//! Must not: start processes (the backend's integration tests do).

use std::path::Path;

use pug_types::Overrides;

use super::backend_settings;

/// What the backend writes into `grafana.ini` besides the spec's settings cannot be overridden
/// (the spec's own are checked in `settings.rs`).
#[test]
fn every_setting_the_backend_writes_is_reserved() {
    for (section, key, _) in
        backend_settings(Path::new("/data/tenants/acme/replica-0"), "127.0.0.1")
    {
        let path = format!("{section}.{key}");
        assert!(
            Overrides::default().insert(&path, "x").is_err(),
            "{path}, which the process backend writes, can be overridden"
        );
    }
}
