//! Rendering against real Chromium and the grafana-standin's render-test pages: sizes, pixels,
//! readiness styles, full page, PDF, CSV, timezone, language and the renderKey cookie.

mod support;

use support::*;

/// Query of a typical Grafana panel render.
fn panel(
    pages: std::net::SocketAddr,
    page: &str,
    extra: &[(&str, &str)],
) -> Vec<(&'static str, String)> {
    let mut q = vec![
        ("url", format!("http://{pages}{page}")),
        ("width", "400".to_owned()),
        ("height", "200".to_owned()),
        ("deviceScaleFactor", "1.000000".to_owned()),
        ("timeout", "30".to_owned()),
        ("renderKey", "render-key-123".to_owned()),
        ("domain", "127.0.0.1".to_owned()),
        ("encoding", "png".to_owned()),
    ];
    for (k, v) in extra {
        q.retain(|(name, _)| name != k);
        let k: &'static str = match *k {
            "width" => "width",
            "height" => "height",
            "deviceScaleFactor" => "deviceScaleFactor",
            "timezone" => "timezone",
            "encoding" => "encoding",
            "domain" => "domain",
            other => panic!("unexpected parameter {other}"),
        };
        q.push((k, v.to_string()));
    }
    q
}

async fn png(h: &Harness, query: &[(&str, String)]) -> Image {
    let res = h.get("/render", query).await;
    let status = res.status();
    assert_eq!(
        res.headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned()),
        if status == 200 {
            Some("image/png".to_owned())
        } else {
            res.headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_owned())
        }
    );
    let body = res.bytes().await.unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    Image::decode(&body)
}

async fn metrics_text(h: &Harness) -> String {
    pug_test_support::http::get(h.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn png_size_is_width_times_scale() {
    let pages = pages().await;
    let h = Harness::start().await;
    let img = png(
        &h,
        &panel(
            pages,
            "/d-solo/scenes/x?delay=0",
            &[
                ("width", "300"),
                ("height", "150"),
                ("deviceScaleFactor", "2.000000"),
            ],
        ),
    )
    .await;
    assert_eq!((img.width, img.height), (600, 300));
    let img = png(
        &h,
        &panel(
            pages,
            "/d-solo/scenes/x?delay=0",
            &[("width", "640"), ("height", "120")],
        ),
    )
    .await;
    assert_eq!((img.width, img.height), (640, 120));
    h.shutdown().await;
}

/// Each readiness style draws 300 ms after its query returns, on a timer: a renderer that only
/// waited for the network (or for the load event) would capture a white panel.
async fn drawn_after_delay(style: &str, mode: &str) {
    let pages = pages().await;
    let h = Harness::start().await;
    let img = png(
        &h,
        &panel(
            pages,
            &format!("/d-solo/{style}/x?delay=300&qdelay=100"),
            &[],
        ),
    )
    .await;
    for (x, y) in [(200, 100), (5, 5), (395, 195)] {
        assert!(
            img.is_chart(x, y),
            "{style}: pixel ({x},{y}) is {:?}, not the chart",
            img.pixel(x, y)
        );
    }
    let metrics = metrics_text(&h).await;
    let line = format!("pug_renderer_readiness_mode_total{{mode=\"{mode}\"}} 1");
    assert!(metrics.contains(&line), "{line} missing:\n{metrics}");
    h.shutdown().await;
}

#[tokio::test]
async fn binding_page_is_captured_after_its_report() {
    drawn_after_delay("binding", "binding").await;
}

#[tokio::test]
async fn scenes_page_is_captured_after_its_queries() {
    drawn_after_delay("scenes", "queries").await;
}

#[tokio::test]
async fn legacy_page_is_captured_after_panels_rendered() {
    drawn_after_delay("legacy", "legacy_panels").await;
}

#[tokio::test]
async fn full_page_height_follows_the_content_and_loads_lazy_panels() {
    let pages = pages().await;
    let h = Harness::start().await;
    for style in ["scenes", "binding"] {
        let img = png(
            &h,
            &panel(
                pages,
                &format!("/d/{style}/x?panels=5&qdelay=50"),
                &[("width", "800"), ("height", "-1")],
            ),
        )
        .await;
        // 40 px header + 5 panels of 300 px.
        assert_eq!((img.width, img.height), (800, 1540), "{style}");
        for panel in 0..5 {
            let y = 40 + panel * 300 + 150;
            assert!(
                img.is_chart(400, y),
                "{style}: panel {panel} not drawn: {:?}",
                img.pixel(400, y)
            );
        }
    }
    h.shutdown().await;
}

#[tokio::test]
async fn pdf_is_well_formed() {
    let pages = pages().await;
    let h = Harness::start().await;
    let res = h
        .get(
            "/render",
            &panel(pages, "/d-solo/scenes/x?delay=0", &[("encoding", "pdf")]),
        )
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/pdf");
    let body = res.bytes().await.unwrap();
    assert!(
        body.starts_with(b"%PDF-"),
        "not a PDF: {:?}",
        &body[..body.len().min(16)]
    );
    let tail = String::from_utf8_lossy(&body[body.len().saturating_sub(32)..]).to_string();
    assert!(
        tail.trim_end().ends_with("%%EOF"),
        "PDF not terminated: {tail:?}"
    );
    assert!(body.windows(5).any(|w| w == b"/Page"), "PDF has no page");
    h.shutdown().await;
}

#[tokio::test]
async fn csv_export_comes_back_with_a_safe_name() {
    let pages = pages().await;
    let h = Harness::start().await;
    let res = h
        .get(
            "/render/csv",
            &[
                (
                    "url",
                    format!("http://{pages}/d-csv/abc/x?delay=100&name=export.csv"),
                ),
                ("renderKey", "k".to_owned()),
                ("domain", "127.0.0.1".to_owned()),
                ("timeout", "30".to_owned()),
                ("encoding", "csv".to_owned()),
                ("filePath", "../../../etc/My Panel data".to_owned()),
            ],
        )
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/csv");
    assert_eq!(
        res.headers()["content-disposition"],
        "attachment; filename=\"My_Panel_data.csv\""
    );
    assert_eq!(res.text().await.unwrap(), "time,value\n0,1.5\n1,2.5\n2,4\n");

    // Without filePath the page's own file name is used.
    let res = h
        .get(
            "/render/csv",
            &[
                (
                    "url",
                    format!("http://{pages}/d-csv/abc/x?delay=0&name=export.csv"),
                ),
                ("renderKey", "k".to_owned()),
                ("domain", "127.0.0.1".to_owned()),
            ],
        )
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["content-disposition"],
        "attachment; filename=\"export.csv\""
    );
    h.shutdown().await;
}

async fn reported(pages: std::net::SocketAddr) -> Vec<url::Url> {
    page_log(pages)
        .await
        .iter()
        .filter(|hit| hit["path"] == "/render-test/report")
        .map(|hit| {
            url::Url::parse(&format!("http://x/?{}", hit["query"].as_str().unwrap())).unwrap()
        })
        .collect()
}

fn param(u: &url::Url, name: &str) -> String {
    u.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn timezone_and_language_are_applied() {
    timezone_language_and_no_leftovers_then(Harness::start().await, |text| {
        assert!(text.contains("pug_renderer_pages_total{page=\"reused\"} 0"));
    })
    .await;
}

/// One page serving every render (one slot, reuse on): each render still starts from nothing.
#[tokio::test]
async fn a_reused_page_keeps_nothing_from_the_last_render() {
    let h = Harness::start_with(|c| {
        c.max_concurrency = 1;
        c.page_reuse = 10;
    })
    .await;
    timezone_language_and_no_leftovers_then(h, |text| {
        assert!(
            text.contains("pug_renderer_pages_total{page=\"reused\"} 4"),
            "the page was not reused: {text}"
        );
    })
    .await;
}

/// Renders the `tz` page five ways, checks what each saw, then hands `/metrics` to `check`.
async fn timezone_language_and_no_leftovers_then(h: Harness, check: impl FnOnce(&str)) {
    let pages = pages().await;
    let tz_page = "/d-solo/tz/x?delay=0";

    // An IANA name.
    png(&h, &panel(pages, tz_page, &[("timezone", "Europe/Berlin")])).await;
    // Grafana's POSIX form for a user at UTC+02:00 (the sign is inverted on the wire).
    png(&h, &panel(pages, tz_page, &[("timezone", "UTC-02:00")])).await;
    // No timezone: the browser default (Etc/UTC).
    png(&h, &panel(pages, tz_page, &[])).await;
    // Accept-Language forwarded.
    let res = h
        .client
        .get(h.url("/render"))
        .header("X-Auth-Token", TOKEN)
        .header("Accept-Language", "de-DE")
        .query(&panel(pages, tz_page, &[]))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // And not kept for the next request.
    png(&h, &panel(pages, tz_page, &[])).await;

    let reports = reported(pages).await;
    assert_eq!(reports.len(), 5, "{reports:?}");
    assert_eq!(param(&reports[0], "tz"), "Europe/Berlin");
    assert_eq!(param(&reports[0], "offset"), "-60"); // CET in January: 60 min ahead of UTC
    assert_eq!(param(&reports[1], "offset"), "-120"); // UTC+02:00, as the user meant
    assert_eq!(param(&reports[2], "offset"), "0");
    assert_eq!(param(&reports[3], "language"), "de-DE");
    assert_ne!(param(&reports[4], "language"), "de-DE");
    for (i, r) in reports.iter().enumerate() {
        // Every page leaves storage and a cookie behind; none may reach the next render.
        assert_eq!(param(r, "stored"), "", "render {i} found storage: {r}");
        assert_eq!(param(r, "cookies"), "", "render {i} found cookies: {r}");
    }
    let log = page_log(pages).await;
    let tz_hits: Vec<_> = log
        .iter()
        .filter(|hit| hit["path"] == "/d-solo/tz/x")
        .collect();
    assert_eq!(tz_hits.len(), 5);
    assert_eq!(tz_hits[3]["accept_language"], "de-DE");
    for hit in tz_hits {
        // The render key (each request's own) is expected; the page's cookie is not.
        let cookie = hit["cookie"].as_str().unwrap();
        assert!(!cookie.contains("left="), "a cookie crossed renders: {hit}");
    }
    check(&metrics_text(&h).await);
    h.shutdown().await;
}

#[tokio::test]
async fn render_key_cookie_goes_only_to_its_domain_and_never_to_the_next_render() {
    render_key_cookie(Harness::start().await).await;
}

#[tokio::test]
async fn render_key_cookie_never_reaches_the_next_render_on_a_reused_page() {
    let h = Harness::start_with(|c| {
        c.max_concurrency = 1;
        c.page_reuse = 10;
    })
    .await;
    render_key_cookie(h).await;
}

async fn render_key_cookie(h: Harness) {
    let pages = pages().await;
    let port = pages.port();
    // The page is on "localhost"; it loads an image from 127.0.0.1, another host.
    let page = format!("http://localhost:{port}/d-solo/scenes/x?delay=0&probe=127.0.0.1:{port}");
    let mut q = panel(pages, "/", &[("domain", "localhost")]);
    q.retain(|(k, _)| *k != "url");
    q.push(("url", page.clone()));
    let img = png(&h, &q).await;
    assert!(
        img.is_chart(200, 100),
        "the page did not accept the render key"
    );

    // A second render without a key must not carry the first one's cookie.
    let mut q2 = q.clone();
    q2.retain(|(k, _)| *k != "renderKey" && *k != "domain");
    let img = png(&h, &q2).await;
    assert!(
        !img.is_chart(200, 100),
        "a render without a key was authenticated"
    );

    let log = page_log(pages).await;
    let pages_hits: Vec<_> = log
        .iter()
        .filter(|hit| hit["path"] == "/d-solo/scenes/x")
        .collect();
    assert_eq!(pages_hits.len(), 2, "{log:#?}");
    assert!(pages_hits[0]["cookie"]
        .as_str()
        .unwrap()
        .contains("renderKey=render-key-123"));
    assert_eq!(pages_hits[1]["cookie"], "", "cookie crossed renders");
    let probes: Vec<_> = log
        .iter()
        .filter(|hit| hit["path"] == "/render-test/probe.png")
        .collect();
    assert!(
        !probes.is_empty(),
        "the probe image was not loaded: {log:#?}"
    );
    for probe in probes {
        assert_eq!(probe["host"], format!("127.0.0.1:{port}"));
        assert!(
            !probe["cookie"].as_str().unwrap().contains("renderKey"),
            "cookie leaked: {probe}"
        );
    }
    h.shutdown().await;
}
