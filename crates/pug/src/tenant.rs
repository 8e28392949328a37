//! `pug tenant …` and `pug status`: tenants and the fleet, printed as tables or JSON; `--wait`
//! follows a change until the tenant settles.
//!
//! Must not: call the API other than through [`Client`].

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::{Args, Subcommand};
use pug_api::{CreateTenant, TenantDetail, UpdateTenant, UpgradeTenant};
use pug_types::{Phase, Tenant};

use crate::client::{Action, Client};
use crate::print::{self, table};
use crate::{ClientArgs, Output};

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
            let api = Client::new(&client)?;
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
            let api = Client::new(&client)?;
            let t = api.update_tenant(&id, &body).await?;
            after_change(&api, client.output, &id, t, wait, "updated").await
        }
        Upgrade {
            id,
            version,
            wait,
            client,
        } => {
            let api = Client::new(&client)?;
            let t = api.upgrade_tenant(&id, &UpgradeTenant { version }).await?;
            after_change(&api, client.output, &id, t, wait, "upgrade started").await
        }
        Suspend { id, wait, client } => action(&client, &id, Action::Suspend, wait).await,
        Resume { id, wait, client } => action(&client, &id, Action::Resume, wait).await,
        Wake { id, wait, client } => action(&client, &id, Action::Wake, wait).await,
        Delete { id, purge, client } => {
            let t = Client::new(&client)?.delete_tenant(&id, purge).await?;
            print::out(client.output, &t, |_| {
                println!("tenant {id}: deletion started; its data will be archived");
            })
        }
    }
}

/// `pug status`.
pub async fn status(args: &ClientArgs) -> anyhow::Result<ExitCode> {
    let s = Client::new(args)?.status().await?;
    print::out(args.output, &s, |s| {
        println!(
            "pug {} — backend {}, store {}",
            s.version, s.backend, s.store
        );
        println!(
            "tenants: {}   reconcile queue: {}",
            s.tenants_total, s.queue_depth
        );
        let mut table = table(&["PHASE", "TENANTS"]);
        for (phase, n) in s.tenants_by_phase.iter().filter(|(_, n)| **n > 0) {
            table.add_row(vec![phase.clone(), n.to_string()]);
        }
        println!("{table}");
    })
}

async fn list(args: &ClientArgs) -> anyhow::Result<ExitCode> {
    let tenants = Client::new(args)?.tenants().await?;
    print::out(args.output, &tenants, |tenants| {
        let mut t = table(&["ID", "PHASE", "VERSION", "READY", "LAST ACTIVITY", "URL"]);
        let now = pug_store::now_ms();
        for detail in tenants {
            let (tenant, status) = (&detail.tenant, &detail.tenant.status);
            t.add_row(vec![
                tenant.id.to_string(),
                status.phase.to_string(),
                tenant.spec.version.to_string(),
                format!("{}/{}", status.ready_replicas, tenant.spec.replicas),
                detail
                    .last_activity_ms
                    .map_or_else(|| "-".into(), |at| print::ago(now, at)),
                detail.url.clone(),
            ]);
        }
        println!("{t}");
    })
}

async fn show(args: &ClientArgs, id: &str) -> anyhow::Result<ExitCode> {
    let d = Client::new(args)?.tenant(id).await?;
    print::out(args.output, &d, print_detail)
}

/// A tenant as `pug tenant show` prints it: one row per fact, then its events.
fn print_detail(d: &TenantDetail) {
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
                |at| {
                    format!(
                        "{} ({})",
                        print::time(at),
                        print::ago(pug_store::now_ms(), at)
                    )
                },
            ),
        ),
    ];
    for (section, key, value) in t.spec.overrides.iter() {
        rows.push(("override", format!("{section}.{key} = {value}")));
    }
    if let Some(e) = &s.last_error {
        rows.push(("last error", e.clone()));
    }
    let mut table = table(&["", ""]);
    for (name, value) in rows {
        table.add_row(vec![name.to_owned(), value]);
    }
    println!("{table}");
    if !d.events.is_empty() {
        println!("\nEVENTS");
        let mut ev = print::table(&[]);
        for e in &d.events {
            ev.add_row(vec![
                print::clock(e.at_ms),
                e.reason.clone(),
                e.message.clone(),
            ]);
        }
        println!("{ev}");
    }
}

async fn action(
    args: &ClientArgs,
    id: &str,
    action: Action,
    wait: WaitArgs,
) -> anyhow::Result<ExitCode> {
    let api = Client::new(args)?;
    let t = api.tenant_action(id, action).await?;
    if action == Action::Wake && wait.wait {
        // Woken, it is settled only once awake (sleeping counts as settled for other changes).
        return self::wait_until(&api, args.output, id, t, wait, |p| {
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
        return self::wait(api, output, id, t, wait).await;
    }
    print::out(output, &t, |t| {
        println!(
            "tenant {id}: {what} (generation {}); it converges in the background",
            t.generation
        );
    })
}

/// Polls the tenant until the controller has acted on `submitted` and the tenant settled.
async fn wait(
    api: &Client,
    output: Output,
    id: &str,
    submitted: Tenant,
    wait: WaitArgs,
) -> anyhow::Result<ExitCode> {
    wait_until(api, output, id, submitted, wait, Phase::is_settled).await
}

/// Polls the tenant until the controller has acted on `submitted` and `settled` holds for its
/// phase.
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
    let deadline = Instant::now() + Duration::from_secs(wait.timeout);
    loop {
        let d = api.tenant(id).await?;
        let (t, s) = (&d.tenant, &d.tenant.status);
        bar.set_message(format!(
            "{id}: {} — {}/{} ready, Grafana {}",
            s.phase, s.ready_replicas, t.spec.replicas, t.spec.version
        ));
        if s.observed_generation >= submitted.generation && settled(s.phase) {
            bar.finish_and_clear();
            let rolled_back = t.spec.version != submitted.spec.version;
            if output == Output::Json {
                print::json(&d)?;
            }
            if s.phase == Phase::Failed || rolled_back {
                let on = if rolled_back {
                    format!(" on Grafana {} (rolled back)", t.spec.version)
                } else {
                    String::new()
                };
                let why = s.last_error.as_deref().unwrap_or("no error recorded");
                bail!("tenant {id} is {}{on}: {why}", s.phase);
            }
            if output == Output::Table {
                println!(
                    "tenant {id}: {} — {}/{} ready, Grafana {} at {}",
                    s.phase, s.ready_replicas, t.spec.replicas, t.spec.version, d.url
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        if Instant::now() > deadline {
            bar.finish_and_clear();
            bail!(
                "tenant {id} did not settle within {}s (phase {}); see `pug tenant show {id}`",
                wait.timeout,
                s.phase
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
