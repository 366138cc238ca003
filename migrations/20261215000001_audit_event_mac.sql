-- Audit events authenticated at the source, and sealing that cannot stop unnoticed (issue 14,
-- items 1 and 2). See src/store/audit_mac.rs and src/audit/seal.rs.
--
-- Each event now carries who wrote it (`writer_id`, one per process start or CLI invocation;
-- `writer_seq`, that writer's counter from 1) and a MAC computed by payvault over every column
-- but the database-assigned id, under a key derived from master key `mac_key_version`, in the
-- INSERT itself. `occurred_at` is set by payvault, so the MAC covers it. Rows inserted before this
-- migration (ids below `audit_mac_epoch.first_id`) have no MAC: the seal chain alone covers them.
ALTER TABLE audit_events
    ADD COLUMN writer_id uuid,
    ADD COLUMN writer_seq bigint,
    ADD COLUMN mac_key_version integer,
    ADD COLUMN mac bytea,
    -- A copy of a real event under a new id is a duplicate of (writer_id, writer_seq).
    ADD CONSTRAINT audit_events_writer_key UNIQUE (writer_id, writer_seq);

CREATE TABLE audit_mac_epoch (
    first_id bigint NOT NULL
);
INSERT INTO audit_mac_epoch (first_id) SELECT coalesce(max(id), 0) + 1 FROM audit_events;

-- Writer counter values that were allocated but never written (the statement recording them did
-- not run, or failed), each range MAC'd by its writer, so `verify` does not take them for
-- events deleted before sealing.
CREATE TABLE audit_voids (
    writer_id   uuid        NOT NULL,
    first_seq   bigint      NOT NULL,
    last_seq    bigint      NOT NULL,
    key_version integer     NOT NULL,
    mac         bytea       NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT audit_voids_pkey PRIMARY KEY (writer_id, first_seq)
);

-- What the sealer set aside instead of chaining: a queued event whose MAC does not verify, a
-- queue row naming a missing or already-sealed event. `verify` reports every row.
CREATE TABLE audit_anomalies (
    id        bigint      GENERATED ALWAYS AS IDENTITY,
    event_id  bigint      NOT NULL,
    kind      text        NOT NULL,
    found_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT audit_anomalies_pkey PRIMARY KEY (id)
);

CREATE TRIGGER audit_voids_append_only
    BEFORE UPDATE OR DELETE ON audit_voids
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
CREATE TRIGGER audit_voids_no_truncate
    BEFORE TRUNCATE ON audit_voids
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();
CREATE TRIGGER audit_anomalies_append_only
    BEFORE UPDATE OR DELETE ON audit_anomalies
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
CREATE TRIGGER audit_anomalies_no_truncate
    BEFORE TRUNCATE ON audit_anomalies
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();
REVOKE UPDATE, DELETE, TRUNCATE ON audit_voids, audit_anomalies, audit_mac_epoch FROM PUBLIC;

-- The one way audit events are written, now with the writer's identity and MAC (hex in the
-- JSON). Replaced, so it restates SECURITY DEFINER; search_path is pinned again below.
CREATE OR REPLACE FUNCTION payvault_insert_audit_events(events jsonb) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    inserted integer;
BEGIN
    INSERT INTO audit_events
        (occurred_at, request_id, actor_id, actor_kind, action, outcome, error_code, client_addr,
         forwarded_for, token, transaction_id, masked_data, amount_minor, currency, details,
         writer_id, writer_seq, mac_key_version, mac)
    SELECT e.occurred_at, e.request_id, e.actor_id, e.actor_kind, e.action, e.outcome,
           e.error_code, e.client_addr, e.forwarded_for, e.token, e.transaction_id,
           e.masked_data, e.amount_minor, e.currency, coalesce(e.details, '{}'::jsonb),
           e.writer_id, e.writer_seq, e.mac_key_version, decode(e.mac, 'hex')
    FROM jsonb_to_recordset(events) AS e(
        occurred_at timestamptz, request_id text, actor_id uuid, actor_kind text, action text,
        outcome text, error_code text, client_addr text, forwarded_for text, token text,
        transaction_id text, masked_data text, amount_minor bigint, currency text,
        details jsonb, writer_id uuid, writer_seq bigint, mac_key_version integer, mac text);
    GET DIAGNOSTICS inserted = ROW_COUNT;
    RETURN inserted;
END;
$$;

-- Records voided writer counter ranges (see audit_voids).
CREATE FUNCTION payvault_insert_audit_voids(
    writer uuid, firsts bigint[], lasts bigint[], void_key_version integer, macs bytea[]
) RETURNS void
LANGUAGE sql SECURITY DEFINER AS $$
    INSERT INTO audit_voids (writer_id, first_seq, last_seq, key_version, mac)
    SELECT writer, t.first_seq, t.last_seq, void_key_version, t.mac
    FROM unnest(firsts, lasts, macs) AS t(first_seq, last_seq, mac)
    ON CONFLICT ON CONSTRAINT audit_voids_pkey DO NOTHING
$$;

-- Records what the sealer set aside (see audit_anomalies).
CREATE FUNCTION payvault_record_audit_anomalies(event_ids bigint[], kinds text[]) RETURNS void
LANGUAGE sql SECURITY DEFINER AS $$
    INSERT INTO audit_anomalies (event_id, kind)
    SELECT t.event_id, t.kind FROM unnest(event_ids, kinds) AS t(event_id, kind)
$$;

-- The runtime role's rights, as in 20261212000001_least_privilege_roles.sql, plus EXECUTE on
-- the two functions above (the new audit_* tables are SELECT-only by the name rule).
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
                   '%I.payvault_prune_audit(bigint, bytea, integer, bytea), '
                   '%I.payvault_insert_audit_voids(uuid, bigint[], bigint[], integer, bytea[]), '
                   '%I.payvault_record_audit_anomalies(bigint[], text[]) TO %I',
                   schema_name, schema_name, schema_name, schema_name, schema_name, schema_name,
                   runtime_role);
END;
$$;

REVOKE EXECUTE ON FUNCTION payvault_insert_audit_voids(uuid, bigint[], bigint[], integer, bytea[]) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION payvault_record_audit_anomalies(bigint[], text[]) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION payvault_grant_runtime(name) FROM PUBLIC;

DO $$
DECLARE
    path text := format('%I, pg_temp', current_schema());
BEGIN
    EXECUTE format('ALTER FUNCTION payvault_insert_audit_events(jsonb) SET search_path = %s', path);
    EXECUTE format('ALTER FUNCTION payvault_insert_audit_voids(uuid, bigint[], bigint[], integer, bytea[]) SET search_path = %s', path);
    EXECUTE format('ALTER FUNCTION payvault_record_audit_anomalies(bigint[], text[]) SET search_path = %s', path);
END;
$$;
