//! `pug swarm status`: nodes, roles, leader, manager reachability and pug's tasks per node, as
//! the swarm backend of a running `pug serve` observes them (`GET /api/v1/swarm`).
//!
//! Must not: call the API other than through [`Client`].

use std::process::ExitCode;

use clap::Subcommand;
use pug_docker::SwarmStatus;

use crate::client::Client;
use crate::print::{self, table};
use crate::{ClientArgs, Output};

#[derive(Subcommand)]
pub enum SwarmCommand {
    /// Shows the swarm: nodes, roles, leader, reachability, tasks per node, tenants' tasks.
    Status(ClientArgs),
}

/// Prints the swarm; exits non-zero when it has no leader or a node is not ready.
pub async fn run(cmd: SwarmCommand) -> anyhow::Result<ExitCode> {
    let SwarmCommand::Status(args) = cmd;
    let s = Client::new(&args)?.swarm().await?;
    if args.output == Output::Json {
        print::json(&s)?;
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
