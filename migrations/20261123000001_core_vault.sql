-- Core vault schema. Constraint names are explicit so the application can map
-- violations to specific errors (see src/store/).
--
-- Nothing in this schema holds a PAN, CVV or full bank account number in clear:
-- sensitive data lives only in vault_entries.ciphertext (AES-256-GCM under a
-- per-entry data key, itself wrapped by a master key that never enters the
-- database). CVV has no column at all (PCI DSS 3.3.1).

-- Callers of payvault: Twilio connectors (HTTP Basic) and, later, merchant API keys.
CREATE TABLE credentials (
    id          uuid        NOT NULL,
    username    text        NOT NULL,
    name        text        NOT NULL,
    kind        text        NOT NULL,
    scopes      text[]      NOT NULL,
    -- Argon2id PHC string; the secret itself is shown once at creation and never stored.
    secret_hash text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz,
    CONSTRAINT credentials_pkey PRIMARY KEY (id),
    CONSTRAINT credentials_username_key UNIQUE (username),
    CONSTRAINT credentials_kind_check CHECK (kind IN ('connector', 'api')),
    CONSTRAINT credentials_name_check CHECK (length(name) BETWEEN 1 AND 64)
);

-- Only one active credential may carry a given name; revoked names can be reused.
CREATE UNIQUE INDEX credentials_active_name_key ON credentials (name) WHERE revoked_at IS NULL;

-- One row per vaulted card or bank account.
CREATE TABLE vault_entries (
    token         text        NOT NULL,
    created_by    uuid        NOT NULL,
    kind          text        NOT NULL,
    -- Master key version that wrapped data_key; bound into both ciphertexts' associated data.
    key_version   integer     NOT NULL,
    -- nonce || AES-256-GCM(master KEK, data key) || tag
    wrapped_key   bytea       NOT NULL,
    -- nonce || AES-256-GCM(data key, sensitive payload) || tag
    ciphertext    bytea       NOT NULL,
    -- HMAC-SHA256 under a key derived from the master key (PCI DSS 3.5.1.1: keyed, never a plain hash).
    fingerprint   bytea       NOT NULL,
    -- Display metadata PCI DSS 3.4.1 allows in clear.
    brand         text,
    bin           text,
    last4         text        NOT NULL,
    exp_month     smallint,
    exp_year      smallint,
    created_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT vault_entries_pkey PRIMARY KEY (token),
    CONSTRAINT vault_entries_created_by_fkey FOREIGN KEY (created_by) REFERENCES credentials (id),
    CONSTRAINT vault_entries_kind_check CHECK (kind IN ('card', 'bank_account')),
    CONSTRAINT vault_entries_card_fields_check CHECK (
        (kind = 'card' AND brand IS NOT NULL AND exp_month BETWEEN 1 AND 12 AND exp_year IS NOT NULL)
        OR (kind = 'bank_account' AND brand IS NULL AND bin IS NULL AND exp_month IS NULL AND exp_year IS NULL)
    ),
    CONSTRAINT vault_entries_last4_check CHECK (last4 ~ '^[0-9]{4}$'),
    CONSTRAINT vault_entries_bin_check CHECK (bin IS NULL OR bin ~ '^[0-9]{1,6}$')
);

CREATE INDEX vault_entries_fingerprint_idx ON vault_entries (fingerprint);

-- Exactly-once bookkeeping for Twilio's transaction_id (and later merchant Idempotency-Keys).
-- The primary key makes concurrent duplicates collide inside Postgres, so it holds across
-- any number of payvault instances.
CREATE TABLE idempotency_records (
    credential_id   uuid        NOT NULL,
    idempotency_key text        NOT NULL,
    operation       text        NOT NULL,
    -- HMAC-SHA256 of the normalised request (CVV excluded) under a key derived from the
    -- master key version in mac_key_version: detects "same key, different payload".
    request_mac     bytea       NOT NULL,
    mac_key_version integer     NOT NULL,
    state           text        NOT NULL,
    token           text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT idempotency_records_pkey PRIMARY KEY (credential_id, idempotency_key),
    CONSTRAINT idempotency_records_credential_fkey FOREIGN KEY (credential_id) REFERENCES credentials (id),
    CONSTRAINT idempotency_records_operation_check CHECK (operation IN ('tokenize', 'charge')),
    CONSTRAINT idempotency_records_state_check CHECK (state IN ('in_flight', 'succeeded', 'failed', 'unknown'))
);

-- Append-only audit trail (PCI DSS 10.2). Never holds a PAN, CVV, full account number or secret:
-- card data appears only masked (first 6 / last 4 at most).
CREATE TABLE audit_events (
    id             bigint      GENERATED ALWAYS AS IDENTITY,
    occurred_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    request_id     text,
    actor_id       uuid,
    actor_kind     text        NOT NULL,
    action         text        NOT NULL,
    outcome        text        NOT NULL,
    error_code     text,
    client_addr    text,
    token          text,
    transaction_id text,
    masked_data    text,
    amount_minor   bigint,
    currency       text,
    details        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    CONSTRAINT audit_events_pkey PRIMARY KEY (id),
    CONSTRAINT audit_events_outcome_check CHECK (outcome IN ('success', 'failure')),
    CONSTRAINT audit_events_failure_code_check CHECK ((outcome = 'failure') = (error_code IS NOT NULL))
);

CREATE INDEX audit_events_occurred_at_idx ON audit_events (occurred_at);

-- The audit table refuses UPDATE and DELETE (PCI DSS 10.3.2). The tamper-evident seal that also
-- catches a superuser disabling this trigger arrives with the audit issue.
CREATE FUNCTION audit_events_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER audit_events_append_only
    BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();

CREATE TRIGGER audit_events_no_truncate
    BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();
