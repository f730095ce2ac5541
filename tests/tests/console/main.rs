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
//! - [`gray`]: a gray release started from the editor's preview, seen in
//!   the gray and rollout views with two real agents, promoted, aborted,
//!   refused (schema, conflict), read-only for a read token;
//! - [`safety`]: keys, values, client ids and reasons rendered as text
//!   under a strict CSP; a read token sees no write control;
//! - this file: what they share.

mod edit;
mod gray;
mod history;
mod safety;

use riskfeat_tests::browser::Browser;
use riskfeat_tests::{Agent, AgentToml, Configd, ConfigdToken, PgCluster, PgServer, Stack};
use serde_json::Value;
use std::path::{Path, PathBuf};

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

/// Starts an agent of `stack` following `features` on `configd` with the
/// read token, writing to `shared`, its files in `dir`; `identity` is more
/// `[configd]` lines (`client_id`, `labels`).
pub fn follow_features(
    stack: &Stack,
    configd: &Configd,
    dir: &Path,
    shared: &Path,
    identity: &str,
) -> Agent {
    let token_file = dir.join("configd.token");
    std::fs::write(&token_file, READER).unwrap();
    let sections = format!(
        "[configd]\naddr = \"{}\"\ntoken_file = \"{}\"\nnamespaces = [\"features\"]\n\
         poll_timeout_s = 5\n{identity}\n",
        configd.http().base(),
        token_file.display()
    );
    let agent_toml = AgentToml {
        sections: &sections,
        shared_dir: Some(shared),
        ..Default::default()
    };
    let cfg = stack.write_agent_toml(dir, agent_toml).unwrap();
    Agent::spawn(&cfg, shared, &[]).unwrap()
}

/// A PostgreSQL (no replica) and configd on it ([`configd`]) with `ns`
/// seeded with `versions` ([`seed`]).
pub async fn seeded(ns: &str, versions: &[Value]) -> (PgCluster, Configd) {
    let pg = PgCluster::start(false).await.unwrap();
    let configd = configd(&pg.primary).await;
    seed(&configd, ns, versions).await;
    (pg, configd)
}

/// Opens the console and signs in with `token`; returns once the
/// namespaces list is shown. With `shot`, the filled-in sign-in form is
/// saved first.
pub async fn sign_in(b: &Browser, configd: &Configd, token: &str, shot: Option<&str>) {
    b.goto(&configd.url("/ui")).await.unwrap();
    b.type_into("#token", token).await.unwrap();
    if let Some(name) = shot {
        screenshot(b, name).await;
    }
    b.click("#signin-button").await.unwrap();
    b.find("#namespaces").await.unwrap();
}

/// Clicks `css`, then waits until a displayed `shown` contains `want`.
pub async fn click_until(b: &Browser, css: &str, shown: &str, want: &str) {
    b.click(css).await.unwrap();
    b.wait_text(shown, want).await.unwrap();
}

/// Asserts that no element matching `css` (under `#view`) came from the
/// data, and that no script it carried opened an alert.
pub async fn assert_nothing_injected(b: &Browser, css: &str) {
    let js = "return document.querySelectorAll(arguments[0]).length;";
    let injected = b.script(js, serde_json::json!([css])).await.unwrap();
    assert_eq!(injected, 0, "no element from the data ({css})");
    assert_eq!(b.alert_text().await, None, "no alert");
}

/// Replaces the editor's text with `text`, typed.
pub async fn type_draft(b: &Browser, text: &str) {
    let editor = b.find("#editor").await.unwrap();
    editor.clear().await.unwrap();
    editor.type_text(text).await.unwrap();
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
