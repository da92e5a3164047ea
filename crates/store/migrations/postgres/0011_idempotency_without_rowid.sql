-- Nothing to change on PostgreSQL: SQLite's 0011 moves idempotency keys into
-- a WITHOUT ROWID table, and a PostgreSQL table has no rowid B-tree to drop.
-- The migration exists so both backends keep the same version numbers.
SELECT 1;
