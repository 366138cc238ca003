-- Sealing throughput (issue 17, item 4; docs/benchmarks.md, "sealing throughput").
--
-- 1. The sealing queue is filled once per INSERT statement instead of once per event row (issue
-- 17, item 4: a bulk load writes thousands of events per statement). Same queue, same
-- transaction, same rows: every event inserted into audit_events, by anyone and any way, gets
-- its queue row before the inserting transaction commits. A per-row trigger of a SECURITY
-- DEFINER function with a pinned search_path costs a function call and a configuration save and
-- restore per event; a statement trigger with the transition table costs them once per
-- statement and then inserts the queue rows in one INSERT ... SELECT (docs/benchmarks.md,
-- "sealing throughput").
--
-- Runs with its owner's rights (the runtime role may only SELECT the audit tables), its
-- search_path pinned to this schema followed by pg_temp, as the per-row function was
-- (20261212000001_least_privilege_roles.sql).
CREATE FUNCTION audit_events_enqueue_inserted() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    INSERT INTO audit_unsealed (event_id) SELECT id FROM inserted_events;
    RETURN NULL;
END;
$$;

DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION audit_events_enqueue_inserted() SET search_path = %s',
                   format('%I, pg_temp', current_schema()));
END;
$$;

DROP TRIGGER audit_events_enqueue ON audit_events;
CREATE TRIGGER audit_events_enqueue
    AFTER INSERT ON audit_events
    REFERENCING NEW TABLE AS inserted_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_enqueue_inserted();
DROP FUNCTION audit_events_enqueue();

-- 2. Taking events off the queue from a lower bound. `payvault_dequeue_unsealed(max_events)`
-- reads the queue's primary key from its start, and the start is where the entries of the
-- events just taken off lie, deleted but not yet vacuumed: each batch of a long drain (millions
-- queued after a bulk load) first passes every entry the drain deleted before it (an index-only
-- scan visits the heap for each), so a drain slows down as it goes. The sealer passes the
-- highest event id it took in its previous batch; it then starts again from 0 once the bound
-- finds nothing, for events committed late with lower ids (src/audit/seal.rs). Otherwise the
-- same: the caller holds the sealing advisory lock and seals them in the same transaction; the
-- runtime role still cannot DELETE from the queue itself. The one-argument function stays, for
-- an instance of the previous release running during an upgrade.
CREATE FUNCTION payvault_dequeue_unsealed(max_events bigint, after_id bigint) RETURNS SETOF bigint
LANGUAGE sql SECURITY DEFINER AS $$
    DELETE FROM audit_unsealed
    WHERE event_id IN (SELECT event_id FROM audit_unsealed WHERE event_id > after_id
                       ORDER BY event_id LIMIT max_events)
    RETURNING event_id
$$;
REVOKE EXECUTE ON FUNCTION payvault_dequeue_unsealed(bigint, bigint) FROM PUBLIC;

DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION payvault_dequeue_unsealed(bigint, bigint) SET search_path = %s',
                   format('%I, pg_temp', current_schema()));
END;
$$;

-- The runtime role's grants: as 20261225000001 (the union of every earlier definition), plus
-- EXECUTE on the two-argument payvault_dequeue_unsealed. Run `payvault migrate --runtime-role
-- NAME` again after this migration. Not SECURITY DEFINER, as before: the owner runs it.
CREATE OR REPLACE FUNCTION payvault_grant_runtime(runtime_role name) RETURNS void
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
        ELSIF t.relname LIKE 'audit\_%'
              OR t.relname IN ('_sqlx_migrations', 'master_key_wraps', 'key_share_sets') THEN
            EXECUTE format('REVOKE ALL ON TABLE %I.%I FROM %I', schema_name, t.relname, runtime_role);
            EXECUTE format('GRANT SELECT ON TABLE %I.%I TO %I', schema_name, t.relname, runtime_role);
        ELSIF t.relname = 'tenants' THEN
            -- A tenant is disabled, never deleted: its id stays in entries and audit events.
            EXECUTE format('REVOKE ALL ON TABLE %I.%I FROM %I', schema_name, t.relname, runtime_role);
            EXECUTE format('GRANT SELECT, INSERT, UPDATE ON TABLE %I.%I TO %I',
                           schema_name, t.relname, runtime_role);
        ELSIF t.relname = 'import_sources' THEN
            EXECUTE format('REVOKE ALL ON TABLE %I.%I FROM %I', schema_name, t.relname, runtime_role);
            EXECUTE format('GRANT SELECT, INSERT ON TABLE %I.%I TO %I', schema_name, t.relname, runtime_role);
        ELSE
            EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE %I.%I TO %I',
                           schema_name, t.relname, runtime_role);
        END IF;
    END LOOP;
    EXECUTE format('GRANT EXECUTE ON FUNCTION %I.payvault_insert_audit_events(jsonb), '
                   '%I.payvault_dequeue_unsealed(bigint), '
                   '%I.payvault_insert_seals(bigint[], bigint[], integer, bytea[]), '
                   '%I.payvault_prune_audit(bigint, bytea, integer, bytea), '
                   '%I.payvault_insert_audit_voids(uuid, bigint[], bigint[], integer, bytea[]), '
                   '%I.payvault_record_audit_anomalies(bigint[], text[]), '
                   '%I.payvault_dequeue_unsealed(bigint, bigint) TO %I',
                   schema_name, schema_name, schema_name, schema_name, schema_name, schema_name,
                   schema_name, runtime_role);
END;
$$;

REVOKE EXECUTE ON FUNCTION payvault_grant_runtime(name) FROM PUBLIC;
