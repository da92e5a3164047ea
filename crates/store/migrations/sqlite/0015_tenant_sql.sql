-- Nothing to store on SQLite: a tenant's query runs on a read-only
-- connection with per-query temporary views (sqlite/tenant_sql.rs).
-- PostgreSQL's 0015 adds its views and reader role; this keeps both
-- backends at the same version numbers.
SELECT 1;
