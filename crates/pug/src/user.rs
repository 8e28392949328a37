//! `pug user …` and `pug embed-key …`: the people the gateway lets in and the keys customer
//! webapps sign embed tokens with.
//!
//! Must not: call the API other than through [`pug_client::Client`].

use std::io::Read;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Subcommand;
use pug_api::{EmbedKey, Grant, NewEmbedKey, NewUser};
use pug_client::view;

use crate::print;
use crate::ClientArgs;

#[derive(Subcommand)]
pub enum UserCommand {
    /// Creates a user who can sign in at the gateway (the password is read from stdin).
    Create {
        name: String,
        #[arg(long)]
        email: String,
        /// Shown in Grafana (default: the name).
        #[arg(long)]
        display_name: Option<String>,
        /// Read the password from stdin (one line); required, so it never shows in `ps`.
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Gives a user a role in a tenant's Grafana (or changes it).
    Grant {
        name: String,
        tenant: String,
        /// Viewer, Editor or Admin.
        #[arg(long, default_value = "Viewer")]
        role: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Removes a user's access to a tenant.
    Revoke {
        name: String,
        tenant: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Lists users and their tenants.
    List(ClientArgs),
    /// Deletes a user, their memberships and sessions.
    Delete {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand)]
pub enum EmbedKeyCommand {
    /// Makes a key for signing embed tokens (JWT): HS256 prints the shared key once; EdDSA
    /// registers your Ed25519 public key (--public-key) or makes a pair and prints the private
    /// key once.
    Create {
        /// A name to recognise it by, e.g. the webapp's.
        #[arg(long, default_value = "webapp")]
        name: String,
        /// Restrict the key to one tenant (default: any tenant).
        #[arg(long)]
        tenant: Option<String>,
        /// HS256 or EdDSA.
        #[arg(long, default_value = "HS256")]
        algorithm: String,
        /// EdDSA: a file with the webapp's Ed25519 public key in PEM (`openssl pkey -pubout`).
        #[arg(long)]
        public_key: Option<std::path::PathBuf>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Lists embed keys (never the keys themselves).
    List(ClientArgs),
    /// Deletes an embed key; tokens signed with it stop working.
    Delete {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

pub async fn user(cmd: UserCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        UserCommand::Create {
            name,
            email,
            display_name,
            password_stdin,
            client,
        } => {
            if !password_stdin {
                bail!("give the password on stdin with --password-stdin (e.g. `printf '%s' \"$PASSWORD\" | pug user create {name} --email {email} --password-stdin`)");
            }
            let mut password = String::new();
            std::io::stdin()
                .read_to_string(&mut password)
                .context("cannot read the password from stdin")?;
            let password = password.trim_end_matches(['\r', '\n']).to_owned();
            let body = NewUser {
                name,
                email,
                password,
                display_name,
            };
            let u = client.client()?.create_user(&body).await?;
            print::out(client.output, &u, |u| {
                println!(
                    "user {} created; give access with: pug user grant {} <tenant> --role Viewer",
                    u.name, u.name
                );
            })
        }
        UserCommand::Grant {
            name,
            tenant,
            role,
            client,
        } => {
            let u = client
                .client()?
                .grant(&name, &tenant, &Grant { role })
                .await?;
            print::out(client.output, &u, |u| {
                let role = u.tenants.get(&tenant).map_or("?", String::as_str);
                println!("{} is {role} in {tenant}", u.name);
            })
        }
        UserCommand::Revoke {
            name,
            tenant,
            client,
        } => {
            client.client()?.revoke_access(&name, &tenant).await?;
            println!("{name} no longer has access to {tenant}");
            Ok(ExitCode::SUCCESS)
        }
        UserCommand::List(client) => {
            let users = client.client()?.users().await?;
            print::out(client.output, &users, |u| print::view(&view::users(u)))
        }
        UserCommand::Delete { name, client } => {
            client.client()?.delete_user(&name).await?;
            println!("user {name} deleted");
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub async fn embed_key(cmd: EmbedKeyCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        EmbedKeyCommand::Create {
            name,
            tenant,
            algorithm,
            public_key,
            client,
        } => {
            let public_key = match &public_key {
                Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
                    anyhow::anyhow!("cannot read the public key {}: {e}", path.display())
                })?),
                None => None,
            };
            let body = NewEmbedKey {
                name,
                tenant,
                algorithm: Some(algorithm),
                public_key,
            };
            let k = client.client()?.create_embed_key(&body).await?;
            print::out(client.output, &k, print_new_key)
        }
        EmbedKeyCommand::List(client) => {
            let keys = client.client()?.embed_keys().await?;
            print::out(client.output, &keys, |k| print::view(&view::embed_keys(k)))
        }
        EmbedKeyCommand::Delete { id, client } => {
            client.client()?.delete_embed_key(&id).await?;
            println!("embed key {id} deleted");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A new embed key, with its key shown once and how to sign tokens with it.
fn print_new_key(k: &EmbedKey) {
    println!("embed key {} ({}, {})", k.id, k.name, k.algorithm);
    let signs_for = k.tenant.as_deref().unwrap_or("any tenant");
    println!("  may sign for: {signs_for}");
    if let Some(key) = &k.key {
        println!("  key (shown once; keep it in the webapp's secrets):");
        println!("    {key}");
    }
    if let Some(private) = &k.private_key {
        println!(
            "  private key (shown once, pug does not keep it; keep it in the webapp's secrets):"
        );
        print!("{private}");
    } else if let Some(public) = &k.public_key {
        println!("  verifies with the public key:");
        print!("{public}");
    }
    println!();
    println!(
        "Sign a JWT with header {{\"alg\":\"{}\",\"kid\":\"{}\"}} and claims",
        k.algorithm, k.id
    );
    println!("  tenant, sub, email, role (Viewer|Editor|Admin), exp (at most 10 minutes ahead)");
    println!("and send the person to <tenant URL>?pug_token=<jwt>.");
}
