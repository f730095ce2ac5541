//! Logging in without AppRole, and inside a Vault namespace (issue 21),
//! against real OpenBao:
//!
//! - JWT: OpenBao's `jwt` auth method trusting an Ed25519 key the test
//!   makes (`jwt_validation_pubkeys`); the agent issues and publishes a
//!   credential as with AppRole, reads the token file again at its next
//!   login (the file rotated and Vault then trusts only the new key), and
//!   never logs the token;
//! - namespace: AppRole and the database engine inside an OpenBao namespace;
//!   the agent with `vault.namespace` works, without it exits 77 naming the
//!   namespace to check;
//! - kubernetes: the same login request as jwt.

use crate::support::{can_login_on_replica, opts, spawn_agent, wait_published, write_ack, SECS};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use reqwest::Method;
use ring::signature::{Ed25519KeyPair, KeyPair};
use riskfeat_tests::bootstrap::AGENT_POLICY;
use riskfeat_tests::fixtures::sample;
use riskfeat_tests::{wait_until, Agent, AgentToml, Stack, StackOptions};
use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

const ISSUER: &str = "https://riskfeat.test";
const AUDIENCE: &str = "riskfeat-vault";
const SUBJECT: &str = "system:serviceaccount:features:riskfeat-worker";

/// An Ed25519 key made for the test, signing JWTs (EdDSA).
struct Signer {
    key: Ed25519KeyPair,
}

impl Signer {
    fn new() -> Signer {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        Signer {
            key: Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap(),
        }
    }

    /// The public key as a PEM SubjectPublicKeyInfo (RFC 8410).
    fn public_pem(&self) -> String {
        let mut der = vec![
            0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
        ];
        der.extend_from_slice(self.key.public_key().as_ref());
        format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            STANDARD.encode(der)
        )
    }

    /// A service-account-like token valid for `ttl_s` from now.
    fn jwt(&self, ttl_s: i64) -> String {
        let now = chrono::Utc::now().timestamp();
        let part = |v: serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
        let signing_input = format!(
            "{}.{}",
            part(json!({"alg": "EdDSA", "typ": "JWT"})),
            part(json!({
                "iss": ISSUER, "sub": SUBJECT, "aud": [AUDIENCE],
                "iat": now, "nbf": now - 5, "exp": now + ttl_s,
            }))
        );
        let sig = self.key.sign(signing_input.as_bytes());
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }
}

/// The `jwt` auth method at `auth/jwt`, trusting `keys`, with role
/// `riskfeat-agent` granting the agent's policy (as the AppRole does).
async fn setup_jwt(stack: &Stack, keys: &[&Signer]) {
    let bao = &stack.bao;
    bao.api(Method::POST, "sys/auth/jwt", Some(json!({"type": "jwt"})))
        .await
        .unwrap();
    trust_keys(stack, keys).await;
    let o = stack.options();
    bao.api(
        Method::POST,
        "auth/jwt/role/riskfeat-agent",
        Some(json!({
            "role_type": "jwt",
            "bound_audiences": [AUDIENCE],
            "bound_subject": SUBJECT,
            "user_claim": "sub",
            "token_policies": [AGENT_POLICY],
            "token_no_default_policy": true,
            "token_ttl": o.token_ttl.as_secs(),
            "token_max_ttl": o.token_max_ttl.map_or(0, |d| d.as_secs()),
        })),
    )
    .await
    .unwrap();
}

/// `auth/jwt/config` trusting exactly `keys`.
async fn trust_keys(stack: &Stack, keys: &[&Signer]) {
    let pems: Vec<String> = keys.iter().map(|k| k.public_pem()).collect();
    stack
        .bao
        .api(
            Method::POST,
            "auth/jwt/config",
            Some(json!({"jwt_validation_pubkeys": pems, "bound_issuer": ISSUER})),
        )
        .await
        .unwrap();
}

/// Replaces `path` the way the kubelet does: a new file renamed over it.
fn write_token(path: &Path, jwt: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, jwt).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The stack's agent config with `vault` added to `[vault]` and without
/// the AppRole files (refused with another method), quick backoffs and
/// `lifecycle`.
fn agent_toml(stack: &Stack, dir: &Path, vault: &str, lifecycle: &str) -> PathBuf {
    let text = stack.agent_toml(AgentToml {
        top: "log_level = \"info,riskfeat_agent=debug\"",
        vault,
        sections: &format!(
            "[lifecycle]\nbackoff_initial_s = 0.2\nbackoff_max_s = 2.0\n{lifecycle}"
        ),
        ..Default::default()
    });
    let text: Vec<&str> = text
        .lines()
        .filter(|l| !(l.starts_with("role_id_file") || l.starts_with("secret_id_file")))
        .collect();
    let path = dir.join("agent.toml");
    std::fs::write(&path, text.join("\n")).unwrap();
    path
}

async fn logins(agent: &Agent, result: &str) -> f64 {
    let m = agent.metrics().await.unwrap();
    sample(
        &m,
        &format!("riskfeat_agent_vault_logins_total{{result=\"{result}\"}}"),
    )
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_in_with_a_jwt_read_again_at_every_login() {
    // A token capped at 12 s: the agent logs in again within seconds.
    let stack = Stack::start(StackOptions {
        token_ttl: SECS(4),
        token_max_ttl: Some(SECS(12)),
        ..opts(10, 60)
    })
    .await
    .unwrap();
    let (first_key, second_key) = (Signer::new(), Signer::new());
    setup_jwt(&stack, &[&first_key]).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("vault-token");
    let first_jwt = first_key.jwt(3600);
    write_token(&token_file, &first_jwt);
    let cfg = agent_toml(
        &stack,
        dir.path(),
        &format!(
            "[vault.auth]\nmethod = \"jwt\"\nrole = \"riskfeat-agent\"\ntoken_file = \"{}\"",
            token_file.display()
        ),
        "rotate_lead_s = 8\nack_grace_s = 120\nmax_issuances_per_minute = 30",
    );
    let agent = spawn_agent(&stack, &cfg, &[]);
    let first = wait_published(&stack, 1, SECS(60)).await;
    can_login_on_replica(&stack, &first).await.unwrap();
    write_ack(&stack, first.generation);
    assert!(
        agent.logs().contains("logged in to Vault with JWT"),
        "{}",
        agent.logs()
    );

    // The token file rotates, and Vault trusts only the new key: the next
    // login works only when it reads the file again.
    let second_jwt = second_key.jwt(3600);
    write_token(&token_file, &second_jwt);
    trust_keys(&stack, &[&second_key]).await;
    assert_eq!(
        logins(&agent, "ok").await,
        1.0,
        "the agent logged in again before the file rotated (test too slow?)"
    );
    wait_until(SECS(60), "a second JWT login", || async {
        logins(&agent, "ok").await >= 2.0
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.logs()));
    assert_eq!(logins(&agent, "error").await, 0.0, "{}", agent.logs());

    // Credentials made under the new token replace those of the old one.
    let next = wait_published(&stack, first.generation + 1, SECS(60)).await;
    can_login_on_replica(&stack, &next).await.unwrap();
    let logs = agent.logs();
    for jwt in [&first_jwt, &second_jwt] {
        let signature = jwt.rsplit('.').next().unwrap();
        assert!(!logs.contains(signature), "a login token reached the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_inside_a_vault_namespace_and_says_so_without_it() {
    let stack = Stack::start(StackOptions {
        vault_namespace: Some("team-a".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();

    // Without vault.namespace: the root namespace has no AppRole mount.
    let cfg = stack
        .write_agent_toml(dir.path(), AgentToml::default())
        .unwrap();
    let (code, logs) = Agent::run_to_exit(&cfg, SECS(60)).unwrap();
    assert_eq!(code, Some(77), "{logs}");
    assert!(
        logs.contains("AppRole login refused: PUT auth/approle/login: permission denied")
            && logs.contains("in the root namespace (no vault.namespace)? check vault.approle_mount and vault.namespace"),
        "{logs}"
    );

    // With it: logs in, issues and publishes as in the root namespace.
    let cfg = stack
        .write_agent_toml(
            dir.path(),
            AgentToml {
                vault: "namespace = \"team-a\"",
                ..Default::default()
            },
        )
        .unwrap();
    let mut agent = spawn_agent(&stack, &cfg, &[]);
    let first = wait_published(&stack, 1, SECS(60)).await;
    can_login_on_replica(&stack, &first).await.unwrap();
    assert_eq!(stack.outstanding_leases().await.unwrap(), 1);
    let status = agent.status().await.unwrap();
    assert_eq!(status["vault"]["up"], json!(true), "{status}");

    // SIGTERM revokes the lease inside the namespace too.
    assert_eq!(agent.stop(SECS(20)).and_then(|s| s.code()), Some(0));
    assert_eq!(stack.outstanding_leases().await.unwrap(), 0);
}

/// `kubernetes` sends the same request as `jwt` (`{"role", "jwt"}` at
/// `auth/<mount>/login`): pointed at the jwt mount it logs in and publishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_method_shares_the_jwt_login() {
    let stack = Stack::start(StackOptions::default()).await.unwrap();
    let key = Signer::new();
    setup_jwt(&stack, &[&key]).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    write_token(&token_file, &key.jwt(3600));
    let cfg = agent_toml(
        &stack,
        dir.path(),
        &format!(
            "[vault.auth]\nmethod = \"kubernetes\"\nmount = \"jwt\"\nrole = \"riskfeat-agent\"\ntoken_file = \"{}\"",
            token_file.display()
        ),
        "",
    );
    let mut agent = spawn_agent(&stack, &cfg, &[]);
    let first = wait_published(&stack, 1, SECS(60)).await;
    can_login_on_replica(&stack, &first).await.unwrap();
    let logs = agent.logs();
    assert!(
        logs.contains("logged in to Vault with Kubernetes") && logs.contains("auth/jwt/login"),
        "{logs}"
    );
    assert_eq!(agent.stop(SECS(20)).and_then(|s| s.code()), Some(0));
}
