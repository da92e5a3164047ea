-- Anonymous events (the bulk of tracking) have no contact: the contact index
-- only needs the events that have one, so an anonymous event lands in two
-- B-trees instead of three. `contact_id = ?` implies the index's condition,
-- so contact filters still use it.
DROP INDEX events_contact;
CREATE INDEX events_contact ON events (project_id, contact_id, id) WHERE contact_id IS NOT NULL;
