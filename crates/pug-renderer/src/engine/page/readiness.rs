//! When a page is ready: the readiness rules (research/renderer.md §3) as a loop over the
//! page's own signals and its network, and the full-page sizing that waits again.
//!
//! Owns: what is polled ([`OBSERVE_JS`]), in which order the signals count (Grafana's binding,
//! scenes query counting plus network idle, legacy `panelsRendered`, plain network idle), and
//! what the render's progress says while it waits.
//!
//! Must not: bound the wait (the engine's deadline does) or capture.

use std::sync::atomic::Ordering;
use std::time::Duration;

use chromiumoxide::cdp::browser_protocol::emulation::SetDeviceMetricsOverrideParams;
use chromiumoxide::cdp::js_protocol::runtime::EvaluateParams;
use tokio::time::Instant;

use super::{cdp, PageSession, Viewport};
use crate::config::ReadinessConfig;
use crate::engine::progress;
use crate::error::RenderError;
use crate::metrics::ReadinessMode;

/// One poll of the page's own readiness signals.
const OBSERVE_JS: &str = r#"(() => {
  const w = window;
  return {
    complete: document.readyState === 'complete',
    binding: w.__grafanaRenderBindingSupported === true,
    scenes: !!w.__grafanaSceneContext,
    running: typeof w.__grafanaRunningQueryCount === 'number' ? w.__grafanaRunningQueryCount : 0,
    rendered: typeof w.panelsRendered === 'number' ? w.panelsRendered : 0,
    panels: document.querySelectorAll('.panel-solo, [class$="panel-container"]').length,
  };
})()"#;

/// How long one readiness poll may go unanswered before it is asked again. A CDP command sent
/// while the page swaps its document can be dropped with the old context and never answered
/// (puppeteer rejects such calls itself when it sees the context destroyed); without a bound
/// one lost poll would hold the render until its deadline and end it as a 408 with a stale
/// reason.
const OBSERVE_TIMEOUT: Duration = Duration::from_secs(2);

/// The element that scrolls: Grafana's `#page-scrollbar` (≥ 11.1), else the document.
const SCROLLER_JS: &str =
    "(document.querySelector('#page-scrollbar') || document.scrollingElement || document.documentElement)";

/// What [`OBSERVE_JS`] returns.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
struct Observation {
    complete: bool,
    binding: bool,
    scenes: bool,
    running: f64,
    rendered: f64,
    panels: u32,
}

impl Observation {
    /// What the page itself says it still waits for, if anything (for a timeout's message).
    fn not_ready(&self, use_binding: bool) -> Option<String> {
        if use_binding && self.binding {
            Some("Grafana has not reported the render complete".to_owned())
        } else if !self.complete {
            Some("the document has not finished loading".to_owned())
        } else if self.scenes && self.running > 0.0 {
            Some(format!("Grafana reports {} queries running", self.running))
        } else if !self.scenes && self.panels > 0 && self.rendered < f64::from(self.panels) {
            Some(format!(
                "{} of {} panels rendered",
                self.rendered, self.panels
            ))
        } else {
            None
        }
    }
}

impl PageSession {
    pub(super) fn network(&self) -> (usize, Option<Instant>) {
        let n = self.shared.in_flight.lock().map(|s| s.len()).unwrap_or(0);
        let last = self.shared.last_network.lock().ok().and_then(|l| *l);
        (n, last)
    }

    /// The URLs of the requests in flight, oldest id first (ids are sequential per page).
    fn pending_urls(&self) -> Vec<String> {
        let Ok(s) = self.shared.in_flight.lock() else {
            return Vec::new();
        };
        let mut pending: Vec<(&String, &String)> = s.iter().collect();
        pending.sort();
        pending.into_iter().map(|(_, url)| url.clone()).collect()
    }

    async fn observe(&self) -> Option<Observation> {
        let eval = EvaluateParams::builder()
            .expression(OBSERVE_JS)
            .return_by_value(true)
            .build()
            .ok()?;
        // Fails (or goes unanswered) while a navigation swaps the document: that poll simply
        // does not count, and the next one is asked.
        let res = match tokio::time::timeout(OBSERVE_TIMEOUT, self.page.execute(eval)).await {
            Ok(res) => res.ok()?,
            Err(_) => {
                tracing::warn!(
                    "a readiness poll got no answer from the page in {OBSERVE_TIMEOUT:?}; asking again"
                );
                return None;
            }
        };
        serde_json::from_value(res.result.result.value?).ok()
    }

    async fn eval_f64(&self, expression: String) -> Result<f64, RenderError> {
        let eval = EvaluateParams::builder()
            .expression(expression)
            .return_by_value(true)
            .build()
            .map_err(RenderError::Internal)?;
        let res = self.page.execute(eval).await.map_err(cdp("evaluating"))?;
        Ok(res
            .result
            .result
            .value
            .and_then(|v| v.as_f64())
            .unwrap_or(0.0))
    }

    /// Waits until the page is ready, by the first signal the page supports.
    ///
    /// `use_binding = false` ignores Grafana's one-shot binding report (it has already fired)
    /// and decides by the polled signals: after a full-page resize, lazily loaded panels are
    /// only visible there.
    pub async fn wait_ready(
        &self,
        cfg: &ReadinessConfig,
        use_binding: bool,
    ) -> Result<ReadinessMode, RenderError> {
        let mut last: Option<Observation> = None;
        let mut stable_since = Instant::now();
        loop {
            if let Some(refused) = self.refused() {
                return Err(RenderError::Forbidden(refused));
            }
            if use_binding && self.shared.binding_done.load(Ordering::Acquire) {
                return Ok(ReadinessMode::Binding);
            }
            let obs = self.observe().await;
            let page = obs.as_ref().and_then(|o| o.not_ready(use_binding));
            self.progress
                .set(progress::readiness(&self.pending_urls(), page.as_deref()));
            let now = Instant::now();
            if obs != last {
                stable_since = now;
                last = obs.clone();
            }
            if let Some(o) = obs
                .as_ref()
                .filter(|o| o.complete && !(use_binding && o.binding))
            {
                let (in_flight, last_net) = self.network();
                let calm_since = last_net.map_or(stable_since, |t| t.max(stable_since));
                if in_flight == 0 && now.duration_since(calm_since) >= cfg.quiet_period {
                    if o.scenes {
                        if o.running <= 0.0 {
                            return Ok(ReadinessMode::Queries);
                        }
                    } else if o.panels > 0 {
                        if o.rendered >= f64::from(o.panels) {
                            return Ok(ReadinessMode::LegacyPanels);
                        }
                    } else {
                        return Ok(ReadinessMode::NetworkIdle);
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(cfg.poll_interval) => {}
                _ = self.shared.changed.notified() => {}
            }
        }
    }

    /// Waits until no request has been in flight for `quiet`.
    async fn wait_network_quiet(&self, quiet: Duration, poll: Duration) {
        loop {
            let (n, last) = self.network();
            if n == 0 && last.is_none_or(|t| t.elapsed() >= quiet) {
                return;
            }
            tokio::time::sleep(poll).await;
        }
    }

    /// Full-page mode: scrolls through the page so lazy panels load, then sizes the viewport
    /// to the content and waits for readiness again. Returns the final height.
    pub async fn fit_to_content(
        &self,
        viewport: Viewport,
        max_height: u32,
        cfg: &ReadinessConfig,
    ) -> Result<u32, RenderError> {
        let scroll_height = self.eval_f64(format!("{SCROLLER_JS}.scrollHeight")).await?;
        let client_height = self
            .eval_f64(format!("{SCROLLER_JS}.clientHeight"))
            .await?
            .max(1.0);
        let steps = (scroll_height / client_height).floor() as u32;
        for step in 1..=steps.min(50) {
            self.eval_f64(format!(
                "{SCROLLER_JS}.scrollTop = {}",
                f64::from(step) * client_height
            ))
            .await?;
            self.wait_network_quiet(cfg.poll_interval * 2, cfg.poll_interval)
                .await;
        }
        self.eval_f64(format!("{SCROLLER_JS}.scrollTop = 0"))
            .await?;

        // Sizing can change the layout (responsive grids), so measure until it settles.
        let mut height = viewport.height;
        for _ in 0..3 {
            let content = self
                .eval_f64(format!(
                    "(() => {{ const d = document.documentElement, s = {SCROLLER_JS}; \
                     let h = Math.max(d.scrollHeight, document.body ? document.body.scrollHeight : 0); \
                     if (s !== document.scrollingElement && s !== d) h += Math.max(0, s.scrollHeight - s.clientHeight); \
                     return Math.ceil(h); }})()"
                ))
                .await?;
            let wanted = (content as u32).clamp(1, max_height);
            if wanted == height {
                break;
            }
            height = wanted;
            self.page
                .execute(SetDeviceMetricsOverrideParams::new(
                    viewport.width as i64,
                    height as i64,
                    viewport.scale,
                    false,
                ))
                .await
                .map_err(cdp("resizing"))?;
            self.wait_ready(cfg, false).await?;
        }
        Ok(height)
    }
}
