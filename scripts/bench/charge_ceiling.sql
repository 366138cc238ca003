-- The database ceiling of a charge by token: exactly the statements a charge of a stored card
-- runs against the database, in the same order and with the same commits, without payvault in
-- between: read the vault entry, claim the idempotency key (commit 1, with its two audit events:
-- the token's resolution and the attempt, as payvault's claim writes them), record the outcome
-- (commit 2, with its audit event). Three events per charge, as payvault writes (counted in a
-- payvault database after a load: token_resolve, charge_attempt and charge, one each per charge;
-- tests/api/audit.rs asserts these three actions: change this file if that test changes);
-- the JSON values (event details, the stored outcome) have the shapes and sizes payvault's have.
-- Run by pgbench with -D cred=<credential uuid> and -D tokens=<number of seeded entries>, on a
-- database seeded by scripts/bench/charge_seed.sql. One pgbench "transaction" here is one
-- charge (two commits).
\set n random(1, :tokens)
\set key random(1, 2000000000)
SELECT key_version, aad_version, wrapped_key, ciphertext, kind, exp_month, exp_year,
       network_transaction_id, network_transaction_issuer,
       deleted_at IS NOT NULL, coalesce(expires_at <= now(), false)
FROM vault_entries WHERE tenant_id = '00000000-0000-0000-0000-000000000001'::uuid AND token = 'tok_bench_' || :n;
WITH claim AS (
    INSERT INTO idempotency_records
        (tenant_id, credential_id, idempotency_key, operation, request_mac, mac_key_version, state,
         attempts, lease_expires_at, processor_key)
    VALUES ('00000000-0000-0000-0000-000000000001'::uuid, :cred::uuid, 'c-' || :client_id || '-' || :key || '-' || md5(random()::text), 'charge',
            sha256(random()::text::bytea), 1, 'in_flight', 1, now() + interval '5 seconds', NULL)
    ON CONFLICT ON CONSTRAINT idempotency_records_pkey DO NOTHING
    RETURNING idempotency_key
), audited AS (
    SELECT payvault_insert_audit_events(jsonb_build_array(jsonb_build_object(
        'occurred_at', clock_timestamp(), 'writer_id', :cred::uuid,
        'writer_seq', (random() * 9e18)::bigint, 'mac_key_version', 1,
        'mac', encode(sha256(random()::text::bytea), 'hex'),
        'tenant_id', '00000000-0000-0000-0000-000000000001',
        'request_id', gen_random_uuid()::text, 'actor_id', :cred::uuid,
        'actor_kind', 'connector', 'action', 'token_resolve', 'outcome', 'success',
        'client_addr', '127.0.0.1', 'token', 'tok_bench_' || :n,
        'transaction_id', claim.idempotency_key, 'masked_data', 'visa 411111******1111',
        'amount_minor', 100, 'currency', 'USD', 'details', '{}'::jsonb), jsonb_build_object(
        'occurred_at', clock_timestamp(), 'writer_id', :cred::uuid,
        'writer_seq', (random() * 9e18)::bigint, 'mac_key_version', 1,
        'mac', encode(sha256(random()::text::bytea), 'hex'),
        'tenant_id', '00000000-0000-0000-0000-000000000001',
        'request_id', gen_random_uuid()::text, 'actor_id', :cred::uuid,
        'actor_kind', 'connector', 'action', 'charge_attempt', 'outcome', 'success',
        'client_addr', '127.0.0.1', 'token', 'tok_bench_' || :n,
        'transaction_id', claim.idempotency_key, 'masked_data', 'visa 411111******1111',
        'amount_minor', 100, 'currency', 'USD', 'details', '{"attempt": 1}'::jsonb)))
    FROM claim
)
SELECT idempotency_key FROM claim, audited \gset
WITH finished AS (
    UPDATE idempotency_records
    SET state = 'succeeded',
        outcome = jsonb_build_object('charge_id', 'ch_sandbox_' || substr(md5(random()::text), 1, 24),
                                     'error_code', NULL, 'error_message', NULL,
                                     'parameters', '{}'::jsonb, 'token_id', 'tok_bench_' || :n),
        token = NULL, lease_expires_at = NULL, updated_at = now()
    WHERE credential_id = :cred::uuid AND idempotency_key = :idempotency_key::text AND attempts = 1
      AND state = 'in_flight'
    RETURNING attempts
), audited AS (
    SELECT payvault_insert_audit_events(jsonb_build_array(jsonb_build_object(
        'occurred_at', clock_timestamp(), 'writer_id', :cred::uuid,
        'writer_seq', (random() * 9e18)::bigint, 'mac_key_version', 1,
        'mac', encode(sha256(random()::text::bytea), 'hex'),
        'tenant_id', '00000000-0000-0000-0000-000000000001',
        'request_id', gen_random_uuid()::text, 'actor_id', :cred::uuid,
        'actor_kind', 'connector', 'action', 'charge', 'outcome', 'success',
        'client_addr', '127.0.0.1', 'token', 'tok_bench_' || :n,
        'transaction_id', :idempotency_key::text, 'masked_data', 'visa 411111******1111',
        'amount_minor', 100, 'currency', 'USD', 'details', jsonb_build_object(
            'attempt', 1, 'state', 'succeeded',
            'charge_id', 'ch_sandbox_' || substr(md5(random()::text), 1, 24),
            'processor_latency_ms', 0, 'kind', 'card', 'saved_token', NULL,
            'network_transaction_id_stored', false))))
    FROM finished
)
SELECT count(*) FROM finished, audited;
