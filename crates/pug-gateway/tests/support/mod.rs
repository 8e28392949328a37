//! Harness of the gateway's integration tests: a real store (SQLite in a temp dir), the real
//! gateway on a loopback port, and grafana-standin processes as tenants' Grafana replicas.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pug_config::{Config, GatewayMode};
use pug_gateway::{Gateway, GatewaySettings};
use pug_store::{MasterKey, Store};
use pug_types::{Phase, TenantId, TenantSpec, TenantStatus};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub use pug_test_support::http::{no_redirects, set_cookie};
pub use pug_test_support::wait_for;

/// One grafana-standin replica, configured as pug's orchestrator configures Grafana.
pub struct Standin {
    pub addr: String,
    child: Child,
    _home: tempfile::TempDir,
}

impl Standin {
    pub async fn start(root_url: &str, sub_path: bool) -> Self {
        Self::start_trusting(root_url, sub_path, None).await
    }

    /// A replica that trusts the gateway's signature for `tenant` (`[auth.jwt]` with the
    /// gateway's public key `key_pem`, as pug configures a swarm tenant) instead of its address.
    pub async fn start_jwt(root_url: &str, tenant: &str, key_pem: &str) -> Self {
        Self::start_trusting(root_url, true, Some((tenant, key_pem))).await
    }

    async fn start_trusting(root_url: &str, sub_path: bool, jwt: Option<(&str, &str)>) -> Self {
        let home = tempfile::tempdir().unwrap();
        let mut command = Command::new(pug_test_support::standin::bin());
        command
            .args(["server", "--homepath"])
            .arg(home.path())
            .env("GF_SERVER_HTTP_ADDR", "127.0.0.1")
            // It binds a port of its own and reports it (no port chosen here to race for).
            .env("GF_SERVER_HTTP_PORT", "0")
            .env("GF_SERVER_ROOT_URL", root_url)
            .env("GF_SERVER_SERVE_FROM_SUB_PATH", sub_path.to_string());
        match jwt {
            None => command
                .env("GF_AUTH_PROXY_ENABLED", "true")
                .env("GF_AUTH_PROXY_HEADER_NAME", "X-WEBAUTH-USER")
                .env(
                    "GF_AUTH_PROXY_HEADERS",
                    "Email:X-WEBAUTH-EMAIL Role:X-WEBAUTH-ROLE Name:X-WEBAUTH-NAME",
                )
                .env("GF_AUTH_PROXY_WHITELIST", "127.0.0.1, ::1"),
            Some((tenant, key_pem)) => {
                let key_file = home.path().join("pug-gateway-key.pem");
                std::fs::write(&key_file, key_pem).unwrap();
                command
                    .env("GF_AUTH_PROXY_ENABLED", "false")
                    .env("GF_AUTH_JWT_ENABLED", "true")
                    .env("GF_AUTH_JWT_HEADER_NAME", "X-Pug-Identity")
                    .env("GF_AUTH_JWT_USERNAME_CLAIM", "sub")
                    .env("GF_AUTH_JWT_EMAIL_CLAIM", "email")
                    .env("GF_AUTH_JWT_KEY_FILE", &key_file)
                    .env(
                        "GF_AUTH_JWT_EXPECT_CLAIMS",
                        format!(r#"{{"iss":"pug","aud":"pug:{tenant}"}}"#),
                    )
                    .env("GF_AUTH_JWT_ROLE_ATTRIBUTE_PATH", "role")
                    .env("GF_AUTH_JWT_ROLE_ATTRIBUTE_STRICT", "true")
                    .env("GF_AUTH_JWT_AUTO_SIGN_UP", "true")
            }
        };
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("grafana-standin starts");
        let stderr = child.stderr.take().unwrap();
        let addr = pug_test_support::standin::listen_addr(stderr, Duration::from_secs(20))
            .expect("the stand-in reports its address")
            .to_string();
        let url = format!("http://{addr}/api/health");
        wait_for(
            Duration::from_secs(20),
            "the stand-in to be healthy",
            || {
                let url = url.clone();
                async move {
                    let r = pug_test_support::http::get(&url).await.ok()?;
                    (r.status() == 200).then_some(())
                }
            },
        )
        .await;
        Self {
            addr,
            child,
            _home: home,
        }
    }

    /// SIGKILLs the replica.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Standin {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP listener that counts connections and never answers: an instance that must never be
/// contacted.
pub struct Trap {
    pub addr: String,
    pub connections: Arc<AtomicUsize>,
}

impl Trap {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                drop(s);
            }
        });
        Self { addr, connections }
    }

    pub fn count(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// The gateway under test with its store.
pub struct Env {
    pub store: Store,
    pub gateway: Gateway,
    pub registry: Arc<prometheus_client::registry::Registry>,
    pub addr: SocketAddr,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Env {
    pub async fn start(mode: GatewayMode) -> Self {
        Self::start_with(mode, |_| {}).await
    }

    /// [`Env::start`] with the gateway's settings adjusted by `adjust` first.
    pub async fn start_with(mode: GatewayMode, adjust: impl FnOnce(&mut GatewaySettings)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            &format!("sqlite://{}", dir.path().join("pug.db").display()),
            MasterKey::generate(),
        )
        .await
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut config = Config {
            listen: addr,
            ..Config::default()
        };
        config.gateway.mode = mode;
        config.gateway.domain = "pug.test".into();
        let mut settings = GatewaySettings::from_config(&config);
        settings.refresh_interval = Duration::from_millis(200);
        settings.auth_cache_ttl = Duration::from_millis(100);
        adjust(&mut settings);
        let mut registry = pug_metrics::new_registry();
        let gateway = Gateway::new(store.clone(), settings, &mut registry)
            .await
            .unwrap();
        // Served as `pug serve` serves its port.
        let app = gateway.service(axum::Router::new());
        tokio::spawn(pug_gateway::server::serve(
            listener,
            app,
            2,
            tokio_util::sync::CancellationToken::new(),
        ));
        Self {
            store,
            gateway,
            registry: Arc::new(registry),
            addr,
            url: format!("http://{addr}"),
            _dir: dir,
        }
    }

    /// The root URL of a tenant's Grafana in path mode.
    pub fn root_url(&self, tenant: &str) -> String {
        format!("{}/t/{tenant}/", self.url)
    }

    /// Registers a tenant whose status is `phase` with `endpoints`.
    pub async fn tenant(&self, id: &str, phase: Phase, endpoints: &[&str]) {
        let tid = TenantId::parse(id).unwrap();
        if self.store.tenant(&tid).await.unwrap().is_none() {
            // From JSON, so that fields added to the spec later take their defaults.
            let spec: TenantSpec = serde_json::from_value(serde_json::json!({
                "display_name": id,
                "version": "11.3.0",
                "replicas": endpoints.len().max(1),
                "desired_state": "active",
            }))
            .unwrap();
            self.store.create_tenant(&tid, &spec, &[]).await.unwrap();
        }
        let mut status = TenantStatus::pending();
        status.phase = phase;
        status.ready_replicas = endpoints.len() as u32;
        status.endpoints = endpoints.iter().map(|s| s.to_string()).collect();
        self.store.set_status(&tid, &status).await.unwrap();
        self.gateway.refresh().await.unwrap();
    }

    pub async fn user(&self, name: &str, password: &str, grants: &[(&str, &str)]) {
        self.store
            .create_user(
                name,
                &format!("{name}@example.com"),
                name,
                &pug_auth::hash_password(password),
            )
            .await
            .unwrap();
        for (tenant, role) in grants {
            self.store
                .grant(name, &TenantId::parse(tenant).unwrap(), role)
                .await
                .unwrap();
        }
    }

    /// Logs in through the real form (GET for the CSRF cookie, then POST) with password
    /// `"password-" + name`; returns the `pug_session=…` cookie pair.
    pub async fn login(&self, name: &str) -> String {
        let (status, cookie) = self.try_login(name, &format!("password-{name}"), "/").await;
        assert_eq!(status, 303, "login of {name} failed");
        cookie.expect("a session cookie")
    }

    /// One login attempt: (status, session cookie if set).
    pub async fn try_login(&self, name: &str, password: &str, next: &str) -> (u16, Option<String>) {
        let resp =
            pug_test_support::http::sign_in(&format!("{}/login", self.url), name, password, next)
                .await;
        (resp.status().as_u16(), set_cookie(&resp, "pug_session"))
    }

    pub async fn metrics(&self) -> String {
        pug_metrics::encode(&self.registry)
    }
}

/// Sends a raw HTTP/1.1 request (the target exactly as given: no client-side normalisation)
/// and returns (status, body).
pub async fn raw_get(addr: SocketAddr, target: &str, extra_headers: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\n{extra_headers}Connection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Host mode: signs `user` in on pug's own origin to continue to `tenant`'s host, follows the
/// one-time code to that host, and returns the host's own session cookie (`name=value`).
pub async fn sign_in_on_host(
    env: &Env,
    tenant: &str,
    user: &str,
    password: &str,
    next: &str,
) -> String {
    sign_in_on_origin(env, tenant, user, password, next).await.1
}

/// [`sign_in_on_host`], also returning pug's origin session cookie: (origin, tenant host).
pub async fn sign_in_on_origin(
    env: &Env,
    tenant: &str,
    user: &str,
    password: &str,
    next: &str,
) -> (String, String) {
    let login = format!("{}/login?tenant={tenant}", env.url);
    let r = pug_test_support::http::sign_in(&login, user, password, next).await;
    assert_eq!(r.status(), 303, "{:?}", r.text().await);
    let origin = set_cookie(&r, "pug_session").expect("a session on pug's origin");
    let to = r.headers()["location"].to_str().unwrap().to_owned();
    let host_session = redeem(env, &to).await.expect("the code gives a session");
    (origin, host_session)
}

/// Follows a callback URL (`http://<tenant>.pug.test:<port>/_pug/callback?…`) to the gateway
/// with its Host; the tenant host's session cookie if the code was good.
pub async fn redeem(env: &Env, callback: &str) -> Option<String> {
    let url = reqwest::Url::parse(callback).unwrap();
    assert_eq!(url.path(), "/_pug/callback", "{callback}");
    let host = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap());
    let r = no_redirects()
        .get(format!(
            "{}{}?{}",
            env.url,
            url.path(),
            url.query().unwrap_or_default()
        ))
        .header("host", host)
        .send()
        .await
        .unwrap();
    match r.status().as_u16() {
        303 => Some(set_cookie(&r, "pug_session").expect("the callback sets the session")),
        401 => None,
        other => panic!("callback answered {other}"),
    }
}
