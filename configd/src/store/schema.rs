//! The embedded schema migrations, applied in order at start under a
//! PostgreSQL advisory lock so that several instances starting together
//! never race each other.

/// Advisory lock key serializing migrations (and warm-ups) across instances.
pub const MIGRATION_LOCK: i64 = 0x7269_736b_6366_6701;
/// Advisory lock key serializing cache warm-ups across instances.
pub const WARMUP_LOCK: i64 = 0x7269_736b_6366_6702;

/// `(version, sql)`; never edit a released entry, append a new one.
pub const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        r#"
CREATE TABLE IF NOT EXISTS configd_namespaces (
    name         text PRIMARY KEY,
    version      bigint NOT NULL DEFAULT 0,
    compacted_to bigint NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS configd_items (
    namespace text NOT NULL REFERENCES configd_namespaces(name) ON DELETE CASCADE,
    key       text NOT NULL,
    value     jsonb NOT NULL,
    version   bigint NOT NULL,
    PRIMARY KEY (namespace, key)
);
CREATE TABLE IF NOT EXISTS configd_changes (
    namespace text NOT NULL REFERENCES configd_namespaces(name) ON DELETE CASCADE,
    version   bigint NOT NULL,
    key       text NOT NULL,
    op        text NOT NULL CHECK (op IN ('upsert', 'delete')),
    value     jsonb,
    PRIMARY KEY (namespace, version, key)
);
CREATE INDEX IF NOT EXISTS configd_changes_key ON configd_changes (namespace, key, version);
CREATE TABLE IF NOT EXISTS configd_audits (
    namespace text NOT NULL REFERENCES configd_namespaces(name) ON DELETE CASCADE,
    version   bigint NOT NULL,
    who       text NOT NULL,
    at        timestamptz NOT NULL DEFAULT now(),
    comment   text NOT NULL DEFAULT '',
    changes   integer NOT NULL,
    PRIMARY KEY (namespace, version)
);
"#,
    ),
    // The name of the bearer token that published each version (audit);
    // NULL for versions published before this migration. `who` stays the
    // author the client gave, a free comment.
    (
        2,
        "ALTER TABLE configd_audits ADD COLUMN IF NOT EXISTS token text;",
    ),
    // Schemas per namespace (versioned; a NULL schema removes it), the
    // gray release in progress, what kind of version each audit row is
    // (publish, rollback, replace, gray_start, gray_promote, gray_abort;
    // NULL before this migration), and the clients' reports.
    (
        3,
        r#"
ALTER TABLE configd_audits ADD COLUMN IF NOT EXISTS kind text;
CREATE TABLE IF NOT EXISTS configd_ns_schemas (
    namespace text NOT NULL REFERENCES configd_namespaces(name) ON DELETE CASCADE,
    version   bigint NOT NULL,
    schema    jsonb,
    token     text NOT NULL,
    at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace, version)
);
CREATE TABLE IF NOT EXISTS configd_gray (
    namespace text PRIMARY KEY REFERENCES configd_namespaces(name) ON DELETE CASCADE,
    version   bigint NOT NULL,
    selector  jsonb NOT NULL,
    changes   jsonb NOT NULL,
    at        timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS configd_clients (
    namespace       text NOT NULL,
    client_id       text NOT NULL,
    labels          jsonb NOT NULL,
    version         bigint NOT NULL,
    in_force        bigint,
    rejected        jsonb,
    token           text NOT NULL,
    last_seen       timestamptz NOT NULL,
    PRIMARY KEY (namespace, client_id)
);
"#,
    ),
];
