//! The query parameters of `/render` and `/render/csv`, parsed into typed requests.
//!
//! Owns: the wire contract of research/renderer.md §2 and §7 (names, defaults, clamping, the
//! timeout and timezone forms Grafana sends), and the reasons of every 400.
//!
//! Must not: decide whether a URL may be rendered (that is [`crate::security`]), or talk to the
//! browser. Everything here is pure and unit-tested.

use std::collections::HashMap;
use std::time::Duration;

use url::Url;

use crate::config::RendererConfig;

/// Output format of `/render`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// A PNG screenshot.
    Png,
    /// A printed PDF.
    Pdf,
}

impl Encoding {
    /// The label used in metrics and the `encoding` parameter.
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Png => "png",
            Encoding::Pdf => "pdf",
        }
    }

    /// The `Content-Type` of a response in this encoding.
    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Png => "image/png",
            Encoding::Pdf => "application/pdf",
        }
    }
}

/// Height of the viewport.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Height {
    /// Exactly this many CSS pixels.
    Fixed(u32),
    /// `height=-1`: as tall as the content, after lazy panels have been loaded.
    FullPage,
}

/// The `renderKey` cookie Grafana authenticates the render with, and the only domain it may go to.
#[derive(Clone, PartialEq)]
pub struct RenderKey {
    /// The cookie value (a secret: never logged).
    pub key: String,
    /// The cookie's `Domain`.
    pub domain: String,
}

impl std::fmt::Debug for RenderKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RenderKey")
            .field("key", &"<redacted>")
            .field("domain", &self.domain)
            .finish()
    }
}

/// Options of a PDF print.
#[derive(Debug, Clone, PartialEq)]
pub struct PdfOptions {
    /// Paper width and height in inches.
    pub paper: (f64, f64),
    /// Whether CSS backgrounds are printed. Reference default: true.
    pub print_background: bool,
    /// Page ranges such as `1-3,5`, empty = all.
    pub page_ranges: String,
    /// Landscape orientation. Reference default: true.
    pub landscape: bool,
}

/// What every page load needs, whatever the output.
#[derive(Debug, Clone, PartialEq)]
pub struct PageRequest {
    /// The page to load.
    pub url: Url,
    /// Whole-request deadline.
    pub timeout: Duration,
    /// Timezone ID for Chromium (IANA, or ICU's `GMT±hh:mm`); `None` = the browser's default.
    pub timezone: Option<String>,
    /// The authentication cookie, if Grafana sent one.
    pub render_key: Option<RenderKey>,
    /// Forwarded `Accept-Language`.
    pub accept_language: Option<String>,
    /// Grafana's `X-Tenant-ID` (set by the API from the header): whose share of the slots the
    /// render takes when the token does not say.
    pub tenant: Option<String>,
    /// Grafana's `X-Access-Token` (set by the API from the header), sent on to the page's own
    /// origin as that header in place of the `renderKey` cookie.
    pub access_token: Option<AccessToken>,
}

/// The `X-Access-Token` Grafana authenticates a render with (a secret: never logged).
#[derive(Clone, PartialEq)]
pub struct AccessToken(pub String);

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessToken(<redacted>)")
    }
}

/// A parsed `/render` request.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderRequest {
    /// URL, timeout, timezone, cookie, language.
    pub page: PageRequest,
    /// Viewport width in CSS pixels.
    pub width: u32,
    /// Viewport height.
    pub height: Height,
    /// `deviceScaleFactor`: output pixels per CSS pixel.
    pub scale: f64,
    /// png or pdf.
    pub encoding: Encoding,
    /// Only for `Encoding::Pdf`.
    pub pdf: PdfOptions,
}

/// A parsed `/render/csv` request.
#[derive(Debug, Clone, PartialEq)]
pub struct CsvRequest {
    /// URL, timeout, timezone, cookie, language.
    pub page: PageRequest,
    /// Safe basename for `Content-Disposition`, from `filePath`; `None` = the page's own name.
    pub file_name: Option<String>,
}

/// Why a request's parameters were refused (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadParam(pub String);

type Query = HashMap<String, String>;

/// First value of each query parameter (later duplicates are ignored, as Go's `Query().Get`).
pub fn query_map(raw: Option<&str>) -> Query {
    let mut map = Query::new();
    for (k, v) in url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        map.entry(k.into_owned()).or_insert_with(|| v.into_owned());
    }
    map
}

fn get<'a>(q: &'a Query, name: &str) -> Option<&'a str> {
    q.get(name).map(String::as_str).filter(|v| !v.is_empty())
}

/// Parses `/render`'s query.
pub fn parse_render(
    q: &Query,
    accept_language: Option<String>,
    config: &RendererConfig,
) -> Result<RenderRequest, BadParam> {
    let page = parse_page(q, accept_language, config)?;
    let vp = &config.viewport;

    let width = match get(q, "width") {
        None => vp.default_width,
        Some(v) => {
            let w: i64 = v
                .parse()
                .map_err(|_| BadParam(format!("width {v:?} is not an integer")))?;
            if w < 10 {
                vp.default_width
            } else if w > vp.max_width as i64 {
                return Err(BadParam(format!(
                    "width {w} is larger than the renderer's maximum of {} (RENDERING_VIEWPORT_MAX_WIDTH)",
                    vp.max_width
                )));
            } else {
                w as u32
            }
        }
    };
    let height = match get(q, "height") {
        None => Height::Fixed(vp.default_height),
        Some(v) => {
            let h: i64 = v
                .parse()
                .map_err(|_| BadParam(format!("height {v:?} is not an integer")))?;
            match h {
                -1 => Height::FullPage,
                h if h < -1 => {
                    return Err(BadParam(format!(
                        "height {h} is invalid: use -1 for full page or a positive height"
                    )))
                }
                h if h < 10 => Height::Fixed(vp.default_height),
                h if h > vp.max_height as i64 => {
                    return Err(BadParam(format!(
                        "height {h} is larger than the renderer's maximum of {} (RENDERING_VIEWPORT_MAX_HEIGHT); use -1 for the full page",
                        vp.max_height
                    )))
                }
                h => Height::Fixed(h as u32),
            }
        }
    };
    let scale = match get(q, "deviceScaleFactor") {
        None => vp.default_scale,
        Some(v) => match v.parse::<f64>() {
            Ok(s) if s > vp.max_scale && s.is_finite() => {
                return Err(BadParam(format!(
                    "deviceScaleFactor {v} is larger than the renderer's maximum of {} (RENDERING_VIEWPORT_MAX_DEVICE_SCALE_FACTOR)",
                    vp.max_scale
                )))
            }
            Ok(s) if s > 0.0 && s.is_finite() => s,
            _ => {
                return Err(BadParam(format!(
                    "deviceScaleFactor {v:?} is not a positive number"
                )))
            }
        },
    };
    let encoding = match get(q, "encoding") {
        None => config.default_encoding,
        Some("png") => Encoding::Png,
        Some("pdf") => Encoding::Pdf,
        Some(other) => {
            return Err(BadParam(format!(
                "encoding {other:?} is not supported: use png or pdf (csv is at /render/csv)"
            )))
        }
    };
    let pdf = parse_pdf(q, &page.url)?;
    Ok(RenderRequest {
        page,
        width,
        height,
        scale,
        encoding,
        pdf,
    })
}

/// Parses `/render/csv`'s query.
pub fn parse_csv(
    q: &Query,
    accept_language: Option<String>,
    config: &RendererConfig,
) -> Result<CsvRequest, BadParam> {
    let page = parse_page(q, accept_language, config)?;
    match get(q, "encoding") {
        None | Some("csv") => {}
        Some(other) => {
            return Err(BadParam(format!(
                "encoding {other:?} is not supported by /render/csv: use csv"
            )))
        }
    }
    let file_name = get(q, "filePath").and_then(crate::security::safe_csv_file_name);
    Ok(CsvRequest { page, file_name })
}

fn parse_page(
    q: &Query,
    accept_language: Option<String>,
    config: &RendererConfig,
) -> Result<PageRequest, BadParam> {
    let raw = get(q, "url").ok_or_else(|| BadParam("missing url parameter".to_owned()))?;
    let url = Url::parse(raw).map_err(|e| BadParam(format!("url {raw:?} is invalid: {e}")))?;
    let timeout = match get(q, "timeout") {
        None => config.default_timeout,
        Some(v) => parse_timeout(v)
            .ok_or_else(|| {
                BadParam(format!(
                    "timeout {v:?} is invalid: use seconds (30) or a duration (30s, 1m30s)"
                ))
            })?
            .min(config.max_timeout),
    };
    let timezone = match get(q, "timezone") {
        None => None,
        Some(v) if v.eq_ignore_ascii_case("browser") => None,
        Some(v) => Some(parse_timezone(v).ok_or_else(|| {
            BadParam(format!(
                "timezone {v:?} is invalid: use an IANA name (Europe/Berlin) or UTC±hh:mm"
            ))
        })?),
    };
    let render_key = match (get(q, "renderKey"), get(q, "domain")) {
        (Some(key), Some(domain)) => Some(RenderKey {
            key: key.to_owned(),
            domain: domain.to_owned(),
        }),
        _ => None,
    };
    let accept_language = accept_language
        .filter(|v| !v.is_empty())
        .or_else(|| config.language.clone());
    Ok(PageRequest {
        url,
        timeout,
        timezone,
        render_key,
        accept_language,
        tenant: None,
        access_token: None,
    })
}

fn parse_pdf(q: &Query, target: &Url) -> Result<PdfOptions, BadParam> {
    // Legacy: each pdf.* option may also come from the target URL's own query.
    let target_q: Query = target
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let pick = |name: &str| get(q, name).or_else(|| get(&target_q, name));
    let bool_of = |name: &str, default: bool| -> Result<bool, BadParam> {
        match pick(name) {
            None => Ok(default),
            Some(v) => crate::config::parse_bool(v)
                .map_err(|_| BadParam(format!("{name} {v:?} is not true or false"))),
        }
    };
    let paper = match pick("pdf.format") {
        None => (8.27, 11.69),
        Some(f) => paper_size(f).ok_or_else(|| {
            BadParam(format!(
                "pdf.format {f:?} is unknown: use letter, legal, tabloid, ledger or a0-a6"
            ))
        })?,
    };
    let landscape = match pick("pdf.landscape") {
        Some(_) => bool_of("pdf.landscape", true)?,
        None => bool_of("landscape", true)?,
    };
    Ok(PdfOptions {
        paper,
        print_background: bool_of("pdf.printBackground", true)?,
        page_ranges: pick("pdf.pageRanges").unwrap_or_default().to_owned(),
        landscape,
    })
}

/// Paper sizes in inches (width, height), portrait.
fn paper_size(name: &str) -> Option<(f64, f64)> {
    Some(match name.to_ascii_lowercase().as_str() {
        "letter" => (8.5, 11.0),
        "legal" => (8.5, 14.0),
        "tabloid" => (11.0, 17.0),
        "ledger" => (17.0, 11.0),
        "a0" => (33.1, 46.8),
        "a1" => (23.4, 33.1),
        "a2" => (16.54, 23.4),
        "a3" => (11.7, 16.54),
        "a4" => (8.27, 11.69),
        "a5" => (5.83, 8.27),
        "a6" => (4.13, 5.83),
        _ => return None,
    })
}

/// `timeout`: whole seconds (what Grafana sends) or a Go-style duration (`1m30s`, `500ms`).
pub fn parse_timeout(v: &str) -> Option<Duration> {
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = v;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let n: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total = total.checked_add(Duration::try_from_secs_f64(n * unit).ok()?)?;
    }
    Some(total)
}

/// Turns a request's timezone into an ID Chromium understands, or `None` if it is not one.
///
/// Grafana sends IANA names unchanged, but converts fixed offsets to the *POSIX* form, where the
/// sign is inverted: a user at UTC+02:00 arrives as `UTC-02:00`. The reference renderer hands
/// that to a parser that rejects it and falls back to UTC; here it becomes ICU's `GMT+02:00`,
/// which is the offset the user meant.
pub fn parse_timezone(v: &str) -> Option<String> {
    let v = v.trim();
    if v.eq_ignore_ascii_case("utc") || v.eq_ignore_ascii_case("gmt") || v == "Z" {
        return Some("Etc/UTC".to_owned());
    }
    for prefix in ["UTC", "GMT", "utc", "gmt"] {
        if let Some(rest) = v.strip_prefix(prefix) {
            if let Some(sign @ ('+' | '-')) = rest.chars().next() {
                let (h, m) = parse_offset(&rest[1..])?;
                // POSIX sign is inverted: UTC-02:00 means two hours *ahead* of UTC.
                let iso_sign = if sign == '-' { '+' } else { '-' };
                return Some(format!("GMT{iso_sign}{h:02}:{m:02}"));
            }
        }
    }
    if is_iana_name(v) {
        Some(v.to_owned())
    } else {
        None
    }
}

fn parse_offset(v: &str) -> Option<(u32, u32)> {
    let (h, m) = match v.split_once(':') {
        Some((h, m)) => (h, m),
        None if v.len() == 4 => (&v[..2], &v[2..]),
        None => (v, "0"),
    };
    let h: u32 = h.parse().ok()?;
    let m: u32 = m.parse().ok()?;
    (h <= 14 && m < 60).then_some((h, m))
}

/// An IANA zone name: `Area/Location[/Sub]` made of letters, digits, `_`, `-` and `+`, and known
/// to the system's tz database when there is one (Chromium, with its own copy, has the last word).
fn is_iana_name(v: &str) -> bool {
    let syntax = !v.is_empty()
        && v.len() <= 64
        && v.split('/').all(|part| {
            part.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '+'))
        });
    if !syntax {
        return false;
    }
    let db = std::path::Path::new("/usr/share/zoneinfo");
    !db.is_dir() || db.join(v).is_file()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Query {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn render(pairs: &[(&str, &str)]) -> Result<RenderRequest, BadParam> {
        parse_render(&q(pairs), None, &RendererConfig::default())
    }

    const URL: (&str, &str) = ("url", "http://grafana:3000/d-solo/x?render=1");

    #[test]
    fn grafana_request_is_parsed() {
        let r = render(&[
            URL,
            ("width", "800"),
            ("height", "400"),
            ("deviceScaleFactor", "2.000000"),
            ("timeout", "60"),
            ("timezone", "Europe/Berlin"),
            ("renderKey", "k"),
            ("domain", "grafana"),
            ("encoding", "png"),
        ])
        .unwrap();
        assert_eq!(r.width, 800);
        assert_eq!(r.height, Height::Fixed(400));
        assert_eq!(r.scale, 2.0);
        assert_eq!(r.page.timeout, Duration::from_secs(60));
        assert_eq!(r.page.timezone.as_deref(), Some("Europe/Berlin"));
        assert_eq!(r.page.render_key.as_ref().unwrap().domain, "grafana");
        assert_eq!(r.encoding, Encoding::Png);
    }

    #[test]
    fn defaults_and_bounds() {
        let r = render(&[URL]).unwrap();
        assert_eq!((r.width, r.height), (1000, Height::Fixed(500)));
        assert_eq!(r.encoding, Encoding::Pdf);
        assert_eq!(r.page.timeout, Duration::from_secs(30));
        let r = render(&[
            URL,
            ("width", "3000"),
            ("height", "-1"),
            ("deviceScaleFactor", "4"),
        ])
        .unwrap();
        assert_eq!((r.width, r.height, r.scale), (3000, Height::FullPage, 4.0));
        let r = render(&[URL, ("height", "3000"), ("deviceScaleFactor", "1.000000")]).unwrap();
        assert_eq!((r.height, r.scale), (Height::Fixed(3000), 1.0));
        let r = render(&[URL, ("width", "5"), ("height", "3"), ("timeout", "100000")]).unwrap();
        assert_eq!((r.width, r.height), (1000, Height::Fixed(500)));
        assert_eq!(r.page.timeout, Duration::from_secs(300));
    }

    #[test]
    fn bad_parameters_are_400_with_a_reason() {
        for (pairs, needle) in [
            (vec![], "missing url"),
            (vec![("url", "not a url")], "url"),
            (vec![URL, ("width", "wide")], "width"),
            (vec![URL, ("height", "-7")], "height"),
            (vec![URL, ("deviceScaleFactor", "0")], "deviceScaleFactor"),
            (vec![URL, ("deviceScaleFactor", "NaN")], "deviceScaleFactor"),
            (vec![URL, ("deviceScaleFactor", "4.5")], "maximum of 4"),
            (vec![URL, ("width", "3001")], "maximum of 3000"),
            (vec![URL, ("height", "99999")], "maximum of 3000"),
            (vec![URL, ("timeout", "-3")], "timeout"),
            (vec![URL, ("timeout", "soon")], "timeout"),
            (vec![URL, ("timezone", "Nowhere/Land")], "timezone"),
            (vec![URL, ("encoding", "gif")], "encoding"),
            (vec![URL, ("pdf.format", "napkin")], "pdf.format"),
        ] {
            let err = render(&pairs).unwrap_err();
            assert!(err.0.contains(needle), "{pairs:?}: {err}");
        }
    }

    #[test]
    fn timeouts() {
        assert_eq!(parse_timeout("30"), Some(Duration::from_secs(30)));
        assert_eq!(parse_timeout("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_timeout("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_timeout("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_timeout("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_timeout("-1"), None);
        assert_eq!(parse_timeout("s"), None);
        assert_eq!(parse_timeout(""), None);
        assert_eq!(parse_timeout("99999999999999999999h"), None);
    }

    #[test]
    fn timezones_including_grafanas_inverted_offsets() {
        assert_eq!(parse_timezone("Europe/Berlin").unwrap(), "Europe/Berlin");
        assert_eq!(
            parse_timezone("America/Argentina/Buenos_Aires").unwrap(),
            "America/Argentina/Buenos_Aires"
        );
        assert_eq!(parse_timezone("utc").unwrap(), "Etc/UTC");
        // A user at UTC+02:00 arrives as POSIX "UTC-02:00".
        assert_eq!(parse_timezone("UTC-02:00").unwrap(), "GMT+02:00");
        assert_eq!(parse_timezone("UTC+05:30").unwrap(), "GMT-05:30");
        assert_eq!(parse_timezone("UTC-0545").unwrap(), "GMT+05:45");
        assert_eq!(parse_timezone("UTC+15:00"), None);
        assert_eq!(parse_timezone("Europe/../../etc/passwd"), None);
        assert_eq!(parse_timezone("not a zone"), None);
    }

    #[test]
    fn pdf_options_come_from_request_or_target_url() {
        let r = render(&[
            ("url", "http://g/d/x?pdf.format=letter&pdf.landscape=false"),
            ("pdf.printBackground", "false"),
            ("pdf.pageRanges", "1-2"),
        ])
        .unwrap();
        assert_eq!(r.pdf.paper, (8.5, 11.0));
        assert!(!r.pdf.landscape);
        assert!(!r.pdf.print_background);
        assert_eq!(r.pdf.page_ranges, "1-2");
    }

    #[test]
    fn csv_request() {
        let cfg = RendererConfig::default();
        let r = parse_csv(
            &q(&[
                URL,
                ("filePath", "../../etc/evil name"),
                ("encoding", "csv"),
            ]),
            Some("de-DE".into()),
            &cfg,
        )
        .unwrap();
        assert_eq!(r.file_name.as_deref(), Some("evil_name.csv"));
        assert_eq!(r.page.accept_language.as_deref(), Some("de-DE"));
        assert!(parse_csv(&q(&[URL, ("encoding", "png")]), None, &cfg).is_err());
    }

    #[test]
    fn render_key_is_not_printed() {
        let k = RenderKey {
            key: "secret".into(),
            domain: "g".into(),
        };
        assert!(!format!("{k:?}").contains("secret"));
    }
}
