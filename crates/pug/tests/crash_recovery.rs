//! pug killed with SIGKILL at random moments converges when started again: no duplicate
//! instance, no orphan, every tenant as its spec says; healthy instances are adopted, not
//! restarted.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use support::{wait_for, Pug};

/// Waits until every tenant settled on its latest generation and the queue is empty.
fn converged(pug: &Pug) -> Vec<Value> {
    wait_for(Duration::from_secs(90), "the fleet to converge", || {
        let (code, status) = pug.api("GET", "/api/v1/status", None);
        if code != 200 || status["queue_depth"] != 0 {
            return None;
        }
        let (_, list) = pug.api("GET", "/api/v1/tenants", None);
        let tenants = list.as_array()?.clone();
        tenants
            .iter()
            .all(|t| {
                t["status"]["observed_generation"] == t["generation"]
                    && matches!(t["status"]["phase"].as_str(), Some("ready" | "suspended"))
            })
            .then_some(tenants)
    })
}

#[test]
fn sigkill_at_random_points_converges_without_duplicates_or_orphans() {
    let seed: u64 = std::env::var("PUG_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("seed {seed} (set PUG_TEST_SEED to replay)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut pug = Pug::start((21200, 21399), &[]);
    let mut known: Vec<String> = Vec::new();
    let mut next_id = 0;

    for round in 0..15 {
        // A burst of changes, none waited for.
        for _ in 0..rng.gen_range(1..5) {
            let op = if known.len() < 3 {
                0
            } else {
                rng.gen_range(0..6)
            };
            let (method, path, body) = match op {
                0 => {
                    next_id += 1;
                    let id = format!("t{next_id}");
                    known.push(id.clone());
                    (
                        "POST",
                        "/api/v1/tenants".to_owned(),
                        Some(json!({"id": id, "version": "11.3.0"})),
                    )
                }
                1 => {
                    let id = &known[rng.gen_range(0..known.len())];
                    let n: u32 = rng.gen_range(0..1000);
                    (
                        "PATCH",
                        format!("/api/v1/tenants/{id}"),
                        Some(
                            json!({"set": [format!("server.router_logging={}", n.is_multiple_of(2))], "display_name": format!("n{n}")}),
                        ),
                    )
                }
                2 => {
                    let id = &known[rng.gen_range(0..known.len())];
                    ("POST", format!("/api/v1/tenants/{id}/suspend"), None)
                }
                3 => {
                    let id = &known[rng.gen_range(0..known.len())];
                    ("POST", format!("/api/v1/tenants/{id}/resume"), None)
                }
                4 => {
                    let id = &known[rng.gen_range(0..known.len())];
                    (
                        "POST",
                        format!("/api/v1/tenants/{id}/upgrade"),
                        Some(json!({"version": format!("11.{}.0", 4 + round)})),
                    )
                }
                _ => {
                    let id = known.remove(rng.gen_range(0..known.len()));
                    ("DELETE", format!("/api/v1/tenants/{id}"), None)
                }
            };
            let (code, answer) = pug.api(method, &path, body);
            assert!(code < 500, "{method} {path}: {code} {answer}");
        }
        // The random point: somewhere in the middle of the reconciles those changes started.
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..400)));
        pug.kill9();
        pug.spawn();
    }

    let tenants = converged(&pug);
    let instances = pug.instances();
    let mut by_replica: BTreeMap<String, usize> = BTreeMap::new();
    for (replica, _) in &instances {
        *by_replica.entry(replica.clone()).or_default() += 1;
    }
    assert!(
        by_replica.values().all(|n| *n == 1),
        "duplicate instances: {instances:?}"
    );
    let expected: HashSet<String> = tenants
        .iter()
        .filter(|t| t["status"]["phase"] == "ready")
        .map(|t| format!("{}/replica-0", t["id"].as_str().unwrap()))
        .collect();
    let running: HashSet<String> = by_replica.keys().cloned().collect();
    assert_eq!(
        running, expected,
        "instances must be exactly the active tenants' replicas"
    );
    let ids: HashSet<&str> = tenants.iter().map(|t| t["id"].as_str().unwrap()).collect();
    let wanted: HashSet<&str> = known.iter().map(String::as_str).collect();
    assert_eq!(ids, wanted, "deleted tenants are gone, the others exist");
    for t in &tenants {
        if t["status"]["phase"] == "ready" {
            assert_eq!(t["status"]["running_version"], t["spec"]["version"], "{t}");
        }
    }
}

#[test]
fn a_restarted_pug_adopts_healthy_instances() {
    let mut pug = Pug::start((21400, 21449), &[]);
    pug.ok(&["tenant", "create", "acme", "--version", "11.3.0", "--wait"]);
    let before = pug.instances();
    assert_eq!(before.len(), 1);
    pug.kill9();
    pug.spawn();
    converged(&pug);
    // A full reconcile of the tenant happened (start-up resync) and left the process alone.
    assert_eq!(
        pug.instances(),
        before,
        "the healthy instance was not restarted; pug's log:\n{}",
        pug.log()
    );
    assert_eq!(pug.tenant("acme")["status"]["phase"], "ready");

    // An instance whose tenant vanished from the store while pug was down is an orphan.
    pug.kill9();
    let db = pug.data.join("pug.db");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use sqlx::ConnectOptions;
        let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&db)
            .connect()
            .await
            .unwrap();
        for sql in [
            "DELETE FROM secrets WHERE tenant_id = 'acme'",
            "DELETE FROM tenant_status WHERE tenant_id = 'acme'",
            "DELETE FROM ports WHERE tenant_id = 'acme'",
            "DELETE FROM work_queue WHERE tenant_id = 'acme'",
            "DELETE FROM tenants WHERE id = 'acme'",
        ] {
            sqlx::query(sql).execute(&mut conn).await.unwrap();
        }
    });
    pug.env
        .push(("PUG_CONTROLLER_RESYNC_INTERVAL_SECS".into(), "1".into()));
    pug.spawn();
    // The instance stops first, then the event is written: wait for both.
    wait_for(
        Duration::from_secs(30),
        "the orphan to be removed, with an event",
        || {
            let (_, events) = pug.api("GET", "/api/v1/tenants/acme/events", None);
            (pug.instances().is_empty() && events.to_string().contains("OrphanRemoved"))
                .then_some(())
        },
    );
}
