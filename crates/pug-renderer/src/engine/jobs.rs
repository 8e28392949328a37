//! The two kinds of render, as steps on a page the engine hands out: PNG/PDF (open, navigate,
//! wait until ready, size, capture) and CSV (allow downloads, navigate, wait for the file).
//!
//! Owns: the order of the steps and what each reports to the render's [`super::Progress`].
//!
//! Must not: admit, enforce deadlines or pick the browser ([`Inner::with_context`] does), or
//! talk CDP itself (that is [`super::page`]).

use std::sync::Arc;

use tokio::time::Instant;

use super::page::{self, PageSession, Viewport};
use super::{admission, CsvFile, Inner, Rendered};
use crate::error::RenderError;
use crate::params::{CsvRequest, Encoding, Height, RenderRequest};
use crate::security::Scope;

impl Inner {
    pub(super) async fn render_png_pdf(
        self: &Arc<Self>,
        req: RenderRequest,
        scope: Scope,
        deadline: Instant,
    ) -> Result<Rendered, RenderError> {
        let timeout = req.page.timeout;
        let key = admission::fair_key(&scope, req.page.tenant.as_deref());
        let full_page = req.height == Height::FullPage;
        let viewport = Viewport {
            width: req.width,
            height: match req.height {
                Height::Fixed(h) => h,
                Height::FullPage => (req.width * 3 / 4).max(1),
            },
            scale: req.scale,
        };
        let policy = self.policy.clone();
        let readiness = self.config.readiness.clone();
        let max_full = self.config.viewport.max_full_page_height;
        self.with_context(
            deadline,
            timeout,
            &scope.clone(),
            &key,
            true,
            |instance, blank, progress| async move {
                let t0 = Instant::now();
                let session = PageSession::open(
                    blank,
                    &req.page,
                    viewport,
                    policy,
                    scope,
                    &instance.user_agent,
                    progress.clone(),
                )
                .await?;
                let t1 = Instant::now();
                session.navigate(&req.page.url).await?;
                let t2 = Instant::now();
                let mode = session.wait_ready(&readiness, true).await?;
                if full_page && req.encoding == Encoding::Png {
                    progress.set("sizing the page to its content");
                    session
                        .fit_to_content(viewport, max_full, &readiness)
                        .await?;
                }
                let t3 = Instant::now();
                progress.set("capturing the page");
                let bytes = match req.encoding {
                    Encoding::Png => session.png().await?,
                    Encoding::Pdf => session.pdf(&req.pdf, req.scale).await?,
                };
                let ms = |a: Instant, b: Instant| b.duration_since(a).as_millis() as u64;
                tracing::debug!(
                    prepare_ms = ms(t0, t1),
                    navigate_ms = ms(t1, t2),
                    ready_ms = ms(t2, t3),
                    capture_ms = ms(t3, Instant::now()),
                    ?mode,
                    "render phases"
                );
                Ok(Rendered {
                    bytes,
                    encoding: req.encoding,
                    readiness: mode,
                })
            },
        )
        .await
    }

    pub(super) async fn render_csv(
        self: &Arc<Self>,
        req: CsvRequest,
        scope: Scope,
        deadline: Instant,
    ) -> Result<CsvFile, RenderError> {
        let timeout = req.page.timeout;
        let key = admission::fair_key(&scope, req.page.tenant.as_deref());
        let policy = self.policy.clone();
        let vp = &self.config.viewport;
        let viewport = Viewport {
            width: vp.default_width,
            height: vp.default_height,
            scale: 1.0,
        };
        let poll = self.config.readiness.poll_interval;
        // A download directory is a per-context setting: CSV exports never reuse a page.
        self.with_context(
            deadline,
            timeout,
            &scope.clone(),
            &key,
            false,
            |instance, blank, progress| async move {
                let dir = tempfile::Builder::new()
                    .prefix("csv-")
                    .tempdir_in(&instance.scratch)
                    .map_err(|e| {
                        RenderError::Internal(format!("creating a download directory: {e}"))
                    })?;
                if let Some(uid) = instance.uid {
                    // The browser's own user writes the download.
                    std::os::unix::fs::chown(dir.path(), Some(uid), Some(uid)).map_err(|e| {
                        RenderError::Internal(format!(
                            "handing the download directory to the browser's user: {e}"
                        ))
                    })?;
                }
                page::allow_downloads(&instance, &blank.ctx, dir.path()).await?;
                let session = PageSession::open(
                    blank,
                    &req.page,
                    viewport,
                    policy,
                    scope,
                    &instance.user_agent,
                    progress.clone(),
                )
                .await?;
                session.navigate(&req.page.url).await?;
                progress.set("waiting for the CSV download");
                let (downloaded, bytes) = page::wait_for_csv(dir.path(), poll).await?;
                let file_name = req
                    .file_name
                    .or_else(|| crate::security::safe_csv_file_name(&downloaded))
                    .unwrap_or_else(|| "data.csv".to_owned());
                Ok(CsvFile { bytes, file_name })
            },
        )
        .await
    }
}
