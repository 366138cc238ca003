-- Tamper-evident audit log (PCI DSS 10.3.2-10.3.4).
--
-- Events are sealed after the fact, in batches, by whichever payvault instance holds the sealing
-- advisory lock, into a hash chain keyed with a key derived from the master key (which never
-- enters the database): seal n = HMAC(key, n || seal n-1 || event). Request handling never waits
-- for sealing. See src/audit/seal.rs.

-- Where a request came from through a trusted proxy (X-Forwarded-For), when one is configured.
ALTER TABLE audit_events ADD COLUMN forwarded_for text;

-- Events waiting to be sealed, queued by trigger in the inserting transaction.
CREATE TABLE audit_unsealed (
    event_id bigint NOT NULL,
    CONSTRAINT audit_unsealed_pkey PRIMARY KEY (event_id)
);

CREATE FUNCTION audit_events_enqueue() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO audit_unsealed (event_id) VALUES (NEW.id);
    RETURN NULL;
END;
$$;

CREATE TRIGGER audit_events_enqueue
    AFTER INSERT ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_enqueue();

-- The chain: one row per sealed event, seq contiguous from 1 (or from a prune anchor).
CREATE TABLE audit_seals (
    seq         bigint      NOT NULL,
    event_id    bigint      NOT NULL,
    key_version integer     NOT NULL,
    mac         bytea       NOT NULL,
    sealed_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT audit_seals_pkey PRIMARY KEY (seq),
    CONSTRAINT audit_seals_event_key UNIQUE (event_id)
);

-- Where the chain starts after retention pruning: the seal at `seq` (now deleted) had `mac`.
-- `signature` is an HMAC under the seal key, so an anchor cannot be forged to hide deletions.
CREATE TABLE audit_anchors (
    seq         bigint      NOT NULL,
    mac         bytea       NOT NULL,
    key_version integer     NOT NULL,
    signature   bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT audit_anchors_pkey PRIMARY KEY (seq)
);

-- Append-only, except for an explicit, audited retention prune (`payvault audit prune`), which
-- sets payvault.audit_prune for its own transaction. Someone who sets it without the seal key
-- cannot write a valid anchor, so `payvault audit verify` still reports the deletion.
CREATE OR REPLACE FUNCTION audit_events_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('payvault.audit_prune', true) = 'on' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER audit_seals_append_only
    BEFORE UPDATE OR DELETE ON audit_seals
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
CREATE TRIGGER audit_seals_no_truncate
    BEFORE TRUNCATE ON audit_seals
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();
CREATE TRIGGER audit_anchors_append_only
    BEFORE UPDATE OR DELETE ON audit_anchors
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();

-- Privileges: no role but the owner may change history. Run payvault as a role that does not
-- own these tables to make this bite (see README, "Audit log").
REVOKE UPDATE, DELETE, TRUNCATE ON audit_events, audit_seals, audit_anchors FROM PUBLIC;
