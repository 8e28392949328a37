//! `pug tenant …` and `pug status`: tenants and the fleet, printed as tables or JSON; `--wait`
//! follows a change until the tenant settles.
//!
//! Must not: call the API other than through [`pug_client::Client`].

use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use clap::{Args, Subcommand};
use pug_api::{CreateTenant, UpdateTenant, UpgradeTenant};
use pug_types::{Phase, Tenant};

use crate::print;
use crate::{ClientArgs, Output};
use pug_client::{view, Action, Client, Outcome};

#[derive(Subcommand)]
pub enum TenantCommand {
    /// Creates a tenant; it converges in the background (or waits with --wait).
    Create {
        id: String,
        /// The Grafana version, e.g. 11.3.0.
        #[arg(long)]
        version: String,
        #[arg(long, default_value_t = 1)]
        replicas: u32,
        #[arg(long)]
        display_name: Option<String>,
        /// A grafana.ini override, section.key=value (repeatable).
        #[arg(long = "set")]
        set: Vec<String>,
        /// Sleep after this long without use (90s, 30m, 2h; 0: never); default: the fleet's
        /// controller.idle_timeout_secs.
        #[arg(long, value_parser = parse_idle_timeout)]
        idle_timeout: Option<u64>,
        #[command(flatten)]
        wait: WaitArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Lists tenants.
    List(ClientArgs),
    /// Shows a tenant's spec, status and recent events (never its secrets).
    Show {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Changes a tenant's overrides, replicas or name (a rolling restart follows).
    Update {
        id: String,
        /// A grafana.ini override, section.key=value (repeatable).
        #[arg(long = "set")]
        set: Vec<String>,
        /// Removes an override, section.key (repeatable).
        #[arg(long = "unset")]
        unset: Vec<String>,
        #[arg(long)]
        replicas: Option<u32>,
        #[arg(long)]
        display_name: Option<String>,
        /// Sleep after this long without use (90s, 30m, 2h; 0: never).
        #[arg(long, value_parser = parse_idle_timeout)]
        idle_timeout: Option<u64>,
        #[command(flatten)]
        wait: WaitArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Upgrades a tenant to a newer Grafana (rolling, health-gated, rolled back on failure).
    Upgrade {
        id: String,
        #[arg(long)]
        version: String,
        #[command(flatten)]
        wait: WaitArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Stops a tenant's instances; keeps its data.
    Suspend {
        id: String,
        #[command(flatten)]
        wait: WaitArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Starts a suspended tenant's instances again.
    Resume {
        id: String,
        #[command(flatten)]
        wait: WaitArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Wakes a sleeping tenant now (what its next request would do); suspended ones refuse.
    Wake {
        id: String,
        #[command(flatten)]
        wait: WaitArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Deletes a tenant: instances stopped, data archived under <data-dir>/archive.
    Delete {
        id: String,
        /// Also drop the tenant's PostgreSQL database and role.
        #[arg(long)]
        purge: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// `--idle-timeout`: 90s, 30m, 2h, 1d or 0 (never), in seconds.
fn parse_idle_timeout(text: &str) -> Result<u64, String> {
    pug_types::parse_duration_secs("--idle-timeout", text).map_err(|e| e.message)
}

/// Waiting for a change to settle.
#[derive(Args, Clone, Copy, Debug)]
pub struct WaitArgs {
    /// Wait, with a progress display, until the tenant is ready (exit 0) or failed (exit 1).
    #[arg(long)]
    wait: bool,
    /// How long --wait waits, in seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

pub async fn run(cmd: TenantCommand) -> anyhow::Result<ExitCode> {
    use TenantCommand::*;
    match cmd {
        Create {
            id,
            version,
            replicas,
            display_name,
            set,
            idle_timeout,
            wait,
            client,
        } => {
            let body = CreateTenant {
                id: id.clone(),
                version,
                replicas: Some(replicas),
                display_name,
                set,
                idle_timeout_secs: idle_timeout,
                ..Default::default()
            };
            let api = client.client()?;
            let t = api.create_tenant(&body).await?;
            after_change(&api, client.output, &id, t, wait, "created").await
        }
        List(client) => list(&client).await,
        Show { id, client } => show(&client, &id).await,
        Update {
            id,
            set,
            unset,
            replicas,
            display_name,
            idle_timeout,
            wait,
            client,
        } => {
            let body = UpdateTenant {
                display_name,
                replicas,
                set,
                unset,
                idle_timeout_secs: idle_timeout,
                ..Default::default()
            };
            let api = client.client()?;
            let t = api.update_tenant(&id, &body).await?;
            after_change(&api, client.output, &id, t, wait, "updated").await
        }
        Upgrade {
            id,
            version,
            wait,
            client,
        } => {
            let api = client.client()?;
            let t = api.upgrade_tenant(&id, &UpgradeTenant { version }).await?;
            after_change(&api, client.output, &id, t, wait, "upgrade started").await
        }
        Suspend { id, wait, client } => action(&client, &id, Action::Suspend, wait).await,
        Resume { id, wait, client } => action(&client, &id, Action::Resume, wait).await,
        Wake { id, wait, client } => action(&client, &id, Action::Wake, wait).await,
        Delete { id, purge, client } => {
            let t = client.client()?.delete_tenant(&id, purge).await?;
            print::out(client.output, &t, |_| {
                println!("tenant {id}: deletion started; its data will be archived");
            })
        }
    }
}

/// `pug status`.
pub async fn status(args: &ClientArgs) -> anyhow::Result<ExitCode> {
    let s = args.client()?.status().await?;
    print::out(args.output, &s, |s| print::view(&view::fleet(s)))
}

async fn list(args: &ClientArgs) -> anyhow::Result<ExitCode> {
    let tenants = args.client()?.tenants().await?;
    print::out(args.output, &tenants, |t| {
        print::view(&view::tenants(t, pug_store::now_ms()));
    })
}

async fn show(args: &ClientArgs, id: &str) -> anyhow::Result<ExitCode> {
    let d = args.client()?.tenant(id).await?;
    print::out(args.output, &d, |d| {
        print::view(&view::tenant(d, pug_store::now_ms()));
    })
}

async fn action(
    args: &ClientArgs,
    id: &str,
    action: Action,
    wait: WaitArgs,
) -> anyhow::Result<ExitCode> {
    let api = args.client()?;
    let t = api.tenant_action(id, action).await?;
    if action == Action::Wake && wait.wait {
        // Woken, it is settled only once awake (sleeping counts as settled for other changes).
        return wait_until(&api, args.output, id, t, wait, |p| {
            matches!(p, Phase::Ready | Phase::Failed)
        })
        .await;
    }
    let what = format!("{} requested", action.as_str());
    after_change(&api, args.output, id, t, wait, &what).await
}

/// What a change prints: at once, or (`--wait`) once the tenant settled.
async fn after_change(
    api: &Client,
    output: Output,
    id: &str,
    t: Tenant,
    wait: WaitArgs,
    what: &str,
) -> anyhow::Result<ExitCode> {
    if wait.wait {
        return wait_until(api, output, id, t, wait, Phase::is_settled).await;
    }
    print::out(output, &t, |t| {
        println!(
            "tenant {id}: {what} (generation {}); it converges in the background",
            t.generation
        );
    })
}

/// Follows the tenant, with a spinner, until the controller has acted on `submitted` and
/// `settled` holds for its phase.
async fn wait_until(
    api: &Client,
    output: Output,
    id: &str,
    submitted: Tenant,
    wait: WaitArgs,
    settled: fn(Phase) -> bool,
) -> anyhow::Result<ExitCode> {
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
            .expect("static template"),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    let timeout = Duration::from_secs(wait.timeout);
    let followed = api
        .follow(id, &submitted, settled, timeout, |d| {
            let (t, s) = (&d.tenant, &d.tenant.status);
            bar.set_message(format!(
                "{id}: {} — {}/{} ready, Grafana {}",
                s.phase, s.ready_replicas, t.spec.replicas, t.spec.version
            ));
        })
        .await;
    bar.finish_and_clear();
    let (d, outcome) = followed?;
    let (t, s) = (&d.tenant, &d.tenant.status);
    if output == Output::Json {
        print::json(&d)?;
    }
    let why = s.last_error.as_deref().unwrap_or("no error recorded");
    match outcome {
        Outcome::RolledBack => bail!(
            "tenant {id} is {} on Grafana {} (rolled back): {why}",
            s.phase,
            t.spec.version
        ),
        Outcome::Failed => bail!("tenant {id} is {}: {why}", s.phase),
        Outcome::Settled => {}
    }
    if output == Output::Table {
        println!(
            "tenant {id}: {} — {}/{} ready, Grafana {} at {}",
            s.phase, s.ready_replicas, t.spec.replicas, t.spec.version, d.url
        );
    }
    Ok(ExitCode::SUCCESS)
}
