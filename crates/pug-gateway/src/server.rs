//! Serving pug's port (gateway and API) on one single-threaded runtime per core.
//!
//! Owns: accepting connections on the one listener, handing each to a worker thread, and each
//! worker's event loop, which serves its connections from first byte to close, including the
//! upstream connections they open (each thread has its own pool, see [`crate::upstream`]).
//!
//! Why not axum's `serve` on the process's multi-threaded runtime: there, one proxied request
//! hops between threads several times (client connection task → handler → upstream
//! connection task and back), each hop a futex wake-up, and on a small machine that cost is
//! most of the gateway's CPU. nginx's model, one event loop per core that owns its
//! connections, avoids it: on 2 cores it took `bench/gateway` from 9.4k to 17k requests/s.
//!
//! Why hyper's connection builder here and not `axum::serve` on each worker: the service a
//! connection calls is the gateway itself ([`crate::Gateway::service`]), so tenant traffic
//! never passes axum's router; with that and the per-thread upstream pool, pug's user CPU per
//! proxied request in `bench/gateway` fell from ~9 to ~6.3 µs (see bench/gateway/results.md).
//! Connections are served as `axum::serve` serves them: HTTP/1.1 or HTTP/2 (prior
//! knowledge), upgrades, graceful shutdown, the peer address as `ConnectInfo`.
//!
//! Why one acceptor and not `SO_REUSEPORT` sockets per worker: with reuse-port, a second pug
//! (or anything of the same user) could bind the same port and silently take part of the
//! traffic; with one listener a second pug fails to start, as it should. Connections are
//! handed out round robin; the acceptor costs one cross-thread hand-off per connection, not
//! per request.
//!
//! Must not: run blocking or long CPU work on a worker (one thread serves many connections);
//! the store, controller and timers stay on the main runtime.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::extract::Request;
use axum::response::Response;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tower::{Service, ServiceExt as _};

/// The number of workers for a configured value: `0` means one per CPU core.
pub fn worker_count(configured: usize) -> usize {
    if configured > 0 {
        return configured;
    }
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Serves `service` (pug's router, or the gateway in front of it: see
/// [`crate::Gateway::service`]) on `listener` with `workers` worker threads until `shutdown` is
/// cancelled, then lets open requests finish (graceful shutdown) and returns.
///
/// Each request carries its peer address as axum's `ConnectInfo<SocketAddr>`, as with
/// `into_make_service_with_connect_info`.
pub async fn serve<S>(
    listener: TcpListener,
    service: S,
    workers: usize,
    shutdown: CancellationToken,
) -> io::Result<()>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let mut senders = Vec::with_capacity(workers);
    let mut threads = Vec::with_capacity(workers);
    for i in 0..workers.max(1) {
        let (tx, rx) = mpsc::unbounded_channel();
        senders.push(tx);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name(format!("pug-http-{i}"))
            .build()?;
        let service = service.clone();
        let shutdown = shutdown.clone();
        let thread = std::thread::Builder::new()
            .name(format!("pug-http-{i}"))
            .spawn(move || runtime.block_on(worker(rx, service, shutdown)))?;
        threads.push(thread);
    }

    let mut next = 0usize;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // As axum does: connection errors concern one client; anything else (out of
                // file descriptors) gets a short pause instead of a busy loop.
                if !is_connection_error(&e) {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                continue;
            }
        };
        // No Nagle delay on small proxied writes (nginx's tcp_nodelay).
        let _ = stream.set_nodelay(true);
        let Ok(stream) = stream.into_std() else {
            continue;
        };
        // A worker that has stopped (it only stops at shutdown) drops the connection.
        let _ = senders[next % senders.len()].send((stream, peer));
        next = next.wrapping_add(1);
    }
    drop(senders);
    tokio::task::spawn_blocking(move || {
        for t in threads {
            let _ = t.join();
        }
    })
    .await
    .map_err(io::Error::other)
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// One worker's event loop: serves the connections the acceptor hands it, HTTP/1.1 or
/// HTTP/2 (prior knowledge) with upgrades, as `axum::serve` does, until shutdown; then tells
/// each connection to finish its current request and waits for them.
async fn worker<S>(
    mut rx: mpsc::UnboundedReceiver<(std::net::TcpStream, SocketAddr)>,
    service: S,
    shutdown: CancellationToken,
) where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http2().enable_connect_protocol();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            handed = rx.recv() => match handed {
                Some(h) => h,
                None => break,
            },
        };
        // Registers the socket with this worker's event loop.
        let stream = match TcpStream::from_std(stream) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot adopt a connection");
                continue;
            }
        };
        let service = service.clone();
        let hyper_service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let mut req = req.map(Body::new);
            req.extensions_mut().insert(ConnectInfo(peer));
            service.clone().oneshot(req)
        });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), hyper_service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::trace!(error = %e, "connection ended with an error");
            }
        });
    }
    graceful.shutdown().await;
}

#[cfg(test)]
mod tests {
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
            let client = reqwest::Client::builder()
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
    fn zero_workers_means_one_per_core() {
        assert!(worker_count(0) >= 1);
        assert_eq!(worker_count(3), 3);
    }
}
