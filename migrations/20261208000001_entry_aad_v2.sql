-- AAD format v2: a vault entry's wrapped key is bound to the clear columns a stored-token charge
-- uses (kind, exp_month, exp_year), so editing one in the database makes the entry fail to open
-- instead of changing what is sent to the processor. See src/crypto/mod.rs for both formats.
--
-- Entries written before this migration keep format 1 (token and key version only) and still
-- open; `payvault keys rotate` re-seals them as v2. New entries name their format explicitly:
-- the column has no default.
ALTER TABLE vault_entries
    ADD COLUMN aad_version smallint NOT NULL DEFAULT 1,
    ADD CONSTRAINT vault_entries_aad_version_check CHECK (aad_version IN (1, 2));
ALTER TABLE vault_entries ALTER COLUMN aad_version DROP DEFAULT;
