//! Every background loop `pug serve` starts, under one shutdown signal.
//!
//! Owns: the one [`CancellationToken`] handed to every loop (the gateway's refresh, sweep and
//! activity flush, the controller's queue and lease loops, the renderer's servers and token
//! refresh, the swarm observer), the [`JoinSet`] of the tasks spawned here, and stopping them:
//! cancel, wait a grace period, abort what is left.
//!
//! Must not: run a loop's work (each library owns its loop), or spawn a task that nothing
//! waits for.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Background tasks and the signal that ends them.
pub struct Background {
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
}

impl Default for Background {
    fn default() -> Self {
        Self::new()
    }
}

impl Background {
    pub fn new() -> Self {
        Self {
            shutdown: CancellationToken::new(),
            tasks: JoinSet::new(),
        }
    }

    /// The shutdown signal, for a loop that ends on it by itself.
    pub fn token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Spawns a task that ends on [`Background::token`] by itself.
    pub fn spawn(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(task);
    }

    /// Spawns a task that knows no shutdown signal: it is dropped at the signal.
    pub fn spawn_until_shutdown(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        let shutdown = self.token();
        self.tasks.spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = task => {}
            }
        });
    }

    /// How many tasks have not ended yet.
    pub fn running(&self) -> usize {
        self.tasks.len()
    }

    /// Signals shutdown, waits up to `grace` for every task to end, and aborts the rest.
    /// Returns how many had to be aborted.
    pub async fn stop(&mut self, grace: Duration) -> usize {
        self.shutdown.cancel();
        let ended = tokio::time::timeout(grace, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if ended.is_ok() {
            return 0;
        }
        let stragglers = self.tasks.len();
        self.tasks.shutdown().await;
        stragglers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_signal_ends_every_task() {
        let mut bg = Background::new();
        let token = bg.token();
        bg.spawn(async move { token.cancelled().await });
        bg.spawn_until_shutdown(std::future::pending());
        bg.spawn(async {});
        assert!(bg.running() >= 2);
        assert_eq!(bg.stop(Duration::from_secs(10)).await, 0);
        assert_eq!(bg.running(), 0);
    }

    #[tokio::test]
    async fn a_task_that_ignores_the_signal_is_aborted_and_counted() {
        let mut bg = Background::new();
        bg.spawn(std::future::pending());
        let token = bg.token();
        bg.spawn(async move { token.cancelled().await });
        assert_eq!(bg.stop(Duration::from_millis(50)).await, 1);
        assert_eq!(bg.running(), 0);
    }
}
