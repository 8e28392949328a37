//! The browser client in real headless Chromium (Debian's `chromium` package): two tabs open the
//! chat, a message typed into one appears in the other.
//!
//! Chromium is driven over the DevTools protocol (CDP) directly: `--remote-debugging-port=0`, the
//! `DevTools listening on ws://...` line it prints, and a WebSocket speaking CDP's JSON. The few
//! commands needed (open a tab, evaluate, type, press Enter) do not justify a CDP client crate.

mod support;

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_example::protocol::DEFAULT_MAX_MESSAGE_BYTES;
use chat_example::server::Config;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use support::{require_program, wait_for, TestServer};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;

/// A headless Chromium and a CDP connection to its browser target.
struct Chromium {
    child: Child,
    cdp: support::Client,
    next_id: u64,
    /// Everything Chromium wrote to stderr, for failure messages.
    log: Arc<Mutex<String>>,
    _profile: tempfile::TempDir,
}

impl Chromium {
    async fn launch() -> Chromium {
        let binary = require_program("/usr/bin/chromium", "chromium");
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new(binary)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
                "--disable-sync",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();

        // Keep draining stderr for the whole run so Chromium never blocks on a full pipe.
        let log = Arc::new(Mutex::new(String::new()));
        let (found, devtools_url) = oneshot::channel();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let sink = log.clone();
        tokio::spawn(async move {
            let mut found = Some(found);
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    if let Some(found) = found.take() {
                        let _ = found.send(url.trim().to_owned());
                    }
                }
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let url = tokio::time::timeout(Duration::from_secs(60), devtools_url)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_else(|| {
                panic!(
                    "Chromium printed no DevTools URL within 60 s; its stderr:\n{}",
                    log.lock().unwrap()
                )
            });
        let (cdp, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        Chromium {
            child,
            cdp,
            next_id: 0,
            log,
            _profile: profile,
        }
    }

    /// Sends one CDP command (to a page session, or to the browser when `session` is `None`) and
    /// returns its result, skipping the events that arrive meanwhile.
    async fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut request = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            request["sessionId"] = json!(session);
        }
        self.cdp
            .send(Message::text(request.to_string()))
            .await
            .unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match self.cdp.next().await {
                    Some(Ok(Message::Text(text))) => {
                        let message: Value = serde_json::from_str(&text).unwrap();
                        if message["id"] == id {
                            break message;
                        }
                    }
                    Some(Ok(_)) => continue,
                    other => panic!("CDP connection ended: {other:?}"),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no answer to {method} within 30 s"));
        assert!(
            answer.get("error").is_none(),
            "{method} failed: {answer}; Chromium's stderr:\n{}",
            self.log.lock().unwrap()
        );
        answer["result"].clone()
    }

    /// Opens a tab at `url` and returns the CDP session attached to it.
    async fn open_tab(&mut self, url: &str) -> String {
        let target = self
            .call(None, "Target.createTarget", json!({"url": url}))
            .await;
        let attached = self
            .call(
                None,
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
            )
            .await;
        attached["sessionId"].as_str().unwrap().to_owned()
    }

    /// Evaluates `expression` in the tab and returns its value.
    async fn eval(&mut self, session: &str, expression: &str) -> Value {
        let result = self
            .call(
                Some(session),
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true}),
            )
            .await;
        result["result"]["value"].clone()
    }

    /// Focuses `selector` and types `text` into it, as a user would.
    async fn type_into(&mut self, session: &str, selector: &str, text: &str) {
        self.call(Some(session), "Page.bringToFront", json!({}))
            .await;
        let focused = self
            .eval(
                session,
                &format!(
                    "(() => {{ const e = document.querySelector({selector:?}); e.focus(); \
                     return document.activeElement === e; }})()"
                ),
            )
            .await;
        assert_eq!(focused, json!(true), "could not focus {selector}");
        self.call(Some(session), "Input.insertText", json!({"text": text}))
            .await;
    }

    /// Presses and releases Enter in the focused element.
    async fn press_enter(&mut self, session: &str) {
        for kind in ["keyDown", "keyUp"] {
            let mut event = json!({
                "type": kind, "key": "Enter", "code": "Enter",
                "windowsVirtualKeyCode": 13, "nativeVirtualKeyCode": 13,
            });
            if kind == "keyDown" {
                event["text"] = json!("\r");
            }
            self.call(Some(session), "Input.dispatchKeyEvent", event)
                .await;
        }
    }

    async fn close(mut self) {
        self.call(None, "Browser.close", json!({})).await;
        let _ = tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await;
    }
}

const MESSAGES: &str =
    "Array.from(document.querySelectorAll('#messages li')).map(li => li.textContent)";

#[tokio::test]
async fn a_message_typed_in_one_browser_appears_in_the_other() {
    let server = TestServer::start(Config {
        max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
    })
    .await;
    let mut chromium = Chromium::launch().await;
    let page = format!("http://{}/", server.chat);
    let alice = chromium.open_tab(&page).await;
    let bob = chromium.open_tab(&page).await;

    for tab in [&alice, &bob] {
        let state = "document.body ? document.body.dataset.state : ''";
        let mut last = Value::Null;
        let open = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                last = chromium.eval(tab, state).await;
                if last == "open" {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        assert!(open.is_ok(), "the page never connected (state {last})");
    }
    // Both connections are counted, hence subscribed to broadcasts.
    server.wait_for_connections(2).await;

    chromium.type_into(&alice, "#name", "alice").await;
    chromium
        .type_into(&alice, "#message", "hello from the first tab")
        .await;
    chromium.press_enter(&alice).await;

    let expected = json!(["alice:hello from the first tab"]);
    for tab in [&bob, &alice] {
        let mut seen = Value::Null;
        let arrived = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                seen = chromium.eval(tab, MESSAGES).await;
                if seen == expected {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        assert!(arrived.is_ok(), "expected {expected}, the tab shows {seen}");
    }
    // The input was cleared after sending, and the server counted exactly one message.
    assert_eq!(
        chromium
            .eval(&alice, "document.querySelector('#message').value")
            .await,
        ""
    );
    wait_for(Duration::from_secs(10), "chat_messages_total 1", || async {
        (server.server.metrics().messages.get() == 1).then_some(())
    })
    .await;
    chromium.close().await;
}
