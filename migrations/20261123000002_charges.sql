-- Exactly-once charges. A charge's idempotency record moves through
--   in_flight -> succeeded | failed | unknown,   unknown (or an expired lease) -> in_flight
-- (see src/charge.rs). `processor_key` is fixed at the first attempt and re-sent on every
-- retry, so a processor that honours Idempotency-Key never charges twice.
ALTER TABLE idempotency_records
    ADD COLUMN attempts         integer NOT NULL DEFAULT 0,
    -- While in_flight: when the attempt is presumed dead (its instance crashed) and may be taken over.
    ADD COLUMN lease_expires_at timestamptz,
    ADD COLUMN processor_key    text,
    -- The outcome a retry gets back byte for byte: charge_id, error_code, error_message,
    -- parameters, token_id. Never card data.
    ADD COLUMN outcome          jsonb,
    ADD CONSTRAINT idempotency_records_lease_check CHECK (state <> 'in_flight' OR operation <> 'charge' OR lease_expires_at IS NOT NULL);

-- Short bank account numbers show fewer than four trailing digits (never more than half).
ALTER TABLE vault_entries
    DROP CONSTRAINT vault_entries_last4_check,
    ADD CONSTRAINT vault_entries_last4_check CHECK (last4 ~ '^[0-9]{0,4}$');
