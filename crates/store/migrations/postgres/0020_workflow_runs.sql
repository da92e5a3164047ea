-- Workflow runs (SPEC §10) and the job queue that advances them.
--
-- A run follows one version of its workflow; `position` is the path of the
-- step it runs next (JSON, e.g. [2, "then", 0]), `depth` how many workflow
-- steps led to it (the loop guard stops at 5). `facts_json` keeps what the
-- trigger knew (the event's name and properties, the variables) for
-- conditions and templates. `idempotency_key` replays an API trigger.
CREATE TABLE workflow_runs (
    id              TEXT PRIMARY KEY,
    project_id      TEXT NOT NULL REFERENCES projects (id),
    workflow_id     TEXT NOT NULL REFERENCES workflows (id),
    version         BIGINT NOT NULL,
    contact_id      TEXT NOT NULL,
    trigger_json    TEXT NOT NULL,
    facts_json      TEXT NOT NULL,
    status          TEXT NOT NULL,
    position        TEXT,
    depth           BIGINT NOT NULL,
    idempotency_key TEXT,
    error           TEXT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    finished_at     BIGINT
);
CREATE INDEX workflow_runs_by_workflow ON workflow_runs (workflow_id, id);
CREATE INDEX workflow_runs_by_contact ON workflow_runs (workflow_id, contact_id, created_at);
CREATE UNIQUE INDEX workflow_runs_idempotency ON workflow_runs (workflow_id, idempotency_key);
CREATE INDEX workflow_runs_finished ON workflow_runs (finished_at);
CREATE INDEX workflow_runs_by_project ON workflow_runs (project_id, created_at);

-- Each step a run reached, by its path, and every attempt at it.
CREATE TABLE workflow_run_steps (
    run_id          TEXT NOT NULL REFERENCES workflow_runs (id),
    path            TEXT NOT NULL,
    step_type       TEXT NOT NULL,
    status          TEXT NOT NULL,
    attempts        BIGINT NOT NULL,
    next_attempt_at BIGINT,
    started_at      BIGINT NOT NULL,
    finished_at     BIGINT,
    PRIMARY KEY (run_id, path)
);
CREATE TABLE workflow_run_attempts (
    run_id      TEXT NOT NULL REFERENCES workflow_runs (id),
    path        TEXT NOT NULL,
    attempt     BIGINT NOT NULL,
    at          BIGINT NOT NULL,
    status_code BIGINT,
    duration_ms BIGINT NOT NULL,
    response    TEXT,
    error       TEXT,
    PRIMARY KEY (run_id, path, attempt)
);

-- The durable job queue: a job is due at `run_at`; a worker claims it by
-- setting a lease (`locked_until`) instead of holding a transaction open
-- during a webhook call. An expired lease is claimed again; `claims`
-- counts claims that never finished (a job that keeps crashing its worker
-- is parked). `payload`: what a contact trigger saw (JSON).
CREATE TABLE jobs (
    id           TEXT PRIMARY KEY,
    kind         TEXT NOT NULL,
    project_id   TEXT NOT NULL,
    subject_id   TEXT NOT NULL,
    run_at       BIGINT NOT NULL,
    locked_until BIGINT,
    locked_by    TEXT,
    claims       BIGINT NOT NULL,
    created_at   BIGINT NOT NULL,
    payload      TEXT
);
CREATE INDEX jobs_due ON jobs (run_at);
CREATE INDEX jobs_leases ON jobs (locked_until);
CREATE UNIQUE INDEX jobs_subject ON jobs (kind, subject_id);

-- The event names that start an active workflow's runs, kept by the
-- workflow's writes. An event stored for a known contact whose name is here
-- gets a `workflow_event` job (`subject_id` = event id / workflow id) in the
-- transaction that stores it, whatever path stored it (single events,
-- batches, Segment, the embed script); an idempotent repeat stores no event,
-- so it starts nothing. The worker checks the trigger's conditions and the
-- reentry rule, then starts the run.
CREATE TABLE workflow_event_triggers (
    workflow_id TEXT NOT NULL REFERENCES workflows (id),
    project_id  TEXT NOT NULL,
    event_name  TEXT NOT NULL,
    PRIMARY KEY (workflow_id)
);
CREATE INDEX workflow_event_triggers_by_name ON workflow_event_triggers (project_id, event_name);

-- One statement-level trigger per insert statement (the group commit writes
-- many events in one), joining the new rows with the trigger table once.
CREATE FUNCTION keyflow_events_start_workflows() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO jobs (id, kind, project_id, subject_id, run_at, locked_until, locked_by,
                      claims, created_at)
        SELECT md5(e.id || '/' || t.workflow_id), 'workflow_event', e.project_id,
               e.id || '/' || t.workflow_id, e.received_at, NULL, NULL, 0, e.received_at
        FROM new_events e
        JOIN workflow_event_triggers t
          ON t.project_id = e.project_id AND t.event_name = e.name
        WHERE e.contact_id IS NOT NULL
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END $$;
CREATE TRIGGER events_start_workflows AFTER INSERT ON events
    REFERENCING NEW TABLE AS new_events
    FOR EACH STATEMENT EXECUTE FUNCTION keyflow_events_start_workflows();

-- The contact triggers of active workflows (`contact_updated` with its
-- property, `subscription_changed` with its value), kept by the workflow's
-- writes. A contact write that changes what one names writes a
-- `workflow_contact` job in its own transaction (the store compares the
-- fields before and after).
CREATE TABLE workflow_contact_triggers (
    workflow_id TEXT NOT NULL REFERENCES workflows (id),
    project_id  TEXT NOT NULL,
    property    TEXT,
    subscribed  BOOLEAN,
    PRIMARY KEY (workflow_id)
);
CREATE INDEX workflow_contact_triggers_by_project ON workflow_contact_triggers (project_id);
