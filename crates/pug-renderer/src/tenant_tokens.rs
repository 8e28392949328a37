//! The token table of the renderer inside `pug serve`: each tenant's `renderer_token` may
//! render that tenant's ready instances and nothing else.
//!
//! Owns: deciding which token is valid for which `host:port` origins ([`entries`], pure), the
//! cache of tenants' tokens between passes, the loop that rebuilds a [`TokenTable`] every
//! second from a [`TenantSource`] (the embedded renderer's [`ScopedTokens`], or the
//! [`PublishedTable`] pug serves a renderer service: the same entries, each token by its
//! SHA-256 only), and turning a published table back into scopes ([`scoped_entries`], pure).
//!
//! Must not: read pug's store itself (`pug serve` implements [`TenantSource`] over it), or
//! check a presented token (that is [`ScopedTokens`], in constant time).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use pug_types::{RendererGrant, RendererName, RendererTable};
use tokio_util::sync::CancellationToken;

use crate::security::{digest, Entry, Scope, ScopedTokens};

/// How often the table is rebuilt: a tenant that just became ready can be rendered within this.
pub const REFRESH: Duration = Duration::from_secs(1);

/// A tenant and the `host:port` of each of its ready instances (none: not renderable now).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantEndpoints {
    pub tenant: String,
    pub endpoints: Vec<String>,
    /// The names its Grafana calls its instances by in `callback_url`, when they are not the
    /// addresses (docker backend: `container-name:port` → `address:port`).
    pub names: Vec<(String, String)>,
}

/// Where the table learns tenants and their tokens (in `pug serve`: the store).
pub trait TenantSource: Send + Sync + 'static {
    /// A tenant's token as the source keeps it (e.g. a secret that is wiped when dropped).
    type Token: Clone + Send + Sync + 'static;
    type Error: std::error::Error + Send + Sync + 'static;

    /// Every tenant that exists, with its ready instances.
    fn tenants(&self) -> impl Future<Output = Result<Vec<TenantEndpoints>, Self::Error>> + Send;

    /// The tenant's `renderer_token`, if it has one.
    fn token(
        &self,
        tenant: &str,
    ) -> impl Future<Output = Result<Option<Self::Token>, Self::Error>> + Send;

    /// The token's text, as Grafana presents it.
    fn expose(token: &Self::Token) -> &str;
}

/// The table's entries: each tenant with ready instances and a known token → its token,
/// scoped to exactly those instances (and to the names of those instances only), and the
/// tenant's id (whose activity its renders are). Tenants without ready instances or without a
/// token get no entry, so their tokens render nothing.
pub fn entries<'a, T>(
    tenants: &[TenantEndpoints],
    tokens: &'a HashMap<String, T>,
    expose: impl Fn(&'a T) -> &'a str,
) -> Vec<(&'a str, Scope, Option<String>)> {
    tenants
        .iter()
        .filter(|t| !t.endpoints.is_empty())
        .filter_map(|t| {
            let token = tokens.get(&t.tenant)?;
            let names: Vec<(String, String)> = t
                .names
                .iter()
                .filter(|(_, address)| t.endpoints.contains(address))
                .cloned()
                .collect();
            let scope = if names.is_empty() {
                Scope::Hosts(t.endpoints.clone())
            } else {
                Scope::Named {
                    hosts: t.endpoints.clone(),
                    names,
                }
            };
            Some((expose(token), scope, Some(t.tenant.clone())))
        })
        .collect()
}

/// Where [`TenantTokens`] puts the [`entries`] of each pass.
pub trait TokenTable: Send + Sync + 'static {
    /// Replaces every entry at once (token text, its scope, its tenant).
    fn replace_entries(&self, entries: Vec<(&str, Scope, Option<String>)>);
}

impl TokenTable for ScopedTokens {
    fn replace_entries(&self, entries: Vec<(&str, Scope, Option<String>)>) {
        self.replace_tenants(entries);
    }
}

/// The table pug serves a renderer service (`GET /api/v1/renderer/tenants`): [`entries`] with
/// each token replaced by its SHA-256, so that what is served renders nothing by itself.
#[derive(Debug, Default)]
pub struct PublishedTable {
    table: RwLock<Arc<RendererTable>>,
}

impl PublishedTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// The last table built.
    pub fn current(&self) -> Arc<RendererTable> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl TokenTable for PublishedTable {
    fn replace_entries(&self, entries: Vec<(&str, Scope, Option<String>)>) {
        let table = Arc::new(published(entries));
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = table;
    }
}

/// [`entries`] as served: each token by its SHA-256 (lowercase hex), its scope as endpoints
/// and names. Entries without a tenant are not tenants' and are left out.
pub fn published(entries: Vec<(&str, Scope, Option<String>)>) -> RendererTable {
    let tenants = entries
        .into_iter()
        .filter_map(|(token, scope, tenant)| {
            let (endpoints, names) = match scope {
                Scope::Hosts(hosts) => (hosts, Vec::new()),
                Scope::Named { hosts, names } => (hosts, names),
                Scope::Any | Scope::Nothing(_) => return None,
            };
            Some(RendererGrant {
                tenant: tenant?,
                token_sha256: hex(&digest(token)),
                endpoints,
                names: names
                    .into_iter()
                    .map(|(name, address)| RendererName { name, address })
                    .collect(),
            })
        })
        .collect();
    RendererTable { tenants }
}

/// A published table back as [`ScopedTokens`] entries: the same scopes [`entries`] gave, each
/// under its token's digest. A grant whose digest is not 64 hex digits is left out (and
/// counted in the second value), so a damaged row renders nothing.
pub fn scoped_entries(table: &RendererTable) -> (Vec<Entry>, usize) {
    let mut bad = 0;
    let entries = table
        .tenants
        .iter()
        .filter_map(|g| {
            let Some(digest) = unhex(&g.token_sha256) else {
                bad += 1;
                return None;
            };
            let names: Vec<(String, String)> = g
                .names
                .iter()
                .filter(|n| g.endpoints.contains(&n.address))
                .map(|n| (n.name.clone(), n.address.clone()))
                .collect();
            let scope = if names.is_empty() {
                Scope::Hosts(g.endpoints.clone())
            } else {
                Scope::Named {
                    hosts: g.endpoints.clone(),
                    names,
                }
            };
            Some((digest, scope, Some(g.tenant.clone())))
        })
        .collect();
    (entries, bad)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Keeps a [`TokenTable`] in step with the tenants of a [`TenantSource`].
pub struct TenantTokens<S: TenantSource> {
    source: S,
    /// Tokens read so far, by tenant: a tenant's token never changes while the tenant exists,
    /// so each is read once (they are sealed in the store; reading one decrypts it).
    cache: HashMap<String, S::Token>,
}

impl<S: TenantSource> TenantTokens<S> {
    pub fn new(source: S) -> Self {
        Self {
            source,
            cache: HashMap::new(),
        }
    }

    /// Rebuilds `table` from the source. On an error the table keeps its previous entries.
    pub async fn refresh<T: TokenTable>(&mut self, table: &T) -> Result<(), S::Error> {
        let tenants = self.source.tenants().await?;
        // A deleted tenant's token is forgotten; a tenant made again under its id has a new one.
        self.cache
            .retain(|id, _| tenants.iter().any(|t| &t.tenant == id));
        for t in tenants.iter().filter(|t| !t.endpoints.is_empty()) {
            if !self.cache.contains_key(&t.tenant) {
                if let Some(token) = self.source.token(&t.tenant).await? {
                    self.cache.insert(t.tenant.clone(), token);
                }
            }
        }
        table.replace_entries(entries(&tenants, &self.cache, S::expose));
        Ok(())
    }

    /// Refreshes `table` every `every` until `shutdown` is cancelled or the table is dropped
    /// (with the renderer).
    pub fn spawn<T: TokenTable>(
        mut self,
        table: Weak<T>,
        every: Duration,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let Some(table) = table.upgrade() else {
                    return;
                };
                if let Err(e) = self.refresh(&*table).await {
                    tracing::warn!(error = %e, "renderer: cannot refresh tenants' tokens");
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::TokenScopes;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    fn tenant(id: &str, endpoints: &[&str]) -> TenantEndpoints {
        TenantEndpoints {
            tenant: id.into(),
            endpoints: endpoints.iter().map(|e| (*e).to_owned()).collect(),
            names: Vec::new(),
        }
    }

    #[test]
    fn containers_names_are_scoped_to_their_own_ready_instances() {
        let tokens: HashMap<String, String> = [("a".to_owned(), "tok-a".to_owned())].into();
        let mut a = tenant("a", &["172.18.0.5:20001"]);
        a.names = vec![
            ("pug-a-0:20001".into(), "172.18.0.5:20001".into()),
            // A name whose container is not ready (or is another's address) is left out.
            ("pug-a-1:20002".into(), "172.18.0.6:20002".into()),
        ];
        assert_eq!(
            entries(&[a.clone()], &tokens, |t| t.as_str()),
            vec![(
                "tok-a",
                Scope::Named {
                    hosts: vec!["172.18.0.5:20001".into()],
                    names: vec![("pug-a-0:20001".into(), "172.18.0.5:20001".into())],
                },
                Some("a".to_owned())
            )]
        );
        a.names.remove(0);
        assert_eq!(
            entries(&[a], &tokens, |t| t.as_str()),
            vec![("tok-a", hosts(&["172.18.0.5:20001"]), Some("a".to_owned()))],
            "no name of a ready instance: a plain host scope"
        );
    }

    fn hosts(endpoints: &[&str]) -> Scope {
        Scope::Hosts(endpoints.iter().map(|e| (*e).to_owned()).collect())
    }

    #[test]
    fn each_token_may_render_its_own_tenants_ready_instances_only() {
        let tokens: HashMap<String, String> = [("a", "tok-a"), ("b", "tok-b"), ("c", "tok-c")]
            .into_iter()
            .map(|(t, k)| (t.to_owned(), k.to_owned()))
            .collect();
        let a = tenant("a", &["127.0.0.1:3000", "127.0.0.1:3001"]);
        let b = tenant("b", &["127.0.0.1:3002"]);
        let idle = tenant("c", &[]);
        let no_token = tenant("d", &["127.0.0.1:3003"]);
        /// What a case is about, the tenants, and the entries they must give.
        type Case = (
            &'static str,
            Vec<TenantEndpoints>,
            Vec<(&'static str, Scope, Option<String>)>,
        );
        let cases: &[Case] = &[
            ("no tenants", vec![], vec![]),
            (
                "a ready tenant: its token, its instances",
                vec![a.clone()],
                vec![(
                    "tok-a",
                    hosts(&["127.0.0.1:3000", "127.0.0.1:3001"]),
                    Some("a".to_owned()),
                )],
            ),
            (
                "two tenants: neither token reaches the other's instances",
                vec![a.clone(), b.clone()],
                vec![
                    (
                        "tok-a",
                        hosts(&["127.0.0.1:3000", "127.0.0.1:3001"]),
                        Some("a".to_owned()),
                    ),
                    ("tok-b", hosts(&["127.0.0.1:3002"]), Some("b".to_owned())),
                ],
            ),
            (
                "no ready instance: its token renders nothing",
                vec![idle],
                vec![],
            ),
            ("no token known: no entry", vec![no_token], vec![]),
        ];
        for (what, tenants, want) in cases {
            assert_eq!(&entries(tenants, &tokens, |t| t.as_str()), want, "{what}");
        }
    }

    /// An in-memory source that counts token reads and can fail.
    #[derive(Default)]
    struct Fake {
        tenants: Mutex<Vec<TenantEndpoints>>,
        tokens: Mutex<HashMap<String, String>>,
        reads: AtomicUsize,
        fail: Mutex<bool>,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("the store is down")]
    struct Down;

    impl TenantSource for Arc<Fake> {
        type Token = String;
        type Error = Down;
        async fn tenants(&self) -> Result<Vec<TenantEndpoints>, Down> {
            if *self.fail.lock().unwrap() {
                return Err(Down);
            }
            Ok(self.tenants.lock().unwrap().clone())
        }
        async fn token(&self, tenant: &str) -> Result<Option<String>, Down> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            Ok(self.tokens.lock().unwrap().get(tenant).cloned())
        }
        fn expose(token: &String) -> &str {
            token
        }
    }

    impl Fake {
        fn set(&self, tenants: Vec<TenantEndpoints>, tokens: &[(&str, &str)]) {
            *self.tenants.lock().unwrap() = tenants;
            *self.tokens.lock().unwrap() = tokens
                .iter()
                .map(|(t, k)| ((*t).to_owned(), (*k).to_owned()))
                .collect();
        }
    }

    #[test]
    fn the_published_table_scopes_each_digest_as_the_embedded_table_scopes_its_token() {
        let tokens: HashMap<String, String> = [("a", "tok-a"), ("b", "tok-b")]
            .into_iter()
            .map(|(t, k)| (t.to_owned(), k.to_owned()))
            .collect();
        let mut a = tenant("a", &["10.0.1.5:3000", "10.0.1.6:3000"]);
        a.names = vec![
            ("pug-a:3000".into(), "10.0.1.5:3000".into()),
            ("pug-a:3000".into(), "10.0.1.6:3000".into()),
        ];
        let b = tenant("b", &["10.0.1.7:3000"]);
        let idle = tenant("c", &[]);
        let tenants = [a, b, idle];
        let published = published(entries(&tenants, &tokens, |t| t.as_str()));
        let text = serde_json::to_string(&published).unwrap();
        assert!(
            !text.contains("tok-a") && !text.contains("tok-b"),
            "no token is served: {text}"
        );
        assert_eq!(published.tenants.len(), 2, "c renders nothing: {text}");
        // Read back (a renderer service), each digest has the scope the token had.
        let (back, bad) = scoped_entries(&published);
        assert_eq!(bad, 0);
        let table = ScopedTokens::new();
        table.replace_digests(back);
        let embedded = ScopedTokens::new();
        embedded.replace_tenants(entries(&tenants, &tokens, |t| t.as_str()));
        for token in ["tok-a", "tok-b", "tok-c", "other"] {
            assert_eq!(table.grant(token), embedded.grant(token), "{token}");
        }
        assert_eq!(
            table.grant("tok-a").and_then(|g| g.tenant).as_deref(),
            Some("a")
        );
    }

    #[test]
    fn a_damaged_digest_renders_nothing() {
        let grant = |digest: &str| RendererGrant {
            tenant: "a".into(),
            token_sha256: digest.into(),
            endpoints: vec!["10.0.1.5:3000".into()],
            // A name for an address that is not the tenant's is dropped.
            names: vec![RendererName {
                name: "pug-b:3000".into(),
                address: "10.0.1.9:3000".into(),
            }],
        };
        let good = hex(&digest("tok-a"));
        let table = RendererTable {
            tenants: vec![
                grant(&good),
                grant("xyz"),
                grant(&good[..62]),
                grant(&format!("g{}", &good[1..])),
            ],
        };
        let (entries, bad) = scoped_entries(&table);
        assert_eq!(bad, 3);
        assert_eq!(
            entries,
            vec![(
                digest("tok-a"),
                Scope::Hosts(vec!["10.0.1.5:3000".into()]),
                Some("a".into())
            )]
        );
    }

    #[tokio::test]
    async fn refresh_follows_the_tenants_and_reads_each_token_once() {
        let fake = Arc::new(Fake::default());
        let mut tokens = TenantTokens::new(fake.clone());
        let table = ScopedTokens::new();

        // Not ready yet: nothing renders, and the token is not even read.
        fake.set(vec![tenant("a", &[])], &[("a", "tok-a")]);
        tokens.refresh(&table).await.unwrap();
        assert_eq!(table.scope("tok-a"), None);
        assert_eq!(fake.reads.load(Ordering::SeqCst), 0);

        // Ready: its token renders its instance; an unknown token renders nothing.
        fake.set(vec![tenant("a", &["127.0.0.1:3000"])], &[("a", "tok-a")]);
        tokens.refresh(&table).await.unwrap();
        assert_eq!(table.scope("tok-a"), Some(hosts(&["127.0.0.1:3000"])));
        assert_eq!(table.scope("tok-unknown"), None);
        assert_eq!(
            table.grant("tok-a").and_then(|g| g.tenant).as_deref(),
            Some("a"),
            "its renders are a's"
        );

        // The instance moved: the scope follows; the cached token is not read again.
        fake.set(vec![tenant("a", &["127.0.0.1:3005"])], &[("a", "tok-a")]);
        tokens.refresh(&table).await.unwrap();
        assert_eq!(table.scope("tok-a"), Some(hosts(&["127.0.0.1:3005"])));
        assert_eq!(fake.reads.load(Ordering::SeqCst), 1);

        // The store cannot be read: the table keeps what it had.
        *fake.fail.lock().unwrap() = true;
        assert!(tokens.refresh(&table).await.is_err());
        assert_eq!(table.scope("tok-a"), Some(hosts(&["127.0.0.1:3005"])));
        *fake.fail.lock().unwrap() = false;

        // Deleted, then made again with a new token: the old token stops, the new one is read.
        fake.set(vec![], &[]);
        tokens.refresh(&table).await.unwrap();
        assert_eq!(table.scope("tok-a"), None);
        fake.set(vec![tenant("a", &["127.0.0.1:3000"])], &[("a", "tok-a2")]);
        tokens.refresh(&table).await.unwrap();
        assert_eq!(table.scope("tok-a"), None);
        assert_eq!(table.scope("tok-a2"), Some(hosts(&["127.0.0.1:3000"])));
        assert_eq!(fake.reads.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn the_loop_fills_the_table_and_ends_with_it() {
        let fake = Arc::new(Fake::default());
        fake.set(vec![tenant("a", &["127.0.0.1:3000"])], &[("a", "tok-a")]);
        let table = Arc::new(ScopedTokens::new());
        let every = Duration::from_millis(10);
        let (never, shutdown) = (CancellationToken::new(), CancellationToken::new());
        let task = TenantTokens::new(fake.clone()).spawn(Arc::downgrade(&table), every, never);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while table.scope("tok-a").is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the loop never filled the table"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(table);
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the loop ends once the table is dropped")
            .unwrap();

        // Or once pug shuts down, with the table still there.
        let table = Arc::new(ScopedTokens::new());
        let task = TenantTokens::new(fake).spawn(Arc::downgrade(&table), every, shutdown.clone());
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the loop ends on shutdown")
            .unwrap();
    }
}
