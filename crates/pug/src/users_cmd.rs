//! `pug user …` and `pug embed-key …`: the people the gateway lets in and the keys customer
//! webapps sign embed tokens with. Calls to the REST API, like every command but `serve`.

use std::io::Read;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::Subcommand;
use comfy_table::{presets::NOTHING, Table};
use pug_api::{EmbedKey, UserInfo};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::{ClientArgs, Output};

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
            let body = json!({"name": name, "email": email, "password": password, "display_name": display_name});
            let api = Api::new(&client)?;
            let u: UserInfo = api.call("POST", "/users", Some(body)).await?;
            if client.output == Output::Json {
                return print_json(&u);
            }
            println!(
                "user {} created; give access with: pug user grant {} <tenant> --role Viewer",
                u.name, u.name
            );
        }
        UserCommand::Grant {
            name,
            tenant,
            role,
            client,
        } => {
            let api = Api::new(&client)?;
            let u: UserInfo = api
                .call(
                    "PUT",
                    &format!("/users/{name}/tenants/{tenant}"),
                    Some(json!({"role": role})),
                )
                .await?;
            if client.output == Output::Json {
                return print_json(&u);
            }
            println!(
                "{} is {} in {tenant}",
                u.name,
                u.tenants.get(&tenant).map(String::as_str).unwrap_or("?")
            );
        }
        UserCommand::Revoke {
            name,
            tenant,
            client,
        } => {
            Api::new(&client)?
                .call::<Value>("DELETE", &format!("/users/{name}/tenants/{tenant}"), None)
                .await?;
            println!("{name} no longer has access to {tenant}");
        }
        UserCommand::List(client) => {
            let users: Vec<UserInfo> = Api::new(&client)?.call("GET", "/users", None).await?;
            if client.output == Output::Json {
                return print_json(&users);
            }
            let mut t = table(&["NAME", "EMAIL", "TENANTS"]);
            for u in &users {
                let tenants: Vec<String> = u
                    .tenants
                    .iter()
                    .map(|(t, r)| format!("{t} ({r})"))
                    .collect();
                t.add_row(vec![u.name.clone(), u.email.clone(), tenants.join(", ")]);
            }
            println!("{t}");
        }
        UserCommand::Delete { name, client } => {
            Api::new(&client)?
                .call::<Value>("DELETE", &format!("/users/{name}"), None)
                .await?;
            println!("user {name} deleted");
        }
    }
    Ok(ExitCode::SUCCESS)
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
            let k: EmbedKey = Api::new(&client)?
                .call(
                    "POST",
                    "/embed-keys",
                    Some(
                        json!({"name": name, "tenant": tenant, "algorithm": algorithm,
                                "public_key": public_key}),
                    ),
                )
                .await?;
            if client.output == Output::Json {
                return print_json(&k);
            }
            println!("embed key {} ({}, {})", k.id, k.name, k.algorithm);
            println!(
                "  may sign for: {}",
                k.tenant.as_deref().unwrap_or("any tenant")
            );
            if let Some(key) = &k.key {
                println!("  key (shown once; keep it in the webapp's secrets):");
                println!("    {key}");
            }
            if let Some(private) = &k.private_key {
                println!("  private key (shown once, pug does not keep it; keep it in the webapp's secrets):");
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
            println!(
                "  tenant, sub, email, role (Viewer|Editor|Admin), exp (at most 10 minutes ahead)"
            );
            println!("and send the person to <tenant URL>?pug_token=<jwt>.");
        }
        EmbedKeyCommand::List(client) => {
            let keys: Vec<EmbedKey> = Api::new(&client)?.call("GET", "/embed-keys", None).await?;
            if client.output == Output::Json {
                return print_json(&keys);
            }
            let mut t = table(&["ID", "NAME", "ALGORITHM", "TENANT"]);
            for k in &keys {
                t.add_row(vec![
                    k.id.clone(),
                    k.name.clone(),
                    k.algorithm.clone(),
                    k.tenant.clone().unwrap_or_else(|| "(any)".into()),
                ]);
            }
            println!("{t}");
        }
        EmbedKeyCommand::Delete { id, client } => {
            Api::new(&client)?
                .call::<Value>("DELETE", &format!("/embed-keys/{id}"), None)
                .await?;
            println!("embed key {id} deleted");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_json(v: &impl serde::Serialize) -> anyhow::Result<ExitCode> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(ExitCode::SUCCESS)
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(NOTHING);
    t.set_header(header.to_vec());
    t
}

/// The REST API, found like every other command finds it.
struct Api {
    http: reqwest::Client,
    url: String,
    token: Option<String>,
}

impl Api {
    fn new(args: &ClientArgs) -> anyhow::Result<Self> {
        let url = match &args.url {
            Some(u) => u.clone(),
            None => std::fs::read_to_string(args.data_dir.join("pug.url"))
                .map(|s| s.trim().to_owned())
                .unwrap_or_else(|_| "http://127.0.0.1:8080".into()),
        };
        let token = args.token.clone().or_else(|| {
            std::fs::read_to_string(args.data_dir.join("local.token"))
                .ok()
                .map(|s| s.trim().to_owned())
        });
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
            url: url.trim_end_matches('/').to_owned(),
            token,
        })
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<T> {
        let url = format!("{}/api/v1{path}", self.url);
        let mut req = self.http.request(method.parse()?, &url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = &body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| {
            anyhow!(
                "cannot reach pug at {}: {e}; is `pug serve` running? (set --url or PUG_URL)",
                self.url
            )
        })?;
        let status = resp.status();
        let text = resp.text().await.context("cannot read pug's answer")?;
        if !status.is_success() {
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_owned))
                .unwrap_or(text);
            bail!("{message}");
        }
        if text.is_empty() {
            return serde_json::from_value(Value::Null).context("unexpected empty answer");
        }
        serde_json::from_str(&text).with_context(|| format!("unexpected answer from {url}"))
    }
}
