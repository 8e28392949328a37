//! `pug`: a Grafana for every tenant.
//!
//! This binary is thin on purpose: it parses flags, loads the configuration, and either runs
//! pug's roles (`pug serve`) from the library crates, or acts as a client of the REST API (every
//! other command). Errors end here as one line on stderr and a non-zero exit code.

#![forbid(unsafe_code)]

mod client;
mod rendering;
mod serve;
mod swarm_cmd;
mod users_cmd;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// mimalloc instead of glibc's malloc: the gateway allocates a little for every proxied
/// request from two or more threads, and mimalloc's per-thread heaps take about a tenth off
/// its CPU per request in `bench/gateway` (glibc's arenas showed up as `_int_malloc`,
/// `_int_free` and `malloc_consolidate` in the profile).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A Grafana for every tenant: provisions, upgrades, routes and monitors per-tenant Grafana.
#[derive(Parser)]
#[command(name = "pug", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs pug: API, gateway and /metrics on one port, and the controller.
    Serve(serve::ServeArgs),
    /// Creates, lists, shows and changes tenants.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Shows the fleet: tenants by phase, queue depth, backend.
    Status(ClientArgs),
    /// Shows the Docker Swarm pug runs tenants on (backend = "swarm").
    #[command(subcommand)]
    Swarm(swarm_cmd::SwarmCommand),
    /// Manages API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Runs the renderer alone: Grafana's remote rendering API on a warm Chromium (also reads
    /// the environment variables of Grafana's renderer image: HTTP_PORT, AUTH_TOKEN, …).
    Render(pug_renderer::RenderArgs),
    /// Manages the people who sign in at the gateway and their tenants.
    #[command(subcommand)]
    User(users_cmd::UserCommand),
    /// Manages keys for embed tokens (a customer webapp signs people in).
    #[command(subcommand)]
    EmbedKey(users_cmd::EmbedKeyCommand),
}

/// How the CLI reaches pug.
#[derive(Args, Clone, Debug)]
pub struct ClientArgs {
    /// pug's URL. Default: the address the local `pug serve` wrote to <data-dir>/pug.url.
    #[arg(long, env = "PUG_URL")]
    url: Option<String>,
    /// An API token. Default: the local CLI token in <data-dir>/local.token.
    #[arg(long, env = "PUG_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The data directory of a `pug serve` on this machine.
    #[arg(long, env = "PUG_DATA_DIR", default_value = "./pug-data")]
    data_dir: PathBuf,
    /// Output format.
    #[arg(long, short, value_enum, default_value = "table")]
    output: Output,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum TenantCommand {
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

#[derive(Subcommand)]
enum TokenCommand {
    /// Makes a new API token and prints it once.
    Create {
        #[arg(long, default_value = "cli")]
        name: String,
        /// admin (everything) or read (GET only, e.g. for Prometheus and /metrics).
        #[arg(long, default_value = "admin")]
        role: String,
        /// How long it works, e.g. 90s, 30m, 2h, 30d. Default: until revoked.
        #[arg(long)]
        expires: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Lists API tokens: id, name, role, created, expires, last used (never a secret).
    List(ClientArgs),
    /// Revokes an API token by id (from `pug token list`) or name; it stops working at once.
    Revoke {
        /// The token's id, or its name when no other token has it.
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, without repeating a cause already in the message.
fn one_line(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    out.replace('\n', " ")
}

async fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    use client::Client;
    use std::process::ExitCode;
    match cli.command {
        Command::Serve(args) => serve::serve(args).await.map(|()| ExitCode::SUCCESS),
        Command::Status(c) => Client::new(&c)?.status().await,
        Command::Render(args) => {
            serve::init_tracing();
            pug_renderer::run(args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Swarm(cmd) => swarm_cmd::swarm(cmd).await,
        Command::User(cmd) => users_cmd::user(cmd).await,
        Command::EmbedKey(cmd) => users_cmd::embed_key(cmd).await,
        Command::Token(TokenCommand::Create {
            name,
            role,
            expires,
            client,
        }) => {
            Client::new(&client)?
                .create_token(&name, &role, expires.as_deref())
                .await
        }
        Command::Token(TokenCommand::List(client)) => Client::new(&client)?.list_tokens().await,
        Command::Token(TokenCommand::Revoke { id, client }) => {
            Client::new(&client)?.revoke_token(&id).await
        }
        Command::Tenant(cmd) => match cmd {
            TenantCommand::Create {
                id,
                version,
                replicas,
                display_name,
                set,
                wait,
                client,
            } => {
                let body = serde_json::json!({
                    "id": id, "version": version, "replicas": replicas,
                    "display_name": display_name, "set": set,
                });
                Client::new(&client)?.create(&id, body, wait).await
            }
            TenantCommand::List(c) => Client::new(&c)?.list().await,
            TenantCommand::Show { id, client } => Client::new(&client)?.show(&id).await,
            TenantCommand::Update {
                id,
                set,
                unset,
                replicas,
                display_name,
                wait,
                client,
            } => {
                let body = pug_api::UpdateTenant {
                    display_name,
                    replicas,
                    set,
                    unset,
                    ..Default::default()
                };
                Client::new(&client)?.update(&id, &body, wait).await
            }
            TenantCommand::Upgrade {
                id,
                version,
                wait,
                client,
            } => Client::new(&client)?.upgrade(&id, &version, wait).await,
            TenantCommand::Suspend { id, wait, client } => {
                Client::new(&client)?.action(&id, "suspend", wait).await
            }
            TenantCommand::Resume { id, wait, client } => {
                Client::new(&client)?.action(&id, "resume", wait).await
            }
            TenantCommand::Delete { id, purge, client } => {
                Client::new(&client)?.delete(&id, purge).await
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
