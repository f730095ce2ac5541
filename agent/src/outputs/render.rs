//! The bytes of each `[[output]]` kind for one credential: pgpass, a libpq
//! DSN (key=value or URL), shell `export PG...=` lines, JDBC properties.
//! Pure functions; every value is escaped for its format, so a password
//! with quotes, colons or spaces reaches the reader intact. The result holds
//! the password: it is written, never logged.

use crate::config::{DsnFormat, EndpointChoice, OutputKind, OutputSettings};
use riskfeat_shared::creds::{DbCredential, Endpoint, SslMode};
use std::fmt::Write;
use std::path::Path;

/// The file's contents, or why this credential cannot be put in it.
pub fn render(
    o: &OutputSettings,
    cred: &DbCredential,
    ca_file: Option<&Path>,
) -> Result<String, String> {
    let ep = match o.endpoint.unwrap_or_default() {
        EndpointChoice::Replica => &cred.replica,
        EndpointChoice::Primary => &cred.primary,
    };
    let ca = o.sslrootcert.as_deref().or(ca_file);
    let tls = Tls {
        mode: ep.sslmode,
        rootcert: ca
            .filter(|_| !ep.sslmode.is_disable())
            .map(|p| p.display().to_string()),
    };
    Ok(match o.kind {
        OutputKind::Pgpass => pgpass(cred)?,
        OutputKind::Dsn => match o.format.unwrap_or_default() {
            DsnFormat::KeyValue => dsn_keyvalue(cred, ep, &tls),
            DsnFormat::Url => dsn_url(cred, ep, &tls),
        },
        OutputKind::Env => env(cred, ep, &tls),
        OutputKind::Jdbc => jdbc(cred, ep, &tls),
    })
}

/// sslmode and, with verify-full, the CA file.
struct Tls {
    mode: SslMode,
    rootcert: Option<String>,
}

impl Tls {
    /// `(key, value)` pairs in libpq's names.
    fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut v = vec![("sslmode", self.mode.as_str().to_string())];
        if let Some(ca) = &self.rootcert {
            v.push(("sslrootcert", ca.clone()));
        }
        v
    }
}

/// The first line of the files that can hold a comment: what a reader
/// parses the generation from (`generation=<n>`).
fn header(cred: &DbCredential) -> String {
    format!(
        "# generation={} fallback={} (written by riskfeat-agent; do not edit)\n",
        cred.generation, cred.fallback
    )
}

/// libpq's password file: one line per endpoint (the replica first),
/// `\` and `:` escaped.
fn pgpass(cred: &DbCredential) -> Result<String, String> {
    let esc = |s: &str| s.replace('\\', "\\\\").replace(':', "\\:");
    let secret = cred.password.expose();
    if [cred.username.as_str(), secret]
        .iter()
        .any(|s| s.contains(['\n', '\r']))
    {
        return Err(
            "the username or password holds a line break, which a pgpass file cannot".into(),
        );
    }
    let mut out = header(cred);
    let mut seen = Vec::new();
    for ep in [&cred.replica, &cred.primary] {
        let line = format!(
            "{}:{}:{}:{}:{}\n",
            esc(&ep.host),
            ep.port,
            esc(&ep.dbname),
            esc(&cred.username),
            esc(secret)
        );
        if !seen.contains(&line) {
            out.push_str(&line);
            seen.push(line);
        }
    }
    Ok(out)
}

/// A key=value value, single-quoted when it must be.
fn kv_quote(s: &str) -> String {
    if !s.is_empty() && !s.contains(|c: char| c.is_whitespace() || c == '\'' || c == '\\') {
        return s.to_string();
    }
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// The libpq connection parameters for `cred` at `ep`, by keyword, the TLS
/// ones last: what the key=value DSN says, and the environment (through
/// [`libpq_env`]).
fn libpq_params(cred: &DbCredential, ep: &Endpoint, tls: &Tls) -> Vec<(&'static str, String)> {
    let mut params = vec![
        ("host", ep.host.clone()),
        ("port", ep.port.to_string()),
        ("dbname", ep.dbname.clone()),
        ("user", cred.username.clone()),
        ("password", cred.password.expose().to_string()),
    ];
    params.extend(tls.pairs());
    params
}

/// The environment variable libpq reads a [`libpq_params`] keyword from.
fn libpq_env(keyword: &str) -> &'static str {
    match keyword {
        "host" => "PGHOST",
        "port" => "PGPORT",
        "dbname" => "PGDATABASE",
        "user" => "PGUSER",
        "password" => "PGPASSWORD",
        "sslmode" => "PGSSLMODE",
        "sslrootcert" => "PGSSLROOTCERT",
        other => unreachable!("libpq_params has no keyword {other}"),
    }
}

fn dsn_keyvalue(cred: &DbCredential, ep: &Endpoint, tls: &Tls) -> String {
    let mut out = libpq_params(cred, ep, tls)
        .iter()
        .map(|(k, v)| format!("{k}={}", kv_quote(v)))
        .collect::<Vec<_>>()
        .join(" ");
    out.push('\n');
    out
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn pct(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// `host:port`, an IPv6 address in brackets.
fn host_port(ep: &Endpoint) -> String {
    if ep.host.contains(':') {
        format!("[{}]:{}", ep.host, ep.port)
    } else {
        format!("{}:{}", pct(&ep.host), ep.port)
    }
}

/// `?sslmode=...&sslrootcert=...`.
fn query(tls: &Tls) -> String {
    let q: Vec<String> = tls
        .pairs()
        .iter()
        .map(|(k, v)| format!("{k}={}", pct(v)))
        .collect();
    format!("?{}", q.join("&"))
}

fn dsn_url(cred: &DbCredential, ep: &Endpoint, tls: &Tls) -> String {
    format!(
        "postgresql://{}:{}@{}/{}{}\n",
        pct(&cred.username),
        pct(cred.password.expose()),
        host_port(ep),
        pct(&ep.dbname),
        query(tls)
    )
}

/// A POSIX shell single-quoted word.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn env(cred: &DbCredential, ep: &Endpoint, tls: &Tls) -> String {
    let mut vars: Vec<_> = libpq_params(cred, ep, tls)
        .into_iter()
        .map(|(k, v)| (libpq_env(k), v))
        .collect();
    vars.push(("RISKFEAT_GENERATION", cred.generation.to_string()));
    let mut out = header(cred);
    for (k, v) in vars {
        let _ = writeln!(out, "export {k}={}", sh_quote(&v));
    }
    out
}

/// A Java properties value (or key): backslash escapes for what the
/// format gives a meaning to, `\uXXXX` beyond ASCII.
fn prop_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for (i, c) in s.chars().enumerate() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x0c' => out.push_str("\\f"),
            '=' | ':' | '#' | '!' => {
                out.push('\\');
                out.push(c);
            }
            ' ' if i == 0 => out.push_str("\\ "),
            c if c.is_ascii() && !c.is_ascii_control() => out.push(c),
            c => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{u:04x}");
                }
            }
        }
    }
    out
}

fn jdbc(cred: &DbCredential, ep: &Endpoint, tls: &Tls) -> String {
    let url = format!(
        "jdbc:postgresql://{}/{}{}",
        host_port(ep),
        pct(&ep.dbname),
        query(tls)
    );
    let mut out = header(cred);
    for (k, v) in [
        ("url", url),
        ("user", cred.username.clone()),
        ("password", cred.password.expose().to_string()),
        ("riskfeat.generation", cred.generation.to_string()),
    ] {
        let _ = writeln!(out, "{k}={}", prop_escape(&v));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use riskfeat_shared::Secret;

    fn cred(password: &str) -> DbCredential {
        let ep = |host: &str, port| Endpoint {
            host: host.into(),
            port,
            dbname: "risk feat".into(),
            sslmode: SslMode::Disable,
        };
        DbCredential {
            generation: 7,
            username: "v-approle-x".into(),
            password: Secret::new(password),
            primary: ep("pg-primary", 5432),
            replica: ep("::1", 5433),
            ..DbCredential::example()
        }
    }

    fn output(kind: &str, extra: &str) -> OutputSettings {
        toml::from_str(&format!("kind = \"{kind}\"\npath = \"x\"\n{extra}")).unwrap()
    }

    const PW: &str = r#"a:b\c' d"e"#;

    #[test]
    fn pgpass_escapes_and_lists_both_endpoints() {
        let text = render(&output("pgpass", ""), &cred(PW), None).unwrap();
        assert_eq!(
            text,
            "# generation=7 fallback=false (written by riskfeat-agent; do not edit)\n\
             \\:\\:1:5433:risk feat:v-approle-x:a\\:b\\\\c' d\"e\n\
             pg-primary:5432:risk feat:v-approle-x:a\\:b\\\\c' d\"e\n"
        );
        let err = render(&output("pgpass", ""), &cred("a\nb"), None).unwrap_err();
        assert!(!err.contains("a\nb"), "{err}");
    }

    #[test]
    fn dsn_in_both_forms() {
        let kv = render(&output("dsn", ""), &cred(PW), None).unwrap();
        assert_eq!(
            kv,
            "host=::1 port=5433 dbname='risk feat' user=v-approle-x \
             password='a:b\\\\c\\' d\"e' sslmode=disable\n"
        );
        let url = render(
            &output("dsn", "format = \"url\"\nendpoint = \"primary\""),
            &cred(PW),
            None,
        )
        .unwrap();
        assert_eq!(
            url,
            "postgresql://v-approle-x:a%3Ab%5Cc%27%20d%22e@pg-primary:5432/risk%20feat?sslmode=disable\n"
        );
    }

    #[test]
    fn env_is_shell_quoted_and_carries_the_generation() {
        let mut c = cred("it's");
        c.replica.sslmode = SslMode::VerifyFull;
        let text = render(&output("env", ""), &c, Some(Path::new("/etc/ca.pem"))).unwrap();
        assert!(text.contains("export PGPASSWORD='it'\\''s'\n"), "{text}");
        assert!(text.contains("export PGHOST='::1'\n"), "{text}");
        assert!(text.contains("export PGSSLMODE='verify-full'\n"), "{text}");
        assert!(
            text.contains("export PGSSLROOTCERT='/etc/ca.pem'\n"),
            "{text}"
        );
        assert!(text.ends_with("export RISKFEAT_GENERATION='7'\n"), "{text}");
    }

    #[test]
    fn jdbc_properties_escape_values() {
        let mut c = cred("p=q:r#s!\u{e9}");
        c.replica.sslmode = SslMode::VerifyFull;
        let o = output("jdbc", "sslrootcert = \"/app/ca.pem\"");
        let text = render(&o, &c, Some(Path::new("/agent/ca.pem"))).unwrap();
        assert!(
            text.contains(
                "url=jdbc\\:postgresql\\://[\\:\\:1]\\:5433/risk%20feat?sslmode\\=verify-full&sslrootcert\\=%2Fapp%2Fca.pem\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("password=p\\=q\\:r\\#s\\!\\u00e9\n"),
            "{text}"
        );
        assert!(text.ends_with("riskfeat.generation=7\n"), "{text}");
    }
}
