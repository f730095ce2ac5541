//! Vault errors, split into transient faults (retry with backoff) and
//! permanent answers (fix the configuration or the policy).

/// One failed Vault request. The display names the method, the path (never
/// a token or a secret) and the cause on one line.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("{method} {path}: cannot reach Vault: {detail}")]
    Connect {
        method: &'static str,
        path: String,
        detail: String,
    },
    #[error("{method} {path}: no answer within {timeout_s:.1}s")]
    Timeout {
        method: &'static str,
        path: String,
        timeout_s: f64,
    },
    #[error("{method} {path}: Vault is sealed or unavailable (HTTP {status}): {message}")]
    Unavailable {
        method: &'static str,
        path: String,
        status: u16,
        message: String,
    },
    #[error("{method} {path}: Vault server error (HTTP {status}): {message}")]
    Server {
        method: &'static str,
        path: String,
        status: u16,
        message: String,
    },
    #[error("{method} {path}: permission denied (HTTP 403): {message}")]
    Denied {
        method: &'static str,
        path: String,
        message: String,
    },
    #[error("{method} {path}: rejected (HTTP {status}): {message}")]
    Rejected {
        method: &'static str,
        path: String,
        status: u16,
        message: String,
    },
    #[error("{method} {path}: unexpected response: {detail}")]
    Decode {
        method: &'static str,
        path: String,
        detail: String,
    },
    /// A lease id not of the form Vault issues; never put into a URL.
    #[error("lease id {0:?} is not of the form Vault issues (database/creds/<role>/<id>)")]
    BadLeaseId(String),
}

impl VaultError {
    /// True for faults worth retrying: unreachable, timeout, sealed, 5xx,
    /// 429, and responses that did not decode (a proxy in the way).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            VaultError::Connect { .. }
                | VaultError::Timeout { .. }
                | VaultError::Unavailable { .. }
                | VaultError::Server { .. }
                | VaultError::Decode { .. }
        )
    }

    /// True when Vault refused: 403, or a 400 about credentials.
    pub fn is_permission(&self) -> bool {
        matches!(
            self,
            VaultError::Denied { .. } | VaultError::Rejected { status: 400, .. }
        )
    }

    /// The HTTP status when Vault answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            VaultError::Unavailable { status, .. }
            | VaultError::Server { status, .. }
            | VaultError::Rejected { status, .. } => Some(*status),
            VaultError::Denied { .. } => Some(403),
            _ => None,
        }
    }

    /// Maps an HTTP error status and Vault's `errors` list to an error.
    pub(crate) fn from_status(method: &'static str, path: &str, status: u16, body: &[u8]) -> Self {
        let message = vault_message(body);
        let path = path.to_string();
        match status {
            403 => VaultError::Denied {
                method,
                path,
                message,
            },
            429 | 503 => VaultError::Unavailable {
                method,
                path,
                status,
                message,
            },
            500..=599 | 412 => VaultError::Server {
                method,
                path,
                status,
                message,
            },
            _ => VaultError::Rejected {
                method,
                path,
                status,
                message,
            },
        }
    }
}

/// Vault's `{"errors": [...]}` joined, else a short excerpt of the body.
fn vault_message(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Errors {
        #[serde(default)]
        errors: Vec<String>,
    }
    let msg = match serde_json::from_slice::<Errors>(body) {
        Ok(e) if !e.errors.is_empty() => e.errors.join("; "),
        _ => String::from_utf8_lossy(body).trim().to_string(),
    };
    let msg = msg.split_whitespace().collect::<Vec<_>>().join(" ");
    if msg.is_empty() {
        "no error message".to_string()
    } else if msg.len() > 300 {
        let mut end = 300;
        while !msg.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &msg[..end])
    } else {
        msg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_statuses() {
        let e = VaultError::from_status(
            "GET",
            "database/creds/r",
            403,
            br#"{"errors":["permission denied"]}"#,
        );
        assert!(!e.is_transient() && e.is_permission());
        assert_eq!(
            e.to_string(),
            "GET database/creds/r: permission denied (HTTP 403): permission denied"
        );
        let e = VaultError::from_status(
            "PUT",
            "auth/approle/login",
            400,
            br#"{"errors":["invalid role or secret ID"]}"#,
        );
        assert!(!e.is_transient() && e.is_permission());
        assert!(e.to_string().contains("invalid role or secret ID"));
        let e = VaultError::from_status("GET", "x", 503, br#"{"errors":["Vault is sealed"]}"#);
        assert!(e.is_transient());
        assert!(e.to_string().contains("sealed"));
        let e = VaultError::from_status("GET", "x", 502, b"bad gateway");
        assert!(e.is_transient());
        assert!(e.to_string().contains("bad gateway"));
    }
}
