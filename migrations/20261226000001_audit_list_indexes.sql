-- Indexes for `audit list` / `GET /v1/audit/events` at scale (issue 17, item 4). The list is in
-- id order with an id cursor (src/store/audit.rs list_audit_events), so each index has id after
-- the filtered column:
-- - by token or transaction id: the matching events are read already in cursor order, from
--   right after the cursor, and the read stops after one page whatever the table's size.
--   Partial: operator and read events carry neither, and cost nothing here;
-- - by time range: the ids of the events in the range are read from this index alone (with
--   tenant_id, the filter of every API read without audit:all) and sorted, so the cost is the
--   size of the range, not of the table. It replaces the index on occurred_at alone, which
--   retention (prune) and the sealing checks used: this one serves them as well.
-- docs/benchmarks.md, "at scale (issue 17, item 4)", has the plans and their timings.
--
-- Plain CREATE INDEX (sqlx runs a migration in a transaction, where CONCURRENTLY is refused): on
-- a large existing audit log it blocks event inserts while it builds, so apply it in a
-- maintenance window, or create the indexes CONCURRENTLY by hand first under these names (IF NOT
-- EXISTS then skips them).
CREATE INDEX IF NOT EXISTS audit_events_token_idx
    ON audit_events (token, id) WHERE token IS NOT NULL;
CREATE INDEX IF NOT EXISTS audit_events_transaction_idx
    ON audit_events (transaction_id, id) WHERE transaction_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS audit_events_occurred_at_id_idx
    ON audit_events (occurred_at, id) INCLUDE (tenant_id);
DROP INDEX IF EXISTS audit_events_occurred_at_idx;
