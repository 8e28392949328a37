//! The docker and swarm orchestrators: tenants' Grafana as containers on one Docker engine
//! ([`DockerBackend`]) or as Docker Swarm services across many nodes ([`SwarmBackend`]), plus
//! the observation of a swarm's health ([`SwarmObserver`]).
//!
//! Owns: everything pug says to a Docker engine. Both backends mark what they make with the
//! labels `pug.managed=true`, `pug.tenant=<id>`, `pug.replica=<n>` (containers) and
//! `pug.spec-hash=<hash>`, so that what runs is read back from the engine after a restart of
//! pug, never remembered. Grafana is configured only through its own `GF_*` settings; secrets
//! reach it through files and Grafana's `GF_<SECTION>_<KEY>__FILE` convention, never as plain
//! environment (so `docker inspect` shows no secret).
//!
//! # Layout
//! - [`engine`]: connecting (with API version negotiation, for old daemons) and the shared
//!   limit on concurrent engine operations.
//! - `network`: pug's network (created when missing) and a network's gateway, for both
//!   backends.
//! - [`container`]: the docker backend; the container spec it hands the engine is pure, in
//!   `container/spec.rs`, and snapshot-tested.
//! - [`swarm`]: the swarm backend: the service spec (pure, snapshot-tested), secrets and
//!   configs, task slots (pure), and rollouts, one file each.
//! - [`observe`]: nodes, managers and tasks of a swarm, as a status and as metrics.
//! - this file: the labels, the environment and files both backends give Grafana, and the
//!   image check of a version.
//!
//! Must not: read the store or decide what should run (the controller does).

#![forbid(unsafe_code)]

pub mod container;
pub mod engine;
mod network;
pub mod observe;
pub mod swarm;
#[cfg(test)]
mod test_specs;

use std::collections::HashMap;

use pug_orchestrator::settings::Value;
use pug_orchestrator::{InstanceSpec, OrchestratorError};
use pug_types::{ExposeSecret, GrafanaVersion};

pub use container::DockerBackend;
pub use engine::{DockerError, Engine};
pub use observe::{SwarmObserver, SwarmStatus};
pub use swarm::{
    renderer_service_name, renderer_tenant_url, RendererService, RendererStep, SwarmBackend,
};

/// Label on everything pug makes: `true`.
pub const LABEL_MANAGED: &str = "pug.managed";
/// Label naming the tenant a container, service, volume or secret belongs to.
pub const LABEL_TENANT: &str = "pug.tenant";
/// Label naming the replica a container is (docker backend).
pub const LABEL_REPLICA: &str = "pug.replica";
/// Label holding the hash of the spec a container or task runs.
pub const LABEL_SPEC_HASH: &str = "pug.spec-hash";
/// Label naming the pug namespace (`docker.namespace`) an object belongs to.
pub const LABEL_NAMESPACE: &str = "pug.namespace";
/// Label holding when pug created the object, in milliseconds since the Unix epoch.
pub const LABEL_CREATED_MS: &str = "pug.created-ms";

/// Where secrets are mounted in a container; Grafana reads them through `__FILE` variables.
pub const SECRETS_DIR: &str = "/run/secrets";

/// Grafana's configuration directory in its images; provisioning goes to `provisioning/` in it
/// (the images' `GF_PATHS_PROVISIONING`) and dashboards to `dashboards/`.
pub const GRAFANA_CONF_DIR: &str = "/etc/grafana";

/// One provisioning file as the container sees it.
pub(crate) struct ContainerFile {
    /// Absolute path in the container.
    pub path: String,
    pub contents: String,
    /// Whether it holds credentials (the datasources file): a secret, never a config.
    pub private: bool,
}

/// The tenant's provisioning files (datasources, dashboard providers, dashboards) at their
/// absolute paths in the container.
pub(crate) fn provisioning_files(spec: &InstanceSpec) -> Vec<ContainerFile> {
    let dashboards = std::path::Path::new(GRAFANA_CONF_DIR).join("dashboards");
    spec.provisioning
        .files(&dashboards)
        .into_iter()
        .map(|f| ContainerFile {
            path: format!("{GRAFANA_CONF_DIR}/{}", f.path.display()),
            contents: f.contents,
            private: f.private,
        })
        .collect()
}

/// The image of a Grafana version: `template` with `{version}` replaced.
pub fn image_for(template: &str, version: &str) -> String {
    template.replace("{version}", version)
}

/// Checks that the image of `version` is on `engine`; `missing(image)` says what to do when
/// it is not (each backend has its own advice).
pub(crate) async fn check_image(
    engine: &Engine,
    template: &str,
    version: &GrafanaVersion,
    missing: impl FnOnce(&str) -> String,
) -> Result<(), OrchestratorError> {
    let image = image_for(template, &version.to_string());
    match engine.docker.inspect_image(&image).await {
        Ok(_) => Ok(()),
        Err(e) if engine::is_not_found(&e) => Err(OrchestratorError::UnknownVersion {
            version: version.to_string(),
            reason: missing(&image),
        }),
        Err(e) => Err(DockerError::Api {
            context: format!("cannot inspect image {image}"),
            source: e,
        }
        .into()),
    }
}

/// The environment of an instance: plain settings as `GF_*` variables, secrets as
/// `GF_*__FILE` variables naming a file in [`SECRETS_DIR`], and the secret files themselves
/// (file name, contents) for the backend to deliver.
pub(crate) fn environment(spec: &InstanceSpec, port: u16) -> (Vec<String>, Vec<(String, String)>) {
    let mut env = Vec::new();
    let mut files = Vec::new();
    for setting in spec.settings() {
        let name = setting.env_name();
        match setting.value {
            // The container's port, which may differ from the port the controller allocated
            // (a swarm task always listens on the same port inside its own network namespace).
            Value::Plain(_) if name == "GF_SERVER_HTTP_PORT" => env.push(format!("{name}={port}")),
            // The renderer calls the instance back on that port too.
            Value::Plain(v) if name == "GF_RENDERING_CALLBACK_URL" => {
                env.push(format!("{name}={}", with_port(&v, spec.port, port)))
            }
            Value::Plain(v) => env.push(format!("{name}={v}")),
            Value::Secret(v) => {
                let file = format!("pug-{}", setting_file_name(&name));
                env.push(format!("{name}__FILE={SECRETS_DIR}/{file}"));
                files.push((file, v.expose_secret().to_owned()));
            }
        }
    }
    (env, files)
}

/// `url` (`http://host:from/…`) with the port `from` of its authority replaced by `to`.
fn with_port(url: &str, from: u16, to: u16) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let authority = match authority.strip_suffix(&format!(":{from}")) {
        Some(host) => format!("{host}:{to}"),
        None => authority.to_owned(),
    };
    if scheme.is_empty() {
        format!("{authority}{path}")
    } else {
        format!("{scheme}://{authority}{path}")
    }
}

/// `GF_SECURITY_ADMIN_PASSWORD` → `security-admin-password`.
fn setting_file_name(env_name: &str) -> String {
    env_name
        .trim_start_matches("GF_")
        .to_ascii_lowercase()
        .replace('_', "-")
}

/// The health check command of an instance, from the configured template.
pub(crate) fn healthcheck(template: &[String], port: u16, root_path: &str) -> Vec<String> {
    template
        .iter()
        .map(|part| {
            part.replace("{port}", &port.to_string())
                .replace("{path}", root_path)
        })
        .collect()
}

/// The labels every object of `tenant` carries, created now.
pub(crate) fn tenant_labels(namespace: &str, tenant: &str) -> HashMap<String, String> {
    tenant_labels_at(namespace, tenant, now_ms())
}

/// The labels every object of `tenant` carries, created at `created_ms` (the pure part of
/// [`tenant_labels`], for the spec builders and their snapshots).
pub(crate) fn tenant_labels_at(
    namespace: &str,
    tenant: &str,
    created_ms: i64,
) -> HashMap<String, String> {
    HashMap::from([
        (LABEL_MANAGED.to_owned(), "true".to_owned()),
        (LABEL_NAMESPACE.to_owned(), namespace.to_owned()),
        (LABEL_TENANT.to_owned(), tenant.to_owned()),
        (LABEL_CREATED_MS.to_owned(), created_ms.to_string()),
    ])
}

/// A label filter for the engine's list calls.
pub(crate) fn label_filter(labels: &[(&str, &str)]) -> HashMap<String, Vec<String>> {
    HashMap::from([(
        "label".to_owned(),
        labels.iter().map(|(k, v)| format!("{k}={v}")).collect(),
    )])
}

#[allow(clippy::disallowed_methods)] // The crate's one wall-clock read (clippy.toml).
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callback_port_is_the_containers() {
        for (url, want) in [
            (
                "http://pug-acme:21001/t/acme/",
                "http://pug-acme:3000/t/acme/",
            ),
            ("http://pug-acme:21001/", "http://pug-acme:3000/"),
            ("http://pug-acme:21001", "http://pug-acme:3000"),
            // Another port, or the number in the path, is left alone.
            (
                "http://pug-acme:3000/t/21001/",
                "http://pug-acme:3000/t/21001/",
            ),
            ("http://pug-acme:210011/", "http://pug-acme:210011/"),
        ] {
            assert_eq!(with_port(url, 21001, 3000), want, "{url}");
        }
    }

    #[test]
    fn image_template() {
        assert_eq!(
            image_for("registry.example.com/grafana:{version}", "11.3.0"),
            "registry.example.com/grafana:11.3.0"
        );
    }

    #[test]
    fn secret_files_follow_grafana_names() {
        assert_eq!(
            setting_file_name("GF_SECURITY_ADMIN_PASSWORD"),
            "security-admin-password"
        );
        assert_eq!(
            healthcheck(&["x {port}{path}api/health".into()], 3000, "/t/a/"),
            vec!["x 3000/t/a/api/health".to_owned()]
        );
    }
}
