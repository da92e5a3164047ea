-- Which contacts ever started a run of a workflow: reentry `once` reads it.
-- The runs themselves are deleted after their retention (30 days); without
-- this a contact could start a `once` workflow again after that. Written
-- with each run start, kept while the contact and the workflow exist.
CREATE TABLE workflow_entries (
    workflow_id  TEXT NOT NULL REFERENCES workflows (id),
    contact_id   TEXT NOT NULL,
    first_run_at BIGINT NOT NULL,
    PRIMARY KEY (workflow_id, contact_id)
);
CREATE INDEX workflow_entries_by_contact ON workflow_entries (contact_id);
INSERT INTO workflow_entries (workflow_id, contact_id, first_run_at)
    SELECT workflow_id, contact_id, MIN(created_at) FROM workflow_runs
    GROUP BY workflow_id, contact_id;
