//! The one way every riskfeat binary loads its TOML config file: read it,
//! deserialize it into the typed config reporting every type error and
//! unknown key at once (each with its key path, e.g. `vault.addr: ...`),
//! apply the flag/env [`Overrides`], then the config's own checks
//! ([`ConfigFile::validate`]); any failure is one [`ConfigError`] naming the
//! file.
//!
//! Serde stops at the first error, so [`deserialize`] records it with its
//! path (serde_path_to_error), removes the offending key from the parsed
//! TOML and tries again, a bounded number of times; the "missing field"
//! error that such a removal itself causes is not reported.

use crate::exit::Fatal;
use serde::de::DeserializeOwned;
use serde_path_to_error::Segment;
use std::path::Path;

/// Why a config file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file itself could not be read.
    #[error("{path}: cannot read config file: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// Not TOML, wrong types, unknown keys, or values that fail the checks:
    /// every problem found.
    #[error("{path}: invalid config:\n  - {}", problems.join("\n  - "))]
    Invalid { path: String, problems: Vec<String> },
    /// A file the config names could not be read (nothing else was wrong).
    #[error("{path}: {message}")]
    Input { path: String, message: String },
}

impl ConfigError {
    /// The fatal error to exit with: [`Fatal::Config`] (64) for content,
    /// `unreadable` for a file that could not be read (each binary keeps the
    /// code its docs give: the agent and worker 64, configd 66).
    pub fn fatal(&self, unreadable: fn(String) -> Fatal) -> Fatal {
        match self {
            ConfigError::Read { .. } | ConfigError::Input { .. } => unreadable(self.to_string()),
            ConfigError::Invalid { .. } => Fatal::Config(self.to_string()),
        }
    }
}

/// Why [`ConfigFile::validate`] refused a deserialized config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejected {
    /// Every problem found.
    Problems(Vec<String>),
    /// A file the config names could not be read, and nothing else was wrong.
    Input(String),
}

/// A typed config file.
pub trait ConfigFile: DeserializeOwned {
    /// What a valid file becomes (`Self` when nothing needs resolving).
    type Valid;
    /// Checks every value and reports every problem at once. `dir` is the
    /// config file's directory, which relative paths resolve against.
    fn validate(self, dir: &Path) -> Result<Self::Valid, Rejected>;
}

/// A config whose checks need nothing but its own values: it is valid when
/// it has no problem.
pub trait Validate {
    /// Every semantic problem, all at once (empty when valid).
    fn problems(&self) -> Vec<String>;
}

impl<C: Validate + DeserializeOwned> ConfigFile for C {
    type Valid = C;
    fn validate(self, _dir: &Path) -> Result<C, Rejected> {
        let problems = self.problems();
        accept(self, problems)
    }
}

/// Flag/env values that win over the file; applied before validation.
pub trait Overrides<C> {
    /// Overwrites the keys this override sets.
    fn apply(&self, cfg: &mut C);
}

/// No overrides.
impl<C> Overrides<C> for () {
    fn apply(&self, _: &mut C) {}
}

/// Sets `target` to `value` when the override is given.
pub fn set<T: Clone>(target: &mut T, value: &Option<T>) {
    if let Some(v) = value {
        *target = v.clone();
    }
}

/// `Ok(cfg)` when there is no problem.
pub fn accept<C>(cfg: C, problems: Vec<String>) -> Result<C, Rejected> {
    if problems.is_empty() {
        Ok(cfg)
    } else {
        Err(Rejected::Problems(problems))
    }
}

/// Reads `path`, then [`parse`]s it (relative paths against its directory).
pub fn load<C: ConfigFile>(
    path: &Path,
    overrides: &impl Overrides<C>,
) -> Result<C::Valid, ConfigError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: name.clone(),
        source,
    })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    parse(&name, &text, dir, overrides)
}

/// Deserializes `text`, applies `overrides`, validates; `name` only names
/// the file in errors.
pub fn parse<C: ConfigFile>(
    name: &str,
    text: &str,
    dir: &Path,
    overrides: &impl Overrides<C>,
) -> Result<C::Valid, ConfigError> {
    let invalid = |problems| ConfigError::Invalid {
        path: name.to_string(),
        problems,
    };
    let mut cfg: C = deserialize(text).map_err(invalid)?;
    overrides.apply(&mut cfg);
    cfg.validate(dir).map_err(|r| match r {
        Rejected::Problems(p) => invalid(p),
        Rejected::Input(message) => ConfigError::Input {
            path: name.to_string(),
            message,
        },
    })
}

/// How many errors one file may report before the rest are left unsaid.
const MAX_ERRORS: usize = 64;

/// Deserializes TOML text into `T`, or gives every syntax error, type error,
/// unknown key and missing key, each as `key.path: what`.
pub fn deserialize<T: DeserializeOwned>(text: &str) -> Result<T, Vec<String>> {
    let table: toml::Table = text.parse().map_err(|e| vec![syntax_error(text, &e)])?;
    let mut value = toml::Value::Table(table);
    let mut problems = Vec::new();
    // Key paths removed so far: the missing-field errors they cause are ours.
    let mut removed: Vec<String> = Vec::new();
    for _ in 0..MAX_ERRORS {
        let err = match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(t) if problems.is_empty() => return Ok(t),
            Ok(_) => return Err(problems),
            Err(e) => e,
        };
        // Only keys of tables can be removed: an error inside an array or
        // an enum is charged to the key that holds it.
        let keys: Vec<&str> = err
            .path()
            .iter()
            .map_while(|s| match s {
                Segment::Map { key } => Some(key.as_str()),
                _ => None,
            })
            .collect();
        let at = keys.join(".");
        let message = err.inner().message().trim_end().to_string();
        match missing_field(&message) {
            Some(field) => {
                let missing = join(&at, field);
                if !removed.contains(&missing) {
                    problems.push(format!("{missing}: required key is missing"));
                }
                // Every key of this table was read already: drop the table.
            }
            None => {
                let message = match keys.last() {
                    Some(k) => message.replacen(&format!("unknown field `{k}`"), "unknown key", 1),
                    None => message,
                };
                problems.push(match at.as_str() {
                    "" => message,
                    _ => format!("{at}: {message}"),
                });
            }
        }
        if !remove(&mut value, &keys) {
            break;
        }
        removed.push(at);
    }
    Err(problems)
}

fn join(at: &str, key: &str) -> String {
    if at.is_empty() {
        key.to_string()
    } else {
        format!("{at}.{key}")
    }
}

/// `X` of serde's "missing field `X`".
fn missing_field(message: &str) -> Option<&str> {
    message.strip_prefix("missing field `")?.split('`').next()
}

/// Removes the key at `keys`; false when there is none to remove.
fn remove(value: &mut toml::Value, keys: &[&str]) -> bool {
    let Some((last, parents)) = keys.split_last() else {
        return false;
    };
    let mut table = value;
    for k in parents {
        match table.get_mut(*k) {
            Some(t) => table = t,
            None => return false,
        }
    }
    table
        .as_table_mut()
        .is_some_and(|t| t.remove(*last).is_some())
}

/// `line L, column C (`that line`): what is wrong`.
fn syntax_error(text: &str, e: &toml::de::Error) -> String {
    let what = e.message().trim_end().replace('\n', ", ");
    let Some(span) = e.span() else {
        return format!("not TOML: {what}");
    };
    let start = span.start.min(text.len());
    let before = &text[..start];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = text[line_start..start].chars().count() + 1;
    let quoted = text[line_start..].lines().next().unwrap_or("").trim();
    format!("line {line}, column {column} (`{quoted}`): {what}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Top {
        name: String,
        #[serde(default)]
        count: u32,
        inner: Inner,
        #[serde(default)]
        list: Vec<u32>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        addr: String,
        #[serde(default)]
        port: u16,
    }

    #[test]
    fn a_good_file_deserializes() {
        let t: Top = deserialize("name = 'n'\n[inner]\naddr = 'a'\nport = 1\n").unwrap();
        assert_eq!((t.name.as_str(), t.inner.addr.as_str()), ("n", "a"));
        assert_eq!((t.count, t.inner.port, t.list.len()), (0, 1, 0));
    }

    #[test]
    fn every_error_is_reported_with_its_key_path() {
        let text = "name = 5\ncount = 'x'\ncolour = 1\nlist = [1, 'a']\n\
                    [inner]\naddr = 1\nport = 'p'\nextra = true\n";
        let problems = deserialize::<Top>(text).unwrap_err();
        let all = problems.join("\n");
        for want in [
            "name: invalid type: integer `5`, expected a string",
            "count: invalid type: string \"x\", expected u32",
            "colour: unknown key, expected one of `name`, `count`, `inner`, `list`",
            "list: invalid type: string \"a\", expected u32",
            "inner.addr: invalid type: integer `1`, expected a string",
            "inner.port: invalid type: string \"p\", expected u16",
            "inner.extra: unknown key, expected `addr` or `port`",
        ] {
            assert!(problems.iter().any(|p| p == want), "{want:?} not in\n{all}");
        }
        assert_eq!(problems.len(), 7, "{all}");
    }

    #[test]
    fn a_missing_key_is_named_and_a_removal_does_not_add_one() {
        let problems = deserialize::<Top>("count = 1\n[inner]\nport = 2\n").unwrap_err();
        assert_eq!(
            problems,
            [
                "inner.addr: required key is missing",
                "name: required key is missing"
            ],
            "inner, dropped after its error, is not reported missing"
        );
        let problems = deserialize::<Top>("name = 'n'\n").unwrap_err();
        assert_eq!(problems, vec!["inner: required key is missing".to_string()]);
    }

    #[test]
    fn a_syntax_error_names_line_column_and_text() {
        let problems = deserialize::<Top>("name = 'n'\n[inner\naddr = 1\n").unwrap_err();
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].starts_with("line 2, column 7 (`[inner`): "),
            "{problems:?}"
        );
    }

    struct Checked(Top);

    impl<'de> Deserialize<'de> for Checked {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            Top::deserialize(d).map(Checked)
        }
    }

    impl ConfigFile for Checked {
        type Valid = Top;
        fn validate(self, _: &Path) -> Result<Top, Rejected> {
            let problems = if self.0.count > 10 {
                vec![format!("count = {}: at most 10", self.0.count)]
            } else {
                vec![]
            };
            accept(self.0, problems)
        }
    }

    struct Count(Option<u32>);

    impl Overrides<Checked> for Count {
        fn apply(&self, cfg: &mut Checked) {
            set(&mut cfg.0.count, &self.0);
        }
    }

    #[test]
    fn overrides_apply_before_validation_and_errors_name_the_file() {
        let text = "name = 'n'\ncount = 50\n[inner]\naddr = 'a'\n";
        let dir = Path::new(".");
        let ok = parse::<Checked>("c.toml", text, dir, &Count(Some(3))).unwrap();
        assert_eq!(ok.count, 3);
        let err = parse::<Checked>("c.toml", text, dir, &()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "c.toml: invalid config:\n  - count = 50: at most 10"
        );
        assert_eq!(err.fatal(Fatal::Input).exit_code(), 64);
        let err = load::<Checked>(Path::new("/nonexistent/c.toml"), &()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("/nonexistent/c.toml: cannot read config file: "),
            "{err}"
        );
        assert_eq!(err.fatal(Fatal::Input).exit_code(), 66);
        assert_eq!(err.fatal(Fatal::Config).exit_code(), 64);
    }
}
