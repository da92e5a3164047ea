-- Events keyed by (project_id, id) in a WITHOUT ROWID table: every query is
-- per project, and each row now lands in three B-trees (the table and the
-- contact and name indexes) instead of five (rowid table, id index, and three
-- secondary indexes), which is most of the writer's work per event.
CREATE TABLE events_by_project (
    id               TEXT NOT NULL,
    project_id       TEXT NOT NULL REFERENCES projects (id),
    name             TEXT NOT NULL,
    contact_id       TEXT,
    anonymous_id     TEXT,
    properties       TEXT NOT NULL,
    timestamp        BIGINT NOT NULL,
    received_at      BIGINT NOT NULL,
    idempotency_key  TEXT,
    PRIMARY KEY (project_id, id)
) WITHOUT ROWID;
INSERT INTO events_by_project (id, project_id, name, contact_id, anonymous_id, properties, timestamp,
    received_at, idempotency_key)
SELECT id, project_id, name, contact_id, anonymous_id, properties, timestamp, received_at, idempotency_key
FROM events;
DROP TABLE events;
ALTER TABLE events_by_project RENAME TO events;
CREATE INDEX events_contact ON events (project_id, contact_id, id);
CREATE INDEX events_name ON events (project_id, name, id);
