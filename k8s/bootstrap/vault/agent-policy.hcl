# riskfeat-agent: everything the agent needs, nothing more.
# Applied by k8s/bootstrap/vault/bootstrap.sh and by the test harness.

# Issue a dynamic database credential.
path "database/creds/feature-reader" {
  capabilities = ["read"]
}

# Keep a credential alive and revoke it once the worker moved on: ONLY the
# leases of this role. The agent calls the URL forms
# sys/leases/{renew,revoke}/<lease_id>, which a policy can scope by path; the
# body forms (sys/leases/renew, sys/leases/revoke) are not granted, so a leaked
# agent token cannot renew or revoke any other lease in Vault.
path "sys/leases/renew/database/creds/feature-reader/*" {
  capabilities = ["update"]
}

path "sys/leases/revoke/database/creds/feature-reader/*" {
  capabilities = ["update"]
}

# Lease lookup has no URL form, so it cannot be scoped; it tells a lease's TTL
# and renewability only, never a secret.
path "sys/leases/lookup" {
  capabilities = ["update"]
}

# The agent's own token.
path "auth/token/renew-self" {
  capabilities = ["update"]
}

path "auth/token/lookup-self" {
  capabilities = ["read"]
}

# Revoke it (and the leases it created) when the pod goes away. The AppRole
# role sets token_no_default_policy, so Vault's `default` policy (which
# would grant this, and the unscoped body form of sys/leases/renew) is not
# attached: everything the agent may do is in this file.
path "auth/token/revoke-self" {
  capabilities = ["update"]
}

# Unwrap a response-wrapped secret_id.
path "sys/wrapping/unwrap" {
  capabilities = ["update"]
}
