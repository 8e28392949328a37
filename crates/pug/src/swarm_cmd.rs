//! `pug swarm status`: nodes, roles, leader, manager reachability and pug's tasks per node, as
//! the swarm backend of a running `pug serve` observes them (`GET /api/v1/swarm`).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::Subcommand;
use comfy_table::{presets::NOTHING, Table};
use pug_docker::SwarmStatus;

use crate::{ClientArgs, Output};

#[derive(Subcommand)]
pub enum SwarmCommand {
    /// Shows the swarm: nodes, roles, leader, reachability, tasks per node, tenants' tasks.
    Status(ClientArgs),
}

pub async fn swarm(cmd: SwarmCommand) -> anyhow::Result<ExitCode> {
    let SwarmCommand::Status(args) = cmd;
    let url = match &args.url {
        Some(u) => u.clone(),
        None => std::fs::read_to_string(args.data_dir.join("pug.url"))
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "http://127.0.0.1:8080".into()),
    };
    let token = match &args.token {
        Some(t) => Some(t.clone()),
        None => std::fs::read_to_string(args.data_dir.join("local.token"))
            .ok()
            .map(|s| s.trim().to_owned()),
    };
    let url = format!("{}/api/v1/swarm", url.trim_end_matches('/'));
    let mut request = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?
        .get(&url);
    if let Some(t) = &token {
        request = request.bearer_auth(t);
    }
    let response = request.send().await.map_err(|e| {
        anyhow!("cannot reach pug at {url}: {e}; is `pug serve` running? (set --url or PUG_URL)")
    })?;
    let status = response.status();
    let text = response.text().await.context("cannot read pug's answer")?;
    if !status.is_success() {
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or(text);
        bail!("{message}");
    }
    let s: SwarmStatus =
        serde_json::from_str(&text).with_context(|| format!("unexpected answer from {url}"))?;
    if args.output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", render(&s));
    let healthy = s.leader.is_some() && s.nodes.iter().all(|n| n.state == "ready");
    Ok(if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The status as the tables `pug swarm status` prints.
pub fn render(s: &SwarmStatus) -> String {
    let mut out = format!(
        "leader: {}   managers reachable: {}/{}   nodes: {}   ingress peers: {}\n",
        s.leader.as_deref().unwrap_or("NONE"),
        s.managers_reachable,
        s.managers,
        s.nodes.len(),
        s.ingress_peers
            .as_ref()
            .map_or("unknown".to_owned(), |p| p.len().to_string())
    );
    let mut nodes = table(&[
        "NODE",
        "ROLE",
        "STATE",
        "AVAILABILITY",
        "REACHABILITY",
        "ADDRESS",
        "TASKS",
    ]);
    for n in &s.nodes {
        let tasks = n
            .tasks
            .iter()
            .map(|(state, count)| format!("{state}={count}"))
            .collect::<Vec<_>>()
            .join(" ");
        nodes.add_row(vec![
            format!("{}{}", n.hostname, if n.leader { " (leader)" } else { "" }),
            n.role.clone(),
            n.state.clone(),
            n.availability.clone(),
            n.reachability.clone().unwrap_or_else(|| "-".into()),
            n.address.clone(),
            if tasks.is_empty() { "-".into() } else { tasks },
        ]);
    }
    out.push_str(&format!("{nodes}\n"));
    if !s.tenants.is_empty() {
        let mut tenants = table(&["TENANT", "RUNNING", "DESIRED", "UPDATE"]);
        for t in &s.tenants {
            tenants.add_row(vec![
                t.tenant.clone(),
                t.running.to_string(),
                t.desired.to_string(),
                t.update_state.clone().unwrap_or_else(|| "-".into()),
            ]);
        }
        out.push_str(&format!("{tenants}\n"));
    }
    out
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(NOTHING).set_header(header.to_vec());
    t
}

/// Starts observing the swarm for `/metrics` (every 15 s) and for `GET /api/v1/swarm`.
pub fn observe(
    engine: pug_docker::Engine,
    config: &pug_config::Config,
    registry: &mut prometheus_client::registry::Registry,
) -> std::sync::Arc<pug_docker::SwarmObserver> {
    let observer = pug_docker::SwarmObserver::new(engine, &config.docker.namespace, registry);
    observer.spawn(Duration::from_secs(15));
    observer
}

/// Serves `GET /api/v1/swarm` from `observer`, when there is one.
pub fn with_swarm(
    api: axum::Router,
    observer: Option<std::sync::Arc<pug_docker::SwarmObserver>>,
) -> axum::Router {
    let Some(observer) = observer else {
        return api;
    };
    let source = pug_api::swarm::SwarmSource(std::sync::Arc::new(move || {
        let observer = observer.clone();
        Box::pin(async move {
            let status = observer
                .observe()
                .await
                .map_err(|e| pug_orchestrator::error_chain(&e))?;
            serde_json::to_value(status).map_err(|e| e.to_string())
        }) as pug_api::swarm::SwarmFuture
    }));
    api.layer(axum::Extension(source))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pug_docker::observe::{NodeView, TenantTasks};

    #[test]
    fn renders_nodes_and_tenants() {
        let status = SwarmStatus {
            leader: Some("m1".into()),
            managers: 3,
            managers_reachable: 2,
            nodes: vec![NodeView {
                id: "n1".into(),
                hostname: "m1".into(),
                role: "manager".into(),
                availability: "active".into(),
                state: "ready".into(),
                address: "10.0.0.1".into(),
                leader: true,
                reachability: Some("reachable".into()),
                tasks: [("running".to_owned(), 3)].into(),
            }],
            tenants: vec![TenantTasks {
                tenant: "acme".into(),
                running: 2,
                desired: 3,
                update_state: Some("updating".into()),
            }],
            ..Default::default()
        };
        let text = render(&status);
        assert!(
            text.starts_with(
                "leader: m1   managers reachable: 2/3   nodes: 1   ingress peers: unknown\n"
            ),
            "{text}"
        );
        let with_peers = SwarmStatus {
            ingress_peers: Some(vec!["m1".into()]),
            ..status.clone()
        };
        assert!(render(&with_peers).contains("ingress peers: 1\n"));
        assert!(text.contains("m1 (leader)"), "{text}");
        assert!(text.contains("running=3"), "{text}");
        assert!(text.contains("acme"), "{text}");
        assert!(text.contains("updating"), "{text}");
    }
}
