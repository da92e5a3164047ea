-- Nothing to change on SQLite: its tenant connections cap every value at
-- 100 KB (SQLITE_LIMIT_LENGTH). PostgreSQL's 0017 adds the equivalent caps; this
-- keeps both version lists aligned.
SELECT 1;
