-- The metrics credential of a project (SPEC §4): at most one per project.
-- `id` is the public `mk_<env>_…` identifier; only the SHA-256 of the client
-- secret is kept. Rotating replaces the row's id, digest and created_at.
CREATE TABLE metrics_credentials (
    project_id    TEXT PRIMARY KEY REFERENCES projects (id),
    id            TEXT NOT NULL UNIQUE,
    secret_digest TEXT NOT NULL,
    ip_allowlist  TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    last_used_at  BIGINT
);
