-- Dashboard sessions. Only the SHA-256 of the cookie value is stored.
CREATE TABLE sessions (
    id_hash       TEXT PRIMARY KEY,
    operator_id   TEXT NOT NULL REFERENCES operators (id),
    csrf_token    TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    last_seen_at  BIGINT NOT NULL
);
CREATE INDEX sessions_operator ON sessions (operator_id);
