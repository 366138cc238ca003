-- Bulk import (`payvault import`): which token each imported record of a source system became.
-- Written in the same statement as the vault entries of each batch, so an import interrupted
-- at any point resumes without duplicates: a rerun finds the source ids already here and reports
-- their tokens instead of vaulting them again. Holds no card data: `source_id` is the source
-- system's own id (import refuses one that holds a card number), `token` is ours.
CREATE TABLE import_sources (
    -- The operator's name for the import source (`--source`), e.g. `stripe-acct_1AbC`.
    source      text        NOT NULL,
    source_id   text        NOT NULL,
    token       text        NOT NULL,
    imported_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT import_sources_pkey PRIMARY KEY (source, source_id),
    CONSTRAINT import_sources_token_fkey FOREIGN KEY (token) REFERENCES vault_entries (token),
    CONSTRAINT import_sources_source_check CHECK (length(source) BETWEEN 1 AND 100),
    CONSTRAINT import_sources_source_id_check CHECK (length(source_id) BETWEEN 1 AND 255)
);

-- The runtime role may record and read imports, never rewrite or forget one (a deleted row
-- would let a rerun vault the record a second time): SELECT and INSERT only on import_sources.
--
-- payvault_grant_runtime is restated as the union of every earlier definition, since each
-- unlanded branch replaced it with its own change only:
-- - 20261212000001 (least privilege): DML on the vault tables, SELECT only on audit_* and
--   _sqlx_migrations, EXECUTE on the audit write functions;
-- - 20261215000001 (audit MAC): also EXECUTE on payvault_insert_audit_voids and
--   payvault_record_audit_anomalies (20261220000001 left them out: restored here);
-- - 20261220000001 (custody): master_key_wraps SELECT only;
-- - 20261221000001 (key shares): key_share_sets SELECT only;
-- - tenants (20261218000001, landing as 20261224000001): tenants SELECT, INSERT, UPDATE, never
--   DELETE;
-- - this one: import_sources SELECT, INSERT.
-- The loop visits only the tables that exist (pg_class), so the key_share_sets and tenants rules
-- apply when their migrations have run and are inert otherwise: this works with or without them.
-- Not SECURITY DEFINER, as before: the owner runs it (`payvault migrate --runtime-role NAME`).
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
                   '%I.payvault_record_audit_anomalies(bigint[], text[]) TO %I',
                   schema_name, schema_name, schema_name, schema_name, schema_name, schema_name,
                   runtime_role);
END;
$$;

REVOKE EXECUTE ON FUNCTION payvault_grant_runtime(name) FROM PUBLIC;
