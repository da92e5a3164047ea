-- Events keyed by (project_id, id): every query is per project, so the
-- primary key serves the listing and the separate (project_id, id) index
-- goes: one index fewer to maintain per event.
ALTER TABLE events DROP CONSTRAINT events_pkey;
ALTER TABLE events ADD PRIMARY KEY (project_id, id);
DROP INDEX events_project;
