//! `pug serve`: its flags, then [`pug_server::Server`] started, its banner printed, and served
//! until Ctrl-C or SIGTERM.
//!
//! Must not: wire roles itself (`pug_server` does).

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Args;
use pug_config::Config;
use pug_server::{Roles, Server};

/// Flags of `pug serve`; each overrides the configuration file and `PUG_*` variables.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// A TOML configuration file (default: ./pug.toml if it exists).
    #[arg(long, env = "PUG_CONFIG")]
    config: Option<PathBuf>,
    /// Address of the API, gateway and /metrics (default 127.0.0.1:8080).
    #[arg(long)]
    listen: Option<String>,
    /// Where pug keeps its state (default ./pug-data).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// process, docker or swarm (default process).
    #[arg(long)]
    backend: Option<String>,
    /// A role to run: api, gateway, controller or renderer; repeatable or comma-separated
    /// (default: all of them).
    #[arg(
        long = "role",
        env = "PUG_ROLES",
        value_delimiter = ',',
        value_name = "ROLE"
    )]
    roles: Vec<String>,
}

impl ServeArgs {
    /// The flags given, as configuration keys.
    fn flags(&self) -> BTreeMap<String, serde_json::Value> {
        let data_dir = self.data_dir.as_ref().map(|d| d.display().to_string());
        [
            ("listen", self.listen.clone()),
            ("data_dir", data_dir),
            ("backend", self.backend.clone()),
        ]
        .into_iter()
        .filter_map(|(key, value)| Some((key.to_owned(), value?.into())))
        .collect()
    }
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = Config::load(args.config.as_deref(), args.flags())?;
    let roles = Roles::parse(&args.roles)?;
    pug_server::init_tracing();
    let server = Server::start(config, roles).await?;
    print!("{}", server.banner());
    server.run(pug_server::signal()).await?;
    Ok(())
}
