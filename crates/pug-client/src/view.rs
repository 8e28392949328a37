//! What the CLI shows of each answer of the API, as text: lines and tables ([`View`]), and how
//! times read ([`time`], [`clock`], [`ago`]). Pure: a front end lays the tables out and prints
//! them (the `pug` binary with borderless tables), so what a command shows is tested here.
//!
//! Must not: print, call pug, or read the clock (callers pass `now`).

use std::time::Duration;

use pug_api::{EmbedKey, FleetStatus, TenantDetail, TokenInfo, UserInfo};
use pug_docker::SwarmStatus;

/// One part of what a command shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Block {
    /// A line of text.
    Line(String),
    /// A table; no header when every column name is empty.
    Table {
        header: Vec<&'static str>,
        rows: Vec<Vec<String>>,
    },
}

/// What a command shows, top to bottom.
pub type View = Vec<Block>;

fn table(header: &[&'static str], rows: Vec<Vec<String>>) -> Block {
    Block::Table {
        header: header.to_vec(),
        rows,
    }
}

/// `pug status`: the fleet, and its tenants by phase (phases without tenants left out).
pub fn fleet(s: &FleetStatus) -> View {
    let phases = s.tenants_by_phase.iter().filter(|(_, n)| **n > 0);
    vec![
        Block::Line(format!(
            "pug {} — backend {}, store {}",
            s.version, s.backend, s.store
        )),
        Block::Line(format!(
            "tenants: {}   reconcile queue: {}",
            s.tenants_total, s.queue_depth
        )),
        table(
            &["PHASE", "TENANTS"],
            phases
                .map(|(p, n)| vec![p.clone(), n.to_string()])
                .collect(),
        ),
    ]
}

/// `pug tenant list`.
pub fn tenants(tenants: &[TenantDetail], now: i64) -> View {
    let rows = tenants.iter().map(|d| {
        let (t, s) = (&d.tenant, &d.tenant.status);
        vec![
            t.id.to_string(),
            s.phase.to_string(),
            t.spec.version.to_string(),
            format!("{}/{}", s.ready_replicas, t.spec.replicas),
            d.last_activity_ms
                .map_or_else(|| "-".into(), |at| ago(now, at)),
            d.url.clone(),
        ]
    });
    let header = ["ID", "PHASE", "VERSION", "READY", "LAST ACTIVITY", "URL"];
    vec![table(&header, rows.collect())]
}

/// `pug tenant show`: one row per fact, then its events.
pub fn tenant(d: &TenantDetail, now: i64) -> View {
    let (t, s) = (&d.tenant, &d.tenant.status);
    let running = s.running_version.as_deref().unwrap_or("-");
    let mut rows = vec![
        ("id", t.id.to_string()),
        ("name", t.spec.display_name.clone()),
        ("url", d.url.clone()),
        ("phase", s.phase.to_string()),
        (
            "version",
            format!("{} (running: {running})", t.spec.version),
        ),
        (
            "replicas",
            format!("{} ready of {}", s.ready_replicas, t.spec.replicas),
        ),
        (
            "desired",
            format!("{:?}", t.spec.desired_state).to_lowercase(),
        ),
        (
            "generation",
            format!("{} (observed {})", t.generation, s.observed_generation),
        ),
        (
            "idle timeout",
            match d.idle_timeout_secs {
                0 => "never sleeps".into(),
                secs => pug_types::format_duration_secs(secs),
            },
        ),
        (
            "last activity",
            d.last_activity_ms.map_or_else(
                || "never".into(),
                |at| format!("{} ({})", time(at), ago(now, at)),
            ),
        ),
    ];
    for (section, key, value) in t.spec.overrides.iter() {
        rows.push(("override", format!("{section}.{key} = {value}")));
    }
    if let Some(e) = &s.last_error {
        rows.push(("last error", e.clone()));
    }
    let rows = rows.into_iter().map(|(k, v)| vec![k.to_owned(), v]);
    let mut view = vec![table(&["", ""], rows.collect())];
    if !d.events.is_empty() {
        view.push(Block::Line("\nEVENTS".into()));
        let events = d
            .events
            .iter()
            .map(|e| vec![clock(e.at_ms), e.reason.clone(), e.message.clone()]);
        view.push(table(&[], events.collect()));
    }
    view
}

/// `pug token list` (never a secret).
pub fn tokens(tokens: &[TokenInfo]) -> View {
    let rows = tokens.iter().map(|t| {
        let expires = match t.expires_at_ms {
            Some(ms) if t.expired => format!("{} (expired)", time(ms)),
            Some(ms) => time(ms),
            None => "never".to_owned(),
        };
        vec![
            t.id.clone(),
            t.name.clone(),
            t.role.clone(),
            time(t.created_at_ms),
            expires,
            t.last_used_at_ms.map_or("-".to_owned(), time),
        ]
    });
    let header = ["ID", "NAME", "ROLE", "CREATED", "EXPIRES", "LAST USED"];
    vec![table(&header, rows.collect())]
}

/// `pug user list`: users and their tenants.
pub fn users(users: &[UserInfo]) -> View {
    let rows = users.iter().map(|u| {
        let tenants: Vec<String> = u
            .tenants
            .iter()
            .map(|(t, r)| format!("{t} ({r})"))
            .collect();
        vec![u.name.clone(), u.email.clone(), tenants.join(", ")]
    });
    vec![table(&["NAME", "EMAIL", "TENANTS"], rows.collect())]
}

/// `pug embed-key list` (never a key).
pub fn embed_keys(keys: &[EmbedKey]) -> View {
    let rows = keys.iter().map(|k| {
        let tenant = k.tenant.clone().unwrap_or_else(|| "(any)".into());
        vec![k.id.clone(), k.name.clone(), k.algorithm.clone(), tenant]
    });
    vec![table(
        &["ID", "NAME", "ALGORITHM", "TENANT"],
        rows.collect(),
    )]
}

/// Whether the swarm is well: it has a leader and every node is ready.
pub fn swarm_healthy(s: &SwarmStatus) -> bool {
    s.leader.is_some() && s.nodes.iter().all(|n| n.state == "ready")
}

/// `pug swarm status`: the leader and managers, the nodes, and the tenants' tasks.
pub fn swarm(s: &SwarmStatus) -> View {
    let peers = s.ingress_peers.as_ref();
    let mut view = vec![Block::Line(format!(
        "leader: {}   managers reachable: {}/{}   nodes: {}   ingress peers: {}",
        s.leader.as_deref().unwrap_or("NONE"),
        s.managers_reachable,
        s.managers,
        s.nodes.len(),
        peers.map_or("unknown".to_owned(), |p| p.len().to_string())
    ))];
    let nodes = s.nodes.iter().map(|n| {
        let tasks: Vec<String> = n.tasks.iter().map(|(s, c)| format!("{s}={c}")).collect();
        vec![
            format!("{}{}", n.hostname, if n.leader { " (leader)" } else { "" }),
            n.role.clone(),
            n.state.clone(),
            n.availability.clone(),
            n.reachability.clone().unwrap_or_else(|| "-".into()),
            n.address.clone(),
            if tasks.is_empty() {
                "-".into()
            } else {
                tasks.join(" ")
            },
        ]
    });
    let header = [
        "NODE",
        "ROLE",
        "STATE",
        "AVAILABILITY",
        "REACHABILITY",
        "ADDRESS",
        "TASKS",
    ];
    view.push(table(&header, nodes.collect()));
    if !s.tenants.is_empty() {
        let tenants = s.tenants.iter().map(|t| {
            vec![
                t.tenant.clone(),
                t.running.to_string(),
                t.desired.to_string(),
                t.update_state.clone().unwrap_or_else(|| "-".into()),
            ]
        });
        view.push(table(
            &["TENANT", "RUNNING", "DESIRED", "UPDATE"],
            tenants.collect(),
        ));
    }
    view
}

/// A time of day, `HH:MM:SSZ`.
pub fn clock(ms: i64) -> String {
    let secs = ms / 1000;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    format!("{h:02}:{m:02}:{s:02}Z")
}

/// A time as RFC 3339 to the second, UTC.
pub fn time(ms: i64) -> String {
    let at = std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(at).to_string()
}

/// How long before `now` (both ms since the epoch) `at` was: `5s ago`, `3m ago`, `2h ago`,
/// `4d ago`.
pub fn ago(now: i64, at: i64) -> String {
    let secs = ((now - at).max(0)) / 1000;
    match secs {
        s if s < 60 => format!("{s}s ago"),
        s if s < 3600 => format!("{}m ago", s / 60),
        s if s < 86_400 => format!("{}h ago", s / 3600),
        s => format!("{}d ago", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pug_docker::observe::{NodeView, TenantTasks};

    #[test]
    fn ages_print_in_their_largest_unit() {
        for (ago, want) in [
            (0, "0s ago"),
            (59_999, "59s ago"),
            (60_000, "1m ago"),
            (7_200_000, "2h ago"),
            (3 * 86_400_000, "3d ago"),
            (-5, "0s ago"),
        ] {
            assert_eq!(super::ago(1_000_000_000_000, 1_000_000_000_000 - ago), want);
        }
    }

    #[test]
    fn times_print_in_utc() {
        let cases = [
            (0, "00:00:00Z", "1970-01-01T00:00:00Z"),
            (3_723_999, "01:02:03Z", "1970-01-01T01:02:03Z"),
            (86_400_000 + 59_000, "00:00:59Z", "1970-01-02T00:00:59Z"),
        ];
        for (ms, clock, time) in cases {
            assert_eq!(super::clock(ms), clock, "{ms}");
            assert_eq!(super::time(ms), time, "{ms}");
        }
        assert_eq!(
            super::time(-5),
            "1970-01-01T00:00:00Z",
            "before the epoch: clamped"
        );
    }

    #[test]
    fn the_swarm_shows_nodes_and_tenants() {
        let node = NodeView {
            id: "n1".into(),
            hostname: "m1".into(),
            role: "manager".into(),
            availability: "active".into(),
            state: "ready".into(),
            address: "10.0.0.1".into(),
            leader: true,
            reachability: Some("reachable".into()),
            tasks: [("running".to_owned(), 3)].into(),
        };
        let status = SwarmStatus {
            leader: Some("m1".into()),
            managers: 3,
            managers_reachable: 2,
            nodes: vec![node],
            tenants: vec![TenantTasks {
                tenant: "acme".into(),
                running: 2,
                desired: 3,
                update_state: Some("updating".into()),
            }],
            ..Default::default()
        };
        let row = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let header = vec![
            "NODE",
            "ROLE",
            "STATE",
            "AVAILABILITY",
            "REACHABILITY",
            "ADDRESS",
            "TASKS",
        ];
        assert_eq!(
            swarm(&status),
            vec![
                Block::Line(
                    "leader: m1   managers reachable: 2/3   nodes: 1   ingress peers: unknown"
                        .into()
                ),
                Block::Table {
                    header,
                    rows: vec![row(&[
                        "m1 (leader)",
                        "manager",
                        "ready",
                        "active",
                        "reachable",
                        "10.0.0.1",
                        "running=3",
                    ])],
                },
                Block::Table {
                    header: vec!["TENANT", "RUNNING", "DESIRED", "UPDATE"],
                    rows: vec![row(&["acme", "2", "3", "updating"])],
                },
            ]
        );
        assert!(swarm_healthy(&status));
        let with_peers = SwarmStatus {
            ingress_peers: Some(vec!["m1".into()]),
            tenants: Vec::new(),
            ..status.clone()
        };
        let view = swarm(&with_peers);
        assert!(matches!(&view[0], Block::Line(l) if l.ends_with("ingress peers: 1")));
        assert_eq!(view.len(), 2, "no tenants: no tenants' table");
        let mut down = status.clone();
        down.nodes[0].state = "down".into();
        assert!(!swarm_healthy(&down));
        assert!(!swarm_healthy(&SwarmStatus {
            leader: None,
            ..status
        }));
    }
}
