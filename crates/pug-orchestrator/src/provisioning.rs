//! Grafana provisioning files for a tenant's datasources and dashboards.
//!
//! Owns: turning the tenant's datasources and dashboards into Grafana's provisioning format
//! (`provisioning/datasources/*.yaml`, `provisioning/dashboards/*.yaml` plus dashboard JSON).
//! Credentials go into `secureJsonData`, which Grafana encrypts with the tenant's own
//! `secret_key` when it provisions them; the files holding them are private to pug's user.
//! The documents are written as JSON, which is valid YAML for Grafana's YAML reader, so no
//! YAML emitter is needed.
//!
//! Must not: decide which tenant gets what (the controller passes it in).

use std::path::{Path, PathBuf};

use pug_types::{DashboardSpec, DatasourceSpec, ExposeSecret, SecretString};
use serde_json::{json, Map, Value};

/// What to provision into one tenant's Grafana.
#[derive(Clone, Debug, Default)]
pub struct Provisioning {
    /// Each datasource with the values of its secure fields.
    pub datasources: Vec<(DatasourceSpec, Vec<(String, SecretString)>)>,
    pub dashboards: Vec<DashboardSpec>,
}

/// One file to write: its path relative to the replica directory and its contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvisioningFile {
    pub path: PathBuf,
    pub contents: String,
    /// Whether it holds secrets (write it readable by pug's user only).
    pub private: bool,
}

impl Provisioning {
    /// The provisioning files, given the absolute directory dashboards are loaded from.
    pub fn files(&self, dashboards_dir: &Path) -> Vec<ProvisioningFile> {
        let mut files = Vec::new();
        let datasources: Vec<Value> = self
            .datasources
            .iter()
            .map(|(ds, secure)| {
                let mut secure_json = Map::new();
                for (field, value) in secure {
                    secure_json.insert(
                        field.clone(),
                        Value::String(value.expose_secret().to_owned()),
                    );
                }
                let mut entry = json!({
                    "name": ds.name,
                    "type": ds.kind,
                    "access": ds.access,
                    "url": ds.url,
                    "isDefault": ds.is_default,
                    "orgId": 1,
                    "editable": false,
                    "jsonData": ds.json_data,
                    "secureJsonData": secure_json,
                });
                if let Some(user) = &ds.basic_auth_user {
                    entry["basicAuth"] = json!(true);
                    entry["basicAuthUser"] = json!(user);
                }
                entry
            })
            .collect();
        // Always written (with `prune`), so that datasources removed from the spec disappear.
        files.push(ProvisioningFile {
            path: PathBuf::from("provisioning/datasources/pug.yaml"),
            contents: serde_json::to_string_pretty(&json!({
                "apiVersion": 1,
                "prune": true,
                "datasources": datasources,
            }))
            .expect("JSON values serialize"),
            private: true,
        });
        files.push(ProvisioningFile {
            path: PathBuf::from("provisioning/dashboards/pug.yaml"),
            contents: serde_json::to_string_pretty(&json!({
                "apiVersion": 1,
                "providers": [{
                    "name": "pug",
                    "orgId": 1,
                    "type": "file",
                    "disableDeletion": true,
                    "allowUiUpdates": false,
                    "updateIntervalSeconds": 30,
                    "options": { "path": dashboards_dir.display().to_string() },
                }],
            }))
            .expect("JSON values serialize"),
            private: false,
        });
        for d in &self.dashboards {
            files.push(ProvisioningFile {
                path: PathBuf::from(format!("dashboards/{}.json", d.name)),
                contents: serde_json::to_string_pretty(&d.json).expect("JSON values serialize"),
                private: false,
            });
        }
        files
    }

    /// Feeds everything that affects the instance into a hash.
    pub(crate) fn hash_into(&self, h: &mut impl sha2::Digest) {
        for (ds, secure) in &self.datasources {
            h.update(serde_json::to_vec(ds).expect("JSON values serialize"));
            for (field, value) in secure {
                h.update(field.as_bytes());
                h.update(value.expose_secret().as_bytes());
            }
        }
        for d in &self.dashboards {
            h.update(serde_json::to_vec(d).expect("JSON values serialize"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datasources_carry_secure_json_data_and_dashboards_a_provider() {
        let ds: DatasourceSpec = serde_json::from_value(json!({
            "name": "metrics", "type": "prometheus", "url": "http://prom:9090",
            "basic_auth_user": "acme", "secure_fields": ["basicAuthPassword"]
        }))
        .unwrap();
        let p = Provisioning {
            datasources: vec![(
                ds,
                vec![("basicAuthPassword".into(), SecretString::from("s3cret"))],
            )],
            dashboards: vec![DashboardSpec {
                name: "home".into(),
                json: json!({"title": "Home"}),
            }],
        };
        let files = p.files(Path::new("/r/dashboards"));
        let ds_file: Value = serde_json::from_str(&files[0].contents).unwrap();
        assert!(files[0].private);
        assert_eq!(
            ds_file["datasources"][0]["secureJsonData"]["basicAuthPassword"],
            "s3cret"
        );
        assert_eq!(ds_file["datasources"][0]["basicAuthUser"], "acme");
        assert_eq!(ds_file["prune"], true);
        let provider: Value = serde_json::from_str(&files[1].contents).unwrap();
        assert_eq!(provider["providers"][0]["options"]["path"], "/r/dashboards");
        assert_eq!(files[2].path, PathBuf::from("dashboards/home.json"));
    }
}
