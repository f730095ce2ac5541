//! The login request of each `vault.auth.method`: AppRole's role_id and
//! secret_id (a response-wrapped secret_id unwrapped once), or the JWT of
//! `jwt`/`kubernetes` read from `vault.auth.token_file` on every login (a
//! projected service-account token rotates; it is a secret and never
//! logged). [`super::token`] does the rest the same for all of them.

use super::Lifecycle;
use crate::config::AuthMethod;
use crate::fatal::Fatal;
use crate::inputs::{self, LoginInputs, SecretIdSource};
use crate::vault::{TokenGrant, VaultError};
use riskfeat_shared::Secret;

impl Lifecycle {
    /// Logs in with the configured method. `Ok(None)`: the login material
    /// is not available now (retry with backoff); `Err`: it never will be.
    pub(super) async fn login_request(
        &mut self,
    ) -> Result<Option<Result<TokenGrant, VaultError>>, Fatal> {
        let cfg = self.cfg.clone();
        let auth = &cfg.vault.auth;
        match auth.method {
            AuthMethod::AppRole => {
                let Some(secret_id) = self.secret_id().await? else {
                    return Ok(None);
                };
                let LoginInputs::AppRole { role_id, .. } = &self.login else {
                    return Err(Fatal::Runtime(
                        "AppRole login without a role_id (a bug)".into(),
                    ));
                };
                let mount = &cfg.vault.approle_mount;
                Ok(Some(
                    self.vault.approle_login(mount, role_id, &secret_id).await,
                ))
            }
            AuthMethod::Jwt | AuthMethod::Kubernetes => {
                let Some(jwt) = self.login_token()? else {
                    return Ok(None);
                };
                let role = auth.role.as_deref().unwrap_or_default();
                Ok(Some(self.vault.jwt_login(auth.mount(), role, &jwt).await))
            }
        }
    }

    /// What to check when a login is refused with 403 or 404: Vault answers
    /// so (`permission denied`, `namespace not found`) when the auth mount
    /// does not exist in the namespace asked, e.g. `vault.namespace`
    /// missing. Empty for other errors.
    pub(super) fn login_hint(&self, e: &VaultError) -> String {
        if !matches!(e.status(), Some(403 | 404)) {
            return String::new();
        }
        let v = &self.cfg.vault;
        let (mount, key) = match v.auth.method {
            AuthMethod::AppRole => (v.approle_mount.as_str(), "vault.approle_mount"),
            _ => (v.auth.mount(), "vault.auth.mount"),
        };
        let ns = match &v.namespace {
            Some(ns) => format!("namespace {ns:?}"),
            None => "the root namespace (no vault.namespace)".to_string(),
        };
        format!(
            " (is there a {} auth method at auth/{mount} in {ns}? check {key} and vault.namespace)",
            v.auth.method.as_str()
        )
    }

    /// The JWT in `vault.auth.token_file`, read now. Before anything was
    /// published a missing or empty file ends the agent (exit 66); after,
    /// it is an error to retry (the kubelet may be replacing it).
    fn login_token(&mut self) -> Result<Option<Secret>, Fatal> {
        let Some(path) = self.cfg.vault.auth.token_file() else {
            return Err(Fatal::Config(
                "vault.auth.token_file is required with a JWT login".into(),
            ));
        };
        match inputs::login_token(&path) {
            Ok(jwt) => Ok(Some(jwt)),
            Err(e) if !self.established => Err(Fatal::Input(e.to_string())),
            Err(e) => {
                self.error(format!("cannot read the login token: {e}"));
                Ok(None)
            }
        }
    }

    /// AppRole's secret_id, unwrapped (once) when response-wrapped.
    async fn secret_id(&mut self) -> Result<Option<Secret>, Fatal> {
        let LoginInputs::AppRole { secret, .. } = &self.login else {
            return Ok(None);
        };
        match secret.clone() {
            Some(SecretIdSource::Plain(s)) => Ok(Some(s)),
            Some(SecretIdSource::Wrapped(w)) => {
                let r = self.vault.unwrap_secret_id(&w).await;
                self.note_vault(&r);
                match r {
                    Ok(s) => {
                        tracing::info!("unwrapped the response-wrapped secret_id");
                        if let LoginInputs::AppRole { secret, .. } = &mut self.login {
                            *secret = Some(SecretIdSource::Plain(s.clone()));
                        }
                        // The wrapping token is spent: keep the secret_id.
                        self.st.secret_id = Some(s.clone());
                        Ok(Some(s))
                    }
                    Err(e) if !e.is_transient() => Err(Fatal::Permission(format!(
                        "cannot unwrap the secret_id from {}: {e}",
                        self.cfg
                            .vault
                            .secret_id_file
                            .as_deref()
                            .unwrap_or(std::path::Path::new("?"))
                            .display()
                    ))),
                    Err(e) => {
                        self.error(format!("cannot unwrap the secret_id: {e}"));
                        Ok(None)
                    }
                }
            }
            None => Err(Fatal::Input(
                "no secret_id: vault.secret_id_file is gone and agent-state.json holds none".into(),
            )),
        }
    }
}
