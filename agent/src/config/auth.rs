//! `[vault.auth]` (how the agent logs in: AppRole, the default, or a JWT /
//! Kubernetes service-account token) and the `vault.namespace` check: the
//! login part of [`super::VaultSettings`], validated with it.

use super::VaultSettings;
use serde::Deserialize;
use std::path::PathBuf;

/// `vault.auth.method`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMethod {
    /// role_id + secret_id at `auth/<vault.approle_mount>/login`.
    #[default]
    AppRole,
    /// A JWT (e.g. a projected service-account token) at
    /// `auth/<mount>/login` of the `jwt` auth method.
    Jwt,
    /// The pod's service-account token at `auth/<mount>/login` of the
    /// `kubernetes` auth method (the same request as [`AuthMethod::Jwt`]).
    Kubernetes,
}

impl AuthMethod {
    /// The name in the config (and the default mount).
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::AppRole => "approle",
            AuthMethod::Jwt => "jwt",
            AuthMethod::Kubernetes => "kubernetes",
        }
    }

    /// How logs and errors name it.
    pub fn display_name(self) -> &'static str {
        match self {
            AuthMethod::AppRole => "AppRole",
            AuthMethod::Jwt => "JWT",
            AuthMethod::Kubernetes => "Kubernetes",
        }
    }
}

/// Where Kubernetes mounts the pod's default service-account token.
pub const DEFAULT_SA_TOKEN_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// `[vault.auth]`: how the agent logs in. AppRole (the default) keeps its
/// keys in `[vault]` (`approle_mount`, `role_id_file`, `secret_id_file`...);
/// `jwt` and `kubernetes` use the keys here.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    #[serde(default)]
    pub method: AuthMethod,
    /// Auth mount of `jwt`/`kubernetes`; default the method's name.
    pub mount: Option<String>,
    /// The Vault role to log in as (`jwt`/`kubernetes`; required).
    pub role: Option<String>,
    /// The token file, read again on every login (a projected token
    /// rotates). Required for `jwt`; `kubernetes` defaults to
    /// [`DEFAULT_SA_TOKEN_FILE`].
    pub token_file: Option<PathBuf>,
}

impl AuthSettings {
    /// The mount logged in at (`jwt`/`kubernetes`).
    pub fn mount(&self) -> &str {
        self.mount.as_deref().unwrap_or(self.method.as_str())
    }

    /// The token file (`jwt`/`kubernetes`).
    pub fn token_file(&self) -> Option<PathBuf> {
        match (&self.token_file, self.method) {
            (Some(p), _) => Some(p.clone()),
            (None, AuthMethod::Kubernetes) => Some(PathBuf::from(DEFAULT_SA_TOKEN_FILE)),
            (None, _) => None,
        }
    }

    /// Every problem with the login settings of `v` (empty when valid).
    pub(super) fn problems(v: &VaultSettings, out: &mut Vec<String>) {
        let a = &v.auth;
        let method = a.method.as_str();
        if a.method == AuthMethod::AppRole {
            if v.approle_mount.is_empty() {
                out.push("vault.approle_mount is empty".into());
            }
            if v.secret_id_file.is_none() {
                out.push("vault.secret_id_file is required".into());
            }
            for (key, set) in [
                ("mount", a.mount.is_some()),
                ("role", a.role.is_some()),
                ("token_file", a.token_file.is_some()),
            ] {
                if set {
                    out.push(format!(
                        "vault.auth.{key} applies only to method \"jwt\" or \"kubernetes\" (method is \"approle\")"
                    ));
                }
            }
            return;
        }
        for (key, set) in [
            ("role_id_file", v.role_id_file.is_some()),
            ("secret_id_file", v.secret_id_file.is_some()),
            ("secret_id_wrapped", v.secret_id_wrapped),
            ("delete_secret_id_after_read", v.delete_secret_id_after_read),
        ] {
            if set {
                out.push(format!(
                    "vault.{key} is an AppRole key but vault.auth.method is \"{method}\""
                ));
            }
        }
        let mount = a.mount();
        if mount.is_empty() || mount.starts_with('/') || mount.ends_with('/') {
            out.push(format!("vault.auth.mount: invalid mount {mount:?}"));
        }
        match a.role.as_deref() {
            None => out.push(format!(
                "vault.auth.role is required with method \"{method}\""
            )),
            Some(r) if r.is_empty() || r.contains('/') => {
                out.push(format!("vault.auth.role: invalid role name {r:?}"))
            }
            Some(_) => {}
        }
        match a.token_file() {
            None => out.push(format!(
                "vault.auth.token_file is required with method \"{method}\""
            )),
            Some(p) if p.as_os_str().is_empty() => {
                out.push("vault.auth.token_file is empty".into())
            }
            Some(_) => {}
        }
    }
}

/// A namespace path: `/`-separated names of letters, digits, `-`, `_` and
/// `.` (not `.` or `..`), as Vault and OpenBao name them.
pub(super) fn namespace_problem(ns: &str) -> Option<String> {
    let ok = ns.split('/').all(|seg| {
        !seg.is_empty()
            && seg != "."
            && seg != ".."
            && seg
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    });
    (!ok).then(|| format!("vault.namespace: invalid namespace {ns:?}"))
}

#[cfg(test)]
mod tests {
    use super::super::{Config, Overrides};
    use super::*;
    use riskfeat_shared::testing::assert_contains_all;

    const DATABASE: &str = r#"
        [database]
        primary = { host = "p", port = 5432, dbname = "riskfeat" }
        replica = { host = "r", port = 5432, dbname = "riskfeat" }
    "#;

    fn parse(vault: &str) -> Result<Config, String> {
        let text = format!("[vault]\naddr = \"http://127.0.0.1:8200\"\n{vault}\n{DATABASE}");
        Config::parse("agent.toml", &text, &Overrides::default()).map_err(|e| e.to_string())
    }

    #[test]
    fn approle_stays_the_default() {
        let c = parse("secret_id_file = \"/s\"").unwrap();
        assert_eq!(c.vault.auth.method, AuthMethod::AppRole);
        assert_eq!(c.vault.approle_mount, "approle");
        assert!(c.vault.namespace.is_none());
    }

    #[test]
    fn jwt_and_kubernetes_parse_with_their_defaults() {
        let c = parse(
            "namespace = \"team-a/prod\"\n[vault.auth]\nmethod = \"jwt\"\nrole = \"riskfeat-agent\"\ntoken_file = \"/var/run/secrets/riskfeat/vault-token\"",
        )
        .unwrap();
        let a = &c.vault.auth;
        assert_eq!(a.method, AuthMethod::Jwt);
        assert_eq!(a.mount(), "jwt");
        assert_eq!(
            a.token_file().unwrap(),
            PathBuf::from("/var/run/secrets/riskfeat/vault-token")
        );
        assert_eq!(c.vault.namespace.as_deref(), Some("team-a/prod"));
        let c = parse("[vault.auth]\nmethod = \"kubernetes\"\nrole = \"r\"\nmount = \"k8s-prod\"")
            .unwrap();
        assert_eq!(c.vault.auth.mount(), "k8s-prod");
        assert_eq!(
            c.vault.auth.token_file().unwrap(),
            PathBuf::from(DEFAULT_SA_TOKEN_FILE)
        );
    }

    #[test]
    fn every_login_problem_at_once() {
        let msg = parse(
            "role_id_file = \"/r\"\nsecret_id_file = \"/s\"\nsecret_id_wrapped = true\nnamespace = \"a//b\"\n[vault.auth]\nmethod = \"jwt\"\nmount = \"/jwt\"",
        )
        .unwrap_err();
        assert_contains_all(
            &msg,
            &[
                "vault.role_id_file is an AppRole key but vault.auth.method is \"jwt\"",
                "vault.secret_id_file is an AppRole key",
                "vault.secret_id_wrapped is an AppRole key",
                "vault.auth.mount: invalid mount \"/jwt\"",
                "vault.auth.role is required with method \"jwt\"",
                "vault.auth.token_file is required with method \"jwt\"",
                "vault.namespace: invalid namespace \"a//b\"",
            ],
        );
        let msg = parse("secret_id_file = \"/s\"\n[vault.auth]\nrole = \"r\"\ntoken_file = \"/t\"")
            .unwrap_err();
        for key in ["role", "token_file"] {
            let want = format!("vault.auth.{key} applies only to method \"jwt\" or \"kubernetes\"");
            assert!(msg.contains(&want), "missing {want:?} in {msg}");
        }
        let msg = parse("secret_id_file = \"/s\"\n[vault.auth]\nmethod = \"ldap\"").unwrap_err();
        assert!(
            msg.contains("vault.auth.method: unknown variant `ldap`"),
            "{msg}"
        );
    }
}
