-- Requests per key per UTC day, for the dashboard's usage chart. Counted in
-- memory and added here in batches (never a write per request).
CREATE TABLE key_usage_daily (
    key_id        TEXT NOT NULL,
    day           BIGINT NOT NULL,
    requests      BIGINT NOT NULL,
    errors        BIGINT NOT NULL,
    rate_limited  BIGINT NOT NULL,
    PRIMARY KEY (key_id, day)
);
