//! What `pug serve` prints once it listens: where the API, tenants, metrics, the renderer and
//! the sign-in page are, where its data is, whether tenants are isolated, and (on a new store,
//! once) the first admin token.
//!
//! Must not: print (the binary prints the banner's [`std::fmt::Display`]).

use std::fmt;
use std::path::PathBuf;

use pug_orchestrator::process_setup::IsolationState;
use pug_types::{ExposeSecret, SecretString};

/// The facts the start banner shows.
pub struct Banner {
    pub api_url: String,
    pub public_url: String,
    /// A tenant's URL, with `<tenant>` for its id.
    pub tenant_url: String,
    pub renderer_url: Option<String>,
    pub data_dir: PathBuf,
    pub backend: String,
    pub store: String,
    /// The process backend's isolation (other backends: `None`).
    pub isolation: Option<IsolationState>,
    /// Made because the store had no token; shown this once.
    pub first_admin_token: Option<SecretString>,
    pub roles: Vec<String>,
}

impl fmt::Display for Banner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (api, public, data) = (&self.api_url, &self.public_url, self.data_dir.display());
        writeln!(f, "pug is running")?;
        writeln!(f, "  roles      {}", self.roles.join(", "))?;
        writeln!(
            f,
            "  API        {api}/api/v1   (OpenAPI: {api}/api/v1/openapi.json)"
        )?;
        writeln!(f, "  tenants    {public}   (e.g. {})", self.tenant_url)?;
        writeln!(
            f,
            "  metrics    {api}/metrics (with an API token: Authorization: Bearer …)"
        )?;
        match &self.renderer_url {
            Some(url) => writeln!(
                f,
                "  renderer   {url}   (every tenant's Grafana renders panels here)"
            )?,
            None => writeln!(f, "  renderer   off   (renderer.mode; needs Chromium)")?,
        }
        // Both modes sign in on pug's own origin (host mode: never on a tenant's).
        writeln!(f, "  sign in    {public}/login   (pug user create / pug user grant; embed tokens: pug embed-key create)")?;
        writeln!(
            f,
            "  data       {data}   (backend: {}, store: {})",
            self.backend, self.store
        )?;
        match &self.isolation {
            Some(IsolationState::Isolated { chain }) => writeln!(f, "  isolation  on   (a user of its own per tenant; instance ports reachable by pug only: firewall chain {chain})")?,
            Some(IsolationState::Shared { reason }) => writeln!(f, "  isolation  OFF  ({reason}): tenants must trust each other; run pug as root with iptables to isolate them")?,
            None => {}
        }
        writeln!(
            f,
            "  CLI        pug tenant create acme --version 11.3.0   (uses {data}/{})",
            pug_client::TOKEN_FILE
        )?;
        if let Some(token) = &self.first_admin_token {
            writeln!(f)?;
            writeln!(f, "  admin token (shown once, stored only as a hash):")?;
            writeln!(f, "    {}", token.expose_secret())?;
        }
        Ok(())
    }
}
