//! Counts a tenant response when its body ends (or is dropped), so streamed and long-lived
//! responses are measured for their whole life.
//!
//! Owns: the response body wrapper and the in-flight gauge's decrement.
//!
//! Must not: buffer or change the body.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::response::Response;

use crate::metrics::{self, GatewayMetrics};

/// Counts the response when its body ends (or is dropped).
pub(crate) fn track(
    response: Response,
    metrics: Arc<GatewayMetrics>,
    handles: metrics::Handles,
    start: Instant,
) -> Response {
    let (parts, body) = response.into_parts();
    let done = Done {
        metrics,
        handles,
        start,
    };
    Response::from_parts(
        parts,
        Body::new(Tracked {
            inner: body,
            done: Some(done),
        }),
    )
}

struct Done {
    metrics: Arc<GatewayMetrics>,
    handles: metrics::Handles,
    start: Instant,
}

impl Drop for Done {
    fn drop(&mut self) {
        self.handles.0.inc();
        self.handles.1.observe(self.start.elapsed().as_secs_f64());
        self.metrics.in_flight.dec();
    }
}

struct Tracked {
    inner: Body,
    done: Option<Done>,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.done.take();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
