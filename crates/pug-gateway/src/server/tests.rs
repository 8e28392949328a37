//! Unit tests of the server module (`super`).
//!
//! Owns: serving on every worker with peer addresses, graceful stop, the connection caps (total, per client, below the open-file limit), idle tunnels and the worker count.
//!
//! Must not: reach outside the process (no network beyond loopback, no shared state).

use super::*;
use axum::routing::get;
use axum::Router;

#[tokio::test]
async fn serves_on_every_worker_with_peer_addresses_and_stops_gracefully() {
    let app = Router::new().route(
        "/",
        get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move {
            format!(
                "{} {}",
                std::thread::current().name().unwrap_or(""),
                peer.ip()
            )
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(serve(listener, app, 3, shutdown.clone()));
    let mut threads = std::collections::BTreeSet::new();
    for _ in 0..6 {
        // A new connection each time (no pooling), so each goes to the next worker.
        let client = pug_test_support::http::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        let body = client
            .get(format!("http://{addr}/"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let (thread, ip) = body.split_once(' ').unwrap();
        assert_eq!(ip, "127.0.0.1");
        threads.insert(thread.to_owned());
    }
    assert_eq!(threads.len(), 3, "{threads:?}");
    shutdown.cancel();
    server.await.unwrap().unwrap();
    assert!(std::net::TcpStream::connect(addr).is_err());
}

#[tokio::test]
async fn serves_http2_with_prior_knowledge_too() {
    use http_body_util::BodyExt as _;
    let app = Router::new().route(
        "/",
        get(|req: Request| async move { format!("{:?}", req.version()) }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(serve(listener, app, 1, shutdown.clone()));
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get(format!("http://{addr}/"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"HTTP/2.0");
    drop(sender);
    shutdown.cancel();
    server.await.unwrap().unwrap();
}

#[test]
fn the_connection_cap_stays_below_the_open_file_limit() {
    // (configured, open-file limit, cap)
    let table = [
        (0, 1024, 768),
        (0, 4096, 3072),
        (10_000, 4096, 3072),
        (500, 4096, 500),
        (0, 100, 36),
        (0, 10, 16),
    ];
    for (configured, files, cap) in table {
        assert_eq!(
            connection_cap(configured, files),
            cap,
            "{configured} {files}"
        );
    }
}

#[test]
fn connections_are_capped_in_total_and_per_client() {
    let table = Arc::new(Connections::default());
    let a: IpAddr = "192.0.2.1".parse().unwrap();
    let b: IpAddr = "192.0.2.2".parse().unwrap();
    let a1 = Connections::admit(&table, a, 3, 2).unwrap();
    let _a2 = Connections::admit(&table, a, 3, 2).unwrap();
    assert!(Connections::admit(&table, a, 3, 2).is_none(), "per client");
    let _b1 = Connections::admit(&table, b, 3, 2).unwrap();
    assert!(Connections::admit(&table, b, 3, 2).is_none(), "in total");
    drop(a1);
    assert!(Connections::admit(&table, b, 3, 2).is_some());
    // One IPv6 /64 is one client.
    let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
    let t = Arc::new(Connections::default());
    let _x = Connections::admit(&t, v6("2001:db8::1"), 10, 1).unwrap();
    assert!(Connections::admit(&t, v6("2001:db8::2"), 10, 1).is_none());
    assert!(Connections::admit(&t, v6("2001:db8:0:1::1"), 10, 1).is_some());
}

#[tokio::test]
async fn an_idle_tunnel_is_closed_and_a_busy_one_is_not() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (mut client, mut client_end) = tokio::io::duplex(64);
    let (mut upstream, mut upstream_end) = tokio::io::duplex(64);
    let idle = Duration::from_millis(300);
    let task = tokio::spawn(async move { tunnel(&mut client, &mut upstream, idle).await });
    // Traffic for longer than the idle timeout keeps it open.
    for _ in 0..6 {
        client_end.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        upstream_end.read_exact(&mut b).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!task.is_finished());
    // Then silence ends it.
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the idle tunnel was closed")
        .unwrap();
}

#[test]
fn zero_workers_means_one_per_core() {
    assert!(worker_count(0) >= 1);
    assert_eq!(worker_count(3), 3);
}
