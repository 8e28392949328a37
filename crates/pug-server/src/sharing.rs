//! Whether this pug's controller may share its store with the other pugs alive on it.
//!
//! Owns: the decision ([`refusal`], pure) and reading what it needs (the store's live
//! `pug_replicas` rows, whether a pid of this host still runs), and the presence of a pug that
//! runs no controller ([`presence_loop`]: its row, so that other pugs know it is alive and
//! keep its local CLI token).
//!
//! Must not: decide anything about leases (the controller and the store do).

use std::path::Path;

use pug_config::Backend;
use pug_store::{Replica, Store};

use crate::ServeError;

/// Why this pug's controller must not start beside `others` (the pugs whose heartbeat is alive
/// on the store, minus those of this host whose process is gone), or `None`.
/// - process backend: its tenants are one host's processes, which no other pug sees.
///
/// Docker and swarm share: their tenants are the engine's, and tenants trust every pug's
/// gateway alike (docker: the network's gateway address, the same for every pug of one host;
/// swarm: the identity tokens signed with the store's key, whichever replica signs them).
pub fn refusal(backend: Backend, others: &[Replica]) -> Option<String> {
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
        Backend::Swarm | Backend::Docker => None,
    }
}

/// Refuses to start this pug's controller beside the other live pugs' controllers when
/// [`refusal`] says so. A pug of this host whose process is gone (killed a moment ago) does
/// not count, nor does a pug without the controller role (a gateway beside it is fine).
pub async fn check(store: &Store, backend: Backend) -> Result<(), ServeError> {
    let host = pug_controller::lease::hostname();
    let others: Vec<Replica> = store
        .live_replicas("")
        .await?
        .into_iter()
        .filter(|r| r.roles.split(',').any(|role| role == "controller"))
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
    match refusal(backend, &others) {
        Some(reason) => Err(ServeError::Refused(reason)),
        None => Ok(()),
    }
}

/// Keeps `me` (a pug without the controller role, whose controller would otherwise send the
/// heartbeat) in the store's live replicas every third of `lease`, until `shutdown`; then
/// removes its row at once.
pub async fn presence_loop(
    store: Store,
    me: Replica,
    lease: std::time::Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let lease_ms = lease.as_millis() as i64;
    loop {
        if let Err(e) = store.heartbeat(&me, &[], lease_ms, false).await {
            tracing::warn!(error = %e, "cannot record this pug as alive in the store");
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(lease / 3) => {}
        }
    }
    if let Err(e) = store.retire(&me.owner).await {
        tracing::warn!(error = %e, "cannot remove this pug from the store's live replicas");
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
            (Backend::Process, &[][..], None),
            (Backend::Process, one, Some("cannot be shared")),
            (Backend::Swarm, &[][..], None),
            (Backend::Swarm, one, None),
            (Backend::Docker, one, None),
        ];
        for (backend, others, want) in table {
            let got = refusal(backend, others);
            match (want, &got) {
                (None, None) => {}
                (Some(part), Some(reason)) => {
                    assert!(
                        reason.contains(part) && reason.contains("h-1-2"),
                        "{reason}"
                    )
                }
                _ => panic!("{backend:?} {}: {got:?}", others.len()),
            }
        }
    }
}
