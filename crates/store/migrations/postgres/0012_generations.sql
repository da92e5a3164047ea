-- Nothing to change on PostgreSQL: SQLite's 0012 adds the counters its event
-- writer reads to keep its contact cache true across processes; PostgreSQL's
-- ingest keeps no such cache. The migration keeps both version lists aligned.
SELECT 1;
