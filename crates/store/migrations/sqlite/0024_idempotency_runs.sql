-- Idempotency claims without a page write per claim (see
-- crates/store/src/sqlite/claims.rs). Keys are random (UUIDs): in
-- event_idempotency every claim dirtied a random leaf page, written whole to
-- the WAL at commit. Now the stored event itself is the claim; the event
-- writer keeps recent claims in memory and writes them every 50 000 claims
-- as a run: entries (key hash, received_at, event id) sorted by hash, in
-- blobs keyed by their first hash, with a filter of the run's hashes.
-- event_idempotency keeps the claims made before this migration (the writer
-- reads it until they expire) and serves in-memory databases.
CREATE TABLE idempotency_runs (
    run         INTEGER NOT NULL,
    first_hash  INTEGER NOT NULL,
    entries     BLOB NOT NULL,
    PRIMARY KEY (run, first_hash)
) WITHOUT ROWID;

-- newest: the run's newest claim (the run is dropped once it leaves the
-- window); watermark: a time in ms, 10 s before the run was written
-- (events whose id, a UUIDv7, is from then on are read back at a restart:
-- their claims may be in no run); filter: ClaimFilter bytes, NULL to probe
-- the run for every key. Run 0 only holds this migration's watermark (older
-- claims are in event_idempotency), with an empty filter.
CREATE TABLE idempotency_run_info (
    run         INTEGER PRIMARY KEY,
    newest      BIGINT NOT NULL,
    watermark   BIGINT NOT NULL,
    claims      BIGINT NOT NULL,
    filter      BLOB
);
INSERT INTO idempotency_run_info (run, newest, watermark, claims, filter)
    VALUES (0, 0, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) - 10000, 0,
            X'0100000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000');

INSERT INTO keyflow_generations (name, value) VALUES ('claims', 0);

-- The secret of the runs' key hash (SHA-256 of secret, project, key): no
-- tenant can choose keys whose hashes collide. Fixed for the database, as
-- the filters stored with the runs depend on it.
CREATE TABLE idempotency_hash_key (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    secret  BLOB NOT NULL
);
INSERT INTO idempotency_hash_key (id, secret) VALUES (1, randomblob(16));

-- After a restart the writer reads back the claims of the events since the
-- newest run's watermark: the keyed ones only, newest ids appended.
CREATE INDEX events_keyed ON events (project_id, id) WHERE idempotency_key IS NOT NULL;
