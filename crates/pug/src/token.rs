//! `pug token …`: API tokens, made (printed once), listed and revoked.
//!
//! Must not: call the API other than through [`pug_client::Client`].

use std::process::ExitCode;

use anyhow::anyhow;
use clap::Subcommand;
use pug_api::NewToken;
use pug_client::view;

use crate::print;
use crate::ClientArgs;

#[derive(Subcommand)]
pub enum TokenCommand {
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

pub async fn run(cmd: TokenCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TokenCommand::Create {
            name,
            role,
            expires,
            client,
        } => {
            if let Some(text) = &expires {
                // The same check the API makes, before a round trip: one clear line on bad input.
                pug_api::parse_expires_in(text).map_err(|e| anyhow!("--expires: {e}"))?;
            }
            let body = NewToken {
                name,
                role,
                expires_in: expires,
            };
            let t = client.client()?.create_token(&body).await?;
            print::out(client.output, &t, |t| {
                println!("{}", t.token);
                let expiry = match t.expires_at_ms {
                    Some(ms) => format!("expires {}", view::time(ms)),
                    None => "works until revoked".to_owned(),
                };
                eprintln!(
                    "token {:?} ({}, id {}) created, {expiry}; it is shown only this once",
                    t.name, t.role, t.id
                );
            })
        }
        TokenCommand::List(client) => {
            let tokens = client.client()?.tokens().await?;
            print::out(client.output, &tokens, |t| print::view(&view::tokens(t)))
        }
        TokenCommand::Revoke { id, client } => {
            let t = client.client()?.revoke_token(&id).await?;
            print::out(client.output, &t, |t| {
                println!("token {:?} ({}, id {}) revoked", t.name, t.role, t.id);
            })
        }
    }
}
