//! `riskfeatctl`: configd's admin API from a shell, for people and GitOps.
//! `publish` has replace-namespace semantics (the file is the whole
//! namespace: the change set is computed by configd, shown, confirmed,
//! and published only at the version it was computed against). Exit codes
//! (`shared::exit`): 0 ok, 64 usage, 65 refused input (schema violation, a
//! bad value), 66 unreadable file, 69 configd unreachable or its database
//! down, 75 version conflict (look again), 77 token refused, 1 otherwise
//! (also: a publish not confirmed).

use riskfeat_shared::exit::Fatal;
use serde_json::{json, Value};
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

/// Where configd is and how to authenticate.
pub struct Target {
    pub addr: String,
    /// `RISKFEAT_CONFIGD_TOKEN`, else the contents of the token file.
    pub token: riskfeat_shared::Secret,
    pub client: reqwest::Client,
}

impl Target {
    /// The token from `RISKFEAT_CONFIGD_TOKEN` or `token_file`.
    pub fn new(addr: String, token_file: Option<&Path>) -> Result<Target, Fatal> {
        let token = match std::env::var("RISKFEAT_CONFIGD_TOKEN") {
            Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
            _ => {
                let path = token_file.ok_or_else(|| {
                    Fatal::Config(
                        "no token: set RISKFEAT_CONFIGD_TOKEN or --token-file (RISKFEAT_CONFIGD_TOKEN_FILE)"
                            .into(),
                    )
                })?;
                read_text(path)?.trim().to_string()
            }
        };
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(|e| Fatal::Runtime(e.to_string()))?;
        Ok(Target {
            addr: addr.trim_end_matches('/').to_string(),
            token: riskfeat_shared::Secret::new(token),
            client,
        })
    }

    /// `GET path`; see [`Target::call`].
    pub async fn get(&self, path: &str) -> Result<Value, Fatal> {
        self.call(reqwest::Method::GET, path, None).await
    }

    /// One request; a non-2xx answer becomes the [`Fatal`] of its status.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, Fatal> {
        let mut r = self
            .client
            .request(method, format!("{}{path}", self.addr))
            .bearer_auth(self.token.expose());
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.map_err(|e| {
            Fatal::Unavailable(format!(
                "configd at {}: {}",
                self.addr,
                riskfeat_shared::telemetry::error_chain(&e)
            ))
        })?;
        let status = resp.status().as_u16();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        if (200..300).contains(&status) {
            return Ok(v);
        }
        let msg = format!(
            "configd answered {status} {}: {}{}",
            v["error"]["code"].as_str().unwrap_or("?"),
            v["error"]["message"].as_str().unwrap_or("(no message)"),
            v["error"]["field"]
                .as_str()
                .map(|f| format!(" (field {f})"))
                .unwrap_or_default()
        );
        Err(match status {
            400 | 404 | 413 => Fatal::Data(msg),
            401 | 403 => Fatal::Permission(msg),
            409 => Fatal::Conflict(msg),
            503 => Fatal::Unavailable(msg),
            _ => Fatal::Runtime(msg),
        })
    }
}

/// A file's text (66 when unreadable).
pub fn read_text(path: &Path) -> Result<String, Fatal> {
    std::fs::read_to_string(path).map_err(|e| Fatal::Input(format!("{}: {e}", path.display())))
}

/// A JSON file (66 unreadable, 65 not JSON).
pub fn read_json(path: &Path) -> Result<Value, Fatal> {
    serde_json::from_str(&read_text(path)?)
        .map_err(|e| Fatal::Data(format!("{}: not JSON: {e}", path.display())))
}

/// A JSON file that is an object of items (key to value).
fn read_items(path: &Path) -> Result<Value, Fatal> {
    let v = read_json(path)?;
    let items = v.get("items").cloned().unwrap_or(v);
    if !items.is_object() {
        return Err(Fatal::Data(format!(
            "{}: expected a JSON object of key to value (or {{\"items\": {{...}}}})",
            path.display()
        )));
    }
    Ok(items)
}

/// The change set as lines: `+ key = v`, `- key`, `~ key: a -> b`.
pub fn show_changes(changes: &Value) -> String {
    let mut out = String::new();
    for c in changes.as_array().into_iter().flatten() {
        let key = c["key"].as_str().unwrap_or("?");
        let line = match c["kind"].as_str() {
            Some("added") => format!("+ {key} = {}", c["after"]),
            Some("removed") => format!("- {key} (was {})", c["before"]),
            _ => format!("~ {key}: {} -> {}", c["before"], c["after"]),
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

fn ns_path(ns: &str, rest: &str) -> String {
    format!("/v1/admin/namespaces/{ns}{rest}")
}

/// What to do.
pub enum Command {
    List,
    Get {
        ns: String,
        key: Option<String>,
    },
    Diff {
        ns: String,
        from: u64,
        to: u64,
    },
    History {
        ns: String,
        limit: u64,
    },
    Publish {
        ns: String,
        file: PathBuf,
        expected_version: Option<u64>,
        yes: bool,
        comment: Option<String>,
    },
    Rollback {
        ns: String,
        to_version: u64,
        comment: Option<String>,
    },
    GrayStart {
        ns: String,
        file: PathBuf,
        labels: Vec<(String, String)>,
        percent: Option<u8>,
        comment: Option<String>,
    },
    GrayShow {
        ns: String,
    },
    GrayPromote {
        ns: String,
    },
    GrayAbort {
        ns: String,
    },
    SchemaGet {
        ns: String,
    },
    SchemaSet {
        ns: String,
        file: PathBuf,
    },
    Rollout {
        ns: String,
    },
}

/// Runs `cmd`; what to print on stdout.
pub async fn run(t: &Target, cmd: Command) -> Result<String, Fatal> {
    use reqwest::Method as M;
    Ok(match cmd {
        Command::List => pretty(&t.get("/v1/admin/namespaces").await?),
        Command::Get { ns, key } => {
            let v = t.get(&ns_path(&ns, "/items")).await?;
            match key {
                None => pretty(&v),
                Some(k) => match v["items"].get(&k) {
                    Some(x) => pretty(x),
                    None => {
                        return Err(Fatal::Data(format!(
                            "{ns}: no key {k:?} at version {}",
                            v["to"]
                        )))
                    }
                },
            }
        }
        Command::Diff { ns, from, to } => {
            let v = t
                .get(&ns_path(&ns, &format!("/diff?from={from}&to={to}")))
                .await?;
            show_changes(&v["changes"])
        }
        Command::History { ns, limit } => {
            let v = t
                .get(&ns_path(&ns, &format!("/history?limit={limit}")))
                .await?;
            let mut out = String::new();
            for h in v["history"].as_array().into_iter().flatten() {
                out.push_str(&format!(
                    "{}\t{}\t{}\t{}\t{} change(s)\t{}\n",
                    h["version"],
                    h["at"].as_str().unwrap_or(""),
                    h["kind"].as_str().unwrap_or("publish"),
                    h["who"].as_str().unwrap_or(""),
                    h["changes"],
                    h["comment"].as_str().unwrap_or("")
                ));
            }
            out
        }
        Command::Publish {
            ns,
            file,
            expected_version,
            yes,
            comment,
        } => {
            let items = read_items(&file)?;
            let mut body = json!({"items": items, "dry_run": true});
            if let Some(e) = expected_version {
                body["expected_version"] = json!(e);
            }
            let plan = t
                .call(M::PUT, &ns_path(&ns, "/items"), Some(body.clone()))
                .await?;
            let shown = show_changes(&plan["changes"]);
            let at = plan["version"].as_u64().unwrap_or(0);
            if shown.is_empty() {
                return Ok(format!(
                    "{ns} is already at {}: nothing to publish\n",
                    file.display()
                ));
            }
            eprint!("{ns} at version {at}:\n{shown}");
            if !yes && !confirm(&format!("publish these changes to {ns}?"))? {
                return Err(Fatal::Runtime(
                    "not published (not confirmed; --yes to skip the question)".into(),
                ));
            }
            body["dry_run"] = json!(false);
            body["expected_version"] = json!(at);
            if let Some(c) = comment {
                body["comment"] = json!(c);
            }
            let done = t.call(M::PUT, &ns_path(&ns, "/items"), Some(body)).await?;
            format!("published {ns} version {}\n", done["version"])
        }
        Command::Rollback {
            ns,
            to_version,
            comment,
        } => {
            let mut body = json!({"to_version": to_version});
            if let Some(c) = comment {
                body["comment"] = json!(c);
            }
            pretty(
                &t.call(M::POST, &ns_path(&ns, "/rollback"), Some(body))
                    .await?,
            )
        }
        Command::GrayStart {
            ns,
            file,
            labels,
            percent,
            comment,
        } => {
            let items = read_items(&file)?;
            let changes: Vec<Value> = items
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| json!({"op": "upsert", "key": k, "value": v}))
                .collect();
            let labels: serde_json::Map<String, Value> =
                labels.into_iter().map(|(k, v)| (k, json!(v))).collect();
            let mut selector = json!({"labels": labels});
            if let Some(p) = percent {
                selector["percent"] = json!(p);
            }
            let mut body = json!({"selector": selector, "changes": changes});
            if let Some(c) = comment {
                body["comment"] = json!(c);
            }
            pretty(&t.call(M::POST, &ns_path(&ns, "/gray"), Some(body)).await?)
        }
        Command::GrayShow { ns } => pretty(&t.get(&ns_path(&ns, "/gray")).await?),
        Command::GrayPromote { ns } => pretty(
            &t.call(M::POST, &ns_path(&ns, "/gray/promote"), Some(json!({})))
                .await?,
        ),
        Command::GrayAbort { ns } => pretty(
            &t.call(M::POST, &ns_path(&ns, "/gray/abort"), Some(json!({})))
                .await?,
        ),
        Command::SchemaGet { ns } => pretty(&t.get(&ns_path(&ns, "/schema")).await?),
        Command::SchemaSet { ns, file } => {
            let schema = read_json(&file)?;
            pretty(
                &t.call(
                    M::PUT,
                    &ns_path(&ns, "/schema"),
                    Some(json!({"schema": schema})),
                )
                .await?,
            )
        }
        Command::Rollout { ns } => pretty(&t.get(&ns_path(&ns, "/rollout")).await?),
    })
}

/// Asks on the terminal; without one, no.
fn confirm(question: &str) -> Result<bool, Fatal> {
    if !std::io::stdin().is_terminal() {
        return Ok(false);
    }
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| Fatal::Input(format!("stdin: {e}")))?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes"))
}
