//! The attack suite of issue 14 (`SECURITY.md`): every hole of the security review
//! (`../shared/research/security-review.md`) performed against the real `pug` binary, one
//! module per area, each test named after the attack it performs. Per-crate attack tests
//! (gateway, store, orchestrator, docker) live beside their crates and are listed in SECURITY.md.

#[path = "../support/mod.rs"]
mod support;

mod api;
mod login;
mod process_isolation;
mod sessions;
mod settings;
