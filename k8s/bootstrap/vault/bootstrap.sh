#!/bin/sh
# riskfeat: production bootstrap of Vault/OpenBao and PostgreSQL.
#
# Applies the files next to this script, the same files the test harness
# (tests/src/stack.rs) applies, so what is tested is what is deployed:
#   ../postgres/00-roles.sql  ../postgres/01-schema.sql
#   ../postgres/02-fallback.sql (only when FALLBACK_PASSWORD is set)
#   agent-policy.hcl  creation.sql  revocation.sql
#
# Required environment:
#   BAO_ADDR / VAULT_ADDR and a token allowed to configure auth and mounts
#                        (BAO_TOKEN / VAULT_TOKEN, or a logged-in CLI)
#   PG_ADMIN_DSN         libpq URL of a superuser on the PRIMARY, database riskfeat
#   PG_PRIMARY_HOST      host Vault reaches the PRIMARY on (never the replica:
#                        CREATE ROLE fails on a hot standby)
#   VAULT_ADMIN_PASSWORD initial password of vault_admin (rotated at the end
#                        so that only Vault knows it)
# Optional:
#   VAULT_CLI (bao)  PG_PRIMARY_PORT (5432)  PG_DBNAME (riskfeat)
#   PG_SSLMODE (verify-full)  DEFAULT_TTL (1h)  MAX_TTL (24h)
#   TOKEN_TTL (1h)  TOKEN_PERIOD (unset: token_max_ttl applies)
#   TOKEN_MAX_TTL (24h)  SECRET_ID_TTL (720h)
#   ROLE_ID              set the AppRole's role_id to this value (the one in
#                        the overlay's role_id ConfigMap); unset: Vault's own
#   AUTH_METHOD          approle (default), kubernetes or jwt: how the agent
#                        logs in (docs/agent.md, "Login methods"). kubernetes
#                        and jwt set up, at auth/$AUTH_METHOD, role
#                        riskfeat-agent bound to the service account
#                        SA_NAMESPACE/SA_NAME (riskfeat/riskfeat-worker) and the
#                        token audience SA_AUDIENCE (vault), with the same
#                        policy and token TTLs as the AppRole. kubernetes:
#                        K8S_HOST (API server URL Vault calls, e.g.
#                        https://kubernetes.default.svc) and optionally
#                        K8S_CA_FILE (PEM; else Vault's in-cluster CA). jwt:
#                        JWT_ISSUER (the cluster's service-account issuer)
#                        and JWT_DISCOVERY_URL (its OIDC discovery URL; default
#                        JWT_ISSUER) or JWT_PUBKEYS_FILE (PEM public key(s)
#                        of the issuer, for a non-public discovery endpoint).
#                        The AppRole is then not created.
#   FALLBACK_PASSWORD    create the optional static fallback login
#                        riskfeat_fallback with this password (store the same
#                        value in the riskfeat-db-fallback-password Secret)
#
# Secrets are passed on stdin (`key=-`, psql variables from a here-document),
# never as command-line arguments.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
pg_dir="$here/../postgres"
cli=${VAULT_CLI:-bao}

: "${PG_ADMIN_DSN:?PG_ADMIN_DSN (superuser DSN of the primary) is required}"
: "${PG_PRIMARY_HOST:?PG_PRIMARY_HOST is required}"
: "${VAULT_ADMIN_PASSWORD:?VAULT_ADMIN_PASSWORD is required}"
pg_port=${PG_PRIMARY_PORT:-5432}
pg_db=${PG_DBNAME:-riskfeat}
pg_sslmode=${PG_SSLMODE:-verify-full}

# --- PostgreSQL (primary) ---------------------------------------------------
psql "$PG_ADMIN_DSN" -v ON_ERROR_STOP=1 -f "$pg_dir/00-roles.sql"
psql "$PG_ADMIN_DSN" -v ON_ERROR_STOP=1 -v pw="$VAULT_ADMIN_PASSWORD" <<'SQL'
ALTER ROLE vault_admin PASSWORD :'pw';
SQL
psql "$PG_ADMIN_DSN" -v ON_ERROR_STOP=1 -f "$pg_dir/01-schema.sql"
if [ -n "${FALLBACK_PASSWORD:-}" ]; then
    psql "$PG_ADMIN_DSN" -v ON_ERROR_STOP=1 -f "$pg_dir/02-fallback.sql"
    psql "$PG_ADMIN_DSN" -v ON_ERROR_STOP=1 -v pw="$FALLBACK_PASSWORD" <<'SQL'
ALTER ROLE riskfeat_fallback PASSWORD :'pw';
SQL
fi

# --- The agent's policy and login method --------------------------------------
auth_method=${AUTH_METHOD:-approle}
"$cli" policy write riskfeat-agent "$here/agent-policy.hcl"
if [ -n "${TOKEN_PERIOD:-}" ]; then
    token_lifetime="token_period=$TOKEN_PERIOD"
else
    token_lifetime="token_max_ttl=${TOKEN_MAX_TTL:-24h}"
fi
sa_namespace=${SA_NAMESPACE:-riskfeat}
sa_name=${SA_NAME:-riskfeat-worker}
sa_audience=${SA_AUDIENCE:-vault}
enable_auth() {
    if ! "$cli" auth list -format=json | grep -q "\"$1/\""; then
        "$cli" auth enable -path="$1" "$1"
    fi
}
# Writes the role riskfeat-agent of the auth method mounted at $1: that
# method's own settings (the other arguments), then the policy and token
# lifetimes every method gives the agent.
# token_no_default_policy: Vault's `default` policy grants the body form of
# sys/leases/renew (any lease) to every token; the agent gets only its own.
write_agent_role() {
    mount=$1
    shift
    "$cli" write "auth/$mount/role/riskfeat-agent" "$@" \
        token_policies=riskfeat-agent \
        token_no_default_policy=true \
        token_ttl="${TOKEN_TTL:-1h}" \
        "$token_lifetime"
}
case "$auth_method" in
approle)
    enable_auth approle
    write_agent_role approle secret_id_ttl="${SECRET_ID_TTL:-720h}"
    if [ -n "${ROLE_ID:-}" ]; then
        "$cli" write auth/approle/role/riskfeat-agent/role-id role_id="$ROLE_ID"
    fi
    ;;
kubernetes)
    : "${K8S_HOST:?K8S_HOST (the API server URL Vault calls) is required with AUTH_METHOD=kubernetes}"
    enable_auth kubernetes
    # Without K8S_CA_FILE, Vault's in-cluster CA.
    "$cli" write auth/kubernetes/config kubernetes_host="$K8S_HOST" \
        ${K8S_CA_FILE:+kubernetes_ca_cert=@"$K8S_CA_FILE"}
    write_agent_role kubernetes \
        bound_service_account_names="$sa_name" \
        bound_service_account_namespaces="$sa_namespace" \
        audience="$sa_audience"
    ;;
jwt)
    : "${JWT_ISSUER:?JWT_ISSUER (the service-account issuer) is required with AUTH_METHOD=jwt}"
    enable_auth jwt
    if [ -n "${JWT_PUBKEYS_FILE:-}" ]; then
        "$cli" write auth/jwt/config bound_issuer="$JWT_ISSUER" \
            jwt_validation_pubkeys=@"$JWT_PUBKEYS_FILE"
    else
        "$cli" write auth/jwt/config bound_issuer="$JWT_ISSUER" \
            oidc_discovery_url="${JWT_DISCOVERY_URL:-$JWT_ISSUER}"
    fi
    write_agent_role jwt \
        role_type=jwt \
        user_claim=sub \
        bound_subject="system:serviceaccount:$sa_namespace:$sa_name" \
        bound_audiences="$sa_audience"
    ;;
*)
    echo "AUTH_METHOD must be approle, kubernetes or jwt (got $auth_method)" >&2
    exit 64
    ;;
esac

# --- Database secrets engine, connected to the PRIMARY ------------------------
if ! "$cli" secrets list -format=json | grep -q '"database/"'; then
    "$cli" secrets enable -path=database database
fi
printf '%s' "$VAULT_ADMIN_PASSWORD" | "$cli" write database/config/riskfeat \
    plugin_name=postgresql-database-plugin \
    connection_url="postgresql://{{username}}:{{password}}@$PG_PRIMARY_HOST:$pg_port/$pg_db?sslmode=$pg_sslmode" \
    username=vault_admin \
    password=- \
    allowed_roles=feature-reader \
    verify_connection=true
# From now on only Vault knows vault_admin's password.
"$cli" write -f database/rotate-root/riskfeat

"$cli" write database/roles/feature-reader \
    db_name=riskfeat \
    creation_statements=@"$here/creation.sql" \
    revocation_statements=@"$here/revocation.sql" \
    default_ttl="${DEFAULT_TTL:-1h}" \
    max_ttl="${MAX_TTL:-24h}"

if [ "$auth_method" = approle ]; then
    echo "bootstrap done. role_id of riskfeat-agent:"
    "$cli" read -field=role_id auth/approle/role/riskfeat-agent/role-id
    echo "create a secret_id with: $cli write -f -field=secret_id auth/approle/role/riskfeat-agent/secret-id"
else
    echo "bootstrap done: role riskfeat-agent at auth/$auth_method for $sa_namespace/$sa_name, audience $sa_audience"
fi
