-- When a key was rolled: its expiry is final from then on (SPEC §2), and
-- only this column tells a rolled key in its grace period from one whose
-- expiry was merely set.
ALTER TABLE api_keys ADD COLUMN rolled_at BIGINT;
