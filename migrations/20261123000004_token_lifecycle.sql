-- Token lifecycle: deletion by crypto-shredding and optional expiry.
--
-- Deleting a token destroys its wrapped data key (and the ciphertext with it): the card becomes
-- unrecoverable at once, while the row, its display metadata and the audit trail remain.
ALTER TABLE vault_entries
    ALTER COLUMN wrapped_key DROP NOT NULL,
    ALTER COLUMN ciphertext DROP NOT NULL,
    ADD COLUMN deleted_at timestamptz,
    ADD COLUMN expires_at timestamptz,
    ADD CONSTRAINT vault_entries_shredded_check
        CHECK ((deleted_at IS NULL) = (wrapped_key IS NOT NULL AND ciphertext IS NOT NULL));

-- The purge job's work list.
CREATE INDEX vault_entries_expiry_idx ON vault_entries (expires_at)
    WHERE deleted_at IS NULL AND expires_at IS NOT NULL;
