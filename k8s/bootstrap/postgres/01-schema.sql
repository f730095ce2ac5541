-- riskfeat: feature tables. Run as a superuser (or the schema owner) on the
-- PRIMARY, connected to the `riskfeat` database, after 00-roles.sql. Idempotent.
--
-- Workers read the latest N transactions of one user, hence the index on
-- (user_id, ts DESC). They read amounts as `amount::float8`.

CREATE TABLE IF NOT EXISTS transactions (
    id       bigserial     PRIMARY KEY,
    user_id  bigint        NOT NULL,
    amount   numeric(14,2) NOT NULL,
    ts       timestamptz   NOT NULL,
    merchant text          NOT NULL,
    category text          NOT NULL
);

CREATE INDEX IF NOT EXISTS transactions_user_id_ts_idx
    ON transactions (user_id, ts DESC);

-- Table privileges go to feature_reader only, never to a dynamic role.
GRANT USAGE ON SCHEMA public TO feature_reader;
GRANT SELECT ON transactions TO feature_reader;
