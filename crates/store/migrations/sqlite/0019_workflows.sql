-- Workflows (SPEC §10). The current definition (trigger, steps) is kept on
-- the workflow and every version's in `workflow_versions`, so a run finishes
-- on the version it started. `revision` counts every change (optimistic
-- concurrency: a change applies only to the revision it read).
-- The signing secret is needed in full to sign webhooks, so it is stored
-- as is (like a webhook provider's); the API shows it once. After a
-- rotation the previous secret keeps signing until `previous_secret_until`.
CREATE TABLE workflows (
    id                      TEXT PRIMARY KEY,
    project_id              TEXT NOT NULL REFERENCES projects (id),
    name                    TEXT NOT NULL,
    status                  TEXT NOT NULL,
    reentry                 TEXT NOT NULL,
    version                 BIGINT NOT NULL,
    revision                BIGINT NOT NULL,
    trigger_json            TEXT NOT NULL,
    steps_json              TEXT NOT NULL,
    signing_secret          TEXT NOT NULL,
    previous_signing_secret TEXT,
    previous_secret_until   BIGINT,
    created_at              BIGINT NOT NULL,
    updated_at              BIGINT NOT NULL
);
CREATE INDEX workflows_by_project ON workflows (project_id, id);

CREATE TABLE workflow_versions (
    workflow_id  TEXT NOT NULL REFERENCES workflows (id),
    version      BIGINT NOT NULL,
    trigger_json TEXT NOT NULL,
    steps_json   TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    PRIMARY KEY (workflow_id, version)
);
