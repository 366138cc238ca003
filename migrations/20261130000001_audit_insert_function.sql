-- The one way audit events are written. Every operation passes its events to this function, in
-- the statement or transaction of the change they record, so an operation whose event cannot be
-- written does not happen. `events` is a JSON array of rows built by one Rust function
-- (store::audit::AuditBatch, from audit::AuditEvent); a column added to audit_events later (a
-- per-event MAC, the writer's identity) is added there and here, and nowhere else.
--
-- Returns how many events were inserted. PL/pgSQL rather than SQL: its INSERT is planned once
-- per connection, not once per call.
CREATE FUNCTION payvault_insert_audit_events(events jsonb) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    inserted integer;
BEGIN
    INSERT INTO audit_events
        (request_id, actor_id, actor_kind, action, outcome, error_code, client_addr,
         forwarded_for, token, transaction_id, masked_data, amount_minor, currency, details)
    SELECT e.request_id, e.actor_id, e.actor_kind, e.action, e.outcome, e.error_code,
           e.client_addr, e.forwarded_for, e.token, e.transaction_id, e.masked_data,
           e.amount_minor, e.currency, coalesce(e.details, '{}'::jsonb)
    FROM jsonb_to_recordset(events) AS e(
        request_id text, actor_id uuid, actor_kind text, action text, outcome text,
        error_code text, client_addr text, forwarded_for text, token text,
        transaction_id text, masked_data text, amount_minor bigint, currency text,
        details jsonb);
    GET DIAGNOSTICS inserted = ROW_COUNT;
    RETURN inserted;
END;
$$;
