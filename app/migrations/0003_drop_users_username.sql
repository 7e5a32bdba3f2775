-- phase: contract
-- summary: drop users.username, the legacy login name superseded by email.
--
-- Contract step: run it only once no running version reads the column (no version of this
-- service does). Harmless to run twice.
ALTER TABLE users DROP COLUMN IF EXISTS username;
