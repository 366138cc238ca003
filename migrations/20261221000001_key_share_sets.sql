-- Split custodians (`payvault keys split`, `payvault unseal`): what the database records of a
-- Shamir split of the root secret that wraps the master keys. Nothing here is secret: the
-- shares themselves never reach the database.
--   root_check:      HMAC-SHA256(root, "payvault root check v1\0" || set_id): proves a rebuilt
--                    root right;
--   share_verifiers: element i-1 is SHA-256("payvault share verifier v1\0" || set_id || 0x00 ||
--                    i || share_i), a commitment that lets a wrong share be refused when it is
--                    submitted (a share has 256 bits of entropy: the commitment reveals nothing).
CREATE TABLE key_share_sets (
    set_id          text        PRIMARY KEY CHECK (set_id ~ '^[0-9a-f]{1,32}$'),
    threshold       integer     NOT NULL CHECK (threshold >= 2),
    shares          integer     NOT NULL CHECK (shares >= threshold AND shares <= 255),
    root_check      bytea       NOT NULL CHECK (length(root_check) = 32),
    share_verifiers bytea[]     NOT NULL CHECK (cardinality(share_verifiers) = shares),
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- The runtime role reads share sets (an instance configured for shares starts sealed and checks
-- submissions against them) but never writes one: `keys split` runs as the schema owner. The
-- function is restated from 20261220000001 with key_share_sets also granted SELECT only.
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
        ELSIF t.relname LIKE 'audit\_%' OR t.relname IN ('_sqlx_migrations', 'master_key_wraps', 'key_share_sets') THEN
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

REVOKE EXECUTE ON FUNCTION payvault_grant_runtime(name) FROM PUBLIC;
