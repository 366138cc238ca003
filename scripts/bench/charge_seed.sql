-- Seeds the vault entries that scripts/bench/charge_ceiling.sql charges: card entries with
-- ciphertexts of the real sizes, tokens tok_bench_1 .. tok_bench_<tokens>. psql -v cred=... -v tokens=...
INSERT INTO vault_entries
    (tenant_id, token, created_by, kind, key_version, wrapped_key, ciphertext, fingerprint,
     brand, bin, last4, exp_month, exp_year, aad_version)
SELECT '00000000-0000-0000-0000-000000000001'::uuid, 'tok_bench_' || n, :'cred'::uuid, 'card', 1,
       substr(sha256(n::text::bytea) || sha256(n::text::bytea), 1, 60),
       substr(sha256(n::text::bytea) || sha256(n::text::bytea), 1, 46),
       sha256(('fp' || n)::bytea), 'visa', '411111', '1111', 8, 2035, 3
FROM generate_series(1, :tokens) AS n;
