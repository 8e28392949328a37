//! What Grafana would provision at start, read the way Grafana reads it: every file in
//! `<paths.provisioning>/datasources/` and `<paths.provisioning>/dashboards/`, and for each
//! dashboard provider of type `file`, the dashboards in its `options.path`.
//!
//! Stand-in only: `GET /api/standin/provisioning` reports datasource names, types, URLs and
//! their `secureJsonData` fields (values as `secret_summary`, never in clear), and dashboard
//! uids and titles. Files must be JSON (which is YAML; pug writes JSON); anything else is
//! reported under `errors`, as Grafana would refuse to start on a file it cannot parse.

use std::path::Path;

use axum::extract::State;
use axum::Json;
use serde_json::{json, Map, Value};

use crate::server::Shared;
use crate::settings::secret_summary;

pub async fn report(State(state): State<Shared>) -> Json<Value> {
    Json(read(&state.settings.paths.provisioning))
}

fn read(root: &Path) -> Value {
    let mut errors = Vec::new();
    let mut datasources = Vec::new();
    for (path, doc) in documents(&root.join("datasources"), &mut errors) {
        for ds in doc["datasources"].as_array().into_iter().flatten() {
            let secure: Map<String, Value> = ds["secureJsonData"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), secret_summary(v.as_str().unwrap_or_default())))
                .collect();
            datasources.push(json!({
                "file": path,
                "name": ds["name"],
                "type": ds["type"],
                "url": ds["url"],
                "basicAuthUser": ds["basicAuthUser"],
                "secureJsonData": secure,
            }));
        }
    }
    let mut dashboards = Vec::new();
    for (_, doc) in documents(&root.join("dashboards"), &mut errors) {
        for provider in doc["providers"].as_array().into_iter().flatten() {
            let Some(dir) = provider["options"]["path"].as_str() else {
                continue;
            };
            for (path, d) in documents(Path::new(dir), &mut errors) {
                dashboards.push(json!({"file": path, "uid": d["uid"], "title": d["title"]}));
            }
        }
    }
    json!({"datasources": datasources, "dashboards": dashboards, "errors": errors})
}

/// The JSON documents directly in `dir`, by path; unreadable or unparsable files go to `errors`.
fn documents(dir: &Path, errors: &mut Vec<String>) -> Vec<(String, Value)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    let mut out = Vec::new();
    for path in paths.into_iter().filter(|p| p.is_file()) {
        let shown = path.display().to_string();
        match std::fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|text| serde_json::from_str::<Value>(&text).map_err(|e| e.to_string()))
        {
            Ok(doc) => out.push((shown, doc)),
            Err(e) => errors.push(format!("{shown}: {e}")),
        }
    }
    out
}
