//! TLS on configd's listener: the certificate chain and private key of
//! `tls_cert_file` / `tls_key_file`, loaded at start (a pair that does not
//! load is a configuration error) and read again every [`RECHECK`], so a
//! renewed certificate (cert-manager rewrites the Secret) is served without
//! a restart. A renewed pair that does not load is logged and the pair in
//! use stays.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How often the files are compared with the pair in use.
pub const RECHECK: Duration = Duration::from_secs(10);

/// The two files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A pair that could not be loaded: which file, and why.
#[derive(Debug, thiserror::Error)]
#[error("{setting} {path}: {problem}")]
pub struct TlsError {
    pub setting: &'static str,
    pub path: String,
    pub problem: String,
}

fn err(setting: &'static str, path: &Path, problem: impl Into<String>) -> TlsError {
    TlsError {
        setting,
        path: path.display().to_string(),
        problem: problem.into(),
    }
}

/// A pair as loaded: the config served and the bytes it came from
/// (compared to notice a renewal). `Debug` shows the file names only.
#[derive(Clone)]
pub struct LoadedTls {
    pub files: TlsFiles,
    pub config: Arc<ServerConfig>,
    seen: (Vec<u8>, Vec<u8>),
}

impl std::fmt::Debug for LoadedTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

/// The bytes of both files.
fn read(files: &TlsFiles) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
    let cert = std::fs::read(&files.cert)
        .map_err(|e| err("tls_cert_file", &files.cert, format!("cannot read: {e}")))?;
    let key = std::fs::read(&files.key)
        .map_err(|e| err("tls_key_file", &files.key, format!("cannot read: {e}")))?;
    Ok((cert, key))
}

/// A rustls server config (HTTP/1.1) from the PEM bytes of `files`.
fn server_config(
    files: &TlsFiles,
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<Arc<ServerConfig>, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| err("tls_cert_file", &files.cert, format!("not PEM: {e}")))?;
    if chain.is_empty() {
        return Err(err(
            "tls_cert_file",
            &files.cert,
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
        err(
            "tls_key_file",
            &files.key,
            format!("no PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"),
        )
    })?;
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| err("tls_cert_file", &files.cert, e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| {
                err(
                    "tls_key_file",
                    &files.key,
                    format!("does not fit the certificate of tls_cert_file: {e}"),
                )
            })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Loads the pair (start-up, from the config check, and every reload).
pub fn load(files: &TlsFiles) -> Result<LoadedTls, TlsError> {
    let (cert, key) = read(files)?;
    let config = server_config(files, &cert, &key)?;
    Ok(LoadedTls {
        files: files.clone(),
        config,
        seen: (cert, key),
    })
}

/// Serves a renewed pair as soon as it loads (new connections get it);
/// runs for the process' life.
pub async fn keep_current(served: riskfeat_shared::http_server::TlsConfig, loaded: LoadedTls) {
    let LoadedTls {
        files, mut seen, ..
    } = loaded;
    let mut tick = tokio::time::interval(RECHECK);
    tick.tick().await;
    loop {
        tick.tick().await;
        let pair = match read(&files) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::error!(error = %e, "TLS files unreadable; serving the certificate in use");
                continue;
            }
        };
        if pair == seen {
            continue;
        }
        let built = server_config(&files, &pair.0, &pair.1);
        // Once per change: a half-renewed pair usually completes at the
        // next check.
        seen = pair;
        match built {
            Ok(config) => {
                match served.write() {
                    Ok(mut c) => *c = config,
                    Err(poisoned) => *poisoned.into_inner() = config,
                }
                tracing::info!(cert = %files.cert.display(), "TLS certificate reloaded");
            }
            Err(e) => {
                tracing::error!(error = %e, "renewed TLS files do not load; serving the certificate in use");
            }
        }
    }
}
