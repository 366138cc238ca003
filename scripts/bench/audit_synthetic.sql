-- A synthetic audit_events of 10,000,000 rows for `audit list` plans at scale (docs/benchmarks.md,
-- "2026-11-30 (session 7): audit list by time range"). Run as the database owner, in a database
-- of your own whose schema was migrated (e.g. as scripts/sqlx-prepare.sh applies migrations/),
-- never in a vault's: it disables the sealing-queue trigger and drops and re-creates indexes.
--   psql postgres://postgres@127.0.0.1:5432/<yours> -X -v ON_ERROR_STOP=1 -f scripts/bench/audit_synthetic.sql
-- Shape: import_row events, ~3,089 per second of occurred_at in groups of four sharing a time,
-- 1% stamped up to 10 minutes early (held while sealed), 10% in a second tenant, a token on 90%;
-- MACs are random-looking bytes (listing does not check them). ~15 minutes on the loaded 2-core
-- machine, 4.7 GB.
\timing on
ALTER TABLE audit_events DISABLE TRIGGER audit_events_enqueue;
DROP INDEX audit_events_occurred_at_id_idx;
DROP INDEX audit_events_token_idx;
DROP INDEX audit_events_transaction_idx;
ALTER TABLE audit_events DROP CONSTRAINT audit_events_writer_key;
INSERT INTO audit_events (occurred_at, request_id, actor_id, actor_kind, action, outcome, token,
  masked_data, details, writer_id, writer_seq, mac_key_version, mac, tenant_id)
SELECT timestamptz '2026-11-30 00:00:00+00'
         + make_interval(secs => (g / 4 * 4) / 3089.0)
         - CASE WHEN g % 100 = 7 THEN make_interval(secs => (g % 600)) ELSE interval '0' END,
       'req_' || md5(g::text),
       '6f1c2a3b-0000-4000-8000-000000000001'::uuid,
       'operator', 'import_row', 'success',
       CASE WHEN g % 10 <> 9 THEN 'tok_' || substr(md5((g % 1000000)::text), 1, 24) END,
       'visa 411111******1111',
       jsonb_build_object('source', 's' || (g / 1000000 + 1), 'row', g % 1000000, 'dedup', true),
       '7a1c2a3b-0000-4000-8000-000000000002'::uuid, g, 1,
       decode(md5(g::text) || md5((g + 1)::text), 'hex'),
       CASE WHEN g % 10 = 0 THEN '00000000-0000-0000-0000-0000000000b2'::uuid
            ELSE '00000000-0000-0000-0000-000000000001'::uuid END
FROM generate_series(1, 10000000) g;
ALTER TABLE audit_events ADD CONSTRAINT audit_events_writer_key UNIQUE (writer_id, writer_seq);
CREATE INDEX audit_events_token_idx ON audit_events (token, id) WHERE token IS NOT NULL;
CREATE INDEX audit_events_transaction_idx ON audit_events (transaction_id, id) WHERE transaction_id IS NOT NULL;
CREATE INDEX audit_events_occurred_at_id_idx ON audit_events (occurred_at, id) INCLUDE (tenant_id);
ALTER TABLE audit_events ENABLE TRIGGER audit_events_enqueue;
VACUUM (ANALYZE) audit_events;
SELECT count(*), pg_size_pretty(pg_total_relation_size('audit_events')) FROM audit_events;
