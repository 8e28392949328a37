//! `pug swarm status`: nodes, roles, leader, manager reachability and pug's tasks per node, as
//! the swarm backend of a running `pug serve` observes them (`GET /api/v1/swarm`).
//!
//! Must not: call the API other than through [`pug_client::Client`].

use std::process::ExitCode;

use clap::Subcommand;
use pug_client::view;

use crate::{print, ClientArgs, Output};

#[derive(Subcommand)]
pub enum SwarmCommand {
    /// Shows the swarm: nodes, roles, leader, reachability, tasks per node, tenants' tasks.
    Status(ClientArgs),
}

/// Prints the swarm; exits non-zero when it has no leader or a node is not ready.
pub async fn run(cmd: SwarmCommand) -> anyhow::Result<ExitCode> {
    let SwarmCommand::Status(args) = cmd;
    let s = args.client()?.swarm().await?;
    if args.output == Output::Json {
        print::json(&s)?;
        return Ok(ExitCode::SUCCESS);
    }
    print::view(&view::swarm(&s));
    Ok(if view::swarm_healthy(&s) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
