//! The renderer service on swarm: `<namespace>--renderer`, replicated tasks of `pug render` on
//! the tenants' overlay network, which pug creates, upgrades and heals like a tenant's service
//! (`renderer.swarm.replicas` ≥ 1; 0 removes a leftover one).
//!
//! Owns: the service's name and the URL tenants' Grafanas call it at ([`tenant_url`]), its
//! spec (image from `renderer.swarm.image`, `pug render --tenants-url` at pug's API with the
//! credential as a Docker secret mounted into this service alone, spread over nodes, rolled
//! start-first, restarted on any exit, DNS round robin on the overlay and nothing published)
//! and its spec hash (a service label), the decision of what to do about the service found
//! ([`decide`], pure, table-tested) and doing it ([`SwarmBackend::ensure_renderer`]).
//!
//! Why `--renderer`: a tenant's service is `<namespace>-<tenant>`, and a tenant may be called
//! `renderer`; no tenant id starts with `-`, so `<namespace>--renderer` is no tenant's.
//!
//! Must not: give the service pug's store, master key or any tenant's secret: it renders
//! untrusted pages in Chromium, so it reads only token digests from pug's API, with a
//! credential that reads nothing else. Nor decide when to run (the controller's resync and
//! pug's start call [`SwarmBackend::ensure_renderer`]).

use std::collections::HashMap;

use bollard::models::{
    EndpointSpec, EndpointSpecModeEnum, Service, ServiceSpec, ServiceSpecMode,
    ServiceSpecModeReplicated, ServiceSpecRollbackConfig,
    ServiceSpecRollbackConfigFailureActionEnum, ServiceSpecRollbackConfigOrderEnum,
    ServiceSpecUpdateConfig, ServiceSpecUpdateConfigFailureActionEnum,
    ServiceSpecUpdateConfigOrderEnum, TaskSpec, TaskSpecContainerSpec, TaskSpecContainerSpecFile,
    TaskSpecContainerSpecSecrets,
};
use bollard::query_parameters::InspectServiceOptions;
use pug_config::{Config, DockerConfig};
use pug_types::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use super::objects::{self, ObjectRef, Secret};
use super::spec::{on_network, replicas_of, restart_always, spread_over};
use super::SwarmBackend;
use crate::engine::{api, is_conflict, is_not_found, DockerError};
use crate::{LABEL_NAMESPACE, LABEL_SPEC_HASH};

/// The port `pug render` listens on in every task.
pub const RENDERER_PORT: u16 = 8081;

/// Label naming what a pug object that is no tenant's is (`renderer`).
pub const LABEL_COMPONENT: &str = "pug.component";

/// The credential's file, under `/run/secrets` in each task.
const CREDENTIAL_FILE: &str = "pug-renderer-credential";

/// The owner the credential's secret is named for: no tenant id starts with `-`.
const OWNER: &str = "--renderer";

/// Raised whenever the spec changes in a way its inputs do not show.
const TEMPLATE_VERSION: &str = "pug-swarm-renderer-1";

const SECOND: i64 = 1_000_000_000;

/// The renderer service's name.
pub fn service_name(namespace: &str) -> String {
    format!("{namespace}{OWNER}")
}

/// `rendering.server_url` of every tenant when the renderer is a service: its name on the
/// overlay, which Docker's DNS answers with its tasks' addresses (round robin).
pub fn tenant_url(namespace: &str) -> String {
    format!("http://{}:{RENDERER_PORT}/render", service_name(namespace))
}

/// The renderer service pug wants (from `[renderer]` and `[renderer.swarm]`), and its
/// credential for pug's token table.
#[derive(Debug, Clone)]
pub struct RendererService {
    pub replicas: u32,
    pub image: String,
    /// `renderer.swarm.pug_url`; empty: pug's own overlay address and `api_port`.
    pub pug_url: String,
    /// `listen`'s port.
    pub api_port: u16,
    pub credential: SecretString,
    pub no_sandbox: bool,
    pub max_concurrency: usize,
    pub max_queue: usize,
    pub page_reuse: u32,
    pub renders_per_browser: u64,
    pub max_browser_rss_mb: u64,
}

impl RendererService {
    /// The service `config` asks for (`None`: replicas 0, no service), with `credential`.
    pub fn from_config(config: &Config, credential: SecretString) -> Option<Self> {
        let r = &config.renderer;
        (r.swarm.replicas > 0).then(|| Self {
            replicas: r.swarm.replicas,
            image: r.swarm.image.trim().to_owned(),
            pug_url: r.swarm.pug_url.trim().trim_end_matches('/').to_owned(),
            api_port: config.listen.port(),
            credential,
            no_sandbox: r.no_sandbox,
            max_concurrency: r.max_concurrency,
            max_queue: r.max_queue,
            page_reuse: r.page_reuse.max(1),
            renders_per_browser: r.renders_per_browser,
            max_browser_rss_mb: r.max_browser_rss_mb,
        })
    }

    /// Where the tasks read the token table: `pug_url`, else pug's address `own` on the
    /// overlay.
    pub(super) fn table_url(&self, own: Option<std::net::IpAddr>) -> Option<String> {
        let base = if self.pug_url.is_empty() {
            format!("http://{}", std::net::SocketAddr::new(own?, self.api_port))
        } else {
            self.pug_url.clone()
        };
        Some(format!("{base}/api/v1/renderer/tenants"))
    }
}

/// `pug render`'s arguments in every task.
pub(super) fn args(want: &RendererService, table_url: &str) -> Vec<String> {
    let mut args = vec![
        "render".to_owned(),
        format!("--addr=0.0.0.0:{RENDERER_PORT}"),
        format!("--tenants-url={table_url}"),
        format!("--tenants-token-file=/run/secrets/{CREDENTIAL_FILE}"),
        format!("--max-concurrency={}", want.max_concurrency),
        format!("--max-queue={}", want.max_queue),
        format!("--page-reuse={}", want.page_reuse),
        format!("--renders-per-browser={}", want.renders_per_browser),
        format!("--max-browser-rss-mb={}", want.max_browser_rss_mb),
    ];
    if want.no_sandbox {
        // `--chrome-arg` replaces the default flags: keep `--disable-gpu`.
        args.push("--chrome-arg=--disable-gpu".to_owned());
        args.push("--chrome-arg=--no-sandbox".to_owned());
    }
    args
}

/// The credential as the (file, contents) of its secret.
fn credential_file(want: &RendererService) -> (String, String) {
    (
        CREDENTIAL_FILE.to_owned(),
        want.credential.expose_secret().to_owned(),
    )
}

/// The labels of the service, its tasks and its secret.
fn labels(namespace: &str) -> HashMap<String, String> {
    HashMap::from([
        (LABEL_NAMESPACE.to_owned(), namespace.to_owned()),
        (LABEL_COMPONENT.to_owned(), "renderer".to_owned()),
    ])
}

/// The hash of what every task runs (the replicas are left out: scaling is no new template).
pub(super) fn spec_hash(
    config: &DockerConfig,
    want: &RendererService,
    args: &[String],
    secret: &ObjectRef,
) -> String {
    let mut h = Sha256::new();
    for part in [TEMPLATE_VERSION, &want.image, &config.network, &secret.name] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    for a in args {
        h.update(a.as_bytes());
        h.update([0]);
    }
    h.update(config.update_monitor_secs.to_string());
    hex::encode(&h.finalize()[..8])
}

/// The service spec: `replicas` tasks of `pug render` with `args`, mounting the credential's
/// `secret` (0444: the image's user, whichever it is, must read it; what it reads is only the
/// digest table, which renders nothing by itself).
pub(super) fn service_spec(
    config: &DockerConfig,
    want: &RendererService,
    args: Vec<String>,
    secret: ObjectRef,
    hash: &str,
) -> ServiceSpec {
    let mut service_labels = labels(&config.namespace);
    service_labels.insert(LABEL_SPEC_HASH.into(), hash.to_owned());
    let monitor = config.update_monitor_secs as i64 * SECOND;
    ServiceSpec {
        name: Some(service_name(&config.namespace)),
        labels: Some(service_labels),
        task_template: Some(TaskSpec {
            container_spec: Some(TaskSpecContainerSpec {
                image: Some(want.image.clone()),
                labels: Some(labels(&config.namespace)),
                // The image's entrypoint is `pug` (deploy/renderer/Dockerfile: tini, then pug);
                // its health check is the image's own.
                args: Some(args),
                secrets: Some(vec![TaskSpecContainerSpecSecrets {
                    file: Some(TaskSpecContainerSpecFile {
                        name: Some(secret.file),
                        uid: Some("0".into()),
                        gid: Some("0".into()),
                        mode: Some(0o444),
                    }),
                    secret_id: Some(secret.id),
                    secret_name: Some(secret.name),
                }]),
                stop_grace_period: Some(10 * SECOND),
                capability_drop: Some(vec!["CAP_NET_RAW".into()]),
                ..Default::default()
            }),
            restart_policy: Some(restart_always()),
            placement: Some(spread_over("node.id")),
            networks: Some(on_network(&config.network)),
            ..Default::default()
        }),
        mode: Some(ServiceSpecMode {
            replicated: Some(ServiceSpecModeReplicated {
                replicas: Some(want.replicas as i64),
            }),
            ..Default::default()
        }),
        // A new task first, then the old one goes: renders never lose their last renderer.
        update_config: Some(ServiceSpecUpdateConfig {
            parallelism: Some(1),
            delay: Some(0),
            failure_action: Some(ServiceSpecUpdateConfigFailureActionEnum::ROLLBACK),
            monitor: Some(monitor),
            max_failure_ratio: Some(0.0),
            order: Some(ServiceSpecUpdateConfigOrderEnum::START_FIRST),
        }),
        rollback_config: Some(ServiceSpecRollbackConfig {
            parallelism: Some(1),
            delay: Some(0),
            failure_action: Some(ServiceSpecRollbackConfigFailureActionEnum::PAUSE),
            monitor: Some(monitor),
            max_failure_ratio: Some(0.0),
            order: Some(ServiceSpecRollbackConfigOrderEnum::START_FIRST),
        }),
        // As tenants' services: DNS round robin (a VIP may not route on every overlay, a
        // loopback single-node swarm for one), nothing published on the nodes.
        endpoint_spec: Some(EndpointSpec {
            mode: Some(EndpointSpecModeEnum::DNSRR),
            ports: Some(Vec::new()),
        }),
        ..Default::default()
    }
}

/// What was found of the service: its spec hash label and the replicas it asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub hash: Option<String>,
    pub replicas: i64,
}

/// What [`SwarmBackend::ensure_renderer`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The service runs what is wanted (or there is none and none is wanted).
    Keep,
    /// Missing: created.
    Create,
    /// Another spec (image, settings, credential): rolled to the wanted one, start-first.
    Upgrade,
    /// Scaled by hand (or `renderer.swarm.replicas` changed): set back to `to`.
    Scale { from: i64, to: i64 },
    /// Not wanted (`renderer.swarm.replicas = 0`): the leftover service removed.
    Remove,
}

impl Step {
    /// What happened, for the log.
    pub fn describe(&self) -> String {
        match self {
            Step::Keep => "unchanged".into(),
            Step::Create => "created (it was missing)".into(),
            Step::Upgrade => "updated to pug's spec (rolling, start-first)".into(),
            Step::Scale { from, to } => format!("scaled back from {from} to {to} tasks"),
            Step::Remove => "removed (renderer.swarm.replicas = 0)".into(),
        }
    }
}

/// What to do about the service found, given what is wanted (its hash and replicas).
pub fn decide(found: Option<&Observed>, want: Option<(&str, i64)>) -> Step {
    match (found, want) {
        (None, None) => Step::Keep,
        (Some(_), None) => Step::Remove,
        (None, Some(_)) => Step::Create,
        (Some(found), Some((hash, replicas))) => {
            if found.hash.as_deref() != Some(hash) {
                Step::Upgrade
            } else if found.replicas != replicas {
                Step::Scale {
                    from: found.replicas,
                    to: replicas,
                }
            } else {
                Step::Keep
            }
        }
    }
}

impl SwarmBackend {
    async fn renderer_service(&self) -> Result<Option<Service>, DockerError> {
        let name = service_name(&self.config.namespace);
        match self
            .engine
            .docker
            .inspect_service(&name, None::<InspectServiceOptions>)
            .await
        {
            Ok(s) => Ok(Some(s)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(api(format!("cannot inspect service {name}"))(e)),
        }
    }

    /// Makes the renderer service what pug's configuration asks for: created when missing,
    /// rolled when its spec changed, scaled back when scaled by hand, removed when not wanted.
    /// Idempotent; pug calls it at start and at every resync.
    pub async fn ensure_renderer(&self) -> Result<Step, DockerError> {
        let namespace = &self.config.namespace;
        let name = service_name(namespace);
        let current = self.renderer_service().await?;
        let found = current.as_ref().map(|s| {
            let spec = s.spec.clone().unwrap_or_default();
            Observed {
                hash: spec
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(LABEL_SPEC_HASH).cloned()),
                replicas: replicas_of(&spec),
            }
        });
        let wanted = match &self.renderer {
            None => None,
            Some(want) => {
                let url = want.table_url(self.own).ok_or_else(|| {
                    DockerError::Mismatch(
                        "the renderer service needs pug's address on the overlay, or \
                         renderer.swarm.pug_url"
                            .into(),
                    )
                })?;
                let args = args(want, &url);
                let secret = objects::ensure_labelled::<Secret>(
                    &self.engine,
                    &[credential_file(want)],
                    &labels(namespace),
                    |file, value| objects::object_name(namespace, OWNER, file, value),
                )
                .await?
                .remove(0);
                let hash = spec_hash(&self.config, want, &args, &secret);
                let spec = service_spec(&self.config, want, args, secret, &hash);
                Some((hash, want.replicas as i64, spec))
            }
        };
        let step = decide(
            found.as_ref(),
            wanted.as_ref().map(|(h, r, _)| (h.as_str(), *r)),
        );
        match (&step, current, wanted) {
            (Step::Keep, _, _) => {}
            (Step::Create, _, Some((_, _, spec))) => {
                let _op = self.engine.op().await;
                match self.engine.docker.create_service(spec, None).await {
                    Ok(_) => {}
                    Err(e) if is_conflict(&e) => {}
                    Err(e) => {
                        return Err(api(format!(
                            "cannot create the renderer service {name} (is renderer.swarm.image \
                             on every node, or pullable?)"
                        ))(e))
                    }
                }
            }
            (Step::Upgrade | Step::Scale { .. }, Some(service), Some((_, _, spec))) => {
                self.update(&service, spec).await?;
            }
            (Step::Remove, _, _) => {
                let _op = self.engine.op().await;
                match self.engine.docker.delete_service(&name).await {
                    Ok(()) => {}
                    Err(e) if is_not_found(&e) => {}
                    Err(e) => return Err(api(format!("cannot delete service {name}"))(e)),
                }
            }
            _ => {}
        }
        // The credential's secrets that no service uses any more (an old one after a change,
        // or all of them once the service is gone; the engine keeps those in use).
        if step != Step::Keep {
            objects::remove_unused_labelled::<Secret>(
                &self.engine,
                &[(LABEL_NAMESPACE, namespace), (LABEL_COMPONENT, "renderer")],
            )
            .await;
            tracing::info!(service = %name, "renderer service {}", step.describe());
        }
        Ok(step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn want() -> RendererService {
        let mut config = Config {
            backend: pug_config::Backend::Swarm,
            listen: "0.0.0.0:8080".parse().unwrap(),
            ..Default::default()
        };
        config.renderer.swarm.replicas = 2;
        config.renderer.swarm.image = "registry.example.com/pug:1".into();
        config.renderer.no_sandbox = true;
        RendererService::from_config(&config, SecretString::from("pug_CREDENTIAL-VALUE"))
            .expect("replicas 2: a service")
    }

    fn secret() -> ObjectRef {
        ObjectRef {
            file: CREDENTIAL_FILE.into(),
            id: "<secret id>".into(),
            name: "<secret name>".into(),
        }
    }

    #[test]
    fn the_service_is_no_tenants_and_tenants_call_it_by_its_name() {
        assert_eq!(service_name("pug"), "pug--renderer");
        assert_ne!(
            service_name("pug"),
            super::super::spec::service_name(
                "pug",
                &pug_types::TenantId::parse("renderer").unwrap()
            ),
            "a tenant called renderer has a service of its own"
        );
        assert_eq!(tenant_url("pug"), "http://pug--renderer:8081/render");
        let mut config = Config::default();
        assert!(RendererService::from_config(&config, SecretString::from("x")).is_none());
        config.renderer.swarm.replicas = 1;
        config.renderer.swarm.pug_url = "http://tasks.pug_pug:8080/".into();
        let w = RendererService::from_config(&config, SecretString::from("x")).unwrap();
        assert_eq!(
            w.table_url(None).as_deref(),
            Some("http://tasks.pug_pug:8080/api/v1/renderer/tenants")
        );
        let own = "10.0.1.2".parse().ok();
        assert_eq!(
            want().table_url(own).as_deref(),
            Some("http://10.0.1.2:8080/api/v1/renderer/tenants")
        );
        assert_eq!(want().table_url(None), None);
    }

    #[test]
    fn the_spec_carries_no_credential_and_its_hash_follows_what_tasks_run() {
        let config = DockerConfig::default();
        let w = want();
        let a = args(&w, "http://10.0.1.2:8080/api/v1/renderer/tenants");
        let hash = spec_hash(&config, &w, &a, &secret());
        let spec = service_spec(&config, &w, a.clone(), secret(), &hash);
        let text = serde_json::to_string(&spec).unwrap();
        assert!(!text.contains("CREDENTIAL-VALUE"), "{text}");
        insta::with_settings!({ sort_maps => true, omit_expression => true }, {
            insta::assert_yaml_snapshot!("renderer_service_spec", spec);
        });
        // Replicas are no part of the template; the image, the settings and the secret are.
        let mut scaled = w.clone();
        scaled.replicas = 5;
        assert_eq!(spec_hash(&config, &scaled, &a, &secret()), hash);
        let mut upgraded = w.clone();
        upgraded.image = "registry.example.com/pug:2".into();
        assert_ne!(spec_hash(&config, &upgraded, &a, &secret()), hash);
        let mut other = secret();
        other.name = "<another secret>".into();
        assert_ne!(spec_hash(&config, &w, &a, &other), hash);
        let mut tuned = w.clone();
        tuned.max_concurrency = 9;
        let b = args(&tuned, "http://10.0.1.2:8080/api/v1/renderer/tenants");
        assert_ne!(spec_hash(&config, &tuned, &b, &secret()), hash);
    }

    #[test]
    fn what_is_found_decides_the_step() {
        let found = |hash: &str, replicas| Observed {
            hash: Some(hash.into()),
            replicas,
        };
        let unlabelled = Observed {
            hash: None,
            replicas: 2,
        };
        /// What a case is about, what is found, what is wanted, and the step.
        type Case = (
            &'static str,
            Option<Observed>,
            Option<(&'static str, i64)>,
            Step,
        );
        let cases: &[Case] = &[
            ("nothing wanted, nothing there", None, None, Step::Keep),
            (
                "missing (never made, or removed by hand)",
                None,
                Some(("h1", 2)),
                Step::Create,
            ),
            (
                "as wanted",
                Some(found("h1", 2)),
                Some(("h1", 2)),
                Step::Keep,
            ),
            (
                "new image or settings",
                Some(found("h0", 2)),
                Some(("h1", 2)),
                Step::Upgrade,
            ),
            (
                "a service pug did not label",
                Some(unlabelled),
                Some(("h1", 2)),
                Step::Upgrade,
            ),
            (
                "scaled by hand",
                Some(found("h1", 0)),
                Some(("h1", 2)),
                Step::Scale { from: 0, to: 2 },
            ),
            (
                "replicas changed in the configuration",
                Some(found("h1", 2)),
                Some(("h1", 3)),
                Step::Scale { from: 2, to: 3 },
            ),
            (
                "upgrade and scale: one update",
                Some(found("h0", 1)),
                Some(("h1", 2)),
                Step::Upgrade,
            ),
            (
                "replicas 0: a leftover goes",
                Some(found("h1", 2)),
                None,
                Step::Remove,
            ),
        ];
        for (what, found, want, step) in cases {
            assert_eq!(&decide(found.as_ref(), *want), step, "{what}");
        }
    }
}
