-- Least-privilege database roles (PCI DSS 7.2, 10.3.2): the role that runs migrations owns every
-- table; the role `payvault serve --no-migrate` connects as (the runtime role) owns nothing. An
-- owner can ALTER TABLE ... DISABLE TRIGGER and is not bound by REVOKE, so the append-only
-- triggers on the audit tables protect the log only against a role that does not own them.
--
-- The runtime role may only SELECT the audit tables. Everything it writes there goes through the
-- SECURITY DEFINER functions below, owned by the migration role, each doing one narrow thing:
-- insert events, take queued events off the sealing queue, append seals, prune a sealed prefix
-- behind an anchor. None can UPDATE an event or seal, or delete an unsealed event.
-- `payvault_grant_runtime(role)` (run by `payvault migrate --runtime-role NAME`) grants exactly
-- that, plus the DML the vault tables need.
--
-- SECURITY DEFINER functions run with their owner's rights, so each pins its search_path to this
-- schema followed by pg_temp (never first, or a caller's temporary table could stand in for one
-- of ours). The schema is the one being migrated, set below with ALTER FUNCTION.

-- Writing events: the existing function, now run with its owner's rights (its body is unchanged,
-- so a later migration that replaces the body keeps the grants; it must restate
-- SECURITY DEFINER). The queue trigger runs as the inserting role too.
ALTER FUNCTION payvault_insert_audit_events(jsonb) SECURITY DEFINER;
ALTER FUNCTION audit_events_enqueue() SECURITY DEFINER;

-- Sealing, step 1: takes up to `max_events` queued event ids off the queue (the caller holds the
-- sealing advisory lock and seals them in the same transaction).
CREATE FUNCTION payvault_dequeue_unsealed(max_events bigint) RETURNS SETOF bigint
LANGUAGE sql SECURITY DEFINER AS $$
    DELETE FROM audit_unsealed
    WHERE event_id IN (SELECT event_id FROM audit_unsealed ORDER BY event_id LIMIT max_events)
    RETURNING event_id
$$;

-- Sealing, step 2: appends seals (audit_seals refuses UPDATE and DELETE by trigger).
CREATE FUNCTION payvault_insert_seals(
    seqs bigint[], event_ids bigint[], seal_key_version integer, macs bytea[]
) RETURNS void
LANGUAGE sql SECURITY DEFINER AS $$
    INSERT INTO audit_seals (seq, event_id, key_version, mac)
    SELECT t.seq, t.event_id, seal_key_version, t.mac
    FROM unnest(seqs, event_ids, macs) AS t(seq, event_id, mac)
$$;

-- Retention prune: records the anchor (the seal at `anchor_seq`, signed with the seal key, which
-- the database never sees) and deletes that seal, every earlier one and their events. The
-- append-only triggers let the deletes through only inside this function's transaction.
-- Returns how many events were deleted.
CREATE FUNCTION payvault_prune_audit(
    anchor_seq bigint, anchor_mac bytea, anchor_key_version integer, anchor_signature bytea
) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    deleted bigint;
BEGIN
    INSERT INTO audit_anchors (seq, mac, key_version, signature)
    VALUES (anchor_seq, anchor_mac, anchor_key_version, anchor_signature);
    PERFORM set_config('payvault.audit_prune', 'on', true);
    DELETE FROM audit_events WHERE id IN (SELECT event_id FROM audit_seals WHERE seq <= anchor_seq);
    GET DIAGNOSTICS deleted = ROW_COUNT;
    DELETE FROM audit_seals WHERE seq <= anchor_seq;
    PERFORM set_config('payvault.audit_prune', 'off', true);
    RETURN deleted;
END;
$$;

-- Grants the runtime role what `serve` and the CLI need, and nothing that changes audit history:
-- - USAGE on this schema (not CREATE);
-- - SELECT, INSERT, UPDATE, DELETE on every other table of this schema, and its sequences;
-- - SELECT only on every audit_* table, and on the migration history (the CLI checks it);
-- - EXECUTE on the SECURITY DEFINER functions above.
-- Refuses a superuser or a role that is (or is a member of) the owner of the audit tables:
-- REVOKE does not bind them. Idempotent; run again after migrations that add tables.
CREATE FUNCTION payvault_grant_runtime(runtime_role name) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    schema_name name := current_schema();
    audit_owner oid := (SELECT relowner FROM pg_class WHERE oid = 'audit_events'::regclass);
    t record;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = runtime_role) THEN
        RAISE EXCEPTION 'role % does not exist', runtime_role;
    END IF;
    IF (SELECT rolsuper FROM pg_roles WHERE rolname = runtime_role) THEN
        RAISE EXCEPTION 'the runtime role % is a superuser: it must be an ordinary role', runtime_role;
    END IF;
    IF pg_has_role(runtime_role, audit_owner, 'MEMBER') THEN
        RAISE EXCEPTION 'the runtime role % owns the payvault tables (or is a member of their owner %): it must be a separate role',
            runtime_role, pg_get_userbyid(audit_owner);
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', schema_name, runtime_role);
    FOR t IN
        SELECT c.relname, c.relkind FROM pg_class c
        WHERE c.relnamespace = schema_name::regnamespace AND c.relkind IN ('r', 'p', 'S')
    LOOP
        IF t.relkind = 'S' THEN
            EXECUTE format('GRANT USAGE, SELECT ON SEQUENCE %I.%I TO %I', schema_name, t.relname, runtime_role);
        ELSIF t.relname LIKE 'audit\_%' OR t.relname = '_sqlx_migrations' THEN
            EXECUTE format('REVOKE ALL ON TABLE %I.%I FROM %I', schema_name, t.relname, runtime_role);
            EXECUTE format('GRANT SELECT ON TABLE %I.%I TO %I', schema_name, t.relname, runtime_role);
        ELSE
            EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE %I.%I TO %I',
                           schema_name, t.relname, runtime_role);
        END IF;
    END LOOP;
    EXECUTE format('GRANT EXECUTE ON FUNCTION %I.payvault_insert_audit_events(jsonb), '
                   '%I.payvault_dequeue_unsealed(bigint), '
                   '%I.payvault_insert_seals(bigint[], bigint[], integer, bytea[]), '
                   '%I.payvault_prune_audit(bigint, bytea, integer, bytea) TO %I',
                   schema_name, schema_name, schema_name, schema_name, runtime_role);
END;
$$;

-- Only the roles granted above may call the SECURITY DEFINER functions (PUBLIC may by default),
-- and only the owner may grant.
REVOKE EXECUTE ON FUNCTION payvault_insert_audit_events(jsonb) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION payvault_dequeue_unsealed(bigint) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION payvault_insert_seals(bigint[], bigint[], integer, bytea[]) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION payvault_prune_audit(bigint, bytea, integer, bytea) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION payvault_grant_runtime(name) FROM PUBLIC;

DO $$
DECLARE
    path text := format('%I, pg_temp', current_schema());
BEGIN
    EXECUTE format('ALTER FUNCTION payvault_insert_audit_events(jsonb) SET search_path = %s', path);
    EXECUTE format('ALTER FUNCTION audit_events_enqueue() SET search_path = %s', path);
    EXECUTE format('ALTER FUNCTION payvault_dequeue_unsealed(bigint) SET search_path = %s', path);
    EXECUTE format('ALTER FUNCTION payvault_insert_seals(bigint[], bigint[], integer, bytea[]) SET search_path = %s', path);
    EXECUTE format('ALTER FUNCTION payvault_prune_audit(bigint, bytea, integer, bytea) SET search_path = %s', path);
END;
$$;
