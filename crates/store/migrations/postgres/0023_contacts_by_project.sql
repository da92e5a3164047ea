-- A project's contacts newest first, a page at a time (GET /v1/contacts,
-- `keyflow contacts export`): without it each page read every contact
-- newer than its cursor, so listing all of a project's contacts took
-- time quadratic in their number.
CREATE INDEX contacts_by_project ON contacts (project_id, id);
