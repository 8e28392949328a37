//! The seam through which renders count as their tenant's activity: inside `pug serve` a render
//! asked for with a tenant's `renderer_token` (Grafana's alert screenshots and scheduled
//! reports call the renderer directly, not through the gateway) keeps that tenant awake.
//!
//! Owns: [`RenderActivity`], which the API calls with the tenant of every render it admits,
//! and [`NoActivity`] (standalone `pug render`: no tenants, nothing to record).
//!
//! Must not: write anywhere itself or know about pug's store or gateway; `pug serve`
//! implements the trait over the gateway's batched activity table, so a render costs no store
//! write.

/// Told of every render (PNG, PDF, CSV) a tenant's token was accepted for.
pub trait RenderActivity: Send + Sync + 'static {
    /// `tenant`'s Grafana asked for a render. Called on the request's path: it must not block
    /// (mark the tenant used; write later, in a batch).
    fn rendered(&self, tenant: &str);
}

/// Records nothing: the standalone renderer's tokens are no tenant's.
pub struct NoActivity;

impl RenderActivity for NoActivity {
    fn rendered(&self, _tenant: &str) {}
}
