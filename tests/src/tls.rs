//! Test certificates: a private CA and server certificates it signs, for
//! PostgreSQL with `ssl = on` ([`crate::PgServer::enable_tls`]) and the
//! `verify-full` clients under test.

use anyhow::Context;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use std::path::Path;

/// A CA that exists only for one test.
pub struct TestCa {
    cert: Certificate,
    key: KeyPair,
}

/// A server certificate and its private key, PEM.
pub struct ServerCert {
    pub cert_pem: String,
    pub key_pem: String,
    /// The certificate, DER (what a client sees as the peer certificate).
    pub cert_der: Vec<u8>,
}

impl TestCa {
    /// A new CA named `name` (a fresh key each time: two CAs never trust
    /// each other's certificates).
    pub fn new(name: &str) -> anyhow::Result<TestCa> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate()?;
        let cert = params
            .self_signed(&key)
            .context("self-signing the test CA")?;
        Ok(TestCa { cert, key })
    }

    /// The CA certificate, PEM (what a client's CA file holds).
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// Writes the CA certificate to `path`.
    pub fn write_cert(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::write(path, self.cert_pem()).with_context(|| format!("writing {}", path.display()))
    }

    /// A server certificate for `names` (DNS names or IP addresses, which
    /// become IP subject alternative names).
    pub fn issue_server(&self, names: &[&str]) -> anyhow::Result<ServerCert> {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names.clone())?;
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate()?;
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .context("signing a server certificate")?;
        Ok(ServerCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().to_vec(),
        })
    }
}
