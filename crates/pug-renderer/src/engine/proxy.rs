//! The forward proxy every connection of pug's Chromium goes through, so that the URL policy
//! holds at connect time and not only when a URL is checked.
//!
//! Chromium is started with `--proxy-server=http://127.0.0.1:<port>` and
//! `--proxy-bypass-list=<-loopback>` (loopback too goes through it), so it never resolves a
//! name itself: documents, subresources, WebSockets (tunnelled with `CONNECT`), service-worker
//! fetches and popups alike reach the network only through here. For each connection the proxy
//! resolves the host once with pug's resolver, refuses it when the name is a metadata service or
//! any address is link-local or metadata ([`check_target`], pure), and connects to exactly the
//! address it checked. So a name that resolves to an allowed address when the render URL is
//! checked and to 169.254.169.254 later (DNS rebinding), or `169.254.169.254.nip.io`, never
//! reaches the refused address.
//!
//! Service workers register and run in pug's incognito render contexts (the page lets them
//! start, [`super::page`]), and their fetches are the page's request interception's blind spot:
//! a worker's `fetch` is not the page's request. This proxy is what refuses them
//! (`tests/connect_policy.rs` has a page's worker fetch the metadata address, at install and
//! in answer to the page's own same-origin request).
//!
//! Owns: the listener, reading one request head per connection, `CONNECT` tunnels and
//! absolute-form HTTP requests (forwarded with `Connection: close`, so every request of the
//! browser is a connection of its own and is checked), and the [`Resolver`] seam.
//!
//! Must not: decide which documents a token may render (that is [`crate::security`], through
//! request interception): this is the connect-time floor under it.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::security::{always_refused_ip, is_metadata_name, Refusal};

/// How many refused request lines a [`Proxy`] keeps (for diagnostics and tests).
pub const KEPT_REFUSALS: usize = 100;

/// The largest request head read (Chromium's are a few KiB).
const MAX_HEAD: usize = 64 * 1024;
/// How long a connection may take to send its head, and an upstream to accept.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Resolves a host for the proxy (the system resolver in production; tests pass their own).
pub trait Resolver: Send + Sync + 'static {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> BoxFuture<'a, std::io::Result<Vec<IpAddr>>>;
}

/// The system's resolver.
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> BoxFuture<'a, std::io::Result<Vec<IpAddr>>> {
        Box::pin(async move {
            Ok(tokio::net::lookup_host((host, port))
                .await?
                .map(|a| a.ip())
                .collect())
        })
    }
}

/// Whether a connection to `host`, which resolved to `addrs`, may be made: never to a metadata
/// name, never when any address is link-local or metadata (a name is refused as a whole), never
/// to a name that resolves to nothing.
pub fn check_target(host: &str, addrs: &[IpAddr]) -> Result<(), Refusal> {
    if is_metadata_name(host) {
        return Err(Refusal(format!("{host} is a cloud metadata service")));
    }
    if addrs.is_empty() {
        return Err(Refusal(format!("{host} does not resolve")));
    }
    for ip in addrs {
        if let Some(why) = always_refused_ip(*ip) {
            return Err(Refusal(format!("{host} resolves to {ip}, {why}")));
        }
    }
    Ok(())
}

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Target {
    /// `CONNECT host:port` (TLS, WebSockets).
    Tunnel { host: String, port: u16 },
    /// An absolute-form request: connect to `host:port`, send the head with `request_line`.
    Forward {
        host: String,
        port: u16,
        request_line: String,
    },
}

/// Parses the first line of a proxy request; `None` when it is not one this proxy serves.
pub fn parse_request_line(line: &str) -> Option<Target> {
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !version.starts_with("HTTP/1.") {
        return None;
    }
    if method.eq_ignore_ascii_case("CONNECT") {
        // The port is required (`url` would take a missing one for http's 80).
        let (_, port) = target.rsplit_once(':')?;
        let port: u16 = port.parse().ok()?;
        let url = url::Url::parse(&format!("http://{target}")).ok()?;
        return Some(Target::Tunnel {
            host: host_of(&url)?,
            port,
        });
    }
    let url = url::Url::parse(target).ok()?;
    if !matches!(url.scheme(), "http" | "ws") {
        return None;
    }
    let mut path = url.path().to_owned();
    if let Some(q) = url.query() {
        path.push('?');
        path.push_str(q);
    }
    Some(Target::Forward {
        host: host_of(&url)?,
        port: url.port_or_known_default()?,
        request_line: format!("{method} {path} {version}"),
    })
}

fn host_of(url: &url::Url) -> Option<String> {
    Some(match url.host()? {
        url::Host::Domain(d) => d.trim_end_matches('.').to_ascii_lowercase(),
        url::Host::Ipv4(ip) => ip.to_string(),
        url::Host::Ipv6(ip) => ip.to_string(),
    })
}

/// The header lines of a forwarded request: hop-by-hop and proxy headers dropped, and
/// `Connection: close`, so the browser opens (and the proxy checks) a connection per request.
fn forwarded_headers(head: &str) -> String {
    let mut out = String::new();
    for line in head.split("\r\n").skip(1).filter(|l| !l.is_empty()) {
        let name = line.split(':').next().unwrap_or("").trim();
        let drop = [
            "proxy-connection",
            "proxy-authorization",
            "connection",
            "keep-alive",
        ]
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h));
        if !drop {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    out
}

/// A running proxy.
pub struct Proxy {
    /// Where Chromium sends everything.
    pub addr: SocketAddr,
    /// Connections refused by the policy so far.
    pub refused: Arc<AtomicU64>,
    /// The request lines of the last refused connections (at most [`KEPT_REFUSALS`]).
    pub refusals: Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    /// Listens on a free loopback port.
    pub async fn start(resolver: Arc<dyn Resolver>) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let refused = Arc::new(AtomicU64::new(0));
        let refusals = Arc::new(std::sync::Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let refused = refused.clone();
            let refusals = refusals.clone();
            async move {
                loop {
                    let Ok((conn, _)) = listener.accept().await else {
                        continue;
                    };
                    let resolver = resolver.clone();
                    let refused = refused.clone();
                    let refusals = refusals.clone();
                    tokio::spawn(async move {
                        if let Err(e) = serve(conn, resolver.as_ref(), &refused, &refusals).await {
                            tracing::debug!(error = %e, "renderer proxy: connection ended");
                        }
                    });
                }
            }
        });
        Ok(Proxy {
            addr,
            refused,
            refusals,
            task,
        })
    }
}

/// Reads up to the end of the request head; returns it and any bytes read past it.
async fn read_head(conn: &mut TcpStream) -> std::io::Result<(String, Vec<u8>)> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            let head = String::from_utf8(buf)
                .map_err(|_| std::io::Error::other("request head is not UTF-8"))?;
            return Ok((head, rest));
        }
        if buf.len() > MAX_HEAD {
            return Err(std::io::Error::other("request head too large"));
        }
    }
}

async fn refuse(conn: &mut TcpStream, status: &str, reason: &str) -> std::io::Result<()> {
    let body = format!("{reason}\n");
    conn.write_all(
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
}

async fn serve(
    mut conn: TcpStream,
    resolver: &dyn Resolver,
    refused: &AtomicU64,
    refusals: &std::sync::Mutex<Vec<String>>,
) -> std::io::Result<()> {
    let (head, rest) = tokio::time::timeout(IO_TIMEOUT, read_head(&mut conn))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let line = head.split("\r\n").next().unwrap_or_default();
    let Some(target) = parse_request_line(line) else {
        return refuse(&mut conn, "400 Bad Request", "not a proxy request").await;
    };
    let (host, port) = match &target {
        Target::Tunnel { host, port } | Target::Forward { host, port, .. } => (host.clone(), *port),
    };
    let addrs = match host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => resolver.resolve(&host, port).await.unwrap_or_default(),
    };
    if let Err(r) = check_target(&host, &addrs) {
        refused.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut kept) = refusals.lock() {
            if kept.len() >= KEPT_REFUSALS {
                kept.remove(0);
            }
            kept.push(line.to_owned());
        }
        tracing::info!(%host, port, reason = %r, "renderer proxy: connection refused");
        return refuse(&mut conn, "403 Forbidden", &r.0).await;
    }
    // Exactly the addresses that were checked, never a new resolution.
    let targets: Vec<SocketAddr> = addrs.iter().map(|ip| SocketAddr::new(*ip, port)).collect();
    let upstream = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(&targets[..])).await;
    let mut upstream = match upstream {
        Ok(Ok(u)) => u,
        _ => return refuse(&mut conn, "502 Bad Gateway", "cannot connect").await,
    };
    match target {
        Target::Tunnel { .. } => {
            conn.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                .await?;
        }
        Target::Forward { request_line, .. } => {
            let mut out = request_line;
            out.push_str("\r\n");
            out.push_str(&forwarded_headers(&head));
            upstream.write_all(out.as_bytes()).await?;
        }
    }
    upstream.write_all(&rest).await?;
    tokio::io::copy_bidirectional(&mut conn, &mut upstream).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn connections_to_refused_addresses_are_refused_whatever_the_name() {
        let cases: &[(&str, &[&str], bool)] = &[
            ("grafana", &["127.0.0.1"], true),
            ("172.18.0.5", &["172.18.0.5"], true),
            ("169.254.169.254", &["169.254.169.254"], false),
            ("169.254.169.254.nip.io", &["169.254.169.254"], false),
            ("rebound.example", &["127.0.0.1", "169.254.169.254"], false),
            ("fe80-host", &["fe80::1"], false),
            ("metadata.google.internal", &["10.0.0.1"], false),
            ("nowhere.invalid", &[], false),
        ];
        for (host, addrs, ok) in cases {
            let addrs: Vec<IpAddr> = addrs.iter().map(|a| ip(a)).collect();
            assert_eq!(check_target(host, &addrs).is_ok(), *ok, "{host} {addrs:?}");
        }
    }

    #[test]
    fn request_lines() {
        assert_eq!(
            parse_request_line("CONNECT grafana:443 HTTP/1.1"),
            Some(Target::Tunnel {
                host: "grafana".into(),
                port: 443
            })
        );
        assert_eq!(
            parse_request_line("CONNECT [::1]:8080 HTTP/1.1"),
            Some(Target::Tunnel {
                host: "::1".into(),
                port: 8080
            })
        );
        assert_eq!(
            parse_request_line("GET http://Grafana.:3000/d/x?a=1 HTTP/1.1"),
            Some(Target::Forward {
                host: "grafana".into(),
                port: 3000,
                request_line: "GET /d/x?a=1 HTTP/1.1".into()
            })
        );
        assert_eq!(
            parse_request_line("GET http://h/ HTTP/1.1"),
            Some(Target::Forward {
                host: "h".into(),
                port: 80,
                request_line: "GET / HTTP/1.1".into()
            })
        );
        assert_eq!(parse_request_line("GET /origin-form HTTP/1.1"), None);
        assert_eq!(parse_request_line("GET file:///etc/passwd HTTP/1.1"), None);
        assert_eq!(parse_request_line("CONNECT grafana HTTP/1.1"), None);
        assert_eq!(
            parse_request_line("CONNECT h:80 HTTP/1.1"),
            Some(Target::Tunnel {
                host: "h".into(),
                port: 80
            })
        );
    }

    #[test]
    fn forwarded_requests_close_their_connection() {
        let head = "GET http://h/ HTTP/1.1\r\nHost: h\r\nProxy-Connection: keep-alive\r\nConnection: keep-alive\r\nAccept: */*\r\n\r\n";
        assert_eq!(
            forwarded_headers(head),
            "Host: h\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        );
    }
}
