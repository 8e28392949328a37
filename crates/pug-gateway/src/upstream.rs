//! Keep-alive HTTP/1.1 connections to tenants' instances: one pool per thread.
//!
//! Owns: opening a connection to an instance (connect timeout, no Nagle, TCP keep-alive),
//! sending one request on it, and keeping it for the next request to the same address once the
//! response body has been read to its end; idle connections expire.
//!
//! Why not hyper-util's legacy `Client`: on the gateway's hot path it cost ~1.4 µs of CPU per
//! request more than this (measured with `bench/gateway` against a bare hyper proxy using each:
//! 4.3 against 2.9 µs user time per request). Its pool is a shared, locked map with checkout
//! futures and a connection-racing state machine that a per-thread pool does not need: every
//! worker of [`crate::server`] is a single-threaded event loop, so its connections never
//! cross threads.
//!
//! Must not: hold a connection in the pool while a response is still being read from it, reuse
//! a connection after an upgrade (WebSocket), or resend a request that may have reached the
//! instance (only a request the connection never took is sent again, on a new connection).

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// An idle connection unused this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// At most this many idle connections are kept per address and thread.
const MAX_IDLE_PER_ADDR: usize = 512;
/// TCP keep-alive probes on upstream connections start after this much silence.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// Why a request did not get a response from an instance.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the connection to {addr} failed: {source}")]
    Request {
        addr: String,
        #[source]
        source: hyper::Error,
    },
}

impl UpstreamError {
    /// Whether no connection could be made (the request never left pug).
    pub fn is_connect(&self) -> bool {
        matches!(self, UpstreamError::Connect { .. })
    }
}

struct Idle {
    sender: SendRequest<Body>,
    since: Instant,
}

#[derive(Default)]
struct Pool {
    idle: HashMap<Box<str>, VecDeque<Idle>>,
    last_sweep: Option<Instant>,
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::new(Pool::default());
}

impl Pool {
    /// The most recently used idle connection to `addr` that is still open.
    fn take(&mut self, addr: &str) -> Option<SendRequest<Body>> {
        let queue = self.idle.get_mut(addr)?;
        while let Some(idle) = queue.pop_back() {
            if !idle.sender.is_closed() && idle.since.elapsed() < IDLE_TIMEOUT {
                return Some(idle.sender);
            }
        }
        None
    }

    fn give_back(&mut self, addr: &str, sender: SendRequest<Body>) {
        let now = Instant::now();
        if self
            .last_sweep
            .is_none_or(|t| now.duration_since(t) > IDLE_TIMEOUT)
        {
            self.sweep(now);
        }
        let queue = match self.idle.get_mut(addr) {
            Some(q) => q,
            None => self.idle.entry(addr.into()).or_default(),
        };
        // Oldest first: expired connections leave from the front.
        while queue
            .front()
            .is_some_and(|i| now.duration_since(i.since) >= IDLE_TIMEOUT)
        {
            queue.pop_front();
        }
        if queue.len() < MAX_IDLE_PER_ADDR {
            queue.push_back(Idle { sender, since: now });
        }
    }

    /// Drops expired connections to every address (an address no longer used would otherwise
    /// keep its connections open).
    fn sweep(&mut self, now: Instant) {
        self.last_sweep = Some(now);
        self.idle.retain(|_, q| {
            q.retain(|i| !i.sender.is_closed() && now.duration_since(i.since) < IDLE_TIMEOUT);
            !q.is_empty()
        });
    }
}

/// Sends `req` (origin-form URI, headers as the instance should see them) to the instance at
/// `addr` (`host:port`) on a pooled connection or a new one.
pub(crate) async fn send(
    addr: &str,
    mut req: Request<Body>,
    connect_timeout: Duration,
) -> Result<Response<Body>, UpstreamError> {
    if !req.headers().contains_key(header::HOST) {
        if let Ok(host) = HeaderValue::from_str(addr) {
            req.headers_mut().insert(header::HOST, host);
        }
    }
    // Pooled connections first. One the instance closed a moment ago may still look open:
    // it refuses the request before sending any of it, and the next connection gets it.
    while let Some(mut sender) = POOL.with(|p| p.borrow_mut().take(addr)) {
        if sender.ready().await.is_err() {
            continue;
        }
        match sender.try_send_request(req).await {
            Ok(resp) => return Ok(pooled(addr, sender, resp)),
            Err(mut e) => match e.take_message() {
                Some(unsent) => req = unsent,
                None => {
                    return Err(UpstreamError::Request {
                        addr: addr.to_owned(),
                        source: e.into_error(),
                    })
                }
            },
        }
    }
    let mut sender = connect(addr, connect_timeout).await?;
    match sender.send_request(req).await {
        Ok(resp) => Ok(pooled(addr, sender, resp)),
        Err(source) => Err(UpstreamError::Request {
            addr: addr.to_owned(),
            source,
        }),
    }
}

async fn connect(addr: &str, timeout: Duration) -> Result<SendRequest<Body>, UpstreamError> {
    let err = |source| UpstreamError::Connect {
        addr: addr.to_owned(),
        source,
    };
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| {
            err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no connection within {} ms", timeout.as_millis()),
            ))
        })?
        .map_err(err)?;
    stream.set_nodelay(true).map_err(err)?;
    let keepalive = socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE);
    socket2::SockRef::from(&stream)
        .set_tcp_keepalive(&keepalive)
        .map_err(err)?;
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| err(std::io::Error::other(e)))?;
    // Drives the connection; ends when the connection closes (or, after an upgrade, hands the
    // socket over). On a gateway worker this task runs on the worker's own event loop.
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upstream connection ended");
        }
    });
    Ok(sender)
}

/// The response, whose body gives the connection back to the pool when it has been read to
/// its end.
fn pooled(addr: &str, sender: SendRequest<Body>, resp: Response<Incoming>) -> Response<Body> {
    let (parts, body) = resp.into_parts();
    if parts.status == StatusCode::SWITCHING_PROTOCOLS {
        // The connection now belongs to the upgrade.
        return Response::from_parts(parts, Body::new(body));
    }
    let mut body = PooledBody {
        inner: body,
        back: Some((sender, addr.into())),
    };
    if http_body::Body::is_end_stream(&body.inner) {
        body.give_back();
    }
    Response::from_parts(parts, Body::new(body))
}

/// A response body that returns its connection to this thread's pool at its end. Dropped
/// before its end (the client went away), the connection is closed instead: its unread rest
/// would otherwise be taken for the next response.
struct PooledBody {
    inner: Incoming,
    back: Option<(SendRequest<Body>, Box<str>)>,
}

impl PooledBody {
    fn give_back(&mut self) {
        if let Some((sender, addr)) = self.back.take() {
            POOL.with(|p| p.borrow_mut().give_back(&addr, sender));
        }
    }
}

impl http_body::Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.give_back(),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.give_back(),
            Poll::Ready(Some(Err(_))) => this.back = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// An HTTP/1.1 server on loopback that counts the connections it accepted and answers
    /// every request with its path; `close_after` requests per connection, then it closes.
    async fn server(close_after: usize) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (s, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let served = Arc::new(AtomicUsize::new(0));
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let n = served.fetch_add(1, Ordering::SeqCst) + 1;
                        async move {
                            let mut r = Response::new(http_body_util::Full::new(Bytes::from(
                                req.uri().path().to_owned(),
                            )));
                            if n >= close_after {
                                r.headers_mut()
                                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                            }
                            Ok::<_, std::convert::Infallible>(r)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        (addr, accepted)
    }

    async fn get(addr: &str, path: &str) -> Result<String, UpstreamError> {
        let req = Request::get(path).body(Body::empty()).unwrap();
        let resp = send(addr, req, Duration::from_secs(2)).await?;
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Ok(String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn reuses_a_connection_once_its_response_was_read() {
        let (addr, accepted) = server(usize::MAX).await;
        for i in 0..5 {
            assert_eq!(
                get(&addr, &format!("/r{i}")).await.unwrap(),
                format!("/r{i}")
            );
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_the_instance_closed_is_not_used_again() {
        let (addr, accepted) = server(1).await;
        for i in 0..4 {
            assert_eq!(
                get(&addr, &format!("/r{i}")).await.unwrap(),
                format!("/r{i}")
            );
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn concurrent_requests_get_their_own_connections() {
        let (addr, accepted) = server(usize::MAX).await;
        let req = |p: &str| Request::get(p).body(Body::empty()).unwrap();
        // Both responses are open (bodies unread) at once: two connections.
        let a = send(&addr, req("/a"), Duration::from_secs(2))
            .await
            .unwrap();
        let b = send(&addr, req("/b"), Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        let a = a.into_body().collect().await.unwrap().to_bytes();
        let b = b.into_body().collect().await.unwrap().to_bytes();
        assert_eq!((&a[..], &b[..]), (&b"/a"[..], &b"/b"[..]));
        // Both are back in the pool now.
        get(&addr, "/c").await.unwrap();
        get(&addr, "/d").await.unwrap();
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_response_dropped_before_its_end_does_not_give_its_connection_back() {
        let (addr, accepted) = server(usize::MAX).await;
        let req = Request::get("/a").body(Body::empty()).unwrap();
        let unread = send(&addr, req, Duration::from_secs(2)).await.unwrap();
        drop(unread);
        assert_eq!(get(&addr, "/b").await.unwrap(), "/b");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn idle_connections_expire() {
        let (addr, accepted) = server(usize::MAX).await;
        get(&addr, "/a").await.unwrap();
        // Age the pooled connection past the idle timeout.
        POOL.with(|p| {
            for queue in p.borrow_mut().idle.values_mut() {
                for idle in queue.iter_mut() {
                    idle.since = Instant::now()
                        .checked_sub(IDLE_TIMEOUT + Duration::from_secs(1))
                        .unwrap();
                }
            }
        });
        get(&addr, "/b").await.unwrap();
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        // Only the new connection is kept.
        let kept: usize = POOL.with(|p| p.borrow().idle.values().map(VecDeque::len).sum());
        assert_eq!(kept, 1);
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let e = get(&closed, "/").await.unwrap_err();
        assert!(e.is_connect(), "{e}");
        assert!(e.to_string().contains(&closed), "{e}");
    }
}
