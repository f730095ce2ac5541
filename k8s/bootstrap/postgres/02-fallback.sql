-- riskfeat: the OPTIONAL static fallback login (docs/operations.md, "Fallback
-- credential"). Apply only if agents are configured with `[fallback]`. Run as
-- a superuser on the PRIMARY after 00-roles.sql. Idempotent.
--
-- riskfeat_fallback: limited privilege (membership in feature_reader only,
--   nothing else), a connection cap so it can never take the database's
--   connection slots, no VALID UNTIL (it must work during a Vault outage).
--   Agents publish it only while Vault cannot issue a dynamic credential.
--   The limit counts per server and is shared by every worker pod: it must
--   be at least 2 x (most worker pods) x fallback_pool_size (worker.toml,
--   default 4; 2 for the old pool draining during a swap). prod: at most 12
--   pods (the example HPA) x 4 x 2 = 96. Checked by
--   tests/tests/k8s/shipped.rs against the rendered prod overlay.
--
-- No password here: the applier sets it right after this file and stores the
-- same value in the `riskfeat-db-fallback-password` Secret, e.g.
--   psql -v ON_ERROR_STOP=1 -v pw="$FALLBACK_PASSWORD" <<'SQL'
--   ALTER ROLE riskfeat_fallback PASSWORD :'pw';
--   SQL

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'riskfeat_fallback') THEN
        CREATE ROLE riskfeat_fallback LOGIN;
    END IF;
END
$$;

ALTER ROLE riskfeat_fallback LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION
    CONNECTION LIMIT 100;
GRANT feature_reader TO riskfeat_fallback;
