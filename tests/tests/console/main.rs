//! riskfeat-configd's web console (`/ui`) in a real browser: headless
//! Chromium driven through chromedriver ([`riskfeat_tests::browser`]), on
//! the real configd over a harness PostgreSQL, and for the end-to-end case
//! the real agent and worker as well. Each main page is written as a PNG to
//! `target/artifacts/console/` (the copies in docs/screenshots/ come from
//! there).
//!
//! - [`edit`]: sign in, edit, validate, preview the diff, a concurrent
//!   publish as a conflict, publish, and the worker answers with it;
//! - [`history`]: history with author, token and comment, the diff of two
//!   versions, rollback;
//! - [`safety`]: keys and values rendered as text under a strict CSP; a
//!   read token sees no write control;
//! - this file: what they share.

mod edit;
mod history;
mod safety;

use riskfeat_tests::browser::Browser;
use riskfeat_tests::{Configd, ConfigdToken, PgServer};
use serde_json::Value;
use std::path::PathBuf;

pub const ADMIN: &str = "admin-token-0123456789";
pub const READER: &str = "reader-token-0123456789";

/// configd on `pg` with the admin token `admin` and the read token
/// `analyst` (every namespace); ready.
pub async fn configd(pg: &PgServer) -> Configd {
    let tokens = [
        ConfigdToken::admin("admin", ADMIN),
        ConfigdToken::read("analyst", READER, &["*"]),
    ];
    let mut c = Configd::new(&pg.superuser_dsn(), &tokens).unwrap();
    c.start("").await.unwrap();
    c
}

/// One admin API request: status and JSON body (`null` when none).
pub async fn admin(
    configd: &Configd,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = reqwest::Client::new()
        .request(method, configd.url(path))
        .bearer_auth(ADMIN);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// An admin `GET` of `path`: status and JSON body.
pub async fn admin_get(configd: &Configd, path: &str) -> (u16, Value) {
    admin(configd, reqwest::Method::GET, path, None).await
}

/// Creates `ns` and publishes each change set of `versions` in turn
/// (version 1, 2, ...), with comment "v<N>".
pub async fn seed(configd: &Configd, ns: &str, versions: &[Value]) {
    let path = format!("/v1/admin/namespaces/{ns}");
    let (s, b) = admin(configd, reqwest::Method::PUT, &path, None).await;
    assert_eq!(s, 201, "{b}");
    for (i, changes) in versions.iter().enumerate() {
        let body = serde_json::json!({"changes": changes, "comment": format!("v{}", i + 1)});
        let (s, b) = admin(
            configd,
            reqwest::Method::POST,
            &format!("{path}/publish"),
            Some(body),
        )
        .await;
        assert_eq!(s, 200, "{b}");
    }
}

/// Opens the console and signs in with `token`; returns once the
/// namespaces list is shown. With `shot`, the filled-in sign-in form is
/// saved first.
pub async fn sign_in(b: &Browser, configd: &Configd, token: &str, shot: Option<&str>) {
    b.goto(&configd.url("/ui")).await.unwrap();
    b.find("#token")
        .await
        .unwrap()
        .type_text(token)
        .await
        .unwrap();
    if let Some(name) = shot {
        screenshot(b, name).await;
    }
    b.find("#signin-button")
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.find("#namespaces").await.unwrap();
}

/// Saves the page as `target/artifacts/console/<name>.png`.
pub async fn screenshot(b: &Browser, name: &str) -> PathBuf {
    let path = riskfeat_tests::process::artifacts_dir("console")
        .unwrap()
        .join(format!("{name}.png"));
    b.screenshot(&path).await.unwrap();
    path
}

/// The text of every `css` element on the page now, in order.
pub async fn texts(b: &Browser, css: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in b.find_all(css).await.unwrap() {
        out.push(e.text().await.unwrap());
    }
    out
}

/// Each `css` table row now as its cells' texts joined by " | ".
pub async fn rows(b: &Browser, css: &str) -> Vec<String> {
    let js = "return [...document.querySelectorAll(arguments[0])]\
              .map(tr => [...tr.cells].map(c => c.innerText.trim()).join(' | '));";
    let v = b.script(js, serde_json::json!([css])).await.unwrap();
    serde_json::from_value(v).unwrap()
}
