//! HTTP as a person's browser speaks it to pug: cookies, redirects not followed, and pug's
//! login form (a GET for the CSRF cookie, then the POST that carries it).
//!
//! Owns: the client-side steps every crate's login tests repeat.
//!
//! Must not: assert what pug answers to the POST (the tests do; a refused login is a result).

/// A reqwest client builder for a test: [`pug_http::builder`], pug's one TLS setup. Use it (or
/// [`client`], [`get`]) instead of `reqwest::Client::builder()`, which would build a
/// platform-verifier config needing a process-wide rustls provider and the host's
/// certificate store.
pub fn builder() -> reqwest::ClientBuilder {
    pug_http::builder()
}

/// A reqwest client with reqwest's defaults (see [`builder`]).
pub fn client() -> reqwest::Client {
    builder().build().expect("a reqwest client")
}

/// `reqwest::get` through [`client`].
pub async fn get(url: impl reqwest::IntoUrl) -> reqwest::Result<reqwest::Response> {
    client().get(url).send().await
}

/// A reqwest client that does not follow redirects (so a test sees each 303 and its cookies).
pub fn no_redirects() -> reqwest::Client {
    builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("a reqwest client")
}

/// `name=value` of the `Set-Cookie` for `name`, if the response sets it (to a non-empty
/// value: a deletion does not count).
pub fn set_cookie(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .find(|pair| pair.starts_with(&format!("{name}=")) && pair.len() > name.len() + 1)
        .map(str::to_owned)
}

/// Submits pug's login form at `login_url` (`…/login`, with its query if any): GETs the page
/// for its CSRF cookie (the page must answer 200 with a password field and set one), then
/// POSTs `user`, `password` and `next` with it. Returns the POST's response (a 303 with
/// `pug_session` when pug accepted the login).
pub async fn sign_in(login_url: &str, user: &str, password: &str, next: &str) -> reqwest::Response {
    let client = no_redirects();
    let page = client
        .get(login_url)
        .send()
        .await
        .expect("GET the login page");
    assert_eq!(page.status(), 200, "the login page at {login_url}");
    let csrf = set_cookie(&page, "pug_csrf").expect("the login page sets a CSRF cookie");
    let value = csrf.split_once('=').expect("name=value").1.to_owned();
    let body = page.text().await.expect("the login page's body");
    assert!(
        body.contains("type=\"password\""),
        "no password field: {body}"
    );
    client
        .post(login_url)
        .header("cookie", &csrf)
        .form(&[
            ("user", user),
            ("password", password),
            ("csrf", value.as_str()),
            ("next", next),
        ])
        .send()
        .await
        .expect("POST the login form")
}
