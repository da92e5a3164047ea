-- PostgreSQL: the same portable schema as SQLite for now (BIGINT millis, TEXT ids and JSON),
-- so one set of SQL statements serves both backends.
-- Tenancy, people, API keys and the activity log.
-- Times are integer Unix milliseconds; ids are UUIDv7 text (time-ordered, so
-- "ORDER BY id DESC" is newest first and doubles as the pagination cursor).
CREATE TABLE workspaces (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    plan        TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE projects (
    id            TEXT PRIMARY KEY,
    workspace_id  TEXT NOT NULL REFERENCES workspaces (id),
    name          TEXT NOT NULL,
    environment   TEXT NOT NULL,
    created_at    BIGINT NOT NULL
);
CREATE INDEX projects_workspace ON projects (workspace_id);

-- Emails are stored lower-cased, so the unique index is case-insensitive.
CREATE TABLE operators (
    id             TEXT PRIMARY KEY,
    email          TEXT NOT NULL UNIQUE,
    password_hash  TEXT NOT NULL,
    created_at     BIGINT NOT NULL
);

CREATE TABLE memberships (
    workspace_id  TEXT NOT NULL REFERENCES workspaces (id),
    operator_id   TEXT NOT NULL REFERENCES operators (id),
    role          TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    PRIMARY KEY (workspace_id, operator_id)
);

-- Only the SHA-256 digest of a key is stored, never the key.
CREATE TABLE api_keys (
    id               TEXT PRIMARY KEY,
    project_id       TEXT NOT NULL REFERENCES projects (id),
    name             TEXT NOT NULL,
    key_type         TEXT NOT NULL,
    scopes           TEXT NOT NULL,
    prefix           TEXT NOT NULL,
    digest           TEXT NOT NULL UNIQUE,
    created_at       BIGINT NOT NULL,
    created_by_type  TEXT NOT NULL,
    created_by_id    TEXT,
    created_by_name  TEXT,
    created_by_prefix TEXT,
    expires_at       BIGINT,
    revoked_at       BIGINT,
    last_used_at     BIGINT,
    last_used_ip     TEXT,
    ip_allowlist     TEXT NOT NULL,
    allowed_events   TEXT,
    allowed_origins  TEXT,
    rate_limit       TEXT
);
CREATE INDEX api_keys_project ON api_keys (project_id, id);

CREATE TABLE audit_log (
    id            TEXT PRIMARY KEY,
    workspace_id  TEXT NOT NULL,
    project_id    TEXT,
    at            BIGINT NOT NULL,
    actor_type    TEXT NOT NULL,
    actor_id      TEXT,
    actor_name    TEXT,
    actor_prefix  TEXT,
    action        TEXT NOT NULL,
    target_type   TEXT NOT NULL,
    target_id     TEXT,
    target_name   TEXT,
    ip            TEXT,
    details       TEXT NOT NULL
);
CREATE INDEX audit_log_workspace ON audit_log (workspace_id, id);
