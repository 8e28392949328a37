//! Shape checks of the Grafana dashboards and provisioning files (Grafana cannot run here):
//! unique ids and uids, panels inside the 24-column grid and not overlapping, every datasource uid
//! provisioned, and every PromQL expression parsed by `promtool`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use monitoring_pack::{
    assert_success, files_ending, read_json, read_yaml, repo_root, run_promtool,
};
use serde_json::Value;

/// One set of dashboards and the provisioning that goes with them.
struct Pack {
    name: &'static str,
    dashboards: PathBuf,
    provisioning: PathBuf,
}

fn packs() -> [Pack; 2] {
    let root = repo_root();
    [
        Pack {
            name: "deploy/grafana",
            dashboards: root.join("deploy/grafana/dashboards"),
            provisioning: root.join("deploy/grafana/provisioning"),
        },
        Pack {
            name: "examples/chat/grafana",
            dashboards: root.join("examples/chat/grafana/dashboards"),
            provisioning: root.join("examples/chat/grafana/provisioning"),
        },
    ]
}

/// Panel types of Grafana's current model (no Angular `graph`/`singlestat`).
const PANEL_TYPES: [&str; 8] = [
    "timeseries",
    "stat",
    "gauge",
    "bargauge",
    "table",
    "text",
    "row",
    "state-timeline",
];

/// The YAML files of a provisioning subdirectory (none when it does not exist: alerting is optional).
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    if !dir.is_dir() {
        return Vec::new();
    }
    let mut files = files_ending(dir, ".yaml");
    files.extend(files_ending(dir, ".yml"));
    files
}

/// uid → type of every provisioned datasource of a pack.
fn provisioned_datasources(pack: &Pack) -> BTreeMap<String, String> {
    let mut uids = BTreeMap::new();
    for file in yaml_files(&pack.provisioning.join("datasources")) {
        let doc = read_yaml(&file);
        assert_eq!(doc["apiVersion"], 1, "{}", file.display());
        for ds in doc["datasources"].as_array().unwrap() {
            let uid = ds["uid"]
                .as_str()
                .unwrap_or_else(|| panic!("{}: a datasource without a fixed uid", file.display()));
            for field in ["name", "type", "url", "access"] {
                assert!(
                    ds[field].is_string(),
                    "{}: datasource {uid} has no {field}",
                    file.display()
                );
            }
            let previous = uids.insert(uid.to_owned(), ds["type"].as_str().unwrap().to_owned());
            assert!(previous.is_none(), "datasource uid {uid} provisioned twice");
        }
    }
    assert!(!uids.is_empty(), "{}: no datasource provisioned", pack.name);
    uids
}

fn dashboards(pack: &Pack) -> Vec<(PathBuf, Value)> {
    let files = files_ending(&pack.dashboards, ".json");
    assert!(!files.is_empty(), "{}: no dashboards", pack.name);
    files
        .into_iter()
        .map(|file| {
            let doc = read_json(&file);
            (file, doc)
        })
        .collect()
}

/// Checks a `{type, uid}` datasource reference against the provisioned ones.
fn check_datasource(where_: &str, reference: &Value, provisioned: &BTreeMap<String, String>) {
    let uid = reference["uid"]
        .as_str()
        .unwrap_or_else(|| panic!("{where_}: datasource is not pinned by uid: {reference}"));
    let kind = provisioned
        .get(uid)
        .unwrap_or_else(|| panic!("{where_}: datasource uid {uid} is not provisioned"));
    assert_eq!(
        reference["type"],
        kind.as_str(),
        "{where_}: datasource type"
    );
}

#[test]
fn dashboards_have_the_current_model_and_a_consistent_shape() {
    let mut uids = BTreeSet::new();
    for pack in packs() {
        let provisioned = provisioned_datasources(&pack);
        for (file, dash) in dashboards(&pack) {
            let name = file.display().to_string();
            assert!(
                dash["id"].is_null(),
                "{name}: id must be null (the database assigns it)"
            );
            let uid = dash["uid"]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: no uid"));
            assert!(
                (1..=40).contains(&uid.len())
                    && uid
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
                "{name}: uid {uid:?} is not 1-40 of [A-Za-z0-9-_]"
            );
            assert!(
                uids.insert(uid.to_owned()),
                "dashboard uid {uid} used twice"
            );
            assert!(
                dash["title"].as_str().is_some_and(|t| !t.is_empty()),
                "{name}: no title"
            );
            assert!(
                dash["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
                "{name}: schemaVersion below 36 is the legacy model"
            );
            assert!(dash.get("rows").is_none(), "{name}: legacy rows[]");
            assert!(
                dash.get("__inputs").is_none(),
                "{name}: __inputs break file provisioning"
            );

            for variable in dash["templating"]["list"].as_array().unwrap() {
                if variable["type"] == "query" {
                    check_datasource(
                        &format!("{name} variable {}", variable["name"]),
                        &variable["datasource"],
                        &provisioned,
                    );
                }
            }

            let panels = dash["panels"].as_array().unwrap();
            assert!(!panels.is_empty(), "{name}: no panels");
            let mut ids = BTreeSet::new();
            let mut cells: BTreeMap<(u64, u64), u64> = BTreeMap::new();
            for panel in panels {
                let id = panel["id"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("{name}: panel without id"));
                let at = format!("{name} panel {id}");
                assert!(ids.insert(id), "{name}: panel id {id} used twice");
                let kind = panel["type"].as_str().unwrap();
                assert!(
                    PANEL_TYPES.contains(&kind),
                    "{at}: panel type {kind} is not current"
                );
                assert!(
                    panel["title"].as_str().is_some_and(|t| !t.is_empty()),
                    "{at}: no title"
                );

                let grid = &panel["gridPos"];
                let (x, y, w, h) = (
                    grid["x"].as_u64().unwrap(),
                    grid["y"].as_u64().unwrap(),
                    grid["w"].as_u64().unwrap(),
                    grid["h"].as_u64().unwrap(),
                );
                assert!(
                    (1..=24).contains(&w) && x + w <= 24 && h >= 1,
                    "{at}: gridPos {grid} outside 24 columns"
                );
                for cx in x..x + w {
                    for cy in y..y + h {
                        if let Some(other) = cells.insert((cx, cy), id) {
                            panic!("{at} overlaps panel {other} at x={cx} y={cy}");
                        }
                    }
                }

                if kind == "row" || kind == "text" {
                    continue;
                }
                check_datasource(&at, &panel["datasource"], &provisioned);
                let targets = panel["targets"].as_array().unwrap();
                assert!(!targets.is_empty(), "{at}: no targets");
                let mut ref_ids = BTreeSet::new();
                for target in targets {
                    assert!(
                        ref_ids.insert(target["refId"].as_str().unwrap()),
                        "{at}: refId used twice"
                    );
                    check_datasource(&at, &target["datasource"], &provisioned);
                    assert!(
                        target["expr"]
                            .as_str()
                            .is_some_and(|e| !e.trim().is_empty()),
                        "{at}: target without expr"
                    );
                }
            }
        }
    }
}

/// Replaces Grafana's template variables by representative values, so the query is PromQL.
fn as_promql(expr: &str, variables: &BTreeSet<String>) -> String {
    let mut out = expr
        .replace("$__rate_interval", "5m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h");
    for name in variables {
        out = out
            .replace(&format!("${{{name}}}"), ".*")
            .replace(&format!("${name}"), ".*");
    }
    assert!(!out.contains('$'), "unknown variable left in {expr:?}");
    out
}

/// Every PromQL expression of every dashboard and Grafana alert rule, as recording rules that
/// `promtool check rules` parses (promtool has no bare expression parser).
#[test]
fn every_promql_expression_parses() {
    let mut exprs: Vec<(String, String)> = Vec::new();
    for pack in packs() {
        for (file, dash) in dashboards(&pack) {
            let variables: BTreeSet<String> = dash["templating"]["list"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v["name"].as_str().unwrap().to_owned())
                .collect();
            for panel in dash["panels"].as_array().unwrap() {
                for target in panel["targets"].as_array().into_iter().flatten() {
                    if let Some(expr) = target["expr"].as_str() {
                        let origin = format!("{} panel {}", file.display(), panel["id"]);
                        exprs.push((origin, as_promql(expr, &variables)));
                    }
                }
            }
        }
        for file in yaml_files(&pack.provisioning.join("alerting")) {
            for group in read_yaml(&file)["groups"].as_array().unwrap() {
                for rule in group["rules"].as_array().unwrap() {
                    for query in rule["data"].as_array().unwrap() {
                        if let Some(expr) = query["model"]["expr"].as_str() {
                            let origin = format!("{} rule {}", file.display(), rule["uid"]);
                            exprs.push((origin, as_promql(expr, &BTreeSet::new())));
                        }
                    }
                }
            }
        }
    }
    assert!(exprs.len() > 30, "found only {} expressions", exprs.len());

    let rules: Vec<Value> = exprs
        .iter()
        .enumerate()
        .map(|(i, (_, expr))| serde_json::json!({"record": format!("pack_check:expr_{i}"), "expr": expr}))
        .collect();
    let doc = serde_json::json!({"groups": [{"name": "dashboard-expressions", "rules": rules}]});
    let dir = tempfile::tempdir().unwrap();
    // JSON is YAML, and promtool reads YAML.
    std::fs::write(dir.path().join("exprs.yml"), doc.to_string()).unwrap();
    let out = run_promtool(dir.path(), &["check", "rules", "exprs.yml"], None);
    if !out.status.success() {
        let listing: String = exprs
            .iter()
            .enumerate()
            .map(|(i, (origin, expr))| format!("expr_{i}: {origin}: {expr}\n"))
            .collect();
        assert_success(
            &format!("promtool check rules on the expressions\n{listing}"),
            &out,
        );
    }
}

#[test]
fn provisioning_files_fit_together() {
    let mut dashboard_panels: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for pack in packs() {
        for (_, dash) in dashboards(&pack) {
            let ids = dash["panels"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|p| p["id"].as_u64())
                .collect();
            dashboard_panels.insert(dash["uid"].as_str().unwrap().to_owned(), ids);
        }
    }
    for pack in packs() {
        let provisioned = provisioned_datasources(&pack);

        let providers = yaml_files(&pack.provisioning.join("dashboards"));
        assert!(
            !providers.is_empty(),
            "{}: no dashboard provider",
            pack.name
        );
        for file in providers {
            let doc = read_yaml(&file);
            assert_eq!(doc["apiVersion"], 1, "{}", file.display());
            for provider in doc["providers"].as_array().unwrap() {
                assert_eq!(provider["type"], "file", "{}", file.display());
                assert!(provider["options"]["path"]
                    .as_str()
                    .is_some_and(|p| p.starts_with('/')));
            }
        }

        for file in yaml_files(&pack.provisioning.join("alerting")) {
            let at = file.display().to_string();
            let doc = read_yaml(&file);
            assert_eq!(doc["apiVersion"], 1, "{at}");
            for group in doc["groups"].as_array().unwrap() {
                assert!(
                    group["folder"].is_string() && group["interval"].is_string(),
                    "{at}: group shape"
                );
                for rule in group["rules"].as_array().unwrap() {
                    let uid = rule["uid"].as_str().unwrap();
                    let ref_ids: BTreeSet<&str> = rule["data"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|d| d["refId"].as_str().unwrap())
                        .collect();
                    assert!(
                        ref_ids.contains(rule["condition"].as_str().unwrap()),
                        "{at} {uid}: condition is not a refId"
                    );
                    for query in rule["data"].as_array().unwrap() {
                        let ds = query["datasourceUid"].as_str().unwrap();
                        assert!(
                            ds == "__expr__" || provisioned.contains_key(ds),
                            "{at} {uid}: datasource {ds} not provisioned"
                        );
                        if ds == "__expr__" {
                            let input = query["model"]["expression"].as_str().unwrap();
                            assert!(
                                ref_ids.contains(input),
                                "{at} {uid}: expression input {input} is not a refId"
                            );
                        }
                    }
                    if let Some(dashboard) = rule["dashboardUid"].as_str() {
                        let panels = dashboard_panels
                            .get(dashboard)
                            .unwrap_or_else(|| panic!("{at} {uid}: no dashboard {dashboard}"));
                        let panel = rule["panelId"].as_u64().unwrap();
                        assert!(
                            panels.contains(&panel),
                            "{at} {uid}: no panel {panel} in {dashboard}"
                        );
                    }
                    for annotation in ["summary", "runbook"] {
                        assert!(
                            rule["annotations"][annotation].is_string(),
                            "{at} {uid}: no {annotation}"
                        );
                    }
                }
            }
        }
    }
}

/// The chat example's compose file mounts the provisioning and dashboards where Grafana and the
/// provider look for them.
#[test]
fn the_chat_compose_file_mounts_what_grafana_reads() {
    let root = repo_root().join("examples/chat");
    let compose = read_yaml(&root.join("docker-compose.yml"));
    let services = compose["services"].as_object().unwrap();
    for service in ["server", "client", "chaos", "prometheus", "grafana"] {
        assert!(
            services.contains_key(service),
            "docker-compose.yml has no {service} service"
        );
    }
    let volumes: Vec<String> = services["grafana"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    let provider = read_yaml(&root.join("grafana/provisioning/dashboards/chat.yaml"));
    let path = provider["providers"][0]["options"]["path"]
        .as_str()
        .unwrap();
    for target in ["/etc/grafana/provisioning", path] {
        let mount = volumes
            .iter()
            .find(|v| v.split(':').nth(1) == Some(target))
            .unwrap_or_else(|| panic!("grafana does not mount anything at {target}: {volumes:?}"));
        let source = root.join(mount.split(':').next().unwrap());
        assert!(
            source.is_dir(),
            "{mount}: {} is not a directory",
            source.display()
        );
    }
}
