-- One-time dashboard forms (creating or rolling a key): each form carries a
-- random nonce, claimed when it is posted, so a refresh or back/forward that
-- re-posts it creates nothing the second time and can point at what the
-- first post made. Rows older than a day are deleted at the next claim.
CREATE TABLE form_nonces (
    nonce       TEXT PRIMARY KEY,
    result_id   TEXT,
    created_at  BIGINT NOT NULL
);
