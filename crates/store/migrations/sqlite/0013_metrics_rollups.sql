-- Roll-ups behind the Metrics API's predefined metrics (SPEC §4), written by
-- ingestion in the same transaction as the events they count, so they never
-- disagree with what was acknowledged. Buckets are UTC hours and days in Unix
-- milliseconds, taken from the event's own timestamp (late events land in old
-- buckets). `slot` spreads concurrent PostgreSQL writers over several rows of
-- one bucket (SQLite's single writer always uses 0); readers add the slots up.
CREATE TABLE event_counts_hourly (
    project_id  TEXT NOT NULL,
    hour        BIGINT NOT NULL,
    name        TEXT NOT NULL,
    slot        INTEGER NOT NULL,
    total       BIGINT NOT NULL,
    PRIMARY KEY (project_id, hour, name, slot)
) WITHOUT ROWID;

-- Who was active: one row per (project, day, event name, contact), and one
-- with the name '' for any event. Counted in unique_contacts_daily when new.
CREATE TABLE contact_days (
    project_id  TEXT NOT NULL,
    day         BIGINT NOT NULL,
    name        TEXT NOT NULL,
    contact_id  TEXT NOT NULL,
    PRIMARY KEY (project_id, day, name, contact_id)
) WITHOUT ROWID;

CREATE TABLE unique_contacts_daily (
    project_id  TEXT NOT NULL,
    day         BIGINT NOT NULL,
    name        TEXT NOT NULL,
    slot        INTEGER NOT NULL,
    total       BIGINT NOT NULL,
    PRIMARY KEY (project_id, day, name, slot)
) WITHOUT ROWID;

-- contacts.created reads contacts by creation time.
CREATE INDEX contacts_created ON contacts (project_id, created_at);

-- The events stored before this migration (floor division: timestamps may
-- precede 1970).
INSERT INTO event_counts_hourly (project_id, hour, name, slot, total)
SELECT project_id, timestamp - ((timestamp % 3600000) + 3600000) % 3600000, name, 0, count(*)
FROM events
GROUP BY 1, 2, 3;

INSERT INTO contact_days (project_id, day, name, contact_id)
SELECT DISTINCT project_id, timestamp - ((timestamp % 86400000) + 86400000) % 86400000, name, contact_id
FROM events WHERE contact_id IS NOT NULL
UNION
SELECT DISTINCT project_id, timestamp - ((timestamp % 86400000) + 86400000) % 86400000, '', contact_id
FROM events WHERE contact_id IS NOT NULL;

INSERT INTO unique_contacts_daily (project_id, day, name, slot, total)
SELECT project_id, day, name, 0, count(*)
FROM contact_days
GROUP BY 1, 2, 3;
