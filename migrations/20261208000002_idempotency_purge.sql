-- Idempotency answers are kept only as long as a retry can come (PAYVAULT_IDEMPOTENCY_RETENTION_HOURS,
-- 24 by default; Twilio retries within about a minute). After that a finished record keeps its
-- key, request MAC and state, so a late retry is still recognised as a duplicate and never
-- charged twice, but loses its answer: the charge outcome (processor text, parameters) and the
-- token. purged_at says when.
ALTER TABLE idempotency_records ADD COLUMN purged_at timestamptz;

-- The purge's work list: finished records whose answer is still kept.
CREATE INDEX idempotency_records_purge_idx ON idempotency_records (updated_at)
    WHERE purged_at IS NULL AND state IN ('succeeded', 'failed');
