-- Metrics API access tokens, kept by digest only like every other secret
-- (SPEC §2): a copy of the database cannot be turned into a working token.
-- A token outlives a rotation of its credential as a row naming an id that
-- no longer exists (refused as revoked, which is not a failed guess) until
-- it expires; expired rows of a project go at its next exchange.
CREATE TABLE metrics_tokens (
    digest         TEXT PRIMARY KEY,
    credential_id  TEXT NOT NULL,
    project_id     TEXT NOT NULL,
    expires_at     BIGINT NOT NULL
);
CREATE INDEX metrics_tokens_project ON metrics_tokens (project_id, expires_at);
