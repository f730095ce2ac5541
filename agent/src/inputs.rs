//! The login material: role_id (file or env) and secret_id (file, optionally
//! deleted after reading, or a response-wrapping token to unwrap) for
//! AppRole, the service-account token file of a JWT/Kubernetes login, the
//! optional CA bundle Vault's certificate must chain to, and the optional
//! static fallback credential (issue 8).
//!
//! Every failure names the file; a missing, unreadable or empty file is
//! exit 66 (EX_NOINPUT). Values are wrapped in [`Secret`] at once.

use riskfeat_shared::Secret;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Env var holding the role_id when no `role_id_file` is configured.
pub const ROLE_ID_ENV: &str = "RISKFEAT_AGENT_ROLE_ID";

/// A missing or bad input file.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("{what} {path}: cannot read: {source}")]
    Read {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{what} {path} is empty")]
    Empty { what: &'static str, path: String },
    #[error("{what}: not configured (set {hint})")]
    Missing {
        what: &'static str,
        hint: &'static str,
    },
    #[error("{what} {path}: {message}")]
    Invalid {
        what: &'static str,
        path: String,
        message: String,
    },
}

/// Reads a one-value secret file, trimmed; empty is an error.
pub fn read_secret_file(what: &'static str, path: &Path) -> Result<Secret, InputError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| InputError::Read {
        what,
        path: shown.clone(),
        source,
    })?;
    let value = text.trim();
    if value.is_empty() {
        return Err(InputError::Empty { what, path: shown });
    }
    Ok(Secret::new(value))
}

/// The role_id: from `file` when given, else from `RISKFEAT_AGENT_ROLE_ID`.
pub fn role_id(file: Option<&Path>) -> Result<Secret, InputError> {
    match file {
        Some(p) => read_secret_file("vault.role_id_file", p),
        None => match std::env::var(ROLE_ID_ENV) {
            Ok(v) if !v.trim().is_empty() => Ok(Secret::new(v.trim())),
            _ => Err(InputError::Missing {
                what: "role_id",
                hint: "vault.role_id_file or RISKFEAT_AGENT_ROLE_ID",
            }),
        },
    }
}

/// What the secret_id file gave.
#[derive(Debug, Clone)]
pub enum SecretIdSource {
    /// A plain secret_id.
    Plain(Secret),
    /// A response-wrapping token to unwrap (once) into the secret_id.
    Wrapped(Secret),
}

/// What the lifecycle logs in with, as read at start.
#[derive(Debug, Clone)]
pub enum LoginInputs {
    /// `vault.auth.method = "approle"`: the role_id, and the secret_id
    /// (`None` when the state file already holds it).
    AppRole {
        role_id: Secret,
        secret: Option<SecretIdSource>,
    },
    /// `"jwt"` or `"kubernetes"`: nothing kept; the token file is read
    /// again on every login ([`login_token`]), as a projected token rotates.
    ServiceAccountToken,
}

/// The JWT in `vault.auth.token_file`, read now (it rotates); a secret.
pub fn login_token(path: &Path) -> Result<Secret, InputError> {
    read_secret_file("vault.auth.token_file", path)
}

/// Reads the secret_id file; deletes it afterwards when asked.
pub fn secret_id(path: &Path, wrapped: bool, delete: bool) -> Result<SecretIdSource, InputError> {
    let value = read_secret_file("vault.secret_id_file", path)?;
    if delete {
        if let Err(e) = std::fs::remove_file(path) {
            tracing::warn!(path = %path.display(), error = %e, "cannot delete the secret_id file after reading it");
        } else {
            tracing::info!(path = %path.display(), "deleted the secret_id file after reading it");
        }
    }
    Ok(if wrapped {
        SecretIdSource::Wrapped(value)
    } else {
        SecretIdSource::Plain(value)
    })
}

/// The static fallback credential.
#[derive(Debug, Clone)]
pub struct FallbackCredential {
    pub username: String,
    pub password: Secret,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FallbackFile {
    username: String,
    password_file: PathBuf,
}

/// Loads the fallback file (TOML, or JSON when it starts with `{`) and its
/// password file (relative paths are relative to the fallback file).
pub fn fallback(path: &Path) -> Result<FallbackCredential, InputError> {
    const WHAT: &str = "fallback.file";
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| InputError::Read {
        what: WHAT,
        path: shown.clone(),
        source,
    })?;
    if text.trim().is_empty() {
        return Err(InputError::Empty {
            what: WHAT,
            path: shown,
        });
    }
    let parsed: FallbackFile = if text.trim_start().starts_with('{') {
        serde_json::from_str(&text).map_err(|e| e.to_string())
    } else {
        toml::from_str(&text).map_err(|e| e.to_string().trim().replace('\n', " "))
    }
    .map_err(|message| InputError::Invalid {
        what: WHAT,
        path: shown.clone(),
        message,
    })?;
    if parsed.username.trim().is_empty() {
        return Err(InputError::Invalid {
            what: WHAT,
            path: shown,
            message: "username is empty".into(),
        });
    }
    let pw_path = if parsed.password_file.is_relative() {
        path.parent()
            .unwrap_or(Path::new("."))
            .join(&parsed.password_file)
    } else {
        parsed.password_file
    };
    let password = read_secret_file("fallback password_file", &pw_path)?;
    Ok(FallbackCredential {
        username: parsed.username,
        password,
    })
}

/// What `vault.ca_cert_file` is called in errors.
pub const VAULT_CA: &str = "vault.ca_cert_file";

/// A CA file as loaded at start: its bytes (what a reload compares with)
/// and the certificates in them.
pub struct LoadedCa {
    pub path: std::path::PathBuf,
    pub bytes: Vec<u8>,
    pub certs: Vec<reqwest::Certificate>,
}

/// Reads the CA file of `what` once: one or more PEM certificates, each
/// checked by the TLS stack that will use it, so a wrong file is named here
/// at start and not later as "cannot reach Vault".
pub fn load_ca(what: &'static str, path: &Path) -> Result<LoadedCa, InputError> {
    let bytes = read_ca(what, path)?;
    let certs = ca_bundle_pem(what, path, &bytes)?;
    Ok(LoadedCa {
        path: path.to_path_buf(),
        bytes,
        certs,
    })
}

/// The bytes of the CA file of `what` (`database.ca_file`, ...).
pub fn read_ca(what: &'static str, path: &Path) -> Result<Vec<u8>, InputError> {
    std::fs::read(path).map_err(|source| InputError::Read {
        what,
        path: path.display().to_string(),
        source,
    })
}

/// [`load_ca`] of `vault.ca_cert_file` on bytes already read from `path` (a reload compares them
/// with the last ones first).
pub fn vault_ca_pem(path: &Path, pem: &[u8]) -> Result<Vec<reqwest::Certificate>, InputError> {
    ca_bundle_pem(VAULT_CA, path, pem)
}

/// `builder` trusting only `ca` when it is not empty (else the system roots).
pub fn trust_only(
    mut builder: reqwest::ClientBuilder,
    ca: &[reqwest::Certificate],
) -> reqwest::ClientBuilder {
    if !ca.is_empty() {
        builder = builder.tls_built_in_root_certs(false);
        for cert in ca {
            builder = builder.add_root_certificate(cert.clone());
        }
    }
    builder
}

/// The certificates in `pem`, read from `path` for the setting `what`.
pub fn ca_bundle_pem(
    what: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<reqwest::Certificate>, InputError> {
    let shown = path.display().to_string();
    let invalid = |message: String| InputError::Invalid {
        what,
        path: shown.clone(),
        message,
    };
    if pem.iter().all(u8::is_ascii_whitespace) {
        return Err(InputError::Empty {
            what,
            path: shown.clone(),
        });
    }
    let certs = reqwest::Certificate::from_pem_bundle(pem)
        .map_err(|e| invalid(format!("not a PEM certificate bundle: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
        ));
    }
    for (i, cert) in certs.iter().enumerate() {
        trust_only(reqwest::Client::builder(), std::slice::from_ref(cert))
            .build()
            .map_err(|e| {
                invalid(format!(
                    "certificate {} of {} is not usable as a CA: {}",
                    i + 1,
                    certs.len(),
                    riskfeat_shared::telemetry::error_chain(&e)
                ))
            })?;
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vault_ca(path: &Path) -> Result<Vec<reqwest::Certificate>, InputError> {
        load_ca(VAULT_CA, path).map(|c| c.certs)
    }

    #[test]
    fn empty_and_missing_files_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret_id");
        let e = secret_id(&p, false, false).unwrap_err().to_string();
        assert!(
            e.contains("vault.secret_id_file") && e.contains("secret_id"),
            "{e}"
        );
        std::fs::write(&p, "  \n").unwrap();
        let e = secret_id(&p, false, false).unwrap_err().to_string();
        assert!(e.ends_with("is empty"), "{e}");
    }

    #[test]
    fn delete_after_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret_id");
        std::fs::write(&p, "abc\n").unwrap();
        match secret_id(&p, false, true).unwrap() {
            SecretIdSource::Plain(s) => assert_eq!(s.expose(), "abc"),
            other => panic!("{other:?}"),
        }
        assert!(!p.exists());
    }

    #[test]
    fn fallback_toml_and_json() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pw"), "s3cret\n").unwrap();
        let t = dir.path().join("fb.toml");
        std::fs::write(&t, "username = \"fb\"\npassword_file = \"pw\"\n").unwrap();
        let c = fallback(&t).unwrap();
        assert_eq!((c.username.as_str(), c.password.expose()), ("fb", "s3cret"));
        let j = dir.path().join("fb.json");
        std::fs::write(&j, r#"{"username":"fb","password_file":"pw","x":1}"#).unwrap();
        let e = fallback(&j).unwrap_err().to_string();
        assert!(e.contains("fb.json") && e.contains("x"), "{e}");
    }

    #[test]
    fn vault_ca_names_the_file_and_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ca.pem");
        let e = vault_ca(&p).unwrap_err().to_string();
        assert!(
            e.contains("vault.ca_cert_file") && e.contains("ca.pem"),
            "{e}"
        );
        std::fs::write(&p, "\n").unwrap();
        assert!(vault_ca(&p).unwrap_err().to_string().ends_with("is empty"));
        std::fs::write(&p, "just some text\n").unwrap();
        let e = vault_ca(&p).unwrap_err().to_string();
        assert!(e.contains("holds no PEM certificate"), "{e}");
        let junk = "-----BEGIN CERTIFICATE-----\nAAAAAAAA\n-----END CERTIFICATE-----\n";
        std::fs::write(&p, junk).unwrap();
        let e = vault_ca(&p).unwrap_err().to_string();
        assert!(e.contains("certificate 1 of 1"), "{e}");
        assert!(matches!(
            vault_ca(&p).unwrap_err(),
            InputError::Invalid { .. }
        ));
    }
}
