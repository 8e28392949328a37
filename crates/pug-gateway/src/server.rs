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
//! Limits ([`Limits`]): a client gets `header_read_timeout` for its first bytes and for each
//! request's headers (which for HTTP/1 is also the idle time allowed between requests); HTTP/2
//! connections are pinged; connections are capped in total (below the open-file limit, which
//! pug raises to its hard limit at start) and per client address, and a connection over a cap
//! is closed at once, so idle or slow clients cannot exhaust file descriptors or block new
//! requests. WebSocket tunnels end after `tunnel_idle_timeout` without traffic ([`tunnel`]).
//!
//! Must not: run blocking or long CPU work on a worker (one thread serves many connections);
//! the store, controller and timers stay on the main runtime.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future as _;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::extract::Request;
use axum::response::Response;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
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

/// The limits of pug's port.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Open connections at most; 0: derived from the open-file limit alone.
    pub max_connections: usize,
    /// Open connections per client address (IPv6: per /64) at most.
    pub max_connections_per_client: usize,
    /// Time allowed for the first bytes, each request's headers, and HTTP/1 idle keep-alive.
    pub header_read_timeout: Duration,
    /// HTTP/2 keep-alive ping interval (and the time allowed for the answer).
    pub http2_keep_alive: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        let g = pug_config::GatewayConfig::default();
        Self::from_config(&g)
    }
}

impl Limits {
    /// The limits of the `gateway` settings.
    pub fn from_config(g: &pug_config::GatewayConfig) -> Self {
        Self {
            max_connections: g.max_connections,
            max_connections_per_client: g.max_connections_per_client,
            header_read_timeout: Duration::from_secs(g.header_read_timeout_secs),
            http2_keep_alive: Duration::from_secs(g.http2_keep_alive_secs),
        }
    }
}

/// The total connection cap for a configured cap and the open-file limit: a quarter of the
/// descriptors (at least 64) stays free for the store, upstream connections and Grafana's
/// processes, so a full port never makes pug itself fail.
pub fn connection_cap(configured: usize, open_files: u64) -> usize {
    let reserve = (open_files / 4).max(64);
    let by_files = open_files.saturating_sub(reserve).max(16) as usize;
    if configured == 0 {
        by_files
    } else {
        configured.min(by_files)
    }
}

/// Raises the soft open-file limit to the hard one (as Go and nginx do); returns the limit
/// now in force.
fn raise_open_files() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => {
            if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
                hard
            } else {
                soft
            }
        }
        Err(_) => 1024,
    }
}

/// Open connections, in total and by client address; a [`Slot`] is one of them.
#[derive(Default)]
struct Connections {
    by_client: Mutex<HashMap<IpAddr, usize>>,
    total: std::sync::atomic::AtomicUsize,
}

/// An open connection, counted until dropped.
struct Slot {
    table: Arc<Connections>,
    client: IpAddr,
}

impl Connections {
    /// A slot for a connection from `client`, or `None` when a cap is reached.
    fn admit(
        table: &Arc<Self>,
        client: IpAddr,
        total_cap: usize,
        per_client: usize,
    ) -> Option<Slot> {
        let client = crate::throttle::client_key(client);
        let mut by_client = crate::throttle::lock(&table.by_client);
        if table.total.load(Ordering::Relaxed) >= total_cap {
            return None;
        }
        let n = by_client.entry(client).or_insert(0);
        if *n >= per_client {
            return None;
        }
        *n += 1;
        table.total.fetch_add(1, Ordering::Relaxed);
        Some(Slot {
            table: table.clone(),
            client,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut by_client = crate::throttle::lock(&self.table.by_client);
        if let Some(n) = by_client.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                by_client.remove(&self.client);
            }
        }
        self.table.total.fetch_sub(1, Ordering::Relaxed);
    }
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
    serve_with(listener, service, workers, Limits::default(), shutdown).await
}

/// [`serve`] with the given limits.
pub async fn serve_with<S>(
    listener: TcpListener,
    service: S,
    workers: usize,
    limits: Limits,
    shutdown: CancellationToken,
) -> io::Result<()>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let open_files = raise_open_files();
    let total_cap = connection_cap(limits.max_connections, open_files);
    let per_client = limits.max_connections_per_client.max(1);
    let connections = Arc::new(Connections::default());
    let mut refused_logged: Option<Instant> = None;
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
        let limits = limits.clone();
        let thread = std::thread::Builder::new()
            .name(format!("pug-http-{i}"))
            .spawn(move || runtime.block_on(worker(rx, service, limits, shutdown)))?;
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
        let Some(slot) = Connections::admit(&connections, peer.ip(), total_cap, per_client) else {
            // Closed at once: over a cap, a connection costs nothing but this accept.
            if refused_logged.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                refused_logged = Some(Instant::now());
                tracing::warn!(client = %peer.ip(), total_cap, per_client, "gateway: connection cap reached; closing new connections");
            }
            drop(stream);
            continue;
        };
        // No Nagle delay on small proxied writes (nginx's tcp_nodelay).
        let _ = stream.set_nodelay(true);
        let Ok(stream) = stream.into_std() else {
            continue;
        };
        // A worker that has stopped (it only stops at shutdown) drops the connection.
        let _ = senders[next % senders.len()].send((stream, peer, slot));
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
    mut rx: mpsc::UnboundedReceiver<(std::net::TcpStream, SocketAddr, Slot)>,
    service: S,
    limits: Limits,
    shutdown: CancellationToken,
) where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .enable_connect_protocol()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.http2_keep_alive)
        .keep_alive_timeout(limits.http2_keep_alive);
    loop {
        let (stream, peer, slot) = tokio::select! {
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
        let stream = FirstBytes::new(stream, limits.header_read_timeout);
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), hyper_service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = conn.await {
                tracing::trace!(error = %e, "connection ended with an error");
            }
        });
    }
    graceful.shutdown().await;
}

/// Bytes a connection must send within the header timeout before hyper takes over: hyper's
/// own header timeout only starts once the protocol is known, and hyper-util's detection of
/// HTTP/1 versus HTTP/2 (the 24-byte preface) waits without a limit. Hand-written because
/// neither hyper nor hyper-util offers this timeout.
const PREFACE_LEN: usize = 24;

/// A connection that fails its reads with `TimedOut` if its first [`PREFACE_LEN`] bytes have
/// not arrived within the deadline (an idle or Slowloris client before its first request).
struct FirstBytes<T> {
    io: T,
    seen: usize,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> FirstBytes<T> {
    fn new(io: T, timeout: Duration) -> Self {
        Self {
            io,
            seen: 0,
            deadline: Some(Box::pin(tokio::time::sleep(timeout))),
        }
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for FirstBytes<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                this.seen += buf.filled().len() - before;
                if this.seen >= PREFACE_LEN {
                    this.deadline = None;
                }
                Poll::Ready(r)
            }
            Poll::Pending => match this.deadline.as_mut().map(|d| d.as_mut().poll(cx)) {
                Some(Poll::Ready(())) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no request within the header timeout",
                ))),
                _ => Poll::Pending,
            },
        }
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for FirstBytes<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// An IO whose reads and writes stamp `last` (milliseconds since `epoch`).
struct Stamped<'a, T> {
    io: &'a mut T,
    epoch: Instant,
    last: &'a AtomicU64,
}

impl<T> Stamped<'_, T> {
    fn stamp(&self) {
        self.last
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Stamped<'_, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut *self.io).poll_read(cx, buf);
        if r.is_ready() {
            self.stamp();
        }
        r
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Stamped<'_, T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut *self.io).poll_write(cx, buf);
        if r.is_ready() {
            self.stamp();
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.io).poll_shutdown(cx)
    }
}

/// Copies a WebSocket tunnel both ways until either side closes or nothing has moved either
/// way for `idle` (tokio's `copy_bidirectional` has no idle limit; an idle tunnel would pin a
/// client connection, an upstream connection and a Grafana goroutine for ever).
pub(crate) async fn tunnel<A, B>(client: &mut A, upstream: &mut B, idle: Duration)
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let epoch = Instant::now();
    let last = AtomicU64::new(0);
    let mut a = Stamped {
        io: client,
        epoch,
        last: &last,
    };
    let mut b = Stamped {
        io: upstream,
        epoch,
        last: &last,
    };
    let copy = tokio::io::copy_bidirectional(&mut a, &mut b);
    let watch = async {
        loop {
            let since = Duration::from_millis(last.load(Ordering::Relaxed));
            let quiet = epoch.elapsed().saturating_sub(since);
            if quiet >= idle {
                return;
            }
            tokio::time::sleep(idle - quiet).await;
        }
    };
    tokio::select! {
        _ = copy => {}
        () = watch => tracing::debug!("closing a WebSocket tunnel idle for {idle:?}"),
    }
}

#[cfg(test)]
mod tests;
