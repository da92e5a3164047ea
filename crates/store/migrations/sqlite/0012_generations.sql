-- Counters other connections read to learn that something changed: the
-- event writer caches who contacts are and forgets it when `contacts` moved,
-- whichever process (another server, the CLI) wrote the contact.
CREATE TABLE keyflow_generations (
    name   TEXT PRIMARY KEY,
    value  BIGINT NOT NULL
) WITHOUT ROWID;
INSERT INTO keyflow_generations (name, value) VALUES ('contacts', 0);
