//! The HTTP client: one method per Vault endpoint the agent uses.
//!
//! Tokens travel only in the `X-Vault-Token` header; secrets in responses
//! are parsed straight into [`Secret`] so they cannot reach a log line.
//! Every duration in a response is clamped on parsing ([`super::secs`]),
//! so no answer can overflow the lifecycle's time arithmetic.
//! With a namespace ([`VaultClient::with_namespace`]) every request carries
//! `X-Vault-Namespace`.

use super::secs::secs;
use super::VaultError;
use prometheus::HistogramVec;
use reqwest::Method;
use riskfeat_shared::ca_file::CaFile;
use riskfeat_shared::Secret;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A client for one Vault address.
#[derive(Clone)]
pub struct VaultClient {
    http: reqwest::Client,
    /// `vault.ca_cert_file`, read again before each request.
    ca_watch: Option<Arc<Mutex<CaFile<reqwest::Client>>>>,
    /// Trusts only `vault.ca_cert_file` (changes the hint on a TLS error).
    custom_ca: bool,
    addr: String,
    timeout: Duration,
    durations: Option<HistogramVec>,
    /// `vault.namespace`, sent as `X-Vault-Namespace` on every request.
    namespace: Option<String>,
}

fn http_client(
    timeout: Duration,
    ca: &[reqwest::Certificate],
) -> Result<reqwest::Client, reqwest::Error> {
    let builder = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(1);
    crate::inputs::trust_only(builder, ca).build()
}

/// A token from a login or a renewal.
#[derive(Debug, Clone)]
pub struct TokenGrant {
    pub token: Secret,
    /// Seconds the token is valid from now.
    pub lease_duration: u64,
    pub renewable: bool,
}

/// A freshly issued database credential: the full `creds` response.
#[derive(Debug, Clone)]
pub struct IssuedCredential {
    pub lease_id: String,
    pub lease_duration: u64,
    pub renewable: bool,
    pub username: String,
    pub password: Secret,
}

/// The answer to a lease renewal.
#[derive(Debug, Clone, Copy)]
pub struct LeaseRenewal {
    pub lease_duration: u64,
    pub renewable: bool,
}

/// What `sys/leases/lookup` says about a lease.
#[derive(Debug, Clone)]
pub struct LeaseInfo {
    /// Seconds left.
    pub ttl: u64,
    pub renewable: bool,
}

#[derive(Deserialize)]
struct AuthEnvelope {
    auth: Option<AuthBlock>,
}

#[derive(Deserialize)]
struct AuthBlock {
    client_token: Secret,
    #[serde(deserialize_with = "secs")]
    lease_duration: u64,
    renewable: bool,
}

#[derive(Deserialize)]
struct CredsEnvelope {
    lease_id: String,
    #[serde(deserialize_with = "secs")]
    lease_duration: u64,
    renewable: bool,
    data: Option<CredsData>,
}

#[derive(Deserialize)]
struct CredsData {
    username: String,
    password: Secret,
}

#[derive(Deserialize)]
struct RenewEnvelope {
    #[serde(deserialize_with = "secs")]
    lease_duration: u64,
    renewable: bool,
}

#[derive(Deserialize)]
struct LookupEnvelope {
    data: Option<LookupData>,
}

#[derive(Deserialize)]
struct LookupData {
    #[serde(default, deserialize_with = "secs")]
    ttl: u64,
    #[serde(default)]
    renewable: bool,
}

#[derive(Deserialize)]
struct UnwrapEnvelope {
    data: Option<UnwrapData>,
}

#[derive(Deserialize)]
struct UnwrapData {
    secret_id: Secret,
}

#[derive(Deserialize)]
struct TokenLookupEnvelope {
    data: Option<TokenLookupData>,
}

#[derive(Deserialize)]
struct TokenLookupData {
    #[serde(default, deserialize_with = "secs")]
    ttl: u64,
    #[serde(default)]
    renewable: bool,
}

impl VaultClient {
    /// A client for `addr` (e.g. `http://127.0.0.1:8200`) with a
    /// per-request timeout; `durations` (label `op`) observes each request.
    /// With `ca` non-empty, Vault's certificate must chain to one of these
    /// and the built-in public roots are not trusted.
    pub fn new(
        addr: &str,
        timeout: Duration,
        durations: Option<HistogramVec>,
        ca: &[reqwest::Certificate],
    ) -> Result<Self, VaultError> {
        let http = http_client(timeout, ca).map_err(|e| VaultError::Connect {
            method: "INIT",
            path: addr.to_string(),
            detail: e.to_string(),
        })?;
        Ok(Self {
            http,
            ca_watch: None,
            addr: addr.trim_end_matches('/').to_string(),
            timeout,
            durations,
            custom_ca: !ca.is_empty(),
            namespace: None,
        })
    }

    /// Sends `X-Vault-Namespace: <namespace>` on every request (`None`:
    /// the root namespace, no header).
    pub fn with_namespace(mut self, namespace: Option<String>) -> Self {
        self.namespace = namespace;
        self
    }

    /// Reads `path` (the `vault.ca_cert_file` whose certificates were given
    /// to [`VaultClient::new`], `seen` its bytes then) again before every
    /// request and, when its bytes changed and hold a usable CA, rebuilds
    /// the HTTPS client with it (see [`CaFile`]): a CA rotated through its
    /// ConfigMap applies without a restart.
    pub fn reload_ca_from(mut self, path: &Path, seen: Vec<u8>) -> Self {
        let file = CaFile::new(crate::inputs::VAULT_CA, path, seen, self.http.clone());
        self.ca_watch = Some(Arc::new(Mutex::new(file)));
        self
    }

    /// The client for the next request (see [`VaultClient::reload_ca_from`]).
    fn client(&self) -> reqwest::Client {
        let Some(w) = &self.ca_watch else {
            return self.http.clone();
        };
        let timeout = self.timeout;
        w.lock()
            .unwrap_or_else(|p| p.into_inner())
            .current(|path, bytes| {
                let ca = crate::inputs::vault_ca_pem(path, bytes).map_err(|e| e.to_string())?;
                http_client(timeout, &ca).map_err(|e| e.to_string())
            })
    }

    /// Adds what to do to a failed TLS verification (the rest unchanged).
    fn explain(&self, mut detail: String) -> String {
        if detail.contains("certificate") {
            detail.push_str(if self.custom_ca {
                " (vault.ca_cert_file does not hold the CA that signed Vault's certificate)"
            } else {
                " (set vault.ca_cert_file to the CA that signed Vault's certificate)"
            });
        }
        detail
    }

    async fn call<T: DeserializeOwned>(
        &self,
        op: &'static str,
        method: Method,
        path: &str,
        token: Option<&Secret>,
        body: Option<Value>,
    ) -> Result<Option<T>, VaultError> {
        let m: &'static str = match method {
            Method::GET => "GET",
            Method::PUT => "PUT",
            Method::POST => "POST",
            Method::DELETE => "DELETE",
            _ => "REQUEST",
        };
        let url = format!("{}/v1/{}", self.addr, path);
        let mut req = self.client().request(method, &url);
        if let Some(t) = token {
            req = req.header("X-Vault-Token", t.expose());
        }
        if let Some(ns) = &self.namespace {
            req = req.header("X-Vault-Namespace", ns);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let started = Instant::now();
        let result = req.send().await;
        let result = match result {
            Ok(resp) => {
                let status = resp.status().as_u16();
                match resp.bytes().await {
                    Ok(bytes) => Ok((status, bytes)),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        if let Some(h) = &self.durations {
            h.with_label_values(&[op])
                .observe(started.elapsed().as_secs_f64());
        }
        let (status, bytes) = result.map_err(|e| {
            if e.is_timeout() {
                VaultError::Timeout {
                    method: m,
                    path: path.to_string(),
                    timeout_s: self.timeout.as_secs_f64(),
                }
            } else {
                VaultError::Connect {
                    method: m,
                    path: path.to_string(),
                    detail: self.explain(riskfeat_shared::telemetry::error_chain(&e)),
                }
            }
        })?;
        tracing::debug!(op, method = m, path, status, "vault request");
        if !(200..300).contains(&status) {
            return Err(VaultError::from_status(m, path, status, &bytes));
        }
        if status == 204 || bytes.is_empty() {
            return Ok(None);
        }
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| VaultError::Decode {
                method: m,
                path: path.to_string(),
                // serde_json's message names the field, never the value.
                detail: e.to_string(),
            })
    }

    /// A `PUT` with `token` and no body whose answer is only its status
    /// (the revocations).
    async fn send(&self, op: &'static str, path: &str, token: &Secret) -> Result<(), VaultError> {
        self.call::<Value>(op, Method::PUT, path, Some(token), None)
            .await
            .map(|_| ())
    }

    fn missing(method: &'static str, path: &str, what: &str) -> VaultError {
        VaultError::Decode {
            method,
            path: path.to_string(),
            detail: format!("no {what} in the response"),
        }
    }

    /// `PUT auth/<mount>/login` with role_id and secret_id.
    pub async fn approle_login(
        &self,
        mount: &str,
        role_id: &Secret,
        secret_id: &Secret,
    ) -> Result<TokenGrant, VaultError> {
        let body = json!({"role_id": role_id.expose(), "secret_id": secret_id.expose()});
        self.login(mount, body).await
    }

    /// `PUT auth/<mount>/login` with a role and a JWT: the request of both
    /// the `jwt` and the `kubernetes` auth methods.
    pub async fn jwt_login(
        &self,
        mount: &str,
        role: &str,
        jwt: &Secret,
    ) -> Result<TokenGrant, VaultError> {
        let body = json!({"role": role, "jwt": jwt.expose()});
        self.login(mount, body).await
    }

    async fn login(&self, mount: &str, body: Value) -> Result<TokenGrant, VaultError> {
        let path = format!("auth/{mount}/login");
        let env: Option<AuthEnvelope> = self
            .call("login", Method::PUT, &path, None, Some(body))
            .await?;
        let auth = env
            .and_then(|e| e.auth)
            .ok_or_else(|| Self::missing("PUT", &path, "auth block"))?;
        Ok(TokenGrant {
            token: auth.client_token,
            lease_duration: auth.lease_duration,
            renewable: auth.renewable,
        })
    }

    /// `PUT sys/wrapping/unwrap` with the wrapping token: the secret_id.
    pub async fn unwrap_secret_id(&self, wrapping_token: &Secret) -> Result<Secret, VaultError> {
        let path = "sys/wrapping/unwrap";
        let env: Option<UnwrapEnvelope> = self
            .call("unwrap", Method::PUT, path, Some(wrapping_token), None)
            .await?;
        env.and_then(|e| e.data)
            .map(|d| d.secret_id)
            .ok_or_else(|| Self::missing("PUT", path, "data.secret_id"))
    }

    /// `GET auth/token/lookup-self`: seconds left and renewability.
    pub async fn lookup_self(&self, token: &Secret) -> Result<(u64, bool), VaultError> {
        let path = "auth/token/lookup-self";
        let env: Option<TokenLookupEnvelope> = self
            .call("token_lookup", Method::GET, path, Some(token), None)
            .await?;
        let d = env
            .and_then(|e| e.data)
            .ok_or_else(|| Self::missing("GET", path, "data"))?;
        Ok((d.ttl, d.renewable))
    }

    /// `PUT auth/token/renew-self` asking for `increment_s` more seconds.
    pub async fn renew_self(
        &self,
        token: &Secret,
        increment_s: u64,
    ) -> Result<TokenGrant, VaultError> {
        let path = "auth/token/renew-self";
        let env: Option<AuthEnvelope> = self
            .call(
                "token_renew",
                Method::PUT,
                path,
                Some(token),
                Some(json!({"increment": format!("{increment_s}s")})),
            )
            .await?;
        let auth = env
            .and_then(|e| e.auth)
            .ok_or_else(|| Self::missing("PUT", path, "auth block"))?;
        Ok(TokenGrant {
            token: token.clone(),
            lease_duration: auth.lease_duration,
            renewable: auth.renewable,
        })
    }

    /// `PUT auth/token/revoke-self` (revokes every lease the token created).
    pub async fn revoke_self(&self, token: &Secret) -> Result<(), VaultError> {
        self.send("token_revoke", "auth/token/revoke-self", token)
            .await
    }

    /// `GET <mount>/creds/<role>`: a new dynamic credential with its lease.
    pub async fn issue_credential(
        &self,
        token: &Secret,
        mount: &str,
        role: &str,
    ) -> Result<IssuedCredential, VaultError> {
        let path = format!("{mount}/creds/{role}");
        let env: Option<CredsEnvelope> = self
            .call("creds", Method::GET, &path, Some(token), None)
            .await?;
        let env = env.ok_or_else(|| Self::missing("GET", &path, "body"))?;
        let data = env
            .data
            .ok_or_else(|| Self::missing("GET", &path, "data"))?;
        if env.lease_id.is_empty() {
            return Err(Self::missing("GET", &path, "lease_id"));
        }
        Ok(IssuedCredential {
            lease_id: env.lease_id,
            lease_duration: env.lease_duration,
            renewable: env.renewable,
            username: data.username,
            password: data.password,
        })
    }

    /// `PUT sys/leases/renew/<lease_id>`: the lease id in the URL, so a
    /// policy can scope renewal to riskfeat's own leases
    /// (`sys/leases/renew/database/creds/feature-reader/*`); the body form
    /// `sys/leases/renew` cannot be scoped.
    pub async fn renew_lease(
        &self,
        token: &Secret,
        lease_id: &str,
        increment_s: u64,
    ) -> Result<LeaseRenewal, VaultError> {
        let path = lease_path("sys/leases/renew", lease_id)?;
        let env: Option<RenewEnvelope> = self
            .call(
                "lease_renew",
                Method::PUT,
                &path,
                Some(token),
                Some(json!({"increment": increment_s})),
            )
            .await?;
        let env = env.ok_or_else(|| Self::missing("PUT", &path, "body"))?;
        Ok(LeaseRenewal {
            lease_duration: env.lease_duration,
            renewable: env.renewable,
        })
    }

    /// `PUT sys/leases/revoke/<lease_id>` (URL form, scoped like renewal).
    pub async fn revoke_lease(&self, token: &Secret, lease_id: &str) -> Result<(), VaultError> {
        let path = lease_path("sys/leases/revoke", lease_id)?;
        self.send("lease_revoke", &path, token).await
    }

    /// `PUT sys/leases/lookup`: `None` when Vault no longer knows the lease.
    /// Vault has no URL form of lookup, so the policy cannot scope it; it
    /// tells only a lease's TTL and renewability, never a secret.
    pub async fn lookup_lease(
        &self,
        token: &Secret,
        lease_id: &str,
    ) -> Result<Option<LeaseInfo>, VaultError> {
        let path = "sys/leases/lookup";
        let r: Result<Option<LookupEnvelope>, VaultError> = self
            .call(
                "lease_lookup",
                Method::PUT,
                path,
                Some(token),
                Some(json!({"lease_id": lease_id})),
            )
            .await;
        match r {
            Ok(env) => {
                let d = env
                    .and_then(|e| e.data)
                    .ok_or_else(|| Self::missing("PUT", path, "data"))?;
                if d.ttl == 0 {
                    return Ok(None);
                }
                Ok(Some(LeaseInfo {
                    ttl: d.ttl,
                    renewable: d.renewable,
                }))
            }
            // "invalid lease": expired or revoked.
            Err(VaultError::Rejected {
                status: 400 | 404, ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// `<prefix>/<lease_id>`, for a lease id made of the characters Vault's
/// lease ids use (`database/creds/<role>/<random>`): anything else (a
/// `..`, a query, a space) is refused rather than put into a URL.
fn lease_path(prefix: &str, lease_id: &str) -> Result<String, VaultError> {
    let ok = !lease_id.is_empty()
        && lease_id.len() <= 512
        && !lease_id.starts_with('/')
        && !lease_id
            .split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == "..")
        && lease_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '.'));
    if ok {
        Ok(format!("{prefix}/{lease_id}"))
    } else {
        Err(VaultError::BadLeaseId(lease_id.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::secs::MAX_SECS;

    fn parse<T: DeserializeOwned>(json: &str) -> T {
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{json}: {e}"))
    }

    /// Absurd numbers from Vault parse, clamped to [0, MAX_SECS]; none is
    /// an error, none can overflow a date.
    #[test]
    fn absurd_durations_are_clamped() {
        let cases = [
            ("18446744073709551615", MAX_SECS),
            ("9223372036854775807", MAX_SECS),
            ("-9223372036854775808", 0),
            ("-1", 0),
            ("0", 0),
            ("1e300", MAX_SECS),
            ("-1e300", 0),
            ("3600.7", 3600),
            ("3600", 3600),
        ];
        for (n, want) in cases {
            let c: CredsEnvelope = parse(&format!(
                r#"{{"lease_id":"database/creds/r/x","lease_duration":{n},"renewable":true,
                   "data":{{"username":"u","password":"p"}}}}"#
            ));
            assert_eq!(c.lease_duration, want, "creds {n}");
            let r: RenewEnvelope = parse(&format!(r#"{{"lease_duration":{n},"renewable":true}}"#));
            assert_eq!(r.lease_duration, want, "renew {n}");
            let a: AuthEnvelope = parse(&format!(
                r#"{{"auth":{{"client_token":"t","lease_duration":{n},"renewable":true}}}}"#
            ));
            assert_eq!(a.auth.unwrap().lease_duration, want, "auth {n}");
            let l: LookupEnvelope = parse(&format!(r#"{{"data":{{"ttl":{n}}}}}"#));
            assert_eq!(l.data.unwrap().ttl, want, "lease lookup {n}");
            let t: TokenLookupEnvelope = parse(&format!(r#"{{"data":{{"ttl":{n}}}}}"#));
            assert_eq!(t.data.unwrap().ttl, want, "token lookup {n}");
            // What the lifecycle then computes cannot overflow.
            let now = chrono::Utc::now();
            let _ = now + chrono::Duration::seconds(want as i64) + chrono::Duration::days(3650);
        }
        let l: LookupEnvelope = parse(r#"{"data":{}}"#);
        assert_eq!(l.data.unwrap().ttl, 0, "missing ttl");
        assert!(serde_json::from_str::<RenewEnvelope>(
            r#"{"lease_duration":"x","renewable":true}"#
        )
        .is_err());
    }
}
