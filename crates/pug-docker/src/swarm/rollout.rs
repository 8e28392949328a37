//! Changing a tenant's existing service: scaling, upgrades Swarm rolls, and Swarm's rollbacks.
//!
//! Owns: deciding what an `ensure` changes on a service that exists ([`next_step`]: nothing,
//! the replica count and rollback acknowledgement with the template kept, or a new template),
//! the swarm-wide throttle on upgrades (one at a time until a first update has completed since
//! pug started, the canary, then up to `docker.max_concurrent_ops`), recognising a rollback or
//! pause pug has not acknowledged, and the service update call itself.
//!
//! Must not: build task templates (the spec builder does) or roll tasks itself: Swarm does,
//! `update_parallelism` at a time, and rolls a failed update back (`FailureAction =
//! rollback`). The decisions are pure functions; the IO is the `impl SwarmBackend` block.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use bollard::models::{Service, ServiceSpec, ServiceUpdateStatusStateEnum};
use bollard::query_parameters::{ListServicesOptions, UpdateServiceOptions};
use pug_orchestrator::{InstanceSpec, OrchestratorError};
use pug_types::TenantId;

use super::spec::{replicas_of, with_replicas};
use super::SwarmBackend;
use crate::engine::{api, DockerError};
use crate::{label_filter, LABEL_MANAGED, LABEL_NAMESPACE, LABEL_SPEC_HASH};

/// Label on a service: the `CompletedAt` of the Swarm rollback pug has acknowledged.
pub(super) const LABEL_ROLLBACK_SEEN: &str = "pug.rollback-seen";

/// What an `ensure` changes on an existing service.
#[derive(Debug, PartialEq)]
pub(super) enum Step {
    /// It runs the template with enough replicas, and no rollback waits for acknowledgement.
    Keep,
    /// The template stays (no task restarts): this spec scales the service and/or
    /// acknowledges a rollback to what is asked for now.
    Retarget(Box<ServiceSpec>),
    /// A new template, to run with `replicas` tasks and these service labels: an upgrade,
    /// which waits its turn.
    Upgrade {
        replicas: i64,
        labels: HashMap<String, String>,
    },
}

/// What to change so that `service` runs `template_hash` with at least `want` replicas.
/// Never scales down: that is `remove`'s job.
pub(super) fn next_step(service: &Service, template_hash: &str, want: i64) -> Step {
    let current = service.spec.clone().unwrap_or_default();
    let labels = current.labels.clone().unwrap_or_default();
    let running_hash = labels.get(LABEL_SPEC_HASH).cloned().unwrap_or_default();
    let replicas = replicas_of(&current);
    let target = replicas.max(want);
    if running_hash == template_hash {
        let rollback = unacknowledged_rollback(service);
        if target == replicas && rollback.is_none() {
            return Step::Keep;
        }
        let mut next = with_replicas(current, target);
        let mut labels = labels;
        if rollback.is_some() {
            labels.insert(LABEL_ROLLBACK_SEEN.into(), rollback_key(service));
        }
        next.labels = Some(labels);
        Step::Retarget(Box::new(next))
    } else {
        let mut labels = labels;
        labels.insert(LABEL_SPEC_HASH.into(), template_hash.to_owned());
        labels.remove(LABEL_ROLLBACK_SEEN);
        Step::Upgrade {
            replicas: target,
            labels,
        }
    }
}

/// Swarm's message when it rolled an update back or paused it after failures, and pug has not
/// acknowledged that yet.
pub(super) fn unacknowledged_rollback(service: &Service) -> Option<String> {
    let status = service.update_status.as_ref()?;
    if !matches!(
        status.state,
        Some(
            ServiceUpdateStatusStateEnum::ROLLBACK_COMPLETED
                | ServiceUpdateStatusStateEnum::ROLLBACK_PAUSED
                | ServiceUpdateStatusStateEnum::PAUSED
        )
    ) {
        return None;
    }
    let seen = service
        .spec
        .as_ref()
        .and_then(|s| s.labels.as_ref())
        .and_then(|l| l.get(LABEL_ROLLBACK_SEEN));
    if seen.is_some_and(|seen| *seen == rollback_key(service)) {
        return None;
    }
    Some(
        status
            .message
            .clone()
            .unwrap_or_else(|| "update failed".into()),
    )
}

/// What identifies one rollback or pause of a service's update, for its acknowledgement.
pub(super) fn rollback_key(service: &Service) -> String {
    let status = service.update_status.clone().unwrap_or_default();
    format!(
        "{}-{}",
        status.started_at.unwrap_or_default(),
        status.completed_at.unwrap_or_default()
    )
    .replace(':', "")
}

/// How pug's services are updating, seen from the one named `except`.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Updating {
    /// Other services whose update (or its rollback) is in progress.
    pub others: usize,
    /// Whether any service's update has completed: the canary is done.
    pub any_completed: bool,
}

/// How `services` are updating, not counting the one named `except`.
pub(super) fn updating(services: &[Service], except: &str) -> Updating {
    let mut out = Updating {
        others: 0,
        any_completed: false,
    };
    for s in services {
        let state = s.update_status.as_ref().and_then(|u| u.state);
        if state == Some(ServiceUpdateStatusStateEnum::COMPLETED) {
            out.any_completed = true;
        }
        let this = s.spec.as_ref().and_then(|s| s.name.as_deref()) == Some(except);
        if !this
            && matches!(
                state,
                Some(
                    ServiceUpdateStatusStateEnum::UPDATING
                        | ServiceUpdateStatusStateEnum::ROLLBACK_STARTED
                )
            )
        {
            out.others += 1;
        }
    }
    out
}

/// Whether `tenant`'s upgrade may start while `busy` other services update: one at a time
/// until the canary is done, then `max_concurrent_ops`. The error says who waits for what.
pub(super) fn turn(
    busy: usize,
    canary_done: bool,
    max_concurrent_ops: usize,
    tenant: &TenantId,
) -> Result<(), OrchestratorError> {
    let limit = if canary_done { max_concurrent_ops } else { 1 };
    if busy < limit {
        return Ok(());
    }
    Err(OrchestratorError::Engine(format!(
        "{busy} other tenant service(s) are being updated on the swarm (limit {limit}{}); \
         {tenant} waits its turn",
        if limit == 1 {
            " until the first update, the canary, has completed"
        } else {
            ""
        },
    )))
}

impl SwarmBackend {
    /// Makes the existing `service` run `template_hash` (built from `spec`) with at least
    /// `want` replicas.
    pub(super) async fn roll(
        &self,
        spec: &InstanceSpec,
        service: &Service,
        template_hash: &str,
        want: i64,
    ) -> Result<(), OrchestratorError> {
        match next_step(service, template_hash, want) {
            Step::Keep => {}
            Step::Retarget(next) => self.update(service, *next).await?,
            Step::Upgrade { replicas, labels } => {
                let name = self.service_name(&spec.tenant);
                let busy = self.updating_services(&name).await?;
                let canary_done = self.canary_done.load(Ordering::SeqCst);
                turn(
                    busy,
                    canary_done,
                    self.config.max_concurrent_ops,
                    &spec.tenant,
                )?;
                let next = self
                    .service_spec(spec, template_hash, replicas, labels)
                    .await?;
                self.update(service, next).await?;
                tracing::info!(tenant = %spec.tenant, version = %spec.version, "service update started; Swarm rolls the tasks");
            }
        }
        Ok(())
    }

    /// Replaces `service`'s spec with `spec`.
    pub(super) async fn update(
        &self,
        service: &Service,
        spec: ServiceSpec,
    ) -> Result<(), DockerError> {
        let name = spec.name.clone().unwrap_or_default();
        let version = service
            .version
            .as_ref()
            .and_then(|v| v.index)
            .unwrap_or_default();
        let _op = self.engine.op().await;
        self.engine
            .docker
            .update_service(
                &name,
                spec,
                UpdateServiceOptions {
                    version: version as i32,
                    ..Default::default()
                },
                None,
            )
            .await
            .map_err(api(format!("cannot update service {name}")))?;
        Ok(())
    }

    /// Pug services whose update is in progress, other than `except`; notes when the canary
    /// is done.
    async fn updating_services(&self, except: &str) -> Result<usize, DockerError> {
        let services = self
            .engine
            .docker
            .list_services(Some(ListServicesOptions {
                filters: Some(label_filter(&[
                    (LABEL_MANAGED, "true"),
                    (LABEL_NAMESPACE, &self.config.namespace),
                ])),
                status: None,
            }))
            .await
            .map_err(api("cannot list services"))?;
        let seen = updating(&services, except);
        if seen.any_completed {
            self.canary_done.store(true, Ordering::SeqCst);
        }
        Ok(seen.others)
    }
}

#[cfg(test)]
mod tests {
    use bollard::models::{ServiceSpecMode, ServiceSpecModeReplicated, ServiceUpdateStatus};

    use super::*;

    use ServiceUpdateStatusStateEnum::{
        COMPLETED, PAUSED, ROLLBACK_COMPLETED, ROLLBACK_PAUSED, ROLLBACK_STARTED, UPDATING,
    };

    const STARTED: &str = "2026-11-22T04:00:00Z";
    const DONE: &str = "2026-11-22T04:05:00Z";
    /// [`rollback_key`] of an update that ran from [`STARTED`] to [`DONE`].
    const KEY: &str = "2026-11-22T040000Z-2026-11-22T040500Z";

    fn service(
        name: &str,
        template: &str,
        replicas: i64,
        update: Option<ServiceUpdateStatusStateEnum>,
        seen: Option<&str>,
    ) -> Service {
        let mut labels = HashMap::from([
            (LABEL_SPEC_HASH.to_owned(), template.to_owned()),
            ("pug.tenant".to_owned(), "acme".to_owned()),
        ]);
        if let Some(seen) = seen {
            labels.insert(LABEL_ROLLBACK_SEEN.into(), seen.into());
        }
        Service {
            spec: Some(ServiceSpec {
                name: Some(name.into()),
                labels: Some(labels),
                mode: Some(ServiceSpecMode {
                    replicated: Some(ServiceSpecModeReplicated {
                        replicas: Some(replicas),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            update_status: update.map(|state| ServiceUpdateStatus {
                state: Some(state),
                started_at: Some(STARTED.into()),
                completed_at: Some(DONE.into()),
                message: Some("update rolled back due to failure".into()),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn rollbacks_and_pauses_wait_for_acknowledgement() {
        let cases = [
            (None, None, None),
            (Some(COMPLETED), None, None),
            (Some(UPDATING), None, None),
            (Some(ROLLBACK_STARTED), None, None),
            (
                Some(ROLLBACK_COMPLETED),
                None,
                Some("update rolled back due to failure"),
            ),
            (
                Some(ROLLBACK_PAUSED),
                None,
                Some("update rolled back due to failure"),
            ),
            (
                Some(PAUSED),
                None,
                Some("update rolled back due to failure"),
            ),
            (Some(ROLLBACK_COMPLETED), Some(KEY), None),
            (Some(PAUSED), Some(KEY), None),
            // An acknowledgement of an earlier rollback does not cover this one.
            (
                Some(ROLLBACK_COMPLETED),
                Some("2026-11-21T000000Z-2026-11-21T000100Z"),
                Some("update rolled back due to failure"),
            ),
        ];
        for (state, seen, want) in cases {
            let s = service("pug-acme", "a", 1, state, seen);
            assert_eq!(
                unacknowledged_rollback(&s).as_deref(),
                want,
                "{state:?}, seen {seen:?}"
            );
        }
        assert_eq!(
            rollback_key(&service("pug-acme", "a", 1, Some(PAUSED), None)),
            KEY
        );
        let mut quiet = service("pug-acme", "a", 1, Some(PAUSED), None);
        quiet.update_status.as_mut().unwrap().message = None;
        assert_eq!(
            unacknowledged_rollback(&quiet).as_deref(),
            Some("update failed")
        );
    }

    #[test]
    fn next_step_keeps_scales_acknowledges_or_upgrades() {
        let retarget = |replicas: i64, seen: Option<&str>| {
            let mut s = service("pug-acme", "a", replicas, None, seen);
            Box::new(s.spec.take().unwrap())
        };
        let cases = [
            (
                "the template runs with enough replicas",
                service("pug-acme", "a", 2, None, None),
                "a",
                1,
                Step::Keep,
            ),
            (
                "the template runs with exactly the replicas",
                service("pug-acme", "a", 2, None, None),
                "a",
                2,
                Step::Keep,
            ),
            (
                "more replicas wanted: scale, same template",
                service("pug-acme", "a", 1, None, None),
                "a",
                3,
                Step::Retarget(retarget(3, None)),
            ),
            (
                "a rollback to the asked-for template: acknowledge it, no restart",
                service("pug-acme", "a", 2, Some(ROLLBACK_COMPLETED), None),
                "a",
                1,
                Step::Retarget(retarget(2, Some(KEY))),
            ),
            (
                "an acknowledged rollback: nothing",
                service("pug-acme", "a", 2, Some(ROLLBACK_COMPLETED), Some(KEY)),
                "a",
                2,
                Step::Keep,
            ),
            (
                "a new template: upgrade with the labels, never fewer replicas",
                service("pug-acme", "a", 3, None, None),
                "b",
                1,
                Step::Upgrade {
                    replicas: 3,
                    labels: HashMap::from([
                        (LABEL_SPEC_HASH.to_owned(), "b".to_owned()),
                        ("pug.tenant".to_owned(), "acme".to_owned()),
                    ]),
                },
            ),
            (
                "a new template after a rollback: the acknowledgement goes",
                service("pug-acme", "a", 1, Some(ROLLBACK_COMPLETED), Some(KEY)),
                "b",
                2,
                Step::Upgrade {
                    replicas: 2,
                    labels: HashMap::from([
                        (LABEL_SPEC_HASH.to_owned(), "b".to_owned()),
                        ("pug.tenant".to_owned(), "acme".to_owned()),
                    ]),
                },
            ),
        ];
        for (what, service, template, want, step) in cases {
            assert_eq!(next_step(&service, template, want), step, "{what}");
        }
    }

    #[test]
    fn updating_counts_the_others_and_notices_the_canary() {
        let s = |name: &str, state| service(name, "a", 1, state, None);
        let cases = [
            (vec![], 0, false),
            (vec![s("pug-a", Some(UPDATING))], 0, false),
            (
                vec![
                    s("pug-b", Some(UPDATING)),
                    s("pug-c", Some(ROLLBACK_STARTED)),
                ],
                2,
                false,
            ),
            (vec![s("pug-b", Some(COMPLETED)), s("pug-c", None)], 0, true),
            (
                vec![s("pug-a", Some(COMPLETED)), s("pug-b", Some(PAUSED))],
                0,
                true,
            ),
            (
                vec![
                    s("pug-b", Some(ROLLBACK_COMPLETED)),
                    s("pug-c", Some(UPDATING)),
                ],
                1,
                false,
            ),
        ];
        for (services, others, any_completed) in cases {
            let names: Vec<_> = services
                .iter()
                .map(|s| {
                    (
                        s.spec.as_ref().unwrap().name.clone(),
                        s.update_status.as_ref().and_then(|u| u.state),
                    )
                })
                .collect();
            assert_eq!(
                updating(&services, "pug-a"),
                Updating {
                    others,
                    any_completed
                },
                "{names:?}"
            );
        }
    }

    #[test]
    fn upgrades_wait_for_the_canary_then_the_limit() {
        let acme = TenantId::parse("acme").unwrap();
        let cases = [
            (0, false, 8, true),
            (1, false, 8, false),
            (1, true, 8, true),
            (7, true, 8, true),
            (8, true, 8, false),
            (0, true, 1, true),
            (1, true, 1, false),
        ];
        for (busy, canary_done, max, allowed) in cases {
            let got = turn(busy, canary_done, max, &acme);
            assert_eq!(
                got.is_ok(),
                allowed,
                "{busy} busy, canary done {canary_done}, max {max}: {got:?}"
            );
        }
        let err = turn(1, false, 8, &acme).unwrap_err().to_string();
        assert!(
            err.contains("the canary") && err.contains("acme waits its turn"),
            "{err}"
        );
        let err = turn(8, true, 8, &acme).unwrap_err().to_string();
        assert!(
            err.contains("(limit 8)") && !err.contains("canary"),
            "{err}"
        );
    }
}
