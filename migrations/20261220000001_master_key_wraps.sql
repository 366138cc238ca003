-- Master keys held wrapped by a key provider (PAYVAULT_KEY_PROVIDER = pkcs11 | transit, and
-- later ones): one row per master key version, the 32-byte key encrypted under a root key that
-- never leaves its device (an HSM's AES key, a transit key). Each wrap binds its version (AES-GCM
-- associated data, or inside the transit plaintext), so a row copied onto another version does
-- not unwrap. `serve` unwraps every row once at start; the clear keys never enter the database.
CREATE TABLE master_key_wraps (
    version integer PRIMARY KEY CHECK (version >= 1),
    provider text NOT NULL,
    wrapped bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- The runtime role reads the wraps and nothing more: `payvault keys wrap` runs as the owner.
-- payvault_grant_runtime is restated with master_key_wraps among the SELECT-only tables (its
-- privileges are kept by CREATE OR REPLACE: EXECUTE stays revoked from PUBLIC).
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
        ELSIF t.relname LIKE 'audit\_%' OR t.relname IN ('_sqlx_migrations', 'master_key_wraps') THEN
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
