//! `deploy/prometheus` and the chat example's Prometheus files, checked by Debian's `promtool`.

use std::collections::BTreeSet;
use std::path::Path;

use monitoring_pack::{assert_success, files_ending, read_yaml, repo_root, run_promtool};
use serde_json::Value;

/// The alerts issue 6 A.3 asks for, by the name the rules give them.
const REQUIRED_ALERTS: [&str; 10] = [
    "PugTenantDown",
    "PugTenantDegraded",
    "PugTenantCrashLooping",
    "PugGatewayHighErrorRatio",
    "PugGatewayHighLatency",
    "PugRendererSaturated",
    "PugRendererRestarting",
    "PugReconcileQueueBacklog",
    "PugSwarmNodeDown",
    "PugSwarmNoLeader",
];

fn deploy() -> std::path::PathBuf {
    repo_root().join("deploy/prometheus")
}

fn chat() -> std::path::PathBuf {
    repo_root().join("examples/chat")
}

/// Every rule of every group in a rule file.
fn rules(path: &Path) -> Vec<Value> {
    read_yaml(path)["groups"]
        .as_array()
        .unwrap_or_else(|| panic!("{}: no groups", path.display()))
        .iter()
        .flat_map(|group| group["rules"].as_array().cloned().unwrap_or_default())
        .collect()
}

fn deploy_rule_files() -> Vec<std::path::PathBuf> {
    let files = files_ending(&deploy().join("rules"), ".rules.yml");
    assert!(
        !files.is_empty(),
        "no rule files in deploy/prometheus/rules"
    );
    files
}

/// A copy of `deploy/prometheus` with a token file, as an installation has one
/// (`promtool check config` checks that a scrape job's `credentials_file` exists).
fn installed_deploy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for sub in ["rules", "tests"] {
        std::fs::create_dir(dir.path().join(sub)).unwrap();
        for file in files_ending(&deploy().join(sub), ".yml") {
            std::fs::copy(&file, dir.path().join(sub).join(file.file_name().unwrap())).unwrap();
        }
    }
    std::fs::copy(
        deploy().join("prometheus.yml"),
        dir.path().join("prometheus.yml"),
    )
    .unwrap();
    std::fs::write(dir.path().join("pug-sd.token"), "pug_example\n").unwrap();
    dir
}

#[test]
fn the_deploy_config_is_valid() {
    let installed = installed_deploy();
    let out = run_promtool(
        installed.path(),
        &["check", "config", "prometheus.yml"],
        None,
    );
    assert_success(
        "promtool check config deploy/prometheus/prometheus.yml",
        &out,
    );
}

#[test]
fn the_deploy_config_discovers_the_fleet_from_pug() {
    let config = read_yaml(&deploy().join("prometheus.yml"));
    let pug = config["scrape_configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|job| job["job_name"] == "pug")
        .expect("a scrape job named pug");
    let sd = &pug["http_sd_configs"][0];
    assert_eq!(sd["url"], "http://pug:8080/api/v1/prometheus/targets");
    assert_eq!(sd["authorization"]["type"], "Bearer");
    assert!(sd["authorization"]["credentials_file"].is_string());
    // pug's /metrics takes the read token too (issue 14, hole 10).
    assert_eq!(pug["authorization"]["type"], "Bearer");
    assert_eq!(
        pug["authorization"]["credentials_file"],
        sd["authorization"]["credentials_file"]
    );
}

/// pug's token goes to pug only: the tenants' Grafana instances are scraped by a job without
/// it (a tenant's Grafana must never receive a token that reads every tenant), whose series
/// still carry `job="pug"` for the rules.
#[test]
fn the_deploy_config_never_sends_pugs_token_to_a_tenant_instance() {
    let config = read_yaml(&deploy().join("prometheus.yml"));
    let jobs = config["scrape_configs"].as_array().unwrap();
    let relabels = |job: &Value| {
        job["relabel_configs"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let keeps_grafana = |job: &Value, action: &str| {
        relabels(job).iter().any(|r| {
            r["source_labels"][0] == "role" && r["regex"] == "grafana" && r["action"] == action
        })
    };
    let pug = jobs.iter().find(|j| j["job_name"] == "pug").unwrap();
    assert!(
        keeps_grafana(pug, "drop"),
        "the pug job must drop role=grafana targets"
    );
    let tenants: Vec<&Value> = jobs.iter().filter(|j| keeps_grafana(j, "keep")).collect();
    assert_eq!(tenants.len(), 1, "one job scrapes the tenant instances");
    let tenants = tenants[0];
    assert!(tenants["authorization"].is_null(), "{tenants}");
    assert!(tenants["bearer_token_file"].is_null() && tenants["basic_auth"].is_null());
    assert!(
        relabels(tenants)
            .iter()
            .any(|r| r["target_label"] == "job" && r["replacement"] == "pug"),
        "the tenant job keeps job=\"pug\""
    );
}

#[test]
fn the_deploy_rules_are_valid() {
    for file in deploy_rule_files() {
        let name = file.strip_prefix(deploy()).unwrap().display().to_string();
        let out = run_promtool(&deploy(), &["check", "rules", &name], None);
        assert_success(&format!("promtool check rules {name}"), &out);
    }
}

#[test]
fn the_deploy_rule_unit_tests_pass() {
    let tests = files_ending(&deploy().join("tests"), ".test.yml");
    assert!(
        !tests.is_empty(),
        "no promtool unit tests in deploy/prometheus/tests"
    );
    for file in tests {
        let name = file.strip_prefix(deploy()).unwrap().display().to_string();
        let out = run_promtool(&deploy(), &["test", "rules", &name], None);
        assert_success(&format!("promtool test rules {name}"), &out);
    }
}

#[test]
fn every_required_alert_exists_with_a_summary_and_a_runbook() {
    let mut names = BTreeSet::new();
    for file in deploy_rule_files() {
        for rule in rules(&file) {
            let Some(name) = rule["alert"].as_str() else {
                continue;
            };
            for annotation in ["summary", "runbook"] {
                assert!(
                    rule["annotations"][annotation]
                        .as_str()
                        .is_some_and(|text| !text.trim().is_empty()),
                    "{name} in {} has no {annotation} annotation",
                    file.display()
                );
            }
            assert!(
                rule["labels"]["severity"].is_string(),
                "{name} has no severity label"
            );
            assert!(names.insert(name.to_owned()), "{name} is defined twice");
        }
    }
    for required in REQUIRED_ALERTS {
        assert!(
            names.contains(required),
            "no alert {required}; have {names:?}"
        );
    }
}

#[test]
fn every_alert_has_a_unit_test_that_makes_it_fire() {
    let mut fired = BTreeSet::new();
    for file in files_ending(&deploy().join("tests"), ".test.yml") {
        for test in read_yaml(&file)["tests"].as_array().unwrap() {
            for case in test["alert_rule_test"].as_array().into_iter().flatten() {
                if case["exp_alerts"].as_array().is_some_and(|a| !a.is_empty()) {
                    fired.insert(case["alertname"].as_str().unwrap().to_owned());
                }
            }
        }
    }
    for file in deploy_rule_files() {
        for rule in rules(&file) {
            if let Some(name) = rule["alert"].as_str() {
                assert!(
                    fired.contains(name),
                    "no promtool unit test makes {name} fire"
                );
            }
        }
    }
}

/// The metric names the rules and dashboards use are the contract the pug roles export; each one
/// must be listed in deploy/prometheus/README.md, so the exporters are held to it.
#[test]
fn every_pug_metric_used_is_documented() {
    let readme = std::fs::read_to_string(deploy().join("README.md")).unwrap();
    let mut sources = Vec::new();
    for file in deploy_rule_files() {
        sources.push(std::fs::read_to_string(file).unwrap());
    }
    for file in files_ending(&repo_root().join("deploy/grafana/dashboards"), ".json") {
        sources.push(std::fs::read_to_string(file).unwrap());
    }
    let mut used = BTreeSet::new();
    for text in &sources {
        for (start, _) in text.match_indices("pug_") {
            let name: String = text[start..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let preceded_by_word = text[..start]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
            if !preceded_by_word {
                used.insert(name.trim_end_matches("_bucket").to_owned());
            }
        }
    }
    assert!(used.len() > 10, "found too few metric names: {used:?}");
    for name in used {
        assert!(
            readme.contains(&format!("`{name}`")),
            "{name} is used by the rules or dashboards but not documented in deploy/prometheus/README.md"
        );
    }
}

#[test]
fn the_chat_example_config_and_rules_are_valid_and_tested() {
    let dir = chat();
    assert_success(
        "promtool check config examples/chat/prometheus.yml",
        &run_promtool(&dir, &["check", "config", "prometheus.yml"], None),
    );
    assert_success(
        "promtool check rules examples/chat/rules.yml",
        &run_promtool(&dir, &["check", "rules", "rules.yml"], None),
    );
    assert_success(
        "promtool test rules examples/chat/rules.test.yml",
        &run_promtool(&dir, &["test", "rules", "rules.test.yml"], None),
    );
    let scrape = read_yaml(&dir.join("prometheus.yml"));
    let job = scrape["scrape_configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|job| job["job_name"] == "chat")
        .expect("a scrape job named chat");
    assert_eq!(job["scrape_interval"], "5s");
    assert_eq!(job["static_configs"][0]["targets"][0], "server:8081");
}
