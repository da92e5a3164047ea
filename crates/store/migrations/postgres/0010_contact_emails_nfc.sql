-- Emails are compared in Unicode NFC from this version on. The re-keying of
-- contacts stored before (decomposed accents) is done in Rust right after
-- this migration, in the same transaction: see `rekey_contact_emails` in
-- crates/store/src/sql_store.rs.
SELECT 1;
