//! The floor of pug's HTTP stack, for `bench/gateway/run.sh`: a bare reverse proxy on the same
//! pieces as the gateway (one acceptor, one single-threaded hyper event loop per core, a
//! per-thread pool of HTTP/1.1 upstream connections) that does nothing else: no session,
//! membership or routing lookup, no header rewriting beyond `Host`, no metrics. What the gateway
//! costs above this row is the cost of its own work per request.
//!
//! `proxy_floor <listen host:port> <upstream host:port>`; prints `ready`, serves until killed.

use std::cell::RefCell;
use std::net::SocketAddr;

use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

/// The allocator `pug` itself uses (see `crates/pug/src/main.rs`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

thread_local! {
    /// This thread's upstream connections (a connection whose response is still being read
    /// is not ready and is skipped).
    static POOL: RefCell<Vec<SendRequest<Incoming>>> = const { RefCell::new(Vec::new()) };
}

async fn forward(
    upstream: &'static str,
    mut req: Request<Incoming>,
) -> Result<Response<Incoming>, hyper::Error> {
    let pooled = POOL.with(|p| {
        let mut p = p.borrow_mut();
        p.retain(|s| !s.is_closed());
        p.iter()
            .position(SendRequest::is_ready)
            .map(|i| p.swap_remove(i))
    });
    let mut sender = match pooled {
        Some(s) => s,
        None => {
            let stream = TcpStream::connect(upstream)
                .await
                .expect("the upstream refused a connection");
            stream.set_nodelay(true).expect("TCP_NODELAY");
            let (sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            sender
        }
    };
    let origin_form = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse()
        .expect("a path and query parse as a URI");
    *req.uri_mut() = origin_form;
    let resp = sender.send_request(req).await?;
    POOL.with(|p| p.borrow_mut().push(sender));
    Ok(resp)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: proxy_floor <listen host:port> <upstream host:port>");
        std::process::exit(2);
    };
    let listen: SocketAddr = listen.parse().expect("listen address host:port");
    let upstream: &'static str = Box::leak(upstream.into_boxed_str());
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async move {
        let listener = TcpListener::bind(listen).await.expect("bind");
        let mut handoff = Vec::new();
        for _ in 0..workers {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<std::net::TcpStream>();
            handoff.push(tx);
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime");
                runtime.block_on(async move {
                    while let Some(stream) = rx.recv().await {
                        let stream = TcpStream::from_std(stream).expect("adopt a connection");
                        tokio::spawn(async move {
                            let service = hyper::service::service_fn(move |r| forward(upstream, r));
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        });
                    }
                });
            });
        }
        println!("ready");
        let mut next = 0;
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let _ = handoff[next % workers].send(stream.into_std().expect("a std socket"));
            next += 1;
        }
    });
}
