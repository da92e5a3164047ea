-- Tenant SQL (the Metrics API's POST /v1/metrics/query, SPEC §4).
--
-- A tenant's query runs on its own connection, logged in as a role that may
-- read the two views below and nothing else. The views decide the project
-- from a row the server writes for that connection's backend process before
-- handing it over: the query cannot change its process id, cannot write
-- this table, and cannot read it (unlike a setting, which set_config could
-- change from inside a SELECT).
CREATE TABLE tenant_query_sessions (
    pid         INTEGER PRIMARY KEY,
    project_id  TEXT NOT NULL
);

-- The reader role's password, made by the server that created the role.
CREATE TABLE tenant_query_role (
    name      TEXT PRIMARY KEY,
    password  TEXT NOT NULL
);

CREATE SCHEMA keyflow_tenant;

-- security_barrier: the query's own conditions run only on rows the view
-- already kept, so an error message (a failed cast, say) can never show a
-- value of another project's row.
CREATE VIEW keyflow_tenant.events WITH (security_barrier = true) AS
    SELECT e.id, e.name, e.contact_id, e.anonymous_id, e.properties::jsonb AS properties,
           e.timestamp, e.received_at
    FROM events e
    WHERE e.project_id = (SELECT s.project_id FROM tenant_query_sessions s
                          WHERE s.pid = pg_backend_pid());

CREATE VIEW keyflow_tenant.contacts WITH (security_barrier = true) AS
    SELECT c.id, c.email, c.external_id, c.first_name, c.last_name, c.subscribed,
           c.properties::jsonb AS properties, c.created_at, c.updated_at
    FROM contacts c
    WHERE c.project_id = (SELECT s.project_id FROM tenant_query_sessions s
                          WHERE s.pid = pg_backend_pid());
