//! A real browser for the console tests: Debian's `chromium` driven by
//! `chromedriver` through the W3C WebDriver HTTP API, with reqwest (no
//! Selenium, no Python). [`Browser::start`] runs chromedriver on a free
//! loopback port and opens headless Chromium on a fresh profile, with
//! everything that would reach the network switched off; the methods are the
//! few calls the tests need. Every lookup is an explicit wait (poll until a
//! deadline, then fail naming what was awaited), never a sleep.
//!
//! `cargo xtask test` installs `chromium` and `chromium-driver`; elsewhere
//! [`Browser::start`] says which packages are missing.

use crate::process::{free_port, wait_until, ChildProc};
use anyhow::{bail, Context};
use base64::Engine;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// How long a lookup waits for its element or text.
pub const WAIT: Duration = Duration::from_secs(20);

/// The W3C key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// The flags a root, offline, headless Chromium needs.
const CHROMIUM_ARGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
    "--lang=en-US",
];

/// Headless Chromium under chromedriver, one WebDriver session. Dropping
/// it kills chromedriver's process group (Chromium included) and removes
/// the profile.
pub struct Browser {
    http: reqwest::Client,
    /// `http://127.0.0.1:<port>/session/<id>`.
    session: String,
    _driver: ChildProc,
    _profile: tempfile::TempDir,
}

/// An element of the current page.
pub struct Element<'a> {
    browser: &'a Browser,
    id: String,
}

/// `path` on this machine, or a clear error naming the Debian package.
fn installed(path: &str, package: &str) -> anyhow::Result<PathBuf> {
    let p = PathBuf::from(path);
    if !p.exists() {
        bail!(
            "{path} is missing: install Debian's {package} \
             (`apt-get install -y chromium chromium-driver`; `cargo xtask test` does)"
        );
    }
    Ok(p)
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session.
    pub async fn start() -> anyhow::Result<Browser> {
        let chromium = installed("/usr/bin/chromium", "chromium")?;
        let driver_bin = installed("/usr/bin/chromedriver", "chromium-driver")?;
        let port = free_port()?;
        let mut cmd = Command::new(&driver_bin);
        cmd.arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .arg("--allowed-origins=*");
        let driver = ChildProc::spawn_command(cmd)?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()?;
        let base = format!("http://127.0.0.1:{port}");
        let status = format!("{base}/status");
        wait_until(Duration::from_secs(30), "chromedriver ready", || async {
            let r = http.get(&status).send().await;
            match r {
                Ok(r) => r
                    .json::<Value>()
                    .await
                    .is_ok_and(|v| v["value"]["ready"] == true),
                Err(_) => false,
            }
        })
        .await
        .with_context(|| driver.logs())?;
        let profile = tempfile::Builder::new()
            .prefix("riskfeat-chromium-")
            .tempdir()?;
        let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|a| a.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "unhandledPromptBehavior": "ignore",
            "goog:chromeOptions": {"binary": chromium, "args": args},
        }}});
        let resp: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await?
            .json()
            .await?;
        let Some(id) = resp["value"]["sessionId"].as_str() else {
            bail!(
                "chromedriver did not open a session: {resp}\n{}",
                driver.logs()
            );
        };
        Ok(Browser {
            http,
            session: format!("{base}/session/{id}"),
            _driver: driver,
            _profile: profile,
        })
    }

    /// One WebDriver command; the `value` of the answer, or the WebDriver
    /// error (`no such element`, `no such alert`, ...) as the message.
    async fn cmd(&self, method: reqwest::Method, path: &str, body: Value) -> anyhow::Result<Value> {
        let mut r = self.http.request(method, format!("{}{path}", self.session));
        if !body.is_null() {
            r = r.json(&body);
        }
        let resp = r.send().await.context("chromedriver did not answer")?;
        let ok = resp.status().is_success();
        let v: Value = resp.json().await.context("chromedriver's answer")?;
        if !ok {
            bail!(
                "{}: {}",
                v["value"]["error"].as_str().unwrap_or("webdriver error"),
                v["value"]["message"].as_str().unwrap_or("")
            );
        }
        Ok(v["value"].clone())
    }

    /// Navigates to `url` (waits for the load event).
    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.cmd(reqwest::Method::POST, "/url", json!({"url": url}))
            .await
            .map(|_| ())
    }

    /// The current URL.
    pub async fn url(&self) -> anyhow::Result<String> {
        let v = self.cmd(reqwest::Method::GET, "/url", Value::Null).await?;
        Ok(v.as_str().unwrap_or_default().to_string())
    }

    /// Every element matching `css` now (no wait).
    pub async fn find_all(&self, css: &str) -> anyhow::Result<Vec<Element<'_>>> {
        let v = self
            .cmd(
                reqwest::Method::POST,
                "/elements",
                json!({"using": "css selector", "value": css}),
            )
            .await?;
        Ok(v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e[ELEMENT].as_str())
            .map(|id| Element {
                browser: self,
                id: id.to_string(),
            })
            .collect())
    }

    /// How many elements match `css` now and are displayed.
    pub async fn count_displayed(&self, css: &str) -> anyhow::Result<usize> {
        let mut n = 0;
        for e in self.find_all(css).await? {
            if e.displayed().await? {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Waits until an element matching `css` is displayed, and returns it.
    pub async fn find(&self, css: &str) -> anyhow::Result<Element<'_>> {
        let deadline = Instant::now() + WAIT;
        loop {
            for e in self.find_all(css).await? {
                if e.displayed().await.unwrap_or(false) {
                    return Ok(e);
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "no displayed element matches {css:?} after {WAIT:?}; page text:\n{}",
                    self.page_text().await.unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for the displayed `css` element and clicks it.
    pub async fn click(&self, css: &str) -> anyhow::Result<()> {
        self.find(css).await?.click().await
    }

    /// Waits for the displayed `css` element and types `text` into it.
    pub async fn type_into(&self, css: &str, text: &str) -> anyhow::Result<()> {
        self.find(css).await?.type_text(text).await
    }

    /// Waits until the text of a displayed `css` element contains `want`;
    /// returns that text.
    pub async fn wait_text(&self, css: &str, want: &str) -> anyhow::Result<String> {
        let deadline = Instant::now() + WAIT;
        let mut last = String::new();
        loop {
            for e in self.find_all(css).await? {
                if e.displayed().await.unwrap_or(false) {
                    last = e.text().await.unwrap_or_default();
                    if last.contains(want) {
                        return Ok(last);
                    }
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "no displayed {css:?} contains {want:?} after {WAIT:?} (last: {last:?}); \
                     page text:\n{}",
                    self.page_text().await.unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The page's visible text (for failure messages).
    pub async fn page_text(&self) -> anyhow::Result<String> {
        let v = self
            .script("return document.body.innerText;", json!([]))
            .await?;
        Ok(v.as_str().unwrap_or_default().to_string())
    }

    /// Runs `js` (a function body; `arguments` holds `args`) and returns
    /// its result.
    pub async fn script(&self, js: &str, args: Value) -> anyhow::Result<Value> {
        self.cmd(
            reqwest::Method::POST,
            "/execute/sync",
            json!({"script": js, "args": args}),
        )
        .await
    }

    /// The text of an open alert/confirm/prompt, if one is open.
    pub async fn alert_text(&self) -> Option<String> {
        let v = self
            .cmd(reqwest::Method::GET, "/alert/text", Value::Null)
            .await
            .ok()?;
        Some(v.as_str().unwrap_or_default().to_string())
    }

    /// Writes a PNG of the viewport to `path`.
    pub async fn screenshot(&self, path: &Path) -> anyhow::Result<()> {
        let v = self
            .cmd(reqwest::Method::GET, "/screenshot", Value::Null)
            .await?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or_default())
            .context("decoding the screenshot")?;
        std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))
    }
}

impl Element<'_> {
    fn path(&self, rest: &str) -> String {
        format!("/element/{}{rest}", self.id)
    }

    /// Clicks it (scrolled into view first by the driver).
    pub async fn click(&self) -> anyhow::Result<()> {
        self.browser
            .cmd(reqwest::Method::POST, &self.path("/click"), json!({}))
            .await
            .map(|_| ())
    }

    /// Types `text` into it, as key presses.
    pub async fn type_text(&self, text: &str) -> anyhow::Result<()> {
        self.browser
            .cmd(
                reqwest::Method::POST,
                &self.path("/value"),
                json!({"text": text}),
            )
            .await
            .map(|_| ())
    }

    /// Empties an input or textarea.
    pub async fn clear(&self) -> anyhow::Result<()> {
        self.browser
            .cmd(reqwest::Method::POST, &self.path("/clear"), json!({}))
            .await
            .map(|_| ())
    }

    /// Its rendered text.
    pub async fn text(&self) -> anyhow::Result<String> {
        let v = self
            .browser
            .cmd(reqwest::Method::GET, &self.path("/text"), Value::Null)
            .await?;
        Ok(v.as_str().unwrap_or_default().to_string())
    }

    /// A DOM property (`value`, `disabled`, ...).
    pub async fn property(&self, name: &str) -> anyhow::Result<Value> {
        self.browser
            .cmd(
                reqwest::Method::GET,
                &self.path(&format!("/property/{name}")),
                Value::Null,
            )
            .await
    }

    /// A yes/no state of the element: `displayed`, `enabled`, `selected`.
    async fn state(&self, what: &str) -> anyhow::Result<bool> {
        let v = self
            .browser
            .cmd(
                reqwest::Method::GET,
                &self.path(&format!("/{what}")),
                Value::Null,
            )
            .await?;
        Ok(v == true)
    }

    /// Whether it is displayed.
    pub async fn displayed(&self) -> anyhow::Result<bool> {
        self.state("displayed").await
    }

    /// Whether it is enabled.
    pub async fn enabled(&self) -> anyhow::Result<bool> {
        self.state("enabled").await
    }
}
