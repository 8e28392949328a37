//! Where a render is: set by each step, read when the render's time runs out, so a 408 says
//! what it was waiting for ("waiting for the page to be ready (1 request in flight: …)")
//! instead of only that it was late. The most common reason a render times out is a page that
//! never becomes ready; the request that never ends is the first thing an operator needs.
//!
//! Owns: the shared description of the current step. Must not: decide anything (the engine
//! enforces deadlines; this only describes).

use std::sync::{Arc, Mutex};

/// The current step of one render; cheap to clone (all clones share it).
#[derive(Clone, Debug)]
pub struct Progress(Arc<Mutex<String>>);

impl Progress {
    /// A render that has not started: it waits for admission.
    pub fn new() -> Self {
        Self(Arc::new(Mutex::new("waiting for a render slot".to_owned())))
    }

    /// Records the step the render is in now.
    pub fn set(&self, step: impl Into<String>) {
        let step = step.into();
        if let Ok(mut s) = self.0.lock() {
            *s = step;
        }
    }

    /// The step last recorded.
    pub fn get(&self) -> String {
        self.0.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

/// How many of the requests in flight a message names.
const SHOWN: usize = 3;

/// "waiting for the page to be ready", with what the page itself still reports (`page`:
/// "2 queries running") or else the requests that keep it from looking idle.
pub fn readiness(in_flight: &[String], page: Option<&str>) -> String {
    if let Some(page) = page {
        return match in_flight.len() {
            0 => format!("waiting for the page to be ready ({page})"),
            _ => format!(
                "waiting for the page to be ready ({page}; {})",
                requests(in_flight)
            ),
        };
    }
    match in_flight.len() {
        0 => "waiting for the page to be ready".to_owned(),
        _ => format!("waiting for the page to be ready ({})", requests(in_flight)),
    }
}

/// "2 requests in flight: http://…, http://…", at most [`SHOWN`] named.
fn requests(in_flight: &[String]) -> String {
    let n = in_flight.len();
    let mut urls: Vec<&str> = in_flight.iter().take(SHOWN).map(String::as_str).collect();
    if n > SHOWN {
        urls.push("…");
    }
    let noun = if n == 1 { "request" } else { "requests" };
    format!("{n} {noun} in flight: {}", urls.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_step_set_is_what_a_timeout_reports() {
        let p = Progress::new();
        assert_eq!(p.get(), "waiting for a render slot");
        let shared = p.clone();
        shared.set("loading http://grafana/d/x");
        assert_eq!(p.get(), "loading http://grafana/d/x");
    }

    #[test]
    fn readiness_names_at_most_three_requests() {
        let urls = |n: usize| (0..n).map(|i| format!("http://g/{i}")).collect::<Vec<_>>();
        for (n, want) in [
            (0, "waiting for the page to be ready"),
            (
                1,
                "waiting for the page to be ready (1 request in flight: http://g/0)",
            ),
            (
                4,
                "waiting for the page to be ready (4 requests in flight: http://g/0, http://g/1, http://g/2, …)",
            ),
        ] {
            assert_eq!(readiness(&urls(n), None), want, "{n}");
        }
        assert_eq!(
            readiness(&[], Some("Grafana reports 2 queries running")),
            "waiting for the page to be ready (Grafana reports 2 queries running)"
        );
        assert_eq!(
            readiness(&urls(1), Some("Grafana reports 1 queries running")),
            "waiting for the page to be ready (Grafana reports 1 queries running; 1 request in flight: http://g/0)"
        );
    }
}
