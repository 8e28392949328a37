//! The CLI side of pug: every command but `serve` is a call to the REST API, printed as a
//! table or as JSON.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use comfy_table::{presets::NOTHING, Table};
use pug_api::{CreatedToken, FleetStatus, TenantDetail, TokenInfo};
use pug_types::{Phase, Tenant};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{ClientArgs, Output, WaitArgs};

pub struct Client {
    http: reqwest::Client,
    url: String,
    token: Option<String>,
    output: Output,
}

impl Client {
    /// Finds pug's URL and a token: flags, `PUG_URL`/`PUG_TOKEN`, then the local data dir.
    pub fn new(args: &ClientArgs) -> anyhow::Result<Self> {
        let url = match &args.url {
            Some(u) => u.clone(),
            None => std::fs::read_to_string(args.data_dir.join("pug.url"))
                .map(|s| s.trim().to_owned())
                .unwrap_or_else(|_| "http://127.0.0.1:8080".into()),
        };
        let token = match &args.token {
            Some(t) => Some(t.clone()),
            None => std::fs::read_to_string(args.data_dir.join("local.token"))
                .ok()
                .map(|s| s.trim().to_owned()),
        };
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
            url: url.trim_end_matches('/').to_owned(),
            token,
            output: args.output,
        })
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<T> {
        let url = format!("{}/api/v1{path}", self.url);
        let mut request = self.http.request(method, &url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| {
            anyhow!(
                "cannot reach pug at {}: {}; is `pug serve` running? (set --url or PUG_URL)",
                self.url,
                pug_orchestrator::error_chain(&e)
            )
        })?;
        let status = response.status();
        let text = response.text().await.context("cannot read pug's answer")?;
        if !status.is_success() {
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or(text);
            if status == reqwest::StatusCode::UNAUTHORIZED && self.token.is_none() {
                bail!("{message} (no token found: pass --token or PUG_TOKEN, or run on the machine of `pug serve` with --data-dir)");
            }
            bail!("{message}");
        }
        serde_json::from_str(&text).with_context(|| format!("unexpected answer from {url}"))
    }

    fn print_json(&self, v: &impl serde::Serialize) -> anyhow::Result<()> {
        println!("{}", serde_json::to_string_pretty(v)?);
        Ok(())
    }

    pub async fn status(&self) -> anyhow::Result<ExitCode> {
        let s: FleetStatus = self.call(reqwest::Method::GET, "/status", None).await?;
        if self.output == Output::Json {
            self.print_json(&s)?;
            return Ok(ExitCode::SUCCESS);
        }
        println!(
            "pug {} — backend {}, store {}",
            s.version, s.backend, s.store
        );
        println!(
            "tenants: {}   reconcile queue: {}",
            s.tenants_total, s.queue_depth
        );
        let mut table = table(&["PHASE", "TENANTS"]);
        for (phase, n) in &s.tenants_by_phase {
            if *n > 0 {
                table.add_row(vec![phase.clone(), n.to_string()]);
            }
        }
        println!("{table}");
        Ok(ExitCode::SUCCESS)
    }

    pub async fn list(&self) -> anyhow::Result<ExitCode> {
        let tenants: Vec<TenantDetail> = self.call(reqwest::Method::GET, "/tenants", None).await?;
        if self.output == Output::Json {
            self.print_json(&tenants)?;
            return Ok(ExitCode::SUCCESS);
        }
        let mut t = table(&["ID", "PHASE", "VERSION", "READY", "URL"]);
        for detail in &tenants {
            let tenant = &detail.tenant;
            t.add_row(vec![
                tenant.id.to_string(),
                tenant.status.phase.to_string(),
                tenant.spec.version.to_string(),
                format!("{}/{}", tenant.status.ready_replicas, tenant.spec.replicas),
                detail.url.clone(),
            ]);
        }
        println!("{t}");
        Ok(ExitCode::SUCCESS)
    }

    pub async fn show(&self, id: &str) -> anyhow::Result<ExitCode> {
        let d: TenantDetail = self
            .call(reqwest::Method::GET, &format!("/tenants/{id}"), None)
            .await?;
        if self.output == Output::Json {
            self.print_json(&d)?;
            return Ok(ExitCode::SUCCESS);
        }
        let t = &d.tenant;
        let mut table = table(&["", ""]);
        table.add_row(vec!["id".into(), t.id.to_string()]);
        table.add_row(vec!["name".into(), t.spec.display_name.clone()]);
        table.add_row(vec!["url".into(), d.url.clone()]);
        table.add_row(vec!["phase".into(), t.status.phase.to_string()]);
        table.add_row(vec![
            "version".into(),
            format!(
                "{} (running: {})",
                t.spec.version,
                t.status.running_version.as_deref().unwrap_or("-")
            ),
        ]);
        table.add_row(vec![
            "replicas".into(),
            format!("{} ready of {}", t.status.ready_replicas, t.spec.replicas),
        ]);
        table.add_row(vec![
            "desired".into(),
            format!("{:?}", t.spec.desired_state).to_lowercase(),
        ]);
        table.add_row(vec![
            "generation".into(),
            format!(
                "{} (observed {})",
                t.generation, t.status.observed_generation
            ),
        ]);
        for (section, key, value) in t.spec.overrides.iter() {
            table.add_row(vec![
                "override".into(),
                format!("{section}.{key} = {value}"),
            ]);
        }
        if let Some(e) = &t.status.last_error {
            table.add_row(vec!["last error".into(), e.clone()]);
        }
        println!("{table}");
        if !d.events.is_empty() {
            println!("\nEVENTS");
            let mut ev = table_plain();
            for e in &d.events {
                ev.add_row(vec![
                    format_ms(e.at_ms),
                    e.reason.clone(),
                    e.message.clone(),
                ]);
            }
            println!("{ev}");
        }
        Ok(ExitCode::SUCCESS)
    }

    pub async fn create(&self, id: &str, body: Value, wait: WaitArgs) -> anyhow::Result<ExitCode> {
        let t: Tenant = self
            .call(reqwest::Method::POST, "/tenants", Some(&body))
            .await?;
        self.after_change(id, t, wait, "created").await
    }

    pub async fn update(
        &self,
        id: &str,
        body: &pug_api::UpdateTenant,
        wait: WaitArgs,
    ) -> anyhow::Result<ExitCode> {
        let body = serde_json::to_value(body)?;
        let t: Tenant = self
            .call(
                reqwest::Method::PATCH,
                &format!("/tenants/{id}"),
                Some(&body),
            )
            .await?;
        self.after_change(id, t, wait, "updated").await
    }

    pub async fn upgrade(
        &self,
        id: &str,
        version: &str,
        wait: WaitArgs,
    ) -> anyhow::Result<ExitCode> {
        let body = serde_json::json!({ "version": version });
        let t: Tenant = self
            .call(
                reqwest::Method::POST,
                &format!("/tenants/{id}/upgrade"),
                Some(&body),
            )
            .await?;
        self.after_change(id, t, wait, "upgrade started").await
    }

    pub async fn action(&self, id: &str, action: &str, wait: WaitArgs) -> anyhow::Result<ExitCode> {
        let t: Tenant = self
            .call(
                reqwest::Method::POST,
                &format!("/tenants/{id}/{action}"),
                None,
            )
            .await?;
        self.after_change(id, t, wait, &format!("{action} requested"))
            .await
    }

    pub async fn delete(&self, id: &str, purge: bool) -> anyhow::Result<ExitCode> {
        let path = format!("/tenants/{id}{}", if purge { "?purge=true" } else { "" });
        let t: Tenant = self.call(reqwest::Method::DELETE, &path, None).await?;
        if self.output == Output::Json {
            self.print_json(&t)?;
        } else {
            println!("tenant {id}: deletion started; its data will be archived");
        }
        Ok(ExitCode::SUCCESS)
    }

    pub async fn create_token(
        &self,
        name: &str,
        role: &str,
        expires: Option<&str>,
    ) -> anyhow::Result<ExitCode> {
        if let Some(text) = expires {
            // The same check the API makes, before a round trip: one clear line on bad input.
            pug_api::parse_expires_in(text).map_err(|e| anyhow!("--expires: {e}"))?;
        }
        let body = serde_json::json!({ "name": name, "role": role, "expires_in": expires });
        let t: CreatedToken = self
            .call(reqwest::Method::POST, "/tokens", Some(&body))
            .await?;
        if self.output == Output::Json {
            self.print_json(&t)?;
        } else {
            println!("{}", t.token);
            eprintln!(
                "token {:?} ({}, id {}) created, {}; it is shown only this once",
                t.name,
                t.role,
                t.id,
                match t.expires_at_ms {
                    Some(ms) => format!("expires {}", format_time(ms)),
                    None => "works until revoked".to_owned(),
                }
            );
        }
        Ok(ExitCode::SUCCESS)
    }

    pub async fn list_tokens(&self) -> anyhow::Result<ExitCode> {
        let tokens: Vec<TokenInfo> = self.call(reqwest::Method::GET, "/tokens", None).await?;
        if self.output == Output::Json {
            self.print_json(&tokens)?;
            return Ok(ExitCode::SUCCESS);
        }
        let mut t = table(&["ID", "NAME", "ROLE", "CREATED", "EXPIRES", "LAST USED"]);
        for token in &tokens {
            t.add_row(vec![
                token.id.clone(),
                token.name.clone(),
                token.role.clone(),
                format_time(token.created_at_ms),
                match token.expires_at_ms {
                    Some(ms) if token.expired => format!("{} (expired)", format_time(ms)),
                    Some(ms) => format_time(ms),
                    None => "never".to_owned(),
                },
                token
                    .last_used_at_ms
                    .map(format_time)
                    .unwrap_or_else(|| "-".to_owned()),
            ]);
        }
        println!("{t}");
        Ok(ExitCode::SUCCESS)
    }

    pub async fn revoke_token(&self, id: &str) -> anyhow::Result<ExitCode> {
        let mut url = reqwest::Url::parse("http://pug/tokens").expect("static URL");
        url.path_segments_mut()
            .expect("an http URL has path segments")
            .push(id);
        let t: TokenInfo = self.call(reqwest::Method::DELETE, url.path(), None).await?;
        if self.output == Output::Json {
            self.print_json(&t)?;
        } else {
            println!("token {:?} ({}, id {}) revoked", t.name, t.role, t.id);
        }
        Ok(ExitCode::SUCCESS)
    }

    async fn after_change(
        &self,
        id: &str,
        t: Tenant,
        wait: WaitArgs,
        what: &str,
    ) -> anyhow::Result<ExitCode> {
        if !wait.wait {
            if self.output == Output::Json {
                self.print_json(&t)?;
            } else {
                println!(
                    "tenant {id}: {what} (generation {}); it converges in the background",
                    t.generation
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        self.wait(id, t, wait).await
    }

    /// Polls the tenant until the controller has acted on `submitted` and the tenant settled.
    async fn wait(&self, id: &str, submitted: Tenant, wait: WaitArgs) -> anyhow::Result<ExitCode> {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
                .expect("static template"),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        let deadline = Instant::now() + Duration::from_secs(wait.timeout);
        loop {
            let d: TenantDetail = self
                .call(reqwest::Method::GET, &format!("/tenants/{id}"), None)
                .await?;
            let t = &d.tenant;
            bar.set_message(format!(
                "{id}: {} — {}/{} ready, Grafana {}",
                t.status.phase, t.status.ready_replicas, t.spec.replicas, t.spec.version
            ));
            let acted = t.status.observed_generation >= submitted.generation;
            if acted && t.status.phase.is_settled() {
                bar.finish_and_clear();
                let rolled_back = t.spec.version != submitted.spec.version;
                if self.output == Output::Json {
                    self.print_json(&d)?;
                }
                if t.status.phase == Phase::Failed || rolled_back {
                    bail!(
                        "tenant {id} is {}{}: {}",
                        t.status.phase,
                        if rolled_back {
                            format!(" on Grafana {} (rolled back)", t.spec.version)
                        } else {
                            String::new()
                        },
                        t.status
                            .last_error
                            .as_deref()
                            .unwrap_or("no error recorded")
                    );
                }
                if self.output == Output::Table {
                    println!(
                        "tenant {id}: {} — {}/{} ready, Grafana {} at {}",
                        t.status.phase,
                        t.status.ready_replicas,
                        t.spec.replicas,
                        t.spec.version,
                        d.url
                    );
                }
                return Ok(ExitCode::SUCCESS);
            }
            if Instant::now() > deadline {
                bar.finish_and_clear();
                bail!(
                    "tenant {id} did not settle within {}s (phase {}); see `pug tenant show {id}`",
                    wait.timeout,
                    t.status.phase
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

fn table(header: &[&str]) -> Table {
    let mut t = table_plain();
    if header.iter().any(|h| !h.is_empty()) {
        t.set_header(header.to_vec());
    }
    t
}

fn table_plain() -> Table {
    let mut t = Table::new();
    t.load_preset(NOTHING);
    t
}

fn format_ms(ms: i64) -> String {
    let secs = ms / 1000;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    format!("{h:02}:{m:02}:{s:02}Z")
}

/// A time as RFC 3339 to the second, UTC.
fn format_time(ms: i64) -> String {
    let at = std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(at).to_string()
}
