-- riskfeat: the transactions table of the seed design. Run as a superuser (or
-- the schema owner) on the PRIMARY, connected to the `riskfeat` database,
-- after 00-roles.sql. Idempotent.
--
-- A team that already has its table skips this file and points the worker's
-- `[source]` at it (docs/worker.md); the worker needs (user_id, time)
-- ordered access, hence the index on (user_id, transaction_time DESC): both
-- the newest-N read and the window aggregates are range scans of it.

CREATE TABLE IF NOT EXISTS transactions (
    id                 bigserial     PRIMARY KEY,
    user_id            bigint        NOT NULL,
    transaction_amount numeric(14,2) NOT NULL,
    transaction_time   timestamptz   NOT NULL,
    merchant           text          NOT NULL,
    category           text          NOT NULL
);

CREATE INDEX IF NOT EXISTS transactions_user_id_time_idx
    ON transactions (user_id, transaction_time DESC);

-- Table privileges go to feature_reader only, never to a dynamic role.
GRANT USAGE ON SCHEMA public TO feature_reader;
GRANT SELECT ON transactions TO feature_reader;
