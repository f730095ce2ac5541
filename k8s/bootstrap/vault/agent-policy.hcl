# riskfeat-agent: everything the agent needs, nothing more.
# Applied by k8s/bootstrap/vault/bootstrap.sh and by the test harness.

# Issue a dynamic database credential.
path "database/creds/feature-reader" {
  capabilities = ["read"]
}

# Keep a credential alive, look it up, and revoke it once the worker moved on.
path "sys/leases/renew" {
  capabilities = ["update"]
}

path "sys/leases/revoke" {
  capabilities = ["update"]
}

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

# Unwrap a response-wrapped secret_id.
path "sys/wrapping/unwrap" {
  capabilities = ["update"]
}
