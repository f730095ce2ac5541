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

# --- AppRole and the agent's policy -------------------------------------------
if ! "$cli" auth list -format=json | grep -q '"approle/"'; then
    "$cli" auth enable -path=approle approle
fi
"$cli" policy write riskfeat-agent "$here/agent-policy.hcl"
if [ -n "${TOKEN_PERIOD:-}" ]; then
    token_lifetime="token_period=$TOKEN_PERIOD"
else
    token_lifetime="token_max_ttl=${TOKEN_MAX_TTL:-24h}"
fi
# token_no_default_policy: Vault's `default` policy grants the body form of
# sys/leases/renew (any lease) to every token; the agent gets only its own.
"$cli" write auth/approle/role/riskfeat-agent \
    token_policies=riskfeat-agent \
    token_no_default_policy=true \
    token_ttl="${TOKEN_TTL:-1h}" \
    "$token_lifetime" \
    secret_id_ttl="${SECRET_ID_TTL:-720h}"
if [ -n "${ROLE_ID:-}" ]; then
    "$cli" write auth/approle/role/riskfeat-agent/role-id role_id="$ROLE_ID"
fi

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

echo "bootstrap done. role_id of riskfeat-agent:"
"$cli" read -field=role_id auth/approle/role/riskfeat-agent/role-id
echo "create a secret_id with: $cli write -f -field=secret_id auth/approle/role/riskfeat-agent/secret-id"
