//! Datasources and dashboards from the tenant spec, provisioned into the tenant's Grafana as
//! Grafana provisioning files; credentials only in `secureJsonData`, never in API answers.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use serde_json::{json, Value};
use support::Pug;

#[test]
fn datasources_and_dashboards_are_provisioned_without_leaking_credentials() {
    let pug = Pug::start((21560, 21579), &[]);
    let password = "graphite-Pa55word-for-acme";
    let (code, created) = pug.api(
        "POST",
        "/api/v1/tenants",
        Some(json!({
            "id": "acme",
            "version": "11.3.0",
            "datasources": [{
                "name": "Graphite", "type": "graphite", "url": "https://graphite.example.com/acme",
                "is_default": true, "basic_auth_user": "acme",
                "json_data": {"graphiteVersion": "1.1"},
                "secure_json_data": {"basicAuthPassword": password}
            }],
            "dashboards": [{"name": "overview", "json": {"title": "Acme overview", "panels": []}}]
        })),
    );
    assert_eq!(code, 201, "{created}");
    assert!(!created.to_string().contains(password));
    let t = pug.wait_phase("acme", "ready", Duration::from_secs(60));
    assert!(
        !t.to_string().contains(password),
        "tenant show leaks a credential"
    );
    assert_eq!(
        t["spec"]["datasources"][0]["secure_fields"],
        json!(["basicAuthPassword"])
    );

    let replica = pug.data.join("tenants/acme/replica-0");
    let ds_path = replica.join("provisioning/datasources/pug.yaml");
    let ds: Value = serde_json::from_str(&std::fs::read_to_string(&ds_path).unwrap()).unwrap();
    let entry = &ds["datasources"][0];
    assert_eq!(entry["type"], "graphite");
    assert_eq!(entry["basicAuthUser"], "acme");
    assert_eq!(entry["secureJsonData"]["basicAuthPassword"], password);
    assert_eq!(entry["jsonData"]["graphiteVersion"], "1.1");
    // Readable by pug and, when tenants are isolated, by the tenant's own group only.
    assert_eq!(
        std::fs::metadata(&ds_path).unwrap().permissions().mode() & 0o037,
        0
    );
    let provider: Value = serde_json::from_str(
        &std::fs::read_to_string(replica.join("provisioning/dashboards/pug.yaml")).unwrap(),
    )
    .unwrap();
    let dir = provider["providers"][0]["options"]["path"]
        .as_str()
        .unwrap();
    let dash: Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{dir}/overview.json")).unwrap())
            .unwrap();
    assert_eq!(dash["title"], "Acme overview");

    // Changing the datasources rolls the instance with the new files; removed dashboards go.
    let (code, answer) = pug.api(
        "PATCH",
        "/api/v1/tenants/acme",
        Some(json!({
            "datasources": [{"name": "Prom", "type": "prometheus", "url": "http://prom:9090"}],
            "dashboards": []
        })),
    );
    assert_eq!(code, 200, "{answer}");
    pug.wait_phase("acme", "ready", Duration::from_secs(60));
    let ds: Value = serde_json::from_str(&std::fs::read_to_string(&ds_path).unwrap()).unwrap();
    assert_eq!(ds["datasources"][0]["name"], "Prom");
    assert_eq!(ds["datasources"].as_array().unwrap().len(), 1);
    assert!(!std::path::Path::new(&format!("{dir}/overview.json")).exists());

    // Bad provisioning input is refused and changes nothing.
    for bad in [
        json!({"datasources": [{"name": "x", "type": "Bad Type", "url": "http://a"}]}),
        json!({"datasources": [{"name": "x", "type": "prometheus", "url": "file:///etc/passwd"}]}),
        json!({"dashboards": [{"name": "../evil", "json": {"title": "x"}}]}),
        json!({"dashboards": [{"name": "ok", "json": {"no": "title"}}]}),
    ] {
        let (code, answer) = pug.api("PATCH", "/api/v1/tenants/acme", Some(bad.clone()));
        assert_eq!(code, 422, "{bad}: {answer}");
    }
    let events = pug
        .api("GET", "/api/v1/tenants/acme/events", None)
        .1
        .to_string();
    assert!(!events.contains(password));
    assert!(!pug.log().contains(password));
}
