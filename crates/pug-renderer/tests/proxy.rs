//! The connect-time URL policy (security review F9), performed against the proxy every
//! connection of pug's Chromium goes through, with a resolver the test controls (no network):
//! a name that rebinds to the metadata address after it was checked, `169.254.169.254.nip.io`,
//! and a WebSocket's `CONNECT` tunnel to a refused address never reach it; allowed ones do.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures::future::BoxFuture;
use pug_renderer::engine::proxy::{Proxy, Resolver};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `rebind.test` answers 127.0.0.1 the first time and 169.254.169.254 after (a DNS rebinding
/// attacker's server); `*.nip.io` answers the address its name spells; nothing else resolves.
#[derive(Default)]
struct Stub {
    rebind_calls: AtomicUsize,
}

impl Resolver for Stub {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        _port: u16,
    ) -> BoxFuture<'a, std::io::Result<Vec<IpAddr>>> {
        Box::pin(async move {
            if host == "rebind.test" {
                let n = self.rebind_calls.fetch_add(1, Ordering::SeqCst);
                let ip = if n == 0 {
                    "127.0.0.1"
                } else {
                    "169.254.169.254"
                };
                return Ok(vec![ip.parse().unwrap()]);
            }
            if let Some(spelled) = host.strip_suffix(".nip.io") {
                if let Ok(ip) = spelled.parse() {
                    return Ok(vec![ip]);
                }
            }
            Err(std::io::ErrorKind::NotFound.into())
        })
    }
}

/// An upstream that answers every request with `ok` (and says it was reached).
async fn upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let app = axum::Router::new().fallback({
        let hits = hits.clone();
        move || {
            let hits = hits.clone();
            async move {
                hits.fetch_add(1, Ordering::SeqCst);
                "ok"
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, hits)
}

fn client(proxy: &Proxy) -> reqwest::Client {
    pug_test_support::http::builder()
        .proxy(reqwest::Proxy::all(format!("http://{}", proxy.addr)).unwrap())
        .build()
        .unwrap()
}

async fn connect(proxy: &Proxy, target: &str) -> String {
    let mut conn = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    conn.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = conn.read(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn a_name_rebound_to_the_metadata_address_after_its_check_is_refused() {
    let (up, hits) = upstream().await;
    let proxy = Proxy::start(Arc::new(Stub::default())).await.unwrap();
    let c = client(&proxy);
    let url = format!("http://rebind.test:{}/latest/meta-data/", up.port());
    // The check (first resolution) and the first connection: the allowed address.
    let first = c.get(&url).send().await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(first.text().await.unwrap(), "ok");
    // Rebound: the connection is refused, it never reaches anything.
    let second = c.get(&url).send().await.unwrap();
    assert_eq!(second.status(), 403);
    let reason = second.text().await.unwrap();
    assert!(reason.contains("resolves to 169.254.169.254"), "{reason}");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert_eq!(proxy.refused.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_subresource_named_after_the_metadata_address_is_refused() {
    let proxy = Proxy::start(Arc::new(Stub::default())).await.unwrap();
    let c = client(&proxy);
    for url in [
        "http://169.254.169.254.nip.io/latest/meta-data/",
        "http://169.254.169.254/latest/meta-data/",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://[fe80::1]/",
    ] {
        let res = c.get(url).send().await.unwrap();
        assert_eq!(res.status(), 403, "{url}");
    }
    assert_eq!(proxy.refused.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn websocket_and_tls_tunnels_are_checked_too() {
    let (up, _) = upstream().await;
    let proxy = Proxy::start(Arc::new(Stub::default())).await.unwrap();
    // Chromium tunnels ws:// and wss:// (and https) through CONNECT.
    let refused = connect(&proxy, "169.254.169.254.nip.io:80").await;
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");
    let refused = connect(&proxy, "169.254.169.254:443").await;
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");
    // An allowed tunnel carries the bytes through.
    let mut conn = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let target = format!("127.0.0.1:{}", up.port());
    conn.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = conn.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    conn.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    conn.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(
        response.starts_with("HTTP/1.1 200") && response.ends_with("ok"),
        "{response}"
    );
    assert_eq!(proxy.refused.load(Ordering::SeqCst), 2);
}
