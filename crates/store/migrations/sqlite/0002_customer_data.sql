-- Contacts and events. email_key is the lower-cased email: uniqueness and
-- lookups are case-insensitive while the stored email keeps its spelling.
CREATE TABLE contacts (
    id           TEXT PRIMARY KEY,
    project_id   TEXT NOT NULL REFERENCES projects (id),
    email        TEXT,
    email_key    TEXT,
    external_id  TEXT,
    first_name   TEXT,
    last_name    TEXT,
    subscribed   INTEGER NOT NULL DEFAULT 0,
    properties   TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);
CREATE UNIQUE INDEX contacts_email ON contacts (project_id, email_key);
CREATE UNIQUE INDEX contacts_external_id ON contacts (project_id, external_id);
CREATE INDEX contacts_subscribed ON contacts (project_id, subscribed, id);

-- contact_id is not a foreign key: deleting a contact leaves its events, detached.
CREATE TABLE events (
    id               TEXT PRIMARY KEY,
    project_id       TEXT NOT NULL REFERENCES projects (id),
    name             TEXT NOT NULL,
    contact_id       TEXT,
    anonymous_id     TEXT,
    properties       TEXT NOT NULL,
    timestamp        BIGINT NOT NULL,
    received_at      BIGINT NOT NULL,
    idempotency_key  TEXT
);
CREATE INDEX events_project ON events (project_id, id);
CREATE INDEX events_contact ON events (project_id, contact_id, id);
CREATE INDEX events_name ON events (project_id, name, id);

-- One row per (project, idempotency key); older than 24 h it no longer counts.
CREATE TABLE event_idempotency (
    project_id  TEXT NOT NULL,
    key         TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (project_id, key)
);
