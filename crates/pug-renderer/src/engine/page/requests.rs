//! What a page's requests do: the URL policy applied to each one as the browser pauses it
//! (with Grafana's `X-Access-Token` added for the page's own origin), the count of requests
//! in flight for network idleness, and Grafana's "render complete" binding.
//!
//! Owns: the three event consumers a [`super::PageSession`] runs while it lives.
//!
//! Must not: decide readiness (that is [`super::readiness`]) or which URLs are allowed (that is
//! [`crate::security`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use chromiumoxide::cdp::browser_protocol::fetch::{
    ContinueRequestParams, EventRequestPaused, FailRequestParams, HeaderEntry,
};
use chromiumoxide::cdp::browser_protocol::network::{
    ErrorReason, EventLoadingFailed, EventLoadingFinished, EventRequestWillBeSent, ResourceType,
};
use chromiumoxide::cdp::js_protocol::runtime::EventBindingCalled;
use chromiumoxide::Page;
use futures::StreamExt;
use tokio::time::Instant;
use url::Url;

use super::{Shared, BINDING};
use crate::security::{Scope, UrlPolicy};

/// Continues or fails every request the page makes: documents (navigations, redirects, frames)
/// against the allow-list and scope, everything else against the always-refused addresses.
pub(super) async fn enforce_policy(
    page: Page,
    mut paused: chromiumoxide::listeners::EventStream<EventRequestPaused>,
    policy: UrlPolicy,
    scope: Scope,
    access: Option<(String, String)>,
    shared: Arc<Shared>,
) {
    let main_frame = page.target_id().as_ref().to_owned();
    while let Some(ev) = paused.next().await {
        let is_document = ev.resource_type == ResourceType::Document;
        let parsed = Url::parse(&ev.request.url);
        if let Ok(url) = &parsed {
            let origin = url.origin();
            if origin.is_tuple() {
                if let Ok(mut r) = shared.residue.lock() {
                    r.origins.insert(origin.ascii_serialization());
                }
            }
        }
        let verdict = match parsed {
            Err(_) => Err(format!("{:?} is not a valid URL", ev.request.url)),
            Ok(url) if is_document => match policy.check_navigation(&url, &scope) {
                Ok(()) => UrlPolicy::check_resolved(&url).await.map_err(|r| r.0),
                Err(r) => Err(r.0),
            },
            Ok(url) => UrlPolicy::check_subresource(&url).map_err(|r| r.0),
        };
        let page = page.clone();
        let id = ev.request_id.clone();
        match verdict {
            Ok(()) => {
                let mut next = ContinueRequestParams::new(id);
                if let Some((origin, token)) = &access {
                    let same_origin = Url::parse(&ev.request.url)
                        .is_ok_and(|u| u.origin().ascii_serialization() == *origin);
                    if same_origin {
                        next.headers = Some(with_header(
                            ev.request.headers.inner(),
                            "X-Access-Token",
                            token,
                        ));
                    }
                }
                tokio::spawn(async move {
                    // A request left paused never finishes: say so, the render's 408 names it.
                    if let Err(e) = page.execute(next).await {
                        tracing::warn!(error = %e, "continuing a paused request failed");
                    }
                });
            }
            Err(reason) => {
                tracing::info!(url = %ev.request.url, %reason, "request refused");
                if is_document && ev.frame_id.as_ref() == main_frame {
                    if let Ok(mut r) = shared.refused.lock() {
                        r.get_or_insert(reason);
                    }
                    shared.changed.notify_waiters();
                }
                tokio::spawn(async move {
                    let fail = FailRequestParams::new(id, ErrorReason::BlockedByClient);
                    if let Err(e) = page.execute(fail).await {
                        tracing::warn!(error = %e, "failing a refused request failed");
                    }
                });
            }
        }
    }
}

/// A request's headers (CDP's JSON object) with `name` set to `value`.
fn with_header(headers: &serde_json::Value, name: &str, value: &str) -> Vec<HeaderEntry> {
    let mut out: Vec<HeaderEntry> = headers
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| !k.eq_ignore_ascii_case(name))
        .map(|(k, v)| HeaderEntry::new(k.clone(), v.as_str().unwrap_or_default()))
        .collect();
    out.push(HeaderEntry::new(name, value));
    out
}

/// Counts requests in flight. Left out: EventSource and WebSocket (they never finish);
/// `data:` and `blob:` URLs (no network; the error page Chromium shows in a blocked frame
/// starts `data:` images that never report an end); and the documents of child frames (a frame
/// in a process of its own reports its document's end to its own CDP session, never to this
/// one, and the main document's `readyState` already waits for every frame's load).
pub(super) async fn track_network(
    main_frame: String,
    mut started: chromiumoxide::listeners::EventStream<EventRequestWillBeSent>,
    mut finished: chromiumoxide::listeners::EventStream<EventLoadingFinished>,
    mut failed: chromiumoxide::listeners::EventStream<EventLoadingFailed>,
    shared: Arc<Shared>,
) {
    let touch = |shared: &Shared| {
        if let Ok(mut l) = shared.last_network.lock() {
            *l = Some(Instant::now());
        }
    };
    loop {
        tokio::select! {
            Some(ev) = started.next() => {
                let streaming = matches!(ev.r#type, Some(ResourceType::EventSource | ResourceType::WebSocket));
                let child_document = ev.r#type == Some(ResourceType::Document)
                    && ev.frame_id.as_ref().is_some_and(|f| f.as_ref() != main_frame);
                let local = ev.request.url.starts_with("data:") || ev.request.url.starts_with("blob:");
                if !streaming && !child_document && !local {
                    if let Ok(mut s) = shared.in_flight.lock() {
                        s.insert(ev.request_id.as_ref().to_owned(), ev.request.url.clone());
                    }
                }
                touch(&shared);
            }
            Some(ev) = finished.next() => {
                if let Ok(mut s) = shared.in_flight.lock() {
                    s.remove(ev.request_id.as_ref());
                }
                touch(&shared);
            }
            Some(ev) = failed.next() => {
                if let Ok(mut s) = shared.in_flight.lock() {
                    s.remove(ev.request_id.as_ref());
                }
                touch(&shared);
            }
            else => break,
        }
    }
}

/// Waits for Grafana's `REPORT_RENDER_COMPLETE` through the binding.
pub(super) async fn watch_binding(
    mut bindings: chromiumoxide::listeners::EventStream<EventBindingCalled>,
    shared: Arc<Shared>,
) {
    while let Some(ev) = bindings.next().await {
        if ev.name != BINDING {
            continue;
        }
        let msg: serde_json::Value = serde_json::from_str(&ev.payload).unwrap_or_default();
        if msg["type"] == "REPORT_RENDER_COMPLETE" {
            if msg["data"]["success"] != true {
                tracing::warn!(payload = %ev.payload, "Grafana reported an unsuccessful render");
            }
            shared.binding_done.store(true, Ordering::Release);
            shared.changed.notify_waiters();
        }
    }
}
