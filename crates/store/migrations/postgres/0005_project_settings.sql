-- Per-project settings changed from the dashboard. A missing row means defaults.
CREATE TABLE project_settings (
    project_id                TEXT PRIMARY KEY REFERENCES projects (id),
    rate_limit                TEXT,
    metrics_cache_ttl_minutes BIGINT NOT NULL
);
