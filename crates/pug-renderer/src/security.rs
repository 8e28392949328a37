//! Who may render what.
//!
//! Owns: token checking ([`TokenScopes`]: a token's [`Grant`], its scope and whose it is;
//! [`StaticTokens`], [`ScopedTokens`]; compared in constant time), the URL
//! policy ([`UrlPolicy`]: only http/https, the allow-list, a token's [`Scope`], and the addresses
//! that are refused whatever the configuration: link-local and cloud metadata), and CSV file
//! name sanitising.
//!
//! Must not: parse request parameters or drive the browser. The engine calls
//! [`UrlPolicy::check_navigation`] for every document the page loads (so redirects are checked
//! again) and [`UrlPolicy::check_subresource`] for every other request. A page's service
//! worker's fetches are not the page's requests and escape both calls; they are held to the
//! same floor as a subresource (never a link-local or metadata address) at connect time, by
//! the browser's proxy ([`crate::engine::proxy`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use url::{Host, Url};

/// Token → what that token may render. Inside `pug serve`, the core implements this from its
/// tenant registry.
pub trait TokenScopes: Send + Sync + 'static {
    /// The scope of `token`, or `None` when the token is not valid (401).
    fn scope(&self, token: &str) -> Option<Scope>;

    /// The scope of `token` and the tenant whose token it is, if it is a tenant's (inside
    /// `pug serve`); by default no tenant's.
    fn grant(&self, token: &str) -> Option<Grant> {
        self.scope(token).map(|scope| Grant {
            scope,
            tenant: None,
        })
    }
}

/// A valid token: what it may render, and whose it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub scope: Scope,
    /// The tenant whose `renderer_token` it is (`None`: standalone `pug render`'s tokens).
    pub tenant: Option<String>,
}

/// What a token may render.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Any URL (the allow-list still applies).
    Any,
    /// Only these `host:port` origins (a tenant's own Grafana instances).
    Hosts(Vec<String>),
    /// A tenant's containers: only the `hosts` origins, as [`Scope::Hosts`], and the names its
    /// Grafana knows them by in `callback_url` (`name:port` → `address:port`). A render URL
    /// naming one of these is rewritten to the address before it is checked or loaded
    /// ([`Scope::resolve`]): the names are Docker's, which Chromium on the host cannot resolve,
    /// and pug's own table is the only resolution a name gets.
    Named {
        hosts: Vec<String>,
        names: Vec<(String, String)>,
    },
    /// A valid token that renders nothing, and why (standalone: Grafana's default token `-`
    /// without an allow-list).
    Nothing(&'static str),
}

/// Why `-` renders nothing without an allow-list.
pub const DEFAULT_TOKEN_WITHOUT_ALLOW_LIST: &str = "the token is Grafana's default \"-\", which anyone knows: it renders only hosts in RENDERING_ALLOWED_HOSTS (--allowed-host), and none is set; set them, or give Grafana and the renderer a token of your own (AUTH_TOKEN)";

impl Scope {
    /// The origins this scope may render; `None`: any.
    pub fn hosts(&self) -> Option<&[String]> {
        match self {
            Scope::Any => None,
            Scope::Hosts(hosts) | Scope::Named { hosts, .. } => Some(hosts),
            Scope::Nothing(_) => Some(&[]),
        }
    }

    /// `url` with a name of this scope replaced by its address, and the cookie `domain` to use
    /// with it; `None` when the URL names nothing of the scope's (it is then checked as it is).
    pub fn resolve(&self, url: &Url) -> Option<(Url, String)> {
        let Scope::Named { names, .. } = self else {
            return None;
        };
        let (host, port) = host_port(url).ok()?;
        let origin = format!("{host}:{port}");
        let (_, target) = names
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(&origin))?;
        let (ip, port) = target.rsplit_once(':')?;
        let port: u16 = port.parse().ok()?;
        let mut out = url.clone();
        out.set_host(Some(ip)).ok()?;
        out.set_port(Some(port)).ok()?;
        let domain = ip.trim_start_matches('[').trim_end_matches(']').to_owned();
        Some((out, domain))
    }
}

/// The standalone renderer's tokens (`AUTH_TOKEN`): each grants [`Scope::Any`].
pub struct StaticTokens {
    /// SHA-256 of each token: comparing fixed-size digests hides the tokens' lengths too.
    digests: Vec<[u8; 32]>,
    /// `-`, when accepted, and what it may render.
    default_token: Option<([u8; 32], Scope)>,
}

impl StaticTokens {
    /// Accepts any of `tokens`.
    pub fn new<I: IntoIterator<Item = S>, S: AsRef<str>>(tokens: I) -> Self {
        Self {
            digests: tokens.into_iter().map(|t| digest(t.as_ref())).collect(),
            default_token: None,
        }
    }

    /// The standalone renderer's tokens: a real token renders any host (but link-local and
    /// metadata ones), Grafana's default `-` only the allow-list's, so nothing when
    /// `allow_list` is false.
    pub fn standalone<S: AsRef<str>>(tokens: &[S], allow_list: bool) -> Self {
        let (default, own): (Vec<&str>, Vec<&str>) = tokens
            .iter()
            .map(AsRef::as_ref)
            .partition(|t| *t == DEFAULT_TOKEN);
        Self {
            digests: own.into_iter().map(digest).collect(),
            default_token: (!default.is_empty()).then(|| {
                let scope = if allow_list {
                    Scope::Any
                } else {
                    Scope::Nothing(DEFAULT_TOKEN_WITHOUT_ALLOW_LIST)
                };
                (digest(DEFAULT_TOKEN), scope)
            }),
        }
    }
}

/// Grafana's default `renderer_token` (and the reference renderer's `AUTH_TOKEN`).
pub const DEFAULT_TOKEN: &str = "-";

/// The SHA-256 of a token: what tables keep of it and compare.
pub fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl TokenScopes for StaticTokens {
    fn scope(&self, token: &str) -> Option<Scope> {
        let presented = digest(token);
        // Every configured token is compared, with no early exit, so timing tells nothing.
        let mut matched = subtle::Choice::from(0);
        for d in &self.digests {
            matched |= d.ct_eq(&presented);
        }
        if bool::from(matched) {
            return Some(Scope::Any);
        }
        // `-` is public: comparing it in constant time hides nothing.
        self.default_token
            .as_ref()
            .filter(|(d, _)| *d == presented)
            .map(|(_, scope)| scope.clone())
    }
}

/// Tokens each bound to its own [`Scope`], replaceable while the renderer runs. Inside
/// `pug serve` each tenant's `renderer_token` maps to `Scope::Hosts` of that tenant's instances,
/// so a tenant's Grafana can only have its own pages rendered.
#[derive(Default)]
pub struct ScopedTokens {
    entries: std::sync::RwLock<Vec<Entry>>,
}

/// Digest of a token, its scope, and the tenant whose token it is.
pub type Entry = ([u8; 32], Scope, Option<String>);

impl ScopedTokens {
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces every token at once, each no tenant's.
    pub fn replace<I, S>(&self, tokens: I)
    where
        I: IntoIterator<Item = (S, Scope)>,
        S: AsRef<str>,
    {
        self.replace_tenants(tokens.into_iter().map(|(t, scope)| (t, scope, None)));
    }

    /// Replaces every token at once, each with the tenant whose token it is.
    pub fn replace_tenants<I, S>(&self, tokens: I)
    where
        I: IntoIterator<Item = (S, Scope, Option<String>)>,
        S: AsRef<str>,
    {
        let entries = tokens
            .into_iter()
            .map(|(t, scope, tenant)| (digest(t.as_ref()), scope, tenant))
            .collect();
        *self.entries.write().unwrap_or_else(|e| e.into_inner()) = entries;
    }

    /// Replaces every token at once by its SHA-256 ([`digest`]), each with its scope and
    /// tenant: a table learnt from pug (`pug render --tenants-url`) never holds a token.
    pub fn replace_digests(&self, entries: Vec<Entry>) {
        *self.entries.write().unwrap_or_else(|e| e.into_inner()) = entries;
    }

    /// How many tokens are valid.
    pub fn len(&self) -> usize {
        self.entries.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl TokenScopes for ScopedTokens {
    fn scope(&self, token: &str) -> Option<Scope> {
        self.grant(token).map(|g| g.scope)
    }

    fn grant(&self, token: &str) -> Option<Grant> {
        let presented = digest(token);
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        // Every digest is compared, with no early exit; only which entry matched is data-dependent.
        let mut found = None;
        for (i, (d, _, _)) in entries.iter().enumerate() {
            if bool::from(d.ct_eq(&presented)) {
                found = Some(i);
            }
        }
        found.map(|i| Grant {
            scope: entries[i].1.clone(),
            tenant: entries[i].2.clone(),
        })
    }
}

/// An allow-list entry: `host`, `host:port`, `[v6]:port`, or `*.domain[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    /// Lowercase host without brackets; a leading `*.` matches any subdomain.
    host: String,
    /// `None` = any port.
    port: Option<u16>,
}

impl HostPattern {
    /// Parses an allow-list entry; `None` if it is not one.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim().to_ascii_lowercase();
        if s.is_empty() || s.contains('/') {
            return None;
        }
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (h, after) = rest.split_once(']')?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p.parse().ok()?),
                None if after.is_empty() => None,
                None => return None,
            };
            (h.to_owned(), port)
        } else if s.matches(':').count() > 1 {
            (s.clone(), None) // a bare IPv6 address
        } else {
            match s.split_once(':') {
                Some((h, p)) => (h.to_owned(), Some(p.parse().ok()?)),
                None => (s.clone(), None),
            }
        };
        if host.is_empty() {
            return None;
        }
        Some(Self { host, port })
    }

    fn matches(&self, host: &str, port: u16) -> bool {
        if self.port.is_some_and(|p| p != port) {
            return false;
        }
        match self.host.strip_prefix("*.") {
            Some(domain) => host
                .strip_suffix(domain)
                .is_some_and(|sub| sub.ends_with('.') && sub.len() > 1),
            None => self.host == host,
        }
    }
}

/// Why a URL is not rendered (403).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

/// The URL rules of one renderer.
#[derive(Debug, Clone)]
pub struct UrlPolicy {
    /// Empty = any host (minus the always-refused ones).
    allowed: Vec<HostPattern>,
}

impl UrlPolicy {
    /// Builds the policy; invalid entries were already refused by config validation.
    pub fn new<S: AsRef<str>>(allowed_hosts: &[S]) -> Self {
        Self {
            allowed: allowed_hosts
                .iter()
                .filter_map(|h| HostPattern::parse(h.as_ref()))
                .collect(),
        }
    }

    /// A document the browser is about to load (the render URL, a redirect, an iframe): http(s)
    /// only, never link-local or metadata, inside the allow-list and inside the token's scope.
    pub fn check_navigation(&self, url: &Url, scope: &Scope) -> Result<(), Refusal> {
        check_scheme(url)?;
        let (host, port) = host_port(url)?;
        check_host_always(url)?;
        if let Scope::Nothing(why) = scope {
            return Err(Refusal((*why).to_owned()));
        }
        if !self.allowed.is_empty() && !self.allowed.iter().any(|p| p.matches(&host, port)) {
            return Err(Refusal(format!(
                "{host}:{port} is not in the renderer's allowed hosts"
            )));
        }
        if let Some(hosts) = scope.hosts() {
            let ok = hosts
                .iter()
                .filter_map(|h| HostPattern::parse(h))
                .any(|p| p.matches(&host, port));
            if !ok {
                return Err(Refusal(format!(
                    "{host}:{port} is not an address this token may render"
                )));
            }
        }
        Ok(())
    }

    /// Any other request of the page (scripts, images, queries): never link-local or metadata,
    /// never a local file.
    pub fn check_subresource(url: &Url) -> Result<(), Refusal> {
        match url.scheme() {
            "data" | "blob" | "about" => Ok(()),
            "http" | "https" | "ws" | "wss" => check_host_always(url),
            other => Err(Refusal(format!("{other}: URLs are not loaded"))),
        }
    }

    /// Resolves the URL's host and refuses it if any address is link-local or metadata (a
    /// hostname pointing at 169.254.169.254 is refused like the address itself).
    pub async fn check_resolved(url: &Url) -> Result<(), Refusal> {
        let Some(Host::Domain(domain)) = url.host() else {
            return Ok(()); // literals were checked already
        };
        let port = url.port_or_known_default().unwrap_or(80);
        // A name that does not resolve cannot reach anything; the browser will report it.
        let Ok(addrs) = tokio::net::lookup_host((domain, port)).await else {
            return Ok(());
        };
        for addr in addrs {
            if let Some(why) = always_refused_ip(addr.ip()) {
                return Err(Refusal(format!(
                    "{domain} resolves to {}, {why}",
                    addr.ip()
                )));
            }
        }
        Ok(())
    }
}

fn check_scheme(url: &Url) -> Result<(), Refusal> {
    match url.scheme() {
        "http" | "https" => Ok(()),
        other => Err(Refusal(format!(
            "only http and https URLs are rendered, not {other}:"
        ))),
    }
}

fn host_port(url: &Url) -> Result<(String, u16), Refusal> {
    let host = match url.host() {
        Some(Host::Domain(d)) => d.trim_end_matches('.').to_ascii_lowercase(),
        Some(Host::Ipv4(ip)) => ip.to_string(),
        Some(Host::Ipv6(ip)) => ip.to_string(),
        None => return Err(Refusal("the URL has no host".to_owned())),
    };
    let port = url
        .port_or_known_default()
        .ok_or_else(|| Refusal("the URL has no port".to_owned()))?;
    Ok((host, port))
}

/// Names of cloud metadata services.
const METADATA_NAMES: &[&str] = &[
    "metadata",
    "metadata.google.internal",
    "metadata.goog",
    "metadata.azure.com",
    "instance-data",
    "instance-data.ec2.internal",
];

/// Whether `host` (a name, any case, with or without its final dot) names a metadata service.
pub fn is_metadata_name(host: &str) -> bool {
    let d = host.trim_end_matches('.').to_ascii_lowercase();
    METADATA_NAMES.contains(&d.as_str())
}

fn check_host_always(url: &Url) -> Result<(), Refusal> {
    match url.host() {
        Some(Host::Domain(d)) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            if METADATA_NAMES.contains(&d.as_str()) {
                return Err(Refusal(format!("{d} is a cloud metadata service")));
            }
            Ok(())
        }
        Some(Host::Ipv4(ip)) => match always_refused_ip(IpAddr::V4(ip)) {
            Some(why) => Err(Refusal(format!("{ip} is {why}"))),
            None => Ok(()),
        },
        Some(Host::Ipv6(ip)) => match always_refused_ip(IpAddr::V6(ip)) {
            Some(why) => Err(Refusal(format!("{ip} is {why}"))),
            None => Ok(()),
        },
        None => Ok(()),
    }
}

/// Addresses never rendered, whatever the allow-list says.
pub fn always_refused_ip(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => refused_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return refused_v4(v4);
            }
            let seg = v6.segments();
            if seg[0] & 0xffc0 == 0xfe80 {
                Some("a link-local address")
            } else if v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
                Some("a cloud metadata address")
            } else if v6.is_multicast() {
                Some("a multicast address")
            } else {
                None
            }
        }
    }
}

fn refused_v4(ip: Ipv4Addr) -> Option<&'static str> {
    if ip.is_link_local() {
        // 169.254.0.0/16, which holds 169.254.169.254 (AWS, GCP, Azure, OpenStack metadata).
        Some("a link-local address (cloud metadata lives there)")
    } else if ip == Ipv4Addr::new(100, 100, 100, 200) || ip == Ipv4Addr::new(168, 63, 129, 16) {
        Some("a cloud metadata address")
    } else if ip.is_multicast() || ip.is_broadcast() {
        Some("a multicast or broadcast address")
    } else {
        None
    }
}

/// The download name of a CSV from Grafana's `filePath`: only its basename, only safe
/// characters, ending in `.csv` (CVE-2025-11539 was a path traversal through this parameter).
pub fn safe_csv_file_name(file_path: &str) -> Option<String> {
    let base = file_path.rsplit(['/', '\\']).next().unwrap_or_default();
    let mut name: String = base
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_' => c,
            _ => '_',
        })
        .collect();
    name = name.trim_start_matches('.').chars().take(200).collect();
    if name.is_empty() || name.chars().all(|c| c == '_' || c == '.') {
        return None;
    }
    if !name.to_ascii_lowercase().ends_with(".csv") {
        name.push_str(".csv");
    }
    Some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn tokens_are_checked() {
        let t = StaticTokens::new(["one", "two"]);
        assert_eq!(t.scope("two"), Some(Scope::Any));
        assert_eq!(t.scope("three"), None);
        assert_eq!(t.scope(""), None);
    }

    #[test]
    fn the_default_token_renders_only_the_allow_list() {
        let open = StaticTokens::standalone(&["-", "s3cret"], false);
        assert_eq!(open.scope("s3cret"), Some(Scope::Any));
        let dash = open.scope("-").unwrap();
        assert_eq!(dash, Scope::Nothing(DEFAULT_TOKEN_WITHOUT_ALLOW_LIST));
        let none = UrlPolicy::new::<&str>(&[]);
        let refused = none
            .check_navigation(&url("http://grafana:3000/d/x"), &dash)
            .unwrap_err();
        assert!(refused.0.contains("RENDERING_ALLOWED_HOSTS"), "{refused}");
        assert!(none
            .check_navigation(&url("http://grafana:3000/d/x"), &Scope::Any)
            .is_ok());

        let listed = StaticTokens::standalone(&["-"], true);
        let dash = listed.scope("-").unwrap();
        let policy = UrlPolicy::new(&["grafana:3000"]);
        assert!(policy
            .check_navigation(&url("http://grafana:3000/d/x"), &dash)
            .is_ok());
        assert!(policy
            .check_navigation(&url("http://prometheus:9090/graph"), &dash)
            .is_err());
        assert_eq!(listed.scope("s3cret"), None);
        assert_eq!(
            StaticTokens::standalone(&["s3cret"], false).scope("-"),
            None
        );
    }

    #[test]
    fn a_named_scope_resolves_its_own_names_only() {
        let acme = Scope::Named {
            hosts: vec!["172.18.0.5:20001".into()],
            names: vec![("pug-acme-0:20001".into(), "172.18.0.5:20001".into())],
        };
        let cases: &[(&str, Option<(&str, &str)>)] = &[
            (
                "http://pug-acme-0:20001/t/acme/d-solo/x?delay=0",
                Some((
                    "http://172.18.0.5:20001/t/acme/d-solo/x?delay=0",
                    "172.18.0.5",
                )),
            ),
            (
                "http://PUG-ACME-0:20001/",
                Some(("http://172.18.0.5:20001/", "172.18.0.5")),
            ),
            ("http://pug-acme-0:20002/", None),
            ("http://pug-globex-0:20001/", None),
            ("http://172.18.0.5:20001/", None),
        ];
        for (given, want) in cases {
            let got = acme.resolve(&url(given));
            let got = got.as_ref().map(|(u, d)| (u.as_str(), d.as_str()));
            assert_eq!(got, *want, "{given}");
        }
        assert_eq!(
            Scope::Hosts(vec!["a:1".into()]).resolve(&url("http://a:1/")),
            None
        );
        assert_eq!(Scope::Any.resolve(&url("http://a:1/")), None);
        // A name that is not resolved is not an origin of the scope either.
        let policy = UrlPolicy::new::<&str>(&[]);
        assert!(policy
            .check_navigation(&url("http://pug-acme-0:20001/"), &acme)
            .is_err());
        assert!(policy
            .check_navigation(&url("http://172.18.0.5:20001/"), &acme)
            .is_ok());
    }

    #[test]
    fn scoped_tokens_map_to_their_own_hosts_and_can_be_replaced() {
        let t = ScopedTokens::new();
        assert_eq!(t.scope("a"), None);
        let acme = Scope::Hosts(vec!["127.0.0.1:20001".into()]);
        let globex = Scope::Hosts(vec!["127.0.0.1:20002".into()]);
        t.replace([("a", acme.clone()), ("g", globex.clone())]);
        assert_eq!(t.scope("a"), Some(acme));
        assert_eq!(t.scope("g"), Some(globex.clone()));
        assert_eq!(t.scope("x"), None);
        t.replace([("g", globex.clone())]);
        assert_eq!(t.scope("a"), None);
        assert_eq!(t.len(), 1);
        assert_eq!(
            t.grant("g"),
            Some(Grant {
                scope: globex.clone(),
                tenant: None
            })
        );
        t.replace_tenants([("g", globex.clone(), Some("globex".to_owned()))]);
        assert_eq!(
            t.grant("g"),
            Some(Grant {
                scope: globex,
                tenant: Some("globex".into())
            }),
            "a tenant's token says whose it is"
        );
        assert_eq!(t.grant("a"), None);
    }

    #[test]
    fn only_http_and_https_documents() {
        let p = UrlPolicy::new::<&str>(&[]);
        assert!(p
            .check_navigation(&url("http://grafana:3000/d/x"), &Scope::Any)
            .is_ok());
        for bad in [
            "file:///etc/passwd",
            "chrome://settings",
            "javascript:alert(1)",
            "ftp://x/",
        ] {
            let err = p.check_navigation(&url(bad), &Scope::Any).unwrap_err();
            assert!(err.0.contains("only http and https"), "{bad}: {err}");
        }
    }

    #[test]
    fn metadata_and_link_local_are_always_refused() {
        let p = UrlPolicy::new(&["169.254.169.254", "metadata.google.internal"]);
        for bad in [
            "http://169.254.169.254/latest/meta-data/",
            "http://0xa9.0xfe.0xa9.0xfe/",
            "http://2852039166/",
            "http://[fe80::1]/",
            "http://[::ffff:169.254.169.254]/",
            "http://[fd00:ec2::254]/",
            "http://metadata.google.internal/computeMetadata/v1/",
            "http://100.100.100.200/",
        ] {
            assert!(
                p.check_navigation(&url(bad), &Scope::Any).is_err(),
                "{bad} was allowed"
            );
            assert!(UrlPolicy::check_subresource(&url(bad)).is_err(), "{bad}");
        }
        assert!(UrlPolicy::check_subresource(&url("file:///etc/passwd")).is_err());
        assert!(UrlPolicy::check_subresource(&url("data:text/plain,hi")).is_ok());
        assert!(UrlPolicy::check_subresource(&url("https://cdn.example/x.js")).is_ok());
    }

    #[test]
    fn allow_list_and_scope() {
        let p = UrlPolicy::new(&["grafana:3000", "*.tenants.example", "[::1]:3000"]);
        let ok = |s: &str, scope: &Scope| p.check_navigation(&url(s), scope).is_ok();
        assert!(ok("http://grafana:3000/d/x", &Scope::Any));
        assert!(ok("http://GRAFANA:3000/", &Scope::Any));
        assert!(!ok("http://grafana:3001/", &Scope::Any));
        assert!(!ok("http://other:3000/", &Scope::Any));
        assert!(ok("https://a.tenants.example/", &Scope::Any));
        assert!(!ok("https://tenants.example/", &Scope::Any));
        assert!(!ok("https://a.tenants.example.evil/", &Scope::Any));
        assert!(ok("http://[::1]:3000/", &Scope::Any));

        let tenant = Scope::Hosts(vec!["a.tenants.example:443".into()]);
        assert!(ok("https://a.tenants.example/d/x", &tenant));
        assert!(!ok("https://b.tenants.example/d/x", &tenant));
        assert!(!ok("http://a.tenants.example/d/x", &tenant)); // port 80
    }

    #[tokio::test]
    async fn names_resolving_to_link_local_are_refused() {
        // "localhost" resolves to loopback: allowed.
        assert!(UrlPolicy::check_resolved(&url("http://localhost:1/"))
            .await
            .is_ok());
    }

    #[test]
    fn host_patterns() {
        assert!(HostPattern::parse("grafana").is_some());
        assert!(HostPattern::parse("grafana:x").is_none());
        assert!(HostPattern::parse("http://grafana").is_none());
        assert!(HostPattern::parse("").is_none());
    }

    #[test]
    fn csv_names() {
        assert_eq!(
            safe_csv_file_name("/tmp/x/My Panel-data.csv").unwrap(),
            "My_Panel-data.csv"
        );
        assert_eq!(
            safe_csv_file_name("..\\..\\win.ini").unwrap(),
            "win.ini.csv"
        );
        assert_eq!(safe_csv_file_name("../../").as_deref(), None);
        assert_eq!(safe_csv_file_name("..").as_deref(), None);
        assert_eq!(safe_csv_file_name("a\"b;c").unwrap(), "a_b_c.csv");
    }
}
