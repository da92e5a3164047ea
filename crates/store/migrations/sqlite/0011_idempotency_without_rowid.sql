-- Idempotency keys are only ever found by (project_id, key): stored in that
-- key's own B-tree (WITHOUT ROWID), a claim writes one B-tree instead of a
-- table and its unique index. (PostgreSQL has no rowid table to drop.)
CREATE TABLE event_idempotency_by_key (
    project_id  TEXT NOT NULL,
    key         TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (project_id, key)
) WITHOUT ROWID;
INSERT INTO event_idempotency_by_key (project_id, key, event_id, created_at)
    SELECT project_id, key, event_id, created_at FROM event_idempotency;
DROP TABLE event_idempotency;
ALTER TABLE event_idempotency_by_key RENAME TO event_idempotency;
