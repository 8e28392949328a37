//! Secrets and configs: the swarm objects a task mounts as files.
//!
//! Owns: naming them by their contents, creating them when missing, removing a tenant's that
//! no service uses any more, and the reference a task spec mounts. Neither kind can be changed
//! once created, so an object is content-addressed (`pug-<sha256 of namespace, tenant, file,
//! contents>`): a new value is a new object, and the old one goes once no service uses it.
//! bollard has two near-identical generated types for each step; [`ObjectKind`] (implemented
//! by [`Secret`] and [`Config`]) is the only place they differ, and every step is written once
//! over it.
//!
//! Must not: put a value anywhere but into the object's data (labels carry the file name, the
//! name carries a digest), or decide which files are secrets (the spec builder does).

use std::collections::HashMap;
use std::future::Future;

use base64::Engine as _;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ConfigSpec, SecretSpec, TaskSpecContainerSpecConfigs, TaskSpecContainerSpecFile,
    TaskSpecContainerSpecFile1, TaskSpecContainerSpecSecrets,
};
use bollard::query_parameters::{ListConfigsOptions, ListSecretsOptions};
use bollard::Docker;
use pug_types::TenantId;
use sha2::{Digest, Sha256};

use crate::engine::{api, is_conflict, DockerError, Engine};
use crate::{label_filter, tenant_labels, LABEL_MANAGED, LABEL_NAMESPACE, LABEL_TENANT};

/// The engine's list filters.
type Filters = HashMap<String, Vec<String>>;

/// A secret or config, and the file it becomes in the task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct ObjectRef {
    /// The file in the task: a name under `/run/secrets`, or an absolute path.
    pub file: String,
    pub id: String,
    pub name: String,
}

/// One object as listed by the engine.
pub(super) struct Listed {
    pub id: Option<String>,
    pub name: Option<String>,
}

/// What differs between the two kinds of swarm objects a task mounts as files.
pub(super) trait ObjectKind {
    /// What the kind is called in messages.
    const NOUN: &'static str;
    /// The label naming the file an object holds.
    const LABEL: &'static str;
    /// The file's mode in the task (owned by root, group 0: Grafana's images run Grafana as
    /// user 472 in group 0).
    const MODE: u32;
    /// The reference a task spec mounts.
    type Mount;

    /// The objects matching `filters`.
    fn list(
        docker: &Docker,
        filters: Filters,
    ) -> impl Future<Output = Result<Vec<Listed>, BollardError>> + Send;

    /// Creates an object; returns its id.
    fn create(
        docker: &Docker,
        name: String,
        labels: HashMap<String, String>,
        data: String,
    ) -> impl Future<Output = Result<String, BollardError>> + Send;

    fn delete(docker: &Docker, id: &str) -> impl Future<Output = Result<(), BollardError>> + Send;

    /// The mount of `object` at its file, owned by root and group 0, with [`Self::MODE`].
    fn mount(object: ObjectRef) -> Self::Mount;
}

/// Docker secrets: the files that hold credentials.
pub(super) struct Secret;

/// Docker configs: the files that do not.
pub(super) struct Config;

impl ObjectKind for Secret {
    const NOUN: &'static str = "secret";
    const LABEL: &'static str = "pug.secret";
    const MODE: u32 = 0o440;
    type Mount = TaskSpecContainerSpecSecrets;

    async fn list(docker: &Docker, filters: Filters) -> Result<Vec<Listed>, BollardError> {
        let found = docker
            .list_secrets(Some(ListSecretsOptions {
                filters: Some(filters),
            }))
            .await?;
        Ok(found
            .into_iter()
            .map(|s| Listed {
                name: s.spec.and_then(|s| s.name),
                id: s.id,
            })
            .collect())
    }

    async fn create(
        docker: &Docker,
        name: String,
        labels: HashMap<String, String>,
        data: String,
    ) -> Result<String, BollardError> {
        let spec = SecretSpec {
            name: Some(name),
            labels: Some(labels),
            data: Some(data),
            ..Default::default()
        };
        Ok(docker.create_secret(spec).await?.id)
    }

    async fn delete(docker: &Docker, id: &str) -> Result<(), BollardError> {
        docker.delete_secret(id).await
    }

    fn mount(object: ObjectRef) -> Self::Mount {
        TaskSpecContainerSpecSecrets {
            file: Some(TaskSpecContainerSpecFile {
                name: Some(object.file),
                uid: Some("0".into()),
                gid: Some("0".into()),
                mode: Some(Self::MODE),
            }),
            secret_id: Some(object.id),
            secret_name: Some(object.name),
        }
    }
}

impl ObjectKind for Config {
    const NOUN: &'static str = "config";
    const LABEL: &'static str = "pug.config";
    const MODE: u32 = 0o444;
    type Mount = TaskSpecContainerSpecConfigs;

    async fn list(docker: &Docker, filters: Filters) -> Result<Vec<Listed>, BollardError> {
        let found = docker
            .list_configs(Some(ListConfigsOptions {
                filters: Some(filters),
            }))
            .await?;
        Ok(found
            .into_iter()
            .map(|c| Listed {
                name: c.spec.and_then(|s| s.name),
                id: c.id,
            })
            .collect())
    }

    async fn create(
        docker: &Docker,
        name: String,
        labels: HashMap<String, String>,
        data: String,
    ) -> Result<String, BollardError> {
        let spec = ConfigSpec {
            name: Some(name),
            labels: Some(labels),
            data: Some(data),
            ..Default::default()
        };
        Ok(docker.create_config(spec).await?.id)
    }

    async fn delete(docker: &Docker, id: &str) -> Result<(), BollardError> {
        docker.delete_config(id).await
    }

    fn mount(object: ObjectRef) -> Self::Mount {
        TaskSpecContainerSpecConfigs {
            file: Some(TaskSpecContainerSpecFile1 {
                name: Some(object.file),
                uid: Some("0".into()),
                gid: Some("0".into()),
                mode: Some(Self::MODE),
            }),
            config_id: Some(object.id),
            config_name: Some(object.name),
            ..Default::default()
        }
    }
}

/// The content address of one file's object of `owner` (a tenant's id, or a name no tenant
/// can have, such as the renderer service's `--renderer`).
pub(super) fn object_name(namespace: &str, owner: &str, file: &str, value: &str) -> String {
    let digest = Sha256::digest(format!("{namespace}\0{owner}\0{file}\0{value}").as_bytes());
    format!("pug-{}", &hex::encode(digest)[..24])
}

/// The mounts of `objects`, in their order.
pub(super) fn mounts<K: ObjectKind>(objects: Vec<ObjectRef>) -> Vec<K::Mount> {
    objects.into_iter().map(K::mount).collect()
}

/// Creates (when missing) one object per file (file, contents) and returns the references.
pub(super) async fn ensure<K: ObjectKind>(
    engine: &Engine,
    namespace: &str,
    tenant: &TenantId,
    files: &[(String, String)],
) -> Result<Vec<ObjectRef>, DockerError> {
    let labels = tenant_labels(namespace, tenant.as_str());
    ensure_labelled::<K>(engine, files, &labels, |file, value| {
        object_name(namespace, tenant.as_str(), file, value)
    })
    .await
}

/// [`ensure`] for objects that are no tenant's (the renderer service's): named by `name` of
/// (file, contents), labelled `labels` and the file.
pub(super) async fn ensure_labelled<K: ObjectKind>(
    engine: &Engine,
    files: &[(String, String)],
    labels: &HashMap<String, String>,
    name_of: impl Fn(&str, &str) -> String,
) -> Result<Vec<ObjectRef>, DockerError> {
    let mut refs = Vec::new();
    for (file, value) in files {
        let name = name_of(file.as_str(), value.as_str());
        let by_name = HashMap::from([("name".to_owned(), vec![name.clone()])]);
        let existing = K::list(&engine.docker, by_name)
            .await
            .map_err(api(format!("cannot list {}s", K::NOUN)))?
            .into_iter()
            .find(|o| o.name.as_deref() == Some(&name))
            .and_then(|o| o.id);
        let id = match existing {
            Some(id) => id,
            None => {
                let mut labels = labels.clone();
                labels.insert(K::LABEL.into(), file.clone());
                let data = base64::engine::general_purpose::STANDARD.encode(value);
                let _op = engine.op().await;
                match K::create(&engine.docker, name.clone(), labels, data).await {
                    Ok(id) => id,
                    Err(e) if is_conflict(&e) => {
                        return Err(api(format!(
                            "{} {name} was created concurrently; retrying",
                            K::NOUN
                        ))(e))
                    }
                    Err(e) => return Err(api(format!("cannot create {} {name}", K::NOUN))(e)),
                }
            }
        };
        refs.push(ObjectRef {
            file: file.clone(),
            id,
            name,
        });
    }
    Ok(refs)
}

/// Deletes the objects of this kind with all of `labels` that no service uses any more (the
/// engine refuses those in use; failures are not errors).
pub(super) async fn remove_unused_labelled<K: ObjectKind>(
    engine: &Engine,
    labels: &[(&str, &str)],
) {
    if let Ok(objects) = K::list(&engine.docker, label_filter(labels)).await {
        for id in objects.into_iter().filter_map(|o| o.id) {
            let _op = engine.op().await;
            let _ = K::delete(&engine.docker, &id).await;
        }
    }
}

/// Deletes the tenant's objects of this kind that no service uses any more; the engine refuses
/// to delete those still in use (by a running task or the previous spec), which is what we
/// want, so failures are not errors.
pub(super) async fn remove_unused<K: ObjectKind>(
    engine: &Engine,
    namespace: &str,
    tenant: &TenantId,
) {
    remove_unused_labelled::<K>(
        engine,
        &[
            (LABEL_MANAGED, "true"),
            (LABEL_NAMESPACE, namespace),
            (LABEL_TENANT, tenant.as_str()),
        ],
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_are_named_by_everything_that_makes_them_differ() {
        let (acme, bob) = ("acme", "bob");
        let base = object_name("pug", acme, "/run/secrets/a", "v1");
        assert_eq!(base.len(), "pug-".len() + 24, "{base}");
        assert!(base.starts_with("pug-"), "{base}");
        assert!(
            !base.contains("v1"),
            "the name must not hold the value: {base}"
        );
        assert_eq!(base, object_name("pug", acme, "/run/secrets/a", "v1"));
        let others = [
            (
                "namespace",
                object_name("pug2", acme, "/run/secrets/a", "v1"),
            ),
            ("tenant", object_name("pug", bob, "/run/secrets/a", "v1")),
            ("file", object_name("pug", acme, "/run/secrets/b", "v1")),
            ("value", object_name("pug", acme, "/run/secrets/a", "v2")),
        ];
        for (what, name) in others {
            assert_ne!(
                name, base,
                "a different {what} must make a different object"
            );
        }
    }

    #[test]
    fn secrets_and_configs_mount_the_same_file_with_their_modes() {
        const PATH: &str = "/etc/grafana/provisioning/datasources/pug.yaml";
        let object = || ObjectRef {
            file: PATH.into(),
            id: "id-1".into(),
            name: "pug-0123".into(),
        };
        let secret = mounts::<Secret>(vec![object()]).remove(0);
        let config = mounts::<Config>(vec![object()]).remove(0);
        let (s, c) = (secret.file.unwrap(), config.file.unwrap());
        let cases = [
            (
                "secret",
                (s.name, s.uid, s.gid, s.mode),
                (secret.secret_id, secret.secret_name),
                0o440,
            ),
            (
                "config",
                (c.name, c.uid, c.gid, c.mode),
                (config.config_id, config.config_name),
                0o444,
            ),
        ];
        for (kind, file, reference, mode) in cases {
            let root = Some("0".to_owned());
            assert_eq!(
                file,
                (Some(PATH.to_owned()), root.clone(), root, Some(mode)),
                "{kind}"
            );
            assert_eq!(
                reference,
                (Some("id-1".to_owned()), Some("pug-0123".to_owned())),
                "{kind}"
            );
        }
    }
}
