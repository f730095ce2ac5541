//! TLS to PostgreSQL, the same for the agent's replica login check, the
//! worker's pools and configd's pool ([`ReloadingPgTls`]): the `sslmode` an
//! [`Endpoint`] asks for and the rustls
//! connector that verifies the server against a CA file.
//!
//! Two modes, on purpose: `disable` (plain TCP, e.g. inside a mesh that
//! encrypts) and `verify-full` (TLS, the chain must end at a CA of
//! `ca_file` and the certificate must name the host). libpq's `require`
//! (encrypt, trust any certificate) and `prefer` (maybe encrypt) are not
//! offered: both accept a man in the middle. The server's certificate
//! must be issued by a CA in the file (cert-manager's CA issuer, or the
//! platform's); a bare self-signed leaf is not accepted as its own CA.

use crate::creds::Endpoint;
pub use crate::creds::SslMode;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use std::path::Path;
use std::sync::Arc;
use tokio_postgres_rustls::MakeRustlsConnect;

/// A CA file that cannot be used, or an endpoint that asks for TLS while
/// no CA file is configured.
#[derive(Debug, thiserror::Error)]
pub enum PgTlsError {
    #[error("{setting} {path}: cannot read: {source}")]
    Read {
        setting: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{setting} {path}: {message}")]
    Invalid {
        setting: &'static str,
        path: String,
        message: String,
    },
    #[error("{target} asks for sslmode verify-full but {setting} is not set")]
    NoCa {
        target: String,
        setting: &'static str,
    },
}

/// The TLS side of connecting to PostgreSQL: one connector (cheap to
/// clone) for every pool and check of the process.
#[derive(Clone)]
pub struct PgTls {
    connector: MakeRustlsConnect,
    has_ca: bool,
    setting: &'static str,
}

impl std::fmt::Debug for PgTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTls")
            .field("has_ca", &self.has_ca)
            .field("setting", &self.setting)
            .finish_non_exhaustive()
    }
}

impl PgTls {
    /// Reads the CA bundle (PEM, one or more certificates) when given;
    /// `setting` names the config key in errors (`database.ca_file`...).
    /// Without a file only `disable` endpoints can be reached.
    pub fn new(setting: &'static str, ca_file: Option<&Path>) -> Result<PgTls, PgTlsError> {
        match ca_file {
            None => Ok(Self::with_roots(setting, rustls::RootCertStore::empty())),
            Some(path) => {
                let pem = std::fs::read(path).map_err(|source| PgTlsError::Read {
                    setting,
                    path: path.display().to_string(),
                    source,
                })?;
                Self::from_pem(setting, path, &pem)
            }
        }
    }

    /// Like [`PgTls::new`] from the bytes of `path` already read (to
    /// compare them with the last ones loaded before parsing again).
    pub fn from_pem(setting: &'static str, path: &Path, pem: &[u8]) -> Result<PgTls, PgTlsError> {
        let invalid = |message: String| PgTlsError::Invalid {
            setting,
            path: path.display().to_string(),
            message,
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<_, _>>()
            .map_err(|e| invalid(format!("not a PEM certificate bundle: {e}")))?;
        if certs.is_empty() {
            return Err(invalid(
                "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
            ));
        }
        let mut roots = rustls::RootCertStore::empty();
        for (i, cert) in certs.into_iter().enumerate() {
            roots.add(cert).map_err(|e| {
                invalid(format!("certificate {} is not usable as a CA: {e}", i + 1))
            })?;
        }
        Ok(Self::with_roots(setting, roots))
    }

    fn with_roots(setting: &'static str, roots: rustls::RootCertStore) -> PgTls {
        let has_ca = !roots.is_empty();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        PgTls {
            connector: MakeRustlsConnect::new(config),
            has_ca,
            setting,
        }
    }

    /// Sets `cfg`'s sslmode for `ep`; fails when `ep` wants TLS and there
    /// is no CA to verify the server with.
    pub fn configure(
        &self,
        ep: &Endpoint,
        cfg: &mut tokio_postgres::Config,
    ) -> Result<(), PgTlsError> {
        use tokio_postgres::config::SslMode as Pg;
        match ep.sslmode {
            SslMode::Disable => {
                cfg.ssl_mode(Pg::Disable);
            }
            SslMode::VerifyFull => {
                if !self.has_ca {
                    return Err(PgTlsError::NoCa {
                        target: format!("{}:{}", ep.host, ep.port),
                        setting: self.setting,
                    });
                }
                // The connector verifies chain and name; Require makes a
                // server without TLS an error instead of a fallback.
                cfg.ssl_mode(Pg::Require);
            }
        }
        Ok(())
    }

    /// The connector to pass to `connect` or a pool manager.
    pub fn connector(&self) -> MakeRustlsConnect {
        self.connector.clone()
    }
}

/// A [`PgTls`] for a pool that lives as long as the process (configd's):
/// its CA file is read again before each new connection through
/// [`crate::ca_file::CaFile`], so a rotated CA applies to the next
/// connection without a restart (a changed file that does not load is
/// logged and the CA in use stays).
#[derive(Clone)]
pub struct ReloadingPgTls {
    setting: &'static str,
    file: Option<Arc<std::sync::Mutex<crate::ca_file::CaFile<PgTls>>>>,
    fixed: PgTls,
}

impl std::fmt::Debug for ReloadingPgTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingPgTls")
            .field("setting", &self.setting)
            .field("reloads", &self.file.is_some())
            .finish_non_exhaustive()
    }
}

impl ReloadingPgTls {
    /// Reads `ca_file` once now (an unusable file is an error here);
    /// without one only `disable` can be used.
    pub fn new(setting: &'static str, ca_file: Option<&Path>) -> Result<Self, PgTlsError> {
        let Some(path) = ca_file else {
            return Ok(ReloadingPgTls {
                setting,
                file: None,
                fixed: PgTls::new(setting, None)?,
            });
        };
        let pem = std::fs::read(path).map_err(|source| PgTlsError::Read {
            setting,
            path: path.display().to_string(),
            source,
        })?;
        let tls = PgTls::from_pem(setting, path, &pem)?;
        let file = crate::ca_file::CaFile::new(setting, path, pem, tls.clone());
        Ok(ReloadingPgTls {
            setting,
            file: Some(Arc::new(std::sync::Mutex::new(file))),
            fixed: tls,
        })
    }

    /// The connector to use now (the CA file read again).
    pub fn current(&self) -> PgTls {
        let Some(file) = &self.file else {
            return self.fixed.clone();
        };
        let setting = self.setting;
        let mut file = file.lock().unwrap_or_else(|p| p.into_inner());
        file.current(|path, pem| PgTls::from_pem(setting, path, pem).map_err(|e| e.to_string()))
    }
}

impl<S> tokio_postgres::tls::MakeTlsConnect<S> for ReloadingPgTls
where
    MakeRustlsConnect: tokio_postgres::tls::MakeTlsConnect<S>,
{
    type Stream = <MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<S>>::Stream;
    type TlsConnect = <MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<S>>::TlsConnect;
    type Error = <MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<S>>::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<Self::TlsConnect, Self::Error> {
        self.current().connector.make_tls_connect(domain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(sslmode: SslMode) -> Endpoint {
        Endpoint {
            host: "db".into(),
            port: 5432,
            dbname: "x".into(),
            sslmode,
        }
    }

    #[test]
    fn verify_full_needs_a_ca_file() {
        let tls = PgTls::new("database.ca_file", None).unwrap();
        let mut cfg = tokio_postgres::Config::new();
        tls.configure(&ep(SslMode::Disable), &mut cfg).unwrap();
        let e = tls
            .configure(&ep(SslMode::VerifyFull), &mut cfg)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("db:5432") && e.contains("database.ca_file"),
            "{e}"
        );
    }

    #[test]
    fn bad_ca_files_name_the_file_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ca.pem");
        let e = PgTls::new("database_ca_file", Some(&p))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("database_ca_file") && e.contains("ca.pem"),
            "{e}"
        );
        std::fs::write(&p, "hello\n").unwrap();
        let e = PgTls::new("database_ca_file", Some(&p))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("holds no PEM certificate"), "{e}");
        let junk = "-----BEGIN CERTIFICATE-----\nAAAAAAAA\n-----END CERTIFICATE-----\n";
        std::fs::write(&p, junk).unwrap();
        let e = PgTls::new("database_ca_file", Some(&p))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("certificate 1 is not usable"), "{e}");
    }

    #[test]
    fn disable_is_not_written_to_db_json() {
        let text = serde_json::to_string(&ep(SslMode::Disable)).unwrap();
        assert!(!text.contains("sslmode"), "{text}");
        let text = serde_json::to_string(&ep(SslMode::VerifyFull)).unwrap();
        assert!(text.contains(r#""sslmode":"verify-full""#), "{text}");
        let back: Endpoint = serde_json::from_str(&text).unwrap();
        assert_eq!(back.sslmode, SslMode::VerifyFull);
    }
}
