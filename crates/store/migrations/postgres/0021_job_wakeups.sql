-- Wakes every instance's workflow worker when jobs are queued: each
-- instance LISTENs on `keyflow_jobs` (crates/store/src/job_signals.rs).
-- PostgreSQL delivers a notification at commit, so no worker looks before
-- the jobs are visible, and identical notifications of one transaction are
-- sent once. One trigger on `jobs` covers every path that queues work: the
-- events trigger, contact writes, API triggers.
CREATE FUNCTION keyflow_jobs_queued() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM new_jobs) THEN
        PERFORM pg_notify('keyflow_jobs', '');
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER jobs_queued AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION keyflow_jobs_queued();
