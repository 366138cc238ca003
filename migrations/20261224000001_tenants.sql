-- Tenants: every credential belongs to exactly one tenant, and every vault entry, idempotency
-- record (tokenize and charge) and audit event records the tenant it belongs to. A deployment
-- with one merchant has only the default tenant, whose id is fixed (documented in the README and
-- in src/domain/tenant.rs) and which this migration creates.
--
-- Online: the new columns are added with a constant DEFAULT (the default tenant), which
-- PostgreSQL 11+ records in the catalogue without rewriting the table, so existing rows belong to
-- the default tenant at once. The DEFAULT is then dropped on every table but audit_events (the
-- missing value stays in the catalogue for old rows), so new rows must name their tenant: a code
-- path that forgot it fails instead of quietly writing into the default tenant. No index is
-- built on the large tables (that would block writes for its duration): lookups are by token or
-- by credential, which already determine the tenant, and the tenant is an extra condition.
CREATE TABLE tenants (
    id                  uuid        NOT NULL,
    name                text        NOT NULL,
    status              text        NOT NULL DEFAULT 'active',
    -- A processor of the tenant's own (`payvault tenants set-processor`): `none`, `sandbox` or a
    -- built-in profile name, and the prefix of the environment variables holding its settings
    -- and secrets (never the settings themselves). NULL: the deployment's processor.
    processor           text,
    processor_env       text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    disabled_at         timestamptz,
    CONSTRAINT tenants_pkey PRIMARY KEY (id),
    CONSTRAINT tenants_name_key UNIQUE (name),
    CONSTRAINT tenants_name_check CHECK (name ~ '^[A-Za-z0-9._-]{1,64}$'),
    CONSTRAINT tenants_status_check CHECK (status IN ('active', 'disabled')),
    CONSTRAINT tenants_disabled_check CHECK ((status = 'disabled') = (disabled_at IS NOT NULL)),
    CONSTRAINT tenants_processor_check CHECK (
        (processor IS NULL AND processor_env IS NULL)
        OR (processor ~ '^[a-z0-9_-]{1,64}$' AND processor_env ~ '^PAYVAULT_TENANT_[A-Z0-9_]{1,64}$'))
);

INSERT INTO tenants (id, name) VALUES ('00000000-0000-0000-0000-000000000001', 'default');

ALTER TABLE credentials
    ADD COLUMN tenant_id uuid NOT NULL DEFAULT '00000000-0000-0000-0000-000000000001',
    ADD CONSTRAINT credentials_tenant_fkey FOREIGN KEY (tenant_id) REFERENCES tenants (id);
ALTER TABLE credentials ALTER COLUMN tenant_id DROP DEFAULT;

-- The AAD format v3 binds the tenant (src/crypto/mod.rs). The replaced constraint allowed 1 and
-- 2 only, so existing rows satisfy this one: NOT VALID skips a scan of the table.
ALTER TABLE vault_entries
    ADD COLUMN tenant_id uuid NOT NULL DEFAULT '00000000-0000-0000-0000-000000000001',
    DROP CONSTRAINT vault_entries_aad_version_check,
    ADD CONSTRAINT vault_entries_aad_version_check CHECK (aad_version IN (1, 2, 3)) NOT VALID;
ALTER TABLE vault_entries ALTER COLUMN tenant_id DROP DEFAULT;

ALTER TABLE idempotency_records
    ADD COLUMN tenant_id uuid NOT NULL DEFAULT '00000000-0000-0000-0000-000000000001';
ALTER TABLE idempotency_records ALTER COLUMN tenant_id DROP DEFAULT;

-- Events with no tenant of their own (service start and stop, failed logins, operator actions
-- not about one tenant) belong to the default tenant, the deployment operator's, as before.
ALTER TABLE audit_events
    ADD COLUMN tenant_id uuid NOT NULL DEFAULT '00000000-0000-0000-0000-000000000001';

-- The one way audit events are written (as 20261215000001 defines it: occurred_at, the writer's
-- identity and counter, and the MAC, all set by payvault), now with the tenant. payvault always
-- sends tenant_id (the default tenant's for an event of no tenant of its own) and the event MAC
-- covers it (src/store/audit_mac.rs), so there is no fallback here: an event without one fails
-- the NOT NULL constraint rather than being stored under a value its MAC did not cover.
-- Replaced, so it restates SECURITY DEFINER; search_path is pinned again below.
CREATE OR REPLACE FUNCTION payvault_insert_audit_events(events jsonb) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    inserted integer;
BEGIN
    INSERT INTO audit_events
        (occurred_at, request_id, actor_id, actor_kind, action, outcome, error_code, client_addr,
         forwarded_for, token, transaction_id, masked_data, amount_minor, currency, details,
         writer_id, writer_seq, mac_key_version, mac, tenant_id)
    SELECT e.occurred_at, e.request_id, e.actor_id, e.actor_kind, e.action, e.outcome,
           e.error_code, e.client_addr, e.forwarded_for, e.token, e.transaction_id,
           e.masked_data, e.amount_minor, e.currency, coalesce(e.details, '{}'::jsonb),
           e.writer_id, e.writer_seq, e.mac_key_version, decode(e.mac, 'hex'), e.tenant_id
    FROM jsonb_to_recordset(events) AS e(
        occurred_at timestamptz, request_id text, actor_id uuid, actor_kind text, action text,
        outcome text, error_code text, client_addr text, forwarded_for text, token text,
        transaction_id text, masked_data text, amount_minor bigint, currency text,
        details jsonb, writer_id uuid, writer_seq bigint, mac_key_version integer, mac text,
        tenant_id uuid);
    GET DIAGNOSTICS inserted = ROW_COUNT;
    RETURN inserted;
END;
$$;

DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION payvault_insert_audit_events(jsonb) SET search_path = %s',
                   format('%I, pg_temp', current_schema()));
END;
$$;

-- The runtime role's grants: the union of every earlier version (20261212000001, 20261215000001:
-- EXECUTE on the audit void and anomaly functions; 20261220000001: master_key_wraps SELECT-only;
-- 20261221000001: key_share_sets SELECT-only, a no-op where that table does not exist), plus
-- `tenants`: SELECT, INSERT and UPDATE (the CLI creates and disables tenants), never DELETE. Not
-- SECURITY DEFINER, as before: the owner runs it.
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
        ELSIF t.relname = 'tenants' THEN
            -- A tenant is disabled, never deleted: its id stays in entries and audit events.
            EXECUTE format('REVOKE ALL ON TABLE %I.%I FROM %I', schema_name, t.relname, runtime_role);
            EXECUTE format('GRANT SELECT, INSERT, UPDATE ON TABLE %I.%I TO %I',
                           schema_name, t.relname, runtime_role);
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
