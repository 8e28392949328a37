//! What a tenant's Grafana is provisioned with, as the API takes it: datasources (with their
//! write-only `secureJsonData`, stored as tenant secrets) and dashboards, checked (names given
//! once, values Grafana would expand refused unless the operator allows expansion).
//!
//! Owns: [`DatasourceInput`] and turning it into `DatasourceSpec`s and secrets.
//!
//! Must not: store anything (the handlers in [`super`] do).

use std::collections::BTreeMap;

use pug_types::{
    find_expansion, DashboardSpec, DatasourceSpec, ExpansionContext, InvalidInput, SecretString,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ApiError;

/// A datasource as given to the API: its spec plus the values of its `secureJsonData`, which
/// pug stores as tenant secrets and never returns.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct DatasourceInput {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub url: String,
    #[serde(default)]
    pub access: Option<String>,
    #[serde(default)]
    pub is_default: bool,
    #[serde(default)]
    pub basic_auth_user: Option<String>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub json_data: serde_json::Map<String, serde_json::Value>,
    /// Credentials (e.g. `basicAuthPassword`, `httpHeaderValue1`): write-only.
    #[serde(default)]
    pub secure_json_data: BTreeMap<String, String>,
}

/// Validated datasources and dashboards, with the secrets to store.
type Provisioned = (
    Vec<DatasourceSpec>,
    Vec<DashboardSpec>,
    Vec<(String, SecretString)>,
);

/// Refuses a provisioning value Grafana would expand (`$VAR`, `${VAR}`, `$__file{…}`; Grafana
/// interpolates every string value of a datasource, `jsonData` and `secureJsonData`
/// included), unless the operator allows expansion. Dashboards are not checked: Grafana reads
/// dashboard files as JSON without interpolating them, and `$var` there is a dashboard
/// variable.
fn check_datasource_expansion(
    input: &DatasourceInput,
    allow_expansion: bool,
) -> Result<(), InvalidInput> {
    fn strings<'a>(path: String, v: &'a serde_json::Value, out: &mut Vec<(String, &'a str)>) {
        match v {
            serde_json::Value::String(s) => out.push((path, s)),
            serde_json::Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    strings(format!("{path}[{i}]"), item, out);
                }
            }
            serde_json::Value::Object(map) => {
                for (k, item) in map {
                    strings(format!("{path}.{k}"), item, out);
                }
            }
            _ => {}
        }
    }
    if allow_expansion {
        return Ok(());
    }
    let mut values: Vec<(String, &str)> = vec![
        ("name".into(), &input.name),
        ("type".into(), &input.kind),
        ("url".into(), &input.url),
    ];
    if let Some(access) = &input.access {
        values.push(("access".into(), access));
    }
    if let Some(user) = &input.basic_auth_user {
        values.push(("basic_auth_user".into(), user));
    }
    for (k, v) in &input.json_data {
        strings(format!("json_data.{k}"), v, &mut values);
    }
    for (k, v) in &input.secure_json_data {
        values.push((format!("secure_json_data.{k}"), v));
    }
    for (field, value) in values {
        if let Some(found) = find_expansion(value, ExpansionContext::Provisioning) {
            // The value itself may be a secret: name the field, show only the expansion.
            return Err(InvalidInput::new(
                "datasources",
                format!(
                    "datasource {:?}: {field} contains {found:?}, which Grafana would replace \
                     with an environment variable or a file's contents; write $$ for a literal \
                     $ (the operator can allow expansion with controller.allow_setting_expansion)",
                    input.name
                ),
            ));
        }
    }
    Ok(())
}

pub(super) fn check_provisioning(
    datasources: Vec<DatasourceInput>,
    dashboards: Vec<DashboardSpec>,
    allow_expansion: bool,
) -> Result<Provisioned, ApiError> {
    let mut specs = Vec::new();
    let mut secrets = Vec::new();
    for input in datasources {
        check_datasource_expansion(&input, allow_expansion)?;
        let spec = DatasourceSpec {
            name: input.name,
            kind: input.kind,
            url: input.url,
            access: input.access.unwrap_or_else(|| "proxy".into()),
            is_default: input.is_default,
            basic_auth_user: input.basic_auth_user,
            json_data: input.json_data,
            secure_fields: input.secure_json_data.keys().cloned().collect(),
        };
        spec.validate()?;
        if specs.iter().any(|s: &DatasourceSpec| s.name == spec.name) {
            return Err(InvalidInput::new(
                "datasources",
                format!("datasource {:?} is given twice", spec.name),
            )
            .into());
        }
        for (field, value) in input.secure_json_data {
            secrets.push((spec.secret_name(&field), SecretString::from(value)));
        }
        specs.push(spec);
    }
    if specs.iter().filter(|s| s.is_default).count() > 1 {
        return Err(
            InvalidInput::new("datasources", "at most one datasource may be the default").into(),
        );
    }
    for (i, d) in dashboards.iter().enumerate() {
        d.validate()?;
        if dashboards[..i].iter().any(|o| o.name == d.name) {
            return Err(InvalidInput::new(
                "dashboards",
                format!("dashboard {:?} is given twice", d.name),
            )
            .into());
        }
    }
    Ok((specs, dashboards, secrets))
}
