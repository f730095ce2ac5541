-- riskfeat: cluster-wide PostgreSQL roles. Run as a superuser on the PRIMARY
-- (any database; roles are global). Idempotent.
--
-- feature_reader: the only holder of table privileges. Every dynamic role that
--   Vault creates is made a member of it (vault/creation.sql), so the ACL of
--   `transactions` never grows with the number of leases.
-- vault_admin: the login Vault's database secrets engine uses. CREATEROLE to
--   create and drop the dynamic roles, ADMIN OPTION on feature_reader to grant
--   membership in it, pg_signal_backend to end the sessions of a revoked role.
--
-- No password here: the applier sets it right after this file, e.g.
--   psql -v ON_ERROR_STOP=1 -v pw="$VAULT_ADMIN_PASSWORD" <<'SQL'
--   ALTER ROLE vault_admin PASSWORD :'pw';
--   SQL
-- and production then rotates it with `bao write -f database/rotate-root/riskfeat`
-- so that only Vault knows it (see ../vault/bootstrap.sh).

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'feature_reader') THEN
        CREATE ROLE feature_reader NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'vault_admin') THEN
        CREATE ROLE vault_admin LOGIN CREATEROLE;
    END IF;
END
$$;

ALTER ROLE feature_reader NOLOGIN;
ALTER ROLE vault_admin LOGIN CREATEROLE NOSUPERUSER NOCREATEDB NOREPLICATION;
GRANT feature_reader TO vault_admin WITH ADMIN OPTION;
GRANT pg_signal_backend TO vault_admin;
