//! `pug`: a Grafana for every tenant.
//!
//! This binary is thin on purpose: it parses flags, loads the configuration, and either runs
//! pug's roles (`pug serve`) from the library crates, or acts as a client of the REST API (every
//! other command). Errors end here as one line on stderr and a non-zero exit code.
//!
//! # Layout
//! - `serve`: `pug serve`'s flags, over `pug_server` (which wires the library crates).
//! - [`ClientArgs`]: which pug the commands call, through `pug_client`, the one typed client of
//!   the REST API.
//! - `tenant`, `token`, `user`, `swarm`: the commands, each parsing its flags and printing.
//! - `print`: views (`pug_client::view`) as borderless tables, and JSON.
//!
//! Must not: hold logic a library could own, or reach the API other than through `pug_client`.

#![forbid(unsafe_code)]
// Doc comments here are clap's --help text, written for a terminal: `<data-dir>` is a
// placeholder there, not an HTML tag.
#![allow(rustdoc::invalid_html_tags)]

mod print;
mod serve;
mod swarm;
mod tenant;
mod token;
mod user;

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
    Tenant(tenant::TenantCommand),
    /// Shows the fleet: tenants by phase, queue depth, backend.
    Status(ClientArgs),
    /// Shows the Docker Swarm pug runs tenants on (backend = "swarm").
    #[command(subcommand)]
    Swarm(swarm::SwarmCommand),
    /// Manages API tokens.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Runs the renderer alone: Grafana's remote rendering API on a warm Chromium (also reads
    /// the environment variables of Grafana's renderer image: HTTP_PORT, AUTH_TOKEN, …).
    Render(pug_renderer::RenderArgs),
    /// Manages the people who sign in at the gateway and their tenants.
    #[command(subcommand)]
    User(user::UserCommand),
    /// Manages keys for embed tokens (a customer webapp signs people in).
    #[command(subcommand)]
    EmbedKey(user::EmbedKeyCommand),
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

impl ClientArgs {
    /// The client of the pug these flags name (see [`pug_client::Target`]).
    fn client(&self) -> Result<pug_client::Client, pug_client::ClientError> {
        pug_client::Client::new(&pug_client::Target {
            url: self.url.clone(),
            token: self.token.clone(),
            data_dir: self.data_dir.clone(),
        })
    }
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
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
    match cli.command {
        Command::Serve(args) => serve::serve(args)
            .await
            .map(|()| std::process::ExitCode::SUCCESS),
        Command::Render(args) => {
            pug_server::init_tracing();
            pug_renderer::run(args).await?;
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Status(client) => tenant::status(&client).await,
        Command::Tenant(cmd) => tenant::run(cmd).await,
        Command::Swarm(cmd) => swarm::run(cmd).await,
        Command::Token(cmd) => token::run(cmd).await,
        Command::User(cmd) => user::user(cmd).await,
        Command::EmbedKey(cmd) => user::embed_key(cmd).await,
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
