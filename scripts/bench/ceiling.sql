-- The database ceiling: exactly what one tokenize commits (idempotency record, vault entry with
-- ciphertexts of the real sizes, audit event, and its sealing-queue row via trigger), as one
-- statement, like payvault sends it, in the default tenant. Run by pgbench with -D cred=<credential uuid>.
WITH idem AS (
    INSERT INTO idempotency_records
        (tenant_id, credential_id, idempotency_key, operation, request_mac, mac_key_version, state, token)
    VALUES ('00000000-0000-0000-0000-000000000001'::uuid, :cred::uuid, gen_random_uuid()::text, 'tokenize', sha256(random()::text::bytea), 1,
            'succeeded', 'tok_' || substr(md5(random()::text), 1, 22))
    ON CONFLICT ON CONSTRAINT idempotency_records_pkey DO NOTHING
    RETURNING token
), entry AS (
    INSERT INTO vault_entries
        (tenant_id, token, created_by, kind, key_version, wrapped_key, ciphertext, fingerprint,
         brand, bin, last4, exp_month, exp_year, aad_version)
    SELECT '00000000-0000-0000-0000-000000000001'::uuid, idem.token, :cred::uuid, 'card', 1,
           substr(sha256(random()::text::bytea) || sha256(random()::text::bytea), 1, 60),
           substr(sha256(random()::text::bytea) || sha256(random()::text::bytea), 1, 46),
           sha256(random()::text::bytea), 'visa', '411111', '1111', 8, 2035, 3
    FROM idem
    RETURNING token
), audited AS (
    -- The audit event goes through the same function payvault calls, as the same JSON.
    SELECT payvault_insert_audit_events(jsonb_build_array(jsonb_build_object(
        'tenant_id', '00000000-0000-0000-0000-000000000001', 'request_id', gen_random_uuid()::text, 'actor_id', :cred::uuid,
        'actor_kind', 'connector', 'action', 'tokenize', 'outcome', 'success',
        'client_addr', '127.0.0.1', 'token', entry.token,
        'transaction_id', gen_random_uuid()::text, 'masked_data', 'visa 411111******1111',
        'details', '{"kind": "card"}'::jsonb,
        -- The writer's identity and a 32-byte MAC of the real size (payvault computes it in
        -- Rust; this throwaway database is never sealed or verified).
        'occurred_at', clock_timestamp(), 'writer_id', :cred::uuid,
        'writer_seq', (random() * 9e18)::bigint, 'mac_key_version', 1,
        'mac', encode(sha256(random()::text::bytea), 'hex'))))
    FROM entry
)
SELECT count(*) FROM entry, audited;
