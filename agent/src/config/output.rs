//! `[[output]]` (credential files for programs other than riskfeat-worker:
//! pgpass, DSN, PG* env, JDBC properties) and `output_allowed_dirs`: the
//! settings and their checks, validated with the rest of [`super::Config`].
//! What the files hold and when they are written: [`crate::outputs`].

use super::Config;
use nix::sys::signal::Signal;
use serde::Deserialize;
use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

/// `output.kind`: the file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    /// libpq's password file (`host:port:dbname:user:password`).
    Pgpass,
    /// A libpq connection string (`format`: key=value or URL).
    Dsn,
    /// `export PG...=` lines, for `. file` in a shell.
    Env,
    /// Java properties with a `jdbc:postgresql://` url, user, password.
    Jdbc,
}

impl OutputKind {
    /// The name in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            OutputKind::Pgpass => "pgpass",
            OutputKind::Dsn => "dsn",
            OutputKind::Env => "env",
            OutputKind::Jdbc => "jdbc",
        }
    }
}

/// `output.format` of a `dsn`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DsnFormat {
    /// `host=... port=... dbname=... user=... password=...`.
    #[default]
    KeyValue,
    /// `postgresql://user:password@host:port/dbname?sslmode=...`.
    Url,
}

/// `output.endpoint`: which database a single-target file points at.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointChoice {
    /// Where features are read (what the worker uses).
    #[default]
    Replica,
    Primary,
}

/// One `[[output]]` block.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSettings {
    pub kind: OutputKind,
    /// Relative: inside `shared_dir`. Absolute: inside `shared_dir` or one
    /// of `output_allowed_dirs`.
    pub path: PathBuf,
    /// File mode; default 0o600 for `pgpass` (libpq ignores a password
    /// file the group can read), 0o640 for the others.
    pub mode: Option<u32>,
    /// Group id of the file; default `file_group`.
    pub group: Option<u32>,
    /// `dsn`/`env`/`jdbc`: the replica (default) or the primary; a `pgpass`
    /// lists both.
    pub endpoint: Option<EndpointChoice>,
    /// `dsn` only.
    pub format: Option<DsnFormat>,
    /// `dsn`/`env`/`jdbc` with `sslmode = "verify-full"`: the CA file's path
    /// as the reading program sees it; default `database.ca_file`.
    pub sslrootcert: Option<PathBuf>,
    /// A file holding the pid of the program to signal after this output
    /// changed.
    pub notify_pid_file: Option<PathBuf>,
    /// The signal sent (`SIGHUP`, `HUP`, `SIGUSR1`...); default `SIGHUP`.
    pub notify_signal: Option<String>,
}

/// Modes an output may have: never world-accessible, never writable by the
/// group (it is a secret the agent alone writes).
const MODES: [u32; 4] = [0o400, 0o440, 0o600, 0o640];

/// Names in the shared dir that belong to the agent and the worker.
const RESERVED: [&str; 7] = [
    "db.json",
    "worker.json",
    "agent-state.json",
    "agent.sock",
    "worker.sock",
    "config",
    "config-cache",
];

impl OutputSettings {
    /// The file mode in force.
    pub fn mode(&self) -> u32 {
        self.mode.unwrap_or(match self.kind {
            OutputKind::Pgpass => 0o600,
            _ => 0o640,
        })
    }

    /// The file's path, relative ones resolved against `shared_dir`.
    pub fn resolved_path(&self, shared_dir: &Path) -> PathBuf {
        if self.path.is_absolute() {
            self.path.clone()
        } else {
            shared_dir.join(&self.path)
        }
    }

    /// The signal in force, when a pid file is set.
    pub fn signal(&self) -> Option<Signal> {
        self.notify_pid_file.as_ref()?;
        parse_signal(self.notify_signal.as_deref().unwrap_or("SIGHUP"))
    }
}

/// `SIGHUP`, `HUP` or `sighup`.
pub fn parse_signal(name: &str) -> Option<Signal> {
    let upper = name.trim().to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&full).ok()
}

/// `[[output]]` blocks, each deserialized on its own so that the type
/// errors and unknown keys of every block are reported at once, each as
/// `output[<i>].<key>` (the loader would stop at the first error inside an
/// array).
pub(super) fn deserialize_blocks<'de, D>(d: D) -> Result<Vec<OutputSettings>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let blocks = Vec::<toml::Value>::deserialize(d)?;
    let mut problems = Vec::new();
    let mut out = Vec::new();
    for (i, block) in blocks.iter().enumerate() {
        let text = match block {
            toml::Value::Table(t) => toml::to_string(t).map_err(serde::de::Error::custom)?,
            _ => {
                problems.push(format!("output[{i}]: must be a table ([[output]] block)"));
                continue;
            }
        };
        match riskfeat_shared::config_loader::deserialize::<OutputSettings>(&text) {
            Ok(o) => out.push(o),
            Err(p) => problems.extend(p.into_iter().map(|m| format!("output[{i}].{m}"))),
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(serde::de::Error::custom(format!(
            "{} problem(s) in [[output]] blocks:\n  - {}",
            problems.len(),
            problems.join("\n  - ")
        )))
    }
}

/// True when `path` names no `..` or `.` and is not empty.
fn plain(path: &Path) -> bool {
    !path.as_os_str().is_empty()
        && path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::RootDir))
}

/// Every problem with `[[output]]` and `output_allowed_dirs` of `cfg`.
pub(super) fn problems(cfg: &Config, out: &mut Vec<String>) {
    for (i, d) in cfg.output_allowed_dirs.iter().enumerate() {
        if !d.is_absolute() || !plain(d) {
            out.push(format!(
                "output_allowed_dirs[{i}]: {:?} must be an absolute path without . or ..",
                d.display()
            ));
        }
    }
    let mut seen = BTreeSet::new();
    for (i, o) in cfg.output.iter().enumerate() {
        let name = format!("output[{i}]");
        let kind = o.kind.as_str();
        if !plain(&o.path) || o.path.file_name().is_none() {
            out.push(format!(
                "{name}.path: {:?} must be a file path without . or ..",
                o.path.display()
            ));
        } else {
            let path = o.resolved_path(&cfg.shared_dir);
            path_problems(cfg, &name, &path, out);
            if !seen.insert(path.clone()) {
                out.push(format!(
                    "{name}.path: {} is already the path of another output",
                    path.display()
                ));
            }
        }
        if !MODES.contains(&o.mode()) {
            out.push(format!(
                "{name}.mode: {:#o} is not allowed for a file holding a password; use 0o600 or 0o640 (or 0o400, 0o440)",
                o.mode()
            ));
        }
        if o.kind == OutputKind::Pgpass && o.endpoint.is_some() {
            out.push(format!(
                "{name}.endpoint: not used by kind \"pgpass\" (it lists both endpoints)"
            ));
        }
        if o.kind != OutputKind::Dsn && o.format.is_some() {
            out.push(format!(
                "{name}.format: only kind \"dsn\" has a format (this one is \"{kind}\")"
            ));
        }
        if o.kind == OutputKind::Pgpass && o.sslrootcert.is_some() {
            out.push(format!(
                "{name}.sslrootcert: not used by kind \"pgpass\" (it holds no TLS settings)"
            ));
        }
        match (&o.notify_pid_file, &o.notify_signal) {
            (None, Some(_)) => out.push(format!(
                "{name}.notify_signal is set but {name}.notify_pid_file is not"
            )),
            (Some(p), _) if !p.is_absolute() => out.push(format!(
                "{name}.notify_pid_file: {:?} must be an absolute path",
                p.display()
            )),
            (Some(_), Some(s)) if parse_signal(s).is_none() => out.push(format!(
                "{name}.notify_signal: {s:?} is not a signal name (e.g. \"SIGHUP\", \"SIGUSR1\")"
            )),
            _ => {}
        }
    }
}

/// Where an output may be: inside the shared dir (not over what the agent
/// and worker own) or inside an allowed dir.
fn path_problems(cfg: &Config, name: &str, path: &Path, out: &mut Vec<String>) {
    if let Ok(rest) = path.strip_prefix(&cfg.shared_dir) {
        let first = rest
            .components()
            .next()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .unwrap_or_default();
        if RESERVED.contains(&first.as_str()) {
            out.push(format!(
                "{name}.path: {} is the agent's or the worker's own {first:?} in the shared dir",
                path.display()
            ));
        }
        return;
    }
    if !cfg
        .output_allowed_dirs
        .iter()
        .any(|d| path.starts_with(d) && path != d)
    {
        out.push(format!(
            "{name}.path: {} is neither in shared_dir {} nor in one of output_allowed_dirs",
            path.display(),
            cfg.shared_dir.display()
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::MINIMAL;
    use super::super::Overrides;
    use super::*;
    use riskfeat_shared::testing::assert_contains_all;

    fn parse(outputs: &str) -> Result<Config, String> {
        parse_with("output_allowed_dirs = [\"/run/app\"]", outputs)
    }

    fn parse_with(top: &str, outputs: &str) -> Result<Config, String> {
        let text = format!("{top}\nshared_dir = \"/run/riskfeat\"\n{MINIMAL}\n{outputs}");
        Config::parse("a.toml", &text, &Overrides::default()).map_err(|e| e.to_string())
    }

    #[test]
    fn outputs_parse_with_their_defaults() {
        let c = parse(
            r#"
            [[output]]
            kind = "pgpass"
            path = "pgpass"
            [[output]]
            kind = "dsn"
            path = "/run/app/db.dsn"
            format = "url"
            endpoint = "primary"
            mode = 0o440
            group = 2000
            notify_pid_file = "/run/app/app.pid"
            "#,
        )
        .unwrap();
        let (p, d) = (&c.output[0], &c.output[1]);
        assert_eq!(p.mode(), 0o600, "libpq wants a private pgpass");
        assert_eq!(
            p.resolved_path(&c.shared_dir),
            PathBuf::from("/run/riskfeat/pgpass")
        );
        assert_eq!(p.signal(), None);
        assert_eq!(d.mode(), 0o440);
        assert_eq!(d.format, Some(DsnFormat::Url));
        assert_eq!(d.signal(), Some(Signal::SIGHUP));
        assert_eq!(parse_signal("usr1"), Some(Signal::SIGUSR1));
        assert_eq!(parse_signal("SIGNOPE"), None);
    }

    #[test]
    fn every_output_problem_at_once() {
        let msg = parse_with(
            "output_allowed_dirs = [\"rel\", \"/run/app\"]",
            r#"
            [[output]]
            kind = "pgpass"
            path = "db.json"
            endpoint = "replica"
            sslrootcert = "/ca.pem"
            [[output]]
            kind = "env"
            path = "/etc/passwd"
            mode = 0o644
            format = "url"
            [[output]]
            kind = "jdbc"
            path = "../x"
            notify_signal = "SIGHUP"
            [[output]]
            kind = "dsn"
            path = "/run/riskfeat/a.dsn"
            notify_pid_file = "/run/app.pid"
            notify_signal = "SIGNOPE"
            [[output]]
            kind = "dsn"
            path = "a.dsn"
            notify_pid_file = "app.pid"
            "#,
        )
        .unwrap_err();
        assert_contains_all(
            &msg,
            &[
                "output_allowed_dirs[0]",
                "output[0].path: /run/riskfeat/db.json is the agent's",
                "output[0].endpoint: not used by kind \"pgpass\"",
                "output[0].sslrootcert",
                "output[1].path: /etc/passwd is neither in shared_dir",
                "output[1].mode: 0o644",
                "output[1].format: only kind \"dsn\"",
                "output[2].path: \"../x\"",
                "output[2].notify_signal is set but output[2].notify_pid_file is not",
                "output[3].notify_signal: \"SIGNOPE\"",
                "output[4].path: /run/riskfeat/a.dsn is already the path",
                "output[4].notify_pid_file: \"app.pid\" must be an absolute path",
            ],
        );
    }

    #[test]
    fn type_errors_of_every_block_at_once() {
        let msg = parse(
            r#"
            [[output]]
            kind = "yaml"
            path = "x"
            [[output]]
            kind = "env"
            path = "y"
            colour = 1
            mode = "0640"
            "#,
        )
        .unwrap_err();
        assert_contains_all(
            &msg,
            &[
                "output[0].kind: unknown variant `yaml`",
                "output[1].colour: unknown key",
                "output[1].mode: invalid type: string",
            ],
        );
    }
}
