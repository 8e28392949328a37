//! Chromium's life: crash mid-render, hang, recycling, and cleanup after many renders.

mod support;

use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use support::*;

fn query(url: String, timeout: u32) -> Vec<(&'static str, String)> {
    vec![
        ("url", url),
        ("width", "200".to_owned()),
        ("height", "100".to_owned()),
        ("renderKey", "k".to_owned()),
        ("domain", "127.0.0.1".to_owned()),
        ("encoding", "png".to_owned()),
        ("timeout", timeout.to_string()),
    ]
}

async fn browser_pid(h: &Harness) -> u32 {
    for _ in 0..600 {
        if let Some(pid) = h.renderer.as_ref().unwrap().engine().browser_pid().await {
            return pid;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no browser came up");
}

async fn start_never_ready(
    h: &Harness,
    pages: std::net::SocketAddr,
) -> tokio::task::JoinHandle<(u16, String)> {
    let (client, url) = (h.client.clone(), h.url("/render"));
    let q = query(format!("http://{pages}/d-solo/never/x"), 60);
    tokio::spawn(async move {
        let res = client
            .get(url)
            .header("X-Auth-Token", TOKEN)
            .query(&q)
            .send()
            .await
            .unwrap();
        (res.status().as_u16(), res.text().await.unwrap())
    })
}

#[tokio::test]
async fn killing_chromium_mid_render_fails_that_render_and_the_next_succeeds() {
    let pages = pages().await;
    let h = Harness::start().await;
    let first_pid = browser_pid(&h).await;
    let stuck = start_never_ready(&h, pages).await;
    wait_for_metric(
        &h,
        |l| l == "pug_renderer_renders_in_flight 1",
        "a render in flight",
    )
    .await;

    kill(Pid::from_raw(first_pid as i32), Signal::SIGKILL).unwrap();
    let (status, body) = stuck.await.unwrap();
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("browser failed"), "{body}");

    let ok = query(format!("http://{pages}/d-solo/scenes/x?delay=0"), 30);
    let res = h.get("/render", &ok).await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    assert_ne!(browser_pid(&h).await, first_pid);
    wait_for_metric(
        &h,
        |l| l == "pug_renderer_browser_restarts_total{reason=\"crashed\"} 1",
        "one crash restart",
    )
    .await;
    h.shutdown().await;
}

#[tokio::test]
async fn a_hung_chromium_is_replaced_and_its_render_fails() {
    let pages = pages().await;
    let h = Harness::start_with(|c| c.health_check_interval = Duration::from_millis(300)).await;
    let first_pid = browser_pid(&h).await;
    let stuck = start_never_ready(&h, pages).await;
    wait_for_metric(
        &h,
        |l| l == "pug_renderer_renders_in_flight 1",
        "a render in flight",
    )
    .await;

    kill(Pid::from_raw(first_pid as i32), Signal::SIGSTOP).unwrap();
    let (status, body) = stuck.await.unwrap();
    assert_eq!(status, 500, "{body}");

    let ok = query(format!("http://{pages}/d-solo/scenes/x?delay=0"), 30);
    assert_eq!(h.get("/render", &ok).await.status(), 200);
    wait_for_metric(
        &h,
        |l| l == "pug_renderer_browser_restarts_total{reason=\"hung\"} 1",
        "one hang restart",
    )
    .await;
    let _ = kill(Pid::from_raw(first_pid as i32), Signal::SIGCONT);
    h.shutdown().await;
}

#[tokio::test]
async fn two_hundred_renders_leave_no_process_or_temp_dir_behind() {
    let pages = pages().await;
    let h = Harness::start_with(|c| {
        c.renders_per_browser = 50; // four Chromiums over the run, each torn down
        c.max_concurrency = 4;
    })
    .await;
    let temp = h.temp.path().to_string_lossy().into_owned();
    let first_pid = browser_pid(&h).await;
    let q = query(format!("http://{pages}/d-solo/scenes/x?delay=0"), 30);
    let t = std::time::Instant::now();
    for _batch in 0..50 {
        let renders = (0..4).map(|_| h.get("/render", &q));
        for res in futures::future::join_all(renders).await {
            let status = res.status();
            let body = res.text().await.unwrap_or_default();
            assert_eq!(status, 200, "{body}");
        }
    }
    eprintln!("200 renders in {:?}", t.elapsed());
    // Recycled browsers, whatever the reason recorded: on a loaded machine a recycle can be
    // counted as a hang (a slow health ping) rather than as the render limit.
    let mut restarts = 0u32;
    for _ in 0..1200 {
        let text = pug_test_support::http::get(h.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        restarts = text
            .lines()
            .filter_map(|l| l.strip_prefix("pug_renderer_browser_restarts_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u32;
        if restarts >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        restarts >= 3,
        "only {restarts} recycled browsers after 200 renders"
    );
    let browsers_before_shutdown = processes_mentioning(&temp);
    assert!(
        !browsers_before_shutdown.is_empty(),
        "Chromium's processes are not recognisable by their profile path"
    );
    assert!(
        !browsers_before_shutdown
            .iter()
            .any(|(pid, _)| *pid == first_pid as i32),
        "the first Chromium is still running"
    );

    let temp_dir = h.shutdown().await;
    // A child of the killed browser may need a moment to notice and exit: poll, bounded.
    let mut left = processes_mentioning(&temp);
    for _ in 0..100 {
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        left = processes_mentioning(&temp);
    }
    assert!(left.is_empty(), "processes left behind: {left:#?}");
    let files: Vec<_> = std::fs::read_dir(temp_dir.path()).unwrap().collect();
    assert!(files.is_empty(), "temp files left behind: {files:?}");
}
