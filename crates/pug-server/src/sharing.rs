//! Whether this pug's controller may share its store with the other pugs alive on it.
//!
//! Owns: the decision ([`refusal`], pure) and reading what it needs (the store's live
//! `pug_replicas` rows, whether a pid of this host still runs).
//!
//! Must not: decide anything about leases (the controller and the store do).

use std::path::Path;

use pug_config::Backend;
use pug_store::{Replica, Store};

use crate::ServeError;

/// Why this pug's controller must not start beside `others` (the pugs whose heartbeat is alive
/// on the store, minus those of this host whose process is gone), or `None`.
/// - process backend: its tenants are one host's processes, which no other pug sees;
/// - swarm with no `docker.proxy_whitelist`: every pug would whitelist its own overlay address
///   in the tenants' services (each pug's spec differs: they would replace them in turn, and a
///   tenant would trust only one pug's gateway).
pub fn refusal(backend: Backend, whitelist_set: bool, others: &[Replica]) -> Option<String> {
    let other = others.first()?;
    let who = format!(
        "another pug ({} on {}) is running on this store",
        other.owner, other.host
    );
    match backend {
        Backend::Process => Some(format!(
            "{who}; the process backend runs tenants on one machine and cannot be shared: use \
             backend = \"docker\" or \"swarm\" for several pugs, or stop the other one"
        )),
        Backend::Swarm if !whitelist_set => Some(format!(
            "{who}; with several pugs on swarm, set docker.proxy_whitelist \
             (PUG_DOCKER_PROXY_WHITELIST) to the overlay addresses of all of them, the same on \
             each (by default each pug whitelists only its own)"
        )),
        Backend::Swarm | Backend::Docker => None,
    }
}

/// Refuses to start this pug's controller beside the other live pugs when [`refusal`] says so.
/// A pug of this host whose process is gone (killed a moment ago) does not count.
pub async fn check(store: &Store, backend: Backend, whitelist_set: bool) -> Result<(), ServeError> {
    let host = pug_controller::lease::hostname();
    let others: Vec<Replica> = store
        .live_replicas("")
        .await?
        .into_iter()
        .filter(|r| {
            let pid = r
                .owner
                .strip_prefix(&format!("{host}-"))
                .and_then(|rest| rest.split('-').next());
            match pid {
                Some(pid) => Path::new(&format!("/proc/{pid}")).exists(),
                None => true,
            }
        })
        .collect();
    match refusal(backend, whitelist_set, &others) {
        Some(reason) => Err(ServeError::Refused(reason)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_backends_a_controller_may_share() {
        let other = Replica {
            owner: "h-1-2".into(),
            host: "h".into(),
            backend: "swarm".into(),
            roles: "controller".into(),
        };
        let one = std::slice::from_ref(&other);
        let table = [
            (Backend::Process, false, &[][..], None),
            (Backend::Process, false, one, Some("cannot be shared")),
            (Backend::Process, true, one, Some("cannot be shared")),
            (Backend::Swarm, false, &[][..], None),
            (Backend::Swarm, false, one, Some("docker.proxy_whitelist")),
            (Backend::Swarm, true, one, None),
            (Backend::Docker, false, one, None),
        ];
        for (backend, whitelist, others, want) in table {
            let got = refusal(backend, whitelist, others);
            match (want, &got) {
                (None, None) => {}
                (Some(part), Some(reason)) => {
                    assert!(
                        reason.contains(part) && reason.contains("h-1-2"),
                        "{reason}"
                    )
                }
                _ => panic!("{backend:?} {whitelist} {}: {got:?}", others.len()),
            }
        }
    }
}
